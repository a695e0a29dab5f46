"""``hffm bench scale``: how hffm's round time, fan-in and memory grow with the number of devices K, side by side
with a naive paho round loop and a Flower simulation of the same K and payload, in one run.

Per K (default 10, 50, 200, 500, 1000; 1000 and above over ``fogs_from_1000`` fogs):
- **hffm**: ``hffm sim --mode noop`` (``hffm_lab/sim``): K virtual devices with the real module layouts against real
  ``hffm fog run`` / ``hffm cloud run`` processes over real bridged Mosquitto. Cluster round = the fog's own
  announcement-to-close time, split into the devices' part (until the last one has handed its updates to paho)
  and the fog's (from then to the close: how far the gateway lags behind its devices); global round = between the
  cloud's announcements; fan-in = deltas a fog applied in a cluster round / that round's time; RSS and CPU of each
  process by psutil; the fogs' round journal on disk (peak).
- **paho**: on the same fog broker once the job is over: the pub->sub ceiling for the mean update size, and the
  naive round loop (``scale_paho.py``): K clients each send the same messages a device sends per cluster round.
- **Flower**: ``scale_flower.py`` run by an interpreter with ``flwr[simulation]`` (this one, else
  ``--flower-python`` / ``$HFFM_FLOWER_PYTHON``): K no-op clients returning the same arrays. Where there is none,
  the column says ``not installed``, never a figure.

Medians are over the measured rounds (all but the first, which includes start-up); with ``--repeat N`` each K runs N
times in a row and its row combines them (:func:`combine`: medians of the repeats, losses summed, memory the
largest), the repeats' own figures beside it, since one run of a small K moves by 2x on a shared machine. A K
whose hffm run lost a delta, applied fewer than planned, or lost a process is a FAILED row, and the command exits
non-zero after saving the report. The plot (round time and RSS vs K) goes next to the report as ``scale.png``
when matplotlib is installed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from hffm_lab.bench import fail_if, save_report
from hffm_lab.bench.scale_paho import ceiling, naive_rounds
from hffm_lab.sim import SimOptions, run_sim
from hffm_lab.sim.runner import SimRun

DEFAULT_KS = (10, 50, 200, 500, 1000)
FLOWER_SCRIPT = Path(__file__).with_name("scale_flower.py")


def flower_python(explicit: str | None) -> str | None:
    """The interpreter that runs the Flower column, or None when no flwr is installed anywhere we look."""
    if explicit:
        return explicit
    if importlib.util.find_spec("flwr") is not None and importlib.util.find_spec("ray") is not None:
        return sys.executable
    env = os.environ.get("HFFM_FLOWER_PYTHON", "")
    return env or None


def _after(run: SimRun, k: int, naive_rounds_n: int) -> dict[str, Any]:
    """On the fog-1 broker of the finished job: the pub->sub ceiling and the naive paho round loop."""
    assert run.fleet is not None
    results = []
    for i in range(len(run.fleet.worker_specs)):
        try:
            results.append(json.loads(run.fleet.metrics_file(f"sim-worker-{i}").read_text())["totals"])
        except (OSError, ValueError, KeyError):
            pass
    queued = sum(r.get("queued", 0) for r in results)
    rounds_sent = sum(r.get("rounds_sent", 0) for r in results)
    size = sum(r.get("bytes_queued", 0) for r in results) // max(1, queued)
    msgs = max(1, round(queued / max(1, rounds_sent)))
    port = run.brokers["fog-1"].port
    out: dict[str, Any] = {"update_bytes": size, "msgs_per_device": msgs}
    try:
        out["ceiling"] = ceiling(port, size=max(size, 1), messages=max(200, min(2000, 4 * k)))
        # The naive federated round: the model down (as many payloads as a device holds modules, each of the
        # update size, fanned out by the broker), then the updates up; and the same round with no model (go only).
        out["naive"] = naive_rounds(port, clients=k, msgs=msgs, size=max(size, 1), rounds=naive_rounds_n,
                                    work=run.run_dir / "naive", down=msgs)
        out["naive_upload"] = naive_rounds(port, clients=k, msgs=msgs, size=max(size, 1), rounds=naive_rounds_n,
                                           work=run.run_dir / "naive-upload")
    except Exception as exc:  # noqa: BLE001 - a failed baseline is reported in its column, not a crash
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def _flower(python: str | None, k: int, rounds: int, floats: list[int], work: Path) -> dict[str, Any]:
    if python is None:
        return {"round_s": None, "status": "not installed"}
    work.mkdir(parents=True, exist_ok=True)
    log = work / f"flower-K{k}.log"
    env = dict(os.environ, RAY_DEDUP_LOGS="0", PYTHONUNBUFFERED="1")
    try:
        with open(log, "wb") as err:
            done = subprocess.run([python, str(FLOWER_SCRIPT), str(k), str(rounds), ",".join(map(str, floats)), "1"],
                                  stdout=subprocess.PIPE, stderr=err, timeout=1800, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"round_s": None, "status": f"timed out (log {log})"}
    except OSError as exc:
        return {"round_s": None, "status": f"not installed ({exc})"}
    lines = [ln for ln in done.stdout.decode(errors="replace").splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"round_s": None, "status": f"failed with exit {done.returncode} (log {log})"}
    got = json.loads(lines[-1])
    measured = [r["seconds"] for r in got["rounds"][1:]] or [r["seconds"] for r in got["rounds"]]
    return {"round_s": round(statistics.median(measured), 3), "rounds": got["rounds"], "flwr": got["flwr"],
            "wall_s": got["wall_s"], "status": "ok"}


def run_k(k: int, *, fogs: int, rounds: int, agg_every: int, backbone: str, per_process: int, work: Path,
          flower: str | None, console: Console, backoff_s: float = 0.0, outbox_sync: str = "FULL",
          adapter: str = "lora") -> dict[str, Any]:
    """One K: the hffm sim, then paho on its broker, then Flower; returns the report row."""
    opts = SimOptions(devices=k, fogs=fogs, rounds=rounds, agg_every=agg_every, backbone=backbone, adapter=adapter,
                      per_process=per_process, run_dir=work / f"K{k}", time_limit_s=max(900.0, 3.0 * k),
                      backoff_base_s=backoff_s, backoff_max_s=backoff_s, outbox_sync=outbox_sync)
    console.print(f"K={k}: hffm sim over {fogs} fog(s) ...")
    sim = run_sim(opts, after=lambda run: _after(run, k, rounds * agg_every + 1))
    after = sim.get("after", {})
    procs = sim["resources"]
    fog_names = [f"fog-{i}" for i in range(1, fogs + 1)]
    hffm = {"cluster_round_s": sim["cluster_round_s"], "global_round_s": sim["global_round_s"],
            "devices_sent_by_s": sim.get("devices_sent_by_s"),
            "fog_after_last_send_s": sim.get("fog_after_last_send_s"),
            "fanin_per_s": sim["fanin_per_s"], "fanin_mb_per_s": sim["fanin_mb_per_s"],
            "fog_rss_mb": sim["fog_rss_mb"], "cloud_rss_mb": sim["cloud_rss_mb"],
            "broker_rss_mb": max((procs.get(f"broker-{f}", {}).get("rss_peak_mb", 0.0) for f in fog_names), default=0),
            "fog_cpu_s": sum(procs.get(f, {}).get("cpu_s", 0.0) for f in fog_names),
            "cloud_cpu_s": procs.get("cloud", {}).get("cpu_s"),
            "broker_cpu_s": sum(procs.get(f"broker-{f}", {}).get("cpu_s", 0.0) for f in fog_names),
            "sim_cpu_s": procs.get("workers", {}).get("cpu_s"), "sim_rss_mb": procs.get("workers", {}).get("rss_peak_mb"),
            "journal_peak_bytes": sum(sim["journal_peak_bytes"].values()),
            "update_bytes": sim["update_bytes"], "device_bytes_per_round": sim["device_bytes_per_round"],
            "lost": sim["deltas"]["lost"], "applied": sim["deltas"]["applied_by_fogs"],
            "planned": sim["deltas"]["expected_without_faults"], "retransmitted": sim["deltas"]["retransmitted"],
            "processes": sim["processes"], "per_process": per_process, "wall_s": sim["wall_s"]}
    ceil, naive, upload = after.get("ceiling", {}), after.get("naive", {}), after.get("naive_upload", {})
    paho = {"round_s": naive.get("round_s"), "rounds": naive.get("rounds"), "fanin_per_s": naive.get("fanin_per_s"),
            "upload_only_round_s": upload.get("round_s"), "upload_only_rounds": upload.get("rounds"),
            "down_msgs_per_device": after.get("msgs_per_device") if naive else None,
            "fanin_ceiling_per_s": ceil.get("per_s"), "ceiling_mb_per_s": ceil.get("mb_per_s"),
            "msgs_per_device": after.get("msgs_per_device"), "error": after.get("error")}
    problems = list(sim["problems"]) + ([f"paho baseline: {after['error']}"] if after.get("error") else [])
    # The same payload as the devices': per client as many fp32 arrays as a device sends updates per round, each
    # of the mean update's size.
    msgs, size = int(after.get("msgs_per_device") or 0), int(after.get("update_bytes") or 0)
    floats = [max(1, size // 4)] * msgs if msgs and size else []
    console.print(f"K={k}: Flower simulation ...")
    flower_row = _flower(flower, k, rounds * agg_every + 1, floats, work / "flower") if floats else \
        {"round_s": None, "status": "no payload"}
    return {"K": k, "fogs": fogs, "hffm": hffm, "paho": paho, "flower": flower_row,
            "status": "FAILED" if sim["problems"] else "ok", "problems": problems, "run_dir": sim["run_dir"]}



def spread(k: int, cores: int | None = None) -> int:
    """Virtual devices per simulator process for K devices: one process per CPU core at least (the devices of a
    process take turns on its one thread, which real devices do not), at most 100 per process."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(100, math.ceil(k / cores)))


# How the figures of several repeats of one K combine (combine()): losses and counts add up, so that no repeat's
# loss is hidden; memory is the largest of the repeats; every other figure is the median of the repeats' medians.
_SUMMED = frozenset({"lost", "applied", "planned", "retransmitted"})
_LARGEST = frozenset({"fog_rss_mb", "cloud_rss_mb", "broker_rss_mb", "sim_rss_mb", "journal_peak_bytes"})


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def combine(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One report row from the rows of several runs of the same K (``--repeat``): see ``_SUMMED`` and ``_LARGEST``
    for the hffm, paho and Flower figures; a figure missing from any repeat stays as the first repeat has it. The
    row is FAILED if any repeat is, with every repeat's problems, and keeps each repeat's main figures under
    ``repeats``."""
    if len(rows) == 1:
        return rows[0]
    out = {**rows[0], "problems": [f"repeat {i}: {p}" for i, r in enumerate(rows, 1) for p in r["problems"]],
           "status": "FAILED" if any(r["status"] == "FAILED" for r in rows) else "ok"}
    for part in ("hffm", "paho", "flower"):
        merged = dict(rows[0][part])
        for key, first in rows[0][part].items():
            values = [r[part].get(key) for r in rows]
            if not _number(first) or not all(_number(v) for v in values):
                continue
            if key in _SUMMED:
                merged[key] = sum(values)
            elif key in _LARGEST:
                merged[key] = max(values)
            else:
                merged[key] = round(statistics.median(values), 3)
        out[part] = merged
    out["repeats"] = [{"cluster_round_s": r["hffm"].get("cluster_round_s"),
                       "devices_sent_by_s": r["hffm"].get("devices_sent_by_s"),
                       "fog_after_last_send_s": r["hffm"].get("fog_after_last_send_s"),
                       "fanin_per_s": r["hffm"].get("fanin_per_s"), "paho_round_s": r["paho"].get("round_s"),
                       "fanin_ceiling_per_s": r["paho"].get("fanin_ceiling_per_s"),
                       "flower_round_s": r["flower"].get("round_s"), "lost": r["hffm"].get("lost"),
                       "status": r["status"], "run_dir": r.get("run_dir")} for r in rows]
    return out


def run_scale_bench(*, ks: tuple[int, ...] = DEFAULT_KS, rounds: int = 3, agg_every: int = 1, backbone: str = "minilm",
                    per_process: int | None = None, fogs_from_1000: int = 2, report: Path | None = None,
                    work: Path = Path("runs/bench-scale"), flower_python_path: str | None = None,
                    backoff_s: float = 60.0, outbox_sync: str = "NORMAL", adapter: str = "lora-sb",
                    repeat: int = 1, console: Console | None = None) -> dict[str, Any]:
    """Run every K (``repeat`` times, one after the other, combined by :func:`combine`), print the table, save
    the report and the plot.

    Raises:
        HffmError: a K's hffm run FAILED (a process died, a delta was lost, fewer applied than planned); the report
            is saved first.
    """
    console = console or Console(width=200)
    flower = flower_python(flower_python_path)
    if flower is None:
        console.print("Flower: not installed (pip install 'hffm[bench]', or pass --flower-python); its column "
                      "says so")
    started = time.monotonic()
    load_before = os.getloadavg()
    runs = []
    for k in ks:
        reps = []
        for i in range(1, repeat + 1):
            if repeat > 1:
                console.print(f"K={k}: repeat {i} of {repeat}")
            reps.append(run_k(k, fogs=fogs_from_1000 if k >= 1000 else 1, rounds=rounds, agg_every=agg_every,
                              backbone=backbone, per_process=per_process or spread(k),
                              work=work / f"repeat-{i}" if repeat > 1 else work, flower=flower, console=console,
                              backoff_s=backoff_s, outbox_sync=outbox_sync, adapter=adapter))
        row = combine(reps)
        if repeat > 1:
            console.print(f"K={k}, {repeat} repeats: hffm cluster round "
                          + ", ".join(str(r["cluster_round_s"]) for r in row["repeats"]) + " s; naive paho round "
                          + ", ".join(str(r["paho_round_s"]) for r in row["repeats"]) + " s")
        runs.append(row)
        console.print(one_line(row))
        save_report({"runs": runs, "partial": True}, report, Console(quiet=True))  # a later K may never end
    out = {"runs": runs, "machine": machine(load_before), "rounds": rounds, "agg_every": agg_every, "repeat": repeat,
           "adapter": adapter,
           "device_backoff_s": backoff_s or "real default (2 s doubling to 30 s)", "device_outbox_sync": outbox_sync,
           "backbone": backbone, "wall_s": round(time.monotonic() - started, 1), "command": " ".join(sys.argv),
           "date": time.strftime("%Y-%m-%d")}
    out["goals"] = goals(runs)
    console.print(table(runs))
    for g in out["goals"]:
        console.print(f"goal {g['goal']}: {g['value']} -> {'met' if g['met'] else 'NOT met'}")
    folder = (report.parent if report else work)
    out["plot"] = plot(runs, folder / "scale.png", console)
    save_report(out, report, console)
    fail_if([f"K={r['K']}: {p}" for r in runs if r["status"] == "FAILED" for p in r["problems"]], "bench scale",
            console)
    return out


def goals(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 17's 'done when' figures that one run can show (None where a K or a column is missing)."""
    by_k = {r["K"]: r for r in runs}
    out: list[dict[str, Any]] = []

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a is not None and b else None

    def add(goal: str, value: float | None, limit: float, above: bool = False) -> None:
        out.append({"goal": goal, "value": value,
                    "met": value is not None and (value >= limit if above else value <= limit)})

    if 50 in by_k:
        h, p, f = by_k[50]["hffm"], by_k[50]["paho"], by_k[50]["flower"]
        add("K=50 cluster round / naive paho round <= 1.3", ratio(h["cluster_round_s"], p["round_s"]), 1.3)
        add("K=50 cluster round / Flower round <= 0.6", ratio(h["cluster_round_s"], f["round_s"]), 0.6)
        add("K=50 fan-in / paho ceiling >= 0.8", ratio(h["fanin_per_s"], p["fanin_ceiling_per_s"]), 0.8, above=True)
    if 10 in by_k and 1000 in by_k:
        add("fog RSS K=1000 / K=10 <= 1.5", ratio(by_k[1000]["hffm"]["fog_rss_mb"], by_k[10]["hffm"]["fog_rss_mb"]),
            1.5)
    if 1000 in by_k:
        add("K=1000: deltas lost == 0", by_k[1000]["hffm"]["lost"], 0)
    ks = sorted(k for k in by_k if by_k[k]["hffm"]["cluster_round_s"])
    if len(ks) >= 2:  # per fog, a cluster round should grow no faster than 1.2x linear in the devices it serves
        lo, hi = by_k[ks[0]], by_k[ks[-1]]
        per_fog = [(r["K"] / r["fogs"], r["hffm"]["cluster_round_s"]) for r in (lo, hi)]
        add(f"cluster round K={ks[-1]} vs K={ks[0]}, per fog, / linear <= 1.2",
            ratio(per_fog[1][1] / per_fog[0][1], per_fog[1][0] / per_fog[0][0]), 1.2)
    return out


def machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "arch": platform.machine(), "python": platform.python_version(),
            "mem_total_gb": round(psutil.virtual_memory().total / 1e9, 1), "loadavg_before": load_before,
            "loadavg_after": os.getloadavg()}


def one_line(r: dict[str, Any]) -> str:
    h, p, f = r["hffm"], r["paho"], r["flower"]
    return (f"K={r['K']} ({r['fogs']} fog): {r['status']}; hffm cluster {h['cluster_round_s']} s, global "
            f"{h['global_round_s']} s (devices done sending {h.get('devices_sent_by_s')} s, fog closed "
            f"{h.get('fog_after_last_send_s')} s later), fan-in {h['fanin_per_s']}/s (ceiling "
            f"{p['fanin_ceiling_per_s']}/s), fog RSS "
            f"{h['fog_rss_mb']} MB, lost {h['lost']}; paho {p['round_s']} s (upload only "
            f"{p.get('upload_only_round_s')} s); Flower {f['round_s'] or f['status']}")


def table(runs: list[dict[str, Any]]) -> Table:
    t = Table(title="hffm bench scale: medians over measured rounds (all but the first)")
    for col in ("K", "fogs", "cluster s", "devices sent s", "fog after s", "global s", "fan-in /s", "MB/s",
                "ceiling /s", "fog RSS MB",
                "cloud RSS MB", "broker RSS MB", "journal MB", "lost", "paho s", "paho up-only s", "Flower s",
                "status"):
        t.add_column(col, justify="right")
    for r in runs:
        h, p, f = r["hffm"], r["paho"], r["flower"]
        t.add_row(str(r["K"]), str(r["fogs"]), str(h["cluster_round_s"]), str(h.get("devices_sent_by_s")),
                  str(h.get("fog_after_last_send_s")), str(h["global_round_s"]),
                  str(h["fanin_per_s"]), str(h["fanin_mb_per_s"]), str(p["fanin_ceiling_per_s"]),
                  str(h["fog_rss_mb"]), str(h["cloud_rss_mb"]), str(h["broker_rss_mb"]),
                  f"{h['journal_peak_bytes'] / 1e6:.0f}", str(h["lost"]), str(p["round_s"]),
                  str(p.get("upload_only_round_s")),
                  str(f["round_s"]) if f["round_s"] is not None else f["status"], r["status"])
    return t


def plot(runs: list[dict[str, Any]], path: Path, console: Console) -> str:
    """Round time and RSS vs K as a PNG; returns its path, or why there is none."""
    if importlib.util.find_spec("matplotlib") is None:
        console.print("plot: skipped (matplotlib is not installed; pip install 'hffm[bench]')")
        return "skipped: matplotlib not installed"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["K"] for r in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, get in (("hffm cluster round", lambda r: r["hffm"]["cluster_round_s"]),
                       ("hffm global round", lambda r: r["hffm"]["global_round_s"]),
                       ("naive paho loop (model down, updates up)", lambda r: r["paho"]["round_s"]),
                       ("naive paho loop, upload only", lambda r: r["paho"].get("upload_only_round_s")),
                       ("Flower simulation", lambda r: r["flower"]["round_s"])):
        pts = [(k, get(r)) for k, r in zip(ks, runs, strict=True) if get(r) is not None]
        if pts:
            ax1.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax1.set(xscale="log", yscale="log", xlabel="devices K", ylabel="seconds per round", title="Round time")
    for label, key in (("fog", "fog_rss_mb"), ("cloud", "cloud_rss_mb"), ("fog broker", "broker_rss_mb")):
        pts = [(k, r["hffm"][key]) for k, r in zip(ks, runs, strict=True) if r["hffm"].get(key)]
        if pts:
            ax2.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax2.set(xscale="log", xlabel="devices K", ylabel="peak RSS (MB)", title="Memory (peak RSS per process)")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    console.print(f"plot: {path}")
    return str(path)
