"""A fog round over an adapter held at LoRA ranks 4 and 16, without a broker: the close adds the zero-padded mean at
the served rank, and a gateway restarted from the real journal resumes the mixed-rank running sum bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fog_gateway.policies import FogRules
from fog_gateway.round_engine import APPLIED, FogRound
from fog_gateway.round_journal import RoundJournal
from hffm_core.protocol import ModuleKey, ModuleUpdate, RoundControl, blobs_from_state, tensors_sha256

FLEET, FOG = "t", "fog-1"
KEY = ModuleKey.adapter("image", "digit")
A, B = "l.lora_A.weight", "l.lora_B.weight"


def _state(rank: int, value: float) -> dict[str, np.ndarray]:
    return {A: np.full((rank, 6), value, np.float32), B: np.full((5, rank), value, np.float32)}


def _update(dev: str, delta: dict[str, np.ndarray], n: int) -> ModuleUpdate:
    blobs = blobs_from_state(delta)
    return ModuleUpdate(fleet=FLEET, sender=dev, fog=FOG, key=KEY, global_round=1, cluster_round=1, base=(1, 0),
                        num_samples=n, train_loss=0.1, tensors=blobs, sha256=tensors_sha256(blobs),
                        idempotency_key=f"{FLEET}/{dev}/1.1/{KEY}")


def _round(journal: RoundJournal) -> FogRound:
    rnd = FogRound(fleet=FLEET, node=FOG, rules=FogRules(), journal=journal)
    plan = RoundControl(fleet=FLEET, sender="cloud", global_round=1, cluster_round=0, total_rounds=2, agg_every=1,
                        local_epochs=1, deadline_s=60, final=False, job="J")
    assert rnd.take_plan(plan, now=0.0)
    rnd.start_global({KEY}, {KEY: _state(16, 0.0)}, now=0.0)
    rnd.open_cluster(1, holders=lambda _k: {"pi", "jetson", "nano"}, adverts={}, now=10.0)
    return rnd


def test_mixed_rank_round_closes_per_slice_and_resumes_from_the_journal(tmp_path: Path) -> None:
    journal = RoundJournal(tmp_path / "round.sqlite")
    rnd = _round(journal)
    true = {KEY: _state(16, 0.0)}
    rnd.commit([KEY], true=true, published=true, stamps={KEY: (1, 0)}, start=True)
    for dev, delta, n in (("pi", _state(4, 1.0), 10), ("jetson", _state(16, 4.0), 30)):
        out = rnd.accept(_update(dev, delta, n), (dev,), holders={"pi", "jetson", "nano"}, decode=lambda d=delta: d)
        assert out.status == APPLIED
    assert rnd.flush() == 2
    again = FogRound(fleet=FLEET, node=FOG, rules=FogRules(), journal=journal)
    snap = journal.load()
    assert snap is not None
    again.restore(snap, now=100.0, settle_s=1.0)
    for r in (rnd, again):
        new, refused = r.close(true, now=200.0)
        assert refused == []
        got = new[KEY]
        assert got[A].shape == (16, 6) and got[B].shape == (5, 16)
        np.testing.assert_allclose(got[A][:4], (10 * 1.0 + 30 * 4.0) / 40)  # both holders
        np.testing.assert_allclose(got[A][4:], 30 * 4.0 / 40)  # the pi counts as zeros there
        np.testing.assert_allclose(got[B][:, 4:], 30 * 4.0 / 40)
    assert again.book.aggs[KEY].result()[A].tobytes() == rnd.book.aggs[KEY].result()[A].tobytes()
    journal.close()
