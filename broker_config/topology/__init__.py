"""The fleet's topology (docs/topology.md): who talks to whom, over which link, at what rate and cost.

- ``model.py``: the values (:class:`Topology`, :class:`FogNode`, :class:`DeviceNode`, :class:`LinkParams`,
  :class:`Channel`) and the queries (devices of a fog, D2D groups, fog links, a link's parameters).
- ``toml_file.py``: topology files (``examples/topology.toml``): :func:`load_topology`, :func:`parse_topology`,
  :func:`dump_topology`.
- ``generate.py``: :func:`generate_topology`, the demo's layout.
- ``link_model.py``: the Shannon-rate link model and :func:`estimate` (latency and energy of measured bytes).
"""

from broker_config.topology import model, toml_file
from broker_config.topology.generate import generate_topology
from broker_config.topology.link_model import LinkId, estimate, shannon_rate_bps, transfer
from broker_config.topology.model import *  # noqa: F403 -- the value types, as model.__all__ names them
from broker_config.topology.toml_file import *  # noqa: F403 -- load, parse and dump, as toml_file.__all__ names them

__all__ = [*model.__all__, *toml_file.__all__,
           "LinkId", "estimate", "generate_topology", "shannon_rate_bps", "transfer"]
