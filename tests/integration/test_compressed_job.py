"""A compressed job on real Mosquitto (tiny backbone): lossy codecs on every link, nothing drifts.

Uplink: top-k + int8 with error feedback on devices and fogs; downlink: int8 deltas from the cloud and the fogs.
Checks that uplink bytes drop against the fp32 job of the same fleet, that the residuals were persisted, and that
every device ends with exactly the global model the cloud evaluated (the downlink deltas reconstruct it exactly).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hffm_testing.refusals import refusals

from hffm_core.compression import ErrorFeedback
from hffm_lab.demo import DemoOptions, run_demo

pytestmark = pytest.mark.integration
TOPK = {"codec": "topk", "params": {"fraction": 0.05, "values": "int8"}}
INT8 = {"codec": "int8", "params": {"block": 128}}


def _run(run_dir: Path, uplink: dict, downlink: dict) -> dict:
    # The shape of the session's fp32 job (hffm_testing.job): the byte comparison below uses its report.
    opts = DemoOptions(fogs=2, devices_per_fog=2, rounds=2, agg_every=2, local_epochs=1, backbone="tiny",
                       run_dir=run_dir, baseline=False, show_tables=False, time_limit_s=300, uplink=uplink,
                       fog_uplink=uplink, downlink=downlink)
    return run_demo(opts)


def test_compressed_job_saves_uplink_bytes_and_keeps_devices_exact(tmp_path: Path, job: tuple[dict, Path]) -> None:
    plain, _ = job  # the same fleet, rounds and data with fp32 on every link
    assert plain["config"]["uplink"] == {} and plain["config"]["downlink"] == {}, plain["config"]
    comp = _run(tmp_path / "topk", {"encoder": TOPK, "adapter": TOPK, "head": INT8},
                {"encoder": INT8, "adapter": INT8, "head": INT8})
    assert len(comp["rounds"]) == len(plain["rounds"])

    def link(report: dict, name: str) -> int:
        return sum(r["bytes"][name] for r in report["rounds"])

    # The tiny backbone's modules are small, so headers and state adverts weigh more than with minilm.
    assert link(comp, "device_to_fog") * 2 < link(plain, "device_to_fog")
    assert link(comp, "fog_to_cloud") * 2 < link(plain, "fog_to_cloud")
    assert link(comp, "fog_to_device") < link(plain, "fog_to_device")
    assert refusals(comp["rejected_messages"]) == {}, comp["rejected_messages"]
    assert len(comp["devices"]) == 2 * 2 and all(info["final_accuracy"] for info in comp["devices"].values()), \
        comp["devices"]
    for dev, info in comp["devices"].items():
        for task, acc in info["final_accuracy"].items():
            assert acc == pytest.approx(comp["final"]["accuracy"][task]), (dev, task)
    residuals = sorted((tmp_path / "topk" / "state").glob("*-residuals.npz"))
    assert len(residuals) == 2 + 4  # every fog and every device persisted its error-feedback memory
    fb = ErrorFeedback.load(residuals[-1])
    assert fb.streams() and any(abs(a).sum() > 0 for s in fb.streams() for a in fb.residual(s).values())


def test_lowrank_on_every_link_keeps_devices_exact(tmp_path: Path) -> None:
    """The structured codec end to end: every receiver decodes with its own module layout (names and shapes)."""
    lowrank = {"encoder": {"codec": "lowrank", "params": {"rank": 2}},
               "adapter": {"codec": "lowrank", "params": {"rank": 1, "rank_of": "lora_B:2"}},
               "head": {"codec": "lowrank", "params": {"rank": 2}}}
    comp = _run(tmp_path / "lowrank", lowrank, lowrank)
    assert refusals(comp["rejected_messages"]) == {}, comp["rejected_messages"]
    assert all(r["bytes"]["device_to_fog"] > 0 for r in comp["rounds"])
    assert len(comp["devices"]) == 2 * 2 and all(info["final_accuracy"] for info in comp["devices"].values()), \
        comp["devices"]
    for dev, info in comp["devices"].items():
        for task, acc in info["final_accuracy"].items():
            assert acc == pytest.approx(comp["final"]["accuracy"][task]), (dev, task)
    fb = ErrorFeedback.load(sorted((tmp_path / "lowrank" / "state").glob("*-residuals.npz"))[-1])
    assert fb.streams() and any(abs(a).sum() > 0 for s in fb.streams() for a in fb.residual(s).values())
