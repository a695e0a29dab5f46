"""A transport that seals every publish in a signed envelope before handing it to the MQTT transport."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hffm_core.transport.mqtt import MqttTransport

if TYPE_CHECKING:  # cryptography is imported only by nodes that sign
    from hffm_core.security.signing import Signer


class SealingTransport:
    """The service's transport with every publish sealed first; the inner transport counts the sealed bytes."""

    def __init__(self, inner: MqttTransport, signer: Signer) -> None:
        self.inner = inner
        self.signer = signer

    def publish(self, topic: str, payload: bytes, **kwargs: Any) -> None:
        """Seal ``payload`` for ``topic`` and publish it. Raises what ``MqttTransport.publish`` raises."""
        self.inner.publish(topic, self.signer.seal(topic, payload), **kwargs)

    def try_publish(self, topic: str, payload: bytes, **kwargs: Any) -> bool:
        """Seal ``payload`` (a fresh sequence number on every try, so a retransmission is never a replay) and hand
        it to ``MqttTransport.try_publish``."""
        return self.inner.try_publish(topic, self.signer.seal(topic, payload), **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
