"""The fog's side of D2D (docs/topology.md): choosing each group's relay per module and round, and checking the
devices an averaged update claims to cover.

Relay rule: among the group's devices selected for the module this round, the one with the best score
``rate * battery * (1 - load / 2)`` relays for the others, where ``rate`` is its fog link's rate from the link model
(``[d2d] uplink_rate_bps``; 1 when not given), ``battery`` its advertised battery fraction (1 when it has no
battery sensor: mains-powered) and ``load`` its advertised CPU use (0..1). Ties go to the lowest id. A group with
one selected device has no relay for that module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hffm_core.errors import DecodeError
from hffm_core.protocol import ModuleKey, ModuleUpdate, NodeState


def relay_score(device: str, adverts: Mapping[str, NodeState], rates: Mapping[str, float]) -> float:
    advert = adverts.get(device)
    telemetry = (advert.telemetry if advert is not None else None) or {}
    battery = telemetry.get("battery_percent")
    load = telemetry.get("cpu_percent")
    score = float(rates.get(device, 1.0))
    if battery is not None:
        score *= max(0.0, min(1.0, battery / 100.0))
    if load is not None:
        score *= 1.0 - 0.5 * max(0.0, min(1.0, load / 100.0))
    return score


def choose_relays(groups: Sequence[Sequence[str]], participants: Mapping[ModuleKey, set[str]],
                  adverts: Mapping[str, NodeState], rates: Mapping[str, float]) -> dict[str, dict[str, str]]:
    """``RoundControl.relays``: module -> {member: relay} for every group with >= 2 selected devices."""
    relays: dict[str, dict[str, str]] = {}
    for key, chosen in sorted(participants.items(), key=lambda kv: str(kv[0])):
        routes: dict[str, str] = {}
        for group in groups:
            members = sorted(set(group) & chosen)
            if len(members) < 2:
                continue
            relay = max(members, key=lambda d: (relay_score(d, adverts, rates), [-ord(ch) for ch in d]))
            routes.update({m: relay for m in members if m != relay})
        if routes:
            relays[str(key)] = routes
    return relays


def reporters(msg: ModuleUpdate, groups: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """The devices whose deltas ``msg`` carries: its sender, or the devices it covers.

    Raises:
        DecodeError: ``covers`` names a device outside the sender's D2D group (or the sender has none).
    """
    if not msg.covers:
        return (msg.sender,)
    group = next((set(g) for g in groups if msg.sender in g), None)
    if group is None or not set(msg.covers) <= group:
        raise DecodeError(f"update of {msg.key} from {msg.sender!r} covers {list(msg.covers)}, which are not all in "
                          f"its D2D group")
    return msg.covers
