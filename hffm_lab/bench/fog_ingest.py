"""``hffm bench fog-ingest``: how fast the real fog gateway (an ``hffm fog run`` process) takes K device updates, with
``/metrics`` off and on, side by side in one run.

Per run: one Mosquitto broker; the fog gateway as its own process; a scripted cloud (a global version, the round plan)
and K scripted devices (retained adverts, then one fp32 update each, ``--floats`` values, published as fast as the
broker takes them) — numpy only, no model. The clock runs from the first update published to the fog's aggregate
arriving (the round closes when all K are folded in). With metrics on, a scraper reads the fog's ``/metrics`` every
``scrape_every_s`` the whole time (a busier Prometheus than any real one). Runs alternate off/on ``repeats`` times.

A run FAILS (non-zero exit, after the report is saved) when the fog process died, the aggregate counted fewer than
K devices, or, with metrics on, no scrape succeeded. The figure a user cares about: ingest with metrics on / off
(goal >= 0.98).

Beside the fog's rate, each run measures the ceiling on the same broker: the same K payloads published the same way
to a plain subscriber process (``python -m hffm_lab.bench.fog_ingest ceiling PORT K``, the transport's default
auto-ack), from the first publish to its last delivery. It also samples the fog's RSS during the ingest (its peak),
the bytes the fog process wrote to disk meanwhile, and the size of its round journal once the round closed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import tomli_w
from rich.console import Console
from rich.table import Table

from broker_config.process import MosquittoProcess, free_port
from hffm_core.protocol import (
    GLOBAL_STAGE,
    FogAggregate,
    ModuleKey,
    ModuleUpdate,
    ModuleVersion,
    NodeState,
    RoundControl,
    blobs_from_state,
    decode,
    encode,
    tensors_sha256,
    topics,
)
from hffm_core.transport import MqttTransport
from hffm_lab.bench import fail_if, save_report

FLEET, FOG, JOB = "ingest", "fog-1", "bench-ingest"
KEY = ModuleKey.head("digit")


class _Cloud:
    """The scripted cloud and devices: one MQTT client on the fog's broker."""

    def __init__(self, port: int) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.event = threading.Event()
        self.client = MqttTransport(client_id="bench-ingest-script", host="127.0.0.1", port=port,
                                    on_message=self._on, timeout_s=30.0)
        self.client.connect()
        self.client.subscribe([topics.fogup_filter(FLEET), topics.ctl(FLEET, FOG)])

    def _on(self, topic: str, payload: bytes, _retain: bool) -> None:
        self.got.append((topic, payload))
        self.event.set()

    def wait_for(self, predicate: Any, timeout_s: float, proc: subprocess.Popen[bytes]) -> Any:
        end = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < end and proc.poll() is None:
            for topic, payload in self.got[seen:]:
                seen += 1
                hit = predicate(topic, payload)
                if hit is not None:
                    return hit
            self.event.wait(0.05)
            self.event.clear()
        return None


def _fog_config(work: Path, port: int, devices: list[str], metrics_listen: str) -> Path:
    cfg: dict[str, Any] = {
        "fog": {"id": FOG, "fleet": FLEET, "devices": devices, "round_deadline_s": 600.0, "startup_timeout_s": 120.0},
        "broker": {"port": port},
        "state_dir": str(work / "state"), "metrics_file": str(work / "fog-metrics.json"),
    }
    if metrics_listen:
        cfg["metrics"] = {"listen": metrics_listen}
    path = work / "fog.toml"
    path.write_bytes(tomli_w.dumps(cfg).encode())
    return path


def _scrape(url: str, stop: threading.Event, every_s: float, count: list[int]) -> None:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:  # noqa: S310 - the fog's own loopback endpoint
                response.read()
            count[0] += 1
        except OSError:
            pass
        if stop.wait(every_s):
            return


def _sample_rss(pid: int, stop: threading.Event, peak: list[int]) -> None:
    """Keep the largest RSS of process ``pid`` in ``peak[0]`` until ``stop``."""
    try:
        proc = psutil.Process(pid)
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            stop.wait(0.02)
    except psutil.Error:
        return


def _journal_bytes(state: Path) -> int:
    """The fog's round journal on disk: the SQLite file and its WAL."""
    return sum(p.stat().st_size for p in state.glob(f"{FOG}-round.sqlite*") if p.is_file())


def _ceiling(port: int, payloads: list[tuple[str, bytes]], client: MqttTransport) -> float | None:
    """Deliveries per second of ``payloads`` to a plain subscriber process on the same broker (None: it failed)."""
    child = subprocess.Popen([sys.executable, "-m", "hffm_lab.bench.fog_ingest", "ceiling", str(port),
                              str(len(payloads))], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            return None
        started = time.monotonic()
        for i, (_topic, payload) in enumerate(payloads):
            client.publish(f"bench/ceiling/{i}", payload, category="other")
        out, _ = child.communicate(timeout=300)
        last = float(out.strip().splitlines()[-1])  # its monotonic clock: the same as ours on Linux
        return len(payloads) / (last - started)
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        child.kill()
        return None


def _ceiling_subscriber(port: int, count: int) -> None:
    """The child of :func:`_ceiling`: count ``count`` deliveries, print when the last one arrived."""
    got, done, last = [0], threading.Event(), [0.0]

    def on(_topic: str, _payload: bytes, _retain: bool) -> None:
        got[0] += 1
        if got[0] >= count:
            last[0] = time.monotonic()
            done.set()

    client = MqttTransport(client_id=f"bench-ceiling-{os.getpid()}", host="127.0.0.1", port=port, on_message=on,
                           timeout_s=30.0)
    client.connect()
    client.subscribe(["bench/ceiling/#"])
    print("ready", flush=True)
    done.wait(300)
    client.close()
    print(last[0], flush=True)


def run_once(work: Path, *, devices: int, floats: int, metrics: bool, scrape_every_s: float) -> dict[str, Any]:
    """One ingest run; returns its row (with ``error`` set when it failed)."""
    work.mkdir(parents=True, exist_ok=True)
    ids = [f"dev-{i}" for i in range(devices)]
    broker = MosquittoProcess(name="fog-broker", role="cloud", data_dir=work / "broker", fleet=FLEET)
    row: dict[str, Any] = {"metrics": "on" if metrics else "off", "devices": devices,
                           "update_bytes": 0, "error": None}
    metrics_port = free_port() if metrics else 0
    broker.start()
    proc = script = None
    try:
        cfg = _fog_config(work, broker.port, ids, f"127.0.0.1:{metrics_port}" if metrics else "")
        script = _Cloud(broker.port)
        with open(work / "fog.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "hffm_cli.main", "fog", "run", "--config", str(cfg),
                                     "--time-limit", "900", "--log-level", "warning"], stdout=log, stderr=log)
        zeros = blobs_from_state({"w": np.zeros(floats, np.float32)})
        version = ModuleVersion(fleet=FLEET, sender="cloud", key=KEY, global_round=0, stage=GLOBAL_STAGE,
                                tensors=zeros, sha256=tensors_sha256(zeros), job=JOB)
        script.client.publish(topics.global_(FLEET, KEY), encode(version), category="other", retain=True)
        for dev in ids:
            advert = NodeState(fleet=FLEET, node=dev, role="device", fog=FOG, online=True, modules=(KEY,), job=JOB)
            script.client.publish(topics.state(FLEET, dev), encode(advert), category="other", retain=True)
        plan = RoundControl(fleet=FLEET, sender="cloud", global_round=1, cluster_round=0, total_rounds=1, agg_every=1,
                            local_epochs=1, deadline_s=600.0, job=JOB)
        script.client.publish(topics.ctl(FLEET, "cloud"), encode(plan), category="other", retain=True)
        opened = script.wait_for(lambda t, p: True if t == topics.ctl(FLEET, FOG) and
                                 decode(p, RoundControl).cluster_round == 1 else None, 180.0, proc)
        if opened is None:
            row["error"] = f"the fog never opened round (1,1) (exit {proc.poll()}; log {work / 'fog.log'})"
            return row
        rng = np.random.default_rng(0)
        payloads = []
        for dev in ids:
            blobs = blobs_from_state({"w": rng.standard_normal(floats).astype(np.float32)})
            update = ModuleUpdate(fleet=FLEET, sender=dev, fog=FOG, key=KEY, global_round=1, cluster_round=1,
                                  base=(0, GLOBAL_STAGE), num_samples=10, train_loss=0.0, tensors=blobs,
                                  sha256=tensors_sha256(blobs),
                                  idempotency_key=ModuleUpdate.default_key(FLEET, dev, 1, 1, KEY))
            payloads.append((topics.up(FLEET, FOG, KEY, dev), encode(update)))
        row["update_bytes"] = len(payloads[0][1])
        stop, scrapes = threading.Event(), [0]
        scraper = threading.Thread(target=_scrape, args=(f"http://127.0.0.1:{metrics_port}/metrics", stop,
                                                         scrape_every_s, scrapes), daemon=True)
        if metrics:
            scraper.start()
        peak, writes = [0], psutil.Process(proc.pid).io_counters().write_bytes
        sampler = threading.Thread(target=_sample_rss, args=(proc.pid, stop, peak), daemon=True)
        sampler.start()
        started = time.monotonic()
        for topic, payload in payloads:
            script.client.publish(topic, payload, category="other")
        published = time.monotonic()
        agg = script.wait_for(lambda t, p: decode(p, FogAggregate) if "/fogup/" in t else None, 600.0, proc)
        done = time.monotonic()
        stop.set()
        rss = psutil.Process(proc.pid).memory_info().rss if proc.poll() is None else 0
        written = psutil.Process(proc.pid).io_counters().write_bytes - writes if proc.poll() is None else 0
        journal = _journal_bytes(work / "state")
        if agg is None:
            row["error"] = f"no aggregate from the fog (exit {proc.poll()}; log {work / 'fog.log'})"
            return row
        seconds = done - started
        row.update({"seconds": round(seconds, 3), "publish_s": round(published - started, 3),
                    "deltas_per_s": round(devices / seconds, 1),
                    "mb_per_s": round(devices * row["update_bytes"] / seconds / 1e6, 1),
                    "aggregated": agg.num_devices, "fog_rss_mb": round(rss / 1e6, 1),
                    "fog_peak_rss_mb": round(peak[0] / 1e6, 1), "fog_written_mb": round(written / 1e6, 1),
                    "journal_mb": round(journal / 1e6, 1), "scrapes": scrapes[0]})
        if agg.num_devices != devices:
            row["error"] = f"the aggregate counted {agg.num_devices} of {devices} devices"
        elif metrics and scrapes[0] == 0:
            row["error"] = "metrics on, but no scrape of /metrics succeeded"
        # The cloud's side of the end: the round's global version, then the final announcement; the fog exits.
        merged = ModuleVersion(fleet=FLEET, sender="cloud", key=KEY, global_round=1, stage=GLOBAL_STAGE,
                               tensors=zeros, sha256=tensors_sha256(zeros), job=JOB)
        script.client.publish(topics.global_(FLEET, KEY), encode(merged), category="other", retain=True)
        final = RoundControl(fleet=FLEET, sender="cloud", global_round=2, cluster_round=0, total_rounds=1,
                             agg_every=1, local_epochs=1, deadline_s=600.0, final=True, job=JOB)
        script.client.publish(topics.ctl(FLEET, "cloud"), encode(final), category="other", retain=True)
        try:
            exited = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            exited = None
        if exited == 0 and not metrics:  # the broker's ceiling on the same payloads, with the fog gone
            ceiling = _ceiling(broker.port, payloads, script.client)
            row["ceiling_per_s"] = None if ceiling is None else round(ceiling, 1)
            row["of_ceiling"] = None if not ceiling else round(row["deltas_per_s"] / ceiling, 3)
        return row
    finally:
        if proc is not None:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            if proc.returncode not in (0, None) and row["error"] is None:
                row["error"] = f"the fog exited with code {proc.returncode} (log {work / 'fog.log'})"
        if script is not None:
            script.client.close()
        broker.stop()


def run_fog_ingest_bench(*, devices: int = 100, floats: int = 300_000, repeats: int = 2, scrape_every_s: float = 0.5,
                         report: Path | None = None, work: Path = Path("runs/bench-fog-ingest"),
                         console: Console | None = None) -> dict[str, Any]:
    """Alternate metrics off/on ``repeats`` times; print the table, save the report.

    Raises:
        HffmError: a run failed (the report is saved first).
    """
    console = console or Console()
    if work.exists():  # a fog restarted on an old run's journal would resume that run, not measure a new one
        shutil.rmtree(work)
    rows = []
    for i in range(repeats):
        for metrics in (False, True):
            row = run_once(work / f"run{i}-{'on' if metrics else 'off'}", devices=devices, floats=floats,
                           metrics=metrics, scrape_every_s=scrape_every_s)
            rows.append(row)
            console.print(f"run {i + 1}/{repeats}, metrics {row['metrics']}: "
                          + (f"FAILED: {row['error']}" if row["error"] else
                             f"{row['deltas_per_s']} deltas/s (ceiling {row.get('ceiling_per_s', '-')}), "
                             f"{row['mb_per_s']} MB/s, fog RSS {row['fog_rss_mb']} MB (peak "
                             f"{row['fog_peak_rss_mb']}), journal {row['journal_mb']} MB"))
    ok = [r for r in rows if r["error"] is None]
    rate = {m: [r["deltas_per_s"] for r in ok if r["metrics"] == m] for m in ("off", "on")}
    ratio = (sum(rate["on"]) / len(rate["on"])) / (sum(rate["off"]) / len(rate["off"])) if all(rate.values()) else None
    table = Table(title=f"Fog ingest: {devices} devices x one {rows[0]['update_bytes']:,} B update, real hffm fog run")
    cols = {"s": "seconds", "deltas/s": "deltas_per_s", "MB/s": "mb_per_s", "ceiling/s": "ceiling_per_s",
            "of ceiling": "of_ceiling", "fog RSS MB": "fog_rss_mb", "peak RSS MB": "fog_peak_rss_mb",
            "written MB": "fog_written_mb", "journal MB": "journal_mb", "scrapes": "scrapes"}
    for col in ("run", "metrics", *cols, "status"):
        table.add_column(col, justify="right")
    for i, r in enumerate(rows):
        table.add_row(str(i // 2 + 1), r["metrics"], *(str(r.get(k, "-")) for k in cols.values()),
                      "FAILED" if r["error"] else "ok")
    console.print(table)
    console.print(f"ingest with metrics on / off: {ratio:.3f} (goal >= 0.98)" if ratio is not None else
                  "ingest ratio: not measured (a run failed)")
    out = {"devices": devices, "floats": floats, "scrape_every_s": scrape_every_s, "runs": rows,
           "on_over_off": None if ratio is None else round(ratio, 3), "goal": 0.98,
           "met": ratio is not None and ratio >= 0.98, "command": " ".join(sys.argv)}
    save_report(out, report, console)
    fail_if([f"run {i + 1} (metrics {r['metrics']}): {r['error']}" for i, r in enumerate(rows) if r["error"]],
            "bench fog-ingest", console)
    return out



if __name__ == "__main__":  # the ceiling's subscriber process: python -m hffm_lab.bench.fog_ingest ceiling PORT K
    if sys.argv[1:2] == ["ceiling"]:
        _ceiling_subscriber(int(sys.argv[2]), int(sys.argv[3]))
