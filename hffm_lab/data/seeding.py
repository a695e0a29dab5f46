"""Seeded random streams for the data package.

Each (seed, purpose, name) triple gets its own stream, so the split of one task does not depend on which other
tasks were loaded, nor on the order in which they were processed.
"""

from __future__ import annotations

import zlib

import numpy as np

from hffm_core.errors import DataError


def check_seed(seed: object) -> int:
    """Return ``seed`` if it is a non-negative int.

    Raises:
        DataError: ``seed`` is not an int (bools are not seeds) or is negative.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def rng_for(seed: int, *names: str) -> np.random.Generator:
    """A generator determined by ``seed`` and ``names`` alone (CRC-32 of each name; stable across runs)."""
    return np.random.default_rng([check_seed(seed), *(zlib.crc32(n.encode("utf-8")) for n in names)])
