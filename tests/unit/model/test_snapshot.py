"""Module snapshots on disk: bit-exact round trips with stamps, atomic writes, and clear errors for bad files."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from hffm_core.errors import DataError, StorageError
from hffm_core.protocol.keys import ModuleKey
from hffm_model import M3TModel, load_backbone
from hffm_model.snapshot import FORMAT, MANIFEST, load_modules, save_modules

ENC = ModuleKey.encoder("image")
ADA = ModuleKey.adapter("image", "digit")
HEAD = ModuleKey.head("digit")


def build(seed: int = 0) -> M3TModel:
    return M3TModel(load_backbone("tiny"), modalities={"image": (16, 4)}, tasks={"digit": ("image", 10)}, seed=seed)


def model_states(model: M3TModel) -> dict[ModuleKey, dict[str, np.ndarray]]:
    return {key: model.get_module_state(key) for key in model.module_keys()}


def assert_bit_exact(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].keys() == b[key].keys(), key
        for name in a[key]:
            x, y = np.asarray(a[key][name]), b[key][name]
            assert x.dtype == y.dtype and x.shape == y.shape, (key, name)
            assert x.tobytes() == y.tobytes(), (key, name)


def test_round_trip_of_a_models_modules_is_bit_exact_and_keeps_stamps(tmp_path: Path) -> None:
    model = build()
    rng = np.random.default_rng(0)
    for key in model.module_keys():  # random values everywhere, LoRA B included (it starts at zero)
        model.load_module_state(key, {n: rng.normal(size=v.shape) for n, v in model.get_module_state(key).items()})
    states = model_states(model)
    stamps = {ENC: (3, 1), ADA: (3, 2), HEAD: (0, 0)}
    path = tmp_path / "a" / "b" / "modules.npz"
    save_modules(path, states, stamps)
    loaded, loaded_stamps = load_modules(path)
    assert_bit_exact(states, loaded)
    assert loaded_stamps == stamps
    assert all(type(v) is tuple and all(type(i) is int for i in v) for v in loaded_stamps.values())
    # Loading the snapshot into a fresh model reproduces the outputs exactly.
    fresh = build(seed=9)
    for key, state in loaded.items():
        fresh.load_module_state(key, state)
    x = torch.from_numpy(rng.normal(size=(4, 16, 4)).astype(np.float32))
    with torch.no_grad():
        assert torch.equal(fresh(x, modality="image", task="digit"), model(x, modality="image", task="digit"))


def test_other_dtypes_shapes_and_stamp_only_modules_round_trip(tmp_path: Path) -> None:
    states = {
        HEAD: {
            "f64": np.random.default_rng(1).normal(size=(3, 2)),
            "i64": np.arange(5, dtype=np.int64),
            "u8": np.array([0, 255], dtype=np.uint8),
            "bool": np.array([True, False]),
            "scalar": np.float32(1.5),
            "empty": np.zeros((0, 4), np.float32),
            "nan": np.array([np.nan, -np.inf, -0.0], np.float32),
        },
        ENC: {},
    }
    stamps = {HEAD: (7, 0), ADA: (1, 4)}  # a stamp without a state is kept too
    path = tmp_path / "snapshot.bin"  # the name is used as given: no .npz appended
    save_modules(path, states, stamps)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot.bin"]
    loaded, loaded_stamps = load_modules(path)
    assert_bit_exact(states, loaded)
    assert loaded_stamps == stamps


def test_saving_again_replaces_the_file_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "modules.npz"
    save_modules(path, {HEAD: {"w": np.ones(3, np.float32)}}, {HEAD: (1, 0)})
    save_modules(path, {HEAD: {"w": np.full(3, 2.0, np.float32)}}, {HEAD: (2, 0)})
    states, stamps = load_modules(path)
    assert states[HEAD]["w"].tolist() == [2.0, 2.0, 2.0] and stamps == {HEAD: (2, 0)}
    assert [p.name for p in tmp_path.iterdir()] == ["modules.npz"]


def test_archive_holds_no_pickles_and_a_json_manifest(tmp_path: Path) -> None:
    path = tmp_path / "modules.npz"
    save_modules(path, {ADA: {"x.lora_A.weight": np.ones((2, 3), np.float32)}}, {ADA: (4, 1)})
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == sorted([MANIFEST, "adapter:image:digit|x.lora_A.weight"])
        manifest = json.loads(archive[MANIFEST].tobytes())
    assert manifest["format"] == FORMAT and manifest["version"] == 1
    assert manifest["stamps"] == {"adapter:image:digit": [4, 1]}


@pytest.mark.parametrize(
    ("states", "stamps", "match"),
    [
        ({"head:_:digit": {"w": np.ones(2)}}, {}, "must be ModuleKey"),
        ({HEAD: {"a|b": np.ones(2)}}, {}, "invalid tensor name"),
        ({HEAD: {"": np.ones(2)}}, {}, "invalid tensor name"),
        ({HEAD: {"w": np.array(["text"])}}, {}, "non-numeric dtype"),
        ({HEAD: {"w": np.array([{}], dtype=object)}}, {}, "non-numeric dtype"),
        ({}, {HEAD: (1,)}, "pair of integers"),
        ({}, {HEAD: (1.0, 2)}, "pair of integers"),
        ({}, {HEAD: (True, 2)}, "pair of integers"),
        ({}, {"head:_:digit": (1, 2)}, "must be ModuleKey"),
    ],
)
def test_save_rejects_bad_input_and_writes_nothing(tmp_path: Path, states, stamps, match: str) -> None:
    path = tmp_path / "modules.npz"
    with pytest.raises(DataError, match=match):
        save_modules(path, states, stamps)
    assert not path.exists()


def test_save_to_an_unwritable_place_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match="module snapshot .*cannot write"):
        save_modules(blocker / "modules.npz", {}, {})


def test_missing_file_is_a_data_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.npz does not exist"):
        load_modules(tmp_path / "nope.npz")


HEAD_W = "head:_:digit|w"  # the archive entry of tensor "w" of module head:_:digit


def write_archive(path: Path, manifest: object | None, **arrays: np.ndarray) -> Path:
    if manifest is not None:
        arrays[MANIFEST] = np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)
    np.savez(path, **arrays)
    return path


def good_manifest(**overrides: object) -> dict:
    manifest = {"format": FORMAT, "version": 1, "modules": {"head:_:digit": ["w"]}, "stamps": {"head:_:digit": [1, 0]}}
    manifest.update(overrides)
    return manifest


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p.write_bytes(b"garbage, not a zip"), "not an .npz archive"),
        (lambda p: p.write_bytes(b""), "not an .npz archive"),
        (lambda p: p.mkdir(), "cannot be read"),
        (lambda p: write_archive(p, None, x=np.ones(2)), "no '__manifest__' entry"),
        (lambda p: write_archive(p, good_manifest(version=2), **{HEAD_W: np.ones(2)}), "unknown format version 2"),
        (lambda p: write_archive(p, good_manifest(format="other"), **{HEAD_W: np.ones(2)}), "not an 'hffm-modules'"),
        (lambda p: write_archive(p, [1, 2]), "not an 'hffm-modules'"),
        (lambda p: write_archive(p, good_manifest()), r"missing \['head:_:digit\|w'\]"),
        (
            lambda p: write_archive(p, good_manifest(), **{"head:_:digit|w": np.ones(2), "head:_:digit|v": np.ones(2)}),
            r"unexpected \['head:_:digit\|v'\]",
        ),
        (
            lambda p: write_archive(p, good_manifest(modules={"bogus": ["w"]}), **{"bogus|w": np.ones(2)}),
            "invalid module key 'bogus'",
        ),
        (
            lambda p: write_archive(p, good_manifest(stamps={"head:_:digit": [1]}), **{"head:_:digit|w": np.ones(2)}),
            "pair of integers",
        ),
        (lambda p: write_archive(p, good_manifest(modules=[]), **{"head:_:digit|w": np.ones(2)}), "lacks"),
        (lambda p: np.savez(p, **{MANIFEST: np.frombuffer(b"{not json", np.uint8)}), "JSONDecodeError"),
        (lambda p: np.savez(p, **{MANIFEST: np.ones(3, np.float32)}), "1-d uint8"),
        (
            lambda p: write_archive(p, good_manifest(), **{"head:_:digit|w": np.array([{"a": 1}], dtype=object)}),
            "cannot be read",  # a pickled object array is refused (allow_pickle=False)
        ),
    ],
)
def test_corrupt_or_foreign_files_are_data_errors_naming_the_file(tmp_path: Path, make, match: str) -> None:
    path = tmp_path / "modules.npz"
    make(path)
    with pytest.raises(DataError, match=match) as info:
        load_modules(path)
    assert str(path) in str(info.value)


def test_truncated_archive_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "modules.npz"
    save_modules(path, {HEAD: {"w": np.arange(1000, dtype=np.float32)}}, {HEAD: (1, 0)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="modules.npz"):
        load_modules(path)


def test_corrupted_member_bytes_are_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "modules.npz"
    save_modules(path, {HEAD: {"w": np.arange(1000, dtype=np.float32)}}, {HEAD: (1, 0)})
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("head:_:digit|w.npy")
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + 200  # inside the member's data: CRC check fails
    data[start : start + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="modules.npz"):
        load_modules(path)
