"""The cloud service: merges the fogs' aggregates per module (weighted), versions and publishes global modules.

Per global round g: fold each fog's aggregate into the module's running weighted sum as it arrives (deduplicated by
idempotency key); close when every expected fog sent its round report, or at the deadline; apply the averaged delta
to the global version, store it (SQLite), publish it retained, evaluate the global model on the held-out test files
and publish the metrics; then announce round g+1 (or the end of the job) on ``ctl/cloud``.

The round rules (accept, reports, close, merge, versions) live in :class:`~cloud.round_engine.CloudRound`, without
MQTT; this service decodes, acks, stores and publishes around it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from cloud.config import CloudConfig
from cloud.job import choose_job
from cloud.round_engine import APPLIED, DUPLICATE, CloudRound, CloudSchedule, Outcome
from cloud.round_state import CloudRoundState
from cloud.store import VersionStore
from hffm_core.aggregation.ranks import fits_rank
from hffm_core.compression.module_codec import layout_of
from hffm_core.config import load_config, make_codecs, resolve
from hffm_core.delivery import report_key
from hffm_core.downlink import VersionPublisher, unpack_ranked
from hffm_core.errors import AggregationError, ConfigError, DecodeError
from hffm_core.observability import Gauge, Histogram, metrics_server_tls
from hffm_core.protocol import (
    GLOBAL_STAGE,
    FogAggregate,
    FogRoundReport,
    ModuleKey,
    ModuleVersion,
    ResyncRequest,
    RoundControl,
    RoundMetrics,
    encode,
    modules_for,
    state_from_blobs,
    topics,
)
from hffm_core.protocol.topics import Topic
from hffm_core.security.wiring import service_security
from hffm_core.service import Service

log = logging.getLogger(__name__)
State = dict[str, np.ndarray]


class CloudService(Service):
    role = "cloud"
    watch_broker = True

    def __init__(self, cfg: CloudConfig) -> None:
        from hffm_model.factory import build_m3t
        from hffm_model.files import load_task_file
        from hffm_model.spec import TASKS

        self.cfg = cfg
        c = cfg.cloud
        self.fleet = c.fleet
        metrics = resolve(cfg.base_dir, cfg.metrics_file) if cfg.metrics_file else None
        security = service_security(cfg, "cloud", resolve(cfg.base_dir, cfg.state_dir))
        super().__init__(node="cloud", host=cfg.broker.host, port=cfg.broker.port, metrics_file=metrics,
                         connect_timeout_s=cfg.broker.connect_timeout_s,
                         metrics_listen=cfg.metrics.listen, metrics_insecure=cfg.metrics.insecure,
                         metrics_tls=metrics_server_tls(cfg), **security)
        self.model = build_m3t(cfg.model, c.modalities, c.tasks)
        self.keys: list[ModuleKey] = modules_for({m: [t for t in c.tasks if TASKS[t].modality == m]
                                                  for m in c.modalities})
        # pub.true: the merged global state; pub.published: what the fogs (and so the devices) hold.
        self.pub = VersionPublisher(fleet=self.fleet, sender="cloud", codecs=make_codecs(cfg.downlink, "downlink"))
        for key in self.keys:
            self.pub.true[key] = self.model.get_module_state(key)
        self.eval_data = {}
        for task, path in sorted(cfg.eval.items()):
            if task not in c.tasks:
                raise ConfigError(f"eval file given for task {task!r}, which is not in the cloud's tasks")
            self.eval_data[task] = load_task_file(resolve(cfg.base_dir, path), modality=TASKS[task].modality,
                                                  task=task)
        self.store = VersionStore(resolve(cfg.base_dir, c.db))
        # The job: the one this state_dir holds (resumed), or a new one (cloud/job.py); named in every announcement.
        self.job, self.resumable = choose_job(resolve(cfg.base_dir, cfg.state_dir), c.job_id)
        self.pub.job = self.job
        # The open round on disk: partial sums, applied keys, reports (a killed cloud resumes it; cloud/round_state.py).
        state = CloudRoundState(resolve(cfg.base_dir, cfg.state_dir), aggregator=cfg.cloud.aggregator,
                                aggregator_params=cfg.cloud.aggregator_params)
        self.round = CloudRound(fogs=c.fogs, keys=self.keys, schedule=CloudSchedule.from_section(c), state=state)
        self.expected_fogs = self.round.expected_fogs
        self.history: list[dict[str, Any]] = []

    def subscriptions(self) -> list[str]:
        return [topics.fogup_filter(self.fleet), topics.fogdone_filter(self.fleet),
                topics.resync_filter(self.fleet, "cloud"), topics.chunk_filter(self.fleet, "cloud")]

    @property
    def reported(self) -> set[str]:
        return self.round.reported

    @property
    def round_g(self) -> int:
        return self.round.round_g

    def start(self) -> None:
        saved = self.round.state.load() if self.resumable else 0
        latest = self.store.latest_versions(self.job) if saved else {}
        if saved and latest:
            log.info("cloud: resuming job %s", self.job)
            self._resume(saved, latest)
            return
        # A new job: its versions and announcement replace, retained, whatever an earlier job left on the brokers.
        self.round.state.reset()
        self.meter.round = 1
        for key in self.keys:
            self._publish_global(key, version=0)
        log.info("cloud: job %s: %d modules at version 0; %d fogs expected; %d rounds", self.job, len(self.keys),
                 len(self.expected_fogs), self.cfg.cloud.rounds)
        self._open_round(1)

    def _resume(self, saved: int, latest: dict[ModuleKey, ModuleVersion]) -> None:
        """Continue the job a previous run of this cloud left: the stored global versions, and round ``saved`` with
        the aggregates it had applied (or the next round, if ``saved`` was merged before the restart)."""
        for key, version in latest.items():
            if key in self.pub.true:
                state = state_from_blobs(version.tensors)  # stored as raw full state
                self.pub.true[key] = state
                self.pub.published[key] = {n: a.copy() for n, a in state.items()}
                self.pub.stamps[key] = (version.global_round, GLOBAL_STAGE)
        top = max(v.global_round for v in latest.values())
        if top >= saved:
            log.warning("cloud: round %d was merged before the restart; opening round %d", saved, top + 1)
            self._open_round(top + 1)
            return
        settled = self.round.resume()
        log.warning("cloud: resuming round %d after a restart: %d aggregates already applied, fogs reported %s "
                    "(%s counted now: their reports were saved and all their aggregates applied before the restart)",
                    saved, len(self.round.state.sums.keys()), sorted(self.reported), sorted(settled) or "none")
        self._open_round(saved, resume=True)
        if self.round.complete():
            self._close_round()

    def handle(self, topic: Topic, message: Any) -> None:
        if topic.kind == "fogup":
            self._on_aggregate(topic, message)
        elif topic.kind == "fogdone":
            self._on_report(topic, message)
        elif topic.kind == "resync":
            self._on_resync(topic, message)
        else:
            raise DecodeError(f"the cloud does not take {topic.kind!r} messages")

    def tick(self) -> None:
        if time.monotonic() > self.round.deadline:
            log.warning("cloud: round %d deadline passed; fogs reported: %s of %s", self.round_g,
                        sorted(self.reported), sorted(self.expected_fogs))
            self._close_round()

    def finish(self) -> None:
        self.store.close()
        self.round.state.close_files()

    def extra_metrics(self) -> dict[str, Any]:
        return {"job": self.job, "rounds": self.history}

    def observe_extra(self) -> list[Gauge | Histogram]:
        last = self.history[-1] if self.history else None
        out: list[Gauge | Histogram] = [
            Gauge(name="round", help="The round this tier is in (scope: global or cluster).",
                  values={(("scope", "global"),): self.round_g}),
            Gauge(name="rounds_merged", help="Global rounds merged.", values={(): len(self.history)}, counter=True),
            Gauge(name="total_rounds", help="Global rounds the job runs.", values={(): self.cfg.cloud.rounds}),
            Gauge(name="fogs_expected", help="Fogs whose aggregate a global round waits for.",
                  values={(): len(self.expected_fogs)}),
        ]
        if last is not None:
            out += [Gauge(name="accuracy", help="Accuracy of the global model on held-out data after the last "
                                                "merged round, per task.",
                          values={(("task", t),): a for t, a in last["accuracy"].items()}),
                    Gauge(name="fogs_reported", help="Fogs merged in the last global round.",
                          values={(): len(last["fogs"])})]
        return out

    # -- handlers ------------------------------------------------------------------------------------------------
    def _on_aggregate(self, topic: Topic, msg: FogAggregate) -> None:
        if (topic.fog, topic.module) != (msg.fog, msg.key):
            raise DecodeError(f"aggregate header ({msg.fog}, {msg.key}) does not match its topic")
        out = self.round.accept(msg, lambda: self._delta_of(msg))  # committed before the ack
        self._answer(msg.fog, msg.idempotency_key, out)
        if out.status == APPLIED:
            self._check_reported(msg.fog)

    def _delta_of(self, msg: FogAggregate) -> State:
        """The aggregate's delta. Raises DecodeError or AggregationError when it does not fit the module."""
        true = self.pub.true[msg.key]
        delta = unpack_ranked(msg, layout_of(true))  # the fog's LoRA rank: at most the global one
        if not fits_rank(delta, true):
            raise AggregationError(f"aggregate of {msg.key} from {msg.fog} does not match the module's tensors")
        return delta

    def _answer(self, fog: str, key: str, out: Outcome) -> None:
        """Ack ``key`` as the round engine says; raise its error (counted by the service loop) after the ack."""
        if out.status == DUPLICATE:
            self.rejected["duplicate"] += 1
        if out.ack:
            self.send_ack(fog, fog, [key], out.ack)
        if out.error is not None:
            raise out.error

    def _on_resync(self, topic: Topic, msg: ResyncRequest) -> None:
        if msg.sender not in self.expected_fogs or topic.node != msg.sender or msg.target != "cloud":
            raise DecodeError(f"resync request from unexpected node {msg.sender!r}")
        for key in msg.modules:
            self.transport.publish(topics.global_(self.fleet, key), encode(self.pub.resync(key)),
                                   category="cloud_to_fog", retain=True)

    def _on_report(self, topic: Topic, msg: FogRoundReport) -> None:
        if topic.fog != msg.fog:
            raise DecodeError(f"round report from unexpected fog {msg.fog!r}")
        out = self.round.report(msg, self.fleet)
        self._answer(msg.fog, report_key(self.fleet, msg.fog, msg.global_round), out)
        self._check_reported(msg.fog)

    def _check_reported(self, fog: str) -> None:
        if self.round.counted(fog):
            self._close_round()

    # -- the round schedule --------------------------------------------------------------------------------------
    def _open_round(self, g: int, *, resume: bool = False) -> None:
        c = self.cfg.cloud
        self.meter.round = min(g, c.rounds)
        final = self.round.open(g, time.monotonic(), resume=resume)
        ctl = RoundControl(fleet=self.fleet, sender="cloud", global_round=g, cluster_round=0, total_rounds=c.rounds,
                           agg_every=c.agg_every, local_epochs=c.local_epochs, deadline_s=c.round_deadline_s,
                           final=final, job=self.job)
        self.transport.publish(topics.ctl(self.fleet, "cloud"), encode(ctl), category="cloud_to_fog", retain=True)
        if final:
            self.done = True

    def _close_round(self) -> None:
        g = self.round.round_g
        merge = self.round.merge(self.pub.true)
        if merge.refused:
            self.rejected["aggregation_refused"] += merge.refused
        self.pub.true.update(merge.states)
        self.meter.round = min(g + 1, self.cfg.cloud.rounds)
        for key in merge.states:  # the last round goes out as full state: nobody will answer a resync after it
            self._publish_global(key, version=merge.version, full=merge.last)
        accuracy = self.evaluate()
        self.round.close()
        self.store.put_round(g, accuracy, sorted(self.reported), merge.modules_updated)
        metrics = RoundMetrics(fleet=self.fleet, global_round=g, total_rounds=self.cfg.cloud.rounds,
                               accuracy=accuracy, fogs_reported=tuple(sorted(self.reported)),
                               modules_updated=merge.modules_updated)
        self.transport.publish(topics.metrics(self.fleet), encode(metrics), category="cloud_to_fog", retain=True)
        self.history.append({"round": g, "accuracy": accuracy, "fogs": sorted(self.reported),
                             "modules_updated": merge.modules_updated})
        mean = sum(accuracy.values()) / len(accuracy) if accuracy else float("nan")
        log.info("cloud: round %d merged %d modules from fogs %s; mean accuracy %.3f; %d B down so far", g,
                 len(merge.states), sorted(self.reported), mean, self.meter.total("cloud_to_fog"))
        self._open_round(g + 1)

    def _publish_global(self, key: ModuleKey, *, version: int, full: bool = False) -> None:
        msg = self.pub.version(key, (version, GLOBAL_STAGE), full=full)
        self.store.put_version(self.pub.resync(key))  # stored as full state, so any version can be re-served
        self.transport.publish(topics.global_(self.fleet, key), encode(msg), category="cloud_to_fog", retain=True)

    def evaluate(self) -> dict[str, float]:
        """Accuracy of the published global modules (what the fleet holds) on each task's held-out test file."""
        from hffm_model.spec import TASKS
        from hffm_model.training import evaluate

        for key, state in self.pub.published.items():
            self.model.load_module_state(key, state)
        return {task: float(evaluate(self.model, modality=TASKS[task].modality, task=task, x=x, y=y))
                for task, (x, y) in self.eval_data.items()}


def run_cloud(config_path: Path, *, time_limit_s: float = 24 * 3600.0) -> None:
    """Load a cloud config and run the service until the last global round is merged."""
    CloudService(load_config(config_path, CloudConfig)).run(time_limit_s=time_limit_s)
