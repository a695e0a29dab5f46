"""Local training and evaluation of one task's modules on a device (or the cloud)."""

from edge_runtime.training.local import evaluate, train_task

__all__ = ["evaluate", "train_task"]
