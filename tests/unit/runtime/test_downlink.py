"""Downlink versions: compressed deltas keep every receiver bit-identical to the publisher's view; a receiver that
missed a version asks for a resync and gets the full state."""

from __future__ import annotations

import numpy as np
import pytest

from hffm_core.compression import make_codec
from hffm_core.downlink import ResyncNeeded, VersionPublisher, VersionReceiver
from hffm_core.errors import DecodeError
from hffm_core.protocol import ModuleKey, ModuleVersion, decode, encode

KEY = ModuleKey.adapter("image", "digit")


def _publisher(codec: str, **params: object) -> VersionPublisher:
    return VersionPublisher(fleet="f", sender="fog-1", codecs={"adapter": make_codec(codec, params)})


def _wire(msg: ModuleVersion) -> ModuleVersion:
    return decode(encode(msg), ModuleVersion)  # every version crosses the real codec


@pytest.mark.parametrize(("codec", "params"), [("topk", {"fraction": 0.05, "values": "int8"}), ("int8", {}),
                                               ("fp16", {})])
def test_lossy_deltas_track_the_true_state_without_drift(codec: str, params: dict[str, object]) -> None:
    rng = np.random.default_rng(0)
    pub, rx = _publisher(codec, **params), VersionReceiver()
    pub.true[KEY] = {"w": rng.normal(size=(40, 30)).astype(np.float32)}
    first = pub.version(KEY, (1, 0))
    assert first.delta_base is None and first.codec == "fp32"  # the first version is the full state
    rx.apply(_wire(first))
    gaps = []
    for stage in range(1, 30):
        pub.true[KEY] = {"w": pub.true[KEY]["w"] + rng.normal(scale=0.01, size=(40, 30)).astype(np.float32)}
        msg = pub.version(KEY, (1, stage))
        assert msg.delta_base == (1, stage - 1) and msg.codec == codec
        state = rx.apply(_wire(msg))
        assert state is not None
        np.testing.assert_array_equal(state["w"], pub.published[KEY]["w"])  # receiver == publisher's view
        gaps.append(float(np.abs(pub.true[KEY]["w"] - state["w"]).max()))
    # What a lossy codec leaves out is carried to the next version: the gap stays bounded, it does not grow.
    assert max(gaps[-5:]) < 0.2 and max(gaps[-5:]) <= 3 * max(gaps[:5]) + 1e-6


def test_receiver_that_missed_a_version_resyncs_with_the_full_state() -> None:
    pub, late = _publisher("int8"), VersionReceiver()
    pub.true[KEY] = {"w": np.ones((4, 4), np.float32)}
    pub.version(KEY, (1, 0))
    pub.true[KEY] = {"w": np.full((4, 4), 2.0, np.float32)}
    delta = _wire(pub.version(KEY, (1, 1)))
    with pytest.raises(ResyncNeeded):
        late.apply(delta)  # holds nothing: cannot apply a delta
    full = _wire(pub.resync(KEY))
    assert full.delta_base is None and full.stamp == (1, 1)
    np.testing.assert_array_equal(late.apply(full)["w"], pub.published[KEY]["w"])
    assert late.apply(delta) is None  # the same stamp again is not newer: ignored


def test_old_and_repeated_versions_are_ignored() -> None:
    pub, rx = _publisher("fp32"), VersionReceiver()
    pub.true[KEY] = {"w": np.zeros(3, np.float32)}
    v1 = _wire(pub.version(KEY, (2, 0)))
    assert rx.apply(v1) is not None and rx.apply(v1) is None
    pub.true[KEY] = {"w": np.ones(3, np.float32)}
    v2 = _wire(pub.version(KEY, (2, 1)))
    rx.apply(v2)
    assert rx.apply(v1) is None and rx.stamps[KEY] == (2, 1)


def test_delta_with_other_tensors_is_rejected() -> None:
    pub, rx = _publisher("int8"), VersionReceiver()
    pub.true[KEY] = {"w": np.zeros(3, np.float32)}
    rx.apply(_wire(pub.version(KEY, (1, 0))))
    other = _publisher("int8")
    other.true[KEY] = {"w": np.zeros(5, np.float32)}
    other.version(KEY, (1, 0))
    other.true[KEY] = {"w": np.ones(5, np.float32)}
    with pytest.raises(DecodeError, match="layout needs"):
        rx.apply(_wire(other.version(KEY, (1, 1))))
    assert rx.stamps[KEY] == (1, 0)  # nothing accepted was touched


def test_resync_of_unknown_module_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="never published"):
        _publisher("fp32").resync(KEY)


def test_receiver_refuses_full_states_that_are_not_raw_fp32_or_of_another_layout() -> None:
    from hffm_core.compression.module_codec import pack
    from hffm_core.protocol import ModuleVersion

    def full(state: dict, codec: str = "fp32") -> ModuleVersion:
        packed, _ = pack(state, make_codec(codec))
        return _wire(ModuleVersion(fleet="f", sender="cloud", key=KEY, global_round=1, stage=0, **packed.fields()))

    rx = VersionReceiver(layouts={KEY: {"w": (3,)}})
    with pytest.raises(DecodeError, match="must be raw fp32"):
        rx.apply(full({"w": np.ones(3, np.float32)}, codec="int8"))
    with pytest.raises(DecodeError, match="does not match"):
        rx.apply(full({"w": np.ones(4, np.float32)}))
    assert KEY not in rx.states and KEY not in rx.stamps  # nothing stored
    assert rx.apply(full({"w": np.ones(3, np.float32)})) is not None


def test_publisher_can_force_a_full_state() -> None:
    pub = _publisher("int8")
    pub.true[KEY] = {"w": np.ones(3, np.float32)}
    pub.version(KEY, (1, 0))
    pub.true[KEY] = {"w": np.full(3, 2.0, np.float32)}
    last = pub.version(KEY, (1, 1), full=True)
    assert last.delta_base is None and last.codec == "fp32"
