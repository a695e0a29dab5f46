"""One virtual device of a simulated fleet, built from the real device-side parts: its own MQTT 5 connection with
its last will, the retained capability advert (:class:`~hffm_core.protocol.NodeState`), the job watch and the
downlink receiver (:mod:`hffm_core.downlink`), the resource rule (:func:`hffm_core.resources.decide`), the uplink
coding (:class:`edge_runtime.uplink.Uplink`: :mod:`hffm_core.compression` module coding with error feedback) and
the on-disk outbox with its reliable sender and the fog's acks (:mod:`hffm_core.delivery`).

What it does not have is a model: in ``noop`` mode a round's delta is synthetic (a fixed random pattern per tensor
shape, scaled by a number seeded by device, round and module, so that a resend after a crash is byte-identical),
shaped like the module version the fog published, which is the cloud's real model. The message handling follows
:class:`edge_runtime.agent.EdgeAgent` step for step; the worker process (``worker.py``) owns the loop.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_runtime.uplink import Uplink
from hffm_core.compression import ErrorFeedback
from hffm_core.config import ReliabilityConfig
from hffm_core.delivery import Outbox, ReliableSender, round_tag
from hffm_core.downlink import JobWatch, ResyncNeeded, VersionReceiver
from hffm_core.errors import DecodeError
from hffm_core.protocol import ModuleKey, NodeState, ResyncRequest, RoundControl, encode, modules_for, topics
from hffm_core.protocol.routing import encode_for
from hffm_core.protocol.topics import Topic
from hffm_core.resources import ResourceThresholds, decide
from hffm_core.transport import MqttTransport

log = logging.getLogger(__name__)
BASE_WAIT_S = 30.0  # as the real device: wait this long for a round's base versions
PUMP_EVERY_S = 0.5
STALE_SLACK_S = 60
THRESHOLDS = ResourceThresholds(min_battery_percent=20.0)
State = dict[str, np.ndarray]


class Synth:
    """Synthetic deltas: one seeded random pattern per tensor shape (shared by a process's devices), scaled."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.patterns: dict[tuple[int, ...], np.ndarray] = {}

    def delta(self, state: State, tag: str) -> State:
        scale = np.float32(1e-3 * (0.5 + (zlib.crc32(tag.encode()) % 1000) / 1000.0))
        out = {}
        for name, arr in state.items():
            pattern = self.patterns.get(arr.shape)
            if pattern is None:
                pattern = self.patterns[arr.shape] = self.rng.standard_normal(arr.shape).astype(np.float32)
            out[name] = pattern * scale
        return out


class VirtualDevice:
    """A device of the fleet spec (``plan.py``); ``deliver(device, topic, payload)`` queues its incoming messages
    for the worker's loop, which calls :meth:`handle` and :meth:`tick`."""

    def __init__(self, spec: dict[str, Any], *, fleet: str, modality_of: dict[str, str], state_dir: Path,
                 deliver: Callable[[VirtualDevice, str, bytes, bool], None], codecs: dict[str, Any], synth: Synth,
                 telemetry_interval_s: float, transport_factory: Callable[..., Any] = MqttTransport,
                 trainer: Any = None, backoff: dict[str, float] | None = None,
                 outbox_sync: str = "FULL") -> None:
        self.transport_factory = transport_factory  # MqttTransport; unit tests pass a fake
        self.trainer = trainer  # train mode: the process's SharedTrainer (train.py); None: synthetic deltas
        self.node, self.fog, self.port = spec["id"], spec["fog"], int(spec["port"])
        self.fleet = fleet
        self.tasks: list[str] = list(spec["tasks"])
        self.modalities: list[str] = list(spec["modalities"])
        self.samples: dict[str, int] = {t: int(n) for t, n in spec["samples"].items()}
        self.modality_of = modality_of
        self.fault: dict[str, Any] | None = spec.get("fault")
        self.keys = modules_for({m: [t for t in self.tasks if modality_of[t] == m] for m in self.modalities})
        self.deliver, self.codecs, self.synth = deliver, codecs, synth
        self.telemetry_interval_s = telemetry_interval_s
        self.state_dir = state_dir
        # The real device's [reliability] (default: first resend after 2 s, doubling to 30 s), or the run's.
        rel = ReliabilityConfig(**backoff) if backoff else ReliabilityConfig()
        # FULL as on a real device; NORMAL (no fsync per commit, survives a process crash) keeps a process's
        # devices from queueing behind one another's fsyncs on the one disk they share.
        self.outbox = Outbox(state_dir / f"{self.node}-outbox.sqlite", base_s=rel.backoff_base_s,
                             max_s=rel.backoff_max_s, synchronous=outbox_sync)
        self.stats: Counter[str] = Counter()
        self.transport: Any = None  # an MqttTransport while connected
        self.sender: ReliableSender | None = None
        self.uplink: Uplink | None = None
        self.job: str | None = None  # kept across a crash (the real device's job file)
        self.finished = self.gone = False
        self.rejoin_at: float | None = None
        self.delayed: list[tuple[float, RoundControl]] = []
        self.sent_at: dict[str, float] = {}
        # The harness's own books (they survive a crash, the device's memory does not): every key ever queued and
        # every one the fog acked 'applied', so that a key queued again after a restart counts once.
        self.queued_keys: set[str] = set()
        self.applied_keys: set[str] = set()
        self._reset_memory()

    # -- connection ----------------------------------------------------------------------------------------------
    def _reset_memory(self) -> None:
        """What a process loses when it dies: received versions, the pending round, the advert clock."""
        self.rx = VersionReceiver()  # a module's first version (the cloud's real model) fixes its layout
        self.jobs = JobWatch(f"device {self.node}", self.stats, job=self.job)
        self.last_done = (0, 0)
        self.pending: RoundControl | None = None
        self.pending_since = self.next_advert = self.next_pump = 0.0
        self.state_text = "starting"
        self.advertised_on = 1

    def connect(self) -> None:
        """Connect (retrying like a field device), subscribe, advertise.

        Raises:
            TransportError: the fog broker could not be reached within the connect timeout.
        """
        offline = NodeState(fleet=self.fleet, node=self.node, role="device", fog=self.fog, online=False)
        transport = self.transport_factory(client_id=self.node, host="127.0.0.1", port=self.port, persistent=True,
                                  on_message=lambda t, p, r: self.deliver(self, t, p, r), timeout_s=60.0,
                                  will=(topics.state(self.fleet, self.node), encode(offline)), connect_timeout_s=120.0)
        transport.connect()
        self.transport = transport
        self.sender = ReliableSender(self.outbox, transport, fleet=self.fleet, node=self.node, target=self.fog,
                                     category="device_to_fog")
        self.uplink = Uplink(fleet=self.fleet, fog=self.fog, node=self.node, codecs=self.codecs,
                             feedback=ErrorFeedback(), residuals_path=self.state_dir / f"{self.node}-residuals.npz",
                             outbox=self.outbox, transport=transport,
                             base_of=lambda key: self.rx.stamps.get(key, (0, 0)))
        transport.subscribe([topics.ctl(self.fleet, self.fog), topics.ack_filter(self.fleet, self.fog, self.node),
                             *(topics.cluster(self.fleet, self.fog, k) for k in self.keys)])
        self.advertise("idle")

    def crash(self, now: float, rejoin_s: float | None) -> None:
        """Die as a killed process does: the broker publishes the last will; memory is gone, the disk stays."""
        assert self.transport is not None
        self.transport.close(with_will=True)
        self.stats["crashed" if rejoin_s is not None else "dropped_out"] += 1
        self._keep_sender_counts()
        self.transport = self.sender = self.uplink = None
        self._reset_memory()
        self.delayed.clear()
        if rejoin_s is None:
            self.gone = True
        else:
            self.rejoin_at = now + rejoin_s

    def _keep_sender_counts(self) -> None:
        if self.sender is not None:
            for name, value in self.sender.stats().items():
                if name != "pending":
                    self.stats[f"sender_{name}"] += value

    def close(self) -> dict[str, Any]:
        """Disconnect (if still connected) and return this device's counters."""
        if self.transport is not None:
            self.transport.close()
        self._keep_sender_counts()
        self.sender = None
        out = dict(self.stats)
        out["pending"] = self.outbox.pending()
        out["acked_keys"] = len(self.applied_keys)
        self.outbox.close()
        return out

    # -- messages ------------------------------------------------------------------------------------------------
    def handle(self, topic: Topic, message: Any) -> None:
        """Handle one decoded message, as the real device does (``edge_runtime/agent.py``).

        Raises:
            DecodeError: a message from the wrong sender or for a module this device does not hold.
        """
        if self.transport is None:
            return  # crashed: what paho had queued dies with the process
        if topic.kind == "cluster":
            if topic.module != message.key or message.sender != self.fog:
                raise DecodeError(f"cluster version of {message.key} from {message.sender!r} is not from {self.fog}")
            if message.job != self.jobs.job:
                self.jobs.park(message)
            else:
                self._apply(message)
        elif topic.kind == "ctl":
            self._on_round(message)
        elif topic.kind == "ack" and self.sender is not None:
            if message.sender != self.fog or message.to != self.node:
                raise DecodeError(f"ack from {message.sender!r} to {message.to!r} is not from fog {self.fog!r}")
            self.sender.on_ack(message)
            if message.status == "applied":
                self.applied_keys.update(k for k in message.keys if k in self.queued_keys)
        else:
            raise DecodeError(f"device {self.node} does not take {topic.kind!r} messages")

    def _on_round(self, ctl: RoundControl) -> None:
        if ctl.sender != self.fog:
            raise DecodeError(f"round announcement from {ctl.sender!r}, not from fog {self.fog!r}")
        if ctl.job != self.jobs.job:
            if ctl.final:
                self.jobs.ignore(ctl.job, "the final round announcement")
                return
            self.job = ctl.job
            for version in self.jobs.join(ctl.job):
                self._apply(version)
        assert self.sender is not None
        self.sender.expire_rounds_before(round_tag(ctl.global_round, ctl.cluster_round))
        if ctl.final or (ctl.global_round, ctl.cluster_round) > self.last_done:
            self.pending, self.pending_since = ctl, time.monotonic()

    def _apply(self, msg: Any) -> None:
        if msg.key not in self.keys:
            raise DecodeError(f"device {self.node} does not hold module {msg.key}")
        try:
            self.rx.apply(msg)
        except ResyncNeeded:
            assert self.transport is not None
            request = ResyncRequest(fleet=self.fleet, sender=self.node, target=self.fog, modules=(msg.key,))
            self.transport.publish(topics.resync(self.fleet, self.fog, self.node), encode(request),
                                   category="device_to_fog")
            self.stats["resyncs"] += 1

    def advertise(self, state: str, *, skip: tuple[int, int] | None = None, online: bool = True) -> None:
        assert self.transport is not None
        self.state_text = state
        advert = NodeState(fleet=self.fleet, node=self.node, role="device", fog=self.fog, online=online,
                           modules=tuple(self.keys), backbone="sim", num_samples=dict(self.samples),
                           modalities=tuple(self.modalities), tasks=tuple(self.tasks),
                           versions={str(k): s for k, s in self.rx.stamps.items()}, telemetry=self._telemetry(skip),
                           last_seen=time.time(), status=state, skip=skip, job=self.job or "")
        sent = self.transport.try_publish(topics.state(self.fleet, self.node), encode(advert),
                                          category="device_to_fog", retain=True)
        self.next_advert = time.monotonic() + (self.telemetry_interval_s if sent else 3.0)

    def _telemetry(self, skip_round: tuple[int, int] | None) -> dict[str, float]:
        """A synthetic sample: mains-powered and healthy, except a ``skip`` fault's round (battery at 5 %)."""
        low = self._fault_now("skip", skip_round) if skip_round else False
        return {"mem_available_mb": 1024.0, "battery_percent": 5.0 if low else 90.0,
                "battery_plugged": 0.0 if low else 1.0}

    def _fault_now(self, kind: str, at: tuple[int, int] | None) -> bool:
        f = self.fault
        return f is not None and f["kind"] == kind and at is not None and (f["g"], f["c"]) == at

    # -- the loop's work -----------------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        if self.gone or self.finished:
            return
        if self.transport is None:
            if self.rejoin_at is not None and now >= self.rejoin_at:
                self.rejoin_at = None
                self.connect()
                self.stats["rejoined"] += 1
            return
        if self.transport.connections > self.advertised_on:  # reconnected: the broker may hold our will
            self.advertised_on, self.next_advert = self.transport.connections, 0.0
        if now >= self.next_advert:
            self.advertise(self.state_text)
        while self.delayed and self.delayed[0][0] <= now:
            self._send_round(self.delayed.pop(0)[1])
        if now >= self.next_pump and self.sender is not None:
            self.sender.pump()
            self.next_pump = now + PUMP_EVERY_S
        ctl = self.pending
        if ctl is None:
            return
        floor = (ctl.global_round, 0)
        in_round = [k for k in self.keys if ctl.final or not ctl.participants or str(k) in ctl.participants]
        if any(self.rx.stamps.get(k, (-1, -1)) < floor for k in in_round) and now - self.pending_since < BASE_WAIT_S:
            return
        self.pending = None
        if ctl.final:
            self.advertise("job finished", online=False)
            self.finished = True
            return
        self._round(ctl, now)

    def _round(self, ctl: RoundControl, now: float) -> None:
        at = (ctl.global_round, ctl.cluster_round)
        self.last_done = at
        if self._fault_now("drop", at):
            self.crash(now, None)
            return
        if not any(not ctl.participants or self.node in ctl.participants.get(str(k), ()) for k in self.keys):
            self.stats["not_selected"] += 1
            return
        decision = decide(self._telemetry(at), THRESHOLDS)
        if decision.action == "skip":
            self.stats["skipped"] += 1
            self.advertise(f"skipped round {at}: {'; '.join(decision.reasons)}", skip=at)
            return
        slow = self.fault is not None and self.fault["kind"] == "slow" and at >= (self.fault["g"], self.fault["c"])
        if slow:
            self.delayed.append((now + float(self.fault["seconds"]), ctl))  # type: ignore[index]
            self.stats["slowed"] += 1
            return
        crash = self._fault_now("crash", at) and not self.stats["crashed"]
        self._send_round(ctl, pump=not crash)
        if crash:
            self.crash(now, float(self.fault["seconds"]))  # type: ignore[index]

    def _send_round(self, ctl: RoundControl, *, pump: bool = True) -> None:
        """Queue one synthetic update per selected module in the outbox and (unless a crash comes first) hand
        them to the broker at once, as the real device does."""
        if self.uplink is None or self.sender is None:
            return
        g, c = ctl.global_round, ctl.cluster_round
        self.sender.expiry_s = math.ceil(ctl.deadline_s) + STALE_SLACK_S
        selected = [k for k in self.keys if not ctl.participants or self.node in ctl.participants.get(str(k), ())]
        missing = [k for k in selected if k not in self.rx.states]
        if missing:
            self.stats["no_base_version"] += len(missing)
            log.warning("device %s: no version of %s to start from; not sending them", self.node, missing)
        selected = [k for k in selected if k in self.rx.states]
        trained = self.trainer.deltas(self.node, self.tasks, ctl, selected, dict(self.rx.states)) \
            if self.trainer is not None else None
        rows = []
        for key in selected:
            if trained is not None:
                delta, loss = trained[key]
            else:
                delta, loss = self.synth.delta(self.rx.states[key], f"{self.node}/{g}.{c}/{key}"), 0.0
            update = self.uplink.build(key, delta, self._samples(key), loss, g, c)
            topic = topics.up(self.fleet, self.fog, key, self.node)
            rows.append((update.idempotency_key, topic, encode_for(topic, update), round_tag(g, c)))
        for (key, _topic, payload, _round), new in zip(rows, self.outbox.put_many(rows), strict=True):  # one commit
            if not new:
                continue
            if key in self.queued_keys:  # a restarted device redoes its round: the fog answers 'duplicate' and acks
                self.stats["requeued"] += 1  # it again
            else:
                self.queued_keys.add(key)
                self.stats["queued"] += 1
                self.stats["bytes_queued"] += len(payload)
        self.stats["rounds_sent"] += 1
        self.sent_at[f"{self.fog}/{g}.{c}"] = time.time()  # when this round's updates went to the broker (or the outbox)
        if pump:
            self.sender.pump()
            self.next_pump = time.monotonic() + PUMP_EVERY_S

    def _samples(self, key: ModuleKey) -> int:
        if key.kind == "encoder":
            return max(1, sum(n for t, n in self.samples.items() if self.modality_of[t] == key.modality))
        return max(1, self.samples.get(key.task, 1))
