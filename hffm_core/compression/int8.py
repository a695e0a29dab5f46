"""int8: blockwise symmetric quantisation, one float32 scale per ``block`` elements and one int8 per element.

Layout: ``[n_blocks x float32 scale, little-endian][n x int8]`` with ``n_blocks = ceil(n / block)`` and
``scale = max|x| / 127`` over the block. Values are ``round(x / scale)`` in [-127, 127] (-128 is never produced
and is rejected), so each element is off by at most ``scale / 2`` plus float rounding.
"""

from __future__ import annotations

import numpy as np

from hffm_core.compression.base import Codec, as_buffer, check_input, decode_shape
from hffm_core.errors import ConfigError, DecodeError

QMAX = 127
# Float32 rounding in scale, divide and multiply adds < 2**-21 of a scale; subnormal scales add < 127 * 2**-149.
_REL_SLACK = 2.0**-10
_ABS_SLACK = 2.0**-140


def block_count(count: int, block: int) -> int:
    return -(-count // block)


def block_scales(values: np.ndarray, block: int) -> np.ndarray:
    """Per-block ``max|x| / 127`` as float32 for a 1-d float32 array, nudged down where ``127 * scale`` would
    overflow float32 (so a decoded value is always finite)."""
    if values.size == 0:
        return np.zeros(0, dtype=np.float32)
    peaks = np.maximum.reduceat(np.abs(values), np.arange(0, values.size, block))
    scales = peaks / np.float32(QMAX)
    for _ in range(4):
        with np.errstate(over="ignore"):
            overflow = ~np.isfinite(scales * np.float32(QMAX))
        if not overflow.any():
            break
        scales[overflow] = np.nextafter(scales[overflow], np.float32(0))
    return scales


def _per_block(values: np.ndarray, per: np.ndarray, block: int, func: np.ufunc) -> np.ndarray:
    """``func(values, per-block factor)`` for a 1-d array: full blocks by broadcasting, the short tail alone."""
    full = (values.size // block) * block
    out = np.empty(values.size, dtype=np.float32)
    if full:
        func(values[:full].reshape(-1, block), per[: full // block, None], out=out[:full].reshape(-1, block))
    if full < values.size:
        func(values[full:], per[-1], out=out[full:])
    return out


def pack_int8(values: np.ndarray, block: int) -> bytes:
    """Scales then int8 codes for a checked 1-d float32 array."""
    scales = block_scales(values, block)
    if values.size == 0:
        return b""
    safe = np.where(scales > 0, scales, np.float32(1))
    codes = np.rint(_per_block(values, safe, block, np.divide))
    np.clip(codes, -QMAX, QMAX, out=codes)
    return scales.astype("<f4", copy=False).tobytes() + codes.astype(np.int8).tobytes()


def unpack_int8(data: bytes, count: int, block: int, codec: str) -> np.ndarray:
    """``count`` values from exactly ``4 * ceil(count / block) + count`` bytes, as a new float32 1-d array.

    Raises:
        DecodeError: wrong length, a scale that is NaN, Inf or negative, a code of -128, or a decoded overflow.
    """
    n_blocks = block_count(count, block)
    expected = 4 * n_blocks + count
    if len(data) != expected:
        raise DecodeError(f"codec {codec!r}: expected {expected} bytes for {count} values in blocks of {block}, "
                          f"got {len(data)}")
    if count == 0:
        return np.zeros(0, dtype=np.float32)
    scales = np.frombuffer(data, dtype="<f4", count=n_blocks).astype(np.float32)
    if not (np.isfinite(scales) & (scales >= 0)).all():
        raise DecodeError(f"codec {codec!r}: a block scale is NaN, Inf or negative")
    codes = np.frombuffer(data, dtype=np.int8, offset=4 * n_blocks)
    if (codes < -QMAX).any():
        raise DecodeError(f"codec {codec!r}: a code is -128; codes lie in [-127, 127]")
    with np.errstate(over="ignore"):
        values = _per_block(codes.astype(np.float32), scales, block, np.multiply)
    if not np.isfinite(values).all():
        raise DecodeError(f"codec {codec!r}: a decoded value overflows float32")
    return values


def int8_error_bound(values: np.ndarray, block: int) -> float:
    """Half the largest block scale, plus float rounding slack."""
    scales = block_scales(values, block)
    if scales.size == 0:
        return 0.0
    return float(scales.max()) / 2 * (1 + _REL_SLACK) + _ABS_SLACK


def check_block(block: object, codec: str) -> None:
    """Raises ``ConfigError`` unless ``block`` is an int >= 1."""
    if not isinstance(block, int) or isinstance(block, bool) or block < 1:
        raise ConfigError(f"codec {codec!r}: parameter 'block' must be an int >= 1, got {block!r}")


class Int8Codec(Codec):
    """Blockwise int8: about 1 + 4 / block bytes per element."""

    name = "int8"
    defaults = {"block": 256}

    def validate(self) -> None:
        check_block(self.params["block"], self.name)

    @property
    def block(self) -> int:
        return int(self.params["block"])

    def encode(self, x: np.ndarray) -> bytes:
        return pack_int8(check_input(x, self.name).reshape(-1), self.block)

    def decode(self, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
        dims, count = decode_shape(shape, self.name)
        return unpack_int8(as_buffer(data, self.name), count, self.block, self.name).reshape(dims)

    def error_bound(self, x: np.ndarray) -> float:
        return int8_error_bound(check_input(x, self.name).reshape(-1), self.block)
