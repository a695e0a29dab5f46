"""The auth matrix on real Mosquitto: TLS cloud, fog and D2D brokers, TLS bridges to the cloud and between fogs,
certificates good and bad, and topology-generated access control. Every case must pass."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from broker_config.broker_tls import find_dynsec_plugin
from broker_config.process import find_mosquitto, free_port
from hffm_core.errors import BrokerError
from hffm_lab.security import auth_matrix
from hffm_lab.security.auth_matrix import CASES, run_auth_matrix, run_cases

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def _need_mosquitto() -> None:
    try:
        find_mosquitto()
        find_dynsec_plugin()
    except BrokerError as exc:
        pytest.skip(str(exc))


def test_every_case_of_the_auth_matrix_passes(tmp_path: Path) -> None:
    report = run_auth_matrix(tmp_path / "authm")
    failed = [case for case in report["cases"] if not case["passed"]]
    assert not failed, failed
    assert report["total"] == len(CASES) == 24 and report["passed"] == 24 and report["control_passed"] is True
    assert [case["name"] for case in report["cases"]] == list(CASES)
    by_name = {case["name"]: case for case in report["cases"]}
    assert by_name["device subscribe to another device's peer topic is refused (SUBACK 0x87)"]["observed"] == \
        "SUBACK 0x87"
    for name in ("same CN from another CA is refused", "expired certificate is refused",
                 "revoked certificate is refused (CRL)", "no client certificate is refused"):
        assert by_name[name]["observed"].startswith("refused: "), by_name[name]


@dataclass
class _NoBroker:
    host: str
    port: int


def test_a_dead_broker_refuses_nothing(tmp_path: Path) -> None:
    """Nothing listens on the port: the real transport and probe fail to connect, and the matrix counts that as an
    error (and its control as failed), never as a refusal."""
    fleet, other_ca = auth_matrix._provision(tmp_path / "authm")
    dead = _NoBroker("127.0.0.1", free_port())
    matrix = auth_matrix._Matrix(fleet, other_ca, dead, dead)  # type: ignore[arg-type]
    try:
        for case in (matrix.expired, matrix.other_ca, matrix.no_cert, matrix.plain):
            expected, observed = case()
            assert expected == "refused" and observed.startswith("error: "), (case.__name__, observed)
    finally:
        matrix.close()
    results = run_cases(lambda: auth_matrix._Matrix(fleet, other_ca, dead, dead))  # type: ignore[arg-type]
    assert len(results) == len(CASES) and not any(r["passed"] for r in results), results[0]
    assert "cannot reach MQTT broker" in results[0]["observed"], results[0]
