"""Fixtures for integration tests: real Mosquitto processes on free loopback ports."""

from hffm_testing import brokers  # noqa: F401  (fixture)
