"""fp32: the raw little-endian float32 bytes. Lossless; the baseline every other codec's ratio is measured against."""

from __future__ import annotations

import numpy as np

from hffm_core.compression.base import Codec, as_buffer, check_input, decode_shape
from hffm_core.errors import DecodeError


def pack_fp32(values: np.ndarray) -> bytes:
    """The little-endian float32 bytes of ``values`` (already checked by :func:`check_input`)."""
    return values.astype("<f4", copy=False).tobytes()


def unpack_fp32(data: bytes, count: int, codec: str) -> np.ndarray:
    """``count`` float32 values from exactly ``4 * count`` bytes, as a new 1-d array.

    Raises:
        DecodeError: the length is not ``4 * count``, or a value is NaN or Inf.
    """
    if len(data) != 4 * count:
        raise DecodeError(f"codec {codec!r}: expected {4 * count} bytes for {count} float32 values, "
                          f"got {len(data)}")
    values = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.isfinite(values).all():
        raise DecodeError(f"codec {codec!r}: payload holds NaN or Inf")
    return values


class Fp32Codec(Codec):
    """Raw float32: 4 bytes per element, decoded bit-exactly."""

    name = "fp32"
    lossless = True

    def encode(self, x: np.ndarray) -> bytes:
        return pack_fp32(check_input(x, self.name))

    def decode(self, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
        dims, count = decode_shape(shape, self.name)
        return unpack_fp32(as_buffer(data, self.name), count, self.name).reshape(dims)

    def error_bound(self, x: np.ndarray) -> float:
        check_input(x, self.name)
        return 0.0
