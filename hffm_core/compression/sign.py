"""sign: 1-bit signs with one float32 magnitude per block, optionally on a seeded random subset of the elements.

Why: local training with Adam moves nearly every coordinate by a similar amount, so a module delta is dense and
flat (measured on M3T-Bench with minilm: the top 1% of coordinates hold ~4% of the energy, while sign x mean
magnitude keeps a cosine of ~0.875). Top-k throws most of such a delta away; a sign code keeps its direction.

With ``fraction`` < 1 only ``k = ceil(fraction * n)`` elements are sent, chosen by a random permutation seeded
with ``seed``; the subset costs no index bytes because the receiver draws the same permutation from the seed in
the message's codec parameters. Senders must use a fresh seed per message (see ``module_codec.pack``) so every
coordinate is reached; error feedback carries what was not sent.

Layout: ``[k_blocks x float32 magnitude][ceil(k / 8) bytes of sign bits, 1 = positive]``, with
``k_blocks = ceil(k / block)`` over the sent elements in subset order. Magnitude = mean |x| of the block.
"""

from __future__ import annotations

import math

import numpy as np

from hffm_core.compression.base import Codec, as_buffer, check_input, decode_shape
from hffm_core.errors import ConfigError, DecodeError


def subset(n: int, fraction: float, seed: int) -> np.ndarray:
    """The indices sent for an ``n``-element tensor (all of them, in order, when ``fraction`` is 1)."""
    if fraction >= 1.0:
        return np.arange(n)
    k = min(n, math.ceil(fraction * n))
    return np.sort(np.random.default_rng(seed).permutation(n)[:k])


class SignCodec(Codec):
    name = "sign"
    defaults = {"fraction": 1.0, "block": 4096, "seed": 0}

    def validate(self) -> None:
        fraction, block, seed = self.params["fraction"], self.params["block"], self.params["seed"]
        if not (isinstance(fraction, float) and 0.0 < fraction <= 1.0):
            raise ConfigError(f"codec 'sign': fraction must be in (0, 1], got {fraction!r}")
        if not (isinstance(block, int) and 1 <= block <= 1 << 24):
            raise ConfigError(f"codec 'sign': block must be in [1, 2**24], got {block!r}")
        if not (isinstance(seed, int) and 0 <= seed < 1 << 63):
            raise ConfigError(f"codec 'sign': seed must be in [0, 2**63), got {seed!r}")

    @property
    def draws_subset(self) -> bool:
        return float(self.params["fraction"]) < 1.0

    def _parts(self, n: int) -> tuple[np.ndarray, int, int]:
        idx = subset(n, float(self.params["fraction"]), int(self.params["seed"]))
        block = int(self.params["block"])
        return idx, block, -(-idx.size // block)

    def encode(self, x: np.ndarray) -> bytes:
        flat = check_input(x, self.name).ravel()
        idx, block, n_blocks = self._parts(flat.size)
        vals = flat[idx]
        if vals.size == 0:
            return b""
        mags = np.add.reduceat(np.abs(vals).astype(np.float64), np.arange(0, vals.size, block))
        counts = np.diff(np.append(np.arange(0, vals.size, block), vals.size))
        scales = (mags / counts).astype("<f4")
        return scales.tobytes() + np.packbits(vals >= 0).tobytes()

    def decode(self, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
        dims, n = decode_shape(shape, self.name)
        buf = as_buffer(data, self.name)
        idx, block, n_blocks = self._parts(n)
        need = 4 * n_blocks + -(-idx.size // 8)
        if len(buf) != need:
            raise DecodeError(f"codec 'sign': {len(buf)} bytes for {idx.size} sent elements; expected {need}")
        out = np.zeros(n, dtype=np.float32)
        if idx.size == 0:
            return out.reshape(dims)
        scales = np.frombuffer(buf, dtype="<f4", count=n_blocks)
        if not np.isfinite(scales).all() or (scales < 0).any():
            raise DecodeError("codec 'sign': a block magnitude is negative, NaN or Inf")
        bits = np.unpackbits(np.frombuffer(buf, dtype=np.uint8, offset=4 * n_blocks))
        if bits[idx.size:].any():
            raise DecodeError("codec 'sign': padding bits after the last sign are set")
        signs = np.where(bits[: idx.size] == 1, np.float32(1), np.float32(-1))
        out[idx] = signs * np.repeat(scales, block)[: idx.size]
        return out.reshape(dims)

    def error_bound(self, x: np.ndarray) -> float:
        # |x - s * sign(x)| <= max(|x|, s) and s (a block mean of |x|) <= max |x|; unsent elements err by |x|.
        return float(np.abs(x).max()) if x.size else 0.0
