"""A job on real Mosquitto (tiny backbone) whose devices hold LoRA adapters of different ranks (4, 8, 16): the fogs
and the cloud aggregate across ranks (hffm_core/aggregation/ranks.py), and every device ends holding the final
version of its modules at its own rank: the leading rank slices of what a rank-16 device holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hffm_testing.refusals import refusals

from hffm_core.aggregation.ranks import module_rank
from hffm_lab.demo import DemoOptions, run_demo
from hffm_model.snapshot import load_modules

pytestmark = pytest.mark.integration
RANKS = {"fog-1-dev-1": 4, "fog-1-dev-2": 16, "fog-2-dev-1": 8, "fog-2-dev-2": 16}


def test_mixed_rank_job_ends_with_every_device_at_its_own_rank(tmp_path: Path) -> None:
    opts = DemoOptions(fogs=2, devices_per_fog=2, rounds=2, agg_every=1, backbone="tiny", run_dir=tmp_path,
                       baseline=False, show_tables=False, time_limit_s=300, dashboard=False,
                       model={"lora_r": 16, "lora_alpha": 32},
                       device_model={d: {"lora_r": r, "lora_alpha": 2 * r} for d, r in RANKS.items()})
    report = run_demo(opts)
    assert refusals(report["rejected_messages"]) == {}, report["rejected_messages"]
    assert set(report["devices"]) == set(RANKS)
    held = {}
    for dev, rank in RANKS.items():
        assert report["devices"][dev]["final_accuracy"], dev
        states, stamps = load_modules(tmp_path / "state" / f"{dev}-modules.npz")
        assert states and {stamps[k] for k in states} == {(opts.rounds + 1, 0)}, (dev, stamps)  # the final version
        for key, state in states.items():
            if key.kind == "adapter":
                assert module_rank({n: a.shape for n, a in state.items()}) == rank, (dev, key)
            held.setdefault(key, []).append((rank, state))
    shared = 0
    for key, copies in held.items():
        top_rank, top = max(copies, key=lambda c: c[0])
        for rank, state in copies:
            for name, arr in state.items():
                want = top[name]
                if name.endswith("lora_A.weight"):
                    want = want[:rank]
                elif name.endswith("lora_B.weight"):
                    want = want[:, :rank]
                np.testing.assert_array_equal(arr, want, err_msg=f"{key} {name} at rank {rank} vs {top_rank}")
            shared += rank != top_rank
    assert shared, "no module was held at two ranks: the fleet did not mix ranks"
