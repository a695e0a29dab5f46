"""The fleet's topology (docs/topology.md): who talks to whom, over which link, at what rate and cost.

- ``model.py``: the values (:class:`Topology`, :class:`FogNode`, :class:`DeviceNode`, :class:`LinkParams`,
  :class:`Channel`) and the queries (devices of a fog, D2D groups, fog links, a link's parameters).
- ``toml_file.py``: topology files (``examples/topology.toml``): :func:`load_topology`, :func:`parse_topology`,
  :func:`dump_topology`.
- ``generate.py``: :func:`generate_topology`, the demo's layout.
- ``link_model.py``: the Shannon-rate link model and :func:`estimate` (latency and energy of measured bytes).
"""

from broker_config.topology.generate import generate_topology
from broker_config.topology.link_model import (
    LinkId,
    estimate,
    shannon_rate_bps,
    transfer,
)
from broker_config.topology.model import (
    CLOUD,
    DEFAULT_LINKS,
    LINK_KINDS,
    Channel,
    DeviceNode,
    FogNode,
    LinkParams,
    Topology,
)
from broker_config.topology.toml_file import (
    dump_topology,
    load_topology,
    parse_topology,
)

__all__ = [
    "CLOUD",
    "DEFAULT_LINKS",
    "LINK_KINDS",
    "Channel",
    "DeviceNode",
    "FogNode",
    "LinkId",
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
