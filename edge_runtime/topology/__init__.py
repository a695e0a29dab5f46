"""The fleet's topology (docs/topology.md): who talks to whom, over which link, at what rate and cost.

- ``model.py``: the values (:class:`Topology`, :class:`FogNode`, :class:`DeviceNode`, :class:`LinkParams`,
  :class:`Channel`) and the queries (devices of a fog, D2D groups, fog links, a link's parameters).
- ``toml_file.py``: topology files (``examples/topology.toml``): :func:`load_topology`, :func:`parse_topology`,
  :func:`dump_topology`.
- ``generate.py``: :func:`generate_topology`, the demo's layout.
- ``link_model.py``: the Shannon-rate link model and :func:`estimate` (latency and energy of measured bytes).
- ``network.py``: :class:`LinkNetwork`, one counting TCP proxy per link.
"""

from edge_runtime.topology.generate import generate_topology
from edge_runtime.topology.link_model import (
    LinkId,
    estimate,
    shannon_rate_bps,
    transfer,
)
from edge_runtime.topology.model import (
    CLOUD,
    DEFAULT_LINKS,
    LINK_KINDS,
    Channel,
    DeviceNode,
    FogNode,
    LinkParams,
    Topology,
)
from edge_runtime.topology.network import LinkNetwork
from edge_runtime.topology.toml_file import dump_topology, load_topology, parse_topology

__all__ = [
    "CLOUD",
    "DEFAULT_LINKS",
    "LINK_KINDS",
    "Channel",
    "DeviceNode",
    "FogNode",
    "LinkId",
    "LinkNetwork",
    "LinkParams",
    "Topology",
    "dump_topology",
    "estimate",
    "generate_topology",
    "load_topology",
    "parse_topology",
    "shannon_rate_bps",
    "transfer",
]
