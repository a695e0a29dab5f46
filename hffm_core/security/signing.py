"""Signed envelopes: every publish sealed with the node's Ed25519 key, every delivery opened and checked.

A :class:`Signer` wraps an encoded message in a :class:`~hffm_core.protocol.envelope.SignedEnvelope` with the
next number of its sequence; the counter is reserved ahead in a state file, so a restarted node never reuses a
number. A :class:`Verifier` holds the enrolled public keys (signer id -> key), a revoked set and a
:class:`~hffm_core.security.replay.ReplayGuard`, and refuses an envelope with one of the :class:`SecurityError`
subclasses below; each carries the ``reason`` a service counts it under.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from hffm_core.atomic import atomic_file
from hffm_core.errors import ConfigError, DecodeError, SecurityError, error_class
from hffm_core.protocol import codec, topics
from hffm_core.protocol.envelope import (
    MAX_SEQ,
    SignedEnvelope,
    expected_signer,
    message_sender,
    signed_bytes,
)
from hffm_core.protocol.messages import SCHEMA_VERSION
from hffm_core.protocol.routing import decode_message
from hffm_core.security.replay import DEFAULT_WINDOW, ReplayGuard

log = logging.getLogger(__name__)
SEQ_RESERVE = 1024  # sequence numbers reserved per write of the signer's state file


def _rejection(name: str, reason: str) -> Any:
    """A :class:`SecurityError` subclass counted under ``reason``."""
    return error_class(name, SecurityError, module=__name__, reason=reason)


UnsignedError = _rejection("UnsignedError", "unsigned")
TamperedError = _rejection("TamperedError", "tampered")
ReplayedError = _rejection("ReplayedError", "replayed")
WrongSenderError = _rejection("WrongSenderError", "wrong_sender")
UnknownSignerError = _rejection("UnknownSignerError", "unknown_signer")
RevokedError = _rejection("RevokedError", "revoked")

REJECTION_REASONS = tuple(c.reason for c in (UnsignedError, TamperedError, ReplayedError, WrongSenderError,
                                              UnknownSignerError, RevokedError))


# -- keys --------------------------------------------------------------------------------------------------------
def key_id_of(public_key: Ed25519PublicKey) -> str:
    """The key's fingerprint: the first 16 bytes of SHA-256 over its raw 32 bytes, in hex."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def public_key_path(private_path: Path) -> Path:
    """Where :func:`generate_signing_key` puts the public key: ``dev-1.key`` -> ``dev-1.pub``."""
    private_path = Path(private_path)
    return private_path.with_name(private_path.stem + ".pub")


def _read(source: Path | bytes, what: str) -> tuple[bytes, str]:
    if isinstance(source, bytes):
        return source, f"{what} (bytes)"
    try:
        return Path(source).read_bytes(), repr(str(source))
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {str(source)!r}: {exc.strerror or exc}") from None


def load_private_key(source: Path | bytes) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file or PEM bytes (unencrypted PKCS#8).

    Raises:
        ConfigError: unreadable, not PEM, encrypted, or not an Ed25519 key.
    """
    data, where = _read(source, "signing key")
    if not isinstance(source, bytes) and os.stat(source).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("signing key %s is readable by group or others; chmod 600 it", where)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"signing key {where} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"signing key {where} is a {type(key).__name__}; expected an Ed25519 key")
    return key


def load_public_key(source: Path | bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file or PEM bytes (SubjectPublicKeyInfo).

    Raises:
        ConfigError: unreadable, not PEM, or not an Ed25519 key.
    """
    data, where = _read(source, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"public key {where} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"public key {where} is a {type(key).__name__}; expected an Ed25519 key")
    return key


def generate_signing_key(path: Path, *, overwrite: bool = False) -> Path:
    """Write a new Ed25519 private key to ``path`` (PEM, mode 0600) and its public key beside it (``.pub``).

    Returns the public key's path.

    Raises:
        ConfigError: ``path`` exists and ``overwrite`` is false, or the folder cannot be written.
    """
    path = Path(path)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o600)  # created 0600: the key is never readable by others, not even briefly
        with os.fdopen(fd, "wb") as fh:
            fh.write(private_pem)
        os.chmod(path, 0o600)  # an overwritten file keeps its old mode otherwise
        pub = public_key_path(path)
        with atomic_file(pub) as fh:
            fh.write(public_pem)
        os.chmod(pub, 0o644)
    except FileExistsError:
        raise ConfigError(f"signing key {str(path)!r} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise ConfigError(f"cannot write signing key {str(path)!r}: {exc.strerror or exc}") from None
    return pub


# -- sealing -----------------------------------------------------------------------------------------------------
class Signer:
    """Seals a node's messages. ``state_file`` holds the next unreserved sequence number (None: memory only, for
    tests and benchmarks; a restarted node would then reuse numbers and be refused as a replay)."""

    def __init__(self, *, signer_id: str, private_key: Ed25519PrivateKey | Path | bytes,
                 state_file: Path | None = None, reserve: int = SEQ_RESERVE) -> None:
        """Raises:
            ConfigError: a bad signer id or key, or an unreadable / corrupt state file.
        """
        try:
            topics.check_segment(signer_id, "signer id")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.signer_id = signer_id
        self._key = private_key if isinstance(private_key, Ed25519PrivateKey) else load_private_key(private_key)
        self.key_id = key_id_of(self._key.public_key())
        self.state_file = Path(state_file) if state_file is not None else None
        self._reserve = max(1, reserve)
        self._lock = threading.Lock()
        self._next = self._load_next()
        self._limit = self._next  # numbers below _limit are covered by the state file

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def _load_next(self) -> int:
        if self.state_file is None or not self.state_file.exists():
            return 1
        try:
            state = json.loads(self.state_file.read_text())
            nxt = state["next"]
            if state.get("signer") != self.signer_id or not (isinstance(nxt, int) and 1 <= nxt <= MAX_SEQ):
                raise ValueError(f"signer {state.get('signer')!r}, next {nxt!r}")
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"signing state file {str(self.state_file)!r} is unreadable or corrupt ({exc}); "
                              "receivers would refuse reused sequence numbers, so it is not reset") from None
        return nxt

    def _take(self) -> int:
        with self._lock:
            seq = self._next
            if seq > MAX_SEQ:
                raise SecurityError(f"signer {self.signer_id!r} ran out of sequence numbers")
            if seq >= self._limit and self.state_file is not None:
                # Persist first, use after: a crash can skip numbers but never reuse one.
                limit = min(seq + self._reserve, MAX_SEQ + 1)
                with atomic_file(self.state_file) as fh:
                    fh.write(json.dumps({"signer": self.signer_id, "next": limit}).encode())
                self._limit = limit
            self._next = seq + 1
            return seq

    def seal(self, topic: str, payload: bytes) -> bytes:
        """The encoded :class:`SignedEnvelope` of ``payload`` (an encoded message) for ``topic``.

        Raises:
            OSError: the sequence state file cannot be written.
        """
        seq = self._take()
        message = signed_bytes(schema=SCHEMA_VERSION, topic=topic, signer=self.signer_id, key_id=self.key_id,
                               seq=seq, payload=payload)
        envelope = SignedEnvelope(signer=self.signer_id, key_id=self.key_id, seq=seq, payload=bytes(payload),
                                  signature=self._key.sign(message))
        return codec.encode(envelope)


# -- opening -----------------------------------------------------------------------------------------------------
class Verifier:
    """Opens envelopes from enrolled signers; refuses unsigned, tampered, replayed, misattributed, unknown and
    revoked ones. ``revoked`` may name signer ids or key ids."""

    def __init__(self, *, keys: Mapping[str, Ed25519PublicKey | Path | bytes], revoked: Iterable[str] = (),
                 window: int = DEFAULT_WINDOW, state_file: Path | None = None, flush_interval_s: float = 1.0) -> None:
        """Raises:
            ConfigError: a bad signer id or key, a bad window, or a corrupt replay state file.
        """
        self._keys: dict[str, tuple[Ed25519PublicKey, str]] = {}
        for signer, key in keys.items():
            try:
                topics.check_segment(signer, "signer id")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            public = key if isinstance(key, Ed25519PublicKey) else load_public_key(key)
            self._keys[signer] = (public, key_id_of(public))
        self.revoked = frozenset(revoked)
        self.replay = ReplayGuard(window=window, state_file=state_file, flush_interval_s=flush_interval_s)

    @classmethod
    def from_dir(cls, keys_dir: Path, **kwargs: object) -> Verifier:
        """A verifier enrolling every ``{signer}.pub`` in ``keys_dir`` (other files are ignored).

        Raises:
            ConfigError: the folder is missing or holds no ``.pub`` key, or a key or file name is bad.
        """
        keys_dir = Path(keys_dir)
        if not keys_dir.is_dir():
            raise ConfigError(f"enrolled keys folder {str(keys_dir)!r} does not exist")
        keys = {p.stem: p for p in sorted(keys_dir.glob("*.pub"))}
        if not keys:
            raise ConfigError(f"enrolled keys folder {str(keys_dir)!r} holds no '<signer>.pub' key")
        return cls(keys=keys, **kwargs)  # type: ignore[arg-type]

    @property
    def signers(self) -> list[str]:
        return sorted(self._keys)

    def open(self, topic: str, data: bytes, *, retained: bool = False) -> tuple[str, bytes]:
        """Check the envelope ``data`` delivered on ``topic``; return (signer, the encoded inner message).

        ``retained``: the broker delivered it as a retained message (it may repeat the last one of that topic).

        Raises:
            DecodeError: a bad topic, or bytes that are neither an envelope nor a message.
            UnsignedError, RevokedError, UnknownSignerError, WrongSenderError, ReplayedError, TamperedError.
        """
        parsed = topics.parse(topic)
        env = self._envelope(topic, data)
        if env.signer in self.revoked or env.key_id in self.revoked:
            raise RevokedError(f"signer {env.signer!r} (key {env.key_id}) is revoked")
        enrolled = self._keys.get(env.signer)
        if enrolled is None:
            raise UnknownSignerError(f"signer {env.signer!r} is not enrolled")
        public, key_id = enrolled
        if env.key_id != key_id:
            raise UnknownSignerError(f"signer {env.signer!r} used key {env.key_id}; the enrolled key is {key_id}")
        want = expected_signer(parsed)
        if env.signer != want:
            raise WrongSenderError(f"signed by {env.signer!r}, but only {want!r} may publish on this topic")
        problem = self.replay.problem(env.signer, env.seq, topic, retained=retained)
        if problem is not None:
            raise ReplayedError(problem)
        message = signed_bytes(schema=env.schema, topic=topic, signer=env.signer, key_id=env.key_id, seq=env.seq,
                               payload=env.payload)
        try:
            public.verify(env.signature, message)
        except InvalidSignature:
            raise TamperedError(f"bad signature from {env.signer!r} on sequence {env.seq}") from None
        self.replay.commit(env.signer, env.seq, topic)
        return env.signer, env.payload

    @staticmethod
    def check_sender(signer: str, message: object) -> None:
        """Raises ``WrongSenderError`` when the decoded inner ``message`` names a sender other than its signer."""
        claimed = message_sender(message)
        if claimed is not None and claimed != signer:
            raise WrongSenderError(f"message says it is from {claimed!r} but was signed by {signer!r}")

    def _envelope(self, topic: str, data: bytes) -> SignedEnvelope:
        try:
            return codec.decode(data, SignedEnvelope)
        except DecodeError as exc:
            try:
                decode_message(topic, data)
            except DecodeError:
                raise exc from None
            raise UnsignedError("a plain message where a signed envelope is required") from None

    def flush(self) -> None:
        """Persist the replay state now (call when the service stops)."""
        self.replay.flush()

    def maybe_flush(self) -> None:
        """Persist the replay state if it changed and the flush interval has passed (call from the loop)."""
        self.replay.maybe_flush()


def unwrap_unverified(data: bytes) -> bytes:
    """The inner payload of an envelope *without any check*, or ``data`` unchanged when it is not one. Only for
    observers that display what they read (``hffm fleet status``); never for input that changes state."""
    try:
        return codec.decode(data, SignedEnvelope).payload
    except DecodeError:
        return data
