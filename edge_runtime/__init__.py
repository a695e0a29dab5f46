"""hffm edge runtime: the on-device agent and the core shared by every tier."""

__version__ = "0.1.0"
