"""Config files: good ones load into frozen dataclasses; bad ones fail with a ConfigError naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.config import CloudConfig
from edge_runtime.config import DeviceConfig
from fog_gateway.config import FogConfig
from hffm_core.config import load_config

DEVICE = """
[device]
id = "dev-1"
fleet = "demo"
fog = "fog-1"
modalities = ["power"]
tasks = ["demand"]
[broker]
port = 1884
[data.demand]
train = "data/demand.npz"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_device_config_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, DEVICE), DeviceConfig)
    assert cfg.device.id == "dev-1" and cfg.broker.port == 1884 and cfg.broker.host == "127.0.0.1"
    assert cfg.model.backbone == "minilm" and cfg.training.batch_size == 32
    assert cfg.data["demand"].train == "data/demand.npz"
    assert cfg.base_dir == str(tmp_path.resolve())


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (DEVICE + "\nbogus = 1\n", r"unknown key\(s\) \['bogus'\]"),
        (DEVICE.replace('[broker]\nport = 1884', '[broker]\nport = "x"'), "broker: port: expected int"),
        (DEVICE.replace('[broker]\nport = 1884', '[broker]\nport = 70000'), "port must be in"),
        (DEVICE.replace('id = "dev-1"', 'id = "Dev 1"'), "invalid device id 'Dev 1'"),
        (DEVICE.replace('fog = "fog-1"\n', ''), r"missing key\(s\) \['fog'\]"),
        (DEVICE.replace("[device]", "[device]\ncolour = 'red'"), r"device: unknown key\(s\) \['colour'\]"),
        ("[device\n", "invalid TOML"),
    ],
)
def test_bad_device_configs_are_named(tmp_path: Path, text: str, match: str) -> None:
    from hffm_core.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, text), DeviceConfig)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    from hffm_core.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.toml", FogConfig)


def test_fog_and_cloud_configs(tmp_path: Path) -> None:
    fog = load_config(_write(tmp_path, '[fog]\nid = "fog-1"\nfleet = "demo"\ndevices = ["a", "b"]\n'), FogConfig)
    assert fog.fog.devices == ["a", "b"] and fog.fog.aggregator == "fedavg"
    cloud = load_config(_write(tmp_path, '[cloud]\nfleet = "demo"\nfogs = ["fog-1"]\nmodalities = ["image"]\n'
                                         'tasks = ["digit"]\nrounds = 3\n[eval]\ndigit = "t.npz"\n'), CloudConfig)
    assert cloud.cloud.rounds == 3 and cloud.eval == {"digit": "t.npz"}
    from hffm_core.errors import ConfigError

    with pytest.raises(ConfigError, match="rounds, agg_every and local_epochs must be >= 1"):
        load_config(_write(tmp_path, '[cloud]\nfleet = "demo"\nfogs = ["f"]\nmodalities = []\ntasks = []\n'
                                     'rounds = 0\n'), CloudConfig)


@pytest.mark.parametrize("value", ["inf", "-1.0", "0.0", "nan"])
def test_deadlines_must_be_finite_and_positive(tmp_path: Path, value: str) -> None:
    from hffm_core.errors import ConfigError

    text = f'[fog]\nid = "fog-1"\nfleet = "demo"\ndevices = ["a"]\nround_deadline_s = {value}\n'
    with pytest.raises(ConfigError, match="round_deadline_s must be a finite number of seconds > 0"):
        load_config(_write(tmp_path, text), FogConfig)
