"""DeviceRoster: who is online, what each device holds, and what an offline device's last will leaves known."""

from __future__ import annotations

from fog_gateway.roster import DeviceRoster
from hffm_core.protocol import ModuleKey, NodeState

HEAD, ENC = ModuleKey.head("digit"), ModuleKey.encoder("image")


def _advert(node: str, online: bool, modules: tuple[ModuleKey, ...] = ()) -> NodeState:
    return NodeState(fleet="f", node=node, role="device", fog="fog-1", online=online, modules=modules)


def test_a_last_will_does_not_make_the_fog_forget_the_modules_of_an_offline_device() -> None:
    roster = DeviceRoster(["d1", "d2"], offline_grace_s=10.0)
    assert roster.update(_advert("d1", True, (HEAD,)), now=0.0) == ""
    assert roster.update(_advert("d2", True, (ENC,)), now=0.0) == ""
    assert roster.update(_advert("d2", False), now=1.0) == "gone"  # its will: written before it knew its modules
    assert roster.holders(ENC) == set() and roster.held() == {HEAD}
    assert roster.held(everything=True) == {HEAD, ENC}  # the final versions still go out for d2's modules
    assert roster.update(_advert("d2", True, (ENC,)), now=2.0) == "back"
    assert roster.holders(ENC) == {"d2"}


def test_offline_after_the_grace_and_all_in() -> None:
    roster = DeviceRoster(["d1", "d2"], offline_grace_s=10.0)
    roster.update(_advert("d1", True, (HEAD,)), now=0.0)
    assert not roster.all_in(0.0)
    roster.update(_advert("d2", False), now=0.0)
    assert roster.offline(5.0) == set() and not roster.all_in(5.0)
    assert roster.offline(10.0) == {"d2"} and roster.all_in(10.0)


def test_another_jobs_adverts_are_forgotten_with_what_they_held() -> None:
    roster = DeviceRoster(["d1"], offline_grace_s=10.0)
    roster.update(NodeState(fleet="f", node="d1", role="device", fog="fog-1", online=True, modules=(HEAD,),
                            job="20261206T000000-aaaaaa"), now=0.0)
    roster.keep_job("20261206T000000-bbbbbb")
    assert roster.adverts == {} and roster.held(everything=True) == set()
    assert roster.holders(HEAD) == set()  # the holder index follows the forgotten advert


def test_holders_is_a_copy_the_caller_may_change() -> None:
    roster = DeviceRoster(["d1", "d2"], offline_grace_s=10.0)
    roster.update(_advert("d1", True, (HEAD, ENC)), now=0.0)
    got = roster.holders(HEAD)
    got.add("intruder")
    assert roster.holders(HEAD) == {"d1"}
    roster.update(_advert("d2", True, (HEAD,)), now=1.0)
    assert roster.holders(HEAD) == {"d1", "d2"} and roster.holders(ENC) == {"d1"}
