"""fp16: little-endian IEEE half precision, 2 bytes per element.

Values beyond the half range are clipped to +-65504 rather than sent as Inf (which every decoder rejects), and
:meth:`Fp16Codec.error_bound` includes that clipping error. Module deltas are orders of magnitude inside the range.
"""

from __future__ import annotations

import numpy as np

from hffm_core.compression.base import Codec, as_buffer, check_input, decode_shape, unpack_floats

FP16_MAX = 65504.0
# Rounding to nearest half: at most half an ulp, i.e. |x| * 2**-11 for normal halves and 2**-25 (half the
# smallest subnormal spacing) below them.
_REL_ERROR = 2.0**-11
_ABS_ERROR = 2.0**-25


def pack_fp16(values: np.ndarray) -> bytes:
    """The little-endian float16 bytes of ``values`` (checked float32), clipped to +-``FP16_MAX``."""
    if values.size and float(np.max(np.abs(values))) > FP16_MAX:  # clip copies, so only when needed
        values = np.clip(values, -FP16_MAX, FP16_MAX)
    return values.astype("<f2").tobytes()


def fp16_error_bound(values: np.ndarray) -> float:
    """The largest error :func:`pack_fp16` then decoding may make on ``values``: the clipping error of
    the largest magnitude, or the rounding error of the largest unclipped one, whichever is larger."""
    if values.size == 0:
        return 0.0
    peak = float(np.max(np.abs(values)))
    clipped = max(peak - FP16_MAX, 0.0)
    rounded = min(peak, FP16_MAX) * _REL_ERROR + _ABS_ERROR
    return max(clipped, rounded)


class Fp16Codec(Codec):
    """Half precision: 2 bytes per element, relative error <= 2**-11 inside +-65504."""

    name = "fp16"

    def encode(self, x: np.ndarray) -> bytes:
        return pack_fp16(check_input(x, self.name))

    def decode(self, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
        dims, count = decode_shape(shape, self.name)
        return unpack_floats(as_buffer(data, self.name), count, self.name, "<f2").reshape(dims)

    def error_bound(self, x: np.ndarray) -> float:
        return fp16_error_bound(check_input(x, self.name))
