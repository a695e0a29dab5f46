"""``hffm certs`` through Typer's CliRunner: init, issue, revoke, list, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from typer.testing import CliRunner

from hffm_cli.main import app
from hffm_core.errors import ConfigError

runner = CliRunner()


def certs(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["certs", *args])
    return result.exit_code, result.stdout, result.stderr


def test_init_issue_revoke_list(tmp_path: Path) -> None:
    pki = str(tmp_path / "pki")
    code, out, _ = certs("init", "--pki", pki)
    assert code == 0 and "created CA" in out
    code, out, _ = certs("issue", "dev-1", "--role", "device", "--pki", pki)
    assert code == 0 and "issued device certificate 'dev-1'" in out
    assert stat.S_IMODE((tmp_path / "pki" / "issued" / "dev-1.key").stat().st_mode) == 0o600
    code, out, _ = certs("issue", "broker-fog-a", "--role", "broker", "--pki", pki, "--host", "127.0.0.2",
                         "--format", "json")
    issued = json.loads(out)
    assert code == 0 and issued["id"] == "broker-fog-a" and issued["key"].endswith("broker-fog-a.key")
    code, out, _ = certs("revoke", "dev-1", "--pki", pki)
    assert code == 0 and "revoked 'dev-1'" in out
    code, out, _ = certs("list", "--pki", pki, "--format", "json")
    rows = {row["id"]: row for row in json.loads(out)["certs"]}
    assert code == 0 and rows["dev-1"]["revoked"] and not rows["broker-fog-a"]["revoked"]
    code, out, _ = certs("list", "--pki", pki)
    assert code == 0 and "dev-1" in out and "broker-fog-a" in out


def test_errors_are_one_line_with_the_config_exit_code(tmp_path: Path) -> None:
    pki = str(tmp_path / "pki")
    code, _, err = certs("list", "--pki", pki)
    assert code == ConfigError.exit_code and err.strip().splitlines() == [
        f"hffm: error: no CA in {pki!r} (ca.pem is missing): run 'hffm certs init' first"]
    certs("init", "--pki", pki)
    for args, message in [
        (("issue", "Dev-1", "--role", "device"), "invalid certificate id 'Dev-1'"),
        (("issue", "dev-1", "--role", "admin"), "unknown role 'admin'"),
        (("revoke", "dev-1"), "no certificate with id 'dev-1'"),
        (("init",), "already holds a CA"),
    ]:
        code, _, err = certs(*args, "--pki", pki)
        assert code == ConfigError.exit_code and len(err.strip().splitlines()) == 1 and message in err, err
    code, _, err = certs("list", "--pki", pki, "--format", "xml")
    assert code == 2 and "unknown format 'xml'" in err


def test_signing_key_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hffm_cli.main import app

    runner = CliRunner()
    ok = runner.invoke(app, ["certs", "signing-key", "dev-1", "--keys", str(tmp_path / "keys")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "keys" / "dev-1.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys" / "dev-1.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    again = runner.invoke(app, ["certs", "signing-key", "dev-1", "--keys", str(tmp_path / "keys")])
    assert again.exit_code == 2 and "already exists" in again.output
    bad = runner.invoke(app, ["certs", "signing-key", "Bad Id", "--keys", str(tmp_path / "keys")])
    assert bad.exit_code == 2 and "invalid node id 'Bad Id'" in bad.output
