"""The sender drains the outbox only while connected, chunks what exceeds the packet limit, and acks clear rows;
the fault checker counts losses and duplicates from the ledgers and the cloud's sums."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hffm_core.delivery.durable_sum import DurableSums
from hffm_core.delivery.outbox import Outbox
from hffm_core.delivery.sender import ReliableSender
from hffm_core.protocol.messages import Ack
from hffm_lab.faults.ledger_faults import check
from hffm_lab.faults.workload import WorkloadSpec, aggregate_key

TOPIC = "hffm/v1/f/up/fog-a/imu/activity/adapter/dev-1"


class FakePublisher:
    def __init__(self, *, connected: bool = True, limit: int = 0, fail_after: int = 10**9) -> None:
        self.connected = connected
        self.max_packet_size = limit
        self.sent: list[tuple[str, bytes]] = []
        self.fail_after = fail_after

    def try_publish(self, topic: str, payload: bytes, *, category: str, retain: bool = False, expiry_s: int = 0) -> bool:
        assert not self.max_packet_size or len(payload) < self.max_packet_size
        if len(self.sent) >= self.fail_after:
            return False
        self.sent.append((topic, payload))
        return True


def _sender(tmp_path: Path, pub: FakePublisher) -> ReliableSender:
    return ReliableSender(Outbox(tmp_path / "o.sqlite", base_s=1.0, max_s=2.0), pub, fleet="f", node="dev-1",
                          target="fog-a", category="device_to_fog")


def test_pump_sends_due_rows_once_until_the_backoff(tmp_path: Path) -> None:
    pub = FakePublisher(connected=False)
    sender = _sender(tmp_path, pub)
    sender.outbox.put("k1", TOPIC, b"a", round_=1, now=0.0)
    sender.outbox.put("k2", TOPIC, b"b", round_=1, now=0.0)
    assert sender.pump(now=0.0) == 0  # not connected: nothing handed to paho
    pub.connected = True
    assert sender.pump(now=0.0) == 2 and sender.pump(now=0.5) == 0
    assert sender.pump(now=1.3) == 2 and sender.retransmitted == 2
    sender.on_ack(Ack(fleet="f", sender="fog-a", to="dev-1", keys=("k1",)))
    sender.on_ack(Ack(fleet="f", sender="fog-a", to="dev-1", keys=("k2",), status="expired"))
    assert sender.outbox.pending() == 0 and (sender.acked, sender.dropped) == (1, 1)


def test_a_conflict_drops_the_update_and_counts_it_apart(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    sender = _sender(tmp_path, FakePublisher())
    sender.outbox.put("k1", TOPIC, b"a", round_=1, now=0.0)
    sender.on_ack(Ack(fleet="f", sender="fog-a", to="dev-1", keys=("k1",), status="conflict"))
    stats = sender.stats()
    assert (stats["conflicts"], stats["rejected"], stats["dropped"], stats["acked"], stats["pending"]) == (1, 1, 1, 0, 0)
    assert "another update was already applied under ['k1']" in caplog.text


def test_large_payloads_go_out_in_chunks_and_a_failed_send_stays_due(tmp_path: Path) -> None:
    pub = FakePublisher(limit=8192, fail_after=3)
    sender = _sender(tmp_path, pub)
    sender.outbox.put("big", TOPIC, b"x" * 50_000, round_=1, now=0.0)
    assert sender.pump(now=0.0) == 0 and sender.outbox.due(now=0.0)[0].attempts == 0  # the link failed mid-way
    pub.fail_after = 10**9
    assert sender.pump(now=0.0) == 1 and sender.chunked == 2
    assert all("/chunk/fog-a/dev-1" in t for t, _ in pub.sent)


def _spec(tmp_path: Path) -> WorkloadSpec:
    return WorkloadSpec(fleet="rel", fogs=("fog-0",), devices_per_fog=2, rounds=1, state_dir=str(tmp_path),
                        cloud_port=1, fog_ports={"fog-0": 2})


def test_checker_counts_lost_and_duplicated_keys(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    ledger = [{"key": f"k{i}", "device": f"fog-0-d{i}", "index": i, "round": 1, "t": 0.0} for i in range(2)]
    (tmp_path / "ledger-fog-0.jsonl").write_text("".join(json.dumps(e) + "\n" for e in ledger))
    sums = DurableSums(tmp_path / "cloud-agg.sqlite")
    sums.add("g1", aggregate_key("rel", "fog-0", 1), {"ind": np.array([2.0, 0.0])}, 1.0)  # d0 twice, d1 never
    sums.close()
    result = check(spec, tmp_path, fault_end=0.0)
    assert (result["produced"], result["applied"], result["lost"], result["duplicates_applied"]) == (2, 1, 1, 1)
    assert result["recovery_s"] is None
