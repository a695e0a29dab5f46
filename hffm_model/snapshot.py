"""A device's module states on disk: one ``.npz`` archive, never pickled, written atomically.

The agent writes a snapshot after each round; :mod:`edge_runtime.export` reads it back to export a task.

Layout of the archive:

* one array per tensor, named ``"<module key>|<tensor name>"`` (e.g. ``"head:_:digit|weight"``), stored with the
  dtype and shape it was given (so a round trip is bit-exact);
* ``__manifest__``: a uint8 array holding UTF-8 JSON ``{"format": "hffm-modules", "version": 1, "modules":
  {key: [tensor names]}, "stamps": {key: [global_round, stage]}}``.

Reading checks all of it, and any problem becomes one :class:`~hffm_core.errors.DataError` naming the file.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hffm_core.atomic import write_npz
from hffm_core.errors import DataError, storage_error
from hffm_core.protocol.keys import ModuleKey

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "load_modules", "save_modules"]

FORMAT = "hffm-modules"
FORMAT_VERSION = 1
MANIFEST = "__manifest__"
_SEP = "|"
_ZIP_MAGIC = b"PK\x03\x04"

States = dict[ModuleKey, dict[str, np.ndarray]]
Stamps = dict[ModuleKey, tuple[int, int]]


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_stamp(value: Any, where: str) -> tuple[int, int]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise DataError(f"{where}: a stamp must be a pair of integers, got {value!r}")
    a, b = value[0], value[1]
    if not (_is_int(a) and _is_int(b)):
        raise DataError(f"{where}: a stamp must be a pair of integers, got {value!r}")
    return int(a), int(b)


def save_modules(
    path: Path,
    states: Mapping[ModuleKey, Mapping[str, np.ndarray]],
    stamps: Mapping[ModuleKey, tuple[int, int]],
) -> None:
    """Write module states and their version stamps to ``path`` (exactly that name; atomically).

    ``stamps`` may name any modules (usually those of ``states``). Arrays keep their dtype (bool, integer or
    floating) and shape. Missing parent folders are created.

    Raises:
        DataError: a key that is not a :class:`ModuleKey`, a tensor name with ``|`` or an empty one, a
            non-numeric array, a stamp that is not a pair of ints, or the file cannot be written.
    """
    path = Path(path)
    where = f"module snapshot {path}"
    arrays: dict[str, np.ndarray] = {}
    modules: dict[str, list[str]] = {}
    for key in sorted(states, key=str):
        if not isinstance(key, ModuleKey):
            raise DataError(f"{where}: module keys must be ModuleKey, got {key!r}")
        names: list[str] = []
        for name, value in sorted(states[key].items()):
            if not isinstance(name, str) or not name or _SEP in name or name == MANIFEST:
                raise DataError(f"{where}: invalid tensor name {name!r} in module {str(key)!r}")
            array = np.asarray(value)
            if array.dtype.kind not in "biuf":
                raise DataError(f"{where}: tensor {name!r} of {str(key)!r} has non-numeric dtype {array.dtype}")
            arrays[f"{key}{_SEP}{name}"] = array
            names.append(name)
        modules[str(key)] = names
    stamp_json: dict[str, list[int]] = {}
    for key in sorted(stamps, key=str):
        if not isinstance(key, ModuleKey):
            raise DataError(f"{where}: stamp keys must be ModuleKey, got {key!r}")
        stamp_json[str(key)] = list(_check_stamp(stamps[key], f"{where}: stamp of {str(key)!r}"))
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, "modules": modules, "stamps": stamp_json}
    arrays[MANIFEST] = np.frombuffer(json.dumps(manifest, sort_keys=True).encode(), dtype=np.uint8)
    try:
        write_npz(path, arrays)
    except OSError as exc:  # a full or read-only disk: a storage failure (exit 11), named, not bad data
        raise storage_error(exc, f"module snapshot {where}") from None
    except ValueError as exc:
        raise DataError(f"cannot write {where}: {type(exc).__name__}: {exc}") from None


def load_modules(path: Path) -> tuple[States, Stamps]:
    """Read a snapshot written by :func:`save_modules`; returns ``(states, stamps)``.

    Raises:
        DataError: the file is missing, not an ``.npz`` archive, corrupt, of another format or version, or its
            manifest does not match its arrays; the message names the file.
    """
    path = Path(path)
    where = f"module snapshot {path}"
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(_ZIP_MAGIC))
        if magic != _ZIP_MAGIC:
            raise DataError(f"{where} is not an .npz archive (it starts with {magic!r}, not a zip header)")
        with np.load(path, allow_pickle=False) as archive:
            files = set(archive.files)
            if MANIFEST not in files:
                raise DataError(f"{where} has no {MANIFEST!r} entry: not a module snapshot")
            raw = archive[MANIFEST]
            if raw.dtype != np.uint8 or raw.ndim != 1:
                raise DataError(f"{where}: {MANIFEST!r} must be a 1-d uint8 array, got {raw.dtype} {raw.shape}")
            manifest = json.loads(raw.tobytes().decode("utf-8"))
            modules, stamp_json = _check_manifest(manifest, where)
            expected = {f"{key}{_SEP}{name}" for key, names in modules.items() for name in names} | {MANIFEST}
            if files != expected:
                missing, extra = sorted(expected - files), sorted(files - expected)
                raise DataError(f"{where}: arrays do not match its manifest: missing {missing}, unexpected {extra}")
            states: States = {}
            for text, names in modules.items():
                states[_parse_key(text, where)] = {name: archive[f"{text}{_SEP}{name}"] for name in names}
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{where} does not exist") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        # json.JSONDecodeError and UnicodeDecodeError are ValueErrors.
        raise DataError(f"{where} cannot be read: {type(exc).__name__}: {exc}") from None
    stamps: Stamps = {
        _parse_key(text, where): _check_stamp(value, f"{where}: stamp of {text!r}")
        for text, value in stamp_json.items()
    }
    return states, stamps


def _check_manifest(manifest: Any, where: str) -> tuple[dict[str, list[str]], dict[str, Any]]:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{where}: manifest is not an {FORMAT!r} manifest")
    version = manifest.get("version")
    if version != FORMAT_VERSION:
        raise DataError(f"{where}: unknown format version {version!r}; this hffm reads version {FORMAT_VERSION}")
    modules, stamps = manifest.get("modules"), manifest.get("stamps")
    if not isinstance(modules, dict) or not isinstance(stamps, dict):
        raise DataError(f"{where}: manifest lacks its 'modules' or 'stamps' object")
    for text, names in modules.items():
        if not isinstance(names, list) or not all(isinstance(n, str) and n and _SEP not in n for n in names):
            raise DataError(f"{where}: manifest lists invalid tensor names for {text!r}: {names!r}")
        if len(set(names)) != len(names):
            raise DataError(f"{where}: manifest lists a tensor of {text!r} twice")
    return modules, stamps


def _parse_key(text: str, where: str) -> ModuleKey:
    try:
        return ModuleKey.parse(text)
    except ValueError as exc:
        raise DataError(f"{where}: invalid module key {text!r}: {exc}") from None
