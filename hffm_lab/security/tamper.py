"""The tamper suite of ``hffm bench security``: forged, altered and replayed envelopes against a fog's verifier.

Every case is built from real signed module updates; a case passes when the verifier refuses it (with any reason)
and the positive control, a valid envelope, is accepted. On top of the named cases, ``mutations`` copies of valid
envelopes get 1-3 random byte edits (flip, set, insert, delete); each must be refused too.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hffm_core.errors import DecodeError, SecurityError
from hffm_core.protocol import (
    ModuleKey,
    ModuleUpdate,
    blobs_from_state,
    codec,
    encode,
    tensors_sha256,
    topics,
)
from hffm_core.protocol.envelope import SignedEnvelope
from hffm_core.security.signing import Signer, Verifier

FLEET, FOG = "bench", "fog-a"
KEY = ModuleKey.adapter("inertial", "activity")


def _update(device: str, key: ModuleKey = KEY) -> bytes:
    blobs = blobs_from_state({"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    return encode(ModuleUpdate(fleet=FLEET, sender=device, fog=FOG, key=key, global_round=1, cluster_round=1,
                               base=(0, 0), num_samples=10, train_loss=0.5, tensors=blobs,
                               sha256=tensors_sha256(blobs), idempotency_key=f"{FLEET}/{device}/1.1/{key}"))


def _up(device: str, key: ModuleKey = KEY) -> str:
    return topics.up(FLEET, FOG, key, device)


def _flip(data: bytes, field: str, at: int) -> bytes:
    """The envelope ``data`` with one bit of its bytes field ``field`` flipped (a well-formed, altered envelope)."""
    envelope = codec.decode(data, SignedEnvelope)
    value = bytearray(getattr(envelope, field))
    value[at % len(value)] ^= 0x01
    return codec.encode(dataclasses.replace(envelope, **{field: bytes(value)}))


def _outcome(verifier: Verifier, topic: str, data: bytes) -> str:
    try:
        verifier.open(topic, data)
    except SecurityError as exc:
        return exc.reason
    except DecodeError:
        return "decode"
    return "accepted"


def run_tamper_cases(*, mutations: int = 5_000, seed: int = 7) -> dict[str, Any]:
    """Run every case; returns ``{"rejected", "total", "positive_control_accepted", "cases": {name: outcome}}``."""
    keys = {n: Ed25519PrivateKey.generate() for n in ("dev-1", "dev-2", "dev-3", "dev-4", FOG, "cloud")}
    signers = {n: Signer(signer_id=n, private_key=k) for n, k in keys.items()}
    enrolled = ("dev-1", "dev-2", "dev-4", FOG, "cloud")  # dev-3 never enrolled; dev-4 enrolled, then revoked
    verifier = Verifier(keys={n: keys[n].public_key() for n in enrolled}, revoked=("dev-4",), window=64)
    first = signers["dev-1"].seal(_up("dev-1"), _update("dev-1"))
    control = _outcome(verifier, _up("dev-1"), first)
    later = signers["dev-1"].seal(_up("dev-1"), _update("dev-1"))
    head = ModuleKey.head("activity")
    forger = Signer(signer_id="dev-1", private_key=Ed25519PrivateKey.generate())
    named = {
        "unsigned": (_up("dev-1"), _update("dev-1")),
        "payload bit flipped": (_up("dev-1"), _flip(later, "payload", 40)),
        "signature bit flipped": (_up("dev-1"), _flip(later, "signature", 5)),
        "replayed": (_up("dev-1"), first),
        "wrong sender (dev-1 signs dev-2's topic)": (_up("dev-2"), signers["dev-1"].seal(_up("dev-2"),
                                                                                       _update("dev-2"))),
        "unknown signer": (_up("dev-3"), signers["dev-3"].seal(_up("dev-3"), _update("dev-3"))),
        "unenrolled key claiming dev-1": (_up("dev-1"), forger.seal(_up("dev-1"), _update("dev-1"))),
        "revoked signer": (_up("dev-4"), signers["dev-4"].seal(_up("dev-4"), _update("dev-4"))),
        "moved to another topic": (_up("dev-1", head), signers["dev-1"].seal(_up("dev-1"), _update("dev-1", head))),
    }
    cases = {name: _outcome(verifier, topic, data) for name, (topic, data) in named.items()}
    rng = random.Random(seed)
    pool = [signers["dev-2"].seal(_up("dev-2"), _update("dev-2")) for _ in range(8)]
    mutated_rejected = 0
    for _ in range(mutations):
        data = bytearray(rng.choice(pool))
        for _edit in range(rng.randrange(1, 4)):
            at, op = rng.randrange(len(data)), rng.randrange(4)
            if op == 0:
                data[at] ^= 1 << rng.randrange(8)
            elif op == 1:
                data[at] = (data[at] + rng.randrange(1, 256)) % 256
            elif op == 2:
                data[at:at] = rng.randbytes(rng.randrange(1, 4))
            else:
                del data[at]
        if bytes(data) in pool:  # an edit that undid itself is not a forgery
            data.append(0)
        mutated_rejected += _outcome(verifier, _up("dev-2"), bytes(data)) != "accepted"
    rejected = sum(v != "accepted" for v in cases.values()) + mutated_rejected
    cases[f"random byte edits ({mutations})"] = f"{mutated_rejected} rejected"
    return {"rejected": rejected, "total": len(named) + mutations, "positive_control_accepted": control == "accepted",
            "cases": cases}
