"""The demo: the main job of hffm, end to end on one machine."""

from edge_runtime.demo.plan import DemoOptions
from edge_runtime.demo.runner import run_demo

__all__ = ["DemoOptions", "run_demo"]
