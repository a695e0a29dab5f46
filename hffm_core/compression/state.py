"""Encode and decode a whole module state (name -> float32 tensor) with one codec."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hffm_core.compression.base import Codec
from hffm_core.errors import DecodeError


def encode_state(state: Mapping[str, np.ndarray], codec: Codec) -> dict[str, bytes]:
    """Each tensor encoded by ``codec``, names sorted. Raises ``ValueError`` for a non-finite or non-float32 one."""
    return {name: codec.encode(state[name]) for name in sorted(state)}


def decode_state(encoded: Mapping[str, bytes], shapes: Mapping[str, tuple[int, ...]],
                 codec: Codec) -> dict[str, np.ndarray]:
    """Decode each tensor to its shape, names sorted.

    Raises:
        DecodeError: the names of ``encoded`` and ``shapes`` differ, or a payload is malformed.
    """
    if set(encoded) != set(shapes):
        missing = sorted(set(shapes) - set(encoded))
        extra = sorted(set(encoded) - set(shapes))
        raise DecodeError(f"encoded state does not match the expected tensors: missing {missing}, extra {extra}")
    return {name: codec.decode(encoded[name], shapes[name]) for name in sorted(encoded)}
