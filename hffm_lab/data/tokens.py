"""Raw samples -> fixed-shape tokens, one rule per modality.

The rules are deterministic and hold no fitted statistics, so a device converting its own sensor data gets exactly
the tokens the bench gives for the same raw sample, and nothing from a test split can leak into them:

- ``inertial``: ``(6, T)`` series, resampled to 100 steps if ``T != 100``, cut into 10 non-overlapping patches of
  10 steps; a token is one patch flattened step-major (``step0: ch0..ch5, step1: ch0..ch5, ...``). Values are
  kept in their sensor units (BasicMotions: std 2-7, |max| about 35).
- ``power``: ``(T,)`` or ``(1, T)`` series, resampled to 128 steps, z-normalised per series (a constant series
  becomes zeros), cut into 16 tokens of 8 consecutive steps.
- ``speech``: ``(12, T)`` LPC cepstra, resampled to 16 frames; a token is one frame's 12 coefficients times the
  fixed global scale :data:`SPEECH_SCALE`.
- ``image``: ``(8, 8)`` or ``(64,)`` pixels in ``[0, 16]`` (scikit-learn digits), one token per pixel row (8 tokens
  of 8 pixels), divided by 16. (Sixteen 2x2-patch tokens were tried first: a frozen MiniLM with that input stayed
  near chance for 6 epochs, while row tokens reach 0.86 after 4 epochs on a third of the data.)

Resampling is linear interpolation along time, per channel, with both end points kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from hffm_core.errors import DataError
from hffm_model.spec import modality_spec

INERTIAL_STEPS = 100
POWER_STEPS = 128
SPEECH_FRAMES = 16
# LPC cepstra are O(0.1-1) (JapaneseVowels: overall std 0.42); one fixed factor brings them to O(1) without fitting
# anything to a split.
SPEECH_SCALE = 2.5
IMAGE_MAX = 16.0
_ZERO_STD = 1e-8

# modality -> (channels, minimum length); images are checked as (8, 8) instead.
_SERIES_LAYOUT = {"inertial": (6, 2), "power": (1, 2), "speech": (12, 2)}


def resample(series: np.ndarray, length: int) -> np.ndarray:
    """Linearly resample a ``(C, T)`` array along its last axis to ``(C, length)``; ``T >= 2``."""
    t = series.shape[-1]
    if t == length:
        return series
    pos = np.linspace(0.0, t - 1.0, length)
    lo = np.minimum(np.floor(pos).astype(np.int64), t - 2)
    w = pos - lo
    out: np.ndarray = series[:, lo] * (1.0 - w) + series[:, lo + 1] * w
    return out


def _inertial(s: np.ndarray) -> np.ndarray:
    r = resample(s, INERTIAL_STEPS)
    # (channel, patch, step) -> (patch, step, channel): a token is one patch, step-major.
    return r.reshape(6, 10, 10).transpose(1, 2, 0).reshape(10, 60)


def _power(s: np.ndarray) -> np.ndarray:
    r = resample(s, POWER_STEPS)[0]
    centred: np.ndarray = r - r.mean()
    std = float(centred.std())
    if std > _ZERO_STD:
        centred = centred / std
    return centred.reshape(16, 8)


def _speech(s: np.ndarray) -> np.ndarray:
    return resample(s, SPEECH_FRAMES).T * SPEECH_SCALE


def _image(s: np.ndarray) -> np.ndarray:
    return s.reshape(8, 8) / IMAGE_MAX


_CONVERTERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "inertial": _inertial,
    "power": _power,
    "speech": _speech,
    "image": _image,
}


def to_tokens(modality: str, raw: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """Convert raw samples of ``modality`` to tokens of shape ``(N, n_tokens, token_dim)``, float32.

    ``raw`` is a batch: an array with the sample axis first, or a list of per-sample arrays (series of different
    lengths). Accepted sample shapes: inertial ``(6, T)``; power ``(T,)`` or ``(1, T)``; speech ``(12, T)``; image
    ``(8, 8)`` or ``(64,)``. Series need ``T >= 2``. See the module docstring for each rule.

    Raises:
        DataError: unknown modality; empty batch; a sample that is not numeric, has the wrong shape, holds NaN or
            infinity, or (image) lies outside ``[0, 16]``. The message names the sample index and the bad value.
    """
    spec = modality_spec(modality)
    samples = _samples(modality, raw)
    convert = _CONVERTERS[modality]
    out = np.empty((len(samples), spec.n_tokens, spec.token_dim), dtype=np.float32)
    for i, sample in enumerate(samples):
        out[i] = convert(sample)
    return out


def _samples(modality: str, raw: Any) -> list[np.ndarray]:
    """Split ``raw`` into validated float64 per-sample 2-D arrays."""
    if isinstance(raw, np.ndarray) and raw.ndim == 0:
        raise DataError(f"to_tokens({modality!r}): expected a batch of samples, got a 0-d array")
    if isinstance(raw, np.ndarray) and raw.dtype != object:
        items: list[Any] = list(_as_float(modality, raw, "the batch"))
    elif isinstance(raw, (list, tuple, np.ndarray)):
        items = list(raw)
    else:
        raise DataError(f"to_tokens({modality!r}): expected an array or a list of arrays, got {type(raw).__name__}")
    if not items:
        raise DataError(f"to_tokens({modality!r}): the batch is empty")
    return [_check_sample(modality, i, _as_float(modality, item, f"sample {i}")) for i, item in enumerate(items)]


def _as_float(modality: str, value: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"dtype {arr.dtype}")
        return arr.astype(np.float64, copy=False)
    except (TypeError, ValueError) as exc:
        raise DataError(f"to_tokens({modality!r}): {what} is not a numeric array ({exc})") from None


def _check_sample(modality: str, index: int, s: np.ndarray) -> np.ndarray:
    where = f"to_tokens({modality!r}): sample {index}"
    if modality == "image":
        if s.shape == (64,):
            s = s.reshape(8, 8)
        if s.shape != (8, 8):
            raise DataError(f"{where} has shape {s.shape}; expected (8, 8) or (64,)")
    else:
        channels, min_len = _SERIES_LAYOUT[modality]
        if modality == "power" and s.ndim == 1:
            s = s[None, :]
        if s.ndim != 2 or s.shape[0] != channels or s.shape[1] < min_len:
            raise DataError(f"{where} has shape {s.shape}; expected ({channels}, T) with T >= {min_len}")
    if not np.all(np.isfinite(s)):
        bad = s[~np.isfinite(s)].flat[0]
        raise DataError(f"{where} holds a non-finite value ({bad})")
    if modality == "image" and (s.min() < 0.0 or s.max() > IMAGE_MAX):
        raise DataError(f"{where} has pixel values in [{s.min()}, {s.max()}]; expected [0, {IMAGE_MAX:g}]")
    return s
