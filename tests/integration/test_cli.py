"""The hffm CLI: config errors end with one clear line and the documented exit code, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hffm_core.errors import ALL_ERRORS, ConfigError, DataError, TransportError


def _hffm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hffm_cli.main", *args], capture_output=True, text=True,
                          timeout=120)


def test_every_error_has_a_distinct_exit_code_and_help() -> None:
    codes = [e.exit_code for e in ALL_ERRORS]
    assert len(set(codes)) == len(codes)
    assert all(e.help and e.help != ALL_ERRORS[0].help for e in ALL_ERRORS[1:])


@pytest.mark.parametrize(
    ("tier", "text", "code", "match"),
    [
        ("edge", "[device]\nid = 'x'\n", ConfigError.exit_code, "missing key"),
        ("fog", "[fog]\nid = 'f'\nfleet = 'a'\ndevices = ['d']\nextra = 1\n", ConfigError.exit_code, "unknown key"),
        ("cloud", "not toml [", ConfigError.exit_code, "invalid TOML"),
        ("edge", "[device]\nid='d'\nfleet='a'\nfog='f'\nmodalities=['image']\ntasks=['digit']\n"
                 "[data.digit]\ntrain='missing.npz'\n", DataError.exit_code, "missing.npz"),
        ("fog", "[fog]\nid = 'f'\nfleet = 'a'\ndevices = ['d']\n[broker]\nport = 1\nconnect_timeout_s = 2\n", TransportError.exit_code,
         "cannot reach MQTT broker"),
    ],
)
def test_bad_configs_give_one_line_and_exit_code(tmp_path: Path, tier: str, text: str, code: int, match: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    result = _hffm(tier, "run", "--config", str(cfg))
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("hffm: error:")]
    assert len(errors) == 1 and match in errors[0], result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    result = _hffm("cloud", "run", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == ConfigError.exit_code
    assert "cannot read config" in result.stderr and "Traceback" not in result.stderr
