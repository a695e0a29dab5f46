"""CloudRound without a broker or a cloud service: aggregates applied / duplicate / stale / rejected, reports that
count once what they name is in, the merge into new global states and the version they go out as, the deadline
schedule, and a restart that resumes the round from its state on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud.round_engine import APPLIED, DUPLICATE, REJECTED, STALE, CloudRound, CloudSchedule
from cloud.round_state import CloudRoundState
from hffm_core.errors import AggregationError, DecodeError
from hffm_core.protocol import FogAggregate, FogRoundReport, ModuleKey, blobs_from_state, tensors_sha256

FLEET = "t"
HEAD, ENC = ModuleKey.head("digit"), ModuleKey.encoder("image")
ZERO = {"w": np.zeros(3, np.float32)}


def _agg(fog: str, value: float, weight: float, *, g: int = 1, key: ModuleKey = HEAD) -> FogAggregate:
    blobs = blobs_from_state({"w": np.full(3, value, np.float32)})
    return FogAggregate(fleet=FLEET, fog=fog, key=key, global_round=g, total_weight=weight, num_devices=1,
                        tensors=blobs, sha256=tensors_sha256(blobs),
                        idempotency_key=FogAggregate.default_key(FLEET, fog, g, 0, key))


def _report(fog: str, *, g: int = 1, modules: tuple[ModuleKey, ...] = (HEAD,)) -> FogRoundReport:
    return FogRoundReport(fleet=FLEET, fog=fog, global_round=g, modules=modules, devices=("d",), cluster_rounds=1)


def _decode(msg: FogAggregate) -> dict[str, np.ndarray]:
    return {"w": np.frombuffer(msg.tensors[0].data, np.float32).copy()}


def _round(tmp_path: Path, *, rounds: int = 2, aggregator: str = "fedavg") -> CloudRound:
    rnd = CloudRound(fogs=["fog-1", "fog-2"], keys=[HEAD, ENC], schedule=CloudSchedule(rounds=rounds),
                     state=CloudRoundState(tmp_path, aggregator=aggregator))
    rnd.state.reset()
    assert not rnd.open(1, now=0.0)
    return rnd


def test_the_schedule_gives_each_global_round_its_allowance_and_ends_the_job(tmp_path: Path) -> None:
    sched = CloudSchedule(rounds=2, agg_every=3, round_deadline_s=10.0, startup_timeout_s=100.0)
    assert sched.allowance(1) == 140.0 and sched.allowance(2) == 40.0
    rnd = _round(tmp_path)
    assert rnd.deadline == CloudSchedule().allowance(1) and rnd.round_g == 1
    assert rnd.open(3, now=5.0), "the round after the last one is the job's end"


def test_accept_applies_once_and_refuses_what_is_not_the_open_rounds(tmp_path: Path) -> None:
    rnd = _round(tmp_path)
    msg = _agg("fog-1", 1.0, 10.0)
    assert rnd.accept(msg, lambda: _decode(msg)).status == APPLIED
    again = rnd.accept(msg, lambda: pytest.fail("a duplicate is not decoded"))
    assert (again.status, again.ack, again.error) == (DUPLICATE, "applied", None)
    rnd.open(2, now=1.0)
    old = rnd.accept(_agg("fog-2", 1.0, 10.0, g=1), dict)
    assert (old.status, old.ack) == (STALE, "expired") and "stale aggregate for round 1" in str(old.error)
    ahead = rnd.accept(_agg("fog-2", 1.0, 10.0, g=3), dict)
    assert (ahead.status, ahead.ack) == (STALE, "")
    stranger = rnd.accept(_agg("fog-9", 1.0, 10.0, g=2), dict)
    assert (stranger.status, stranger.ack) == (REJECTED, "") and isinstance(stranger.error, DecodeError)


def test_a_late_copy_of_what_counted_in_a_closed_round_hears_applied_again(tmp_path: Path) -> None:
    """Under load a fog resends an aggregate (and its report) whose ack came after its backoff; the copy arrives
    once the cloud has closed that round. It was applied: a duplicate, acked applied, not a stale refusal."""
    rnd = _round(tmp_path)
    for fog in ("fog-1", "fog-2"):
        msg = _agg(fog, 1.0, 10.0)
        assert rnd.accept(msg, lambda m=msg: _decode(m)).status == APPLIED
        assert rnd.report(_report(fog), FLEET).status == APPLIED
    assert rnd.counted("fog-1") is False and rnd.counted("fog-2") is True
    rnd.close()
    rnd.open(2, now=1.0)
    copy = rnd.accept(_agg("fog-1", 1.0, 10.0), lambda: pytest.fail("a late copy is not decoded"))
    assert (copy.status, copy.ack, copy.error) == (DUPLICATE, "applied", None)
    report = rnd.report(_report("fog-2"), FLEET)
    assert (report.status, report.ack, report.error) == (DUPLICATE, "applied", None)
    never = rnd.accept(_agg("fog-1", 1.0, 10.0, key=ENC), dict)  # round 1 never had it: still stale
    assert (never.status, never.ack) == (STALE, "expired")
    stranger = rnd.accept(_agg("fog-9", 1.0, 10.0), dict)
    assert stranger.status == REJECTED


def test_a_bad_aggregate_is_rejected_and_a_report_naming_it_still_counts(tmp_path: Path) -> None:
    rnd = _round(tmp_path)

    def bad() -> dict[str, np.ndarray]:
        raise AggregationError("does not match the module's tensors")

    out = rnd.accept(_agg("fog-1", 1.0, 10.0), bad)
    assert (out.status, out.ack) == (REJECTED, "rejected") and isinstance(out.error, AggregationError)
    assert rnd.report(_report("fog-1"), FLEET).status == APPLIED
    assert not rnd.counted("fog-1") and rnd.reported == {"fog-1"}, "counted; fog-2 is still expected"


def test_a_report_counts_once_the_aggregates_it_names_are_in(tmp_path: Path) -> None:
    rnd = _round(tmp_path)
    assert rnd.report(_report("fog-1"), FLEET).ack == "applied"
    assert not rnd.counted("fog-1") and rnd.reported == set(), "its aggregate has not arrived yet"
    msg = _agg("fog-1", 1.0, 10.0)
    rnd.accept(msg, lambda: _decode(msg))
    assert not rnd.counted("fog-1") and rnd.reported == {"fog-1"}
    rnd.report(_report("fog-2", modules=()), FLEET)
    assert rnd.counted("fog-2") and rnd.complete()


def test_merge_is_the_weighted_mean_added_to_the_global_state_as_version_g(tmp_path: Path) -> None:
    rnd = _round(tmp_path, rounds=1)
    for fog, value, weight in (("fog-1", 1.0, 10.0), ("fog-2", 4.0, 30.0)):
        msg = _agg(fog, value, weight)
        rnd.accept(msg, lambda msg=msg: _decode(msg))
    merged = rnd.merge({HEAD: {"w": np.ones(3, np.float32)}, ENC: ZERO})
    assert list(merged.states) == [HEAD] and merged.modules_updated == 1 and merged.refused == 0
    np.testing.assert_allclose(merged.states[HEAD]["w"], 1.0 + (10 * 1.0 + 30 * 4.0) / 40)
    assert (merged.version, merged.last) == (1, True)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_a_merge_that_overflows_leaves_the_module_as_it_was(tmp_path: Path) -> None:
    rnd = _round(tmp_path)
    msg = _agg("fog-1", 3e38, 10.0)
    rnd.accept(msg, lambda: _decode(msg))
    merged = rnd.merge({HEAD: {"w": np.full(3, 3e38, np.float32)}, ENC: ZERO})
    assert merged.states == {} and merged.refused == 1 and merged.modules_updated == 1 and not merged.last


def test_a_robust_rule_that_refuses_is_counted_not_averaged(tmp_path: Path) -> None:
    rnd = CloudRound(fogs=["fog-1", "fog-2"], keys=[HEAD], schedule=CloudSchedule(),
                     state=CloudRoundState(tmp_path, aggregator="krum", aggregator_params={"byzantine": 1}))
    rnd.state.reset()
    rnd.open(1, now=0.0)
    for fog, value in (("fog-1", 1.0), ("fog-2", 2.0)):
        msg = _agg(fog, value, 10.0)
        rnd.accept(msg, lambda msg=msg: _decode(msg))
    merged = rnd.merge({HEAD: ZERO})
    assert merged.states == {} and merged.refused == 1


def test_a_restarted_round_resumes_its_aggregates_and_reports(tmp_path: Path) -> None:
    rnd = _round(tmp_path)
    for fog in ("fog-1", "fog-2"):
        msg = _agg(fog, 2.0, 10.0)
        rnd.accept(msg, lambda msg=msg: _decode(msg))
        rnd.report(_report(fog), FLEET)  # saved, then killed before it was counted
    rnd.state.close_files()
    again = CloudRound(fogs=["fog-1", "fog-2"], keys=[HEAD, ENC], schedule=CloudSchedule(),
                       state=CloudRoundState(tmp_path))
    assert again.state.load() == 1
    assert again.resume() == {"fog-1", "fog-2"}
    again.open(1, now=0.0, resume=True)
    assert again.complete()
    assert again.accept(_agg("fog-1", 2.0, 10.0), dict).status == DUPLICATE
    np.testing.assert_allclose(again.merge({HEAD: ZERO, ENC: ZERO}).states[HEAD]["w"], 2.0)
