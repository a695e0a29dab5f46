"""Lay a topology out on loopback: brokers, bridges and one counting proxy per link (``hffm demo --layout``).

Three layouts of the same fleet (docs/topology.md):

- ``star``: devices talk to the cloud directly. Every device connects to the cloud broker through its
  ``device_cloud`` link; one gateway named ``star`` runs beside the cloud broker (it is the cloud tier's device
  aggregator, E_agg = 1), so everything a device sends or receives crosses the cloud link.
- ``hierarchical``: each fog has its broker, bridged to the cloud broker over its ``fog_cloud`` link; devices
  connect over their ``device_fog`` link.
- ``hierarchical_d2d``: as hierarchical, plus one D2D broker per D2D group (on the group's hub, its first device;
  the other members reach it over their ``device_device`` links) for peer averaging and module relay, and the
  fog-to-fog bridges (``fog_fog`` links) that carry each fog's cluster aggregates to its neighbours.

Every client-to-broker and bridge connection that crosses a link goes through a :class:`LinkNetwork` proxy, so the
bytes per link are measured on the wire (MQTT framing, acks and keepalives included; TLS records with ``--secure``).

With a :class:`~hffm_lab.demo.secure.SecureFleet` (``hffm demo --secure``; not for ``star``) every broker, D2D
brokers included, listens with mutual TLS and its generated access control, each fog's bridge and fog-to-fog
bridges present their own certificates, and every node's config gets its ``[tls]`` and ``[signing]`` tables.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker_config.topology import CLOUD, Topology, shannon_rate_bps
from hffm_core.errors import ConfigError
from hffm_lab.network import LinkNetwork

if TYPE_CHECKING:
    from hffm_lab.demo.secure import SecureFleet

LAYOUTS = ("star", "hierarchical", "hierarchical_d2d")
STAR_FOG = "star"


@dataclass
class Layout:
    cloud_port: int
    fog_ports: dict[str, int]  # fog id -> the broker port its gateway connects to
    fog_of: dict[str, str]  # device -> fog
    device_ports: dict[str, int]  # device -> the port it connects to (its link's proxy)
    network: LinkNetwork
    topology: Topology
    node_tables: dict[str, dict[str, Any]] = field(default_factory=dict)


def start_layout(layout: str, topology: Topology, run_dir: Path, stack: ExitStack,
                 security: SecureFleet | None = None) -> Layout:
    """Start the brokers and link proxies of ``layout`` (stopped when ``stack`` closes), secured with ``security``
    when given.

    Raises:
        ConfigError: an unknown layout, or ``security`` with the star layout.
        BrokerError: a broker or bridge did not come up.
    """
    from broker_config.process import (
        MosquittoProcess,
        free_port,
        wait_for_bridge,
        wait_for_peer_bridge,
    )
    from broker_config.acl import d2d_broker_name
    from broker_config.render import (
        BridgeSpec,
        peer_bridges_for,
    )

    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; expected one of {list(LAYOUTS)}")
    if security is not None and layout == "star":
        raise ConfigError("--secure does not run the star layout (its gateway sits on the cloud broker, outside the "
                          "fleet's access control); use hierarchical or hierarchical_d2d")
    pki = security.pki if security is not None else None
    fleet = topology.fleet
    network = stack.enter_context(LinkNetwork(topology))
    cloud_port = free_port()
    cloud = stack.enter_context(MosquittoProcess(name="cloud-broker", role="cloud", port=cloud_port,
                                                 data_dir=run_dir / "brokers" / "cloud", fleet=fleet,
                                                 tls=pki.broker("cloud") if pki else None))
    cloud.start()
    devices = sorted(topology.devices)
    if layout == "star":
        ports = {d: network.add("device_cloud", d, CLOUD, cloud_port) for d in devices}
        return Layout(cloud_port=cloud_port, fog_ports={STAR_FOG: cloud_port}, fog_of=dict.fromkeys(devices, STAR_FOG),
                      device_ports=ports, network=network, topology=topology)
    d2d = layout == "hierarchical_d2d"
    fogs = sorted(topology.fogs)
    fog_ports = {f: free_port() for f in fogs}
    tables: dict[str, dict[str, Any]] = {n: dict(t) for n, t in security.node_tables.items()} if security else {}
    # Higher ids first: a fog's peer bridges go to its neighbours with a higher id, which are then already up, so each
    # bridge's first connect succeeds (broker_config/README.md).
    brokers: dict[str, Any] = {}
    for fog in reversed(fogs):
        bridge = BridgeSpec(fleet=fleet, fog=fog, cloud_host="127.0.0.1",
                            cloud_port=network.add("fog_cloud", fog, CLOUD, cloud_port),
                            tls=pki.bridge(fog) if pki else None)
        peers = []
        if d2d:
            via = {high: network.add("fog_fog", low, high, fog_ports[high])
                   for low, high in topology.fog_links() if low == fog}
            peers = peer_bridges_for(topology, fog, via, tls=pki.peer_bridge(fog) if pki and via else None)
        broker = stack.enter_context(MosquittoProcess(name=f"{fog}-broker", role="fog", port=fog_ports[fog],
                                                      data_dir=run_dir / "brokers" / fog, bridge=bridge, fleet=fleet,
                                                      peer_bridges=peers, tls=pki.broker(fog) if pki else None))
        broker.start()
        wait_for_bridge(broker)
        brokers[fog] = broker
    for broker in brokers.values():
        for peer in broker.peer_bridges:
            wait_for_peer_bridge(broker, peer.neighbour)
    device_ports = {d: network.add("device_fog", d, topology.devices[d].fog, fog_ports[topology.devices[d].fog])
                    for d in devices}
    for fog in fogs:  # a fog's own E_agg from the topology (else the cloud's)
        if topology.fogs[fog].agg_every is not None:
            tables.setdefault(fog, {})["schedule"] = {"agg_every": topology.fogs[fog].agg_every}
    if d2d:
        for fog in fogs:
            groups = topology.d2d_groups(fog)
            for group in groups:
                hub = group[0]
                port = free_port()
                name = d2d_broker_name(hub)
                stack.enter_context(MosquittoProcess(name=name, role="d2d", port=port,
                                                     data_dir=run_dir / "brokers" / name, fleet=fleet,
                                                     tls=pki.broker(name) if pki else None)).start()
                for member in group:
                    via = port if member == hub else network.add("device_device", member, hub, port)
                    tables.setdefault(member, {})["d2d"] = {"port": via, "group": list(group)}
            neighbours = sorted({b if a == fog else a for a, b in topology.fog_links() if fog in (a, b)})
            rates = {d: shannon_rate_bps(topology.link("device_fog", d, fog), topology.channel)
                     for d in topology.devices_of(fog)}
            tables.setdefault(fog, {})["d2d"] = {"groups": [list(g) for g in groups], "uplink_rate_bps": rates,
                                                 "neighbours": neighbours}
    return Layout(cloud_port=cloud_port, fog_ports=fog_ports, fog_of={d: topology.devices[d].fog for d in devices},
                  device_ports=device_ports, network=network, topology=topology, node_tables=tables)


def link_report(layout: Layout, per_round: list[dict[str, int]]) -> dict[str, Any]:
    """Measured bytes per link kind (total and per global round) and the link model's latency and energy."""
    from broker_config.topology import estimate

    counts = layout.network.counts()
    return {
        "layout_links": len(counts),
        "bytes": layout.network.counts_by_kind(),
        "bytes_per_round": per_round,
        "per_link": {"/".join(k): v for k, v in sorted(counts.items())},
        "estimate": estimate(layout.topology, counts),
    }
