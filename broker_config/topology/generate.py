"""The demo's layout as a :class:`~broker_config.topology.model.Topology`, without a file."""

from __future__ import annotations

from itertools import pairwise

from broker_config.topology.model import (
    DEFAULT_LINKS,
    Channel,
    DeviceNode,
    FogNode,
    Topology,
)
from hffm_core.errors import TopologyError

__all__ = ["generate_topology"]


def generate_topology(
    fogs: int,
    devices_per_fog: int,
    *,
    d2d_group_size: int = 0,
    fog_ring: bool = False,
    fleet: str = "demo",
    agg_every: int | None = None,
    name: str = "",
) -> Topology:
    """``fogs`` fogs ``fog-1`` .. ``fog-F``, each with devices ``fog-{f}-dev-1`` .. ``fog-{f}-dev-N`` (the ids of
    ``hffm_lab.demo.plan.fleet_ids``), every link at its kind's default.

    With ``d2d_group_size`` k >= 2, the devices of each fog, in order, form groups of k (the last one may be
    smaller; a last group of one device has no link), each linked as a chain: dev-1 - dev-2 - ... - dev-k. 0 or 1
    means no D2D link. With ``fog_ring``, fog i is linked to fog i+1, and the last fog to the first when there are
    more than two fogs. ``agg_every`` sets every fog's E_agg (None: the job's value).

    Raises:
        TopologyError: fewer than one fog or one device per fog, a negative group size, or a bad fleet name or
            ``agg_every``.
    """
    for what, value, low in (("fogs", fogs, 1), ("devices_per_fog", devices_per_fog, 1),
                             ("d2d_group_size", d2d_group_size, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise TopologyError(f"{what} must be an integer >= {low}, got {value!r}")
    fog_ids = [f"fog-{f}" for f in range(1, fogs + 1)]
    fog_edges = [(fog_ids[i], fog_ids[i + 1]) for i in range(fogs - 1)] if fog_ring else []
    if fog_ring and fogs > 2:
        fog_edges.append((fog_ids[-1], fog_ids[0]))
    device_edges = []
    members: dict[str, list[str]] = {}
    for fog in fog_ids:
        devices = [f"{fog}-dev-{d}" for d in range(1, devices_per_fog + 1)]
        members[fog] = devices
        if d2d_group_size >= 2:
            for start in range(0, devices_per_fog, d2d_group_size):
                group = devices[start:start + d2d_group_size]
                device_edges += list(pairwise(group))
    neighbours = _neighbour_map([*fog_edges, *device_edges])
    defaults = dict(DEFAULT_LINKS)
    fog_nodes = {fog: FogNode(id=fog, neighbours=neighbours.get(fog, ()), agg_every=agg_every,
                              link=defaults["fog_cloud"]) for fog in fog_ids}
    device_nodes = {dev: DeviceNode(id=dev, fog=fog, neighbours=neighbours.get(dev, ()), link=defaults["device_fog"],
                                    d2d_link=defaults["device_device"])
                    for fog in fog_ids for dev in members[fog]}
    return Topology(fleet=fleet, fogs=fog_nodes, devices=device_nodes, channel=Channel(), defaults=defaults,
                    name=name)


def _neighbour_map(edges: list[tuple[str, str]]) -> dict[str, tuple[str, ...]]:
    """Undirected edges -> each node's sorted neighbours (both sides, as the file reader stores them)."""
    found: dict[str, set[str]] = {}
    for a, b in edges:
        found.setdefault(a, set()).add(b)
        found.setdefault(b, set()).add(a)
    return {node: tuple(sorted(others)) for node, others in found.items()}
