"""The Ansible rollout in deploy/: lint, syntax, wiring, and a real run of site.yml on this machine.

The real run uses the local-test inventory: a cloud, a fog and two devices, each a local connection that installs
into its own folder under a temporary prefix (core package from a wheel built from this checkout, installed offline
from a wheelhouse the test fills once, as deploy/README.md's offline hosts do; no torch, no apt, no systemd), with
the fleet CA on the controller under the same prefix. The broker configs are rendered by the
installed `hffm broker render` (no role keeps a broker template); they are checked to be secured, started with
mosquitto, and probed: a client without a certificate, a client from a foreign CA and a device publishing on another
device's topic are refused.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hffm_testing.timing import session_slowdown

from broker_config.broker_sys import read_sys
from broker_config.pki import init_ca, issue
from broker_config.process import free_port
from hffm_core.errors import BrokerError, TransportError
from hffm_core.protocol import topics
from hffm_core.protocol.codec import encode
from hffm_core.protocol.keys import ModuleKey
from hffm_core.protocol.messages import NodeState
from hffm_core.security.tls import TlsSettings, verifying_context
from hffm_core.transport import MqttTransport
from hffm_core.transport.mqtt import MqttRefusedError
from hffm_lab.data import modality_spec, save_task_file, task_spec
from hffm_lab.security.auth_matrix import connect_verdict, probe_verdict

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
PLAYBOOK = BIN / "ansible-playbook"
LINT = BIN / "ansible-lint"
INVENTORY = DEPLOY / "inventories" / "local-test" / "hosts.yml"
EXAMPLE = DEPLOY / "inventories" / "example" / "hosts.yml"
FLEET = "localtest"
MANAGED = "Ansible managed"
HOSTS = {"localhost", "cloud-1", "fog-1", "dev-1", "dev-2"}  # localhost: the fleet CA on the controller
KEY = ModuleKey(kind="head", modality="_", task="demand")
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)
# What each local-test host trains or evaluates: (modality, task, file relative to its data dir).
DATA_FILES = {
    "dev-1": [("inertial", "activity", "data/activity-train.npz"), ("inertial", "activity", "data/activity-test.npz"),
              ("power", "demand", "data/demand-train.npz")],
    "dev-2": [("power", "demand", "data/demand-train.npz")],
    "cloud-1": [("inertial", "activity", "data/test/activity.npz"), ("power", "demand", "data/test/demand.npz")],
}
DATA_DIRS = {"dev-1": "var/lib/hffm/edge", "dev-2": "var/lib/hffm/edge", "cloud-1": "var/lib/hffm/cloud"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not PLAYBOOK.exists(), reason=f"ansible-playbook is not installed in {BIN}"),
]


@dataclass(frozen=True)
class Deployment:
    prefix: Path
    env: dict[str, str]
    extra_vars: Path
    cloud_port: int
    fog_port: int
    config_check: bool
    first_run: str


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(DEPLOY / "ansible.cfg"),
        ANSIBLE_HOME=str(tmp / "ansible-home"),
        ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-local"),
        ANSIBLE_REMOTE_TEMP=str(tmp / "ansible-remote"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def _run(cmd: list[str | Path], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run an Ansible command; ``timeout`` is for the idle box and scales with the measured slowdown."""
    return subprocess.run([str(c) for c in cmd], cwd=DEPLOY, env=env, capture_output=True, text=True,
                          timeout=timeout * session_slowdown(), check=False)


def _output(proc: subprocess.CompletedProcess[str], tail: int = 6000) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-tail:]}\n--- stderr ---\n{proc.stderr[-tail:]}"


def _recap(stdout: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host."""
    recap = stdout[stdout.rindex("PLAY RECAP"):]
    return {m[1]: {"ok": int(m[2]), "changed": int(m[3]), "unreachable": int(m[4]), "failed": int(m[5])}
            for m in RECAP.finditer(recap)}


def _config_check_exists() -> bool:
    hffm = BIN / "hffm"
    if not hffm.exists():
        return False
    proc = subprocess.run([str(hffm), "config", "check", "--help"], capture_output=True, text=True, timeout=60,
                          check=False)
    return proc.returncode == 0


PACKAGES = ("hffm_core", "hffm_model", "edge_runtime", "fog_gateway", "cloud", "broker_config", "hffm_lab", "hffm_cli")


def test_the_wheel_copies_every_package_pyproject_ships() -> None:
    shipped = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(p.rstrip("*") for p in shipped) == sorted(PACKAGES)


def _build_wheel(tmp: Path) -> Path:
    """A wheel of this checkout, built from a copy so that the build leaves nothing in the repository."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    # Every package pyproject.toml ships (broker_config/ carries the templates for the hosts' `hffm broker render`).
    for package in PACKAGES:
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist), str(src)]
    if importlib.util.find_spec("setuptools") is not None:
        cmd.insert(-1, "--no-build-isolation")  # the venv's setuptools: no download, ~2 s
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, _output(proc)
    (wheel,) = dist.glob("hffm-*.whl")
    return wheel


def _wheelhouse(tmp: Path, wheel: Path) -> Path:
    """The wheel and its dependencies in one folder, downloaded once: every host installs from it with
    ``--no-index --find-links`` (deploy/README.md, offline hosts) instead of resolving against the index four times."""
    house = tmp / "wheelhouse"
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary", ":all:", "--dest", str(house),
           str(wheel)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300 * session_slowdown(), check=False)
    assert proc.returncode == 0, _output(proc)
    return house


def _write_data_files(prefix: Path) -> None:
    """Small valid task files where the local-test configs point (a device brings its own data)."""
    rng = np.random.default_rng(0)
    for host, files in DATA_FILES.items():
        for modality, task, rel in files:
            spec = modality_spec(modality)
            x = rng.standard_normal((8, spec.n_tokens, spec.token_dim)).astype(np.float32)
            y = np.arange(8, dtype=np.int64) % task_spec(task).num_classes
            save_task_file(prefix / host / DATA_DIRS[host] / rel, modality=modality, task=task, x=x, y=y)


def _site(dep_env: dict[str, str], extra_vars: Path) -> subprocess.CompletedProcess[str]:
    return _run([PLAYBOOK, "-i", INVENTORY, "site.yml", "-e", f"@{extra_vars}"], dep_env)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    tmp = tmp_path_factory.mktemp("deploy")
    prefix = tmp / "prefix"
    _write_data_files(prefix)
    cloud_port, fog_port = free_port(), free_port()
    while fog_port == cloud_port:
        fog_port = free_port()
    config_check = _config_check_exists()
    wheel = _build_wheel(tmp)
    offline = f"--no-index --find-links {_wheelhouse(tmp, wheel)}"
    extra: dict[str, object] = {
        "hffm_prefix": str(prefix),
        "hffm_wheel": str(wheel),
        "hffm_broker_port": cloud_port,
        "hffm_test_fog_port": fog_port,
        "edge_agent_pip_extra_args": offline,
        "fog_gateway_pip_extra_args": offline,
        "cloud_pip_extra_args": offline,
    }
    if not config_check:  # the roles' verify step needs it; test_installed_hffm_accepts_the_configs then skips
        extra |= {"edge_agent_verify": False, "fog_gateway_verify": False, "cloud_verify": False}
    extra_vars = tmp / "extra-vars.json"
    extra_vars.write_text(json.dumps(extra))
    env = _env(tmp)
    proc = _site(env, extra_vars)
    assert proc.returncode == 0, _output(proc)
    return Deployment(prefix=prefix, env=env, extra_vars=extra_vars, cloud_port=cloud_port, fog_port=fog_port,
                      config_check=config_check, first_run=proc.stdout)


# --- static checks --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not LINT.exists(), reason=f"ansible-lint is not installed in {BIN}")
def test_ansible_lint_is_clean(tmp_path: Path) -> None:
    proc = _run([LINT, "--offline", "--nocolor", "-c", DEPLOY / ".ansible-lint"], _env(tmp_path))
    assert proc.returncode == 0, _output(proc)
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


@pytest.mark.parametrize("inventory", [INVENTORY, EXAMPLE], ids=["local-test", "example"])
@pytest.mark.parametrize("playbook", ["site.yml", "upgrade.yml"])
def test_syntax_check(tmp_path: Path, playbook: str, inventory: Path) -> None:
    proc = _run([PLAYBOOK, "-i", inventory, "--syntax-check", playbook], _env(tmp_path))
    assert proc.returncode == 0, _output(proc)


def _adhoc_var(env: dict[str, str], pattern: str, var: str) -> dict[str, object]:
    """``var`` on every host of ``pattern`` in the example inventory, with deploy/group_vars wired in (the debug
    action runs on the controller: nothing connects)."""
    proc = _run([BIN / "ansible", pattern, "-i", EXAMPLE, "--playbook-dir", DEPLOY, "-m", "ansible.builtin.debug",
                 "-a", f"var={var}", "-o"], env, timeout=120)
    assert proc.returncode == 0, _output(proc)
    found = {}
    for line in proc.stdout.splitlines():
        host, _, rest = line.partition(" | SUCCESS => ")
        if rest:
            found[host] = json.loads(rest)[var]
    return found


def test_example_inventory_wiring(tmp_path: Path) -> None:
    env = _env(tmp_path)
    devices = _adhoc_var(env, "fogs", "fog_gateway_devices")
    assert devices == {"fog-hall-a": ["pi-hall-a-1", "pi-hall-a-2", "jetson-hall-a-1"],
                       "fog-hall-b": ["pi-hall-b-1", "jetson-hall-b-1"]}
    assert _adhoc_var(env, "fogs", "mosquitto_cloud_host") == {"fog-hall-a": "192.168.0.10",
                                                                 "fog-hall-b": "192.168.0.10"}
    assert _adhoc_var(env, "cloud", "cloud_tasks") == {
        "cloud-1": ["activity", "appliance", "demand", "digit", "speaker"]}
    assert _adhoc_var(env, "cloud", "cloud_fogs") == {"cloud-1": ["fog-hall-a", "fog-hall-b"]}
    # Each fog broker's certificate names the address its devices use; every node gets a signing key.
    assert _adhoc_var(env, "cloud", "fleet_pki_fogs") == {
        "cloud-1": {"fog-hall-a": "192.168.10.2", "fog-hall-b": "192.168.20.2"}}
    assert _adhoc_var(env, "cloud", "fleet_pki_cloud_hosts") == {"cloud-1": ["192.168.0.10"]}
    assert len(_adhoc_var(env, "cloud", "fleet_pki_signers")["cloud-1"]) == 1 + 2 + 5
    hosts = _adhoc_var(env, "pi-hall-b-1,jetson-hall-a-1", "edge_agent_broker_host")
    assert hosts == {"pi-hall-b-1": "192.168.20.2", "jetson-hall-a-1": "192.168.10.2"}
    torch = _adhoc_var(env, "devices", "edge_agent_torch_spec")
    assert torch["pi-hall-a-1"] == "torch==2.13.0"
    assert torch["jetson-hall-b-1"].endswith("linux_aarch64.whl")


# --- the real run ---------------------------------------------------------------------------------------------


def _read(path: Path) -> str:
    assert path.is_file(), f"{path} was not rendered"
    text = path.read_text()
    assert text.startswith("#\n#") and MANAGED in text.splitlines()[1], f"{path} lacks the ansible_managed header"
    return text


def test_first_run_changed_every_host(deployment: Deployment) -> None:
    recap = _recap(deployment.first_run)
    assert set(recap) == HOSTS
    assert all(c["failed"] == 0 and c["unreachable"] == 0 and c["changed"] > 0 for c in recap.values()), recap


def test_rendered_service_configs(deployment: Deployment) -> None:
    p = deployment.prefix
    dev1 = tomllib.loads(_read(p / "dev-1/etc/hffm/device.toml"))
    assert dev1["device"] == {"id": "dev-1", "fleet": FLEET, "fog": "fog-1", "modalities": ["inertial", "power"],
                              "tasks": ["activity", "demand"]}
    # A device's broker is its fog's, on the fog's own port.
    assert dev1["broker"] == {"host": "127.0.0.1", "port": deployment.fog_port}
    assert dev1["base_dir"] == str(p / "dev-1/var/lib/hffm/edge")
    assert dev1["data"] == {"activity": {"train": "data/activity-train.npz", "test": "data/activity-test.npz"},
                            "demand": {"train": "data/demand-train.npz", "test": ""}}
    assert dev1["model"] == {"backbone": "minilm", "seed": 0, "lora_r": 8, "lora_alpha": 16}
    assert dev1["training"]["lr"] == 0.001 and "uplink" not in dev1

    secrets = p / "dev-1/etc/hffm/pki"
    assert dev1["tls"] == {"ca": f"{secrets}/ca.pem", "cert": f"{secrets}/dev-1.pem", "key": f"{secrets}/dev-1.key"}
    assert dev1["signing"] == {"key": f"{secrets}/signing/dev-1.key", "enrolled": f"{secrets}/enrolled"}
    assert sorted(x.name for x in (secrets / "enrolled").iterdir()) == [
        f"{n}.pub" for n in ("cloud", "dev-1", "dev-2", "fog-1")]
    for key in (secrets / "dev-1.key", secrets / "signing/dev-1.key"):
        assert key.stat().st_mode & 0o777 == 0o600, key
    assert not (secrets / "dev-2.key").exists() and not (secrets / "signing/dev-2.key").exists()

    dev2 = tomllib.loads(_read(p / "dev-2/etc/hffm/device.toml"))
    assert dev2["uplink"] == {"adapter": {"codec": "topk", "params": {"fraction": 0.1, "values": "int8"}},
                              "head": {"codec": "fp16"}}

    fog = tomllib.loads(_read(p / "fog-1/etc/hffm/fog.toml"))
    assert fog["fog"]["id"] == "fog-1" and fog["fog"]["devices"] == ["dev-1", "dev-2"]
    assert fog["broker"] == {"host": "127.0.0.1", "port": deployment.fog_port}
    assert fog["tls"]["cert"].endswith("fog-1/etc/hffm/pki/fog-1.pem")
    # The broker on the fog host: the table `hffm broker render` reads.
    assert fog["mosquitto"]["insecure"] is False and fog["mosquitto"]["port"] == deployment.fog_port
    assert fog["mosquitto"]["cloud_port"] == deployment.cloud_port
    assert fog["mosquitto"]["bridge_cert"].endswith("pki/bridge-fog-1.pem")

    cloud = tomllib.loads(_read(p / "cloud-1/etc/hffm/cloud.toml"))
    assert cloud["cloud"]["fogs"] == ["fog-1"]
    assert cloud["cloud"]["modalities"] == ["inertial", "power"]
    assert cloud["cloud"]["tasks"] == ["activity", "demand"]
    assert cloud["broker"]["port"] == deployment.cloud_port
    assert cloud["eval"] == {"activity": "data/test/activity.npz", "demand": "data/test/demand.npz"}
    assert cloud["tls"]["cert"].endswith("cloud-1/etc/hffm/pki/cloud.pem")  # the cloud's identity is "cloud"
    assert cloud["mosquitto"]["topology"] == str(p / "cloud-1/etc/hffm/topology.toml")


def test_metrics_endpoints_scrape_config_and_a_tls_scrape(deployment: Deployment) -> None:
    """The cloud and the fog serve /metrics (devices do not by default) with a server certificate of their own; the
    controller has a scrape config naming both over https, and its scraper certificate reads a /metrics endpoint
    served with the fog's rendered files."""
    import ssl
    import urllib.request

    import yaml

    from hffm_core.observability import MetricsServer, Observation

    p = deployment.prefix
    fog = tomllib.loads(_read(p / "fog-1/etc/hffm/fog.toml"))
    cloud = tomllib.loads(_read(p / "cloud-1/etc/hffm/cloud.toml"))
    secrets = p / "fog-1/etc/hffm/pki"
    assert fog["metrics"] == {"listen": "127.0.0.1:9102", "cert": f"{secrets}/broker-metrics-fog-1.pem",
                              "key": f"{secrets}/broker-metrics-fog-1.key"}
    assert cloud["metrics"]["listen"] == "127.0.0.1:9101" and cloud["metrics"]["cert"].endswith(
        "broker-metrics-cloud.pem")
    assert (secrets / "broker-metrics-fog-1.key").stat().st_mode & 0o777 == 0o600
    assert "metrics" not in tomllib.loads(_read(p / "dev-1/etc/hffm/device.toml"))
    config = yaml.safe_load(_read(p / "controller/prometheus.yml"))
    job = config["scrape_configs"][0]
    assert job["scheme"] == "https" and job["job_name"] == f"hffm-{FLEET}"
    assert {c["labels"]["node"]: c["targets"] for c in job["static_configs"]} == {
        "cloud": ["127.0.0.1:9101"], "fog-1": ["127.0.0.1:9102"]}
    tls = TlsSettings(ca=Path(fog["tls"]["ca"]), cert=Path(fog["metrics"]["cert"]), key=Path(fog["metrics"]["key"]))
    server = MetricsServer("127.0.0.1:0", lambda: Observation(
        role="fog", node="fog-1", fleet=FLEET, connected=True, accepted={}, rejected={}, sent={}, received={},
        inbox_depth=0), tls=tls)
    try:
        scraper = ssl.create_default_context(cafile=job["tls_config"]["ca_file"])
        scraper.load_cert_chain(job["tls_config"]["cert_file"], job["tls_config"]["key_file"])
        with urllib.request.urlopen(server.url, timeout=10, context=scraper) as response:  # noqa: S310 - loopback
            assert b'hffm_node_info{fleet="' in response.read()
    finally:
        server.close()


def test_rendered_units(deployment: Deployment) -> None:
    p = deployment.prefix
    for host, tier, config in (("dev-1", "edge", "device"), ("fog-1", "fog", "fog"), ("cloud-1", "cloud", "cloud")):
        unit = _read(p / host / f"etc/systemd/system/hffm-{tier}.service")
        venv = p / host / f"opt/hffm/{tier}/venv"
        assert f"ExecStart={venv}/bin/hffm {tier} run --config {p / host}/etc/hffm/{config}.toml" in unit
        assert "Restart=on-failure" in unit and "RestartPreventExitStatus=2" in unit
        assert "\nUser=" not in unit  # local-test runs without a service account
        assert (venv / "bin/hffm").exists()
    broker = _read(p / "fog-1/etc/systemd/system/hffm-mosquitto.service")
    assert (f"ExecStart={p}/fog-1/opt/hffm/fog/venv/bin/hffm broker run --config {p}/fog-1/etc/hffm/fog.toml "
            f"--out {p}/fog-1/etc/hffm/mosquitto-fog.conf\n") in broker
    assert "hffm-mosquitto.service" in (p / "fog-1/etc/systemd/system/hffm-fog.service").read_text()


def test_fog_venv_has_no_torch(deployment: Deployment) -> None:
    for host, tier in (("fog-1", "fog"), ("dev-1", "edge")):
        python = deployment.prefix / host / f"opt/hffm/{tier}/venv/bin/python"
        proc = subprocess.run([str(python), "-c", "import importlib.util as u, edge_runtime; "
                               "print(u.find_spec('torch') is None)"], capture_output=True, text=True, timeout=60,
                              check=False)
        assert proc.returncode == 0 and proc.stdout.strip() == "True", _output(proc)


def _options(text: str) -> list[str]:
    """The option lines of a mosquitto config (no comments, no blank lines)."""
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_no_role_keeps_a_broker_template_or_an_anonymous_listener() -> None:
    templates = [path.relative_to(DEPLOY) for path in DEPLOY.rglob("*.j2")
                 if re.search(r"mosquitto.*\.conf|^(cloud|fog)\.conf", path.name)]
    assert templates == [], f"broker configs come from `hffm broker render` only: {templates}"
    anonymous = [path.relative_to(DEPLOY) for path in DEPLOY.rglob("*") if path.is_file()
                 and "allow_anonymous true" in path.read_text(errors="replace")]
    assert anonymous == []


def test_rendered_brokers_are_secured(deployment: Deployment) -> None:
    p = deployment.prefix
    for host, role in (("cloud-1", "cloud"), ("fog-1", "fog")):
        text = (p / host / f"etc/hffm/mosquitto-{role}.conf").read_text()
        assert "broker_config/" in text.splitlines()[1], "not rendered from broker_config/"
        options = _options(text)
        assert "allow_anonymous true" not in options and "allow_anonymous false" in options
        assert "require_certificate true" in options and "use_identity_as_username true" in options
        assert any(line.startswith("crlfile ") for line in options)
        assert any(line.startswith("plugin ") and line.endswith("mosquitto_dynamic_security.so") for line in options)
        data = p / host / f"var/lib/hffm/mosquitto-{role}"
        assert (data / "tls-server.key").stat().st_mode & 0o777 == 0o600
        users = {c["username"] for c in json.loads((data / "dynsec.json").read_text())["clients"]}
        assert users == ({"cloud", "bridge-fog-1"} if role == "cloud" else {"fog-1", "dev-1", "dev-2"})
    fog = _options((p / "fog-1/etc/hffm/mosquitto-fog.conf").read_text())
    assert f"address 127.0.0.1:{deployment.cloud_port}" in fog
    assert {"bridge_insecure false", f"bridge_certfile {p}/fog-1/var/lib/hffm/mosquitto-fog/tls-bridge.pem"} <= set(fog)


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:  # only the processes this test started
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _start_broker(conf: Path, started: list[subprocess.Popen[bytes]]) -> None:
    mosquitto = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
                                                   if os.access(p, os.X_OK)), None)
    if mosquitto is None:
        pytest.skip("mosquitto is not installed")
    started.append(subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL))


def _wait_sys(port: int, topic: str, want: bytes, started: list[subprocess.Popen[bytes]],
              context: ssl.SSLContext) -> bytes | None:
    """Poll a $SYS topic on a local broker until it reads ``want`` (30 s at most); the last value read."""
    deadline = time.monotonic() + 30
    last = None
    while time.monotonic() < deadline and last != want:
        assert all(proc.poll() is None for proc in started), "a rendered broker config did not start"
        try:
            last = read_sys("127.0.0.1", port, topic, timeout=2.0, want=want, ssl_context=context)
        except (OSError, BrokerError):  # not listening yet
            time.sleep(0.2)
    return last


def _identity(deployment: Deployment, node: str) -> TlsSettings:
    """A node's TLS identity from the fleet CA on the controller (the local-test inventory's hffm_pki_dir)."""
    pki = deployment.prefix / "controller/pki"
    return TlsSettings(ca=pki / "ca.pem", cert=pki / "issued" / f"{node}.pem", key=pki / "issued" / f"{node}.key")


def _connect(port: int, tls: TlsSettings, name: str) -> MqttTransport:
    client = MqttTransport(client_id=f"deploy-test-{name}", host="127.0.0.1", port=port, on_message=lambda *_: None,
                           tls=tls, timeout_s=5.0, connect_timeout_s=15.0)
    client.connect()
    return client


def _wait_port(port: int, started: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 15
    while True:
        assert all(proc.poll() is None for proc in started), "a rendered broker config did not start"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on port {port}"
            time.sleep(0.1)


@pytest.mark.integration
def test_rendered_brokers_bridge_over_tls_and_refuse_intruders(
    deployment: Deployment, started: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    p = deployment.prefix
    _start_broker(p / "cloud-1/etc/hffm/mosquitto-cloud.conf", started)
    _start_broker(p / "fog-1/etc/hffm/mosquitto-fog.conf", started)
    fog = _identity(deployment, "fog-1")  # the gateway's identity may read $SYS on its broker
    state = _wait_sys(deployment.fog_port, f"$SYS/broker/connection/hffm-bridge-{FLEET}-fog-1/state", b"1", started,
                      fog.client_context())
    assert state == b"1", f"the fog broker's TLS bridge to the cloud broker did not connect (last state {state!r})"
    # No client certificate: the broker ends the TLS handshake.
    try:
        read_sys("127.0.0.1", deployment.fog_port, "$SYS/broker/uptime", timeout=5.0,
                 ssl_context=verifying_context(fog.ca))
        verdict = "connected"
    except (OSError, BrokerError) as exc:
        verdict = probe_verdict(exc)
    assert verdict.startswith("refused"), f"a client without a certificate: {verdict}"
    # dev-1's name, but a certificate from another CA.
    other = tmp_path / "foreign-ca"
    init_ca(other)
    issue(other, "dev-1", "device")
    forged = TlsSettings(ca=fog.ca, cert=other / "issued/dev-1.pem", key=other / "issued/dev-1.key")
    try:
        _connect(deployment.fog_port, forged, "forged").close()
        verdict = "connected"
    except TransportError as exc:
        verdict = connect_verdict(exc)
    assert verdict.startswith("refused"), f"a client from a foreign CA: {verdict}"
    # A valid device may publish its own update, not another device's (PUBACK 0x87 from the generated ACL).
    device = _connect(deployment.fog_port, _identity(deployment, "dev-1"), "dev-1")
    try:
        device.publish(topics.up(FLEET, "fog-1", KEY, "dev-1"), b"own", category="other")
        with pytest.raises(MqttRefusedError) as denied:
            device.publish(topics.up(FLEET, "fog-1", KEY, "dev-2"), b"forged", category="other")
        assert denied.value.reason_code == 0x87
    finally:
        device.close()


def _advertise(deployment: Deployment, node: str, *, online: bool) -> None:
    """A retained state advert for ``node`` on the fog broker, as its agent would publish it (its own certificate)."""
    client = _connect(deployment.fog_port, _identity(deployment, node), f"advert-{node}")
    try:
        advert = NodeState(fleet=FLEET, node=node, role="device", fog="fog-1", online=online, last_seen=time.time())
        client.publish(topics.state(FLEET, node), encode(advert), category="other", retain=True)
    finally:
        client.close()


@pytest.mark.integration
def test_upgrade_health_check_stops_at_a_device_that_stays_offline(
    deployment: Deployment, started: list[subprocess.Popen[bytes]]
) -> None:
    """upgrade.yml against the real (secured) fog broker: dev-1 (batch 1) is online and passes; dev-2 (batch 2)
    stays offline, so its health check (fleet status -c fog.toml, run on the fog) fails with a message naming it.
    No systemd here: the restart is skipped."""
    _start_broker(deployment.prefix / "fog-1/etc/hffm/mosquitto-fog.conf", started)
    _wait_port(deployment.fog_port, started)
    _advertise(deployment, "dev-1", online=True)
    _advertise(deployment, "dev-2", online=False)
    health = deployment.extra_vars.with_name("upgrade-vars.json")
    health.write_text(json.dumps({"hffm_upgrade_health_check": True, "hffm_upgrade_retries": 2,
                                  "hffm_upgrade_delay_s": 1}))
    proc = _run([PLAYBOOK, "-i", INVENTORY, "upgrade.yml", "-e", f"@{deployment.extra_vars}", "-e", f"@{health}"],
                deployment.env)
    assert proc.returncode != 0, _output(proc)
    recap = _recap(proc.stdout)
    assert recap["dev-1"]["failed"] == 0 and recap["dev-2"]["failed"] == 1, _output(proc)
    # The poll runs on the fog, as the fog: "ok: [dev-1 -> fog-1(127.0.0.1)]".
    assert re.search(r"TASK \[Poll hffm fleet status on the fog's broker\][^\n]*\nok: \[dev-1 -> fog-1[^\]]*\]",
                     proc.stdout), \
        _output(proc)
    assert "dev-2 is not online in the fleet status of fog fog-1" in proc.stdout, _output(proc)


def test_installed_hffm_accepts_the_configs(deployment: Deployment) -> None:
    if not deployment.config_check:
        pytest.skip("`hffm config check` does not exist yet (the roles' verify step was switched off for this run)")
    p = deployment.prefix
    for host, tier, config in (("dev-1", "edge", "device"), ("dev-2", "edge", "device"), ("fog-1", "fog", "fog"),
                               ("cloud-1", "cloud", "cloud")):
        hffm = p / host / f"opt/hffm/{tier}/venv/bin/hffm"
        proc = subprocess.run([str(hffm), "config", "check", str(p / host / f"etc/hffm/{config}.toml")],
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, _output(proc)
    assert "Check device.toml with the installed hffm" in deployment.first_run


def test_second_run_changes_nothing(deployment: Deployment) -> None:
    proc = _site(deployment.env, deployment.extra_vars)
    assert proc.returncode == 0, _output(proc)
    recap = _recap(proc.stdout)
    assert set(recap) == HOSTS
    changed = {host: c["changed"] for host, c in recap.items() if c["changed"] or c["failed"]}
    assert not changed, f"not idempotent: {changed}\n{_output(proc)}"
