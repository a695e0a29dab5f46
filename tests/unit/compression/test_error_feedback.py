"""Error feedback: transmitted + residual always sums to the true deltas; residuals persist and reject corrupt files."""

from __future__ import annotations

import json
import string
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from compression_cases import CONFIGS, IDS, codec_of
from hypothesis import given, settings
from hypothesis import strategies as st

from hffm_core.compression import ErrorFeedback, make_codec
from hffm_core.errors import DataError, DecodeError

SHAPES = {"lora_A": (4, 16), "lora_B": (16, 4), "bias": (7,), "scalar": (), "empty": (0, 3)}


def _delta(rng: np.random.Generator, scale: float = 1e-3) -> dict[str, np.ndarray]:
    return {name: np.asarray(rng.normal(0, scale, size=shape), dtype=np.float32) for name, shape in SHAPES.items()}


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_transmitted_plus_residual_equals_true_deltas(name: str, params: dict[str, Any], seed: int) -> None:
    codec, feedback, rng = codec_of(name, params), ErrorFeedback(), np.random.default_rng(seed)
    truth = {k: np.zeros(s, dtype=np.float64) for k, s in SHAPES.items()}
    sent = {k: np.zeros(s, dtype=np.float64) for k, s in SHAPES.items()}
    for _ in range(6):
        delta = _delta(rng)
        encoded, transmitted = feedback.compress("adapter/imu", delta, codec)
        assert list(encoded) == sorted(SHAPES) and list(transmitted) == sorted(SHAPES)
        for k in SHAPES:
            np.testing.assert_array_equal(transmitted[k], codec.decode(encoded[k], SHAPES[k]))
            truth[k] += delta[k]
            sent[k] += transmitted[k]
    residual = feedback.residual("adapter/imu")
    for k in SHAPES:
        np.testing.assert_allclose(sent[k] + residual[k], truth[k], rtol=0, atol=1e-8)
        if codec.lossless:
            assert not residual[k].any()


def test_topk_error_feedback_flushes_everything_eventually() -> None:
    codec, feedback = make_codec("topk", {"fraction": 0.1}), ErrorFeedback()
    delta = {"w": np.random.default_rng(4).normal(size=(50,)).astype(np.float32)}
    total = feedback.compress("s", delta, codec)[1]["w"]
    zero = {"w": np.zeros(50, dtype=np.float32)}
    for _ in range(9):  # k = 5 per round: ten rounds send all 50 elements once
        total = total + feedback.compress("s", zero, codec)[1]["w"]
    np.testing.assert_array_equal(total, delta["w"])
    assert not feedback.residual("s")["w"].any()


def test_streams_are_independent_and_reset_forgets_one() -> None:
    codec, feedback, rng = make_codec("topk"), ErrorFeedback(), np.random.default_rng(5)
    feedback.compress("a", _delta(rng), codec)
    feedback.compress("b", _delta(rng), codec)
    assert feedback.streams() == ["a", "b"]
    copy = feedback.residual("a")
    copy["lora_A"][:] = 99.0
    assert not (feedback.residual("a")["lora_A"] == 99.0).any()
    feedback.reset("a")
    assert feedback.residual("a") == {} and set(feedback.residual("b")) == set(SHAPES)


def test_shape_change_and_bad_delta_leave_memory_untouched() -> None:
    codec, feedback = make_codec("int8"), ErrorFeedback()
    feedback.compress("s", {"w": np.full(4, 0.3, dtype=np.float32)}, codec)
    before = feedback.residual("s")
    with pytest.raises(ValueError, match="reset the stream"):
        feedback.compress("s", {"w": np.zeros(5, dtype=np.float32)}, codec)
    with pytest.raises(ValueError):
        feedback.compress("s", {"a": np.zeros(2, dtype=np.float32), "w": np.array([np.nan] * 4, np.float32)}, codec)
    after = feedback.residual("s")
    assert list(after) == ["w"]
    np.testing.assert_array_equal(after["w"], before["w"])


PRINTABLE = st.text(alphabet=string.printable, min_size=0, max_size=12)


@settings(max_examples=40, deadline=None)
@given(keys=st.lists(st.tuples(PRINTABLE, PRINTABLE), max_size=6, unique=True), seed=st.integers(0, 2**16))
def test_save_load_round_trips_any_printable_names(keys: list[tuple[str, str]], seed: int) -> None:
    rng = np.random.default_rng(seed)
    feedback = ErrorFeedback()
    feedback._residuals = {key: np.asarray(rng.normal(size=rng.integers(0, 5, size=rng.integers(0, 3))), np.float32)
                           for key in keys}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "residuals.npz"
        feedback.save(path)
        feedback.save(path)  # overwrites in place
        assert [p.name for p in Path(tmp).iterdir()] == ["residuals.npz"]  # no temporary left behind
        loaded = ErrorFeedback.load(path)
    assert sorted(loaded._residuals) == sorted(keys)
    for key in keys:
        assert loaded._residuals[key].shape == feedback._residuals[key].shape
        np.testing.assert_array_equal(loaded._residuals[key], feedback._residuals[key])
        assert loaded._residuals[key].dtype == np.float32


def test_residuals_survive_a_restart(tmp_path: Path) -> None:
    codec, rng = make_codec("topk", {"values": "int8"}), np.random.default_rng(6)
    first, second = ErrorFeedback(), None
    first.compress("s", _delta(rng), codec)
    first.save(tmp_path / "r.npz")
    second = ErrorFeedback.load(tmp_path / "r.npz")
    delta = _delta(rng)
    expect = first.compress("s", delta, codec)[0]
    assert second.compress("s", delta, codec)[0] == expect


def _valid_file(tmp_path: Path) -> Path:
    feedback = ErrorFeedback()
    feedback.compress("s", _delta(np.random.default_rng(8)), make_codec("fp16"))
    path = tmp_path / "ok.npz"
    feedback.save(path)
    return path


def test_load_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        ErrorFeedback.load(tmp_path / "nope.npz")


def test_load_rejects_every_truncation_and_garbage(tmp_path: Path) -> None:
    data = _valid_file(tmp_path).read_bytes()
    bad = tmp_path / "bad.npz"
    for end in list(range(0, len(data), max(1, len(data) // 97))) + [len(data) - 1]:
        bad.write_bytes(data[:end])
        with pytest.raises(DecodeError):
            ErrorFeedback.load(bad)
    for garbage in (b"", b"PK\x03\x04" + bytes(40), np.random.default_rng(9).bytes(500)):
        bad.write_bytes(garbage)
        with pytest.raises(DecodeError):
            ErrorFeedback.load(bad)


def _manifest(entries: Any, **extra: Any) -> np.ndarray:
    doc = {"format": "hffm-residuals", "version": 1, "entries": entries, **extra}
    return np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)


@pytest.mark.parametrize(("arrays", "message"), [
    ({"r0": np.zeros(2, np.float32)}, "no manifest"),
    ({"manifest": np.frombuffer(b"{not json", np.uint8)}, "not JSON"),
    ({"manifest": _manifest([["s", "w"]], version=2), "r0": np.zeros(2, np.float32)}, "manifest"),
    ({"manifest": _manifest([["s", 3]]), "r0": np.zeros(2, np.float32)}, "string pairs"),
    ({"manifest": _manifest([["s", "w"], ["s", "w"]]), "r0": np.zeros(1, np.float32),
      "r1": np.zeros(1, np.float32)}, "repeats"),
    ({"manifest": _manifest([["s", "w"]])}, "do not match"),
    ({"manifest": _manifest([["s", "w"]]), "r0": np.zeros(2, np.float32), "r1": np.zeros(1, np.float32)},
     "do not match"),
    ({"manifest": _manifest([["s", "w"]]), "r0": np.zeros(2, np.float64)}, "not finite float32"),
    ({"manifest": _manifest([["s", "w"]]), "r0": np.array([np.nan], np.float32)}, "not finite float32"),
])
def test_load_rejects_bad_contents(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DecodeError, match=message):
        ErrorFeedback.load(path)


def test_load_never_unpickles(tmp_path: Path) -> None:
    path = tmp_path / "pickled.npz"
    np.savez(path, manifest=_manifest([["s", "w"]]), r0=np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DecodeError, match="not a readable"):
        ErrorFeedback.load(path)
    with zipfile.ZipFile(path) as zf:
        assert "r0.npy" in zf.namelist()
