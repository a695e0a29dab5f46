"""The topology half of the fog gateway (a mixin of :class:`~fog_gateway.service.FogGateway`): D2D relays for its
devices' groups, the fog-to-fog exchange with its neighbour fogs, and the E_agg schedule (docs/topology.md).

- Relays: when a cluster round opens, each D2D group gets a relay per module (fog_gateway/d2d.py), announced in
  ``RoundControl.relays``; an update whose ``covers`` names several devices counts for each of them.
- Neighbour fogs: when a cluster round but the last of a global round closes, the gateway shares its own
  aggregates on ``fogpeer/{fog}/{module}`` (bridged to its neighbours) and waits, without blocking its loop, for
  theirs (fog_gateway/horizontal.py); it then publishes the mixed cluster versions. Updates that arrive for the
  round while it waits hear ``expired``, as after any close.
- Schedule: E_agg per global round from fog_gateway/schedule.py, never above the cloud's ``agg_every``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from fog_gateway.d2d import choose_relays, reporters
from fog_gateway.horizontal import NeighbourMix
from fog_gateway.schedule import Schedule
from hffm_core.compression.module_codec import layout_of, pack, same_layout, unpack
from hffm_core.errors import DecodeError
from hffm_core.protocol import FogAggregate, ModuleKey, ModuleUpdate, encode, topics
from hffm_core.protocol.topics import Topic

log = logging.getLogger(__name__)
State = dict[str, np.ndarray]


class FogTopology:
    cfg: Any
    fleet: str
    node: str
    transport: Any
    round_g: int
    cluster_c: int
    in_round: bool
    modules: list[ModuleKey]
    start_state: dict[ModuleKey, State]
    participants: dict[ModuleKey, set[str]]
    adverts: dict[str, Any]
    book: Any
    pub: Any
    rejected: Any

    def _topology_init(self) -> None:
        d2d = self.cfg.d2d
        self.groups = [list(g) for g in d2d.groups]
        self.mix = NeighbourMix(self.node, d2d.neighbours, wait_s=d2d.neighbour_wait_s) if d2d.neighbours else None
        self.relays: dict[str, dict[str, str]] = {}
        self.mixing: tuple[float, dict[ModuleKey, State]] | None = None
        self.mixed_log: list[str] = []
        self.refused_at_close: list[tuple[ModuleKey, str, str]] = []
        sched = self.cfg.schedule
        self.schedule = Schedule(agg_every=sched.agg_every, adaptive=sched.adaptive, sync_share=sched.sync_share)
        self.e_agg = 0
        self.cluster_started = 0.0
        self.sync_started: float | None = None

    def _topology_subscriptions(self) -> list[str]:
        return [topics.fogpeer_filter(self.fleet, n) for n in (self.mix.neighbours if self.mix else [])]

    # -- D2D relays --------------------------------------------------------------------------------------------
    def _choose_relays(self) -> None:
        self.relays = choose_relays(self.groups, self.participants, self.adverts,
                                    self.cfg.d2d.uplink_rate_bps) if self.groups else {}

    def _d2d_reachable(self, device: str) -> bool:
        """Whether another member of ``device``'s D2D group is online (an offline device may still reach this fog
        through it, so the open round keeps waiting for it until its deadline)."""
        online = self.holdings  # type: ignore[attr-defined]
        return any(device in g and any(m != device and m in online for m in g) for g in self.groups)

    def _reporters(self, msg: ModuleUpdate) -> tuple[str, ...]:
        """The devices ``msg`` stands for. Raises DecodeError for covers outside the sender's D2D group."""
        return reporters(msg, self.groups)

    # -- neighbour fogs ----------------------------------------------------------------------------------------
    def _on_fogpeer(self, topic: Topic, msg: FogAggregate) -> None:
        if self.mix is None or msg.fog not in self.mix.neighbours or topic.fog != msg.fog or msg.cluster_round < 1:
            raise DecodeError(f"fog aggregate from {msg.fog!r} on {topic} is not from a neighbour of {self.node} "
                              "or not a cluster round's")
        if msg.global_round != self.round_g or msg.key not in self.start_state:
            log.info("fog %s: aggregate of %s from %s for round (%d,%d) not mixed: this fog is at global round %d "
                     "and %s", self.node, msg.key, msg.fog, msg.global_round, msg.cluster_round, self.round_g,
                     "holds it" if msg.key in self.start_state else "does not hold it")
            return
        delta = unpack(msg, layout_of(self.start_state[msg.key]))
        if not same_layout(delta, self.start_state[msg.key]):
            raise DecodeError(f"aggregate of {msg.key} from {msg.fog} does not match the module's tensors")
        if not self.mix.offer(msg, delta):
            self.rejected["duplicate"] += 1

    def _wants_mix(self) -> bool:
        return self.mix is not None and self.cluster_c < self._agg_every_now()

    def _own_weight(self, key: ModuleKey) -> float:
        got = self.book.contributors(key)
        return float(sum(n for d, n in self.book.round_weight.get(key, {}).items() if d in got))

    def _share(self, new_states: dict[ModuleKey, State]) -> None:
        """Publish this fog's own aggregates of the closing cluster round for its neighbours, then wait (tick)."""
        for key, new in sorted(new_states.items(), key=lambda kv: str(kv[0])):
            weight = self._own_weight(key)
            if weight <= 0:
                continue
            delta = {n: (a - self.start_state[key][n]).astype(np.float32) for n, a in new.items()}
            # The fog's uplink codec, without error feedback: what neighbours mix in is not carried over.
            packed, _sent = pack(delta, self._peer_codec(key), seed=0)
            agg = FogAggregate(fleet=self.fleet, fog=self.node, key=key, global_round=self.round_g,
                               cluster_round=self.cluster_c, total_weight=weight,
                               num_devices=max(1, len(self.book.contributors(key))),
                               idempotency_key=FogAggregate.default_key(self.fleet, self.node, self.round_g,
                                                                        self.cluster_c, key),
                               **packed.fields())
            if not self.transport.try_publish(topics.fogpeer(self.fleet, self.node, key), encode(agg),
                                              category="fog_to_fog"):
                log.warning("fog %s: aggregate of %s not shared with the neighbours (not connected)", self.node, key)
        self.mixing = (time.monotonic(), new_states)
        self.in_round = False  # the round is closed to updates while the neighbours' aggregates come in

    def _peer_codec(self, key: ModuleKey) -> Any:
        return self.up_codecs[key.kind]  # type: ignore[attr-defined]

    def _mix_ready(self) -> bool:
        assert self.mix is not None and self.mixing is not None
        return self.mix.ready(self.round_g, self.cluster_c, self.mixing[0])

    def _mixed(self, new_states: dict[ModuleKey, State]) -> dict[ModuleKey, State]:
        """Every module of the round mixed with the neighbours' aggregates that came in (those without any stay)."""
        assert self.mix is not None
        out = dict(new_states)
        mixed = []
        for key in self.modules:
            own = new_states.get(key, self.pub.true[key])
            delta = {n: (a - self.start_state[key][n]).astype(np.float32) for n, a in own.items()}
            state, used = self.mix.mix(self.round_g, self.cluster_c, key, self.start_state[key], delta,
                                       self._own_weight(key) if key in new_states else 0.0)
            if used:
                out[key] = state
                mixed.append(key)
        self.mix.forget_before(self.round_g)
        self.mixed_log = [str(k) for k in mixed]
        log.info("fog %s: cluster round (%d,%d) mixed %d module(s) with neighbour aggregates", self.node,
                 self.round_g, self.cluster_c, len(mixed))
        return out

    # -- schedule ----------------------------------------------------------------------------------------------
    def _agg_every_now(self) -> int:
        """This global round's E_agg (the cloud's after a restart, which does not journal the choice)."""
        plan = getattr(self, "plan", None)
        return self.e_agg or (plan.agg_every if plan is not None else 1)

    def _pick_agg_every(self, cap: int) -> None:
        now = time.monotonic()
        if self.sync_started is not None:
            self.schedule.observe_sync(now - self.sync_started)
            self.sync_started = None
        self.e_agg = self.schedule.pick(cap)
