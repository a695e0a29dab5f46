"""The fog gateway's round logic without a broker (a fake transport records what it publishes): a gateway
restarted mid-round resumes from its journal and applies every update exactly once, a new job is not polluted by
an old journal, job ids (the last job's retained messages are ignored, a new job's plan is joined),
min_participants, the offline grace, and late updates in both modes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import hffm_core.service as service_module
from fog_gateway.config import FogConfig, FogSection
from fog_gateway.round_journal import RoundJournalError
from fog_gateway.service import FogGateway
from hffm_core.protocol import (
    GLOBAL_STAGE,
    Ack,
    FogAggregate,
    ModuleKey,
    ModuleUpdate,
    ModuleVersion,
    NodeState,
    RoundControl,
    blobs_from_state,
    decode,
    encode,
    tensors_sha256,
    topics,
)
from hffm_core.transport import TrafficMeter

FLEET, FOG = "t", "fog-1"
HEAD, ENC = ModuleKey.head("digit"), ModuleKey.encoder("image")
ZERO = {"w": np.zeros((2, 3), np.float32)}


class FakeTransport:
    """Stands in for MqttTransport: always connected, records every publish."""

    def __init__(self, *, meter: TrafficMeter, **_: Any) -> None:
        self.meter, self.sent = meter, []
        self.connected, self.max_packet_size = True, 0

    def publish(self, topic: str, payload: bytes, *, category: str, retain: bool = False, **_: Any) -> None:
        self.sent.append((topic, payload))
        self.meter.add(category, len(payload))

    def try_publish(self, topic: str, payload: bytes, *, category: str, **kwargs: Any) -> bool:
        self.publish(topic, payload, category=category, **kwargs)
        return True


def _delta(value: float) -> dict[str, np.ndarray]:
    return {"w": np.arange(6, dtype=np.float32).reshape(2, 3) * value + value}


class Fog:
    """A gateway fed through ``dispatch()`` (retained adverts, global versions and the cloud's plan as a broker would
    deliver them), restartable on the same state_dir as after a kill -9 (nothing is closed or flushed)."""

    def __init__(self, tmp_path: Path, devices: dict[str, tuple[ModuleKey, ...]], *, job: str = "", **fog: Any
                 ) -> None:
        self.devices = devices
        self.job = job  # the job of the cloud's plan and versions
        self.cfg = FogConfig(fog=FogSection(id=FOG, fleet=FLEET, devices=sorted(devices), round_deadline_s=60,
                                            startup_timeout_s=30, **fog), state_dir=str(tmp_path / "state"))
        self.plan: RoundControl | None = None
        self.gw = self.boot()

    def boot(self) -> FogGateway:
        self.gw = FogGateway(self.cfg)
        self.gw.start()
        for dev, keys in self.devices.items():
            self.advert(dev, keys)
        for key in {k for keys in self.devices.values() for k in keys}:
            self.version(key, ZERO, 0)
        if self.plan is not None:
            self.gw.dispatch(topics.ctl(FLEET, "cloud"), encode(self.plan), retained=True)
        return self.gw

    def version(self, key: ModuleKey, state: dict[str, np.ndarray], g: int, *, job: str | None = None) -> None:
        blobs = blobs_from_state(state)
        version = ModuleVersion(fleet=FLEET, sender="cloud", key=key, global_round=g, stage=GLOBAL_STAGE,
                                tensors=blobs, sha256=tensors_sha256(blobs), job=self.job if job is None else job)
        self.gw.dispatch(topics.global_(FLEET, key), encode(version), retained=True)

    def start_job(self, *, agg_every: int = 1, total_rounds: int = 1, global_round: int = 1,
                  final: bool = False) -> None:
        self.plan = RoundControl(fleet=FLEET, sender="cloud", global_round=global_round, cluster_round=0,
                                 total_rounds=total_rounds, agg_every=agg_every, local_epochs=1, deadline_s=60,
                                 final=final, job=self.job)
        self.gw.dispatch(topics.ctl(FLEET, "cloud"), encode(self.plan), retained=True)
        self.gw.tick()

    def advert(self, dev: str, keys: tuple[ModuleKey, ...], *, online: bool = True,
               skip: tuple[int, int] | None = None, job: str = "") -> None:
        advert = NodeState(fleet=FLEET, node=dev, role="device", fog=FOG, online=online, modules=keys, skip=skip,
                           job=job)
        self.gw.dispatch(topics.state(FLEET, dev), encode(advert), retained=True)

    def update(self, dev: str, value: float, n: int, *, key: ModuleKey = HEAD, c: int = 1, g: int = 1) -> str:
        blobs = blobs_from_state(_delta(value))
        idem = f"{FLEET}/{dev}/{g}.{c}/{key}"
        msg = ModuleUpdate(fleet=FLEET, sender=dev, fog=FOG, key=key, global_round=g, cluster_round=c, base=(g, 0),
                           num_samples=n, train_loss=0.1, tensors=blobs, sha256=tensors_sha256(blobs),
                           idempotency_key=idem)
        self.gw.dispatch(topics.up(FLEET, FOG, key, dev), encode(msg))
        self.gw.flush()  # as the service loop does after each batch of messages: commit, then ack
        return idem

    def deadline(self) -> None:
        self.gw.deadline = 0.0
        self.gw.tick()

    def sent(self, kind: str) -> list[tuple[str, bytes]]:
        return [(t, p) for t, p in self.gw.transport.sent if f"/{kind}/" in t or t.endswith(f"/{kind}/{FOG}")]

    def acks(self, dev: str) -> list[tuple[tuple[str, ...], str]]:
        return [(a.keys, a.status) for a in (decode(p, Ack) for t, p in self.gw.transport.sent
                                            if t == topics.ack(FLEET, FOG, dev, FOG))]

    def aggregate(self, key: ModuleKey = HEAD) -> tuple[np.ndarray, float]:
        found = [decode(p, FogAggregate) for t, p in self.sent("fogup") if t == topics.fogup(FLEET, FOG, key)]
        assert found, f"no aggregate of {key} was sent upward"
        return np.frombuffer(found[-1].tensors[0].data, np.float32).reshape(2, 3), found[-1].total_weight


@pytest.fixture(autouse=True)
def fake_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "MqttTransport", FakeTransport)


THREE = {"a": (HEAD,), "b": (HEAD,), "c": (HEAD,)}


@pytest.mark.parametrize(("rule", "params"), [("fedavg", {}), ("median", {}), ("krum", {"byzantine": 0, "multi": 2})])
def test_restart_mid_round_resumes_and_applies_each_update_once(tmp_path: Path, rule: str,
                                                                 params: dict[str, Any]) -> None:
    reference = Fog(tmp_path / "ref", THREE, aggregator=rule, aggregator_params=params)
    reference.start_job()
    for dev, value, n in (("a", 1.0, 10), ("b", 4.0, 30), ("c", -2.0, 20)):
        reference.update(dev, value, n)
    expected, weight = reference.aggregate()

    fog = Fog(tmp_path / "run", THREE, aggregator=rule, aggregator_params=params)
    fog.start_job()
    key_a, key_b = fog.update("a", 1.0, 10), fog.update("b", 4.0, 30)
    assert fog.acks("a") == [((key_a,), "applied")] and fog.acks("b") == [((key_b,), "applied")]
    first = fog.gw
    fog.boot()  # kill -9 and restart: the first gateway is simply abandoned
    assert fog.gw is not first and fog.gw.in_round and (fog.gw.round_g, fog.gw.cluster_c) == (1, 1)
    assert fog.gw.book.aggs[HEAD].count == 2 and not fog.sent("ctl"), "a resumed round is not announced again"
    fog.update("a", 1.0, 10)  # its ack was lost: the retransmission is acked, never counted twice
    assert fog.acks("a") == [((key_a,), "applied")] and fog.gw.rejected["duplicate"] == 1
    fog.update("c", -2.0, 20)
    got, got_weight = fog.aggregate()
    assert got.tobytes() == expected.tobytes() and got_weight == weight == 60.0


def test_a_kill_before_the_publications_publishes_them_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fog = Fog(tmp_path, THREE)
    with monkeypatch.context() as patch:
        patch.setattr(FogGateway, "_announce", lambda self, versions: None)  # killed right after the commit
        fog.start_job()
    assert not fog.sent("ctl") and not fog.sent("cluster")
    fog.boot()
    (ctl,) = [decode(p, RoundControl) for _t, p in fog.sent("ctl")]
    assert (ctl.global_round, ctl.cluster_round, ctl.participants) == (1, 1, {str(HEAD): ("a", "b", "c")})
    (version,) = [decode(p, ModuleVersion) for _t, p in fog.sent("cluster")]
    assert version.stamp == (1, 0) and version.delta_base is None  # the full state, at the stamp it had
    fog.boot()  # announced now: a second restart publishes nothing again
    assert not fog.sent("ctl") and not fog.sent("cluster")


def test_a_failed_journal_write_is_never_acked_and_stops_the_gateway(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    fog = Fog(tmp_path, THREE)
    fog.start_job()

    def full_disk(*_a: object, **_k: object) -> None:
        raise RoundJournalError("fog round journal: database or disk is full")

    monkeypatch.setattr(fog.gw.journal, "add_batch", full_disk)
    with pytest.raises(RoundJournalError, match="disk is full"):  # the batch's commit: the service loop stops
        fog.update("a", 1.0, 10)
    assert fog.acks("a") == []
    with pytest.raises(RoundJournalError, match="disk is full"):
        fog.gw.tick()
    monkeypatch.undo()
    monkeypatch.setattr(service_module, "MqttTransport", FakeTransport)
    fog.boot()  # the restarted gateway never saw the update; the device resends it (it was never acked)
    assert fog.gw.book.aggs[HEAD].count == 0
    key = fog.update("a", 1.0, 10)
    assert fog.acks("a") == [((key,), "applied")] and fog.gw.book.aggs[HEAD].count == 1


def test_a_new_job_is_not_polluted_by_an_old_journal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fog = Fog(tmp_path, THREE)
    fog.start_job(total_rounds=3, global_round=2)
    key_a = fog.update("a", 1.0, 10, g=2)
    assert fog.acks("a") == [((key_a,), "applied")]
    fog.plan = None  # the new job's cloud has not announced anything yet
    fog.boot()
    assert (fog.gw.round_g, fog.gw.book.aggs[HEAD].count) == (2, 1)  # resumed, until a plan says otherwise
    with caplog.at_level(logging.WARNING, logger="fog_gateway"):
        fog.start_job(total_rounds=3, global_round=1)  # a fresh job: its plan starts below the journal's round
    assert "not the job of the round journal" in caplog.text
    assert (fog.gw.round_g, fog.gw.cluster_c) == (1, 1) and fog.gw.book.aggs[HEAD].count == 0
    assert key_a not in fog.gw.book.applied
    fog.update("a", 1.0, 10)
    assert fog.gw.book.aggs[HEAD].count == 1
    fog.boot()  # and the journal now holds the new job
    assert fog.gw.round_g == 1 and fog.gw.book.aggs[HEAD].count == 1 and key_a not in fog.gw.book.applied


def test_the_same_job_resumes_and_a_different_plan_starts_over(tmp_path: Path) -> None:
    fog = Fog(tmp_path, THREE)
    fog.start_job(total_rounds=2)
    fog.update("a", 1.0, 10)
    fog.boot()  # the same plan comes back (retained): resumed
    assert fog.gw.book.aggs[HEAD].count == 1 and fog.gw.job is None
    fog.plan = RoundControl(fleet=FLEET, sender="cloud", global_round=1, cluster_round=0, total_rounds=4,
                            agg_every=1, local_epochs=1, deadline_s=60)
    fog.boot()  # another job shape: from scratch
    assert fog.gw.round_g == 0 and fog.gw.book.applied == {}
    fog.gw.tick()
    assert fog.gw.in_round and fog.gw.book.aggs[HEAD].count == 0


def test_min_participants_at_the_deadline(tmp_path: Path) -> None:
    fog = Fog(tmp_path, {**THREE, "d": (ENC,)}, min_participants=2)
    fog.start_job()
    (ctl,) = [decode(p, RoundControl) for _t, p in fog.sent("ctl")]
    assert ctl.participants[str(ENC)] == ()  # one holder < 2: left out, nobody trains it
    fog.update("a", 1.0, 10)
    fog.gw.tick()
    assert fog.gw.in_round  # b and c still expected
    fog.deadline()
    assert not fog.gw.in_round and fog.gw.rejected["too_few_participants"] == 1
    assert fog.gw.rounds_log[-1]["too_few_participants"] == [str(HEAD)]
    assert fog.gw.rounds_log[-1]["modules_updated"] == 0 and not fog.sent("fogup")


@pytest.mark.parametrize("minimum", [1, 2])
def test_min_participants_waits_for_a_selected_device_that_went_offline(tmp_path: Path, minimum: int) -> None:
    fog = Fog(tmp_path, THREE, min_participants=minimum)
    fog.start_job()
    fog.update("a", 1.0, 10)
    fog.advert("c", (HEAD,), skip=(1, 1))  # c sits the round out
    fog.advert("b", (HEAD,), online=False)  # b's last will
    fog.gw.tick()
    if minimum == 1:
        assert fog.gw.in_round, "b may be back within offline_grace_s to resend its update"
        fog.gw.offline_since["b"] -= 10.5
        fog.gw.tick()
        assert not fog.gw.in_round  # everyone still expected reported: closed one grace after b's will
        return
    assert fog.gw.in_round, "1 of min 2 reported while b could still come back: wait"
    fog.advert("b", (HEAD,))
    fog.update("b", 4.0, 30)
    assert not fog.gw.in_round and fog.gw.rejected["too_few_participants"] == 0
    got, weight = fog.aggregate()
    np.testing.assert_allclose(got, (10 * _delta(1.0)["w"] + 30 * _delta(4.0)["w"]) / 40, rtol=1e-6)
    assert weight == 40


TWO = {"a": (HEAD,), "b": (HEAD,)}


def test_late_update_rejected_by_default(tmp_path: Path) -> None:
    fog = Fog(tmp_path, TWO)
    fog.start_job(agg_every=2)
    fog.update("a", 1.0, 10)
    fog.deadline()  # b missed round (1,1)
    assert (fog.gw.cluster_c, fog.gw.in_round) == (2, True)
    late = fog.update("b", 4.0, 30, c=1)
    assert fog.acks("b") == [((late,), "expired")] and fog.gw.book.aggs[HEAD].count == 0
    assert fog.gw.rejected["DecodeError"] == 1


def test_late_update_folded_into_the_next_round(tmp_path: Path) -> None:
    fog = Fog(tmp_path, TWO, late_updates="next_round", staleness_decay=0.25)
    fog.start_job(agg_every=2)
    fog.update("a", 1.0, 10)
    fog.deadline()
    state_1 = fog.gw.pub.true[HEAD]["w"].copy()  # a's delta alone
    late = fog.update("b", 4.0, 30, c=1)
    assert fog.acks("b") == [((late,), "applied")] and fog.gw.late_folded == 1
    assert fog.gw.book.late[HEAD] == {"b"} and fog.gw.book.aggs[HEAD].total_weight == 30 * 0.25
    fog.update("b", 4.0, 30, c=1)  # a retransmission: acked again, not folded twice
    assert fog.gw.book.aggs[HEAD].count == 1 and fog.gw.rejected["duplicate"] == 1
    fog.boot()  # the late delta and its weight survive a restart
    assert fog.gw.book.aggs[HEAD].total_weight == 7.5 and fog.gw.book.late[HEAD] == {"b"}
    assert fog.gw.in_round, "b still owes its on-time update of round (1,2)"
    fog.update("a", 2.0, 10, c=2)
    fog.update("b", 3.0, 30, c=2)
    assert not fog.gw.in_round
    mix = (7.5 * _delta(4.0)["w"] + 10 * _delta(2.0)["w"] + 30 * _delta(3.0)["w"]) / 47.5
    np.testing.assert_allclose(fog.gw.pub.true[HEAD]["w"], state_1 + mix, rtol=1e-5)
    _got, weight = fog.aggregate()
    assert weight == 40  # the samples behind the aggregate: each device once, with its latest count


def test_only_one_round_late_is_folded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fog = Fog(tmp_path, TWO, late_updates="next_round")
    fog.start_job(agg_every=3)
    fog.update("a", 1.0, 10)
    fog.deadline()
    fog.update("a", 1.0, 10, c=2)
    fog.deadline()
    assert fog.gw.cluster_c == 3
    with caplog.at_level(logging.WARNING):
        late = fog.update("b", 4.0, 30, c=1)
    assert fog.acks("b") == [((late,), "expired")] and fog.gw.book.aggs[HEAD].count == 0
    assert "2 cluster rounds late (at most 1 is folded in)" in caplog.text


def test_a_late_update_after_the_global_round_left_is_expired(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fog = Fog(tmp_path, TWO, late_updates="next_round")
    fog.start_job(agg_every=1, total_rounds=2)
    fog.update("a", 1.0, 10)
    fog.deadline()  # the global round's aggregate leaves for the cloud without b
    with caplog.at_level(logging.WARNING):
        late = fog.update("b", 4.0, 30, c=1)
    assert fog.acks("b") == [((late,), "expired")]
    assert "aggregate has already left for the cloud" in caplog.text


def _ctl(fog: Fog) -> list[RoundControl]:
    return [decode(p, RoundControl) for _t, p in fog.sent("ctl")]


def test_a_fresh_fog_ignores_the_last_jobs_final_and_joins_the_next_job(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The brokers still hold job J1's end (its final plan and versions, retained): a new fog waits for a job
    instead of finishing, and trains job J2 from J2's versions once J2's plan names the job."""
    old = {"w": np.full((2, 3), 7.0, np.float32)}
    fog = Fog(tmp_path, TWO, job="J1")  # boot() delivered J1's version 0 (parked: this fog is in no job yet)
    fog.version(HEAD, old, 2)
    with caplog.at_level(logging.WARNING, logger="hffm_core.downlink"):
        fog.start_job(total_rounds=2, global_round=3, final=True)
        fog.start_job(total_rounds=2, global_round=3, final=True)  # delivered again: counted, logged once
    assert not fog.gw.done and fog.gw.plan is None and fog.gw.jobs.job is None
    assert fog.gw.rejected["other_job"] == 2 and caplog.text.count("ignoring the final round announcement") == 1
    assert not fog.sent("ctl") and not fog.sent("cluster")

    fog.job = "J2"
    fog.version(HEAD, ZERO, 0)  # the new cloud's version 0 arrives before its plan: kept aside, then applied
    fog.start_job(total_rounds=2)
    assert fog.gw.jobs.job == "J2" and fog.gw.in_round and (fog.gw.round_g, fog.gw.cluster_c) == (1, 1)
    np.testing.assert_array_equal(fog.gw.start_state[HEAD]["w"], ZERO["w"])  # J2's state, not J1's 7.0
    (ctl,) = _ctl(fog)
    (version,) = [decode(p, ModuleVersion) for _t, p in fog.sent("cluster")]
    assert (ctl.job, ctl.final, version.job, version.stamp) == ("J2", False, "J2", (1, 0))
    adverts = [decode(p, NodeState) for t, p in fog.gw.transport.sent if t == topics.state(FLEET, FOG)]
    assert adverts[-1].job == "J2" and adverts[-1].online


def test_a_fog_in_a_job_leaves_it_for_the_clouds_new_job(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fog = Fog(tmp_path, TWO, job="J1")
    fog.start_job(total_rounds=3)
    key_a = fog.update("a", 1.0, 10)
    assert fog.acks("a") == [((key_a,), "applied")]
    fog.boot()  # a restart resumes J1 from the journal
    assert fog.gw.jobs.job == "J1" and fog.gw.book.aggs[HEAD].count == 1
    fog.job = "J2"
    fog.version(HEAD, _delta(3.0), 0)
    assert fog.gw.rejected["other_job"] == 1  # a J2 version while in J1: kept aside, counted
    with caplog.at_level(logging.WARNING, logger="fog_gateway"):
        fog.start_job(total_rounds=3)
    assert "announces job 'J2'; leaving job 'J1'" in caplog.text
    assert fog.gw.jobs.job == "J2" and fog.gw.in_round and fog.gw.book.aggs[HEAD].count == 0
    assert key_a not in fog.gw.book.applied
    np.testing.assert_array_equal(fog.gw.start_state[HEAD]["w"], _delta(3.0)["w"])
    fog.advert("b", (HEAD,), online=False, job="J1")  # b's retained advert of J1: ignored, b stays a holder
    assert fog.gw.rejected["other_job"] == 2 and "b" in fog.gw.holdings
    fog.boot()  # the journal now holds J2
    assert fog.gw.jobs.job == "J2" and fog.gw.in_round and fog.gw.journal.load().job["job"] == "J2"


def test_the_fog_finishes_on_the_final_plan_of_its_own_job(tmp_path: Path) -> None:
    fog = Fog(tmp_path, TWO, job="J1")
    fog.start_job(total_rounds=1)
    fog.update("a", 1.0, 10)
    fog.update("b", 2.0, 10)
    assert not fog.gw.in_round
    fog.version(HEAD, ZERO, 1)
    fog.start_job(total_rounds=1, global_round=2, final=True)
    fog.gw.tick()
    assert fog.gw.done and _ctl(fog)[-1].final and _ctl(fog)[-1].job == "J1"


def test_an_offline_device_is_waited_for_one_grace_at_most(tmp_path: Path) -> None:
    """min_participants 2: b's last will says it is offline while a has reported. The round waits (b may come
    back) for offline_grace_s, not for the deadline; b is left out of later rounds until it is online again."""
    fog = Fog(tmp_path, THREE, min_participants=2, offline_grace_s=10.0)
    fog.start_job(agg_every=3, total_rounds=1)
    fog.advert("c", (HEAD,), skip=(1, 1))
    fog.update("a", 1.0, 10)
    fog.advert("b", (HEAD,), online=False)
    fog.gw.tick()
    assert fog.gw.in_round and fog.gw.cluster_c == 1, "within the grace: b may still come back"
    fog.gw.offline_since["b"] -= 10.5  # one grace later, long before the 60 s deadline
    fog.gw.tick()
    assert (fog.gw.cluster_c, fog.gw.in_round) == (2, True) and fog.gw.rejected["too_few_participants"] == 1
    assert fog.gw.participants[HEAD] == {"a", "c"}  # b is not expected while offline
    fog.update("a", 1.0, 10, c=2)
    fog.update("c", 2.0, 10, c=2)
    assert fog.gw.cluster_c == 3
    fog.advert("b", (HEAD,))  # online again: selected from the next round on
    assert "b" not in fog.gw.offline_since and fog.gw.participants[HEAD] == {"a", "c"}
    fog.update("a", 1.0, 10, c=3)
    fog.update("c", 2.0, 10, c=3)
    assert not fog.gw.in_round


def test_an_offline_device_costs_a_round_one_grace_and_later_rounds_nothing(tmp_path: Path) -> None:
    """An open round keeps a participant whose last will said offline for offline_grace_s (a device killed and
    restarted at once resends its update), then closes without it; before it opens a global round the fog waits (up
    to startup_timeout_s) for every device to advertise, but not for one offline longer than the grace."""
    fog = Fog(tmp_path, TWO)
    fog.start_job(total_rounds=2)
    fog.advert("b", (HEAD,), online=False)
    fog.update("a", 1.0, 10)
    fog.version(HEAD, ZERO, 1)
    fog.start_job(total_rounds=2, global_round=2)
    assert fog.gw.in_round and fog.gw.round_g == 1, "within the grace: b may come back and resend"
    fog.gw.offline_since["b"] -= 5.0
    fog.gw.tick()
    assert fog.gw.in_round and fog.gw.round_g == 1
    fog.gw.offline_since["b"] -= 5.5  # one grace after b's will: round 1 closes without b, round 2 starts at once
    fog.gw.tick()
    fog.gw.tick()
    assert fog.gw.in_round and fog.gw.round_g == 2 and fog.gw.participants[HEAD] == {"a"}
    assert fog.gw.rounds_log[0]["reporters"] == ["a"]


def test_an_offline_d2d_member_is_waited_for_through_its_group(tmp_path: Path) -> None:
    """A D2D member whose group has a member online may still reach the fog through it: no grace, the deadline."""
    from fog_gateway.config import FogD2dConfig

    fog = Fog(tmp_path, TWO, min_participants=2)
    fog.cfg = FogConfig(fog=fog.cfg.fog, d2d=FogD2dConfig(groups=[["a", "b"]]), state_dir=fog.cfg.state_dir)
    fog.boot()
    fog.start_job(total_rounds=1)
    fog.advert("b", (HEAD,), online=False)
    fog.gw.offline_since["b"] -= 60
    fog.update("a", 1.0, 10)
    fog.gw.tick()
    assert fog.gw.in_round and "b" in fog.gw._expected(HEAD) and not fog.gw._gone()


@pytest.mark.parametrize(("fields", "match"), [
    ({"min_participants": 0}, "min_participants must be an int >= 1"),
    ({"min_participants": 4}, "above the fog's 3 device"),
    ({"min_participants": 3, "max_participants_per_module": 2}, "above max_participants_per_module 2"),
    ({"late_updates": "later"}, r"unknown late_updates 'later'; expected one of \['reject', 'next_round'\]"),
    ({"staleness_decay": 0.0}, r"staleness_decay must be a number in \(0, 1\]"),
    ({"staleness_decay": 1.5}, r"staleness_decay must be a number in \(0, 1\]"),
    ({"staleness_decay": float("nan")}, r"staleness_decay must be a number in \(0, 1\]"),
    ({"offline_grace_s": 0.0}, "offline_grace_s must be a finite number of seconds > 0"),
])
def test_straggler_settings_are_validated(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FogSection(id=FOG, fleet=FLEET, devices=["a", "b", "c"], **fields)


def test_a_copy_with_other_content_under_an_applied_key_is_a_conflict_not_applied(tmp_path: Path) -> None:
    """A spoofed update applied first must not let the fog ack the device's real one as "applied" (issue 18): the
    second copy under the same key with another digest hears "conflict", is counted, and changes nothing; across
    a restart too (the digest is journaled)."""
    fog = Fog(tmp_path / "run", THREE)
    fog.start_job()
    key_a = fog.update("a", 100.0, 10)  # the forgery, first
    fog.update("a", 1.0, 10)  # the device's own update under the same key
    assert fog.acks("a") == [((key_a,), "applied"), ((key_a,), "conflict")]
    assert fog.gw.rejected["conflict"] == 1 and fog.gw.book.aggs[HEAD].count == 1
    fog.boot()  # kill -9 and restart: the applied digest comes back from the journal
    fog.update("a", 1.0, 10)
    assert fog.acks("a")[-1] == ((key_a,), "conflict") and fog.gw.rejected["conflict"] == 1
    fog.update("a", 100.0, 10)  # the applied copy again (its ack was lost): "applied", counted once
    assert fog.acks("a")[-1] == ((key_a,), "applied") and fog.gw.rejected["duplicate"] == 1
    assert fog.gw.book.aggs[HEAD].count == 1
