"""The MQTT transport's errors: a broker that refused a PUBLISH or SUBSCRIBE, and a connect attempt to retry."""

from __future__ import annotations

import paho.mqtt.client as mqtt

from hffm_core.errors import TransportError

__all__ = ["MqttRefusedError"]


class _Unreachable(Exception):
    """A connect attempt that got no answer (refused TCP connect, no CONNACK): worth another try."""


class MqttRefusedError(TransportError):
    """The broker answered a PUBLISH or SUBSCRIBE with an MQTT 5 failure reason code (>= 0x80), for example
    0x87 Not authorized when its ACL denies the topic. ``reason_code`` is the first failing code."""

    def __init__(self, message: str, *, reason_code: int) -> None:
        super().__init__(message)
        self.reason_code = reason_code


def _reason_text(code: int, packet: int) -> str:
    try:
        return f"0x{code:02x} {mqtt.ReasonCode(packet, identifier=code).getName()}"
    except Exception:  # noqa: BLE001 - an unknown code still gets reported by number
        return f"0x{code:02x}"
