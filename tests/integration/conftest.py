"""Fixtures for integration tests: real Mosquitto processes on free loopback ports, one shared small job."""

from hffm_testing import brokers, job  # noqa: F401  (fixtures)
