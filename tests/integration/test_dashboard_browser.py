"""The live dashboard in a real browser during a real tiny job (issue 19): headless Chromium (Debian's `chromium`,
driven by Playwright) loads `hffm dashboard`'s page while the tiers run, waits for global round 2, and checks the
DOM: every node of the fleet listed, an accuracy plot with >= 2 points per series, no console errors. A screenshot
is saved in the test's folder. `hffm fleet status --watch` and `hffm job status` then show the same fleet and the
finished job from the same broker.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from broker_config.process import (
    MosquittoProcess,
    free_port,
    wait_for_bridge,
)
from broker_config.render import BridgeSpec
from cloud.dashboard.server import Dashboard
from hffm_lab.demo.plan import FLEET, DemoOptions, write_fleet
from hffm_lab.demo.processes import ProcessGroup, TierProcess

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FOG = "fog-1"
DEVICES = ["fog-1-dev-1", "fog-1-dev-2"]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


def _browser():  # type: ignore[no-untyped-def]
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (make test installs Debian's chromium with apt-get)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    return playwright.sync_playwright()


def test_the_page_follows_a_real_job_in_chromium(tmp_path: Path) -> None:
    opts = DemoOptions(fogs=1, devices_per_fog=2, rounds=3, agg_every=1, local_epochs=1, backbone="tiny",
                       run_dir=tmp_path, time_limit_s=300, baseline=False, show_tables=False)
    cloud_port, fog_port = free_port(), free_port()
    plan = write_fleet(opts, tmp_path, cloud_port=cloud_port, fog_ports={FOG: fog_port})
    cloud = MosquittoProcess(name="cloud", role="cloud", port=cloud_port, data_dir=tmp_path / "b" / "c", fleet=FLEET)
    fog = MosquittoProcess(name=FOG, role="fog", port=fog_port, data_dir=tmp_path / "b" / FOG, fleet=FLEET,
                           bridge=BridgeSpec(fleet=FLEET, fog=FOG, cloud_host="127.0.0.1", cloud_port=cloud_port))
    errors: list[str] = []
    board = None
    try:
        cloud.start()
        fog.start()
        wait_for_bridge(fog)
        board = Dashboard(host="127.0.0.1", port=cloud_port, fleet=FLEET)
        with _browser() as pw, ProcessGroup() as group:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(board.url)
            for name, tier, cfg in [(FOG, "fog", plan.fog_configs[FOG]), ("cloud", "cloud", plan.cloud_config),
                                    *[(d, "edge", plan.device_configs[d]) for d in DEVICES]]:
                group.add(TierProcess(name, tier, cfg, tmp_path / "logs" / f"{name}.log", time_limit_s=300))
            page.wait_for_function("Number(document.body.dataset.accuracyPoints) >= 2", timeout=280_000)
            shown = page.eval_on_selector_all("tr.node", "rows => rows.map(r => r.dataset.node)")
            points = page.eval_on_selector_all("#acc polyline.series",
                                               "ls => ls.map(l => l.getAttribute('points').split(' ').length)")
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            browser.close()
            group.wait(timeout_s=280)
        with urllib.request.urlopen(board.url + "api/state", timeout=10) as response:  # noqa: S310 - loopback
            state = json.loads(response.read())
        watched = subprocess.run([sys.executable, "-m", "hffm_cli.main", "fleet", "status", "--watch", "--count",
                                  "1", "--interval", "1", "--format", "json", "--port", str(cloud_port), "--fleet",
                                  FLEET], capture_output=True, text=True, timeout=120, check=False)
        job = subprocess.run([sys.executable, "-m", "hffm_cli.main", "job", "status", "--format", "json",
                              "--port", str(cloud_port), "--fleet", FLEET], capture_output=True, text=True,
                             timeout=120, check=False)
    finally:
        if board is not None:
            board.close()
        fog.stop()
        cloud.stop()
    assert set(shown) == {FOG, *DEVICES}, shown
    assert points and min(points) >= 2, points  # every task's line (and the mean) has >= 2 rounds
    assert errors == []
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    assert state["finished"] and [a["round"] for a in state["accuracy"]] == [1, 2, 3]
    assert watched.returncode == 0, watched.stderr
    nodes = json.loads(watched.stdout.splitlines()[-1])["nodes"]
    assert {n["node"] for n in nodes} == {FOG, *DEVICES}
    assert job.returncode == 0, job.stderr
    status = json.loads(job.stdout)
    assert (status["finished"], status["rounds_done"], status["total_rounds"], status["eta_s"]) == (True, 3, 3, 0.0)
    assert status["last_accuracy"]["round"] == 3 and status["devices"] == 2
