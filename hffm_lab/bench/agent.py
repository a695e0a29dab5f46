"""``hffm bench agent``: what the runtime costs a device, measured side by side in one run.

- step overhead: local training steps (demo backbone, batch 32) timed bare, then with the runtime's MQTT client
  connected to a real Mosquitto and publishing a full module update per step plus a telemetry advert each second
  (far more traffic than a real round sends while training) — alternating blocks, so load drift hits both alike;
- RSS: a real ``hffm edge run`` agent idling after start-up (model built, data loaded, connected, advertised),
  against a bare process that imports torch + transformers + peft and builds the same model; and the agent's peak
  during a one-device, one-round federated job;
- ONNX: export of a trained task model and parity against torch on its held-out split.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

from hffm_core.config import ModelConfig
from hffm_core.errors import HffmError
from hffm_lab.bench import fail_if, save_report

TASK = "digit"
_BASELINE = """
import sys, psutil, torch, transformers, peft
from edge_runtime.config import ModelConfig
from hffm_model.factory import build_m3t
m = build_m3t(ModelConfig(backbone=sys.argv[1]), sys.argv[2].split(","), sys.argv[3].split(","))
print(psutil.Process().memory_info().rss / 2**20)
"""


def run_agent_bench(*, backbone: str, report: Path | None, work: Path, steps: int = 24,
                    console: Console | None = None) -> dict[str, Any]:
    """Run the four parts, print the table, write the JSON report; return it.

    Raises:
        HffmError: a part could not run, or a figure was not measured (:func:`agent_problems`); the report is
            written first, with the problems under ``failures``.
    """
    console = console or Console()
    work.mkdir(parents=True, exist_ok=True)
    console.print("[bold]1/4 training step time, bare vs with the runtime publishing")
    bare_ms, with_ms, traffic = step_overhead(backbone, steps=steps, work=work)
    console.print("[bold]2/4 RSS of torch + transformers + peft + the model alone")
    baseline = baseline_rss(backbone)
    console.print("[bold]3/4 idle and peak RSS of a real agent")
    idle, peak = agent_rss(backbone, work)
    console.print("[bold]4/4 ONNX export parity")
    onnx = onnx_parity(backbone, work)
    out = {"benchmark": "agent", "backbone": backbone, "step_ms_bare": bare_ms, "step_ms_with_runtime": with_ms,
           "step_overhead_ratio": with_ms / bare_ms, "idle_rss_mb": idle, "baseline_rss_mb": baseline,
           "peak_rss_mb": peak, "idle_over_baseline_mb": idle - baseline, "onnx": onnx,
           "busy_publishes": traffic["publishes"], "publisher_error": traffic["error"]}
    out["failures"] = agent_problems(out)
    table = Table(title=f"Agent benchmark ({backbone})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("goal")
    table.add_row("train step, bare", f"{bare_ms:.1f} ms", "")
    table.add_row("train step, runtime publishing", f"{with_ms:.1f} ms", "")
    table.add_row("step overhead ratio", f"{out['step_overhead_ratio']:.3f}", "<= 1.02")
    table.add_row("updates published during those steps", f"{traffic['publishes']:,}", "> 0")
    table.add_row("baseline RSS (torch+peft+model)", f"{baseline:.0f} MB", "")
    table.add_row("agent idle RSS", f"{idle:.0f} MB", f"<= {baseline + 50:.0f} MB")
    table.add_row("agent peak RSS (training round)", f"{peak:.0f} MB", "")
    table.add_row("ONNX max abs diff", f"{onnx['max_abs_diff']:.2e}", "")
    table.add_row("ONNX argmax agreement", f"{onnx['argmax_agreement']:.4f}", "")
    console.print(table)
    save_report(out, report, console)
    fail_if(out["failures"], "agent benchmark", console)
    return out


def agent_problems(out: dict[str, Any]) -> list[str]:
    """What was not measured: busy steps without a publish (or whose publisher died part-way) time a bare step, so
    their ratio reads ~1.0; a peak RSS of 0 means the sampler never found the job's agent process."""
    problems = []
    if out.get("publisher_error"):
        problems.append(f"the publishing thread died after {out.get('busy_publishes', 0)} publish(es): "
                        f"{out['publisher_error']}; the 'with runtime' steps ran (partly) bare")
    elif not out.get("busy_publishes"):
        problems.append("nothing was published during the 'with runtime' steps: they timed bare steps")
    if not out.get("peak_rss_mb", 0.0) > 0.0:
        problems.append("the peak-RSS sampler never found the job's agent process (peak RSS 0)")
    return problems


class _Publisher:
    """The runtime's traffic during the busy steps: ``send`` (one unit of it) every ~50 ms while ``busy`` is set.
    Counts the sends; an exception ends the thread and is kept in ``error`` (reported by :func:`agent_problems`)."""

    def __init__(self, send: Callable[[], None]) -> None:
        self.send = send
        self.busy = threading.Event()
        self.stop = threading.Event()
        self.sent = 0
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                if not self.busy.wait(0.05):
                    continue
                self.send()
                self.sent += 1
                time.sleep(0.05)
        except Exception as exc:  # noqa: BLE001 - any failure voids the figure; agent_problems names it
            self.error = f"{type(exc).__name__}: {exc}"

    def report(self) -> dict[str, Any]:
        return {"publishes": self.sent, "error": self.error}


def _model_and_data(backbone: str) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from hffm_model.factory import build_m3t
    from hffm_model.spec import TASKS, load_m3t_bench

    td = load_m3t_bench(tasks=[TASK])[TASK]
    model = build_m3t(ModelConfig(backbone=backbone), [TASKS[TASK].modality], [TASK])
    return model, td.x_train, td.y_train, td.x_test, td.y_test


def step_overhead(backbone: str, *, steps: int, work: Path) -> tuple[float, float, dict[str, Any]]:
    """Median ms per training step (one batch of 32), bare and with the runtime publishing; and what the publisher
    did (``{"publishes": n, "error": str | None}``)."""
    import torch

    from broker_config.process import MosquittoProcess
    from edge_runtime.telemetry import sample
    from hffm_core.compression import make_codec
    from hffm_core.compression.module_codec import pack
    from hffm_core.protocol import ModuleKey, ModuleUpdate, encode, topics
    from hffm_core.transport import MqttTransport
    from hffm_model.spec import TASKS
    from hffm_model.training import train_task

    torch.set_num_threads(1)
    model, x, y, _xt, _yt = _model_and_data(backbone)
    modality = TASKS[TASK].modality
    key = ModuleKey.adapter(modality, TASK)
    packed, _ = pack(model.get_module_state(key), make_codec("fp32"))
    update = encode(ModuleUpdate(fleet="bench", sender="dev", fog="fog", key=key, global_round=1, cluster_round=1,
                                 base=(1, 0), num_samples=32, train_loss=0.1, idempotency_key="k", **packed.fields()))

    def one_step(i: int) -> float:
        sl = slice((i * 32) % (len(y) - 32), (i * 32) % (len(y) - 32) + 32)
        t0 = time.perf_counter()
        train_task(model, modality=modality, task=TASK, x=x[sl], y=y[sl], epochs=1, batch_size=32, seed=i)
        return (time.perf_counter() - t0) * 1000

    with MosquittoProcess(name="bench", role="cloud", data_dir=work / "broker") as broker:
        broker.start()
        client = MqttTransport(client_id="bench-agent", host="127.0.0.1", port=broker.port,
                               on_message=lambda *_: None)
        client.connect()
        last_advert = [0.0]

        def traffic() -> None:  # the runtime's traffic: module updates and telemetry adverts
            client.publish(topics.up("bench", "fog", key, "dev"), update, category="device_to_fog")
            if time.monotonic() - last_advert[0] > 1.0:
                sample()
                last_advert[0] = time.monotonic()

        publisher = _Publisher(traffic)
        publisher.thread.start()
        one_step(0)  # warm-up
        bare, busy = [], []
        for block in range(4):  # alternate so that load drift on a shared machine hits both alike
            for mode in (("bare", "busy") if block % 2 == 0 else ("busy", "bare")):
                if mode == "busy":
                    publisher.busy.set()
                else:
                    publisher.busy.clear()
                times = [one_step(block * steps + i) for i in range(steps // 4)]
                (busy if mode == "busy" else bare).extend(times)
        publisher.stop.set()
        publisher.thread.join(5)
        client.close()
    return statistics.median(bare), statistics.median(busy), publisher.report()


def baseline_rss(backbone: str) -> float:
    from hffm_model.spec import TASKS

    out = subprocess.run([sys.executable, "-c", _BASELINE, backbone, TASKS[TASK].modality, TASK],
                         capture_output=True, text=True, timeout=300, check=False)
    if out.returncode != 0:
        raise HffmError(f"baseline RSS process failed: {out.stderr.strip()[-400:]}")
    return float(out.stdout.strip().splitlines()[-1])


def agent_rss(backbone: str, work: Path) -> tuple[float, float]:
    """Idle RSS of a lone agent after start-up; peak RSS of the agent in a 1-fog, 1-device, 1-round job."""
    from broker_config.process import MosquittoProcess
    from hffm_lab.demo import DemoOptions, run_demo
    from hffm_lab.demo.plan import FLEET, write_fleet
    from hffm_lab.demo.processes import TierProcess

    opts = DemoOptions(fogs=1, devices_per_fog=1, rounds=1, agg_every=1, backbone=backbone, baseline=False,
                       show_tables=False, modalities_per_device=1, run_dir=work / "job")
    idle_dir = work / "idle"
    with MosquittoProcess(name="idle", role="cloud", data_dir=idle_dir / "broker", fleet=FLEET) as broker:
        broker.start()
        plan = write_fleet(replace(opts, run_dir=idle_dir), idle_dir, cloud_port=broker.port,
                           fog_ports={"fog-1": broker.port})
        (device, cfg), = plan.device_configs.items()
        agent = TierProcess(device, "edge", cfg, idle_dir / "agent.log", time_limit_s=300)
        agent.start()
        try:
            status = idle_dir / "state" / f"{device}-status.json"
            end = time.monotonic() + 240
            while not status.exists() and time.monotonic() < end and agent.returncode is None:
                time.sleep(0.2)
            if not status.exists():
                raise HffmError(f"the agent did not come up; log {agent.log_path}:\n{agent.log_tail()}")
            time.sleep(3)  # settle: no round will come, the agent idles
            idle = psutil.Process(agent.proc.pid).memory_info().rss / 2**20  # type: ignore[union-attr]
        finally:
            agent.stop()
    peak = [0.0]
    done = threading.Event()

    def sampler() -> None:
        while not done.is_set():
            for proc in psutil.process_iter(["cmdline"]):
                cmd = " ".join(proc.info["cmdline"] or [])
                if " edge run " in f" {cmd} " and str(work / "job") in cmd:
                    try:
                        peak[0] = max(peak[0], proc.memory_info().rss / 2**20)
                    except psutil.Error:
                        pass
            time.sleep(0.2)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        run_demo(opts)
    finally:
        done.set()
        thread.join(5)
    return idle, peak[0]


def onnx_parity(backbone: str, work: Path) -> dict[str, float]:
    from edge_runtime.export import export_task, parity
    from hffm_model.spec import TASKS
    from hffm_model.training import train_task

    model, x, y, xt, _yt = _model_and_data(backbone)
    modality = TASKS[TASK].modality
    train_task(model, modality=modality, task=TASK, x=x, y=y, epochs=1, batch_size=32)
    path = export_task(model, modality=modality, task=TASK, path=work / f"{TASK}.onnx")
    return parity(model, modality=modality, task=TASK, path=path, x=xt)
