"""Module states and deltas <-> the tensor fields of module messages, through a codec.

The ``fp32`` codec travels as raw, self-describing :class:`TensorBlob`\\ s. Every other codec encodes the whole
module as ONE flat vector (tensors in name order) in a single :class:`EncodedTensor`: per-tensor names and headers
would otherwise outweigh a sparse payload, and top-k then selects across the whole module. The receiver splits the
vector with the layout (names and shapes) of the module it already holds. :func:`pack` also returns exactly what the receiver will decode, so
a sender can track the receiver's view (downlink) or keep the error-feedback residual (uplink).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from hffm_core.compression.base import Codec
from hffm_core.compression.error_feedback import ErrorFeedback
from hffm_core.errors import ConfigError, DecodeError
from hffm_core.protocol import (
    RAW_CODEC,
    EncodedTensor,
    TensorBlob,
    blobs_from_state,
    state_from_blobs,
    tensors_sha256,
)

State = dict[str, np.ndarray]
FLAT = "module"
log = logging.getLogger(__name__)


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
         stream: str = "", seed: int | None = None) -> tuple[Packed, State]:
    """Encode ``state`` (a module state or delta) with ``codec``.

    With ``feedback``, the residual of ``stream`` is added before encoding and what was not sent is kept for the
    next call. ``seed`` replaces the ``seed`` parameter of codecs that draw a random subset (a sender passes a
    fresh one per message, so successive messages reach different coordinates); a codec that sends every element
    keeps its own, so the message carries no seed it would not use. Returns the message fields and
    the arrays the receiver will decode.
    """
    if seed is not None and codec.draws_subset:
        codec = type(codec)({**codec.params, "seed": seed & ((1 << 63) - 1)})
    arrays = {}
    for name, arr in state.items():
        if arr.dtype != np.float32:
            raise ValueError(f"tensor {name!r}: modules are float32, got {arr.dtype}")
        arrays[name] = np.asarray(arr, order="C")  # keeps 0-d arrays 0-d
    if codec.name == RAW_CODEC:
        blobs = blobs_from_state(arrays)
        return Packed(RAW_CODEC, {}, blobs, (), tensors_sha256(blobs)), {n: a.copy() for n, a in arrays.items()}
    names = sorted(arrays)
    codec = codec.with_layout([(n, arrays[n].shape) for n in names])
    flat = {FLAT: np.concatenate([arrays[n].ravel() for n in names]) if names else np.zeros(0, np.float32)}
    if feedback is not None:
        try:
            data, sent_flat = feedback.compress(stream, flat, codec)
        except ValueError as exc:  # a residual left by another module layout (e.g. a changed lora_r): start over
            log.warning("error feedback for %s reset: %s", stream, exc)
            feedback.reset(stream)
            data, sent_flat = feedback.compress(stream, flat, codec)
    else:
        data = {FLAT: codec.encode(flat[FLAT])}
        sent_flat = {FLAT: codec.decode(data[FLAT], flat[FLAT].shape)}
    encoded = (EncodedTensor(name=FLAT, shape=(int(flat[FLAT].size),), data=data[FLAT]),)
    sent = split(sent_flat[FLAT], {n: arrays[n].shape for n in names})
    return Packed(codec.name, codec.wire_params, (), encoded, tensors_sha256((), encoded)), sent


def split(flat: np.ndarray, layout: Mapping[str, tuple[int, ...]]) -> State:
    """Cut a flat vector into the tensors of ``layout`` (in name order). Raises ``DecodeError`` on a size mismatch."""
    sizes = {n: int(np.prod(layout[n], dtype=np.int64)) for n in sorted(layout)}
    if flat.size != sum(sizes.values()):
        raise DecodeError(f"encoded module has {flat.size} values; the module's layout needs {sum(sizes.values())}")
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = flat[start:start + size].reshape(layout[name]).copy()
        start += size
    return out


def layout_of(state: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {n: tuple(a.shape) for n, a in state.items()}


def unpack(message: ModuleTensors, layout: Mapping[str, tuple[int, ...]] | None) -> State:
    """Decode a module message's tensors into float32 arrays; ``layout`` (the receiver's view of the module) is
    needed for encoded (non-fp32) messages.

    Raises:
        DecodeError: unknown codec or parameters, malformed encoded data, NaN/Inf, duplicate names, a flat module
            whose size does not match ``layout``, or an encoded message where no layout is known.
    """
    from hffm_core.compression import make_codec

    if message.codec == RAW_CODEC:
        return state_from_blobs(message.tensors)
    try:
        codec = make_codec(message.codec, message.codec_params)
    except ConfigError as exc:
        raise DecodeError(str(exc)) from None
    if len(message.encoded) != 1 or message.encoded[0].name != FLAT or len(message.encoded[0].shape) != 1:
        raise DecodeError(f"an encoded module is one flat tensor named {FLAT!r}")
    if layout is None:
        raise DecodeError("an encoded module arrived for a module whose layout is not known here")
    enc = message.encoded[0]
    codec = codec.with_layout([(n, tuple(layout[n])) for n in sorted(layout)])
    return split(codec.decode(enc.data, enc.shape), layout)


def same_layout(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    """True when both states have the same tensor names and shapes."""
    return {n: x.shape for n, x in a.items()} == {n: x.shape for n, x in b.items()}
