"""The demo: the main job of hffm, end to end on one machine."""

from hffm_lab.demo.plan import DemoOptions
from hffm_lab.demo.runner import run_demo

__all__ = ["DemoOptions", "run_demo"]
