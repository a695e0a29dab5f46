"""Every tier's Prometheus /metrics during a real tiny demo job (issue 19): `hffm demo` writes endpoints.json as the
tiers come up; a scraper reads every endpoint while the job runs. What the endpoints said mid-job agrees with what the
tiers wrote at the end: the cloud's accuracy gauges equal the round's reported accuracy, the fog's aggregated-updates
counter equals the updates its closed rounds logged, and no counter ever went down. The Grafana dashboard in
deploy/grafana/ asks only for series that were served."""

from __future__ import annotations

import json
import re
import threading
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hffm_lab.demo import DemoOptions, run_demo

pytestmark = pytest.mark.integration


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, plus a ("# TYPE <name>", ()) entry for every declared series (a counter with no samples yet,
    e.g. no rejections, is still served)."""
    out = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for family in text_string_to_metric_families(text) for s in family.samples}
    out.update({(f"# TYPE {line.split()[2]}", ()): 0.0 for line in text.splitlines() if line.startswith("# TYPE ")})
    return out


def _scrape_all(run_dir: Path, stop: threading.Event, seen: dict[str, list[dict]]) -> None:  # type: ignore[type-arg]
    endpoints: dict[str, str] = {}
    while not stop.is_set():
        if not endpoints and (run_dir / "endpoints.json").exists():
            endpoints = json.loads((run_dir / "endpoints.json").read_text())["metrics"]
        for node, url in endpoints.items():
            try:
                with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback, the tiers' own
                    seen.setdefault(node, []).append(_samples(response.read().decode()))
            except OSError:
                continue
        stop.wait(0.2)


def test_every_tier_serves_metrics_that_agree_with_the_job(tmp_path: Path) -> None:
    seen: dict[str, list[dict]] = {}  # type: ignore[type-arg]
    stop = threading.Event()
    scraper = threading.Thread(target=_scrape_all, args=(tmp_path, stop, seen), daemon=True)
    scraper.start()
    try:
        report = run_demo(DemoOptions(fogs=1, devices_per_fog=2, rounds=2, agg_every=2, local_epochs=1,
                                      backbone="tiny", run_dir=tmp_path, time_limit_s=300, baseline=False,
                                      show_tables=False))
    finally:
        stop.set()
        scraper.join(timeout=10)
    endpoints = json.loads((tmp_path / "endpoints.json").read_text())
    assert set(endpoints["metrics"]) == {"cloud", "fog-1", "fog-1-dev-1", "fog-1-dev-2"}
    assert endpoints["dashboard"].startswith("http://127.0.0.1:")
    assert set(seen) == set(endpoints["metrics"]), {n: len(v) for n, v in seen.items()}

    # The cloud: whenever it had merged round r, its accuracy gauges were round r's reported accuracy.
    history = {r["round"]: r["accuracy"] for r in json.loads((tmp_path / "metrics" / "cloud.json").read_text())[
        "rounds"]}
    checked = 0
    for scrape in seen["cloud"]:
        merged = int(scrape.get(("hffm_rounds_merged_total", ()), 0))
        if merged:
            for task, acc in history[merged].items():
                assert scrape[("hffm_accuracy", (("task", task),))] == pytest.approx(acc)
            checked += 1
    assert checked, "no scrape of the cloud saw a merged round"

    # The fog: its aggregated-updates counter after n closed rounds = the updates of its first n logged rounds.
    rounds = json.loads((tmp_path / "metrics" / "fog-1.json").read_text())["rounds"]
    closed_seen = set()
    for scrape in seen["fog-1"]:
        closed = int(scrape[("hffm_rounds_closed_total", ())])
        assert scrape[("hffm_updates_aggregated_total", ())] == sum(r["updates"] for r in rounds[:closed])
        assert scrape[("hffm_cluster_round_seconds_count", ())] == closed
        closed_seen.add(closed)
    assert closed_seen - {0}, "no scrape of the fog saw a closed round"

    # No counter of any tier ever went down between scrapes.
    for node, scrapes in seen.items():
        for before, after in zip(scrapes, scrapes[1:], strict=False):
            for key, value in before.items():
                if key[0].endswith("_total") and not key[0].startswith("#") and key in after:
                    assert after[key] >= value, (node, key)
    device = seen["fog-1-dev-1"][-1]
    assert device[("hffm_node_info", (("fleet", "demo"), ("node", "fog-1-dev-1"), ("role", "device")))] == 1
    assert any(s.get(("hffm_updates_total", (("outcome", "acked"),)), 0) > 0 for s in seen["fog-1-dev-1"])
    assert not report.get("metrics_missing")

    # The Grafana dashboard in deploy/ asks only for series the tiers really serve.
    served = {name.removeprefix("# TYPE ") for scrapes in seen.values() for scrape in scrapes for name, _ in scrape}
    board = (Path(__file__).parents[2] / "deploy" / "grafana" / "hffm-fleet.json").read_text()
    asked = set(re.findall(r"\b((?:hffm|process)_[a-z_]+)", board))
    assert asked and asked <= served, sorted(asked - served)
