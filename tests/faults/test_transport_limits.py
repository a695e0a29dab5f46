"""The transport learns the broker's packet limit from the CONNACK, and resumes its session when persistent."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import pytest

from broker_config.process import MosquittoProcess
from broker_config.render import BrokerLimits
from hffm_core.transport import MqttTransport
from hffm_lab.faults.proxy import LinkProxy

pytestmark = pytest.mark.integration


def _client(name: str, port: int, inbox: queue.Queue, **kwargs) -> MqttTransport:  # type: ignore[type-arg]
    transport = MqttTransport(client_id=name, host="127.0.0.1", port=port,
                              on_message=lambda t, p, _r: inbox.put((t, p)), **kwargs)
    transport.connect()
    return transport


def test_connack_maximum_packet_size_is_read(tmp_path: Path) -> None:
    with MosquittoProcess(name="c", role="cloud", data_dir=tmp_path / "c",
                          limits=BrokerLimits(max_packet_size=65_536, message_size_limit=65_536)) as broker:
        broker.start()
        client = _client("limit-probe", broker.port, queue.Queue())
        try:
            assert client.max_packet_size == 65_536
        finally:
            client.close()
        configured = MqttTransport(client_id="x", host="127.0.0.1", port=1, on_message=lambda *_: None,
                                   max_packet_size=10_000)
        assert configured.max_packet_size == 10_000  # no CONNACK yet: the configured limit


def test_persistent_session_gets_the_backlog_after_a_restart(tmp_path: Path) -> None:
    with MosquittoProcess(name="c", role="cloud", data_dir=tmp_path / "c") as broker:
        broker.start()
        inbox: queue.Queue = queue.Queue()  # type: ignore[type-arg]
        sub = _client("durable-sub", broker.port, inbox, persistent=True)
        sub.subscribe(["hffm/v1/f/fogdone/+"])
        sub.close()  # the process "restarts": its session (subscription + queue) stays on the broker
        pub = _client("pub", broker.port, queue.Queue())
        pub.publish("hffm/v1/f/fogdone/fog-a", b"while away", category="other")
        pub.close()
        again = _client("durable-sub", broker.port, inbox, persistent=True)
        try:
            assert inbox.get(timeout=10) == ("hffm/v1/f/fogdone/fog-a", b"while away")
        finally:
            again.close()


def test_link_proxy_cuts_and_restores(tmp_path: Path, slowdown: float) -> None:
    with MosquittoProcess(name="c", role="cloud", data_dir=tmp_path / "c") as broker:
        broker.start()
        proxy = LinkProxy(broker.port).start()
        client = _client("via-proxy", proxy.port, queue.Queue())
        try:
            assert client.connected
            proxy.cut()
            end = time.monotonic() + 10 * slowdown
            while client.connected and time.monotonic() < end:
                time.sleep(0.05)
            assert not client.connected
            assert not client.try_publish("hffm/v1/f/fogdone/a", b"x", category="other")
            proxy.restore()
            end = time.monotonic() + 15 * slowdown
            while not client.connected and time.monotonic() < end:
                time.sleep(0.1)
            assert client.connected and client.try_publish("hffm/v1/f/fogdone/a", b"x", category="other")
        finally:
            client.close()
            proxy.stop()


def test_a_publish_during_a_broker_restart_waits_for_the_puback(tmp_path: Path, slowdown: float) -> None:
    from hffm_core.errors import TransportError

    with MosquittoProcess(name="c", role="cloud", data_dir=tmp_path / "c") as broker:
        broker.start()
        # The reconnect backoff (1-5 s) plus the broker's start must fit in the publish's wait on this machine.
        client = MqttTransport(client_id="restart-pub", host="127.0.0.1", port=broker.port, persistent=True,
                               on_message=lambda *_: None, timeout_s=15.0 * slowdown)
        client.connect()
        try:
            broker.kill9()
            end = time.monotonic() + 10
            while client.connected and time.monotonic() < end:
                time.sleep(0.05)
            restarting = threading.Event()  # set just before the broker is started again

            def restart() -> None:
                restarting.set()
                broker.start()

            timer = threading.Timer(2.0, restart)
            timer.start()
            client.publish("hffm/v1/f/fogdone/a", b"x", category="other")  # queued by paho, sent on reconnect
            # The PUBACK came from the restarted broker: publish returned only after the restart began.
            assert restarting.is_set()
            timer.join()
            broker.kill9()
            while client.connected and time.monotonic() < end + 10:
                time.sleep(0.05)
            client.timeout_s = 1.5
            with pytest.raises(TransportError, match="no acknowledgement"):
                client.publish("hffm/v1/f/fogdone/a", b"y", category="other")
        finally:
            client.close()
