"""The relay's desk: a relay device collects its D2D group's deltas for a module and round, then sends one update.

A *bucket* is (global round, cluster round, module). The relay opens it with its own (uncoded) delta and the members
the fog's round announcement routes to it (``RoundControl.relays``); each member's delta (a ``ModuleUpdate`` on
``peer/{fog}/{relay}/{member}``) is decoded and added. The bucket is *due* once every member's delta is in or
``wait_s`` passed; the agent then sends the sample-weighted mean as one ``ModuleUpdate`` whose ``covers`` names
the relay and the members it holds, and acks the members. A member delta that arrives with no open bucket for it
(the relay sent already, skipped the round, or is not routed that member) is *forwarded alone*: the relay sends it
unchanged under its own name, ``covers`` naming the member (module relay: how a device with no working fog link
still gets its update aggregated). Deltas that arrive before the relay opened the bucket wait ``wait_s`` for it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from hffm_core.protocol import ModuleKey, ModuleUpdate

Bucket = tuple[int, int, ModuleKey]
INCLUDED_KEPT = 10_000
State = dict[str, np.ndarray]


@dataclass
class OpenBucket:
    own: State
    own_samples: int
    own_loss: float
    expected: set[str]
    due_at: float
    members: dict[str, tuple[State, ModuleUpdate]] = field(default_factory=dict)


@dataclass(frozen=True)
class Flush:
    """A bucket ready to send: the parts to average and the member updates to ack once it is queued."""

    bucket: Bucket
    parts: list[tuple[State, int]]
    covers: tuple[str, ...]
    loss: float
    acked: tuple[ModuleUpdate, ...]


class RelayDesk:
    """Open buckets of one relay device; pure state, no I/O (the agent decodes, sends and acks)."""

    def __init__(self, node: str, *, wait_s: float) -> None:
        self.node = node
        self.wait_s = wait_s
        self.open: dict[Bucket, OpenBucket] = {}
        self.early: dict[Bucket, list[tuple[float, State | None, ModuleUpdate]]] = {}
        self.closed: set[Bucket] = set()
        # Member keys already sent on (averaged or forwarded): a retransmission of one is acked again, never resent.
        self.included: dict[str, None] = {}

    def mark_included(self, keys: list[str]) -> None:
        self.included.update(dict.fromkeys(keys))
        while len(self.included) > INCLUDED_KEPT:
            del self.included[next(iter(self.included))]

    def open_bucket(self, bucket: Bucket, own: State, own_samples: int, own_loss: float, members: set[str],
                    *, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        ob = OpenBucket(own=own, own_samples=own_samples, own_loss=own_loss, expected=set(members),
                        due_at=now + self.wait_s)
        self.open[bucket] = ob
        for _at, delta, msg in self.early.pop(bucket, []):
            if delta is not None and msg.sender in ob.expected:
                ob.members[msg.sender] = (delta, msg)

    def offer(self, msg: ModuleUpdate, delta: State | None, *, routed_here: bool,
              now: float | None = None) -> str:
        """Take a member's delta. Returns ``"included"`` (sent on already: ack it again), ``"added"`` (in an open
        bucket), ``"duplicate"`` (already in it),
        ``"early"`` (the bucket is expected but not open yet) or ``"forward"`` (send it alone now).
        ``delta``: the decoded delta, or None when this device cannot decode it (it does not hold the module)."""
        now = time.monotonic() if now is None else now
        if msg.idempotency_key in self.included:
            return "included"
        bucket = (msg.global_round, msg.cluster_round, msg.key)
        ob = self.open.get(bucket)
        if ob is not None and msg.sender in ob.expected and delta is not None:
            if msg.sender in ob.members:
                return "duplicate"
            ob.members[msg.sender] = (delta, msg)
            return "added"
        if ob is None and bucket not in self.closed and routed_here and delta is not None:
            waiting = self.early.setdefault(bucket, [])
            if any(m.sender == msg.sender for _a, _d, m in waiting):
                return "duplicate"
            waiting.append((now, delta, msg))
            return "early"
        return "forward"

    def due(self, *, now: float | None = None) -> list[Flush]:
        """Buckets complete or past their wait, removed from the desk."""
        now = time.monotonic() if now is None else now
        out = []
        for bucket, ob in list(self.open.items()):
            if ob.expected <= set(ob.members) or now >= ob.due_at:
                del self.open[bucket]
                self.closed.add(bucket)
                parts = [(ob.own, ob.own_samples)] + [(d, m.num_samples) for d, m in
                                                       (ob.members[s] for s in sorted(ob.members))]
                out.append(Flush(bucket=bucket, parts=parts, covers=(self.node, *sorted(ob.members)),
                                 loss=ob.own_loss, acked=tuple(ob.members[s][1] for s in sorted(ob.members))))
                self.mark_included([m.idempotency_key for _d, m in ob.members.values()])
        return out

    def stale_early(self, *, now: float | None = None) -> list[ModuleUpdate]:
        """Early deltas whose bucket never opened within ``wait_s``: to forward alone."""
        now = time.monotonic() if now is None else now
        out = []
        for bucket, waiting in list(self.early.items()):
            keep = [(at, d, m) for at, d, m in waiting if now < at + self.wait_s]
            out += [m for at, _d, m in waiting if now >= at + self.wait_s]
            if keep:
                self.early[bucket] = keep
            else:
                del self.early[bucket]
        return out

    def forget_before(self, g: int, c: int) -> None:
        """Drop closed-bucket marks of rounds before (g, c) (bounded memory)."""
        self.closed = {b for b in self.closed if (b[0], b[1]) >= (g, c)}
