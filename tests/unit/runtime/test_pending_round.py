"""PendingRound: the wait for a round's base versions counts connected time only and asks for a resync once."""

from __future__ import annotations

from edge_runtime.pending import PendingRound
from hffm_core.protocol import ModuleKey, RoundControl

HEAD = ModuleKey.head("digit")
CTL = RoundControl(fleet="f", sender="fog-1", global_round=2, cluster_round=0, total_rounds=2, agg_every=1,
                   local_epochs=1, deadline_s=60, final=True, job="J1")


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_nothing_behind_means_no_wait_and_no_request() -> None:
    clock, asked = Clock(), []
    pending = PendingRound(CTL, clock=clock)
    assert pending.still_waiting([], connected=True, ask=asked.append) is False
    assert asked == []


def test_connected_wait_asks_once_after_resync_after_s_then_gives_up_at_wait_s() -> None:
    clock, asked = Clock(), []
    pending = PendingRound(CTL, clock=clock, wait_s=30.0, resync_after_s=5.0)
    clock.t += 4.9
    assert pending.still_waiting([HEAD], connected=True, ask=asked.append) and asked == []
    clock.t += 0.2
    assert pending.still_waiting([HEAD], connected=True, ask=asked.append) and asked == [[HEAD]]
    clock.t += 20
    assert pending.still_waiting([HEAD], connected=True, ask=asked.append) and asked == [[HEAD]]  # once only
    clock.t += 5
    assert pending.still_waiting([HEAD], connected=True, ask=asked.append) is False


def test_time_cut_off_from_the_broker_does_not_count_and_no_request_goes_out_meanwhile() -> None:
    clock, asked = Clock(), []
    pending = PendingRound(CTL, clock=clock, wait_s=30.0, resync_after_s=5.0)
    for _ in range(100):  # 100 s cut off, ticked every second
        clock.t += 1
        assert pending.still_waiting([HEAD], connected=False, ask=asked.append)
    assert asked == []
    clock.t += 1  # back: one second of waiting so far
    assert pending.still_waiting([HEAD], connected=True, ask=asked.append) and asked == []
    clock.t += 5
    assert pending.still_waiting([HEAD], connected=True, ask=asked.append) and asked == [[HEAD]]
