"""``hffm demo``: one cloud, F fogs, N devices per fog as real processes over real Mosquitto brokers.

Steps: partition M3T-Bench and write configs; start the cloud broker and one bridged fog broker per fog; start
the fog gateways, devices and cloud service as separate processes; follow the cloud's per-round metrics on MQTT;
meanwhile train the local-only baseline (same modules, data and epochs, no federation) at the lowest CPU priority
in worker processes (it finishes after the federation); then write the report.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import time
from contextlib import ExitStack
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from hffm_core.errors import HffmError, RoundTimeoutError
from hffm_core.protocol import RoundMetrics, decode, topics
from hffm_core.transport import MqttTransport
from hffm_lab.demo.plan import FLEET, DemoOptions, FleetPlan, fleet_ids, write_fleet
from hffm_lab.demo.processes import ProcessGroup, TierProcess
from hffm_lab.demo.report import build_report, print_tables
from hffm_lab.demo.secure import SecureFleet

log = logging.getLogger(__name__)


def run_demo(opts: DemoOptions, *, console: Console | None = None) -> dict[str, Any]:
    """Run the whole demo and return the report (also written to ``opts.report`` when given).

    Raises:
        HffmError: a broker or tier process failed, or the job ran past ``opts.time_limit_s``.
    """
    from broker_config.process import (
        MosquittoProcess,
        free_port,
        wait_for_bridge,
    )
    from broker_config.render import BridgeSpec

    console = console or Console(stderr=True)
    run_dir = (opts.run_dir or Path("runs") / datetime.now().strftime("demo-%Y%m%d-%H%M%S")).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("brokers", "metrics", "state"):  # a reused run folder must not replay an old job's retained messages
        shutil.rmtree(run_dir / stale, ignore_errors=True)
    (run_dir / "cloud.sqlite").unlink(missing_ok=True)
    started = time.monotonic()
    if opts.topology is not None or opts.layout != "hierarchical":
        return _run_layout(opts, run_dir, console, started)
    with ExitStack() as stack, _progress(console) as progress:
        step = progress.add_task("preparing M3T-Bench partition and configs", total=None)
        cloud_port = free_port()
        fog_ids = [f"fog-{i}" for i in range(1, opts.fogs + 1)]
        fog_ports = {fog: free_port() for fog in fog_ids}
        security = SecureFleet.provision(run_dir / "security", fog_ids, opts) if opts.secure else None
        plan = write_fleet(opts, run_dir, cloud_port=cloud_port, fog_ports=fog_ports,
                           node_tables=_with_metrics(opts, security.node_tables if security else {},
                                                     ["cloud", *fog_ids, *fleet_ids(opts)]))
        progress.update(step, description=f"starting {1 + len(fog_ids)} mosquitto brokers", completed=1, total=1)
        cloud_broker = stack.enter_context(MosquittoProcess(
            name="cloud-broker", role="cloud", port=cloud_port, data_dir=run_dir / "brokers" / "cloud", fleet=FLEET,
            tls=security.pki.broker("cloud") if security else None))
        cloud_broker.start()
        for fog in fog_ids:
            bridge = BridgeSpec(fleet=FLEET, fog=fog, cloud_host="127.0.0.1", cloud_port=cloud_port,
                                tls=security.pki.bridge(fog) if security else None)
            broker = stack.enter_context(MosquittoProcess(
                name=f"{fog}-broker", role="fog", port=fog_ports[fog], data_dir=run_dir / "brokers" / fog,
                bridge=bridge, fleet=FLEET, tls=security.pki.broker(fog) if security else None))
            broker.start()
            wait_for_bridge(broker)
        progress.remove_task(step)
        background = _start_baseline(opts, plan, progress, stack)
        history = _run_federation(opts, plan, cloud_port, progress, stack,
                                  tls=security.pki.identity("cloud") if security else None)
        baseline = _finish_baseline(opts, plan, progress, stack, background)
    report = build_report(opts, plan, history, baseline, wall_s=time.monotonic() - started)
    return _finish(opts, run_dir, report, console)


def _finish(opts: DemoOptions, run_dir: Path, report: dict[str, Any], console: Console) -> dict[str, Any]:
    if opts.report:
        opts.report.parent.mkdir(parents=True, exist_ok=True)
        opts.report.write_text(json.dumps(report, indent=2))
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    if opts.show_tables:
        print_tables(report, Console())
    console.print(f"run folder: {run_dir}" + (f"; report: {opts.report}" if opts.report else ""))
    return report


def _run_layout(opts: DemoOptions, run_dir: Path, console: Console, started: float) -> dict[str, Any]:
    """The demo on a topology: brokers, bridges and link proxies from hffm_lab/demo/layout.py."""
    from broker_config.topology import generate_topology, load_topology
    from hffm_lab.demo.layout import link_report, start_layout

    if opts.secure and opts.layout == "star":
        raise HffmError("--secure runs the hierarchical and hierarchical_d2d layouts, not star (its gateway sits on "
                        "the cloud broker, outside the fleet's access control)")
    topology = load_topology(opts.topology) if opts.topology is not None else generate_topology(
        opts.fogs, opts.devices_per_fog, d2d_group_size=opts.devices_per_fog, fog_ring=True, fleet=FLEET)
    if topology.fleet != FLEET:
        raise HffmError(f"the demo runs fleet {FLEET!r}; the topology is for fleet {topology.fleet!r}")
    security = SecureFleet.provision(run_dir / "security", sorted(topology.fogs), opts, topology=topology,
                                     d2d=opts.layout == "hierarchical_d2d") if opts.secure else None
    per_round: list[dict[str, int]] = []
    with ExitStack() as stack, _progress(console) as progress:
        step = progress.add_task(f"starting the {opts.layout} layout: brokers, bridges, link proxies", total=None)
        layout = start_layout(opts.layout, topology, run_dir, stack, security=security)
        nodes = ["cloud", *layout.fog_ports, *layout.fog_of]
        plan = write_fleet(opts, run_dir, cloud_port=layout.cloud_port, fog_ports=layout.fog_ports,
                           node_tables=_with_metrics(opts, layout.node_tables, nodes), fog_of=layout.fog_of,
                           device_ports=layout.device_ports)
        progress.remove_task(step)

        def on_round(_metrics: RoundMetrics) -> None:
            now = layout.network.counts_by_kind()
            before = {k: sum(r[k] for r in per_round) for k in now}
            per_round.append({k: now[k] - before[k] for k in now})

        background = _start_baseline(opts, plan, progress, stack)
        history = _run_federation(opts, plan, layout.cloud_port, progress, stack, on_round=on_round,
                                  tls=security.pki.identity("cloud") if security else None)
        links = link_report(layout, per_round)
        baseline = _finish_baseline(opts, plan, progress, stack, background)
    report = build_report(opts, plan, history, baseline, wall_s=time.monotonic() - started)
    report["links"] = links
    return _finish(opts, run_dir, report, console)


def _unwrapper() -> Any:
    from hffm_core.security.signing import unwrap_unverified

    return unwrap_unverified


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)


def _run_federation(opts: DemoOptions, plan: FleetPlan, cloud_port: int, progress: Progress,
                    stack: ExitStack, tls: Any = None, on_round: Any = None) -> list[RoundMetrics]:
    """Start every tier, follow the rounds, wait for a clean exit of all processes."""
    inbox: queue.Queue[bytes] = queue.Queue()
    # With --secure the metrics are signed by the cloud; the observer only displays them, so it unwraps the envelope
    # without checking it (nothing it reads changes any state).
    unwrap = _unwrapper() if opts.secure else (lambda data: data)
    observer = MqttTransport(client_id="hffm-demo-observer", host="127.0.0.1", port=cloud_port,
                             on_message=lambda _t, payload, _r: inbox.put(unwrap(payload)), tls=tls)
    observer.connect()
    stack.callback(observer.close)
    observer.subscribe([topics.metrics(FLEET)])
    endpoints = _announce_endpoints(opts, plan, cloud_port, stack, tls, progress.console)
    cluster_lines = _ClusterLines(endpoints.get("metrics", {}), list(plan.fog_configs), progress.console) \
        if not progress.console.is_terminal else None
    group = stack.enter_context(ProcessGroup())
    logs = plan.run_dir / "logs"
    limit = opts.time_limit_s
    for fog, cfg in plan.fog_configs.items():
        group.add(TierProcess(fog, "fog", cfg, logs / f"{fog}.log", time_limit_s=limit))
    for dev, cfg in plan.device_configs.items():
        group.add(TierProcess(dev, "edge", cfg, logs / f"{dev}.log", time_limit_s=limit))
    group.add(TierProcess("cloud", "cloud", plan.cloud_config, logs / "cloud.log", time_limit_s=limit))
    task = progress.add_task(f"federated rounds ({len(plan.device_configs)} devices, {len(plan.fog_configs)} fogs)",
                             total=opts.rounds)
    history: list[RoundMetrics] = []
    end = time.monotonic() + limit
    while len(history) < opts.rounds:
        if time.monotonic() > end:
            raise RoundTimeoutError(f"demo: {len(history)} of {opts.rounds} rounds done after {limit:.0f} s; "
                                    f"logs in {logs}")
        bad = group.failed()
        if bad is not None:
            raise HffmError(f"{bad.name} exited with code {bad.returncode}; log {bad.log_path}:\n{bad.log_tail()}")
        if cluster_lines is not None:
            cluster_lines.poll()
        try:
            metrics = decode(inbox.get(timeout=0.5), RoundMetrics)
        except queue.Empty:
            continue
        if metrics.global_round > len(history):
            history.append(metrics)
            if on_round is not None:
                on_round(metrics)
            mean = sum(metrics.accuracy.values()) / max(1, len(metrics.accuracy))
            if not progress.console.is_terminal:  # redirected: the bar draws nothing until the end, so say it
                progress.console.print(f"round {metrics.global_round} of {opts.rounds}: mean accuracy {mean:.3f} "
                                       f"({time.monotonic() - (end - limit):.0f} s)")
            progress.update(task, completed=len(history),
                            description=f"federated rounds (round {metrics.global_round}: mean acc {mean:.3f})")
    group.wait(timeout_s=max(30.0, end - time.monotonic()))
    return history


def _with_metrics(opts: DemoOptions, tables: dict[str, dict[str, Any]], nodes: list[str]
                  ) -> dict[str, dict[str, Any]]:
    """Every node's config tables plus, with the dashboard on, ``[metrics] listen`` on a free loopback port."""
    if not opts.dashboard:
        return tables
    from broker_config.process import free_port

    return {n: {**tables.get(n, {}), "metrics": {"listen": f"127.0.0.1:{free_port()}"}} for n in {*tables, *nodes}}


class _ClusterLines:
    """Redirected output: one line per cluster round, read from each fog's /metrics (``hffm_round``)."""

    def __init__(self, urls: dict[str, str], fogs: list[str], console: Console) -> None:
        self.urls = {f: urls[f] for f in fogs if f in urls}
        self.console = console
        self.seen: dict[str, tuple[int, int]] = {}
        self.next_poll = 0.0

    def poll(self) -> None:
        import urllib.request

        if time.monotonic() < self.next_poll:
            return
        self.next_poll = time.monotonic() + 1.0
        for fog, url in self.urls.items():
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310 - the fog's own loopback
                    text = response.read().decode()
            except OSError:
                continue
            rounds = {line.split('"')[1]: int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                      if line.startswith('hffm_round{scope="')}
            now = (rounds.get("global", 0), rounds.get("cluster", 0))
            if now[1] and now != self.seen.get(fog):
                self.seen[fog] = now
                self.console.print(f"{fog}: cluster round ({now[0]},{now[1]}) open")


def _announce_endpoints(opts: DemoOptions, plan: FleetPlan, cloud_port: int, stack: ExitStack, tls: Any,
                        console: Console) -> dict[str, Any]:
    """Start the dashboard (unless disabled) and say where everything is: stderr and <run_dir>/endpoints.json."""
    import tomllib

    endpoints: dict[str, Any] = {"brokers": {"cloud": f"127.0.0.1:{cloud_port}"}, "metrics": {}}
    configs = {"cloud": plan.cloud_config, **plan.fog_configs, **plan.device_configs}
    for node, path in configs.items():
        cfg = tomllib.loads(path.read_text())
        if node in plan.fog_configs:
            endpoints["brokers"][node] = f"127.0.0.1:{cfg['broker']['port']}"
        if cfg.get("metrics", {}).get("listen"):
            endpoints["metrics"][node] = f"http://{cfg['metrics']['listen']}/metrics"
    if opts.dashboard:
        from cloud.dashboard.server import Dashboard

        board = Dashboard(host="127.0.0.1", port=cloud_port, fleet=FLEET, tls=tls, metrics_urls=endpoints["metrics"])
        stack.callback(board.close)
        endpoints["dashboard"] = board.url
    (plan.run_dir / "endpoints.json").write_text(json.dumps(endpoints, indent=1))
    console.print(("dashboard: " + endpoints["dashboard"] + "  " if "dashboard" in endpoints else "") +
                  "brokers: " + ", ".join(f"{n} {a}" for n, a in endpoints["brokers"].items()))
    return endpoints


class _Baseline:
    """The local-only baseline (every device alone: same modules, data and total epochs) in worker processes.

    Where this process may raise a process's priority again (root), the workers start with the federation at the
    lowest CPU priority (nice 19): they take only the CPU the federation leaves idle (devices waiting for a round,
    the fogs and the cloud aggregating), so the federation runs as fast as without them; when the federation ends
    they are set back to this process's priority and finish on the whole machine. Elsewhere (a nice-19 worker could
    not be raised again, and would crawl beside any busy process) they start after the federation, at normal
    priority. The baseline is seeded and reads only the devices' configs and data, so its figures do not depend on
    when it runs.
    """

    def __init__(self, opts: DemoOptions, plan: FleetPlan, progress: Progress, *, background: bool) -> None:
        from edge_runtime.local_data import baseline_from_config

        sessions = opts.rounds * opts.agg_every
        task = progress.add_task("local-only baseline (no federation" + ("; in the background)" if background
                                                                          else ")"), total=len(plan.device_configs))
        self.background = background
        self._pool = get_context("spawn").Pool(opts.baseline_workers, initializer=os.nice if background else None,
                                               initargs=(BACKGROUND_NICE,) if background else ())
        self._results = {dev: self._pool.apply_async(baseline_from_config, (str(cfg), sessions, opts.local_epochs),
                                                     callback=lambda _acc: progress.advance(task))
                         for dev, cfg in plan.device_configs.items()}

    def results(self) -> dict[str, dict[str, float]]:
        """Wait for every device's baseline (at this process's priority); a worker's exception is raised here."""
        if self.background:
            renice_pool(self._pool, os.getpriority(os.PRIO_PROCESS, 0))
        out = {dev: res.get() for dev, res in self._results.items()}
        self._pool.close()
        self._pool.join()
        return out

    def stop(self) -> None:
        """End the workers (the run failed, or is done with them)."""
        self._pool.terminate()
        self._pool.join()


BACKGROUND_NICE = 19


def renice_pool(pool: Any, niceness: int) -> None:
    """Set every thread of every worker of a multiprocessing ``pool`` to ``niceness`` (raising a priority needs
    root). A worker that ended meanwhile is passed over (a pool replaces a dead worker, rarely)."""
    for proc in list(pool._pool):  # the pool's worker processes
        for tid in _threads(proc.pid):  # Linux: a priority is per thread (torch's threads too)
            try:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
            except (OSError, ValueError):
                pass


def _threads(pid: int) -> list[int]:
    """The thread ids of process ``pid`` (Linux), or just ``pid``."""
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except (OSError, ValueError):
        return [pid]


def can_renice() -> bool:
    """Whether this process may set a process's priority back up after lowering it (root, or CAP_SYS_NICE)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _start_baseline(opts: DemoOptions, plan: FleetPlan, progress: Progress, stack: ExitStack) -> _Baseline | None:
    """The baseline in the background from now on, where its workers can be reniced afterwards; else None (it
    runs after the federation: :func:`_finish_baseline`)."""
    if not opts.baseline or not can_renice():
        return None
    baseline = _Baseline(opts, plan, progress, background=True)
    stack.callback(baseline.stop)
    return baseline


def _finish_baseline(opts: DemoOptions, plan: FleetPlan, progress: Progress, stack: ExitStack,
                     background: _Baseline | None) -> dict[str, dict[str, float]]:
    if not opts.baseline:
        return {}
    if background is None:
        background = _Baseline(opts, plan, progress, background=False)
        stack.callback(background.stop)
    return background.results()
