"""The device's side of jobs, counts and crashes, without a broker or a model (an agent shell fed decoded messages):

- A device ignores the retained end of a job it is not in, keeps the versions of a job aside until an announcement
  names it, and leaves its job for a new one the fog announces (downlink.JobWatch).
- Its outbox counters split what was sent into acked, stale (its round closed: answered expired, or expired when a
  later round was announced) and rejected, each message once.
- A job that ends without the final version of a module ends with StaleModelError, not exit 0; a crash writes
  ``crashed`` into the status file, and ``hffm edge status`` never shows a dead or crashed agent as connected.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edge_runtime.agent import EdgeAgent
from edge_runtime.personal_device import NoPersonal
from edge_runtime.device_report import read_job_file
from hffm_cli.commands.ops import _check_process
from hffm_core.delivery import Outbox, ReliableSender
from hffm_core.downlink import JobWatch, VersionReceiver
from hffm_core.errors import StaleModelError
from hffm_core.protocol import (
    Ack,
    ModuleKey,
    ModuleVersion,
    RoundControl,
    blobs_from_state,
    encode,
    tensors_sha256,
    topics,
)
from hffm_core.protocol.routing import decode_message

FLEET, FOG, DEV = "f", "fog-1", "dev-1"
HEAD = ModuleKey.head("digit")


def _version(g: int, c: int, value: float, job: str) -> ModuleVersion:
    blobs = blobs_from_state({"w": np.full((2,), value, np.float32)})
    return ModuleVersion(fleet=FLEET, sender=FOG, key=HEAD, global_round=g, stage=c, tensors=blobs,
                         sha256=tensors_sha256(blobs), job=job)


def _ctl(g: int, c: int, job: str, *, final: bool = False) -> RoundControl:
    return RoundControl(fleet=FLEET, sender=FOG, global_round=g, cluster_round=c, total_rounds=2, agg_every=1,
                        local_epochs=1, deadline_s=60, final=final, job=job)


class Model:
    def __init__(self) -> None:
        self.loaded: dict[ModuleKey, Any] = {}

    def load_module_state(self, key: ModuleKey, state: Any) -> None:
        self.loaded[key] = state


def _agent(tmp_path: Path, job: str | None = None) -> EdgeAgent:
    """An EdgeAgent shell with what handle(), tick() and the status file use; no model, data or transport."""
    agent = object.__new__(EdgeAgent)
    agent.__dict__.update(
        node=DEV, fog=FOG, fleet=FLEET, keys=[HEAD], model=Model(), rx=VersionReceiver(), rejected=Counter(),
        jobs=JobWatch(f"device {DEV}", Counter(), job=job), advert_job="", job_path=tmp_path / "job.json",
        sender=None, outbox=None, d2d=None, uplink=SimpleNamespace(reset_feedback=lambda: None), last_done=(0, 0),
        pending=None,
        next_advert=float("inf"), crash_reason=None, stale_modules=[], state_text="idle", decision=None,
        final_accuracy={}, data=SimpleNamespace(test={}, own={}, modality_of={}), modules_path=tmp_path / "m.npz",
        personal=NoPersonal(None, SimpleNamespace(test={}, own={}, modality_of={})),
        status_path=tmp_path / "status.json", transport=SimpleNamespace(connected=True, connections=1, sent=[],
                                  publish=lambda topic, payload, **_: agent.transport.sent.append(topic)), advertised_on=1,
        cfg=SimpleNamespace(broker=SimpleNamespace(host="127.0.0.1", port=1883)), done=False)
    agent.jobs.rejected = agent.rejected
    agent.advertise = lambda state, **_: setattr(agent, "state_text", state)  # type: ignore[method-assign]
    return agent


def _deliver(agent: EdgeAgent, message: Any) -> None:
    topic = topics.ctl(FLEET, FOG) if isinstance(message, RoundControl) else topics.cluster(FLEET, FOG, HEAD)
    agent.handle(*decode_message(topic, encode(message)))


def test_a_fresh_device_ignores_the_last_jobs_end_and_joins_the_next(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    agent = _agent(tmp_path)
    with caplog.at_level(logging.WARNING):
        _deliver(agent, _version(3, 0, 7.0, "J1"))  # J1's retained final version and announcement
        _deliver(agent, _ctl(3, 0, "J1", final=True))
    assert agent.pending is None and agent.rx.stamps == {} and agent.rejected["other_job"] == 1
    assert "ignoring the final round announcement of job 'J1' (this node is in no job yet)" in caplog.text
    _deliver(agent, _version(1, 0, 1.0, "J2"))  # J2's base version before its announcement: kept aside
    assert agent.rx.stamps == {}
    _deliver(agent, _ctl(1, 1, "J2"))
    assert agent.jobs.job == "J2" and agent.advert_job == "J2" and agent.rx.stamps == {HEAD: (1, 0)}
    assert agent.pending is not None and agent.pending.ctl.global_round == 1
    assert json.loads(agent.job_path.read_text()) == {"job": "J2"}  # a restart still knows its job
    assert _agent(tmp_path, job=read_job_file(agent.job_path, DEV)).jobs.job == "J2"
    _deliver(agent, _version(1, 1, 2.0, "J2"))
    assert agent.rx.stamps == {HEAD: (1, 1)}


def test_a_device_leaves_its_job_for_the_one_the_fog_announces(tmp_path: Path) -> None:
    agent = _agent(tmp_path, job="J1")
    _deliver(agent, _ctl(2, 1, "J1"))
    _deliver(agent, _version(2, 1, 5.0, "J1"))
    agent.last_done = (2, 1)
    _deliver(agent, _version(1, 0, 1.0, "J2"))
    assert agent.rejected["other_job"] == 1 and agent.rx.stamps == {HEAD: (2, 1)}
    _deliver(agent, _ctl(1, 1, "J2"))  # below J1's round: only the job id tells it is new
    assert agent.jobs.job == "J2" and agent.rx.stamps == {HEAD: (1, 0)} and agent.last_done == (0, 0)
    assert agent.pending is not None and (agent.pending.ctl.global_round, agent.pending.ctl.cluster_round) == (1, 1)


def test_the_end_of_the_own_job_without_its_final_version_is_an_error(tmp_path: Path) -> None:
    agent = _agent(tmp_path, job="J1")
    _deliver(agent, _version(2, 1, 5.0, "J1"))
    _deliver(agent, _ctl(3, 0, "J1", final=True))
    agent.pending.since -= 3600  # the final version never came
    with pytest.raises(StaleModelError, match=r"job 'J1' finished at version \(3, 0\).*stale modules"):
        agent.tick()
    assert agent.stale_modules == [str(HEAD)] and not agent.done
    agent.on_crash("stale model")
    status = json.loads(agent.status_path.read_text())
    assert (status["state"], status["reason"], status["link"]["connected"]) == ("stale", "stale model", False)

    agent = _agent(tmp_path, job="J1")
    _deliver(agent, _version(3, 0, 5.0, "J1"))
    _deliver(agent, _ctl(3, 0, "J1", final=True))
    agent.tick()
    assert agent.done and agent.stale_modules == [] and agent.state_text == "job finished"


def test_a_crash_is_written_to_the_status_file_best_effort(tmp_path: Path) -> None:
    agent = _agent(tmp_path, job="J1")
    agent.on_crash("StorageError: disk full")
    status = json.loads(agent.status_path.read_text())
    assert (status["state"], status["reason"], status["job"]) == ("crashed", "StorageError: disk full", "J1")
    assert status["link"]["connected"] is False and status["pid"] == os.getpid()
    agent.status_path = tmp_path / "missing" / "dir" / "status.json"
    (tmp_path / "missing").write_text("a file where a folder should be")  # writing fails with an OSError
    agent.on_crash("again")  # swallowed: the will still has to fire


def test_edge_status_never_shows_a_gone_or_crashed_agent_connected() -> None:
    import time

    def status(pid: int, state: str = "sent round (1,1)") -> dict[str, Any]:
        out = {"pid": pid, "state": state, "link": {"connected": True}, "updated_at": time.time()}
        _check_process(out)
        return out

    alive = status(os.getpid())
    assert alive["link"]["connected"] is True and alive["process"] == f"running (pid {os.getpid()})"
    assert status(os.getpid(), "crashed")["link"]["connected"] is False
    gone = status(2**22 + 12345)  # above any pid this machine hands out
    assert gone["link"]["connected"] is False and "not running" in gone["process"]
    old = {"pid": os.getpid(), "state": "idle", "link": {"connected": True}, "updated_at": 0.0}
    _check_process(old)  # the pid now belongs to a process started after the file was written
    assert old["link"]["connected"] is False


def test_the_outbox_counts_each_message_once_as_acked_stale_or_rejected(tmp_path: Path) -> None:
    publisher = SimpleNamespace(connected=True, max_packet_size=0,
                                try_publish=lambda *a, **k: True)
    sender = ReliableSender(Outbox(tmp_path / "o.sqlite"), publisher, fleet=FLEET, node=DEV, target=FOG,
                            category="device_to_fog")
    for key, round_ in (("a", 1), ("b", 1), ("c", 1), ("d", 2), ("e", 2)):
        sender.outbox.put(key, "t", b"x", round_=round_)
    assert sender.pump() == 5
    sender.on_ack(Ack(fleet=FLEET, sender=FOG, to=DEV, keys=("a",)))
    sender.on_ack(Ack(fleet=FLEET, sender=FOG, to=DEV, keys=("b",), status="rejected"))
    assert sender.expire_rounds_before(2) == 1  # c: the fog announced round 2, so round 1 closed
    sender.on_ack(Ack(fleet=FLEET, sender=FOG, to=DEV, keys=("c",), status="expired"))  # already counted
    sender.on_ack(Ack(fleet=FLEET, sender=FOG, to=DEV, keys=("d",), status="expired"))
    stats = sender.stats()
    assert {k: stats[k] for k in ("sent", "acked", "dropped", "stale", "rejected", "pending")} == {
        "sent": 5, "acked": 1, "dropped": 3, "stale": 2, "rejected": 1, "pending": 1}


def test_a_reconnect_is_advertised_at_once(tmp_path: Path) -> None:
    """After a link flap the broker holds the device's will ("offline"): the next tick re-advertises at once instead
    of waiting out telemetry_interval_s, so its fog does not leave it out of the rounds (or the final versions)."""
    agent = _agent(tmp_path)
    agent.tick()
    assert agent.state_text == "idle" and agent.next_advert == float("inf")  # nothing new: no advert
    agent.state_text = "sent round (1,1)"
    agent.transport.connections = 2  # paho reconnected
    adverts: list[str] = []


    def advertise(state: str, **_: Any) -> None:  # as the real one: the next refresh is due a while from now
        adverts.append(state)
        agent.next_advert = float("inf")

    agent.advertise = advertise  # type: ignore[method-assign]
    agent.tick()
    agent.tick()
    assert adverts == ["sent round (1,1)"] and agent.advertised_on == 2
