"""D2D pieces without brokers: peer averaging, the relay's desk, relay choice at the fog, covers checks, fog-to-fog
mixing and the new message fields."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.d2d import RelayDesk, weighted_mean
from fog_gateway.d2d import choose_relays, reporters
from fog_gateway.horizontal import NeighbourMix
from hffm_core.errors import AggregationError, DecodeError
from hffm_core.protocol import (
    FogAggregate,
    ModuleKey,
    ModuleUpdate,
    NodeState,
    RoundControl,
    decode,
    encode,
)
from hffm_core.protocol.messages import TensorBlob, tensors_sha256

KEY = ModuleKey(kind="adapter", modality="imu", task="activity")


def _update(sender: str, n: int, *, covers: tuple[str, ...] = (), g: int = 1, c: int = 1) -> ModuleUpdate:
    blob = TensorBlob(name="w", dtype="float32", shape=(2,), data=np.array([1.0, 2.0], np.float32).tobytes())
    return ModuleUpdate(fleet="f", sender=sender, fog="fog-1", key=KEY, global_round=g, cluster_round=c, base=(0, 0),
                        num_samples=n, train_loss=0.0, tensors=(blob,), sha256=tensors_sha256((blob,)),
                        idempotency_key=f"f/{sender}/{g}.{c}/{KEY}", covers=covers)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3), st.integers(1, 500)),
                min_size=1, max_size=6))
def test_peer_average_equals_the_weighted_mean_computed_directly(parts: list[tuple[list[float], int]]) -> None:
    states = [({"w": np.array(v, np.float32)}, n) for v, n in parts]
    direct = sum(n * np.array(v, np.float64) for v, n in parts) / sum(n for _v, n in parts)
    np.testing.assert_allclose(weighted_mean(states)["w"], direct.astype(np.float32), rtol=1e-5, atol=1e-3)


def test_peer_average_rejects_bad_parts() -> None:
    with pytest.raises(AggregationError, match="at least one"):
        weighted_mean([])
    with pytest.raises(AggregationError, match="weight"):
        weighted_mean([({"w": np.zeros(2)}, 0)])
    with pytest.raises(AggregationError, match="tensors"):
        weighted_mean([({"w": np.zeros(2)}, 1), ({"w": np.zeros(3)}, 1)])
    with pytest.raises(AggregationError, match="NaN"):
        weighted_mean([({"w": np.array([np.inf, 0.0])}, 1)])


def test_relay_desk_collects_members_then_flushes_once() -> None:
    desk = RelayDesk("d1", wait_s=10.0)
    bucket = (1, 1, KEY)
    own = {"w": np.array([0.0, 0.0], np.float32)}
    # d3's delta arrives before the relay opened the bucket: it waits for it
    assert desk.offer(_update("d3", 3), {"w": np.array([3.0, 3.0], np.float32)}, routed_here=True, now=0.0) == "early"
    desk.open_bucket(bucket, own, 1, 0.5, {"d2", "d3"}, now=1.0)
    assert desk.due(now=2.0) == []
    assert desk.offer(_update("d2", 2), {"w": np.array([1.0, 1.0], np.float32)}, routed_here=True, now=2.0) == "added"
    assert desk.offer(_update("d2", 2), {"w": np.array([1.0, 1.0], np.float32)}, routed_here=True, now=2.0) \
        == "duplicate"
    (flush,) = desk.due(now=3.0)
    assert flush.covers == ("d1", "d2", "d3")
    assert [m.sender for m in flush.acked] == ["d2", "d3"]
    np.testing.assert_allclose(weighted_mean(flush.parts)["w"], [(0 + 2 + 9) / 6] * 2, rtol=1e-6)
    # after the flush, a late member delta is forwarded alone
    assert desk.offer(_update("d4", 1), {"w": own["w"]}, routed_here=True, now=4.0) == "forward"


def test_relay_desk_flushes_at_its_wait_without_missing_members() -> None:
    desk = RelayDesk("d1", wait_s=5.0)
    desk.open_bucket((1, 1, KEY), {"w": np.ones(2, np.float32)}, 4, 0.1, {"d2"}, now=0.0)
    assert desk.due(now=4.9) == []
    (flush,) = desk.due(now=5.0)
    assert flush.covers == ("d1",) and flush.acked == ()


def test_relay_desk_forwards_unrouted_and_stale_early_deltas() -> None:
    desk = RelayDesk("d1", wait_s=5.0)
    assert desk.offer(_update("d2", 1), None, routed_here=True, now=0.0) == "forward"  # cannot decode: not held
    assert desk.offer(_update("d2", 1), {"w": np.ones(2)}, routed_here=False, now=0.0) == "forward"
    assert desk.offer(_update("d3", 1), {"w": np.ones(2)}, routed_here=True, now=0.0) == "early"
    assert desk.stale_early(now=4.0) == []
    assert [m.sender for m in desk.stale_early(now=5.0)] == ["d3"]


def _advert(dev: str, **telemetry: float) -> NodeState:
    return NodeState(fleet="f", node=dev, role="device", fog="fog-1", online=True, telemetry=dict(telemetry))


def test_relays_are_chosen_per_group_by_link_rate_battery_and_load() -> None:
    groups = [["a", "b", "c"], ["d", "e"]]
    other = ModuleKey(kind="head", modality="_", task="activity")
    participants = {KEY: {"a", "b", "c", "d", "e"}, other: {"a", "d"}}
    adverts = {"a": _advert("a", battery_percent=10.0), "b": _advert("b"), "c": _advert("c", cpu_percent=100.0)}
    relays = choose_relays(groups, participants, adverts, {"a": 5e6, "b": 1e6, "c": 1e6, "d": 1e6, "e": 1e6})
    # a: 5e6 * 0.1 = 5e5; b: 1e6; c: 1e6 * 0.5 -> b relays for a and c; d and e tie -> lowest id d
    assert relays == {str(KEY): {"a": "b", "c": "b", "e": "d"}}  # `other` has one device per group: no relay


def test_reporters_checks_covers_against_the_d2d_group() -> None:
    groups = [["a", "b"], ["c", "d"]]
    assert reporters(_update("a", 1), groups) == ("a",)
    assert reporters(_update("a", 1, covers=("a", "b")), groups) == ("a", "b")
    with pytest.raises(DecodeError, match="not all in its D2D group"):
        reporters(_update("a", 1, covers=("a", "c")), groups)
    with pytest.raises(DecodeError, match="not all in its D2D group"):
        reporters(_update("e", 1, covers=("e",)), groups)


def test_messages_carry_covers_and_relays_and_validate_them() -> None:
    upd = _update("a", 1, covers=("a", "b"))
    assert decode(encode(upd), ModuleUpdate).covers == ("a", "b")
    with pytest.raises(ValueError, match="distinct"):
        _update("a", 1, covers=("b", "b"))
    with pytest.raises(ValueError, match="invalid covered device"):
        _update("a", 1, covers=("B/x",))
    ctl = RoundControl(fleet="f", sender="fog-1", global_round=1, cluster_round=1, total_rounds=2, agg_every=1,
                       local_epochs=1, deadline_s=10.0, relays={str(KEY): {"a": "b"}})
    assert decode(encode(ctl), RoundControl).relays == {str(KEY): {"a": "b"}}
    with pytest.raises(ValueError, match="invalid relay"):
        RoundControl(fleet="f", sender="fog-1", global_round=1, cluster_round=1, total_rounds=2, agg_every=1,
                     local_epochs=1, deadline_s=10.0, relays={str(KEY): {"a": "B!"}})


def _fog_agg(fog: str, value: float, weight: float, c: int = 1) -> FogAggregate:
    blob = TensorBlob(name="w", dtype="float32", shape=(2,), data=np.full(2, value, np.float32).tobytes())
    return FogAggregate(fleet="f", fog=fog, key=KEY, global_round=1, cluster_round=c, total_weight=weight,
                        num_devices=1, tensors=(blob,), sha256=tensors_sha256((blob,)), idempotency_key=f"{fog}/x")


def test_neighbour_mix_is_the_weighted_mean_and_waits_for_neighbours() -> None:
    mix = NeighbourMix("fog-1", ["fog-2", "fog-3", "fog-1"], wait_s=30.0)
    assert mix.neighbours == ["fog-2", "fog-3"]
    assert not mix.ready(1, 1, since=0.0, now=1.0)
    assert mix.offer(_fog_agg("fog-2", 2.0, 3.0), {"w": np.full(2, 2.0, np.float32)})
    assert not mix.offer(_fog_agg("fog-2", 2.0, 3.0), {"w": np.full(2, 2.0, np.float32)})
    assert not mix.ready(1, 1, since=0.0, now=1.0)  # fog-3 has not sent yet
    assert mix.ready(1, 1, since=0.0, now=30.0)  # ... but the wait is over
    start = {"w": np.full(2, 10.0, np.float32)}
    mixed, used = mix.mix(1, 1, KEY, start, {"w": np.full(2, 1.0, np.float32)}, 1.0)
    assert used == ["fog-2"]
    np.testing.assert_allclose(mixed["w"], 10.0 + (1.0 * 1 + 2.0 * 3) / 4)


def test_relay_desk_never_sends_a_member_delta_twice() -> None:
    desk = RelayDesk("d1", wait_s=10.0)
    desk.open_bucket((1, 1, KEY), {"w": np.zeros(2, np.float32)}, 1, 0.0, {"d2"}, now=0.0)
    msg = _update("d2", 2)
    assert desk.offer(msg, {"w": np.ones(2, np.float32)}, routed_here=True, now=1.0) == "added"
    assert len(desk.due(now=1.0)) == 1
    # the member's outbox resends it (the ack was late): acked again, not forwarded alone
    assert desk.offer(msg, {"w": np.ones(2, np.float32)}, routed_here=True, now=2.0) == "included"
    desk.mark_included(["f/d3/1.1/x"])
    assert desk.offer(_update("d3", 1), None, routed_here=False, now=2.0) == "forward"  # another key
