"""The edge agent: trains the modules a device holds on its local data and exchanges them with its fog.

A device subscribes to its fog's round announcements (``ctl/{fog}``) and to the cluster topic of every module it
holds. On cluster round (g, c) it trains each of its tasks for the announced local epochs, starting from the latest
cluster version it applied, then publishes one delta per module on ``up/{fog}/{modality}/{task}/{kind}/{device}``.
When the job ends it evaluates the final modules on its test files.
"""

from __future__ import annotations

import logging
import math
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.config import DeviceConfig
from edge_runtime.d2d.device import D2dDevice
from edge_runtime.privacy.dp import privacy_settings
from edge_runtime.telemetry import sample
from hffm_core.atomic import write_json
from hffm_core.compression import ErrorFeedback
from hffm_core.compression.module_codec import layout_of, pack
from hffm_core.config import load_config, make_codecs, resolve
from hffm_core.delivery import Outbox, ReliableSender, round_tag
from hffm_core.downlink import JobWatch, ResyncNeeded, VersionReceiver
from hffm_core.errors import ConfigError, DecodeError, StaleModelError
from hffm_core.observability import Gauge, Histogram, metrics_server_tls
from hffm_core.protocol import (
    ModuleKey,
    ModuleUpdate,
    ModuleVersion,
    NodeState,
    ResyncRequest,
    RoundControl,
    encode,
    modules_for,
    topics,
)
from hffm_core.protocol.topics import Topic
from hffm_core.resources import Decision, decide
from hffm_core.security.wiring import service_security
from hffm_core.service import Service

log = logging.getLogger(__name__)
BASE_WAIT_S = 30.0
D2D_RESEND_S = 10.0  # first resend of a member's delta to its relay (docs/topology.md)
ADVERT_RETRY_S = 3.0  # an advert that could not be handed to the broker (not connected) is retried this soon
STALE_SLACK_S = 60  # message expiry of an update: its round's deadline plus this


@dataclass(frozen=True)
class LocalData:
    """A device's data: task -> (x, y) for training and, where given, for testing."""

    modality_of: dict[str, str]
    train: dict[str, tuple[np.ndarray, np.ndarray]]
    test: dict[str, tuple[np.ndarray, np.ndarray]]



def load_local_data(cfg: DeviceConfig) -> LocalData:
    """Load the train (and optional test) file of every task in the config.

    Raises:
        ConfigError: a task without a data entry, or a data entry for a task the device does not run.
        DataError: a file that is missing or malformed.
    """
    from hffm_model.factory import check_modalities_tasks
    from hffm_model.files import load_task_file
    from hffm_model.spec import TASKS

    dev = cfg.device
    check_modalities_tasks(dev.modalities, dev.tasks)
    extra = sorted(set(cfg.data) - set(dev.tasks))
    if extra:
        raise ConfigError(f"[data] has entries for tasks {extra} that device {dev.id!r} does not run")
    modality_of = {t: TASKS[t].modality for t in dev.tasks}
    train, test = {}, {}
    for task in dev.tasks:
        if task not in cfg.data:
            raise ConfigError(f"device {dev.id!r}: no [data.{task}] entry with a train file")
        entry = cfg.data[task]
        train[task] = load_task_file(resolve(cfg.base_dir, entry.train), modality=modality_of[task], task=task)
        if entry.test:
            test[task] = load_task_file(resolve(cfg.base_dir, entry.test), modality=modality_of[task], task=task)
    return LocalData(modality_of=modality_of, train=train, test=test)


def round_seed(seed: int, device: str, g: int, c: int) -> int:
    return zlib.crc32(f"{seed}/{device}/{g}/{c}".encode()) & 0x7FFFFFFF


class EdgeAgent(D2dDevice, Service):
    role = "device"

    def __init__(self, cfg: DeviceConfig) -> None:
        import torch

        from hffm_model.factory import build_m3t

        self.cfg = cfg
        dev = cfg.device
        self.fleet, self.fog = dev.fleet, dev.fog
        offline = NodeState(fleet=self.fleet, node=dev.id, role="device", fog=dev.fog, online=False)
        metrics = resolve(cfg.base_dir, cfg.metrics_file) if cfg.metrics_file else None
        security = service_security(cfg, dev.id, resolve(cfg.base_dir, cfg.state_dir))
        super().__init__(node=dev.id, host=cfg.broker.host, port=cfg.broker.port, metrics_file=metrics,
                         connect_timeout_s=cfg.broker.connect_timeout_s,
                         metrics_listen=cfg.metrics.listen, metrics_insecure=cfg.metrics.insecure,
                         metrics_tls=metrics_server_tls(cfg),
                         will=(topics.state(self.fleet, dev.id), encode(offline)), **security)
        self.dp = privacy_settings(cfg)  # module kind -> DpSettings; noise is drawn from OS entropy, never a seed
        self.dp_rng = np.random.default_rng()
        self.privacy_path = resolve(cfg.base_dir, cfg.state_dir) / f"{dev.id}-privacy.json"
        self.privacy = self._load_privacy_ledger() if self.dp else None
        torch.set_num_threads(cfg.training.threads)
        self.data = load_local_data(cfg)
        self.model = build_m3t(cfg.model, dev.modalities, dev.tasks)
        self.keys = modules_for({m: [t for t in dev.tasks if self.data.modality_of[t] == m] for m in dev.modalities})
        self.codecs = make_codecs(cfg.uplink, "uplink")
        self.rx = VersionReceiver(layouts={k: layout_of(self.model.get_module_state(k)) for k in self.keys})
        state_dir = resolve(cfg.base_dir, cfg.state_dir)
        self.residuals_path = state_dir / f"{dev.id}-residuals.npz"
        self.status_path = state_dir / f"{dev.id}-status.json"
        # The job this device is in: saved, so that a restarted device still knows the job's end when it hears it.
        self.job_path = state_dir / f"{dev.id}-job.json"
        self.jobs = JobWatch(f"device {dev.id}", self.rejected, job=self._load_job())
        self.advert_job = ""  # the job named in adverts: confirmed by an announcement in this run, else none
        self.crash_reason: str | None = None
        self.stale_modules: list[str] = []  # at the end of the job: modules older than the final version
        self.modules_path = state_dir / f"{dev.id}-modules.npz"
        self.local_modules_path = state_dir / f"{dev.id}-local-modules.npz"
        self.next_advert = 0.0
        self.telemetry: dict[str, float] = {}  # the last resource sample (for /metrics)
        self.advertised_on = 1  # the connection the last advert went out on (1: the first, advertised by start())
        self.decision: Decision | None = None
        self.state_text = "starting"
        self.residuals_path.parent.mkdir(parents=True, exist_ok=True)
        rel = cfg.reliability
        # Updates wait on disk until the fog acks them (docs/reliability.md); without the outbox, one publish each.
        self.outbox = Outbox(state_dir / f"{dev.id}-outbox.sqlite", base_s=rel.backoff_base_s,
                             max_s=rel.backoff_max_s) if rel.outbox else None
        self.sender = ReliableSender(self.outbox, self.transport, fleet=self.fleet, node=dev.id, target=dev.fog,
                                     category="device_to_fog") if self.outbox is not None else None
        self.feedback = ErrorFeedback.load(self.residuals_path) if self.residuals_path.exists() else ErrorFeedback()
        self.last_done = (0, 0)
        self.pending: RoundControl | None = None
        self.pending_since = 0.0
        self.final_accuracy: dict[str, float] = {}
        self.rounds_log: list[dict[str, Any]] = []
        self.ctl: RoundControl | None = None  # the latest round announcement (D2D: who relays for whom)
        self.d2d = self._peer_link(state_dir) if cfg.d2d.port else None

    def _peer_link(self, state_dir: Path) -> Any:
        from edge_runtime.d2d.link import PeerLink
        from hffm_core.service import SealingTransport

        rel = self.cfg.reliability
        return PeerLink(self.cfg.d2d, fleet=self.fleet, fog=self.fog, node=self.node, state_dir=state_dir,
                        meter=self.meter, on_message=self._enqueue, outbox=rel.outbox,
                        # A relay acks once it has sent the group's average (after its own training and its
                        # members'): resending sooner than ~10 s would only repeat the same bytes on the D2D link.
                        backoff=(max(rel.backoff_base_s, D2D_RESEND_S), max(rel.backoff_max_s, D2D_RESEND_S)),
                        wrap=(lambda t: SealingTransport(t, self.signer)) if self.signer is not None else None)

    def subscriptions(self) -> list[str]:
        acks = [topics.ack_filter(self.fleet, self.fog, self.node)] if self.sender is not None else []
        return [topics.ctl(self.fleet, self.fog)] + [topics.cluster(self.fleet, self.fog, k) for k in self.keys] + acks

    def start(self) -> None:
        if self.d2d is not None:
            self.d2d.connect()
        self.advertise("idle")
        log.info("device %s: holds %d modules, %d training samples", self.node, len(self.keys),
                 sum(len(y) for _x, y in self.data.train.values()))

    def handle(self, topic: Topic, message: Any) -> None:
        if topic.kind == "cluster":
            if topic.module != message.key or message.sender != self.fog:
                raise DecodeError(f"cluster version of {message.key} from {message.sender!r} on {topic} is not "
                                  f"from fog {self.fog!r} or not for its topic")
            if message.job != self.jobs.job:  # the last job's retained version, or this job's before its round
                self.jobs.park(message)
                return
            self._apply_version(message)
        elif topic.kind == "ctl":
            if message.sender != self.fog:
                raise DecodeError(f"round announcement from {message.sender!r}, not from fog {self.fog!r}")
            if message.job != self.jobs.job:
                if message.final:  # the end of a job this device is not in, e.g. the last job's, still retained
                    self.jobs.ignore(message.job, "the final round announcement")
                    return
                self._join(message.job)
            self.advert_job = message.job
            if self.sender is not None:  # the fog opened this round: every earlier one is closed
                self.sender.expire_rounds_before(round_tag(message.global_round, message.cluster_round))
            if self.d2d is not None:
                self.d2d.expire_before(message.global_round, message.cluster_round)
            self.ctl = message
            if message.final or (message.global_round, message.cluster_round) > self.last_done:
                self.pending, self.pending_since = message, time.monotonic()
        elif topic.kind == "ack" and self.d2d is not None and message.sender in self.d2d.peers:
            if message.to != self.node:
                raise DecodeError(f"ack from {message.sender!r} is for {message.to!r}, not {self.node!r}")
            self.d2d.on_ack(message)
        elif topic.kind == "ack" and self.sender is not None:
            if message.sender != self.fog or message.to != self.node:
                raise DecodeError(f"ack from {message.sender!r} to {message.to!r} is not from fog {self.fog!r}")
            self.sender.on_ack(message)
        elif topic.kind == "peer" and self.d2d is not None:
            self._on_peer(topic, message)
        else:
            raise DecodeError(f"device {self.node} does not take {topic.kind!r} messages")

    def advertise(self, state: str, *, skip: tuple[int, int] | None = None, online: bool = True,
                  publish: bool = True, wait: bool = False) -> None:
        """Write the local status file and (unless ``publish`` is false) publish the retained capability advert
        with fresh telemetry."""
        self.state_text = state
        telemetry = sample(resolve(self.cfg.base_dir, self.cfg.state_dir))
        self.telemetry = telemetry
        self._write_status(telemetry)
        if not publish:
            return
        dev = self.cfg.device
        advert = NodeState(
            fleet=self.fleet, node=self.node, role="device", fog=self.fog, online=online, modules=tuple(self.keys),
            backbone=self.cfg.model.backbone, num_samples={t: len(y) for t, (_x, y) in self.data.train.items()},
            modalities=tuple(dev.modalities), tasks=tuple(dev.tasks),
            versions={str(k): s for k, s in self.rx.stamps.items()}, telemetry=telemetry, last_seen=time.time(),
            status=state, skip=skip, job=self.advert_job)
        # Does not block unless ``wait`` (the last advert before exit): with the fog link down (a D2D device keeps
        # working through its group) it is retried in a few seconds; a newer advert replaces an older one (retained).
        topic = topics.state(self.fleet, self.node)
        if wait:
            self.transport.publish(topic, encode(advert), category="device_to_fog", retain=True)
            return
        sent = self.transport.try_publish(topic, encode(advert), category="device_to_fog", retain=True)
        self.next_advert = time.monotonic() + (self.cfg.telemetry_interval_s if sent else min(
            ADVERT_RETRY_S, self.cfg.telemetry_interval_s))

    def finish(self) -> None:
        """On a clean exit, say so: the retained advert goes offline (the broker's last will covers crashes)."""
        if self.transport.connected:
            self.advertise(f"stopped ({self.state_text})", online=False, wait=True)
        if self.d2d is not None:
            self.d2d.close()

    def on_crash(self, reason: str) -> None:
        """The loop ended with an error: say so in the status file (``crashed``, or ``stale`` when the job ended
        without the final modules), with the link down. Best effort: the error may be a full disk."""
        self.crash_reason = reason
        self.state_text = "stale" if self.stale_modules else "crashed"
        try:
            self._write_status({})
        except OSError as exc:
            log.warning("device %s: could not record the crash in %s: %s", self.node, self.status_path, exc)

    def _load_job(self) -> str | None:
        """The job a previous run of this device was in (None: none, or an unreadable file, said in the log)."""
        import json

        if not self.job_path.exists():
            return None
        try:
            return str(json.loads(self.job_path.read_text())["job"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("device %s: job file %s unreadable (%s); waiting for the fog to name a job", self.node,
                        self.job_path, exc)
            return None

    def _join(self, job: str) -> None:
        """Be in ``job`` (named by a round announcement of the fog) from now on: leave the previous job's versions,
        queued updates and error feedback behind, and apply the job's versions that arrived before this."""
        old = self.jobs.job
        if old is not None:
            log.warning("device %s: fog %s announces job %r; leaving job %r", self.node, self.fog, job, old)
            self.rx = VersionReceiver(layouts=self.rx.layouts)
            self.last_done, self.pending = (0, 0), None
            self.feedback = ErrorFeedback()
            if self.sender is not None:
                self.sender.expire_rounds_before(2**62)
        parked = self.jobs.join(job)
        write_json(self.job_path, {"job": job})
        for version in parked:
            self._apply_version(version)

    def _write_status(self, telemetry: dict[str, float]) -> None:
        status = {
            "device": self.node, "fog": self.fog, "fleet": self.fleet, "pid": os.getpid(), "state": self.state_text,
            "broker": f"{self.cfg.broker.host}:{self.cfg.broker.port}",
            "job": self.jobs.job, "reason": self.crash_reason,
            "link": {"connected": self.transport.connected and self.crash_reason is None
                     and self.state_text[:7] != "stopped"},
            "last_round": list(self.last_done) if self.last_done != (0, 0) else None,
            "modules": {str(k): list(s) for k, s in sorted(self.rx.stamps.items())},
            "held_modules": [str(k) for k in self.keys],
            "outbox": {"depth": None, "note": "outbox disabled: each publish waits only for the broker's PUBACK"}
            if self.outbox is None else {"depth": self.outbox.pending(), "note": "updates not yet acked by the fog"},
            "decision": None if self.decision is None else
            {"action": self.decision.action, "fraction": self.decision.fraction,
             "reasons": list(self.decision.reasons)},
            "resources": telemetry, "updated_at": time.time(),
        }
        write_json(self.status_path, status)

    def _save_modules(self, *, local: bool = False) -> None:
        """Snapshot the modules: as received (what the fleet holds) or, with ``local``, as trained here."""
        from hffm_model.snapshot import save_modules

        if local:
            states = {k: self.model.get_module_state(k) for k in self.keys}
            save_modules(self.local_modules_path, states, dict(self.rx.stamps))
        else:
            save_modules(self.modules_path, self.rx.states, self.rx.stamps)

    def tick(self) -> None:
        if self.d2d is not None:
            self._d2d_tick()
        if self.sender is not None:
            self.sender.pump()
        if self.transport.connections > self.advertised_on:  # reconnected: the broker may hold our will ("offline")
            self.advertised_on = self.transport.connections
            self.next_advert = 0.0
        if time.monotonic() > self.next_advert:
            self.advertise(self.state_text)
        ctl = self.pending
        if ctl is None:
            return
        floor = (ctl.global_round, 0)
        in_round = [k for k in self.keys if ctl.final or not ctl.participants or str(k) in ctl.participants]
        behind = [k for k in in_round if self.rx.stamps.get(k, (-1, -1)) < floor]
        if behind and time.monotonic() - self.pending_since < BASE_WAIT_S:
            return  # the round's base versions are published before the announcement; give them time to arrive
        if behind:
            log.warning("device %s: no base version for %s; training from what it holds", self.node,
                        [str(k) for k in behind])
        self.pending = None
        if ctl.final:
            self._finish_job(ctl)
        else:
            self._train_and_send(ctl)

    def observe_extra(self) -> list[Gauge | Histogram]:
        g, c = self.last_done
        out: list[Gauge | Histogram] = [
            Gauge(name="round", help="The last round this device trained (scope: global or cluster).",
                  values={(("scope", "global"),): g, (("scope", "cluster"),): c}),
            Histogram(name="train_seconds", help="Local training time per round.",
                      observations=tuple(r["train_s"] for r in list(self.rounds_log))),
            Gauge(name="device_telemetry", help="The device's last resource sample (only the sensors it has).",
                  values={(("sensor", k),): v for k, v in dict(self.telemetry).items()}),
        ]
        if self.sender is not None:
            stats = self.sender.stats()
            out.append(Gauge(name="updates", help="Updates by outcome: sent (tries), acked, stale (their round had "
                                                  "closed), rejected, dropped (stale + rejected).",
                             values={(("outcome", k),): stats[k] for k in ("sent", "acked", "stale", "rejected",
                                                                            "conflicts", "dropped")}, counter=True))
        if self.privacy is not None:
            out.append(Gauge(name="dp_epsilon", help="Differential privacy spent so far, per module kind.",
                             values={(("kind", k),): v["epsilon"] for k, v in self.privacy.report().items()
                                     if v["epsilon"] is not None}))
        return out

    def extra_metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"final_accuracy": self.final_accuracy, "rounds": self.rounds_log,
                               "job": self.jobs.job, "stale_modules": self.stale_modules,
                               "outbox": self.sender.stats() if self.sender is not None else None}
        if self.d2d is not None:
            out["d2d"] = self.d2d.stats()
        if self.privacy is not None:
            out["privacy"] = self.privacy.report()
        return out

    def _load_privacy_ledger(self) -> Any:
        """The DP ledger, with the participations counted before a restart (they stay spent)."""
        import json

        from edge_runtime.privacy.dp import PrivacyLedger

        counts: dict[str, int] = {}
        if self.privacy_path.exists():
            try:
                raw = json.loads(self.privacy_path.read_text())
                counts = {str(k): int(v) for k, v in raw["counts"].items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ConfigError(f"privacy ledger {str(self.privacy_path)!r} is unreadable ({exc}); refusing to "
                                  "start, since the privacy spent so far would be forgotten") from None
        return PrivacyLedger(self.dp, counts=counts)

    # -- work ----------------------------------------------------------------------------------------------------
    def _apply_version(self, msg: ModuleVersion) -> None:
        if msg.key not in self.keys:
            raise DecodeError(f"device {self.node} does not hold module {msg.key}")
        try:
            state = self.rx.apply(msg)
        except ResyncNeeded as exc:
            log.info("device %s: %s; asking %s for the full state", self.node, exc, self.fog)
            request = ResyncRequest(fleet=self.fleet, sender=self.node, target=self.fog, modules=(msg.key,))
            self.transport.publish(topics.resync(self.fleet, self.fog, self.node), encode(request),
                                   category="device_to_fog")
            return
        if state is not None:
            self.model.load_module_state(msg.key, state)

    def _train_and_send(self, ctl: RoundControl) -> None:
        g, c = ctl.global_round, ctl.cluster_round
        self.meter.round = g
        self.last_done = (g, c)
        selected = [k for k in self.keys if not ctl.participants or self.node in ctl.participants.get(str(k), ())]
        if not selected:
            self.advertise(f"not selected for round ({g},{c})", publish=False)  # rides on the next refresh
            return
        self.decision = decide(sample(resolve(self.cfg.base_dir, self.cfg.state_dir)), self.cfg.resources)
        if self.decision.action == "skip":
            reasons = "; ".join(self.decision.reasons)
            log.warning("device %s: skipping round (%d,%d): %s", self.node, g, c, reasons)
            self.advertise(f"skipped round ({g},{c}): {reasons}", skip=(g, c))
            return
        self.advertise(f"training round ({g},{c})", publish=False)  # local status only: spare the uplink
        if self.sender is not None:  # the broker drops an update still queued after its round's deadline
            self.sender.expiry_s = math.ceil(ctl.deadline_s) + STALE_SLACK_S
        started = time.monotonic()
        for key, state in self.rx.states.items():  # train from the published version, not last round's weights
            self.model.load_module_state(key, state)
        base = {k: self.model.get_module_state(k) for k in self.keys}
        losses, used = self._train(ctl, selected, self.decision.fraction)
        train_s = time.monotonic() - started
        self._save_modules(local=True)  # the personalised modules, as trained here
        sent = 0
        for key in selected:
            new = self.model.get_module_state(key)
            delta = {n: (a - base[key][n]).astype(np.float32) for n, a in new.items()}
            if self.cfg.attack.kind != "none":
                delta = self._poison(delta, key, g, c)
            if key.kind in self.dp:  # clip + noise before coding: error feedback only ever sees the noised delta
                from edge_runtime.privacy.dp import privatize

                delta, _norm = privatize(delta, self.dp[key.kind], self.dp_rng)
                self.privacy.record(key.kind)
                write_json(self.privacy_path, {"counts": dict(self.privacy.counts)})
            related = [v for t, v in losses.items() if key.task in (t, "_") and
                       (key.modality in ("_", self.data.modality_of[t]))]
            # Under DP only the noised delta leaves the device: the loss, computed on private data, does not.
            loss = float(np.mean(related)) if related and key.kind not in self.dp else 0.0
            samples = self._samples(key, used)
            members = self.d2d.members_for(ctl, key) if self.d2d is not None else set()
            if members:  # this device relays for part of its group: send once their deltas are in (tick)
                assert self.d2d is not None
                self.d2d.desk.open_bucket((g, c, key), delta, samples, loss, members)
                continue
            update = self._build_update(key, delta, samples, loss, g, c)
            sent += self._route(ctl, update)
        self.feedback.save(self.residuals_path)
        if self.sender is not None:
            self.sender.pump()
        self._save_modules()
        self.rounds_log.append({"global_round": g, "cluster_round": c, "train_s": round(train_s, 3),
                                "bytes_sent": sent, "loss": {t: round(v, 4) for t, v in losses.items()},
                                "fraction": self.decision.fraction})
        # Round progress is not news to the fog (the updates themselves are): the status file has it now, and the
        # advert carries it at its next refresh, within telemetry_interval_s; this spares the metered uplink one
        # advert per round (~700 B, as much as a few compressed module deltas).
        self.advertise(f"sent round ({g},{c})", publish=False)
        log.info("device %s: round (%d,%d) trained %.1f s, loss %s, sent %d modules / %d B", self.node, g, c,
                 train_s, {t: round(v, 3) for t, v in losses.items()}, len(self.keys), sent)

    def _build_update(self, key: ModuleKey, delta: dict[str, np.ndarray], samples: int, loss: float, g: int, c: int,
                      *, covers: tuple[str, ...] = ()) -> ModuleUpdate:
        """Code ``delta`` (through this device's error feedback) into the update of ``key`` for round (g, c)."""
        packed, _sent = pack(delta, self.codecs[key.kind], feedback=self.feedback, stream=str(key),
                             seed=zlib.crc32(f"{self.node}/{g}.{c}/{key}".encode()))
        return ModuleUpdate(fleet=self.fleet, sender=self.node, fog=self.fog, key=key, global_round=g, cluster_round=c,
                            base=self.rx.stamps.get(key, (0, 0)), num_samples=samples, train_loss=loss,
                            idempotency_key=ModuleUpdate.default_key(self.fleet, self.node, g, c, key), covers=covers,
                            **packed.fields())

    def _to_fog(self, update: ModuleUpdate, payload: bytes | None = None) -> int:
        """Queue ``update`` for the fog (outbox) or publish it once; returns its size."""
        payload = encode(update) if payload is None else payload
        topic = topics.up(self.fleet, self.fog, update.key, self.node)
        if self.outbox is not None:
            self.outbox.put(update.idempotency_key, topic, payload,
                            round_=round_tag(update.global_round, update.cluster_round))
        else:
            self.transport.publish(topic, payload, category="device_to_fog")
        return len(payload)

    def _poison(self, delta: dict[str, np.ndarray], key: ModuleKey, g: int, c: int) -> dict[str, np.ndarray]:
        from edge_runtime.attacks import check_attack, poison

        attack = self.cfg.attack
        log.warning("device %s: RED-TEAM MODE: sending a %s-poisoned delta for %s in round (%d,%d)", self.node,
                    attack.kind, key, g, c)
        rng = np.random.default_rng(zlib.crc32(f"{attack.seed}/{self.node}/{g}.{c}/{key}".encode()))
        return poison(delta, attack.kind, check_attack(attack.kind, attack.factor or None), rng)

    def _train(self, ctl: RoundControl, selected: list[ModuleKey], fraction: float
               ) -> tuple[dict[str, float], dict[str, int]]:
        """Train every task one of whose modules is selected; with ``fraction`` < 1 (resources short), on a seeded
        subset of that share of the samples. Returns the last-epoch loss and the samples used per task."""
        from hffm_model.training import train_task

        g, c = ctl.global_round, ctl.cluster_round
        t = self.cfg.training
        losses, used = {}, {}
        for task, (x, y) in sorted(self.data.train.items()):
            modality = self.data.modality_of[task]
            if not any(k.task in (task, "_") and k.modality in (modality, "_") for k in selected):
                continue
            # Seeded by the training session's index, as the local-only baseline is: every schedule (star,
            # hierarchical, any E_agg) shuffles the same way in its n-th session, so comparing schedules compares
            # the schedules, not the shuffles.
            seed = round_seed(t.seed, self.node, 0, (g - 1) * ctl.agg_every + (c - 1))
            if fraction < 1.0:
                keep = np.random.default_rng(seed).permutation(len(y))[: max(1, math.ceil(fraction * len(y)))]
                x, y = x[np.sort(keep)], y[np.sort(keep)]
            losses[task] = train_task(self.model, modality=modality, task=task, x=x, y=y, epochs=ctl.local_epochs,
                                      batch_size=t.batch_size, lr=t.lr, seed=seed)
            used[task] = len(y)
        return losses, used

    def _samples(self, key: ModuleKey, used: dict[str, int]) -> int:
        if key.kind == "encoder":
            return max(1, sum(n for t, n in used.items() if self.data.modality_of[t] == key.modality))
        return max(1, used.get(key.task, 0))

    def _finish_job(self, ctl: RoundControl) -> None:
        """Evaluate the final modules on the test files and stop.

        Raises:
            StaleModelError: a module is older than the final version (the job's end was heard, its model was not):
                evaluated and recorded anyway, but the device does not end as if it had the final model.
        """
        from hffm_model.training import evaluate

        for key, state in self.rx.states.items():  # evaluate what the fleet was sent, as every device holds it
            self.model.load_module_state(key, state)
        for task, (x, y) in sorted(self.data.test.items()):
            self.final_accuracy[task] = float(evaluate(self.model, modality=self.data.modality_of[task], task=task,
                                                       x=x, y=y))
        log.info("device %s: job finished; test accuracy %s", self.node,
                 {t: round(a, 3) for t, a in self.final_accuracy.items()})
        self._save_modules()
        final = (ctl.global_round, 0)
        self.stale_modules = sorted(str(k) for k in self.keys if self.rx.stamps.get(k, (-1, -1)) < final)
        if self.stale_modules:
            held = {str(k): self.rx.stamps.get(k) for k in self.keys}
            self.advertise(f"stale: job finished without the final version of {self.stale_modules}")
            raise StaleModelError(f"device {self.node}: job {ctl.job!r} finished at version {final}, but this device "
                                  f"holds {held}: the accuracy above is of stale modules {self.stale_modules}")
        self.advertise("job finished")
        self.done = True


def train_local_only(cfg: DeviceConfig, *, sessions: int, local_epochs: int) -> dict[str, float]:
    """Local-only baseline: ``sessions`` training sessions of ``local_epochs`` epochs each, no federation.

    Mirrors the federated schedule (one session per cluster round, a fresh optimiser each), starts from the same
    seeded initial modules, and returns the accuracy per task on the device's test files.
    """
    import torch

    from hffm_model.factory import build_m3t
    from hffm_model.training import evaluate, train_task

    torch.set_num_threads(cfg.training.threads)
    data = load_local_data(cfg)
    model = build_m3t(cfg.model, cfg.device.modalities, cfg.device.tasks)
    t = cfg.training
    for s in range(sessions):
        for task, (x, y) in sorted(data.train.items()):
            train_task(model, modality=data.modality_of[task], task=task, x=x, y=y, epochs=local_epochs,
                       batch_size=t.batch_size, lr=t.lr, seed=round_seed(t.seed, cfg.device.id, 0, s))
    return {task: float(evaluate(model, modality=data.modality_of[task], task=task, x=x, y=y))
            for task, (x, y) in sorted(data.test.items())}


def run_edge(config_path: Path, *, time_limit_s: float = 24 * 3600.0) -> None:
    """Load a device config and run the agent until its fog announces the end of the job."""
    EdgeAgent(load_config(config_path, DeviceConfig)).run(time_limit_s=time_limit_s)


def baseline_from_config(config_path: str, sessions: int, local_epochs: int) -> dict[str, float]:
    """Picklable entry point for worker processes: :func:`train_local_only` on a device config file."""
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return train_local_only(load_config(config_path, DeviceConfig), sessions=sessions, local_epochs=local_epochs)
