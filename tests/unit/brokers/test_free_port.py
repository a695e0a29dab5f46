"""free_port(): a loopback port for a listener started a little later, drawn where no outgoing connection's local
port can land (below the OS's ephemeral range), and one that can be bound."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from broker_config import process
from broker_config.process import free_port
from hffm_core.errors import BrokerError


def _ephemeral_low() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


@pytest.mark.skipif(not Path("/proc/sys/net/ipv4/ip_local_port_range").exists(), reason="Linux only")
def test_ports_come_from_below_the_ephemeral_range_and_can_be_bound() -> None:
    low = _ephemeral_low()
    ports = [free_port() for _ in range(20)]
    if low - process._PORT_FLOOR >= 1000:
        assert all(process._PORT_FLOOR <= p < low for p in ports), ports
    for port in ports[:3]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_seeding_random_does_not_make_two_workers_draw_alike() -> None:
    random.seed(7)
    first = [free_port() for _ in range(5)]
    random.seed(7)
    second = [free_port() for _ in range(5)]
    assert first != second  # drawn from system entropy: 5 equal draws from ~22,000 ports would be chance


def test_a_port_in_use_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        monkeypatch.setattr(process, "_below_ephemeral", lambda: (taken, taken))  # the only candidate is taken
        port = free_port()
    assert port != taken  # fell back to the OS's pick


def test_no_room_below_the_ephemeral_range_falls_back_to_the_os(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    narrow = tmp_path / "range"
    narrow.write_text("10500\t60999\n")
    monkeypatch.setattr(process, "_EPHEMERAL_RANGE", narrow)
    assert process._below_ephemeral() is None
    assert free_port() >= 1024


def test_only_loopback() -> None:
    with pytest.raises(BrokerError):
        free_port("10.0.0.1")
