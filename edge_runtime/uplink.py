"""A device's way to its fog: code a module delta into an update (through the device's error feedback) and queue it
in the outbox until the fog acks it, or, without an outbox, publish it once (docs/reliability.md)."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from hffm_core.compression import ErrorFeedback
from hffm_core.compression.module_codec import pack
from hffm_core.compression.table import CodecTable
from hffm_core.delivery import Outbox, round_tag
from hffm_core.protocol import ModuleKey, ModuleUpdate, topics
from hffm_core.protocol.routing import encode_for

CATEGORY = "device_to_fog"


class Publisher(Protocol):
    """The device's transport, as far as the uplink uses it."""

    @property
    def connected(self) -> bool: ...

    def publish(self, topic: str, payload: bytes, *, category: str) -> object: ...

    def try_publish(self, topic: str, payload: bytes, *, category: str) -> bool: ...


@dataclass(eq=False, kw_only=True)
class Uplink:
    """Codes and sends one device's updates to its fog. ``base_of``: the version a module's delta is taken from (the
    last cluster version the device applied); ``residuals_path``: where the error-feedback residuals are saved."""

    fleet: str
    fog: str
    node: str
    codecs: CodecTable
    feedback: ErrorFeedback
    residuals_path: Path
    outbox: Outbox | None
    transport: Publisher
    base_of: Callable[[ModuleKey], tuple[int, int]]

    @property
    def connected(self) -> bool:
        return bool(self.transport.connected)

    def build(self, key: ModuleKey, delta: dict[str, np.ndarray], samples: int, loss: float, g: int, c: int, *,
              covers: tuple[str, ...] = ()) -> ModuleUpdate:
        """Code ``delta`` (through this device's error feedback) into the update of ``key`` for round (g, c)."""
        packed, _sent = pack(delta, self.codecs.for_key(key), feedback=self.feedback, stream=str(key),
                             seed=zlib.crc32(f"{self.node}/{g}.{c}/{key}".encode()))
        return ModuleUpdate(fleet=self.fleet, sender=self.node, fog=self.fog, key=key, global_round=g,
                            cluster_round=c, base=self.base_of(key), num_samples=samples, train_loss=loss,
                            idempotency_key=ModuleUpdate.default_key(self.fleet, self.node, g, c, key), covers=covers,
                            **packed.fields())

    def send(self, update: ModuleUpdate, payload: bytes | None = None) -> int:
        """Queue ``update`` for the fog (outbox) or publish it once; returns its size."""
        topic = topics.up(self.fleet, self.fog, update.key, self.node)
        payload = encode_for(topic, update) if payload is None else payload  # the topic names sender, fog and module
        if self.outbox is not None:
            self.outbox.put(update.idempotency_key, topic, payload,
                            round_=round_tag(update.global_round, update.cluster_round))
        else:
            self.transport.publish(topic, payload, category=CATEGORY)
        return len(payload)

    def resend(self, key: str, topic: str, payload: bytes, round_: int) -> None:
        """Send an already coded update (one a D2D relay did not ack) to the fog."""
        if self.outbox is not None:
            self.outbox.put(key, topic, payload, round_=round_)
        else:
            self.transport.try_publish(topic, payload, category=CATEGORY)

    def save_feedback(self) -> None:
        self.feedback.save(self.residuals_path)

    def reset_feedback(self) -> None:
        """Forget the residuals (a new job starts from fresh modules)."""
        self.feedback = ErrorFeedback()
