"""Which message type each topic kind carries, and decoding a (topic, payload) pair in one step."""

from __future__ import annotations

from typing import Any

from hffm_core.errors import DecodeError
from hffm_core.protocol import codec, topics
from hffm_core.protocol.topic_table import TOPIC_TABLE

# The one message type each topic kind carries (a column of the topic table).
MESSAGE_FOR_KIND: dict[str, type] = {spec.kind: spec.message for spec in TOPIC_TABLE}


def decode_message(topic: str, payload: bytes, *, max_payload: int = codec.DEFAULT_MAX_PAYLOAD) -> tuple[topics.Topic, Any]:
    """Parse ``topic`` and decode ``payload`` into the type that topic kind carries.

    Raises:
        DecodeError: a bad topic, a bad payload, or a payload whose fleet disagrees with the topic's.
    """
    parsed = topics.parse(topic)
    message = codec.decode(payload, MESSAGE_FOR_KIND[parsed.kind], max_payload=max_payload, topic=parsed)
    if getattr(message, "fleet", parsed.fleet) != parsed.fleet:
        raise DecodeError(f"topic {topic!r}: message fleet {message.fleet!r} differs from the topic's")
    return parsed, message


def encode_for(topic: str, message: object) -> bytes:
    """``message`` encoded for ``topic`` (:func:`hffm_core.protocol.codec.encode` with the parsed topic): the fields
    the topic names travel empty, and :func:`decode_message` on the same topic reads them back.

    Raises:
        DecodeError: ``topic`` is not an hffm topic.
        TypeError: ``message`` is not a wire type.
    """
    return codec.encode(message, topic=topics.parse(topic))
