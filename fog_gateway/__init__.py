"""Fog gateway: per-module aggregation among the holders of a module, beside a Mosquitto broker."""
