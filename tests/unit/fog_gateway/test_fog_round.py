"""FogRound without a broker or a gateway: selection from adverts through a policy object, accept -> applied /
duplicate / stale / conflict / refused, min participants, late updates, the E_agg schedule, the close, and the
journal hooks (an in-memory journal here; the real one round-trips a committed position)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fog_gateway.policies import FogRules, LateUpdates, ResourceSelection, Selection, samples_of
from fog_gateway.round_engine import APPLIED, CONFLICT, DUPLICATE, PARTIAL, REFUSED, STALE, FogRound, RoundPosition
from fog_gateway.round_journal import RoundJournal
from fog_gateway.schedule import Schedule
from hffm_core.protocol import ModuleKey, ModuleUpdate, NodeState, RoundControl, blobs_from_state, tensors_sha256
from hffm_core.resources import ResourceThresholds

FLEET, FOG = "t", "fog-1"
HEAD = ModuleKey.head("digit")
ZERO = {"w": np.zeros((2, 3), np.float32)}


class MemoryJournal:
    """The RoundLog hooks, recorded."""

    kept = 1000

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def add_batch(self, deltas: Any, *, global_round: int, cluster_round: int, sums: Any = None) -> None:
        self.calls.append(("add", tuple((d.key, global_round, cluster_round) for d in deltas)))
        self.sums = sums

    def advance(self, position: Any, states: Any, stamps: Any, *, job: Any = None) -> None:
        self.calls.append(("advance", (position.round_g, position.cluster_c, position.in_round, job is not None)))

    def mark_announced(self) -> None:
        self.calls.append(("mark_announced", None))

    def reset(self) -> None:
        self.calls.append(("reset", None))


def _delta(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full((2, 3), value, np.float32)}


def _update(dev: str, value: float, n: int, *, g: int = 1, c: int = 1, key: str | None = None,
            covers: tuple[str, ...] = ()) -> ModuleUpdate:
    blobs = blobs_from_state(_delta(value))
    return ModuleUpdate(fleet=FLEET, sender=dev, fog=FOG, key=HEAD, global_round=g, cluster_round=c, base=(g, 0),
                        num_samples=n, train_loss=0.1, tensors=blobs, sha256=tensors_sha256(blobs),
                        idempotency_key=key or f"{FLEET}/{dev}/{g}.{c}/{HEAD}", covers=covers)


def _plan(*, agg_every: int = 1, g: int = 1) -> RoundControl:
    return RoundControl(fleet=FLEET, sender="cloud", global_round=g, cluster_round=0, total_rounds=3,
                        agg_every=agg_every, local_epochs=1, deadline_s=60, final=False, job="J")


class Round:
    """A FogRound of one module held by ``devices``, in cluster round (1,1)."""

    def __init__(self, devices: Iterable[str] = ("a", "b"), *, agg_every: int = 1, journal: Any = None,
                 **rules: Any) -> None:
        self.devices = set(devices)
        self.journal = journal if journal is not None else MemoryJournal()
        self.rnd = FogRound(fleet=FLEET, node=FOG, rules=FogRules(**rules), journal=self.journal,
                            schedule=Schedule())
        self.true = {HEAD: {n: a.copy() for n, a in ZERO.items()}}
        assert self.rnd.take_plan(_plan(agg_every=agg_every), now=0.0)
        assert self.rnd.due() and self.rnd.ready_modules({HEAD}, {HEAD: (0, -1)}, now=0.0) == {HEAD}
        self.rnd.start_global({HEAD}, {HEAD: ZERO}, now=0.0)
        self.open(1)

    def open(self, c: int, adverts: Mapping[str, NodeState] | None = None) -> None:
        self.rnd.open_cluster(c, holders=lambda _k: set(self.devices), adverts=adverts or {}, now=10.0 * c)

    def accept(self, msg: ModuleUpdate, reporters: tuple[str, ...] | None = None) -> Any:
        return self.rnd.accept(msg, reporters or msg.covers or (msg.sender,), holders=self.devices,
                               decode=lambda: {"w": np.frombuffer(msg.tensors[0].data, np.float32).reshape(2, 3)})

    def close(self) -> tuple[dict[ModuleKey, Any], list[tuple[ModuleKey, str, str]]]:
        new, refused = self.rnd.close(self.true, now=100.0)
        self.true.update(new)
        return new, refused


def test_round_position_is_a_small_ordered_value() -> None:
    assert RoundPosition(1, 2) < RoundPosition(2, 0) and str(RoundPosition(3, 1)) == "(3,1)"
    with pytest.raises(ValueError, match="g >= 0 and c >= 0"):
        RoundPosition(-1, 0)
    r = Round()
    assert r.rnd.at == RoundPosition(1, 1) and r.rnd.in_round


def test_accept_applies_once_acks_duplicates_and_refuses_conflicts() -> None:
    r = Round()
    first = r.accept(_update("a", 1.0, 10))
    assert (first.status, first.ack) == (APPLIED, "applied") and first.stored is not None
    assert r.journal.calls == [] and r.rnd.book.pending, "staged: committed (and acked) at the next flush"
    again = r.accept(_update("a", 1.0, 10))
    assert (again.status, again.ack, again.reason) == (DUPLICATE, "applied", "")
    other = r.accept(_update("a", 5.0, 10))  # same key, other content
    assert (other.status, other.ack) == (CONFLICT, "conflict")
    assert r.rnd.flush() == 1 and r.rnd.flush() == 0 and not r.rnd.book.pending
    assert r.rnd.book.commit_stats() == {"commits": 1, "updates": 1, "mean_updates": 1.0}, "an empty flush is none"
    assert r.journal.calls == [("add", ((f"{FLEET}/a/1.1/{HEAD}", 1, 1),))]
    running = r.journal.sums[HEAD]  # FedAvg: the running sum goes with the batch, the delta does not
    assert (running.count, running.weight) == (1, 10.0) and np.all(running.sums["w"] == 10.0)
    assert r.rnd.book.aggs[HEAD].count == 1


def test_stale_updates_hear_expired_only_for_a_closed_round() -> None:
    r = Round(agg_every=2)
    ahead = r.accept(_update("a", 1.0, 10, c=2))  # a round not opened yet
    assert (ahead.status, ahead.ack) == (STALE, "") and "open round is (1,1)" in ahead.reason
    r.accept(_update("a", 1.0, 10))
    r.close()
    assert r.rnd.settle({}) and r.rnd.in_round
    r.open(2)
    late = r.accept(_update("b", 4.0, 30, c=1))
    assert (late.status, late.ack) == (STALE, "expired") and r.rnd.book.aggs[HEAD].count == 0


def test_a_late_update_is_folded_with_its_staleness_weight() -> None:
    r = Round(agg_every=2, late=LateUpdates(mode="next_round", decay=0.25))
    r.accept(_update("a", 1.0, 10))
    r.close()
    r.rnd.settle({})
    r.open(2)
    late = r.accept(_update("b", 4.0, 30, c=1))
    assert late.status == APPLIED and late.stored is not None and late.stored.lag == 1
    assert r.rnd.book.aggs[HEAD].total_weight == 30 * 0.25 and r.rnd.late_folded == 1
    assert r.rnd.book.late[HEAD] == {"b"}


def test_unselected_devices_and_partial_covers_are_refused() -> None:
    r = Round(devices=("a", "b", "c"), selection=OnlySelection({"a", "b"}))
    assert r.rnd.participants[HEAD] == {"a", "b"}
    out = r.accept(_update("c", 1.0, 10))
    assert (out.status, out.ack) == (REFUSED, "") and "'c' was not selected" in out.reason
    stranger = r.rnd.accept(_update("x", 1.0, 10), ("x",), holders={"a", "b", "c"}, decode=lambda: _delta(1.0))
    assert stranger.status == REFUSED and "not an advertised holder" in stranger.reason
    r.accept(_update("a", 1.0, 10))
    partial = r.accept(_update("b", 2.0, 10, covers=("a", "b")))
    assert (partial.status, partial.ack) == (PARTIAL, "rejected") and "cannot be applied in part" in partial.reason


def test_close_averages_by_weight_and_min_participants_refuses_too_few() -> None:
    r = Round(devices=("a", "b", "c"), min_participants=2)
    r.accept(_update("a", 1.0, 10))
    assert not r.rnd.complete(expected=lambda k: r.rnd.expected(k, lambda d: True), gone=set, advertised=(),
                              now=20.0)
    new, refused = r.close()
    assert new == {} and [(k, c) for k, c, _ in refused] == [(HEAD, "too_few_participants")]

    r = Round(devices=("a", "b"), min_participants=2)
    r.accept(_update("a", 1.0, 10))
    r.accept(_update("b", 4.0, 30))
    assert r.rnd.complete(expected=lambda k: r.rnd.expected(k, lambda d: True), gone=set, advertised=(), now=20.0)
    new, refused = r.close()
    assert refused == [] and np.allclose(new[HEAD]["w"], (10 * 1.0 + 30 * 4.0) / 40)
    entry = r.rnd.summary(new, refused, seconds=1.23456, mixed=0)
    assert entry["reporters"] == ["a", "b"] and entry["updates"] == 2 and entry["seconds"] == 1.235


def test_an_offline_selected_device_holds_min_participants_until_it_is_gone() -> None:
    r = Round(devices=("a", "b"), min_participants=2)
    r.accept(_update("a", 1.0, 10))
    expected = lambda k: r.rnd.expected(k, lambda d: d != "b")  # noqa: E731 - b is offline
    assert not r.rnd.complete(expected=expected, gone=set, advertised=(), now=20.0), "b may come back"
    assert r.rnd.complete(expected=expected, gone=lambda: {"b"}, advertised=(), now=20.0)
    assert r.rnd.sit_out("b", (1, 1)) and not r.rnd.sit_out("b", (1, 1)) and r.rnd.expected(HEAD, bool) == {"a"}


class OnlySelection:
    """A selection policy of a test: exactly these devices, whatever their adverts say."""

    def __init__(self, devices: set[str]) -> None:
        self.devices = devices

    def select(self, key: ModuleKey, holders: Iterable[str], adverts: Mapping[str, NodeState]) -> Selection:
        return Selection(frozenset(set(holders) & self.devices))


def _advert(dev: str, *, samples: int, temp: float = 40.0) -> NodeState:
    return NodeState(fleet=FLEET, node=dev, role="device", fog=FOG, online=True, modules=(HEAD,),
                     num_samples={"digit": samples}, telemetry={"cpu_temp_c": temp})


def test_resource_selection_caps_by_samples_and_a_module_below_min_is_left_out() -> None:
    adverts = {"a": _advert("a", samples=5), "b": _advert("b", samples=50), "c": _advert("c", samples=20)}
    assert samples_of(adverts["b"], HEAD) == 50 and samples_of(None, HEAD) == 0
    assert ResourceSelection(max_per_module=2).select(HEAD, adverts, adverts).chosen == {"b", "c"}
    cool = ResourceSelection(thresholds=ResourceThresholds(max_cpu_temp_c=70.0))
    adverts["b"] = _advert("b", samples=50, temp=90.0)
    adverts["c"] = _advert("c", samples=20, temp=90.0)
    picked = cool.select(HEAD, adverts, adverts)
    assert picked.chosen == {"a"} and [d for d, _ in picked.passed_over] == ["b", "c"]
    r = Round(devices=("a", "b", "c"), selection=cool, min_participants=2)
    r.open(1, adverts)
    assert r.rnd.participants == {HEAD: set()}, "1 eligible holder, min_participants 2: nobody trains it"
    r = Round(devices=("a", "b", "c"), selection=cool, min_participants=1)
    r.open(1, adverts)
    assert r.rnd.participants == {HEAD: {"a"}}


def test_the_agg_schedule_decides_how_many_cluster_rounds_before_upward() -> None:
    r = Round(agg_every=2)
    r.rnd.schedule = Schedule(agg_every=1)  # a fixed E_agg of 1 below the cloud's 2
    r.rnd.start_global({HEAD}, {HEAD: ZERO}, now=0.0)
    assert r.rnd.agg_every() == 1
    r.open(1)
    r.accept(_update("a", 1.0, 10))
    new, _ = r.close()
    assert not r.rnd.settle(new) and not r.rnd.in_round
    assert r.rnd.upward() == [(HEAD, {"a": 10})]
    r.rnd.sent_upward([HEAD], now=50.0)
    assert r.rnd.sent_last == {HEAD} and r.rnd.sync_started == 50.0


def test_a_new_global_round_waits_for_the_versions_merged_from_what_it_sent() -> None:
    r = Round()
    r.rnd.sent_upward([HEAD], now=5.0)
    assert r.rnd.take_plan(_plan(g=2), now=10.0) and not r.rnd.take_plan(_plan(g=2), now=11.0)
    assert r.rnd.ready_modules({HEAD}, {HEAD: (0, -1)}, now=20.0) is None, "the version of round 1 is not in"
    assert r.rnd.ready_modules({HEAD}, {HEAD: (1, -1)}, now=20.0) == {HEAD}
    assert r.rnd.ready_modules({HEAD}, {HEAD: (0, -1)}, now=100.0) == set(), "after the grace: left out"


@pytest.mark.parametrize("aggregator", ["median", "fedavg"])
def test_commit_journals_the_position_and_a_new_round_resumes_from_it(tmp_path: Path, aggregator: str) -> None:
    journal = RoundJournal(tmp_path / "round.sqlite")
    r = Round(journal=journal, aggregator=aggregator)
    r.rnd.commit([HEAD], true=r.true, published=r.true, stamps={HEAD: (1, 0)}, start=True)
    r.accept(_update("a", 1.0, 10))
    r.accept(_update("b", 3.0, 10))
    r.accept(_update("c", 9.0, 10))  # not in the round: refused, never staged
    assert r.rnd.flush() == 2
    again = FogRound(fleet=FLEET, node=FOG, rules=FogRules(aggregator=aggregator), journal=journal)
    snap = journal.load()
    assert snap is not None
    again.restore(snap, now=1000.0, settle_s=5.0)
    assert again.at == RoundPosition(1, 1) and again.in_round and again.participants == {HEAD: {"a", "b"}}
    assert again.book.aggs[HEAD].count == 2 and again.deadline == 1060.0 and again.settle_until == 1005.0
    assert again.book.aggs[HEAD].result()["w"].tobytes() == r.rnd.book.aggs[HEAD].result()["w"].tobytes()
    assert again.book.round_weight == r.rnd.book.round_weight and again.book.reported == r.rnd.book.reported
    dup = again.accept(_update("a", 1.0, 10), ("a",), holders={"a", "b"}, decode=lambda: _delta(1.0))
    assert dup.status == DUPLICATE
    stored = journal._db.execute("SELECT COUNT(*), COUNT(data) FROM deltas").fetchone()
    assert stored == ((2, 2) if aggregator == "median" else (2, 0)), "FedAvg journals its sum, not the deltas"
    journal.close()


def test_the_close_check_judges_the_updated_module_first_and_stops_there() -> None:
    r = Round(devices=("a", "b", "c"))
    r.accept(_update("a", 1.0, 10))
    asked: list[ModuleKey] = []
    gone_calls: list[int] = []

    def expected(k: ModuleKey) -> set[str]:
        asked.append(k)
        return r.rnd.expected(k, lambda d: False, surely={"a", "b", "c"})  # the holders need no asking

    def gone() -> set[str]:
        gone_calls.append(1)
        return set()

    assert not r.rnd.complete(expected=expected, gone=gone, advertised=(), now=20.0, first=HEAD)
    assert asked == [HEAD] and gone_calls == []  # b and c still owe it: no need to look further
    r.accept(_update("b", 2.0, 10))
    r.accept(_update("c", 3.0, 10))
    assert r.rnd.complete(expected=expected, gone=gone, advertised=(), now=20.0, first=HEAD)
    assert gone_calls == [1]
    # Devices not surely reachable are asked one by one.
    assert r.rnd.expected(HEAD, lambda d: d == "c", surely={"a"}) == {"a", "c"}
