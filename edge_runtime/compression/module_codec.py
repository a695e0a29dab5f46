"""Module states and deltas <-> the tensor fields of module messages, through a codec.

The ``fp32`` codec travels as raw :class:`TensorBlob`\\ s; every other codec as :class:`EncodedTensor`\\ s whose
codec name and parameters ride in the message. :func:`pack` also returns exactly what the receiver will decode, so
a sender can track the receiver's view (downlink) or keep the error-feedback residual (uplink).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edge_runtime.compression.base import Codec
from edge_runtime.compression.error_feedback import ErrorFeedback
from edge_runtime.errors import ConfigError, DecodeError
from edge_runtime.protocol import RAW_CODEC, EncodedTensor, TensorBlob, blobs_from_state, state_from_blobs
from edge_runtime.protocol import tensors_sha256

State = dict[str, np.ndarray]


class ModuleTensors(Protocol):
    codec: str
    codec_params: dict[str, int | float | str]
    tensors: tuple[TensorBlob, ...]
    encoded: tuple[EncodedTensor, ...]


@dataclass(frozen=True)
class Packed:
    codec: str
    codec_params: dict[str, int | float | str]
    tensors: tuple[TensorBlob, ...]
    encoded: tuple[EncodedTensor, ...]
    sha256: str

    def fields(self) -> dict[str, Any]:
        """Keyword arguments for a module message constructor."""
        return {"codec": self.codec, "codec_params": dict(self.codec_params), "tensors": self.tensors,
                "encoded": self.encoded, "sha256": self.sha256}

    @property
    def nbytes(self) -> int:
        return sum(len(t.data) for t in self.tensors) + sum(len(e.data) for e in self.encoded)


def pack(state: Mapping[str, np.ndarray], codec: Codec, *, feedback: ErrorFeedback | None = None,
         stream: str = "") -> tuple[Packed, State]:
    """Encode ``state`` (a module state or delta) with ``codec``.

    With ``feedback``, the residual of ``stream`` is added before encoding and what was not sent is kept for the
    next call. Returns the message fields and the arrays the receiver will decode.
    """
    arrays = {}
    for name, arr in state.items():
        if arr.dtype != np.float32:
            raise ValueError(f"tensor {name!r}: modules are float32, got {arr.dtype}")
        arrays[name] = np.asarray(arr, order="C")  # keeps 0-d arrays 0-d
    if codec.name == RAW_CODEC:
        blobs = blobs_from_state(arrays)
        return Packed(RAW_CODEC, {}, blobs, (), tensors_sha256(blobs)), {n: a.copy() for n, a in arrays.items()}
    if feedback is not None:
        data, sent = feedback.compress(stream, arrays, codec)
    else:
        data = {n: codec.encode(a) for n, a in arrays.items()}
        sent = {n: codec.decode(data[n], a.shape) for n, a in arrays.items()}
    encoded = tuple(EncodedTensor(name=n, shape=tuple(int(d) for d in arrays[n].shape), data=data[n])
                    for n in sorted(arrays))
    return Packed(codec.name, dict(codec.params), (), encoded, tensors_sha256((), encoded)), sent


def unpack(message: ModuleTensors) -> State:
    """Decode a module message's tensors into float32 arrays.

    Raises:
        DecodeError: unknown codec or parameters, malformed encoded data, NaN/Inf, duplicate names.
    """
    from edge_runtime.compression import make_codec

    if message.codec == RAW_CODEC:
        return state_from_blobs(message.tensors)
    try:
        codec = make_codec(message.codec, message.codec_params)
    except ConfigError as exc:
        raise DecodeError(str(exc)) from None
    out: State = {}
    for enc in message.encoded:
        if enc.name in out:
            raise DecodeError(f"duplicate tensor name {enc.name!r}")
        out[enc.name] = codec.decode(enc.data, enc.shape)
    return out


def same_layout(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    """True when both states have the same tensor names and shapes."""
    return {n: x.shape for n, x in a.items()} == {n: x.shape for n, x in b.items()}
