"""Downlink module versions: compressed deltas against what the receivers already hold, full state as fallback.

A :class:`VersionPublisher` (fog for its devices, cloud for the fogs) keeps two states per module: the true state
``T`` its aggregation produces, and the published state ``P`` that every in-sync receiver holds. Publishing
encodes ``T - P`` with the module kind's codec, advances ``P`` by exactly what receivers decode, and stamps the
message with ``delta_base`` = the stamp of the previous ``P``. Whatever a lossy codec left out stays in ``T - P``
and goes out with the next version (implicit error feedback), so receivers never drift from ``P``.

A :class:`VersionReceiver` (device, fog) applies a delta only onto the exact version it names; when it does not
hold that version (it joined late, or missed one) it asks for a resync, and the publisher answers with the full
``P`` at the current stamp (raw fp32). The first version of a module, and every version under the ``fp32`` codec,
is sent as full state.

Every version names the job it belongs to (``ModuleVersion.job``, the publisher's ``job``). A :class:`JobWatch`
(device, fog) knows which job its node is in and sets aside the versions of any other job: brokers keep an earlier
job's retained versions, and a node that applied one would hold a stamp above every version of the new job.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from hffm_core.aggregation.ranks import at_rank, fit_rank, module_rank, rank_of_size
from hffm_core.compression import Codec, make_codec
from hffm_core.compression.module_codec import layout_of, pack, same_layout, unpack
from hffm_core.compression.table import CodecTable
from hffm_core.errors import AggregationError, DecodeError
from hffm_core.protocol import RAW_CODEC, ModuleKey, ModuleVersion

log = logging.getLogger(__name__)
State = dict[str, np.ndarray]
Stamp = tuple[int, int]
PARKED_JOBS = 4  # jobs whose versions are kept aside at once (the newest per module each)
OTHER_JOB = "other_job"  # the reject reason a message of another job is counted under


def unpack_ranked(msg: ModuleVersion | Any, layout: Mapping[str, tuple[int, ...]]) -> State:
    """A module message's tensors where the sender's LoRA rank may differ from ``layout``'s (mixed ranks,
    hffm_core/aggregation/ranks.py): an encoded (flat) message is decoded at the rank its size implies.

    Raises:
        DecodeError: what ``unpack`` raises, or tensors that fit ``layout`` at no LoRA rank.
    """
    size = sum(int(np.prod(e.shape)) for e in getattr(msg, "encoded", ()) or ())
    rank = module_rank(layout)
    if msg.codec != RAW_CODEC and rank is not None:
        sent = rank_of_size(layout, size)
        layout = at_rank(layout, sent) if sent is not None else layout
    state = unpack(msg, layout)
    if layout is not None and layout_of(state) == layout:
        return state  # the receiver's own layout: nothing to fit
    try:
        sent_rank = module_rank(layout_of(state))
        fit_rank(state, at_rank(layout, sent_rank) if sent_rank is not None else layout)
    except AggregationError as exc:
        raise DecodeError(f"message for {msg.key} does not match the module's tensors ({exc})") from None
    return state


class ResyncNeeded(Exception):
    """A delta arrived for a base version the receiver does not hold."""

    def __init__(self, key: ModuleKey, held: Stamp | None, base: Stamp) -> None:
        super().__init__(f"{key}: delta against {base}, but holding {held}")
        self.key = key


class VersionPublisher:
    def __init__(self, *, fleet: str, sender: str, codecs: Mapping[str, Codec], job: str = "") -> None:
        """``codecs``: a :class:`CodecTable` (``make_codecs``) or a mapping of selectors to codecs; a module no
        selector names is sent raw."""
        self.fleet = fleet
        self.sender = sender
        self.job = job  # named in every version published
        self.raw = make_codec(RAW_CODEC)
        self.codecs = CodecTable.of(codecs, self.raw)
        self.true: dict[ModuleKey, State] = {}
        self.published: dict[ModuleKey, State] = {}
        self.stamps: dict[ModuleKey, Stamp] = {}

    def version(self, key: ModuleKey, stamp: Stamp, *, full: bool = False) -> ModuleVersion:
        """The next version of ``key`` at ``stamp``: a delta ``T - P`` where possible, else (or with ``full``) the
        full state. A publisher about to stop sends ``full`` so that nobody needs a resync it could not answer."""
        target = self.true[key]
        codec = self.codecs.for_key(key)
        base = self.stamps.get(key)
        if full or base is None or codec.name == RAW_CODEC or not same_layout(target, self.published[key]):
            self.published[key] = {n: a.copy() for n, a in target.items()}
            return self._full(key, stamp)
        delta = {n: a - self.published[key][n] for n, a in target.items()}
        packed, sent = pack(delta, codec, seed=zlib.crc32(f"{self.sender}/{stamp}/{key}".encode()))
        self.published[key] = {n: (a + sent[n]).astype(np.float32) for n, a in self.published[key].items()}
        self.stamps[key] = stamp
        return ModuleVersion(fleet=self.fleet, sender=self.sender, key=key, global_round=stamp[0], stage=stamp[1],
                             delta_base=base, job=self.job, **packed.fields())

    def resync(self, key: ModuleKey) -> ModuleVersion:
        """The full published state at its current stamp (for a receiver that lost track).

        Raises:
            DecodeError: nothing was ever published for ``key``.
        """
        if key not in self.stamps:
            raise DecodeError(f"resync asked for {key}, which was never published")
        return self._full(key, self.stamps[key])

    def _full(self, key: ModuleKey, stamp: Stamp) -> ModuleVersion:
        packed, _ = pack(self.published[key], self.raw)
        self.stamps[key] = stamp
        return ModuleVersion(fleet=self.fleet, sender=self.sender, key=key, global_round=stamp[0], stage=stamp[1],
                             job=self.job, **packed.fields())


class VersionReceiver:
    def __init__(self, layouts: Mapping[ModuleKey, Mapping[str, tuple[int, ...]]] | None = None, *,
                 cross_rank: str = "") -> None:
        """``layouts``: the tensor names and shapes each module must have (a device knows them from its model);
        without them a module's first version fixes its layout. ``cross_rank``: why this receiver cannot take a
        version at a higher LoRA rank than its own (e.g. its adapter variant), or "" when it truncates one."""
        self.layouts = {k: dict(v) for k, v in (layouts or {}).items()}
        self.cross_rank = cross_rank
        self.states: dict[ModuleKey, State] = {}
        self.stamps: dict[ModuleKey, Stamp] = {}

    def apply(self, msg: ModuleVersion) -> State | None:
        """Apply a version; return the module's new state, or None when it is not newer than what is held.

        Raises:
            ResyncNeeded: a delta against a version this receiver does not hold.
            DecodeError: malformed tensors, or a delta whose tensors do not match the held state.
        """
        held = self.stamps.get(msg.key)
        if held is not None and msg.stamp <= held:
            return None
        if msg.delta_base is not None and held != msg.delta_base:
            raise ResyncNeeded(msg.key, held, msg.delta_base)
        if msg.delta_base is None and msg.codec != RAW_CODEC:
            raise DecodeError(f"a full state of {msg.key} must be raw fp32, not {msg.codec!r}")
        expected = self.layouts.get(msg.key) or (layout_of(self.states[msg.key]) if msg.key in self.states else None)
        state = unpack_ranked(msg, expected) if expected is not None else unpack(msg, None)
        if any(a.dtype != np.float32 for a in state.values()):
            raise DecodeError(f"version of {msg.key} holds non-float32 tensors")
        if expected is not None and layout_of(state) != expected:
            state = self._own_rank(msg.key, state, expected)
        if msg.delta_base is not None:
            current = self.states[msg.key]
            state = {n: (current[n] + a).astype(np.float32) for n, a in state.items()}
            if not all(np.isfinite(a).all() for a in state.values()):
                raise DecodeError(f"applying the delta to {msg.key} gives NaN or Inf")
        self.states[msg.key] = state
        self.stamps[msg.key] = msg.stamp
        return state


    def _own_rank(self, key: ModuleKey, state: State, expected: Mapping[str, tuple[int, ...]]) -> State:
        """A version at a higher LoRA rank than this receiver's, truncated to its own rank (mixed ranks).

        Raises:
            DecodeError: tensors that do not fit the module at any rank, a version at a lower rank than this
                receiver's (the fleet serves less than its ``lora_r``), or one it may not truncate (``cross_rank``).
        """
        try:
            mine, sent = module_rank(expected), module_rank(layout_of(state))
            fitted = fit_rank(state, expected)
        except AggregationError:
            raise DecodeError(f"version of {key} does not match the module's tensors") from None
        if mine is None or sent is None or sent < mine:
            raise DecodeError(f"version of {key} has LoRA rank {sent}, below this node's lora_r {mine}: set "
                              f"[model] lora_r to at most the rank the fleet serves (the cloud's lora_r)")
        if self.cross_rank:
            raise DecodeError(f"version of {key} has LoRA rank {sent}, this node's is {mine}: {self.cross_rank}")
        return {n: np.ascontiguousarray(a) for n, a in fitted.items()}


class JobWatch:
    """The job a node is in (None until it learns one), and the module versions of other jobs it set aside.

    A node learns its job from an announcement of its upstream (``join``). A version of another job is parked, the
    newest per module for the last few jobs: a retained version of a new job may arrive before the announcement that
    names the job, and is applied once the node joins it. Messages of another job that the node is not waiting for
    are counted under ``other_job`` and logged once per job id.
    """

    def __init__(self, who: str, rejected: Counter[str], job: str | None = None) -> None:
        self.who = who
        self.rejected = rejected
        self.job = job
        self.parked: dict[str, dict[ModuleKey, ModuleVersion]] = {}
        self._logged: set[str] = set()

    def ignore(self, job: str, what: str) -> None:
        """Count (and, the first time for ``job``, log) a message of another job that is ignored."""
        self.rejected[OTHER_JOB] += 1
        if job not in self._logged:
            self._logged.add(job)
            mine = "in no job yet" if self.job is None else f"in job {self.job!r}"
            log.warning("%s: ignoring %s of job %r (this node is %s); further messages of that job are only counted, "
                        "under %r", self.who, what, job, mine, OTHER_JOB)

    def park(self, msg: ModuleVersion) -> None:
        """Set aside a version of a job this node is not in (counted and logged while it is in another job)."""
        if self.job is not None:
            self.ignore(msg.job, f"a version of {msg.key}")
        kept = self.parked.pop(msg.job, {})
        held = kept.get(msg.key)
        if held is None or msg.stamp > held.stamp or (msg.stamp == held.stamp and msg.delta_base is None):
            kept[msg.key] = msg
        self.parked[msg.job] = kept  # most recently touched last
        while len(self.parked) > PARKED_JOBS:
            del self.parked[next(iter(self.parked))]

    def join(self, job: str) -> list[ModuleVersion]:
        """Be in ``job`` from now on; returns the versions of it set aside so far (oldest stamp first), and forgets
        those of every other job."""
        self.job = job
        mine = self.parked.pop(job, {})
        self.parked.clear()
        return sorted(mine.values(), key=lambda v: v.stamp)
