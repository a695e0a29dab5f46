"""topk: keep the ``k = ceil(fraction * n)`` largest magnitudes, send their indices and values, zero the rest.

Layout (little-endian): header ``[u8 version=1][u8 index_mode][u32 k][u32 index_bytes]``, then the index bytes
(gap varints or a bitmap, whichever is smaller for this tensor, see :mod:`.indices`), then the ``k`` values in
ascending index order, coded by the value codec (``fp32``, ``fp16`` or ``int8``). What is not sent is exactly the
residual that :class:`~hffm_core.compression.error_feedback.ErrorFeedback` carries to the next round.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import numpy as np

from hffm_core.compression.base import Codec, as_buffer, check_input, decode_shape
from hffm_core.compression.fp16 import Fp16Codec
from hffm_core.compression.fp32 import Fp32Codec
from hffm_core.compression.indices import U32_MAX, decode_indices, encode_indices
from hffm_core.compression.int8 import Int8Codec, check_block
from hffm_core.errors import ConfigError, DecodeError

VERSION = 1
HEADER = struct.Struct("<BBII")
VALUE_CODECS: dict[str, type[Codec]] = {"fp32": Fp32Codec, "fp16": Fp16Codec, "int8": Int8Codec}


class TopKCodec(Codec):
    """Magnitude top-k sparsification with compact indices and a dense value codec for the kept values."""

    name = "topk"
    defaults = {"fraction": 0.01, "values": "fp32", "block": 256}

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        # The decimal fraction as written (0.01 is 1/100), so ceil(0.01 * 700) is 7, not 8.
        self._fraction = Fraction(repr(self.params["fraction"]))
        values = str(self.params["values"])
        self._values = VALUE_CODECS[values]({"block": self.params["block"]} if values == "int8" else {})

    def validate(self) -> None:
        fraction = self.params["fraction"]
        if not isinstance(fraction, float) or not 0.0 < fraction <= 1.0:
            raise ConfigError(f"codec {self.name!r}: parameter 'fraction' must be in (0, 1], got {fraction!r}")
        values = self.params["values"]
        if values not in VALUE_CODECS:
            raise ConfigError(f"codec {self.name!r}: unknown value codec {values!r}; expected one of "
                              f"{sorted(VALUE_CODECS)}")
        check_block(self.params["block"], self.name)

    def k_for(self, n: int) -> int:
        """How many elements of an ``n``-element tensor are sent: ``max(1, ceil(fraction * n))``, 0 when empty."""
        if n == 0:
            return 0
        return min(n, max(1, math.ceil(self._fraction * n)))

    def select(self, x: np.ndarray) -> np.ndarray:
        """The ascending flat indices of the ``k`` largest magnitudes of a checked float32 array (ties broken
        arbitrarily)."""
        flat = x.reshape(-1)
        k = self.k_for(flat.size)
        if k == flat.size:
            return np.arange(k, dtype=np.int64)
        chosen = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k:]
        chosen.sort()
        return chosen.astype(np.int64, copy=False)

    def encode(self, x: np.ndarray) -> bytes:
        flat = check_input(x, self.name).reshape(-1)
        if flat.size > U32_MAX:
            raise ValueError(f"codec {self.name!r}: {flat.size} elements do not fit u32 indices")
        chosen = self.select(flat)
        mode, index_bytes = encode_indices(chosen, flat.size)
        value_bytes = self._values.encode(flat[chosen])
        return HEADER.pack(VERSION, mode, chosen.size, len(index_bytes)) + index_bytes + value_bytes

    def decode(self, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
        dims, n = decode_shape(shape, self.name)
        buf = as_buffer(data, self.name)
        if len(buf) < HEADER.size:
            raise DecodeError(f"codec {self.name!r}: {len(buf)} bytes is shorter than the {HEADER.size}-byte "
                              "header")
        version, mode, k, n_index = HEADER.unpack_from(buf)
        if version != VERSION:
            raise DecodeError(f"codec {self.name!r}: unknown version {version}; expected {VERSION}")
        if k > n:
            raise DecodeError(f"codec {self.name!r}: k={k} exceeds the {n} elements of shape {dims}")
        if n_index > len(buf) - HEADER.size:
            raise DecodeError(f"codec {self.name!r}: {n_index} index bytes exceed the "
                              f"{len(buf) - HEADER.size} bytes after the header")
        values_at = HEADER.size + n_index
        indices = decode_indices(buf[HEADER.size:values_at], mode, k, n, self.name)
        try:
            values = self._values.decode(buf[values_at:], (k,))
        except DecodeError as exc:
            raise DecodeError(f"codec {self.name!r}: values: {exc}") from exc
        out = np.zeros(n, dtype=np.float32)
        out[indices] = values
        return out.reshape(dims)

    def error_bound(self, x: np.ndarray) -> float:
        flat = check_input(x, self.name).reshape(-1)
        return self._values.error_bound(flat[self.select(flat)])
