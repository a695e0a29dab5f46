"""The auth matrix's verdicts, without brokers: only the broker's own answer is a refusal, and a failed control
case fails the whole matrix."""

from __future__ import annotations

import ssl

import pytest

from hffm_core.errors import BrokerError, TransportError
from hffm_lab.security import auth_matrix
from hffm_lab.security.auth_matrix import (
    CASES,
    connect_verdict,
    probe_verdict,
    run_cases,
)


@pytest.mark.parametrize("message", [
    "MQTT broker 127.0.0.1:1 did not accept 'authm-dev-old-0': the connection was closed before the CONNACK (EOF)",
    "MQTT broker 127.0.0.1:1 did not accept 'authm-x-0': Not authorized",
    "TLS handshake with MQTT broker 127.0.0.1:1 failed for 'authm-x-0': [SSL: TLSV1_ALERT_UNKNOWN_CA] unknown ca",
])
def test_a_broker_answer_is_a_refusal(message: str) -> None:
    assert connect_verdict(TransportError(message)).startswith("refused: ")


@pytest.mark.parametrize("message", [
    "cannot reach MQTT broker 127.0.0.1:1: [Errno 111] Connection refused (gave up after 5 attempt(s))",
    "MQTT broker 127.0.0.1:1 did not answer 'authm-x-0': no CONNACK within 3.0 s (gave up after 1 attempt(s))",
    "TLS handshake with MQTT broker 127.0.0.1:1 failed for 'authm-x-0': [SSL: CERTIFICATE_VERIFY_FAILED] bad",
])
def test_no_answer_is_an_error_not_a_refusal(message: str) -> None:
    assert connect_verdict(TransportError(message)).startswith("error: ")


@pytest.mark.parametrize(("exc", "verdict"), [
    (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), "refused"),
    (ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED]"), "refused"),
    (ConnectionResetError(104, "Connection reset by peer"), "refused"),
    (BrokerError("the broker closed the connection"), "refused"),
    (ConnectionRefusedError(111, "Connection refused"), "error"),
    (TimeoutError("timed out reading from the broker"), "error"),
    (OSError(113, "No route to host"), "error"),
    (ssl.SSLCertVerificationError(1, "certificate verify failed"), "error"),
])
def test_probe_verdicts(exc: OSError | BrokerError, verdict: str) -> None:
    assert probe_verdict(exc).split(":")[0] == verdict


def test_refused_case_fails_against_a_dead_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The old matrix passed "expired certificate is refused" on any connection error, a dead broker included."""
    def unreachable(self: object, *args: object) -> None:
        raise TransportError("cannot reach MQTT broker 127.0.0.1:1: [Errno 111] Connection refused")

    monkeypatch.setattr(auth_matrix._Matrix, "connect", unreachable)
    monkeypatch.setattr(auth_matrix, "read_sys", lambda *a, **k: (_ for _ in ()).throw(ConnectionRefusedError(111)))
    results = run_cases(lambda: auth_matrix._Matrix(_Fleet(), None, None, _Broker()))  # type: ignore[arg-type]
    assert len(results) == len(CASES) and not any(r["passed"] for r in results)
    assert results[0]["observed"].startswith("error: cannot reach")
    assert all(r["observed"].startswith("not run: the control case failed") for r in results[1:])


def test_refusals_pass_only_after_the_control_connected(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the control passing, a refused case passes on a broker answer and fails on no answer."""
    def connect(self: object, name: str, broker: object, tls: object) -> object:
        if name == "dev-1":
            return _Connected()
        if name == "dev-old":
            raise TransportError("MQTT broker x did not accept 'dev-old': the connection was closed before the CONNACK")
        raise TransportError("MQTT broker x did not answer 'dev-gone': no CONNACK within 3.0 s")

    monkeypatch.setattr(auth_matrix._Matrix, "connect", connect)
    monkeypatch.setattr(auth_matrix._Matrix, "_probe", lambda self, ctx: "refused: SSLEOFError: EOF")
    monkeypatch.setattr(auth_matrix, "_case_methods", lambda: [
        auth_matrix._Matrix.valid, auth_matrix._Matrix.expired, auth_matrix._Matrix.revoked,
        *[_fine] * (len(CASES) - 3)])
    results = run_cases(lambda: auth_matrix._Matrix(_Fleet(), None, None, _Broker()))  # type: ignore[arg-type]
    control, expired, revoked = results[:3]  # run as valid, expired, revoked (names follow CASES' order)
    assert control["passed"] and expired["passed"] and expired["observed"].startswith("refused: ")
    assert not revoked["passed"] and revoked["observed"].startswith("error: "), revoked


def _fine(matrix: object) -> tuple[str, str]:
    return "ok", "ok"


class _Broker:
    host, port = "127.0.0.1", 1


class _Fleet:
    def identity(self, name: str) -> str:
        return name


class _Connected:
    class transport:  # noqa: N801 - stands in for the _Client's transport attribute
        @staticmethod
        def close() -> None:
            return None
