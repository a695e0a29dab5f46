"""How long a device waits for a round's base versions before it trains (or ends the job) with what it holds.

A round announcement names the versions its round starts from; the fog publishes them before the announcement, but
they can arrive after it (another topic), or not at all while the device is cut off from its fog's broker. The wait
counts only time connected to the broker (while cut off, the versions wait there, retained and queued), and after
``resync_after_s`` connected the device asks the fog once for the missing modules' full state. Pure: no MQTT.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hffm_core.protocol import ModuleKey, RoundControl

BASE_WAIT_S = 30.0  # connected seconds a device waits for a round's base versions
RESYNC_AFTER_S = 5.0  # ... and after these, it asks the fog for their full state


@dataclass
class PendingRound:
    """The announcement a device has yet to act on, and how long it has waited (connected) for its versions."""

    ctl: RoundControl
    clock: Callable[[], float] = time.monotonic
    wait_s: float = BASE_WAIT_S
    resync_after_s: float = RESYNC_AFTER_S
    since: float = field(init=False)
    last_tick: float = field(init=False)
    resync_asked: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.since = self.last_tick = self.clock()

    def still_waiting(self, behind: list[ModuleKey], *, connected: bool,
                      ask: Callable[[list[ModuleKey]], None]) -> bool:
        """Whether to keep waiting for ``behind`` (the modules below the round's base version). Calls ``ask`` once
        with them after ``resync_after_s`` connected. Time while not ``connected`` does not count."""
        now = self.clock()
        if not connected:
            self.since += now - self.last_tick
        self.last_tick = now
        waited = now - self.since
        if behind and connected and waited >= self.resync_after_s and not self.resync_asked:
            self.resync_asked = True
            ask(behind)
        return bool(behind) and waited < self.wait_s
