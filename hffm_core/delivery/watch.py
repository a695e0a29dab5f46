"""Raise an alert when the broker reports dropped messages: a QoS 1 PUBACK was given for something that then never
reached a subscriber (a client's queue overflowed). Mosquitto publishes its running count on ``$SYS`` every
``sys_interval`` seconds (1 s in our templates); fog gateways and the cloud subscribe to it."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"


class DroppedWatch:
    """Follows the broker's dropped-message counter; every increase is one WARNING and one alert."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.last: int | None = None
        self.alerts = 0
        self.dropped = 0

    def update(self, payload: bytes) -> int:
        """Take one counter value; returns how many drops it adds (0 for an unreadable value)."""
        text = payload.decode("ascii", errors="replace").strip()
        if not (0 < len(text) <= 20 and text.isdigit()):
            return 0
        value = int(text)
        if self.last is None or value < self.last:  # first reading, or the broker restarted and counts from 0
            added = value
        else:
            added = value - self.last
        self.last = value
        if added > 0:
            self.alerts += 1
            self.dropped += added
            log.warning("ALERT %s: the broker dropped %d message(s) (%d in its count): a client's queue overflowed "
                        "after the broker had acknowledged them; outboxes resend what was not acked", self.node,
                        added, value)
        return added

    def stats(self) -> dict[str, int]:
        return {"alerts": self.alerts, "dropped": self.dropped}
