"""The auth matrix on real Mosquitto: TLS cloud and fog brokers, a TLS bridge, certificates good and bad, and
topology-generated access control. Every case must pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.broker_process import find_mosquitto
from edge_runtime.errors import BrokerError
from edge_runtime.security.auth_matrix import CASES, run_auth_matrix
from edge_runtime.security.broker_tls import find_dynsec_plugin

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
    assert report["total"] == len(CASES) == 13 and report["passed"] == 13
    assert [case["name"] for case in report["cases"]] == list(CASES)
    by_name = {case["name"]: case for case in report["cases"]}
    assert by_name["device subscribe to another device's peer topic is refused (SUBACK 0x87)"]["observed"] == \
        "SUBACK 0x87"
    for name in ("same CN from another CA is refused", "expired certificate is refused",
                 "revoked certificate is refused (CRL)", "no client certificate is refused"):
        assert by_name[name]["observed"].startswith("refused: "), by_name[name]
