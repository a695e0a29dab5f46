"""The tamper and fuzz parts of `hffm bench security`: they pass on the real code and catch a broken one."""

from __future__ import annotations

import pytest

from hffm_core.protocol import codec
from hffm_lab.security import fuzz, tamper
from hffm_core.security.signing import Verifier


def test_tamper_cases_are_all_rejected_and_the_control_accepted() -> None:
    out = tamper.run_tamper_cases(mutations=300)
    assert out["positive_control_accepted"] is True
    assert out["total"] == 309 and out["rejected"] == 309
    assert out["cases"]["revoked signer"] == "revoked"
    assert out["cases"]["wrong sender (dev-1 signs dev-2's topic)"] == "wrong_sender"


def test_tamper_counts_an_accepting_verifier(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Verifier, "open", lambda self, topic, data, **kw: ("dev-1", data))
    out = tamper.run_tamper_cases(mutations=50)
    assert out["rejected"] == 0 and out["total"] == 59


def test_fuzz_finds_no_crash_in_the_real_decoder() -> None:
    out = fuzz.run_decode_fuzz(n_bytes=500, n_structured=500, seed=3)
    assert out["inputs"] == 1000 and out["crashes"] == 0 and out["decodes"] > 1000


def test_fuzz_counts_a_decoder_that_raises_something_else(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(payload: bytes, cls: type, **kw: object) -> object:
        raise KeyError("boom")

    monkeypatch.setattr(codec, "decode", broken)
    out = fuzz.run_decode_fuzz(n_bytes=10, n_structured=10)
    assert out["crashes"] == out["decodes"] > 0 and "KeyError" in out["examples"][0]
