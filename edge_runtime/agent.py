"""The edge agent: trains the modules a device holds on its local data and exchanges them with its fog.

A device subscribes to its fog's round announcements (``ctl/{fog}``) and to the cluster topic of every module it
holds. On cluster round (g, c) it trains each of its tasks for the announced local epochs, starting from the latest
cluster version it applied, then publishes one delta per module on ``up/{fog}/{modality}/{task}/{kind}/{device}``.
When the job ends it evaluates the final modules on its test files.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from edge_runtime.config import DeviceConfig
from edge_runtime.d2d.device import DeviceD2d
from edge_runtime.device_report import (
    device_gauges,
    device_report,
    read_job_file,
    status_record,
)
from edge_runtime.local_data import baseline_from_config, evaluate_tasks, load_local_data
from edge_runtime.pending import PendingRound
from edge_runtime.personal_device import make_personal
from edge_runtime.privacy.dp import privacy_settings
from edge_runtime.round_step import RoundTrainer, load_privacy_ledger
from edge_runtime.telemetry import sample
from edge_runtime.uplink import Uplink
from hffm_core.atomic import write_json
from hffm_core.compression import ErrorFeedback
from hffm_core.compression.module_codec import layout_of
from hffm_core.config import cross_rank_refusal, load_config, make_codecs, resolve
from hffm_core.delivery import Outbox, ReliableSender, round_tag
from hffm_core.downlink import JobWatch, ResyncNeeded, VersionReceiver
from hffm_core.errors import DecodeError, StaleModelError
from hffm_core.observability import Gauge, Histogram, metrics_server_tls
from hffm_core.protocol import (ModuleKey, ModuleVersion, NodeState, ResyncRequest, RoundControl, encode,
                                modules_for, topics)
from hffm_core.protocol.topics import Topic
from hffm_core.resources import Decision, decide
from hffm_core.security.tls import TlsSettings
from hffm_core.security.wiring import service_security
from hffm_core.service import Service

__all__ = ["EdgeAgent", "baseline_from_config", "run_edge"]  # the local-only baseline stays importable from here

log = logging.getLogger(__name__)
D2D_RESEND_S = 10.0  # first resend of a member's delta to its relay (docs/topology.md)
ADVERT_RETRY_S = 3.0  # an advert that could not be handed to the broker (not connected) is retried this soon
STALE_SLACK_S = 60  # message expiry of an update: its round's deadline plus this


class EdgeAgent(Service):
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
        dp = privacy_settings(cfg)  # module kind -> DpSettings
        privacy_path = resolve(cfg.base_dir, cfg.state_dir) / f"{dev.id}-privacy.json"
        privacy = load_privacy_ledger(dp, privacy_path) if dp else None
        torch.set_num_threads(cfg.training.threads)
        self.data = load_local_data(cfg)
        self.model = build_m3t(cfg.model, dev.modalities, dev.tasks)
        self.keys = modules_for({m: [t for t in dev.tasks if self.data.modality_of[t] == m] for m in dev.modalities})
        codecs = make_codecs(cfg.uplink, "uplink")
        layouts = {k: layout_of(self.model.get_module_state(k)) for k in self.keys}
        self.rx = VersionReceiver(layouts=layouts, cross_rank=cross_rank_refusal(cfg.model))
        state_dir = resolve(cfg.base_dir, cfg.state_dir)
        self.data, self.personal = make_personal(cfg, self.model, self.keys, self.data, state_dir)  # [personalization]
        self.trainer = RoundTrainer(node=dev.id, model=self.model, data=self.data, keys=self.keys,
                                    training=cfg.training, attack=cfg.attack, dp=dp,
                                    privacy=privacy, privacy_path=privacy_path)
        residuals_path = state_dir / f"{dev.id}-residuals.npz"
        self.status_path = state_dir / f"{dev.id}-status.json"
        # The job this device is in: saved, so that a restarted device still knows the job's end when it hears it.
        self.job_path = state_dir / f"{dev.id}-job.json"
        self.jobs = JobWatch(f"device {dev.id}", self.rejected, job=read_job_file(self.job_path, dev.id))
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
        state_dir.mkdir(parents=True, exist_ok=True)
        rel = cfg.reliability
        # Updates wait on disk until the fog acks them (docs/reliability.md); without the outbox, one publish each.
        self.outbox = Outbox(state_dir / f"{dev.id}-outbox.sqlite", base_s=rel.backoff_base_s,
                             max_s=rel.backoff_max_s) if rel.outbox else None
        self.sender = ReliableSender(self.outbox, self.transport, fleet=self.fleet, node=dev.id, target=dev.fog,
                                     category="device_to_fog") if self.outbox is not None else None
        feedback = ErrorFeedback.load(residuals_path) if residuals_path.exists() else ErrorFeedback()
        self.uplink = Uplink(fleet=self.fleet, fog=self.fog, node=dev.id, codecs=codecs,
                             feedback=feedback, residuals_path=residuals_path, outbox=self.outbox,
                             transport=self.transport, base_of=lambda key: self.rx.stamps.get(key, (0, 0)))
        self.last_done = (0, 0)
        self.pending: PendingRound | None = None  # the announcement to act on once its versions are in
        self.final_accuracy: dict[str, float] = {}
        self.rounds_log: list[dict[str, Any]] = []
        # The D2D link presents the device's own [tls] identity to its group's broker too.
        self.d2d = self._d2d(state_dir, layouts, security["tls"]) if cfg.d2d.port else None

    def _d2d(self, state_dir: Path, layouts: dict[ModuleKey, dict[str, tuple[int, ...]]],
             tls: TlsSettings | None) -> DeviceD2d:
        from edge_runtime.d2d.link import PeerLink
        from hffm_core.service import SealingTransport

        rel = self.cfg.reliability
        link = PeerLink(self.cfg.d2d, fleet=self.fleet, fog=self.fog, node=self.node, state_dir=state_dir,
                        meter=self.meter, on_message=self._enqueue, outbox=rel.outbox,
                        # A relay acks once it has sent the group's average (after its own training and its
                        # members'): resending sooner than ~10 s would only repeat the same bytes on the D2D link.
                        backoff=(max(rel.backoff_base_s, D2D_RESEND_S), max(rel.backoff_max_s, D2D_RESEND_S)),
                        wrap=(lambda t: SealingTransport(t, self.signer)) if self.signer is not None else None,
                        tls=tls)
        return DeviceD2d(link, uplink=self.uplink, layouts=layouts, rejected=self.rejected)

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
                self.d2d.on_round(message)
            if message.final or (message.global_round, message.cluster_round) > self.last_done:
                self.pending = PendingRound(message)
        elif topic.kind == "ack" and self.d2d is not None and message.sender in self.d2d.peers:
            if message.to != self.node:
                raise DecodeError(f"ack from {message.sender!r} is for {message.to!r}, not {self.node!r}")
            self.d2d.on_ack(message)
        elif topic.kind == "ack" and self.sender is not None:
            if message.sender != self.fog or message.to != self.node:
                raise DecodeError(f"ack from {message.sender!r} to {message.to!r} is not from fog {self.fog!r}")
            self.sender.on_ack(message)
        elif topic.kind == "peer" and self.d2d is not None:
            self.d2d.on_peer(topic, message)
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
            status=state, skip=skip, job=self.advert_job, lora_ranks=(self.cfg.model.lora_r,))
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

    def _join(self, job: str) -> None:
        """Be in ``job`` (named by a round announcement of the fog) from now on: leave the previous job's versions,
        queued updates and error feedback behind, and apply the job's versions that arrived before this."""
        old = self.jobs.job
        if old is not None:
            log.warning("device %s: fog %s announces job %r; leaving job %r", self.node, self.fog, job, old)
            self.rx = VersionReceiver(layouts=self.rx.layouts, cross_rank=self.rx.cross_rank)
            self.last_done, self.pending = (0, 0), None
            self.uplink.reset_feedback()
            if self.sender is not None:
                self.sender.expire_rounds_before(2**62)
        parked = self.jobs.join(job)
        write_json(self.job_path, {"job": job})
        for version in parked:
            self._apply_version(version)

    def _write_status(self, telemetry: dict[str, float]) -> None:
        connected = self.transport.connected and self.crash_reason is None and self.state_text[:7] != "stopped"
        write_json(self.status_path, status_record(
            node=self.node, fog=self.fog, fleet=self.fleet, state=self.state_text,
            broker=f"{self.cfg.broker.host}:{self.cfg.broker.port}", job=self.jobs.job, reason=self.crash_reason,
            connected=connected, last_done=self.last_done, stamps=self.rx.stamps, keys=self.keys,
            outbox_depth=self.outbox.pending() if self.outbox is not None else None, decision=self.decision,
            telemetry=telemetry))

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
            self.d2d.tick()
        if self.sender is not None:
            self.sender.pump()
        if self.transport.connections > self.advertised_on:  # reconnected: the broker may hold our will ("offline")
            self.advertised_on = self.transport.connections
            self.next_advert = 0.0
        if time.monotonic() > self.next_advert:
            self.advertise(self.state_text)
        if self.pending is None:
            return
        ctl = self.pending.ctl
        floor = (ctl.global_round, 0)
        in_round = [k for k in self.keys if ctl.final or not ctl.participants or str(k) in ctl.participants]
        behind = [k for k in in_round if self.rx.stamps.get(k, (-1, -1)) < floor]
        if self.pending.still_waiting(behind, connected=self.transport.connected, ask=self._ask_resync):
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
        return device_gauges(last_done=self.last_done, rounds_log=self.rounds_log, telemetry=self.telemetry,
                             outbox=self.sender.stats() if self.sender is not None else None,
                             privacy=self.trainer.privacy)

    def extra_metrics(self) -> dict[str, Any]:
        return device_report(final_accuracy=self.final_accuracy, rounds_log=self.rounds_log, job=self.jobs.job,
                             stale_modules=self.stale_modules, **self.personal.metrics(),
                             outbox=self.sender.stats() if self.sender is not None else None,
                             d2d=self.d2d.stats() if self.d2d is not None else None, privacy=self.trainer.privacy)

    # -- work ----------------------------------------------------------------------------------------------------
    def _apply_version(self, msg: ModuleVersion) -> None:
        if msg.key not in self.keys:
            raise DecodeError(f"device {self.node} does not hold module {msg.key}")
        try:
            state = self.rx.apply(msg)
        except ResyncNeeded as exc:
            log.info("device %s: %s; asking %s for the full state", self.node, exc, self.fog)
            self._ask_resync([msg.key])
            return
        if state is not None:
            self.model.load_module_state(msg.key, state)

    def _ask_resync(self, keys: list[ModuleKey]) -> None:
        """Ask the fog for the full state of ``keys`` (it answers on their cluster topics)."""
        log.info("device %s: asking %s for the full state of %s", self.node, self.fog, [str(k) for k in keys])
        request = ResyncRequest(fleet=self.fleet, sender=self.node, target=self.fog, modules=tuple(keys))
        self.transport.publish(topics.resync(self.fleet, self.fog, self.node), encode(request),
                               category="device_to_fog")

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
        self.personal.before_training(self.rx.states, g, c)
        trained = self.trainer.train(ctl, selected, self.decision.fraction, self.rx.states)
        self._save_modules(local=True)  # the personalised modules, as trained here
        sent = 0
        for key in selected:
            delta, samples, loss = self.trainer.delta(key, trained, g, c)
            members = self.d2d.members_for(ctl, key) if self.d2d is not None else set()
            if members:  # this device relays for part of its group: send once their deltas are in (tick)
                assert self.d2d is not None
                self.d2d.hold((g, c, key), delta, samples, loss, members)
                continue
            update = self.uplink.build(key, delta, samples, loss, g, c)
            sent += self.d2d.route(ctl, update) if self.d2d is not None else self.uplink.send(update)
        self.uplink.save_feedback()
        if self.sender is not None:
            self.sender.pump()
        self.personal.after_training(self.rx.states, (g - 1) * ctl.agg_every + (c - 1), ctl.local_epochs)
        self._save_modules()
        losses, train_s = trained.losses, trained.train_s
        self.rounds_log.append({"global_round": g, "cluster_round": c, "train_s": round(train_s, 3),
                                "bytes_sent": sent, "loss": {t: round(v, 4) for t, v in losses.items()},
                                "fraction": self.decision.fraction})
        # Round progress is not news to the fog (the updates themselves are): the status file has it now, and the
        # advert carries it at its next refresh, within telemetry_interval_s; this spares the metered uplink one
        # advert per round (~700 B, as much as a few compressed module deltas).
        self.advertise(f"sent round ({g},{c})", publish=False)
        log.info("device %s: round (%d,%d) trained %.1f s, loss %s, sent %d modules / %d B", self.node, g, c,
                 train_s, {t: round(v, 3) for t, v in losses.items()}, len(self.keys), sent)

    def _finish_job(self, ctl: RoundControl) -> None:
        """Evaluate the final modules on the test files and stop.

        Raises:
            StaleModelError: a module is older than the final version (the job's end was heard, its model was not):
                evaluated and recorded anyway, but the device does not end as if it had the final model.
        """
        for key, state in self.rx.states.items():  # evaluate what the fleet was sent, as every device holds it
            self.model.load_module_state(key, state)
        self.final_accuracy.update(evaluate_tasks(self.model, self.data))
        self.personal.finish(self.rx.states, ctl.global_round)  # the global model on the own test split, then personal
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


def run_edge(config_path: Path, *, time_limit_s: float = 24 * 3600.0) -> None:
    """Load a device config and run the agent until its fog announces the end of the job."""
    EdgeAgent(load_config(config_path, DeviceConfig)).run(time_limit_s=time_limit_s)
