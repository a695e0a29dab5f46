"""A ledger-driven delivery workload over real brokers: devices -> fog relays -> cloud applier, each a process.

It exercises the reliability path on its own (no model, no training): the real wire types (``ModuleUpdate``,
``FogAggregate``, ``Ack``, ``Chunk``), the real MQTT transport with persistent sessions, the on-disk
:class:`~hffm_core.delivery.outbox.Outbox` and the durable aggregation state
(:class:`~hffm_core.delivery.durable_sum.DurableSums`). Every delta is an indicator vector: device ``i``'s
update for round ``r`` is 1 at index ``i``. The fog sums its devices' deltas per round (durably, acking each device
once its delta is in the sum) and sends the sum to the cloud through its outbox; the cloud sums the fogs' sums per
round (durably, acking each fog). So entry ``i`` of the cloud's round-``r`` sum is exactly how many times device
``i``'s round-``r`` key was applied end to end: 1 is right, 0 is a loss, 2 a duplicate. Each device process
appends every key it produced to a ledger file; :mod:`hffm_lab.faults.ledger_faults` compares the two.

Run one role: ``python -m hffm_lab.faults.workload SPEC.json {devices FOG|fog FOG|cloud}``.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hffm_core.delivery.chunking import Reassembler
from hffm_core.delivery.durable_sum import ADDED, CLOSED, DUPLICATE, DurableSums
from hffm_core.delivery.outbox import Outbox
from hffm_core.delivery.sender import ReliableSender
from hffm_core.delivery.watch import DROPPED_TOPIC, DroppedWatch
from hffm_core.errors import DecodeError, HffmError
from hffm_core.protocol import codec, topics
from hffm_core.protocol.keys import ModuleKey
from hffm_core.protocol.messages import (
    Ack,
    Chunk,
    FogAggregate,
    ModuleUpdate,
    blobs_from_state,
    state_from_blobs,
    tensors_sha256,
)
from hffm_core.protocol.routing import decode_message
from hffm_core.transport import MqttTransport

log = logging.getLogger(__name__)
MODULE = ModuleKey.head("ledger")
_BATCH = 500  # messages handled per loop turn before acks go out and the outbox is pumped


@dataclass(frozen=True)
class WorkloadSpec:
    """Everything the three roles share; written to JSON by the harness and read by each process."""

    fleet: str
    fogs: tuple[str, ...]
    devices_per_fog: int
    rounds: int
    state_dir: str
    cloud_port: int
    fog_ports: dict[str, int]
    round_interval_s: float = 0.2  # 0: every round at once (a burst)
    pad_floats: int = 0  # extra zeros per delta (to exceed a broker's packet limit)
    outbox: bool = True  # False: the negative control (send once, never retransmit)
    fog_deadline_s: float = 20.0  # a fog closes a round this long after its first delta, complete or not
    backoff_base_s: float = 0.5
    backoff_max_s: float = 2.0
    expiry_s: int = 600
    time_limit_s: float = 300.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return len(self.fogs) * self.devices_per_fog

    def devices(self, fog: str) -> list[str]:
        return [f"{fog}-d{i}" for i in range(self.devices_per_fog)]

    def index(self, fog: str, device_no: int) -> int:
        return self.fogs.index(fog) * self.devices_per_fog + device_no

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> WorkloadSpec:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        raw["fogs"] = tuple(raw["fogs"])
        return cls(**raw)


def update_key(fleet: str, device: str, round_: int) -> str:
    return f"{fleet}/{device}/{round_}.1/{MODULE}"


def aggregate_key(fleet: str, fog: str, round_: int) -> str:
    return f"{fleet}/{fog}/{round_}/{MODULE}"


class _Role:
    """Shared plumbing: one persistent MQTT session, an inbox queue, SIGTERM handling, a bounded loop."""

    def __init__(self, spec: WorkloadSpec, client_id: str, port: int) -> None:
        self.spec = spec
        self.state = Path(spec.state_dir)
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.transport = MqttTransport(client_id=client_id, host="127.0.0.1", port=port, persistent=True,
                                       on_message=lambda t, p, _r: self.inbox.put((t, p)))
        self.reasm = Reassembler(timeout_s=120.0)
        self.watch = DroppedWatch(client_id)
        self.rejected = 0
        self.stop = False
        signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, *_: object) -> None:
        self.stop = True

    def mark_ready(self) -> None:
        """Connected and subscribed (SUBACK seen): the harness waits for this file before it injects a fault."""
        (self.state / f"ready-{self.transport.client_id}").write_text(str(time.time()), encoding="utf-8")

    def messages(self) -> list[tuple[Any, Any]]:
        """Up to ``_BATCH`` decoded messages (chunks reassembled; bad ones counted and dropped)."""
        out = []
        for _ in range(_BATCH):
            try:
                topic, payload = self.inbox.get(timeout=0.02 if not out else 0)
            except queue.Empty:
                break
            if topic == DROPPED_TOPIC:
                self.watch.update(payload)
                continue
            try:
                parsed, msg = decode_message(topic, payload, max_payload=codec.DEFAULT_MAX_PAYLOAD)
                if isinstance(msg, Chunk):
                    whole = self.reasm.add(msg)
                    if whole is None:
                        continue
                    parsed, msg = decode_message(*whole)
                out.append((parsed, msg))
            except HffmError as exc:
                self.rejected += 1
                log.warning("rejected message on %s: %s", topic, exc)
        return out

    def publish_ack(self, fog: str, to: str, sender: str, keys: list[str], status: str) -> None:
        for start in range(0, len(keys), 1000):
            ack = Ack(fleet=self.spec.fleet, sender=sender, to=to, keys=tuple(keys[start:start + 1000]), status=status)
            # A lost ack is harmless: the sender retransmits and the duplicate is acknowledged again.
            self.transport.try_publish(topics.ack(self.spec.fleet, fog, to, sender), codec.encode(ack),
                                       category="other")


class DeviceRole(_Role):
    """All devices of one fog in one process: produce indicator deltas round by round, send them via the outbox."""

    def __init__(self, spec: WorkloadSpec, fog: str) -> None:
        super().__init__(spec, f"hffm-rel-devices-{fog}", spec.fog_ports[fog])
        self.fog = fog
        self.outbox = Outbox(self.state / f"devices-{fog}-outbox.sqlite", base_s=spec.backoff_base_s,
                             max_s=spec.backoff_max_s, synchronous="NORMAL")
        self.sender = ReliableSender(self.outbox, self.transport, fleet=spec.fleet, node=fog + "-devs", target=fog,
                                     category="device_to_fog", expiry_s=spec.expiry_s)
        self.ledger = open(self.state / f"ledger-{fog}.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def produce(self, round_: int) -> None:
        for no, device in enumerate(self.spec.devices(self.fog)):
            ind = np.zeros(self.spec.dim, dtype=np.float32)
            ind[self.spec.index(self.fog, no)] = 1.0
            state = {"ind": ind}
            if self.spec.pad_floats:
                state["pad"] = np.zeros(self.spec.pad_floats, dtype=np.float32)
            blobs = blobs_from_state(state)
            key = update_key(self.spec.fleet, device, round_)
            msg = ModuleUpdate(fleet=self.spec.fleet, sender=device, fog=self.fog, key=MODULE, global_round=round_,
                               cluster_round=1, base=(round_ - 1, 0), num_samples=1, train_loss=0.0, tensors=blobs,
                               sha256=tensors_sha256(blobs), idempotency_key=key)
            topic, payload = topics.up(self.spec.fleet, self.fog, MODULE, device), codec.encode(msg)
            if self.spec.outbox:
                self.outbox.put(key, topic, payload, round_=round_)
            elif not self.sender.send_now(topic, payload):  # the negative control: one try, no outbox
                log.warning("negative control: %s not sent (not connected)", key)
            self.ledger.write(json.dumps({"key": key, "device": device, "index": self.spec.index(self.fog, no),
                                          "round": round_, "t": time.time()}) + "\n")
        self.ledger.flush()

    def run(self) -> None:
        self.transport.connect()
        self.transport.subscribe([topics.ack_filter(self.spec.fleet, self.fog, d) for d in self.spec.devices(self.fog)])
        self.mark_ready()
        start, next_round = time.monotonic(), 1
        end = start + self.spec.time_limit_s
        while not self.stop and time.monotonic() < end:
            while next_round <= self.spec.rounds and time.monotonic() >= start + (next_round - 1) * self.spec.round_interval_s:
                self.produce(next_round)
                next_round += 1
            for _parsed, msg in self.messages():
                if isinstance(msg, Ack) and msg.sender == self.fog:
                    self.sender.on_ack(msg)
            if self.spec.outbox:
                self.sender.pump()
            if next_round > self.spec.rounds and (not self.spec.outbox or self.outbox.pending() == 0):
                break
        log.info("devices of %s: done; sent %d (%d retransmits, %d chunked), acked %d, dropped %d, pending %d",
                 self.fog, self.sender.sent, self.sender.retransmitted, self.sender.chunked, self.sender.acked,
                 self.sender.dropped, self.outbox.pending())
        time.sleep(0.5)
        self.transport.close()


class FogRole(_Role):
    """One fog: durable per-round sums of its devices' deltas, acks after each commit, aggregates via the outbox."""

    def __init__(self, spec: WorkloadSpec, fog: str) -> None:
        super().__init__(spec, f"hffm-rel-fog-{fog}", spec.fog_ports[fog])
        self.fog = fog
        self.sums = DurableSums(self.state / f"{fog}-agg.sqlite", synchronous="NORMAL")
        self.outbox = Outbox(self.state / f"{fog}-outbox.sqlite", base_s=spec.backoff_base_s,
                             max_s=spec.backoff_max_s, synchronous="NORMAL")
        self.sender = ReliableSender(self.outbox, self.transport, fleet=spec.fleet, node=fog, target="cloud",
                                     category="fog_to_cloud", expiry_s=spec.expiry_s)
        self.first_seen: dict[str, float] = {}
        for bucket in self.sums.buckets(closed=False):  # resume the rounds open when the process stopped
            self.first_seen[bucket] = time.monotonic()
            self._maybe_close(bucket)

    def _maybe_close(self, bucket: str, *, force: bool = False) -> None:
        sums, weight, count = self.sums.result(bucket)
        if not force and count < self.spec.devices_per_fog:
            return
        round_ = int(bucket[1:])
        if count:
            blobs = blobs_from_state({n: a.astype(np.float32) for n, a in sums.items()})
            key = aggregate_key(self.spec.fleet, self.fog, round_)
            agg = FogAggregate(fleet=self.spec.fleet, fog=self.fog, key=MODULE, global_round=round_,
                               total_weight=weight, num_devices=count, tensors=blobs, sha256=tensors_sha256(blobs),
                               idempotency_key=key)
            # Outbox first, then close: a crash in between re-closes the bucket and the put is a no-op.
            self.outbox.put(key, topics.fogup(self.spec.fleet, self.fog, MODULE), codec.encode(agg), round_=round_)
        if force and count < self.spec.devices_per_fog:
            log.warning("fog %s: round %d closed at its deadline with %d of %d deltas", self.fog, round_, count,
                        self.spec.devices_per_fog)
        self.sums.close_bucket(bucket)
        self.first_seen.pop(bucket, None)

    def _on_update(self, parsed: Any, msg: ModuleUpdate, acks: dict[tuple[str, str], list[str]]) -> None:
        if (parsed.node, parsed.fog) != (msg.sender, msg.fog) or msg.fog != self.fog:
            raise DecodeError(f"update header ({msg.sender}, {msg.fog}) does not match its topic")
        bucket = f"g{msg.global_round}"
        outcome = self.sums.add(bucket, msg.idempotency_key, state_from_blobs(msg.tensors), float(msg.num_samples))
        status = "expired" if outcome == CLOSED else "applied"
        acks.setdefault((msg.sender, status), []).append(msg.idempotency_key)
        if outcome == ADDED:
            self.first_seen.setdefault(bucket, time.monotonic())
            self._maybe_close(bucket)

    def run(self) -> None:
        self.transport.connect()
        self.transport.subscribe([topics.up_filter(self.spec.fleet, self.fog),
                                  topics.chunk_filter(self.spec.fleet, self.fog),
                                  topics.ack_filter(self.spec.fleet, self.fog, self.fog), DROPPED_TOPIC])
        self.mark_ready()
        end = time.monotonic() + self.spec.time_limit_s
        while not self.stop and time.monotonic() < end:
            acks: dict[tuple[str, str], list[str]] = {}
            for parsed, msg in self.messages():
                try:
                    if isinstance(msg, ModuleUpdate):
                        self._on_update(parsed, msg, acks)
                    elif isinstance(msg, Ack) and msg.sender == "cloud" and msg.to == self.fog:
                        self.sender.on_ack(msg)
                except HffmError as exc:
                    self.rejected += 1
                    log.warning("fog %s: rejected %s: %s", self.fog, type(msg).__name__, exc)
            for (device, status), keys in acks.items():
                self.publish_ack(self.fog, device, self.fog, keys, status)
            now = time.monotonic()
            for bucket, seen in list(self.first_seen.items()):
                if now - seen > self.spec.fog_deadline_s:
                    self._maybe_close(bucket, force=True)
            self.sender.pump()
        self.transport.close()


class CloudRole(_Role):
    """The cloud: durable per-round sums of the fogs' aggregates, acking each fog after the commit."""

    def __init__(self, spec: WorkloadSpec) -> None:
        super().__init__(spec, "hffm-rel-cloud", spec.cloud_port)
        self.sums = DurableSums(self.state / "cloud-agg.sqlite", synchronous="NORMAL")

    def run(self) -> None:
        self.transport.connect()
        self.transport.subscribe([topics.fogup_filter(self.spec.fleet), topics.chunk_filter(self.spec.fleet, "cloud")])
        self.mark_ready()
        end = time.monotonic() + self.spec.time_limit_s
        while not self.stop and time.monotonic() < end:
            acks: dict[str, list[str]] = {}
            for parsed, msg in self.messages():
                if not isinstance(msg, FogAggregate) or msg.fog not in self.spec.fogs or parsed.fog != msg.fog:
                    self.rejected += 1
                    continue
                try:
                    outcome = self.sums.add(f"g{msg.global_round}", msg.idempotency_key, state_from_blobs(msg.tensors),
                                            1.0)
                except HffmError as exc:
                    self.rejected += 1
                    log.warning("cloud: rejected %s: %s", msg.idempotency_key, exc)
                    continue
                if outcome in (ADDED, DUPLICATE):
                    acks.setdefault(msg.fog, []).append(msg.idempotency_key)
            for fog, keys in acks.items():
                self.publish_ack(fog, fog, "cloud", keys, "applied")
        self.transport.close()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    spec = WorkloadSpec.load(Path(argv[0]))
    role = argv[1]
    try:
        if role == "devices":
            DeviceRole(spec, argv[2]).run()
        elif role == "fog":
            FogRole(spec, argv[2]).run()
        elif role == "cloud":
            CloudRole(spec).run()
        else:
            print(f"unknown role {role!r}; expected devices, fog or cloud", file=sys.stderr)
            return 2
    except HffmError as exc:
        print(f"hffm: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
