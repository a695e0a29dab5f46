"""Sorted sparse index sets as bytes: LEB128 varints of the gaps, or a little-endian bitmap (shared by sparse codecs).

Both directions are vectorised with numpy (no Python loop per index), and the decoders validate everything:
varint count, length (<= 5 bytes), canonical form (no overlong encodings), u32 range, strictly increasing
indices below ``n``; bitmap length, no bits beyond ``n``, popcount.
"""

from __future__ import annotations

import numpy as np

from hffm_core.errors import DecodeError

VARINT = 0
BITMAP = 1
MAX_VARINT_BYTES = 5  # a u32 needs at most 5 groups of 7 bits
U32_MAX = 0xFFFF_FFFF


def varint_sizes(values: np.ndarray) -> np.ndarray:
    """Bytes each value (< 2**32) takes as a LEB128 varint, as int64."""
    sizes = np.ones(values.shape, dtype=np.int64)
    for shift in (7, 14, 21, 28):
        sizes += values >= (1 << shift)
    return sizes


def varint_encode(values: np.ndarray) -> bytes:
    """LEB128 varints of non-negative values < 2**32, concatenated."""
    if values.size == 0:
        return b""
    v = values.astype(np.uint64)
    sizes = varint_sizes(v)
    starts = np.cumsum(sizes) - sizes
    out = np.zeros(int(sizes.sum()), dtype=np.uint8)
    for j in range(MAX_VARINT_BYTES):
        sel = np.flatnonzero(sizes > j)
        if sel.size == 0:
            break
        group = (v[sel] >> np.uint64(7 * j)) & np.uint64(0x7F)
        more = (sizes[sel] > j + 1).astype(np.uint64) << np.uint64(7)
        out[starts[sel] + j] = (group | more).astype(np.uint8)
    return out.tobytes()


def varint_decode(data: bytes, count: int, codec: str) -> np.ndarray:
    """Exactly ``count`` canonical LEB128 varints (each < 2**32) filling ``data``, as uint64.

    Raises:
        DecodeError: a truncated, overlong (> 5 bytes or non-canonical) or overflowing varint, or a count mismatch.
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    if count == 0 or raw.size == 0:
        if count != 0 or raw.size != 0:
            raise DecodeError(f"codec {codec!r}: {raw.size} index bytes for k={count}")
        return np.zeros(0, dtype=np.uint64)
    if raw[-1] & 0x80:
        raise DecodeError(f"codec {codec!r}: the last index varint is truncated")
    ends = np.flatnonzero(raw < 0x80)
    if ends.size != count:
        raise DecodeError(f"codec {codec!r}: index bytes hold {ends.size} varints; the header says k={count}")
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if lengths.max() > MAX_VARINT_BYTES:
        raise DecodeError(f"codec {codec!r}: an index varint is longer than {MAX_VARINT_BYTES} bytes")
    if ((lengths > 1) & (raw[ends] == 0)).any():
        raise DecodeError(f"codec {codec!r}: an index varint is overlong (ends in a zero group)")
    shifts = (np.arange(raw.size) - np.repeat(starts, lengths)) * 7
    groups = (raw & 0x7F).astype(np.uint64) << shifts.astype(np.uint64)
    values = np.add.reduceat(groups, starts)
    if (values > U32_MAX).any():
        raise DecodeError(f"codec {codec!r}: an index varint overflows 32 bits")
    return values


def bitmap_encode(indices: np.ndarray, n: int) -> bytes:
    """``ceil(n / 8)`` bytes with bit ``i % 8`` of byte ``i // 8`` set for each index ``i``."""
    bits = np.zeros(-(-n // 8) * 8, dtype=np.uint8)
    bits[indices] = 1
    return np.packbits(bits, bitorder="little").tobytes()


def bitmap_decode(data: bytes, count: int, n: int, codec: str) -> np.ndarray:
    """The ascending indices of a bitmap of exactly ``ceil(n / 8)`` bytes holding exactly ``count`` set bits.

    Raises:
        DecodeError: wrong length, bits set at or beyond ``n``, or a popcount other than ``count``.
    """
    expected = -(-n // 8)
    if len(data) != expected:
        raise DecodeError(f"codec {codec!r}: bitmap of {len(data)} bytes for {n} elements; expected {expected}")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    if bits[n:].any():
        raise DecodeError(f"codec {codec!r}: bitmap sets bits beyond {n} elements")
    indices = np.flatnonzero(bits)
    if indices.size != count:
        raise DecodeError(f"codec {codec!r}: bitmap holds {indices.size} indices; the header says k={count}")
    return indices


def encode_indices(indices: np.ndarray, n: int) -> tuple[int, bytes]:
    """``(mode, bytes)`` for strictly increasing ``indices`` below ``n``: gap varints or a bitmap, the smaller
    (varints on a tie)."""
    gaps = np.diff(indices, prepend=0)
    if -(-n // 8) < int(varint_sizes(gaps).sum()):
        return BITMAP, bitmap_encode(indices, n)
    return VARINT, varint_encode(gaps)


def decode_indices(data: bytes, mode: int, count: int, n: int, codec: str) -> np.ndarray:
    """Exactly ``count`` strictly increasing int64 indices below ``n``.

    Raises:
        DecodeError: an unknown mode, or any malformed varint or bitmap (see the two decoders), a repeated or
            decreasing index, or an index >= ``n``.
    """
    if mode == BITMAP:
        return bitmap_decode(data, count, n, codec)
    if mode != VARINT:
        raise DecodeError(f"codec {codec!r}: unknown index mode {mode}; expected {VARINT} or {BITMAP}")
    gaps = varint_decode(data, count, codec)
    if gaps.size > 1 and not gaps[1:].all():
        raise DecodeError(f"codec {codec!r}: indices are not strictly increasing (a zero gap)")
    indices = np.cumsum(gaps, dtype=np.uint64)
    if indices.size and int(indices[-1]) >= n:
        raise DecodeError(f"codec {codec!r}: index {int(indices[-1])} is out of range for {n} elements")
    return indices.astype(np.int64)
