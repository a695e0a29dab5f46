"""The fog's topology part, an object the gateway holds (docs/topology.md): D2D relays for its devices' groups and
the fog-to-fog exchange with its neighbour fogs.

- Relays: when a cluster round opens, each D2D group gets a relay per module (fog_gateway/d2d.py), announced in
  ``RoundControl.relays``; an update whose ``covers`` names several devices counts for each of them.
- Neighbour fogs: when a cluster round but the last of a global round closes, the gateway shares its own
  aggregates on ``fogpeer/{fog}/{module}`` (bridged to its neighbours) and waits, without blocking its loop, for
  theirs (fog_gateway/horizontal.py); it then publishes the mixed cluster versions. Updates that arrive for the
  round while it waits hear ``expired``, as after any close.

It reads the round from the :class:`~fog_gateway.round_engine.FogRound` it is handed and publishes through the
``publish`` callback it was built with (True when the transport took the message).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, MutableMapping

import numpy as np

from fog_gateway.config import FogD2dConfig
from fog_gateway.d2d import choose_relays, reporters
from fog_gateway.horizontal import NeighbourMix
from fog_gateway.round_engine import FogRound
from hffm_core.compression import Codec
from hffm_core.compression.module_codec import layout_of, pack, same_layout, unpack
from hffm_core.errors import DecodeError
from hffm_core.protocol import FogAggregate, ModuleKey, ModuleUpdate, NodeState, encode, topics
from hffm_core.protocol.topics import Topic

log = logging.getLogger(__name__)
State = dict[str, np.ndarray]
Refused = list[tuple[ModuleKey, str, str]]


def delta_from(state: Mapping[str, np.ndarray], start: Mapping[str, np.ndarray]) -> State:
    """``state - start`` per tensor, as float32."""
    return {n: (a - start[n]).astype(np.float32) for n, a in state.items()}


class FogNeighbours:
    def __init__(self, *, fleet: str, node: str, d2d: FogD2dConfig, codec_for: Callable[[ModuleKey], Codec],
                 publish: Callable[[str, bytes], bool], rejected: MutableMapping[str, int]) -> None:
        """``codec_for``: the codec a module's shared aggregate is packed with; ``rejected``: where a duplicate
        neighbour aggregate is counted."""
        self.fleet, self.node, self.d2d = fleet, node, d2d
        self.codec_for, self.publish, self.rejected = codec_for, publish, rejected
        self.groups = [list(g) for g in d2d.groups]
        self.mix = NeighbourMix(node, d2d.neighbours, wait_s=d2d.neighbour_wait_s) if d2d.neighbours else None
        self.relays: dict[str, dict[str, str]] = {}
        # While a closed round waits for the neighbours: (when it closed, its own new states, what it refused).
        self.mixing: tuple[float, dict[ModuleKey, State], Refused] | None = None
        self.mixed_log: list[str] = []

    def subscriptions(self) -> list[str]:
        return [topics.fogpeer_filter(self.fleet, n) for n in (self.mix.neighbours if self.mix else [])]

    # -- D2D relays --------------------------------------------------------------------------------------------
    def choose_relays(self, participants: Mapping[ModuleKey, set[str]], adverts: Mapping[str, NodeState]) -> None:
        self.relays = choose_relays(self.groups, participants, adverts, self.d2d.uplink_rate_bps) if self.groups \
            else {}

    def reachable(self, device: str, online: Collection[str]) -> bool:
        """Whether another member of ``device``'s D2D group is ``online`` (an offline device may still reach this
        fog through it, so the open round keeps waiting for it until its deadline)."""
        return any(device in g and any(m != device and m in online for m in g) for g in self.groups)

    def reporters(self, msg: ModuleUpdate) -> tuple[str, ...]:
        """The devices ``msg`` stands for. Raises DecodeError for covers outside the sender's D2D group."""
        return reporters(msg, self.groups)

    # -- neighbour fogs ----------------------------------------------------------------------------------------
    def on_fogpeer(self, topic: Topic, msg: FogAggregate, rnd: FogRound) -> None:
        """Keep a neighbour's aggregate of ``rnd``'s global round. Raises DecodeError for one not from a neighbour
        or whose tensors do not fit the module."""
        if self.mix is None or msg.fog not in self.mix.neighbours or topic.fog != msg.fog or msg.cluster_round < 1:
            raise DecodeError(f"fog aggregate from {msg.fog!r} on {topic} is not from a neighbour of {self.node} "
                              "or not a cluster round's")
        start = rnd.start.get(msg.key)
        if msg.global_round != rnd.at.g or start is None:
            log.info("fog %s: aggregate of %s from %s for round (%d,%d) not mixed: this fog is at global round %d "
                     "and %s", self.node, msg.key, msg.fog, msg.global_round, msg.cluster_round, rnd.at.g,
                     "holds it" if start is not None else "does not hold it")
            return
        delta = unpack(msg, layout_of(start))
        if not same_layout(delta, start):
            raise DecodeError(f"aggregate of {msg.key} from {msg.fog} does not match the module's tensors")
        if not self.mix.offer(msg, delta):
            self.rejected["duplicate"] += 1

    def wants_mix(self, rnd: FogRound) -> bool:
        """Whether the closing cluster round is shared with the neighbours first (all but a global round's last)."""
        return self.mix is not None and rnd.at.c < rnd.agg_every()

    def share(self, new_states: dict[ModuleKey, State], refused: Refused, rnd: FogRound, now: float) -> None:
        """Publish this fog's own aggregates of the closing cluster round for its neighbours, then wait (``ready``);
        the round is closed to updates meanwhile."""
        g, c = rnd.at.g, rnd.at.c
        for key, new in sorted(new_states.items(), key=lambda kv: str(kv[0])):
            weight = rnd.own_weight(key)
            if weight <= 0:
                continue
            # The fog's uplink codec, without error feedback: what neighbours mix in is not carried over.
            packed, _sent = pack(delta_from(new, rnd.start[key]), self.codec_for(key), seed=0)
            agg = FogAggregate(fleet=self.fleet, fog=self.node, key=key, global_round=g, cluster_round=c,
                               total_weight=weight, num_devices=max(1, len(rnd.book.contributors(key))),
                               idempotency_key=FogAggregate.default_key(self.fleet, self.node, g, c, key),
                               **packed.fields())
            if not self.publish(topics.fogpeer(self.fleet, self.node, key), encode(agg)):
                log.warning("fog %s: aggregate of %s not shared with the neighbours (not connected)", self.node, key)
        self.mixing = (now, new_states, refused)
        rnd.in_round = False

    def ready(self, rnd: FogRound) -> bool:
        """Whether the neighbours' aggregates of the shared round are in (or their wait is over)."""
        assert self.mix is not None and self.mixing is not None
        return self.mix.ready(rnd.at.g, rnd.at.c, self.mixing[0])

    def mixed(self, rnd: FogRound, true: Mapping[ModuleKey, State]) -> tuple[dict[ModuleKey, State], Refused]:
        """Every module of the shared round mixed with the neighbours' aggregates that came in (those without any
        stay as they were), and what the round refused at its close; the wait is over."""
        assert self.mix is not None and self.mixing is not None
        _since, new_states, refused = self.mixing
        self.mixing = None
        g, c = rnd.at.g, rnd.at.c
        out = dict(new_states)
        mixed = []
        for key in rnd.modules:
            own = new_states.get(key, true[key])
            state, used = self.mix.mix(g, c, key, rnd.start[key], delta_from(own, rnd.start[key]),
                                       rnd.own_weight(key) if key in new_states else 0.0)
            if used:
                out[key] = state
                mixed.append(key)
        self.mix.forget_before(g)
        self.mixed_log = [str(k) for k in mixed]
        log.info("fog %s: cluster round (%d,%d) mixed %d module(s) with neighbour aggregates", self.node, g, c,
                 len(mixed))
        return out, refused
