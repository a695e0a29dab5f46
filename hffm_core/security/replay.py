"""Replay protection: a sliding window of sequence numbers per signer, and the last sequence number per topic.

Each signer numbers its envelopes 1, 2, 3, ... (with gaps: a subscriber sees only some of a signer's topics, and a
restarted signer skips ahead). The guard accepts a number once: a number above the highest seen, or one inside the
window below it that has not been seen. Anything older than the window is refused, since it cannot be told apart
from a replay. Retained messages are the exception MQTT forces on us: the broker hands the latest retained message
of a topic out again on every (re)subscribe, so a *retained* delivery may repeat the last number accepted on that
topic, but no older one (an old retained message replayed by someone with publish rights would roll state back).

The state is kept in a small JSON file, written atomically; a restarted node keeps refusing what it saw before.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from hffm_core.atomic import atomic_file
from hffm_core.errors import ConfigError

DEFAULT_WINDOW = 4096
MAX_WINDOW = 1 << 20
MAX_TOPICS = 65_536  # topics whose last sequence number is remembered (oldest forgotten first)
_STATE_VERSION = 1


@dataclass(slots=True)
class _Window:
    high: int = 0  # highest sequence number accepted
    mask: int = 0  # bit i set: number (high - i) was accepted


class ReplayGuard:
    """Sliding-window replay state for many signers, optionally persisted to ``state_file``.

    ``check`` never changes state; ``commit`` records a number once its signature has been verified, so forged
    envelopes cannot move a window.
    """

    def __init__(self, *, window: int = DEFAULT_WINDOW, state_file: Path | None = None,
                 flush_interval_s: float = 1.0) -> None:
        """Raises:
            ConfigError: ``window`` out of range, or ``state_file`` exists but is not a replay state file.
        """
        if not (isinstance(window, int) and not isinstance(window, bool) and 1 <= window <= MAX_WINDOW):
            raise ConfigError(f"replay window must be an int in 1..{MAX_WINDOW}, got {window!r}")
        self.window = window
        self.state_file = Path(state_file) if state_file is not None else None
        self.flush_interval_s = flush_interval_s
        self._windows: dict[str, _Window] = {}
        self._topics: dict[str, tuple[str, int]] = {}
        self._dirty = False
        self._last_flush = time.monotonic()
        if self.state_file is not None and self.state_file.exists():
            self._load(self.state_file)

    # -- checks ------------------------------------------------------------------------------------------------
    def problem(self, signer: str, seq: int, topic: str, *, retained: bool = False) -> str | None:
        """Why ``seq`` from ``signer`` on ``topic`` must be refused as a replay, or None if it may be accepted."""
        w = self._windows.get(signer, _Window())
        if seq > w.high:
            return None
        if retained and self._topics.get(topic) == (signer, seq):
            return None  # the broker re-sent the latest retained message of this topic
        if seq <= w.high - self.window:
            return (f"sequence {seq} from {signer!r} is older than the replay window "
                    f"(highest {w.high}, window {self.window})")
        if (w.mask >> (w.high - seq)) & 1:
            return f"sequence {seq} from {signer!r} was already accepted"
        last = self._topics.get(topic)
        if retained and last is not None and last[0] == signer and seq < last[1]:
            # A retained message older than the topic's latest: accepting it would roll the topic back.
            return f"sequence {seq} from {signer!r} is older than the last one accepted on this topic ({last[1]})"
        return None

    def commit(self, signer: str, seq: int, topic: str) -> None:
        """Record ``seq`` as accepted from ``signer`` on ``topic`` (call only after the signature verified)."""
        w = self._windows.setdefault(signer, _Window())
        full = (1 << self.window) - 1
        if seq > w.high:
            shift = seq - w.high
            w.mask = ((w.mask << shift) | 1) & full if shift < self.window else 1
            w.high = seq
        else:
            w.mask |= 1 << (w.high - seq)
        last = self._topics.get(topic)
        if last is None or last[0] != signer or last[1] < seq:
            self._topics.pop(topic, None)
            self._topics[topic] = (signer, seq)
            while len(self._topics) > MAX_TOPICS:
                del self._topics[next(iter(self._topics))]
        self._dirty = True

    def highest(self, signer: str) -> int:
        """The highest sequence number accepted from ``signer`` (0 if none)."""
        return self._windows.get(signer, _Window()).high

    # -- persistence -------------------------------------------------------------------------------------------
    def maybe_flush(self) -> None:
        """Write the state if it changed and ``flush_interval_s`` has passed since the last write."""
        if self._dirty and time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        """Write the state now if it changed (atomically). Raises ``OSError`` if the file cannot be written."""
        self._last_flush = time.monotonic()
        if not self._dirty or self.state_file is None:
            return
        state = {
            "version": _STATE_VERSION,
            "window": self.window,
            "signers": {s: [w.high, format(w.mask, "x")] for s, w in sorted(self._windows.items())},
            "topics": {t: [s, q] for t, (s, q) in self._topics.items()},
        }
        with atomic_file(self.state_file) as fh:
            fh.write(json.dumps(state, separators=(",", ":")).encode())
        self._dirty = False

    def _load(self, path: Path) -> None:
        try:
            state = json.loads(path.read_text())
            if state.get("version") != _STATE_VERSION:
                raise ValueError(f"unsupported version {state.get('version')!r}")
            file_window = state["window"]
            if not (isinstance(file_window, int) and 1 <= file_window <= MAX_WINDOW):
                raise ValueError(f"bad window {file_window!r}")
            full = (1 << self.window) - 1
            # Grown since the file was written: numbers the old window had already let go of count as seen.
            unknown = full ^ ((1 << file_window) - 1) if self.window > file_window else 0
            for signer, (high, mask_hex) in state["signers"].items():
                if not (isinstance(high, int) and high >= 0 and isinstance(mask_hex, str)):
                    raise ValueError(f"bad entry for signer {signer!r}")
                self._windows[signer] = _Window(high=high, mask=(int(mask_hex, 16) | unknown) & full)
            for topic, (signer, seq) in state["topics"].items():
                if not (isinstance(signer, str) and isinstance(seq, int)):
                    raise ValueError(f"bad entry for topic {topic!r}")
                self._topics[topic] = (signer, seq)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(
                f"replay state file {str(path)!r} is unreadable or corrupt ({exc}); move it aside to start with "
                "empty replay windows (messages seen before it was written could then be replayed once)"
            ) from None
