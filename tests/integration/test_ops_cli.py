"""Operator commands through Typer's CliRunner: config check, edge status, fleet status, ONNX export and infer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hffm_testing import FLEET, Brokers, Client
from typer.testing import CliRunner

from hffm_cli.main import app
from hffm_core.errors import ConfigError, DataError
from hffm_core.protocol import NodeState, encode, topics

pytestmark = pytest.mark.integration
runner = CliRunner()


def _device_config(run_dir: Path) -> Path:
    return sorted((run_dir / "configs").glob("fog-1-dev-*.toml"))[0]


def test_config_check_accepts_every_generated_config(job: tuple[dict, Path]) -> None:
    _, run_dir = job
    paths = sorted((run_dir / "configs").glob("*.toml"))
    assert len(paths) == 1 + 2 + 2 * 2, paths  # the cloud, 2 fogs, 2 x 2 devices
    for path in paths:
        result = runner.invoke(app, ["config", "check", str(path), "--check-files"])
        assert result.exit_code == 0, result.output
        assert "valid" in result.output


def test_config_check_names_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[device]\nid = "d"\nfleet = "f"\nfog = "g"\nmodalities = ["sonar"]\ntasks = ["digit"]\n'
                   'colour = "red"\n[broker]\nport = "x"\n[uplink.adapter]\ncodec = "zip"\n')
    result = runner.invoke(app, ["config", "check", str(bad), "--format", "json"])
    assert result.exit_code == ConfigError.exit_code
    verdict = json.loads(result.output)
    assert verdict["kind"] == "device" and not verdict["valid"]
    text = "\n".join(verdict["problems"])
    assert "unknown key(s) ['colour']" in text and "port: expected int, got 'x'" in text
    # Schema problems are all listed; the semantic checks (modality, codec) run once the schema is clean.
    fixed = bad.read_text().replace('colour = "red"\n', "").replace('port = "x"', "port = 1883")
    bad.write_text(fixed)
    verdict = json.loads(runner.invoke(app, ["config", "check", str(bad), "--format", "json"]).output)
    text = "\n".join(verdict["problems"])
    assert "unknown modality 'sonar'" in text and "unknown codec 'zip'" in text and "no [data.digit]" in text


def test_config_check_unknown_kind_and_missing_file(tmp_path: Path) -> None:
    odd = tmp_path / "odd.toml"
    odd.write_text("[nothing]\n")
    assert runner.invoke(app, ["config", "check", str(odd)]).exit_code == ConfigError.exit_code
    assert runner.invoke(app, ["config", "check", str(tmp_path / "no.toml")]).exit_code == ConfigError.exit_code


def test_edge_status_reports_what_the_agent_holds(job: tuple[dict, Path]) -> None:
    report, run_dir = job
    result = runner.invoke(app, ["edge", "status", "--config", str(_device_config(run_dir)), "--format", "json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["state"] == "stopped (job finished)" and status["last_round"] == [2, 2]
    assert status["link"]["connected"] is False
    assert set(status["modules"]) == set(status["held_modules"]) and status["modules"]
    assert "mem_available_mb" in status["resources"] and "cpu_temp_c" not in status["resources"]  # absent here
    assert runner.invoke(app, ["edge", "status", "--config", str(_device_config(run_dir))]).exit_code == 0


def test_edge_status_without_an_agent_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "d.toml"
    cfg.write_text('[device]\nid = "d"\nfleet = "f"\nfog = "g"\nmodalities = []\ntasks = []\n')
    result = runner.invoke(app, ["edge", "status", "--config", str(cfg)])
    assert result.exit_code == DataError.exit_code and "has not run" in result.output


def test_export_and_infer_match_the_devices_own_accuracy(job: tuple[dict, Path], tmp_path: Path) -> None:
    report, run_dir = job
    cfg = _device_config(run_dir)
    device = cfg.stem
    task = report["devices"][device]["tasks"][0]
    out = tmp_path / f"{task}.onnx"
    result = runner.invoke(app, ["edge", "export", "--config", str(cfg), "--task", task, "--out", str(out),
                                 "--source", "fleet", "--format", "json"])
    assert result.exit_code == 0, result.output
    exported = json.loads(result.output.strip().splitlines()[-1])
    assert exported["argmax_agreement"] == 1.0 and exported["max_abs_diff"] < 1e-4
    result = runner.invoke(app, ["edge", "infer", "--model", str(out), "--input",
                                 str(run_dir / "data" / "test" / f"{task}.npz"), "--format", "json"])
    assert result.exit_code == 0, result.output
    inferred = json.loads(result.output)
    # The ONNX model is the device's final personalised model: same accuracy as the agent measured in torch.
    assert inferred["accuracy"] == pytest.approx(report["devices"][device]["final_accuracy"][task], abs=1e-6)


def test_export_of_a_task_the_device_does_not_run(job: tuple[dict, Path], tmp_path: Path) -> None:
    _, run_dir = job
    result = runner.invoke(app, ["edge", "export", "--config", str(_device_config(run_dir)), "--task", "nosuch",
                                 "--out", str(tmp_path / "x.onnx")])
    assert result.exit_code == ConfigError.exit_code and "does not run task 'nosuch'" in result.output


def test_fleet_status_reads_retained_adverts(brokers: Brokers) -> None:
    client = Client("test-adverts", brokers.fog.port)
    try:
        for node, online, telemetry in (("dev-a", True, {"cpu_percent": 12.0}), ("dev-b", False, {})):
            advert = NodeState(fleet=FLEET, node=node, role="device", fog="fog-1", online=online, tasks=("digit",),
                               telemetry=telemetry, last_seen=1_700_000_000.0)
            client.publish(topics.state(FLEET, node), encode(advert), retain=True)
    finally:
        client.close()
    result = runner.invoke(app, ["fleet", "status", "--port", str(brokers.fog.port), "--fleet", FLEET,
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    nodes = {n["node"]: n for n in json.loads(result.output)["nodes"]}
    assert nodes["dev-a"]["online"] is True and nodes["dev-b"]["online"] is False
    assert nodes["dev-a"]["telemetry"] == {"cpu_percent": 12.0} and nodes["dev-a"]["tasks"] == ["digit"]
    assert runner.invoke(app, ["fleet", "status", "--port", str(brokers.fog.port), "--fleet", FLEET]).exit_code == 0


def test_infer_on_unlabelled_inputs_and_bad_files(job: tuple[dict, Path], tmp_path: Path) -> None:
    import numpy as np

    report, run_dir = job
    cfg = _device_config(run_dir)
    task = report["devices"][cfg.stem]["tasks"][0]
    out = tmp_path / "m.onnx"
    assert runner.invoke(app, ["edge", "export", "--config", str(cfg), "--task", task, "--out", str(out)]).exit_code == 0
    with np.load(run_dir / "data" / "test" / f"{task}.npz", allow_pickle=False) as labelled:
        x = labelled["x"][:5]
    np.savez(tmp_path / "x.npz", x=x)
    result = runner.invoke(app, ["edge", "infer", "--model", str(out), "--input", str(tmp_path / "x.npz"),
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    inferred = json.loads(result.output)
    assert len(inferred["predictions"]) == 5 and inferred["accuracy"] is None
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    result = runner.invoke(app, ["edge", "infer", "--model", str(out), "--input", str(tmp_path / "junk.npz")])
    assert result.exit_code == DataError.exit_code and "not a readable .npz" in result.output


def test_export_of_the_personalised_local_modules(job: tuple[dict, Path], tmp_path: Path) -> None:
    report, run_dir = job
    cfg = _device_config(run_dir)
    task = report["devices"][cfg.stem]["tasks"][0]
    result = runner.invoke(app, ["edge", "export", "--config", str(cfg), "--task", task, "--out",
                                 str(tmp_path / "local.onnx"), "--format", "json"])
    assert result.exit_code == 0, result.output
    exported = json.loads(result.output.strip().splitlines()[-1])
    assert exported["source"] == "local" and exported["argmax_agreement"] == 1.0


def test_fleet_shows_a_finished_device_offline(job: tuple[dict, Path]) -> None:
    """A device that ends its job cleanly leaves an offline advert (a crash is covered by the last will)."""
    import tomllib

    report, run_dir = job
    from broker_config.process import MosquittoProcess

    cfg = tomllib.loads(_device_config(run_dir).read_text())
    broker_dir = run_dir / "brokers" / cfg["device"]["fog"]
    with MosquittoProcess(name="reopen", role="cloud", data_dir=tmp_copy(broker_dir), fleet="demo") as broker:
        broker.start()
        result = runner.invoke(app, ["fleet", "status", "--port", str(broker.port), "--fleet", "demo",
                                     "--format", "json"])
    assert result.exit_code == 0, result.output
    nodes = {n["node"]: n for n in json.loads(result.output)["nodes"]}
    assert nodes[cfg["device"]["id"]]["online"] is False
    assert nodes[cfg["device"]["id"]]["status"].startswith("stopped")


def tmp_copy(folder: Path) -> Path:
    """A copy of a stopped broker's persistence (its retained messages) to start a fresh broker on."""
    import shutil
    import tempfile

    dest = Path(tempfile.mkdtemp(prefix="hffm-broker-")) / "data"
    dest.mkdir()
    shutil.copy(folder / "mosquitto.db", dest / "mosquitto.db")
    return dest


def test_sigterm_stops_an_agent_cleanly_with_an_offline_advert(brokers: Brokers, job: tuple[dict, Path]) -> None:
    """An operator's `systemctl stop` (SIGTERM) ends the agent through its normal exit: offline advert, exit 0."""
    import signal
    import time

    import tomli_w
    import tomllib

    from hffm_lab.demo.processes import TierProcess

    _, run_dir = job
    cfg = tomllib.loads(_device_config(run_dir).read_text())
    cfg["broker"]["port"] = brokers.fog.port
    cfg["device"]["fleet"] = FLEET
    cfg["state_dir"] = str(run_dir / "sigterm-state")
    # Its own metrics file and no /metrics listener: the job's files are read by other tests (any order, any worker).
    cfg["metrics_file"] = str(run_dir / "sigterm-metrics.json")
    cfg.pop("metrics", None)
    path = run_dir / "sigterm-device.toml"
    path.write_bytes(tomli_w.dumps(cfg).encode())
    agent = TierProcess("sigterm", "edge", path, run_dir / "sigterm.log", time_limit_s=120)
    agent.start()
    status = run_dir / "sigterm-state" / f"{cfg['device']['id']}-status.json"
    end = time.monotonic() + 90
    while not status.exists() and time.monotonic() < end and agent.returncode is None:
        time.sleep(0.2)
    assert status.exists(), agent.log_tail()
    agent.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    assert agent.proc.wait(30) == 0, agent.log_tail()  # type: ignore[union-attr]
    result = runner.invoke(app, ["fleet", "status", "--port", str(brokers.fog.port), "--fleet", FLEET,
                                 "--format", "json"])
    node = {n["node"]: n for n in json.loads(result.output)["nodes"]}[cfg["device"]["id"]]
    assert node["online"] is False and node["status"].startswith("stopped")
