"""Error feedback: what a lossy codec did not send this round is added to the next round's delta.

The memory is keyed by ``(stream, tensor name)`` (a stream is one module's uplink, e.g. ``"adapter:imu:activity"``; ``module_codec.pack`` codes a module as one flat tensor named ``"module"``).
After any number of rounds, the sum of what was transmitted plus the residual equals the sum of the true deltas,
so top-k and quantisation errors are delayed, never lost. The memory persists to one ``.npz`` file (no pickle),
written atomically, so it survives restarts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from hffm_core.atomic import write_npz
from hffm_core.compression.base import Codec, check_input
from hffm_core.errors import DataError, DecodeError

FORMAT = "hffm-residuals"
FORMAT_VERSION = 1
_MANIFEST = "manifest"


class ErrorFeedback:
    """Residual memory for error-feedback compression of module deltas."""

    def __init__(self) -> None:
        self._residuals: dict[tuple[str, str], np.ndarray] = {}

    def compress(self, stream: str, delta: Mapping[str, np.ndarray],
                 codec: Codec) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
        """Encode ``delta + residual`` per tensor; keep what was not transmitted as the new residual.

        Returns ``(encoded bytes per name, decoded transmitted array per name)``, names sorted. The memory is
        updated only when every tensor encodes.

        Raises:
            ValueError: a tensor is not finite float32 (from the codec), or its shape differs from the stored
                residual's (call :meth:`reset` after changing a module).
        """
        encoded: dict[str, bytes] = {}
        sent: dict[str, np.ndarray] = {}
        updated: dict[tuple[str, str], np.ndarray] = {}
        for name in sorted(delta):
            x = check_input(delta[name], codec.name)
            residual = self._residuals.get((stream, name))
            if residual is not None and residual.shape != x.shape:
                raise ValueError(f"error feedback {stream!r}/{name!r}: delta shape {x.shape} differs from "
                                 f"the residual's {residual.shape}; reset the stream after changing a module")
            # np.asarray: arithmetic on 0-d arrays yields numpy scalars, which codecs refuse.
            corrected = x if residual is None else np.asarray(x + residual)
            data = codec.encode(corrected)
            decoded = codec.decode(data, x.shape)
            encoded[name], sent[name] = data, decoded
            updated[(stream, name)] = np.asarray(corrected - decoded, dtype=np.float32)
        self._residuals.update(updated)
        return encoded, sent

    def residual(self, stream: str) -> dict[str, np.ndarray]:
        """Copies of the residuals of ``stream`` by tensor name (empty for an unknown stream)."""
        return {name: r.copy() for (s, name), r in sorted(self._residuals.items()) if s == stream}

    def streams(self) -> list[str]:
        """The streams that hold residuals, sorted."""
        return sorted({s for s, _ in self._residuals})

    def reset(self, stream: str) -> None:
        """Forget every residual of ``stream``."""
        for key in [key for key in self._residuals if key[0] == stream]:
            del self._residuals[key]

    def save(self, path: Path) -> None:
        """Write all residuals to ``path`` (an ``.npz``) atomically: a temporary file, then ``os.replace``."""
        path = Path(path)
        keys = sorted(self._residuals)
        manifest = json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "entries": [list(k) for k in keys]})
        arrays = {f"r{i}": self._residuals[key] for i, key in enumerate(keys)}
        arrays[_MANIFEST] = np.frombuffer(manifest.encode("utf-8"), dtype=np.uint8)
        write_npz(path, arrays)

    @classmethod
    def load(cls, path: Path) -> ErrorFeedback:
        """Read residuals written by :meth:`save`.

        Raises:
            DataError: ``path`` does not exist.
            DecodeError: the file is not a residual file this version wrote (corrupt, truncated, pickled data,
                a bad manifest, a missing, non-float32 or non-finite array).
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(f"residual file {str(path)!r} does not exist")
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except Exception as exc:  # numpy/zipfile raise many types for a corrupt archive
            raise DecodeError(f"residual file {str(path)!r} is not a readable .npz: {exc}") from exc
        feedback = cls()
        feedback._residuals = _residuals_from(arrays, str(path))
        return feedback


def _residuals_from(arrays: dict[str, np.ndarray], where: str) -> dict[tuple[str, str], np.ndarray]:
    """Validate the manifest and arrays of a residual file. Raises ``DecodeError``."""
    raw = arrays.pop(_MANIFEST, None)
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise DecodeError(f"residual file {where!r} has no manifest")
    try:
        manifest = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DecodeError(f"residual file {where!r}: manifest is not JSON: {exc}") from exc
    if (not isinstance(manifest, dict) or manifest.get("format") != FORMAT
            or manifest.get("version") != FORMAT_VERSION or not isinstance(manifest.get("entries"), list)):
        raise DecodeError(f"residual file {where!r}: not a {FORMAT} v{FORMAT_VERSION} manifest")
    entries = manifest["entries"]
    if not all(isinstance(e, list) and len(e) == 2 and all(isinstance(p, str) for p in e) for e in entries):
        raise DecodeError(f"residual file {where!r}: manifest entries must be [stream, name] string pairs")
    keys = [(e[0], e[1]) for e in entries]
    if len(set(keys)) != len(keys):
        raise DecodeError(f"residual file {where!r}: manifest repeats an entry")
    expected = {f"r{i}" for i in range(len(keys))}
    if set(arrays) != expected:
        raise DecodeError(f"residual file {where!r}: arrays {sorted(arrays)} do not match the manifest's "
                          f"{len(keys)} entries")
    residuals: dict[tuple[str, str], np.ndarray] = {}
    for i, key in enumerate(keys):
        array = arrays[f"r{i}"]
        if array.dtype != np.float32 or not np.isfinite(array).all():
            raise DecodeError(f"residual file {where!r}: residual {key[0]!r}/{key[1]!r} is not finite float32")
        residuals[key] = np.array(array, dtype=np.float32, order="C")  # keeps 0-d arrays 0-d
    return residuals
