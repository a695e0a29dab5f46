"""/metrics (hffm_core/observability.py): every series a service keeps appears with the right labels after the
event that moves it, read at scrape time from a real HTTP endpoint on loopback; bad listen addresses and a
non-loopback endpoint without TLS are config errors."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import hffm_core.service as service_module
from hffm_core.errors import ConfigError
from hffm_core.observability import Gauge, MetricsServer, parse_listen
from hffm_core.protocol import (
    ModuleKey,
    ModuleUpdate,
    blobs_from_state,
    encode,
    tensors_sha256,
    topics,
)
from hffm_core.protocol.topics import Topic
from hffm_core.service import Service
from hffm_core.transport import TrafficMeter

FLEET, FOG = "fleet-1", "fog-a"
KEY = ModuleKey.head("digit")


class FakeTransport:
    def __init__(self, *, meter: TrafficMeter, **_: Any) -> None:
        self.meter, self.connected, self.host, self.port = meter, True, "127.0.0.1", 1

    def try_publish(self, topic: str, payload: bytes, *, category: str, **_: Any) -> bool:
        self.meter.add(category, len(payload))
        return True


class Fog(Service):
    role = "fog"
    fleet = FLEET

    def __init__(self) -> None:
        super().__init__(node=FOG, host="127.0.0.1", port=1)
        self.round_g = 3

    def handle(self, topic: Topic, message: Any) -> None:
        pass

    def observe_extra(self) -> list[Gauge]:
        return [Gauge(name="round", help="Current round.", values={(("scope", "global"),): self.round_g})]


@pytest.fixture(autouse=True)
def fake_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "MqttTransport", FakeTransport)


def _update(device: str) -> tuple[str, bytes]:
    tensors = blobs_from_state({"w": np.zeros(8, dtype=np.float32)})
    msg = ModuleUpdate(fleet=FLEET, sender=device, fog=FOG, key=KEY, global_round=1, cluster_round=1, base=(0, 0),
                       num_samples=3, train_loss=0.1, tensors=tensors, sha256=tensors_sha256(tensors),
                       idempotency_key=f"{FLEET}/{device}/1.1/{KEY}")
    return topics.up(FLEET, FOG, KEY, device), encode(msg)


def _scrape(server: MetricsServer) -> str:
    with urllib.request.urlopen(server.url, timeout=10) as response:  # noqa: S310 - loopback, our own server
        return response.read().decode()


def test_every_series_moves_with_its_event() -> None:
    fog = Fog()
    server = MetricsServer("127.0.0.1:0", fog.observe)
    try:
        before = _scrape(server)
        assert 'hffm_node_info{fleet="fleet-1",node="fog-a",role="fog"} 1.0' in before
        assert "hffm_broker_connected 1.0" in before and 'hffm_round{scope="global"} 3.0' in before
        assert "process_resident_memory_bytes" in before
        assert "hffm_messages_accepted_total{" not in before
        topic, payload = _update("dev-1")
        fog._enqueue(topic, payload, False)
        fog._enqueue(topic, b"\x00not msgpack", False)
        assert "hffm_inbox_depth 2.0" in _scrape(server)
        for _ in range(2):
            fog.dispatch(*fog._inbox.get()[:2])
        fog.send_ack(FOG, "dev-1", ["k"])
        after = _scrape(server)
    finally:
        server.close()
    assert 'hffm_messages_accepted_total{kind="up"} 1.0' in after
    assert 'hffm_messages_rejected_total{reason="decode"} 1.0' in after
    assert f'hffm_received_bytes_total{{kind="up"}} {float(len(payload) + 12)}' in after
    assert 'hffm_received_messages_total{kind="up"} 2.0' in after
    assert 'hffm_sent_messages_total{link="other"} 1.0' in after
    assert "hffm_inbox_depth 0.0" in after


def test_close_frees_the_port() -> None:
    fog = Fog()
    server = MetricsServer("127.0.0.1:0", fog.observe)
    port = server.port
    server.close()
    again = MetricsServer(f"127.0.0.1:{port}", fog.observe)
    again.close()


@pytest.mark.parametrize("listen", ["localhost:9100", "127.0.0.1", "127.0.0.1:x", "127.0.0.1:70000", ""])
def test_bad_listen_addresses_are_config_errors(listen: str) -> None:
    with pytest.raises(ConfigError, match="IP:PORT"):
        parse_listen(listen)


def test_off_loopback_needs_tls_or_an_explicit_insecure() -> None:
    with pytest.raises(ConfigError, match="not loopback: serving it needs mutual TLS"):
        MetricsServer("0.0.0.0:0", Fog().observe)


def test_with_a_server_certificate_only_a_scraper_of_the_fleet_ca_is_served(tmp_path: Path) -> None:
    """[metrics] cert/key: mutual TLS (here on loopback, as off it): a scraper with a certificate of the fleet CA
    reads /metrics; one without a certificate is refused during the handshake."""
    import ssl

    from broker_config.pki import Pki, init_ca, issue
    from hffm_core.security.tls import TlsSettings

    init_ca(tmp_path)
    pki = Pki(tmp_path)
    issue(tmp_path, "broker-metrics-fog-a", "broker", hosts=["127.0.0.1"])
    issue(tmp_path, "prometheus", "device")
    tls = TlsSettings(ca=pki.ca_cert, cert=pki.cert("broker-metrics-fog-a"), key=pki.key("broker-metrics-fog-a"))
    server = MetricsServer("127.0.0.1:0", Fog().observe, tls=tls)
    try:
        assert server.url.startswith("https://127.0.0.1:")
        scraper = ssl.create_default_context(cafile=str(pki.ca_cert))
        scraper.load_cert_chain(str(pki.cert("prometheus")), str(pki.key("prometheus")))
        with urllib.request.urlopen(server.url, timeout=10, context=scraper) as response:  # noqa: S310 - loopback
            assert b"hffm_node_info" in response.read()
        stranger = ssl.create_default_context(cafile=str(pki.ca_cert))
        with pytest.raises(OSError):
            with urllib.request.urlopen(server.url, timeout=10, context=stranger) as response:  # noqa: S310
                response.read()
    finally:
        server.close()
