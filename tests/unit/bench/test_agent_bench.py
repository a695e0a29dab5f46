"""``hffm bench agent`` fails when a figure was not measured: no publish during the busy steps (a dead publishing
thread), or a peak RSS the sampler never found."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from rich.console import Console

from hffm_core.errors import HffmError, TransportError
from hffm_lab.bench import agent as bench

GOOD = {"busy_publishes": 40, "publisher_error": None, "peak_rss_mb": 812.0}


def test_a_measured_run_has_no_problems() -> None:
    assert bench.agent_problems(GOOD) == []


@pytest.mark.parametrize(("change", "words"), [
    ({"busy_publishes": 0}, "nothing was published"),
    ({"busy_publishes": 3, "publisher_error": "TransportError: broker gone"}, "died after 3 publish(es)"),
    ({"peak_rss_mb": 0.0}, "never found the job's agent process"),
])
def test_each_unmeasured_figure_is_a_problem(change: dict, words: str) -> None:
    (problem,) = bench.agent_problems({**GOOD, **change})
    assert words in problem


def test_a_publisher_whose_send_raises_reports_the_error_and_no_publish() -> None:
    def send() -> None:
        raise TransportError("broker did not acknowledge publish to 'x' within 15.0 s")

    publisher = bench._Publisher(send)
    publisher.busy.set()
    publisher.thread.start()
    publisher.thread.join(30)
    assert not publisher.thread.is_alive()
    assert publisher.report() == {"publishes": 0,
                                  "error": "TransportError: broker did not acknowledge publish to 'x' within 15.0 s"}
    assert "died after 0 publish(es)" in bench.agent_problems({**GOOD, "busy_publishes": 0,
                                                                "publisher_error": publisher.error})[0]


def test_a_publisher_counts_its_sends_only_while_busy() -> None:
    calls, third = [], threading.Event()

    def send() -> None:
        calls.append(1)
        if len(calls) == 3:
            third.set()

    publisher = bench._Publisher(send)
    publisher.thread.start()
    publisher.busy.set()
    assert third.wait(30)
    publisher.stop.set()
    publisher.thread.join(30)
    assert publisher.report() == {"publishes": len(calls), "error": None} and len(calls) >= 3


def test_the_bench_fails_after_saving_its_report(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(bench, "step_overhead", lambda backbone, steps, work: (10.0, 10.1, {"publishes": 0,
                                                                                           "error": None}))
    monkeypatch.setattr(bench, "baseline_rss", lambda backbone: 700.0)
    monkeypatch.setattr(bench, "agent_rss", lambda backbone, work: (720.0, 0.0))
    monkeypatch.setattr(bench, "onnx_parity", lambda backbone, work: {"max_abs_diff": 1e-6, "argmax_agreement": 1.0})
    report = tmp_path / "agent.json"
    with pytest.raises(HffmError, match="agent benchmark FAILED: nothing was published.*peak-RSS sampler") as err:
        bench.run_agent_bench(backbone="tiny", report=report, work=tmp_path / "work",
                              console=Console(file=open(os.devnull, "w")))
    assert err.value.exit_code != 0
    saved = json.loads(report.read_text())
    assert saved["busy_publishes"] == 0 and len(saved["failures"]) == 2
