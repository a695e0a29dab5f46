"""to_tokens: layout and scaling of each modality's tokens, and rejection of bad samples."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from hffm_core.errors import DataError
from hffm_lab.data import MODALITIES, to_tokens
from hffm_lab.data.tokens import SPEECH_SCALE, resample


def test_inertial_patches_are_step_major() -> None:
    c, t = np.meshgrid(np.arange(6), np.arange(100), indexing="ij")
    raw = (c * 1000 + t)[None].astype(np.float64)
    tokens = to_tokens("inertial", raw)
    assert tokens.shape == (1, 10, 60) and tokens.dtype == np.float32
    for p in (0, 3, 9):
        for s in (0, 7):
            for ch in (0, 5):
                assert tokens[0, p, s * 6 + ch] == ch * 1000 + p * 10 + s


def test_inertial_other_lengths_are_resampled() -> None:
    raw = [np.ones((6, 50)), np.zeros((6, 120))]
    tokens = to_tokens("inertial", raw)
    assert tokens.shape == (2, 10, 60)
    np.testing.assert_array_equal(tokens[0], 1.0)


def test_resample_keeps_end_points_and_lines() -> None:
    series = np.arange(24, dtype=np.float64)[None]
    out = resample(series, 128)
    np.testing.assert_allclose(out[0], np.linspace(0, 23, 128))
    assert resample(series, 24) is series


@pytest.mark.parametrize("layout", ["2d", "3d", "list"])
def test_power_is_resampled_and_z_normalised(layout: str) -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(5.0, 3.0, size=(3, 24))
    raw: Any = {"2d": base, "3d": base[:, None, :], "list": [base[0], base[1][None], rng.normal(size=300)]}[layout]
    tokens = to_tokens("power", raw)
    assert tokens.shape == (3, 16, 8)
    flat = tokens.reshape(3, -1)
    np.testing.assert_allclose(flat.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(flat.std(axis=1), 1.0, atol=1e-5)


def test_power_linear_series_keeps_its_order_and_constant_series_gives_zeros() -> None:
    tokens = to_tokens("power", np.stack([np.arange(24.0), np.full(24, 7.0)]))
    expected = np.linspace(0, 23, 128)
    expected = (expected - expected.mean()) / expected.std()
    np.testing.assert_allclose(tokens[0].ravel(), expected, atol=1e-5)
    np.testing.assert_array_equal(tokens[1], 0.0)


def test_speech_variable_lengths_to_sixteen_frames() -> None:
    raw = [np.tile(np.arange(12.0)[:, None], (1, t)) for t in (7, 16, 29)]
    raw[1][0] = np.linspace(-1, 1, 16)
    tokens = to_tokens("speech", raw)
    assert tokens.shape == (3, 16, 12)
    np.testing.assert_allclose(tokens[0], np.tile(np.arange(12.0), (16, 1)) * SPEECH_SCALE, rtol=1e-6)
    np.testing.assert_allclose(tokens[1][:, 0], np.linspace(-1, 1, 16) * SPEECH_SCALE, rtol=1e-6)


@pytest.mark.parametrize("flat", [False, True])
def test_image_one_token_per_row_scaled(flat: bool) -> None:
    img = np.arange(64, dtype=np.float64).reshape(8, 8) / 4.0
    raw = img.reshape(1, 64) if flat else img[None]
    tokens = to_tokens("image", raw)
    assert tokens.shape == (1, 8, 8)
    for row in (0, 3, 7):
        np.testing.assert_allclose(tokens[0, row], img[row] / 16.0)
    assert tokens.min() >= 0.0 and tokens.max() <= 1.0


@pytest.mark.parametrize(
    ("modality", "raw", "match"),
    [
        ("imu", np.zeros((1, 6, 100)), "unknown modality 'imu'"),
        ("inertial", np.zeros((0, 6, 100)), "batch is empty"),
        ("inertial", [], "batch is empty"),
        ("inertial", np.zeros((2, 5, 100)), r"sample 0 has shape \(5, 100\); expected \(6, T\)"),
        ("speech", [np.zeros((12, 10)), np.zeros((12, 1))], r"sample 1 has shape \(12, 1\)"),
        ("power", np.array([[1.0, np.nan, 2.0]]), r"sample 0 holds a non-finite value \(nan\)"),
        ("power", [np.array([1.0, 2.0]), np.array([np.inf, 1.0])], r"sample 1 holds a non-finite value \(inf\)"),
        ("image", np.full((1, 8, 8), 255.0), r"pixel values in \[255.0, 255.0\]; expected \[0, 16\]"),
        ("image", np.zeros((1, 7, 7)), r"expected \(8, 8\) or \(64,\)"),
        ("image", np.array([["a"] * 64]), "not a numeric array"),
        ("image", np.array(3.0), "0-d array"),
        ("image", 3, "expected an array or a list of arrays, got int"),
    ],
)
def test_bad_samples_are_rejected(modality: str, raw: Any, match: str) -> None:
    with pytest.raises(DataError, match=match):
        to_tokens(modality, raw)


def test_every_modality_has_a_converter() -> None:
    samples = {
        "inertial": np.zeros((1, 6, 100)),
        "power": np.zeros((1, 24)),
        "speech": np.zeros((1, 12, 9)),
        "image": np.zeros((1, 8, 8)),
    }
    for name, spec in MODALITIES.items():
        assert to_tokens(name, samples[name]).shape == (1, spec.n_tokens, spec.token_dim)
