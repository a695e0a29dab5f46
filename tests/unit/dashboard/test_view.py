"""FleetView (cloud/dashboard/view.py) builds what the page shows from the fleet's own messages: fogs with
their devices and online state, the round timeline, accuracy per round, bytes per link per round, faults."""

from __future__ import annotations

from cloud.dashboard.server import link_totals
from cloud.dashboard.view import FleetView
from hffm_core.protocol import ModuleKey, NodeState, RoundControl, RoundMetrics

FLEET = "f"


def _ctl(sender: str, g: int, c: int, *, final: bool = False) -> RoundControl:
    return RoundControl(fleet=FLEET, sender=sender, global_round=g, cluster_round=c, total_rounds=3, agg_every=2,
                        local_epochs=1, deadline_s=60.0, final=final)


def test_fogs_hold_their_devices_and_online_state_follows_the_adverts() -> None:
    view = FleetView(fleet=FLEET)
    view.on_state(NodeState(fleet=FLEET, node="fog-1", role="fog", fog="fog-1", online=True))
    view.on_state(NodeState(fleet=FLEET, node="d-2", role="device", fog="fog-1", online=True,
                            modules=(ModuleKey.head("digit"),), telemetry={"cpu_percent": 12.0}))
    view.on_state(NodeState(fleet=FLEET, node="d-1", role="device", fog="fog-1", online=True))
    view.on_state(NodeState(fleet=FLEET, node="d-1", role="device", fog="fog-1", online=False, status="crashed"))
    snap = view.snapshot()
    assert [f["id"] for f in snap["fogs"]] == ["fog-1"]
    assert [(d["node"], d["online"]) for d in snap["fogs"][0]["devices"]] == [("d-1", False), ("d-2", True)]
    assert snap["fogs"][0]["devices"][1]["modules"] == ["head:_:digit"]
    assert (snap["online"], snap["nodes"]) == (2, 3)
    assert [e["text"] for e in snap["events"]][-1] == "device d-1 offline: crashed"


def test_round_timeline_accuracy_and_the_end_of_the_job() -> None:
    view = FleetView(fleet=FLEET)
    view.on_control(_ctl("cloud", 1, 0))
    view.on_control(_ctl("fog-1", 1, 1))
    view.on_control(_ctl("fog-1", 1, 1))  # a repeat (retained, reconnect) is not a new event
    view.on_metrics(RoundMetrics(fleet=FLEET, global_round=1, total_rounds=3, accuracy={"a": 0.5, "b": 0.7},
                                 fogs_reported=("fog-1",), modules_updated=3))
    view.on_control(_ctl("cloud", 2, 0))
    view.on_control(_ctl("cloud", 3, 0, final=True))
    snap = view.snapshot()
    assert (snap["global_round"], snap["total_rounds"], snap["finished"]) == (2, 3, True)
    assert snap["cluster_rounds"] == {"fog-1": 1}
    assert snap["accuracy"] == [{"round": 1, "tasks": {"a": 0.5, "b": 0.7}, "mean": 0.6}]
    assert [e["text"] for e in snap["events"]] == [
        "global round 1 of 3 opened", "fog-1: cluster round (1,1)", "global round 1: mean accuracy 0.600",
        "global round 2 of 3 opened", "the cloud announced the end of the job"]


def test_bytes_per_link_are_booked_to_the_round_they_grew_in() -> None:
    view = FleetView(fleet=FLEET)
    view.on_control(_ctl("cloud", 1, 0))
    view.on_link_totals("fog-1", {"fog_to_cloud": 100.0, "fog_to_device": 40.0})
    view.on_link_totals("fog-1", {"fog_to_cloud": 150.0, "fog_to_device": 40.0})
    view.on_control(_ctl("cloud", 2, 0))
    view.on_link_totals("fog-1", {"fog_to_cloud": 400.0, "fog_to_device": 50.0})
    assert view.snapshot()["bytes"] == [{"round": 1, "links": {"fog_to_cloud": 150, "fog_to_device": 40}},
                                        {"round": 2, "links": {"fog_to_cloud": 250, "fog_to_device": 10}}]


def test_link_totals_reads_the_prometheus_text() -> None:
    text = ('# HELP hffm_sent_bytes_total x\nhffm_sent_bytes_total{link="fog_to_cloud"} 1234.0\n'
            'hffm_sent_messages_total{link="fog_to_cloud"} 3.0\nhffm_sent_bytes_total{link="other"} nan-ish\n')
    assert link_totals(text) == {"fog_to_cloud": 1234.0}


def test_job_status_gives_progress_and_an_eta_once_two_rounds_were_seen(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import cloud.dashboard.view as view_module

    clock = [1000.0]
    monkeypatch.setattr(view_module.time, "time", lambda: clock[0])
    view = FleetView(fleet=FLEET)
    view.on_control(_ctl("cloud", 1, 0))
    assert view.job_status()["eta_s"] is None
    clock[0] = 1100.0
    view.on_control(_ctl("cloud", 2, 0))  # 100 s per round; round 2 of 3 just opened: 2 rounds left
    clock[0] = 1120.0
    status = view.job_status()
    assert (status["rounds_done"], status["progress"], status["eta_s"]) == (1, 0.333, 180.0)
    view.on_control(_ctl("cloud", 4, 0, final=True))
    assert view.job_status()["eta_s"] == 0.0 and view.job_status()["progress"] == 1.0
