"""E_agg per fog: fixed, the cloud's, or adaptive from measured cluster-round and cloud-sync times."""

from __future__ import annotations

import pytest

from fog_gateway.config import FogSchedule
from fog_gateway.schedule import Schedule


def test_fixed_and_default_agg_every_never_exceed_the_clouds() -> None:
    assert Schedule().pick(3) == 3
    assert Schedule(agg_every=2).pick(3) == 2
    assert Schedule(agg_every=8).pick(3) == 3


def test_adaptive_agg_every_follows_the_measured_cost_ratio() -> None:
    s = Schedule(adaptive=True, sync_share=0.25)
    assert s.pick(8) == 8  # nothing measured yet: the cap
    s.observe_cluster(10.0)
    s.observe_sync(5.0)  # 5 / (0.25 * 10) = 2
    assert s.pick(8) == 2
    s.observe_sync(40.0)  # a slow cloud link: 16, capped at 8
    assert s.pick(8) == 8
    s.observe_sync(0.1)  # a fast one: 1
    assert s.pick(8) == 1
    assert s.report()["chosen"] == [8, 2, 8, 1]


@pytest.mark.parametrize(("kwargs", "match"), [({"agg_every": -1}, "agg_every"), ({"agg_every": True}, "agg_every"),
                                               ({"sync_share": 0.0}, "sync_share")])
def test_schedule_config_rejects_bad_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FogSchedule(**kwargs)  # type: ignore[arg-type]
