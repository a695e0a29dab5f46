"""Mixed LoRA ranks on the downlink and in the fog's decode: a device of rank r takes the first r rank slices of a
version at the served rank, full or compressed delta; an update at the sender's own rank decodes under any codec."""

from __future__ import annotations

import numpy as np
import pytest

from fog_gateway.roster import DeviceRoster
from hffm_core.aggregation.ranks import at_rank, fits_rank
from hffm_core.compression import make_codec
from hffm_core.compression.module_codec import pack
from hffm_core.config import ModelConfig, cross_rank_refusal
from hffm_core.downlink import VersionPublisher, VersionReceiver, unpack_ranked
from hffm_core.errors import DecodeError
from hffm_core.protocol import ModuleKey, ModuleUpdate, ModuleVersion, NodeState, decode, encode

KEY = ModuleKey.adapter("image", "digit")
A, B = "l.lora_A.weight", "l.lora_B.weight"


def _state(rank: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {A: rng.normal(size=(rank, 12)).astype(np.float32), B: rng.normal(size=(10, rank)).astype(np.float32)}


def _layout(rank: int) -> dict[str, tuple[int, ...]]:
    return {A: (rank, 12), B: (10, rank)}


@pytest.mark.parametrize(("codec", "params"), [("fp32", {}), ("int8", {}), ("topk", {"fraction": 0.1})])
def test_a_rank4_device_follows_a_rank16_publisher(codec: str, params: dict[str, object]) -> None:
    pub = VersionPublisher(fleet="f", sender="fog-1", codecs={"adapter": make_codec(codec, params)})
    low, high = VersionReceiver({KEY: _layout(4)}), VersionReceiver({KEY: _layout(16)})
    rng = np.random.default_rng(1)
    pub.true[KEY] = _state(16)
    for stage in range(6):
        if stage:
            pub.true[KEY] = {n: a + rng.normal(scale=0.1, size=a.shape).astype(np.float32)
                             for n, a in pub.true[KEY].items()}
        msg = decode(encode(pub.version(KEY, (1, stage))), ModuleVersion)
        mine, full = low.apply(msg), high.apply(msg)
        assert mine is not None and full is not None
        assert mine[A].shape == (4, 12) and mine[B].shape == (10, 4)
        np.testing.assert_array_equal(mine[A], full[A][:4])  # exactly the leading slices of what rank 16 holds
        np.testing.assert_array_equal(mine[B], full[B][:, :4])


def test_a_device_above_the_served_rank_or_of_another_variant_is_refused() -> None:
    pub = VersionPublisher(fleet="f", sender="fog-1", codecs={"adapter": make_codec("fp32", {})})
    pub.true[KEY] = _state(8)
    msg = pub.version(KEY, (1, 0))
    with pytest.raises(DecodeError, match="lora_r"):
        VersionReceiver({KEY: _layout(16)}).apply(msg)
    refusal = cross_rank_refusal(ModelConfig(adapter="ffa_lora", lora_r=4))
    assert "ffa_lora" in refusal and cross_rank_refusal(ModelConfig()) == ""
    with pytest.raises(DecodeError, match="ffa_lora"):
        VersionReceiver({KEY: _layout(4)}, cross_rank=refusal).apply(msg)


@pytest.mark.parametrize("codec", ["fp32", "int8", "fp16"])
def test_an_update_decodes_at_its_senders_rank(codec: str) -> None:
    delta = _state(4, seed=3)
    packed, sent = pack(delta, make_codec(codec, {}), seed=0)
    msg = ModuleUpdate(fleet="f", sender="dev-1", fog="fog-1", key=KEY, global_round=1, cluster_round=1, base=(1, 0),
                       num_samples=5, train_loss=0.5, idempotency_key=ModuleUpdate.default_key("f", "dev-1", 1, 1, KEY),
                       **packed.fields())
    got = unpack_ranked(decode(encode(msg), ModuleUpdate), _layout(16))
    assert got[A].shape == (4, 12)
    np.testing.assert_allclose(got[A], sent[A], rtol=0, atol=0)
    assert fits_rank(got, _state(16)) and not fits_rank(_state(32), _state(16))


def test_fog_advertises_the_ranks_it_serves() -> None:
    roster = DeviceRoster(["d1", "d2"], offline_grace_s=5.0)
    for dev, rank in (("d1", 4), ("d2", 16)):
        advert = NodeState(fleet="f", node=dev, role="device", fog="fog-1", online=True, lora_ranks=(rank,))
        assert roster.new_rank(advert)
        roster.update(advert, 0.0)
    assert roster.served({KEY: _state(16), ModuleKey.head("digit"): {"w": np.zeros(3)}}) == (4, 16)
    assert not roster.new_rank(NodeState(fleet="f", node="d1", role="device", fog="fog-1", online=True,
                                         lora_ranks=(4,)))
    again = NodeState(fleet="f", node="fog-1", role="fog", fog="fog-1", online=True, lora_ranks=(4, 16))
    assert decode(encode(again), NodeState).lora_ranks == (4, 16)
    assert at_rank(_layout(16), 4) == _layout(4)
