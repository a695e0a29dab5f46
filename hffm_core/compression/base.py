"""The codec interface: one lossy or lossless encoding of a float32 tensor, one codec per file.

A codec turns a float32 array into bytes and back. Its name and parameters travel in the message envelope
(``codec``, ``codec_params``); the decoder validates everything it reads (sizes, counts, index ranges, finiteness)
and raises :class:`DecodeError` for a malformed payload. Codecs are stateless: error feedback lives in
:mod:`hffm_core.compression.error_feedback`.
"""

from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from hffm_core.errors import ConfigError, DecodeError

ParamValue = int | float | str

# A decoder allocates prod(shape) floats before it scatters a sparse payload, so the shape (which travels beside
# the payload) is capped: 2**28 float32 is 1 GiB, far above any module hffm ships.
MAX_ELEMENTS = 1 << 28
MAX_DIMS = 32


class Codec(ABC):
    """Encode/decode one float32 tensor. Subclasses declare ``name`` and ``defaults`` (every accepted parameter)."""

    name: ClassVar[str] = ""
    defaults: ClassVar[Mapping[str, ParamValue]] = {}
    lossless: ClassVar[bool] = False

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ConfigError(f"codec {self.name!r}: unknown parameter(s) {unknown}; expected some of "
                              f"{sorted(self.defaults)}")
        merged: dict[str, ParamValue] = dict(self.defaults)
        for key, value in params.items():
            default = self.defaults[key]
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not type(default):
                raise ConfigError(f"codec {self.name!r}: parameter {key!r} must be {type(default).__name__}, "
                                  f"got {value!r}")
            merged[key] = value
        self.params: dict[str, ParamValue] = merged
        self.validate()

    def validate(self) -> None:
        """Check parameter values. Raises ``ConfigError`` naming the bad one."""

    @abstractmethod
    def encode(self, x: np.ndarray) -> bytes:
        """Encode a finite float32 array (any shape). Raises ``ValueError`` for NaN/Inf or a non-float32 array."""

    @abstractmethod
    def decode(self, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
        """Decode bytes produced by :meth:`encode` for an array of ``shape`` into a new float32 array.

        Raises:
            DecodeError: truncated or oversized data, wrong counts, indices out of range, NaN/Inf, bad headers.
        """

    @abstractmethod
    def error_bound(self, x: np.ndarray) -> float:
        """The largest absolute per-element error ``decode(encode(x))`` may have for this ``x`` (the codec's
        stated error; 0.0 for lossless codecs). For sparsifying codecs this bounds the error on the elements that
        are sent; the elements that are not sent are exactly the residual that error feedback keeps."""

    def with_layout(self, layout: Sequence[tuple[str, tuple[int, ...]]]) -> Codec:
        """This codec for a flat vector that concatenates the tensors of ``layout`` (``(name, shape)`` pairs of a
        module, in name order; see ``module_codec``).

        Codecs that code element by element ignore the layout and return themselves; a structured codec
        (``lowrank``) returns a copy that codes each tensor by its shape (and name). Sender and receiver pass the
        same layout: the module's tensors in name order.
        """
        return self

    @property
    def draws_subset(self) -> bool:
        """Whether the codec sends a seeded random subset of the elements (then each message needs its own
        ``seed``, see ``module_codec.pack``); a codec that sends every element leaves its seed alone."""
        return False

    @property
    def wire_params(self) -> dict[str, ParamValue]:
        """The parameters a message must carry: those that differ from the defaults (the decoder fills in the rest)."""
        return {k: v for k, v in self.params.items() if v != self.defaults[k]}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"


def check_input(x: np.ndarray, codec: str) -> np.ndarray:
    """A C-contiguous float32 view of ``x``. Raises ``ValueError`` for another dtype or NaN/Inf."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise ValueError(f"codec {codec!r} encodes float32 arrays, got {getattr(x, 'dtype', type(x))}")
    if not np.isfinite(x).all():
        raise ValueError(f"codec {codec!r}: input holds NaN or Inf")
    # np.ascontiguousarray would turn a 0-d array into shape (1,); a 0-d array is always contiguous.
    return x if x.flags.c_contiguous else np.ascontiguousarray(x)


def decode_shape(shape: Any, codec: str) -> tuple[tuple[int, ...], int]:
    """``shape`` as a tuple of ints and its element count. Raises ``DecodeError`` for a negative or non-int
    dimension, more than ``MAX_DIMS`` dimensions, or more than ``MAX_ELEMENTS`` elements (or per dimension)."""
    try:
        dims = tuple(_dimension(d) for d in shape)
    except TypeError:
        raise DecodeError(f"codec {codec!r}: shape {shape!r} is not a sequence of ints") from None
    if len(dims) > MAX_DIMS:
        raise DecodeError(f"codec {codec!r}: shape {dims} has more than {MAX_DIMS} dimensions")
    if any(d < 0 or d > MAX_ELEMENTS for d in dims):
        raise DecodeError(f"codec {codec!r}: shape {dims} has a dimension outside [0, {MAX_ELEMENTS}]")
    count = math.prod(dims)
    if count > MAX_ELEMENTS:
        raise DecodeError(f"codec {codec!r}: shape {dims} has {count} elements; the limit is {MAX_ELEMENTS}")
    return dims, count


def _dimension(d: Any) -> int:
    if isinstance(d, bool):
        raise TypeError("a bool is not a dimension")
    return operator.index(d)


def unpack_floats(data: bytes, count: int, codec: str, dtype: str) -> np.ndarray:
    """``count`` little-endian floats of ``dtype`` (``"<f2"`` or ``"<f4"``) from exactly ``itemsize * count`` bytes,
    as a new float32 1-d array.

    Raises:
        DecodeError: the length is not ``itemsize * count``, or a value is NaN or Inf.
    """
    width = np.dtype(dtype).itemsize
    if len(data) != width * count:
        raise DecodeError(f"codec {codec!r}: expected {width * count} bytes for {count} float{8 * width} values, "
                          f"got {len(data)}")
    values = np.frombuffer(data, dtype=dtype).astype(np.float32)
    if not np.isfinite(values).all():
        raise DecodeError(f"codec {codec!r}: payload holds NaN or Inf")
    return values


def as_buffer(data: Any, codec: str) -> bytes:
    """``data`` (bytes, bytearray or memoryview) as bytes. Raises ``DecodeError`` for anything else."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise DecodeError(f"codec {codec!r}: payload must be bytes, got {type(data).__name__}")
