"""Simulated fleets (``hffm sim``): many virtual devices per process, built from the real device-side code, against
real ``hffm fog run`` and ``hffm cloud run`` processes over real Mosquitto brokers (docs/scaling.md)."""

from hffm_lab.sim.faults import Fault, FaultRates, draw_faults
from hffm_lab.sim.plan import SimOptions
from hffm_lab.sim.runner import run_sim

__all__ = ["Fault", "FaultRates", "SimOptions", "draw_faults", "run_sim"]
