"""Signer and Verifier: keys on disk, sequence numbers that survive restarts, and every forgery refused by reason."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import msgpack
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hffm_core.errors import ConfigError, DecodeError, SecurityError
from hffm_core.protocol import (
    ModuleKey,
    ModuleUpdate,
    NodeState,
    blobs_from_state,
    codec,
    encode,
    tensors_sha256,
    topics,
)
from hffm_core.protocol.envelope import SignedEnvelope
from hffm_core.security.signing import (
    REJECTION_REASONS,
    ReplayedError,
    RevokedError,
    Signer,
    TamperedError,
    UnknownSignerError,
    UnsignedError,
    Verifier,
    WrongSenderError,
    generate_signing_key,
    key_id_of,
    load_private_key,
    load_public_key,
    public_key_path,
    unwrap_unverified,
)

FLEET, FOG = "fleet-1", "fog-a"
KEY = ModuleKey.adapter("imu", "activity")
NODES = ("dev-1", "dev-2", FOG, "cloud")


@pytest.fixture(scope="module")
def keys() -> dict[str, Ed25519PrivateKey]:
    return {n: Ed25519PrivateKey.generate() for n in (*NODES, "dev-3")}


@pytest.fixture
def signer(keys: dict[str, Ed25519PrivateKey]) -> Callable[[str], Signer]:
    return lambda node: Signer(signer_id=node, private_key=keys[node])


@pytest.fixture
def verifier(keys: dict[str, Ed25519PrivateKey]) -> Verifier:
    """A fog's verifier: its devices and the cloud are enrolled (dev-3 is not)."""
    return Verifier(keys={n: keys[n].public_key() for n in NODES}, window=64)


def update(device: str = "dev-1", key: ModuleKey = KEY) -> bytes:
    tensors = blobs_from_state({"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    return encode(ModuleUpdate(fleet=FLEET, sender=device, fog=FOG, key=key, global_round=1, cluster_round=1,
                               base=(0, 0), num_samples=10, train_loss=0.5, tensors=tensors,
                               sha256=tensors_sha256(tensors), idempotency_key=f"{FLEET}/{device}/1.1/{key}"))


def up(device: str = "dev-1", key: ModuleKey = KEY) -> str:
    return topics.up(FLEET, FOG, key, device)


def _flip(data: bytes, field: str, at: int = 0) -> bytes:
    raw = codec.wire_map(data, SignedEnvelope)
    value = bytearray(raw[field])
    value[at] ^= 0x01
    raw[field] = bytes(value)
    return msgpack.packb(codec.wire_array(raw, SignedEnvelope), use_bin_type=True)  # positional, as sent


# -- the positive control and every rejection ---------------------------------------------------------------------
def test_a_valid_envelope_is_accepted(signer: Callable[[str], Signer], verifier: Verifier) -> None:
    sealed = signer("dev-1").seal(up(), update())
    assert verifier.open(up(), sealed) == ("dev-1", update())


def _attacks(signer: Callable[[str], Signer]) -> tuple[list[tuple[str, str, bytes, str]], bytes]:
    """(name, topic, data, expected reason) for each forgery, and ``first``: the one valid envelope they replay."""
    dev1 = signer("dev-1")
    first = dev1.seal(up(), update())
    other_topic = up(key=ModuleKey.head("activity"))
    evil = Signer(signer_id="dev-1", private_key=Ed25519PrivateKey.generate())  # a key that was never enrolled
    later = dev1.seal(up(), update())  # seq 2: valid, but used only in tampered forms
    return [
        ("unsigned", up(), update(), "unsigned"),
        ("bit-flipped payload", up(), _flip(later, "payload", 40), "tampered"),
        ("bit-flipped signature", up(), _flip(later, "signature", 5), "tampered"),
        ("replayed", up(), first, "replayed"),
        ("wrong sender", up("dev-2"), signer("dev-1").seal(up("dev-2"), update("dev-2")), "wrong_sender"),
        ("unknown signer", up("dev-3"), signer("dev-3").seal(up("dev-3"), update("dev-3")), "unknown_signer"),
        ("unenrolled key", up(), evil.seal(up(), update()), "unknown_signer"),
        ("topic swap", other_topic, dev1.seal(up(), update(key=ModuleKey.head("activity"))), "tampered"),
    ], first


def test_every_forgery_is_rejected_with_its_reason(signer: Callable[[str], Signer], verifier: Verifier) -> None:
    attacks, first = _attacks(signer)
    verifier.open(up(), first)
    outcomes = {}
    for name, topic, data, _reason in attacks:
        try:
            verifier.open(topic, data)
            outcomes[name] = "accepted"
        except SecurityError as exc:
            outcomes[name] = exc.reason
    assert outcomes == {name: reason for name, _t, _d, reason in attacks}
    assert "accepted" not in outcomes.values()
    assert {r for *_x, r in attacks} | {"revoked"} == set(REJECTION_REASONS)


def test_the_error_classes_name_their_reasons() -> None:
    assert [c.reason for c in (UnsignedError, TamperedError, ReplayedError, WrongSenderError, UnknownSignerError,
                               RevokedError)] == list(REJECTION_REASONS)
    assert all(issubclass(c, SecurityError) for c in (UnsignedError, RevokedError))


@pytest.mark.parametrize("by", ["signer", "key_id"])
def test_revoked_signer_or_key_is_rejected(signer: Callable[[str], Signer], keys: dict[str, Ed25519PrivateKey],
                                           by: str) -> None:
    entry = "dev-1" if by == "signer" else key_id_of(keys["dev-1"].public_key())
    v = Verifier(keys={n: keys[n].public_key() for n in NODES}, revoked=[entry])
    with pytest.raises(RevokedError, match="revoked"):
        v.open(up(), signer("dev-1").seal(up(), update()))
    assert v.open(up("dev-2"), signer("dev-2").seal(up("dev-2"), update("dev-2")))[0] == "dev-2"


def test_old_sequence_outside_the_window_is_rejected(signer: Callable[[str], Signer], verifier: Verifier) -> None:
    dev1 = signer("dev-1")
    old = dev1.seal(up(), update())  # seq 1, never delivered
    for _ in range(verifier.replay.window + 1):
        last = dev1.seal(up(), update())
    verifier.open(up(), last)
    with pytest.raises(ReplayedError, match="older than the replay window"):
        verifier.open(up(), old)


def test_out_of_order_inside_the_window_is_accepted_once(signer: Callable[[str], Signer], verifier: Verifier) -> None:
    dev1 = signer("dev-1")
    sealed = [dev1.seal(up(), update()) for _ in range(5)]
    for i in (4, 0, 2, 1, 3):
        verifier.open(up(), sealed[i])
    for data in sealed:
        with pytest.raises(ReplayedError, match="already accepted"):
            verifier.open(up(), data)


def test_a_retained_redelivery_may_repeat_only_the_topics_last_message(signer: Callable[[str], Signer],
                                                                        verifier: Verifier) -> None:
    fog = signer(FOG)
    topic = topics.state(FLEET, FOG)
    advert = encode(NodeState(fleet=FLEET, node=FOG, role="fog", fog=FOG, online=True))
    old, new = fog.seal(topic, advert), fog.seal(topic, advert)
    verifier.open(topic, old)
    verifier.open(topic, new)
    assert verifier.open(topic, new, retained=True)[0] == FOG  # the broker re-sent it on resubscribe
    with pytest.raises(ReplayedError):
        verifier.open(topic, new)  # the same bytes as a live message are a replay
    with pytest.raises(ReplayedError):
        verifier.open(topic, old, retained=True)  # an older retained message would roll state back


def test_forged_envelopes_do_not_move_the_window(signer: Callable[[str], Signer], verifier: Verifier) -> None:
    dev1 = signer("dev-1")
    first = dev1.seal(up(), update())
    forged = dev1.seal(up(), update())
    with pytest.raises(TamperedError):
        verifier.open(up(), _flip(forged, "signature"))
    assert verifier.replay.highest("dev-1") == 0
    verifier.open(up(), first)
    verifier.open(up(), forged)  # the genuine one still gets in


def test_garbage_is_a_decode_error_not_unsigned(verifier: Verifier) -> None:
    with pytest.raises(DecodeError):
        verifier.open(up(), b"\x00garbage")
    with pytest.raises(DecodeError):
        verifier.open("not/an/hffm/topic", update())


def test_unwrap_unverified() -> None:
    sealed = Signer(signer_id="dev-1", private_key=Ed25519PrivateKey.generate()).seal(up(), update())
    assert unwrap_unverified(sealed) == update()
    assert unwrap_unverified(update()) == update()


# -- state across restarts ----------------------------------------------------------------------------------------
def test_a_restarted_signer_never_reuses_a_sequence_number(tmp_path: Path, keys: dict[str, Ed25519PrivateKey]) -> None:
    state = tmp_path / "dev-1-signing-seq.json"
    verifier = Verifier(keys={"dev-1": keys["dev-1"].public_key()})
    first = Signer(signer_id="dev-1", private_key=keys["dev-1"], state_file=state, reserve=8)
    for _ in range(5):
        verifier.open(up(), first.seal(up(), update()))
    again = Signer(signer_id="dev-1", private_key=keys["dev-1"], state_file=state, reserve=8)  # "crash", restart
    verifier.open(up(), again.seal(up(), update()))  # not refused as a replay
    assert verifier.replay.highest("dev-1") == 9  # skipped the rest of the reserved block
    assert json.loads(state.read_text()) == {"signer": "dev-1", "next": 17}


def test_signer_state_of_another_node_or_corrupt_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "seq.json"
    state.write_text(json.dumps({"signer": "dev-2", "next": 5}))
    with pytest.raises(ConfigError, match="seq.json"):
        Signer(signer_id="dev-1", private_key=Ed25519PrivateKey.generate(), state_file=state)
    state.write_text("{")
    with pytest.raises(ConfigError, match="corrupt"):
        Signer(signer_id="dev-1", private_key=Ed25519PrivateKey.generate(), state_file=state)


def test_replay_windows_survive_a_restart(tmp_path: Path, signer: Callable[[str], Signer],
                                          keys: dict[str, Ed25519PrivateKey]) -> None:
    enrolled = {n: keys[n].public_key() for n in NODES}
    state = tmp_path / "fog-a-replay.json"
    dev1 = signer("dev-1")
    seen = [dev1.seal(up(), update()) for _ in range(3)]
    v1 = Verifier(keys=enrolled, state_file=state)
    for data in seen:
        v1.open(up(), data)
    v1.flush()
    v2 = Verifier(keys=enrolled, state_file=state)
    for data in seen:
        with pytest.raises(ReplayedError):
            v2.open(up(), data)
    assert v2.open(up(), dev1.seal(up(), update()))[0] == "dev-1"
    state.write_text("[]")
    with pytest.raises(ConfigError, match="replay state file"):
        Verifier(keys=enrolled, state_file=state)


def test_a_grown_window_does_not_reopen_old_numbers(tmp_path: Path, signer: Callable[[str], Signer],
                                                    keys: dict[str, Ed25519PrivateKey]) -> None:
    enrolled = {"dev-1": keys["dev-1"].public_key()}
    state = tmp_path / "replay.json"
    dev1 = signer("dev-1")
    sealed = [dev1.seal(up(), update()) for _ in range(10)]
    small = Verifier(keys=enrolled, window=4, state_file=state)
    for data in sealed:
        small.open(up(), data)
    small.flush()
    big = Verifier(keys=enrolled, window=64, state_file=state)
    for data in sealed:
        with pytest.raises(ReplayedError):
            big.open(up(), data)


# -- keys on disk -------------------------------------------------------------------------------------------------
def test_generated_key_files(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "dev-1.key"
    pub = generate_signing_key(path)
    assert pub == public_key_path(path) == tmp_path / "keys" / "dev-1.pub"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    private, public = load_private_key(path), load_public_key(pub)
    assert key_id_of(private.public_key()) == key_id_of(public)
    with pytest.raises(ConfigError, match="already exists"):
        generate_signing_key(path)
    assert generate_signing_key(path, overwrite=True) == pub
    assert key_id_of(load_public_key(pub)) != key_id_of(public)


def test_verifier_from_a_folder(tmp_path: Path, keys: dict[str, Ed25519PrivateKey]) -> None:
    generate_signing_key(tmp_path / "dev-1.key")
    (tmp_path / "dev-1.key").unlink()
    (tmp_path / "README").write_text("ignored")
    assert Verifier.from_dir(tmp_path).signers == ["dev-1"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no"):
        Verifier.from_dir(tmp_path / "empty")
    with pytest.raises(ConfigError, match="does not exist"):
        Verifier.from_dir(tmp_path / "missing")
    (tmp_path / "Bad Name.pub").write_bytes((tmp_path / "dev-1.pub").read_bytes())
    with pytest.raises(ConfigError, match="invalid signer id"):
        Verifier.from_dir(tmp_path)


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"not a key", "not an unencrypted PEM private key"), (None, "cannot read")],
)
def test_bad_private_keys(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "k.key"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=match):
        load_private_key(path)


def test_a_public_key_is_not_a_private_key(tmp_path: Path) -> None:
    pub = generate_signing_key(tmp_path / "a.key")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        load_private_key(pub)
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_public_key(tmp_path / "a.key")


def test_bad_ids_and_windows_are_config_errors(keys: dict[str, Ed25519PrivateKey]) -> None:
    with pytest.raises(ConfigError, match="invalid signer id 'Dev'"):
        Signer(signer_id="Dev", private_key=keys["dev-1"])
    with pytest.raises(ConfigError, match="invalid signer id"):
        Verifier(keys={"a b": keys["dev-1"].public_key()})
    with pytest.raises(ConfigError, match="replay window"):
        Verifier(keys={}, window=0)


def test_mutated_envelopes_are_never_accepted(signer: Callable[[str], Signer], verifier: Verifier) -> None:
    """5,000 envelopes with bytes flipped, set, inserted or deleted: each one is refused with a DecodeError or a
    SecurityError (never another exception), and none is accepted."""
    import random

    rng = random.Random(7)
    dev1 = signer("dev-1")
    sealed = [dev1.seal(up(), update()) for _ in range(8)]
    reasons: dict[str, int] = {}
    for i in range(5_000):
        data = bytearray(rng.choice(sealed))
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(data))
            op = rng.randrange(4)
            if op == 0:
                data[at] ^= 1 << rng.randrange(8)
            elif op == 1:
                data[at] = (data[at] + rng.randrange(1, 256)) % 256
            elif op == 2:
                data[at:at] = rng.randbytes(rng.randrange(1, 4))
            else:
                del data[at]
        if bytes(data) in sealed:
            continue
        try:
            verifier.open(up(), bytes(data))
        except SecurityError as exc:
            reasons[exc.reason] = reasons.get(exc.reason, 0) + 1
        except DecodeError:
            reasons["decode"] = reasons.get("decode", 0) + 1
        else:
            raise AssertionError(f"case {i}: a mutated envelope was accepted: {bytes(data).hex()}")
    assert sum(reasons.values()) > 4_900 and {"decode", "tampered"} <= set(reasons)


def test_a_retained_delivery_cannot_roll_a_topic_back(signer: Callable[[str], Signer], verifier: Verifier) -> None:
    """An older retained message of a topic, even one this receiver never saw, is refused once a newer one was
    accepted there: nobody can roll a retained version back."""
    dev1 = signer("dev-1")
    old = dev1.seal(up(), update())  # seq 1, never delivered to this receiver
    new = dev1.seal(up(), update())  # seq 2
    assert verifier.open(up(), new)[0] == "dev-1"
    assert verifier.open(up(), new, retained=True)[0] == "dev-1"  # the same latest retained one: fine
    with pytest.raises(ReplayedError, match="older than the last one accepted on this topic"):
        verifier.open(up(), old, retained=True)
