"""Tensors on the wire: :class:`TensorBlob` (raw bytes + dtype + shape) and :class:`EncodedTensor` (a codec's bytes),
the SHA-256 over a module's tensors, and the checks every module-carrying message runs on its tensor fields.

A module's state or delta is a tuple of blobs, one per named parameter, never pickled.
"""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np

from hffm_core.errors import DecodeError
from hffm_core.protocol.checks import check, is_number, nonneg_int, wire_type

ALLOWED_DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64")
MAX_DIMS = 8
MAX_NAME = 256
# Module messages carry raw TensorBlobs under this codec name, and EncodedTensors under any other.
RAW_CODEC = "fp32"
_CODEC_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_CODEC_PARAMS = 16
_ITEMSIZE = {d: np.dtype(d).itemsize for d in ALLOWED_DTYPES}
_DTYPE_NAME = {np.dtype(d): d for d in ALLOWED_DTYPES}  # str(dtype) is slow
_LITTLE = {d: np.dtype(d).newbyteorder("<") for d in ALLOWED_DTYPES}  # the wire's byte order


def _head_ok(name: object, shape: object) -> bool:
    """:func:`check_tensor_head`'s verdict without its messages (the common case, once per tensor)."""
    return (type(name) is str and 0 < len(name) <= MAX_NAME and type(shape) is tuple and len(shape) <= MAX_DIMS
            and all(type(d) is int and d >= 0 for d in shape))


def check_tensor_head(name: object, shape: object) -> None:
    """A tensor's name (1..256 characters) and shape (a tuple of at most :data:`MAX_DIMS` ints >= 0)."""
    if _head_ok(name, shape):
        return
    check(isinstance(name, str) and 0 < len(name) <= MAX_NAME, f"bad tensor name {name!r}")
    check(isinstance(shape, tuple), f"tensor {name!r}: shape must be a tuple")
    check(len(shape) <= MAX_DIMS, f"tensor {name!r}: more than {MAX_DIMS} dims")  # type: ignore[arg-type]
    for dim in shape:  # type: ignore[union-attr]
        nonneg_int(dim, f"tensor {name!r} shape entry")


@wire_type
class TensorBlob:
    """One named tensor: raw little-endian bytes, a dtype name and a shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def __post_init__(self) -> None:
        size = _ITEMSIZE.get(self.dtype)
        if size is not None and _head_ok(self.name, self.shape) and type(self.data) is bytes \
                and len(self.data) == math.prod(self.shape) * size:
            return  # the common case; the checks below name what is wrong
        check_tensor_head(self.name, self.shape)
        check(self.dtype in ALLOWED_DTYPES, f"tensor {self.name!r}: dtype {self.dtype!r} not in {ALLOWED_DTYPES}")
        check(isinstance(self.data, bytes), f"tensor {self.name!r}: data must be bytes")
        expected = math.prod(self.shape) * np.dtype(self.dtype).itemsize
        check(
            len(self.data) == expected,
            f"tensor {self.name!r}: {len(self.data)} data bytes, shape {self.shape} x {self.dtype} needs {expected}",
        )

    @classmethod
    def from_array(cls, name: str, array: np.ndarray) -> TensorBlob:
        arr = np.asarray(array, order="C")  # ascontiguousarray turns 0-d into (1,)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        return cls(name=name, dtype=_DTYPE_NAME.get(arr.dtype) or str(arr.dtype), shape=tuple(map(int, arr.shape)),
                   data=arr.tobytes())

    def to_array(self) -> np.ndarray:
        """A writable numpy copy. Raises ``ValueError`` when a float tensor holds NaN or Inf."""
        arr = np.frombuffer(self.data, dtype=_LITTLE[self.dtype]).reshape(self.shape).copy()
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError(f"tensor {self.name!r} holds NaN or Inf")
        return arr


@wire_type
class EncodedTensor:
    """One named float32 tensor of ``shape`` in a codec's byte layout (the codec is named by the message)."""

    name: str
    shape: tuple[int, ...]
    data: bytes

    def __post_init__(self) -> None:
        if _head_ok(self.name, self.shape) and type(self.data) is bytes \
                and len(self.data) <= 2 * 4 * math.prod(self.shape) + 64:
            return  # the common case; the checks below name what is wrong
        check_tensor_head(self.name, self.shape)
        check(isinstance(self.data, bytes), f"tensor {self.name!r}: data must be bytes")
        # No codec may expand a tensor beyond 2x its float32 size plus a small header (bounds decode work).
        limit = 2 * 4 * math.prod(self.shape) + 64
        check(len(self.data) <= limit, f"tensor {self.name!r}: {len(self.data)} encoded bytes exceed {limit}")


def tensors_sha256(tensors: tuple[TensorBlob, ...], encoded: tuple[EncodedTensor, ...] = ()) -> str:
    """SHA-256 over every raw blob's name, dtype, shape and bytes, then every encoded tensor's, in order."""
    digest = hashlib.sha256()
    parts = [(f"{b.name}|{b.dtype}|", b.shape, b.data) for b in tensors]
    parts += [(f"{e.name}|codec|", e.shape, e.data) for e in encoded]
    for head, shape, data in parts:
        # Length-prefixed framing: no two different tensor lists can produce the same byte stream.
        header = (head + ",".join(map(str, shape))).encode()
        digest.update(len(header).to_bytes(4, "little") + header + len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def blobs_from_state(state: dict[str, np.ndarray]) -> tuple[TensorBlob, ...]:
    """Blobs for a module state, sorted by name so that every tier hashes the same bytes."""
    return tuple(TensorBlob.from_array(name, state[name]) for name in sorted(state))


def state_from_blobs(tensors: tuple[TensorBlob, ...]) -> dict[str, np.ndarray]:
    """Inverse of :func:`blobs_from_state`.

    Raises:
        DecodeError: duplicate names, or a float tensor holding NaN or Inf.
    """
    out: dict[str, np.ndarray] = {}
    for blob in tensors:
        if blob.name in out:
            raise DecodeError(f"duplicate tensor name {blob.name!r}")
        try:
            out[blob.name] = blob.to_array()
        except ValueError as exc:
            raise DecodeError(str(exc)) from None
    return out


def check_codec_params(codec: object, codec_params: object) -> None:
    """A codec name (``[a-z][a-z0-9_]{0,31}``) and at most 16 parameters, each a finite int, float or str."""
    check(isinstance(codec, str) and _CODEC_NAME.fullmatch(codec) is not None, f"bad codec name {codec!r}")
    check(isinstance(codec_params, dict) and len(codec_params) <= MAX_CODEC_PARAMS, "codec_params must be a small map")
    for key, value in codec_params.items():  # type: ignore[union-attr]
        check(isinstance(key, str) and (is_number(value) or isinstance(value, str)),
              f"codec parameter {key!r} must be an int, float or str")
        check(not isinstance(value, float) or math.isfinite(value), f"codec parameter {key!r} is not finite")


def check_tensor_fields(tensors: tuple[TensorBlob, ...], encoded: tuple[EncodedTensor, ...], codec: str,
                        codec_params: dict[str, int | float | str], sha256: str) -> None:
    """The tensor fields of a module message: raw blobs under :data:`RAW_CODEC` (no parameters) or encoded tensors
    under any other codec, at least one, unique names, and ``sha256`` over them all."""
    check_codec_params(codec, codec_params)
    check(isinstance(tensors, tuple) and isinstance(encoded, tuple),
          "a module message needs at least one tensor, as a tuple")
    if codec == RAW_CODEC:
        check(len(tensors) > 0 and not encoded, f"codec {RAW_CODEC!r} carries raw tensors: needs at least one tensor")
        check(not codec_params, f"codec {RAW_CODEC!r} takes no parameters")
    else:
        check(len(encoded) > 0 and not tensors, f"codec {codec!r} carries encoded tensors: needs at least one tensor")
    names = [t.name for t in tensors] + [e.name for e in encoded]
    check(len(set(names)) == len(names), "duplicate tensor names")
    check(tensors_sha256(tensors, encoded) == sha256, "sha256 does not match the tensors")
