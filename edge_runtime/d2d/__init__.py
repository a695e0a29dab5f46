"""Device-to-device (D2D) cooperation inside a fog: peer averaging through a relay device, and module relay for a
device whose fog link is down (docs/topology.md)."""

from edge_runtime.d2d.peer_average import weighted_mean
from edge_runtime.d2d.relay import RelayDesk

__all__ = ["RelayDesk", "weighted_mean"]
