"""fp32: the raw little-endian float32 bytes. Lossless; the baseline every other codec's ratio is measured against."""

from __future__ import annotations

import numpy as np

from hffm_core.compression.base import Codec, as_buffer, check_input, decode_shape, unpack_floats


def pack_fp32(values: np.ndarray) -> bytes:
    """The little-endian float32 bytes of ``values`` (already checked by :func:`check_input`)."""
    return values.astype("<f4", copy=False).tobytes()


class Fp32Codec(Codec):
    """Raw float32: 4 bytes per element, decoded bit-exactly."""

    name = "fp32"
    lossless = True

    def encode(self, x: np.ndarray) -> bytes:
        return pack_fp32(check_input(x, self.name))

    def decode(self, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
        dims, count = decode_shape(shape, self.name)
        return unpack_floats(as_buffer(data, self.name), count, self.name, "<f4").reshape(dims)

    def error_bound(self, x: np.ndarray) -> float:
        check_input(x, self.name)
        return 0.0
