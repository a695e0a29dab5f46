"""The fog's devices as their retained adverts describe them: who is online, which modules each holds, and since
when an offline one has been offline. Pure state (times are passed in), held by the gateway and read by the round
engine's selection and by the close rules."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from hffm_core.aggregation.ranks import module_rank
from hffm_core.errors import AggregationError
from hffm_core.protocol import ModuleKey, NodeState


class DeviceRoster:
    def __init__(self, devices: Iterable[str], *, offline_grace_s: float) -> None:
        self.expected = set(devices)
        self.offline_grace_s = offline_grace_s
        self.adverts: dict[str, NodeState] = {}
        self.holdings: dict[str, set[ModuleKey]] = {}  # online devices -> the modules they hold
        self.offline_since: dict[str, float] = {}  # device -> when its advert (or last will) said offline
        # device -> the modules its last advert that listed any named: a last will is written before the device
        # knows its modules, so an offline device's will must not make the fog forget what it holds
        self.known: dict[str, frozenset[ModuleKey]] = {}
        self.advertised: set[int] = set()  # the LoRA ranks in this fog's last advert
        self._holders: dict[ModuleKey, frozenset[str]] | None = None  # module -> its online holders (built lazily)

    def update(self, msg: NodeState, now: float) -> str:
        """Take a device's advert; returns ``"back"`` (online again), ``"gone"`` (it was online, now offline) or
        ``""``."""
        self.adverts[msg.node] = msg
        self._holders = None
        if msg.modules:
            self.known[msg.node] = frozenset(msg.modules)
        if msg.online:
            self.holdings[msg.node] = set(msg.modules)
            return "back" if self.offline_since.pop(msg.node, None) is not None else ""
        self.offline_since.setdefault(msg.node, now)
        return "gone" if self.holdings.pop(msg.node, None) is not None else ""

    def keep_job(self, job: str) -> None:
        """Forget the adverts of devices in another job than ``job`` (an advert without a job is kept)."""
        self._holders = None
        for dev in [d for d, a in self.adverts.items() if a.job not in ("", job)]:
            del self.adverts[dev]
            self.known.pop(dev, None)
            self.holdings.pop(dev, None)
            self.offline_since.pop(dev, None)

    def holders(self, key: ModuleKey) -> set[str]:
        """The online devices that hold ``key`` (from an index rebuilt after an advert changed them: a round asks
        for each update it takes, so this must not cost O(devices) each time)."""
        if self._holders is None:
            index: dict[ModuleKey, set[str]] = {}
            for dev, keys in self.holdings.items():
                for k in keys:
                    index.setdefault(k, set()).add(dev)
            self._holders = {k: frozenset(v) for k, v in index.items()}
        return set(self._holders.get(key, ()))

    def offline(self, now: float) -> set[str]:
        """The devices whose advert (or last will) has said offline for longer than ``offline_grace_s``: a new round
        starts without waiting for them. An online advert brings a device back."""
        limit = now - self.offline_grace_s
        return {d for d, since in self.offline_since.items() if since <= limit}

    def all_in(self, now: float) -> bool:
        """Whether every expected device has advertised or has been offline for longer than the grace."""
        return self.expected <= set(self.holdings) | self.offline(now)

    def held(self, *, everything: bool = False) -> set[ModuleKey]:
        """The modules the online devices hold; with ``everything``, also those an offline device last advertised
        (its last will names none)."""
        held: set[ModuleKey] = set().union(*self.holdings.values()) if self.holdings else set()
        if everything:
            held |= set().union(*self.known.values(), set())
        return held

    def served(self, states: Mapping[ModuleKey, Mapping[str, np.ndarray]]) -> tuple[int, ...]:
        """The LoRA ranks this fog serves (its advert's ``lora_ranks``): those its devices advertise, and the rank
        of the global adapter versions it holds (``states``)."""
        ranks = {r for a in self.adverts.values() for r in a.lora_ranks}
        for key, state in states.items():
            if key.kind == "adapter":
                try:
                    rank = module_rank({n: a.shape for n, a in state.items()})
                except AggregationError:
                    rank = None
                ranks |= {rank} if rank else set()
        self.advertised = set(ranks)
        return tuple(sorted(ranks))

    def new_rank(self, msg: NodeState) -> bool:
        """Whether a device's advert names a LoRA rank this fog has not advertised yet."""
        return not set(msg.lora_ranks) <= self.advertised
