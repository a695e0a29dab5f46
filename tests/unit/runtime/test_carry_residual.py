"""[training] carry_residual: a device starts training from the published version plus its unsent residual."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from edge_runtime.agent import EdgeAgent
from edge_runtime.compression import ErrorFeedback, make_codec
from edge_runtime.compression.module_codec import pack
from edge_runtime.protocol import ModuleKey

KEY = ModuleKey.parse("adapter:power:demand")


def _device(carry: bool, feedback: ErrorFeedback) -> SimpleNamespace:
    return SimpleNamespace(feedback=feedback, cfg=SimpleNamespace(training=SimpleNamespace(carry_residual=carry)))


def _published_and_feedback() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], ErrorFeedback]:
    rng = np.random.default_rng(0)
    published = {"a": rng.normal(size=(4, 16)).astype(np.float32), "b": rng.normal(size=(16, 4)).astype(np.float32)}
    trained = {n: (a + 0.1 * rng.normal(size=a.shape)).astype(np.float32) for n, a in published.items()}
    feedback = ErrorFeedback()
    pack({n: trained[n] - published[n] for n in published}, make_codec("lowrank"), feedback=feedback, stream=str(KEY))
    return published, trained, feedback


def test_the_start_is_published_plus_the_unsent_residual() -> None:
    published, trained, feedback = _published_and_feedback()
    _, sent = pack({n: trained[n] - published[n] for n in published}, make_codec("lowrank"))
    start = EdgeAgent._training_start(_device(True, feedback), KEY, published)  # type: ignore[arg-type]
    for n in published:
        # published + residual = what this device trained minus what it sent (the fog holds the sent part)
        np.testing.assert_allclose(start[n], trained[n] - sent[n], rtol=1e-5, atol=1e-6)
        assert start[n].dtype == np.float32


def test_without_the_option_or_a_residual_the_start_is_the_published_version() -> None:
    published, _, feedback = _published_and_feedback()
    assert EdgeAgent._training_start(_device(False, feedback), KEY, published) is published  # type: ignore[arg-type]
    assert EdgeAgent._training_start(_device(True, ErrorFeedback()), KEY, published) is published  # type: ignore[arg-type]
    other = {"a": published["a"], "b": published["b"][:8]}  # a residual of another layout is not applied
    assert EdgeAgent._training_start(_device(True, feedback), KEY, other) is other  # type: ignore[arg-type]
