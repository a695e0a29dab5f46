"""The signed envelope: one encoded hffm message, its signer, a sequence number and an Ed25519 signature.

The envelope is a wire type like those in :mod:`hffm_core.protocol.messages` and goes through the same strict
codec. Signing and verifying live in :mod:`hffm_core.security.signing`; this module only defines the wire shape,
the exact bytes that are signed (:func:`signed_bytes`) and who must sign each topic (:func:`expected_signer`).
"""

from __future__ import annotations

import re
import struct
from typing import ClassVar

from hffm_core.protocol.checks import SCHEMA_VERSION, check, check_segment, wire_type
from hffm_core.protocol.messages import FogAggregate, FogRoundReport
from hffm_core.protocol.topic_table import TOPIC_FIELD, TOPIC_SPECS
from hffm_core.protocol.topics import Topic

SIGNATURE_BYTES = 64  # Ed25519
MAX_SEQ = 2**63 - 1
# The key id is the first 16 bytes of SHA-256 over the raw 32-byte public key, in hex.
KEY_ID_HEX = 32
_KEY_ID = re.compile(r"[0-9a-f]{32}")
# Domain separation: these bytes start every signed string, so an hffm envelope signature can never be mistaken
# for a signature over anything else made with the same key (a certificate, another protocol, another version).
DOMAIN = b"hffm/signed-envelope/v1\x00"

@wire_type
class SignedEnvelope:
    """An encoded message (``payload``) sealed by ``signer`` with key ``key_id`` as number ``seq`` of its stream.

    ``signature`` is Ed25519 over :func:`signed_bytes` of (schema, topic, signer, key_id, seq, payload): the topic
    is covered, so a sealed message replayed onto another topic fails verification.
    """

    TYPE: ClassVar[str] = "signed_envelope"
    schema: int = SCHEMA_VERSION
    signer: str
    key_id: str
    seq: int
    payload: bytes
    signature: bytes

    def __post_init__(self) -> None:
        check_segment(self.signer, "signer")
        check(isinstance(self.key_id, str) and _KEY_ID.fullmatch(self.key_id) is not None,
              f"key_id must be {KEY_ID_HEX} lowercase hex digits, got {self.key_id!r}")
        seq_ok = isinstance(self.seq, int) and not isinstance(self.seq, bool) and 1 <= self.seq <= MAX_SEQ
        check(seq_ok, f"seq must be an int in 1..2**63-1, got {self.seq!r}")
        check(isinstance(self.payload, bytes) and len(self.payload) > 0, "payload must be non-empty bytes")
        check(isinstance(self.signature, bytes) and len(self.signature) == SIGNATURE_BYTES,
              f"signature must be {SIGNATURE_BYTES} bytes")


def _field(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


def signed_bytes(*, schema: int, topic: str, signer: str, key_id: str, seq: int, payload: bytes) -> bytes:
    """The byte string an envelope's signature covers: the domain tag, then each part length-prefixed.

    The length prefixes make the encoding injective: no two different (topic, signer, ...) tuples give the same
    bytes, so a signature cannot be moved to another topic or signer by shifting bytes between fields.
    """
    head = DOMAIN + struct.pack("<IQ", schema, seq)
    return head + _field(topic.encode()) + _field(signer.encode()) + _field(key_id.encode()) + _field(payload)


def expected_signer(topic: Topic) -> str:
    """The node that must sign a message on ``topic``, by its kind's ``signer`` in the topic table: the device for
    ``up/…/{device}``, the fog for its ``cluster``, ``fogup``, ``fogpeer`` and ``fogdone`` topics, ``cloud`` for
    ``global``, the named node for ``ctl``, ``state`` and ``metrics``, the requesting or sending node for
    ``resync/{target}/{node}`` and ``chunk/{target}/{node}``, and the sender of ``ack`` and ``peer``.

    Raises:
        ValueError: an unknown kind, or an incomplete topic (no node or fog where its kind needs one).
    """
    spec = TOPIC_SPECS.get(topic.kind)
    if spec is None:
        raise ValueError(f"topic {topic!r} has an unknown kind")
    if spec.signer not in spec.segments:
        return spec.signer  # a fixed signer (``cloud``)
    owner = getattr(topic, TOPIC_FIELD[spec.signer])
    if owner is None:
        raise ValueError(f"topic {topic!r} names no publisher")
    return owner


def message_sender(message: object) -> str | None:
    """The node a decoded message says sent it (``sender``, ``fog`` of fog reports, ``node`` of a state advert),
    or None for a message that names none (``RoundMetrics``: the topic names the cloud)."""
    if isinstance(message, (FogAggregate, FogRoundReport)):
        return message.fog
    for name in ("sender", "node"):
        value = getattr(message, name, None)
        if isinstance(value, str):
            return value
    return None
