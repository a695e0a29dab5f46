"""Which codec codes which module: one codec per module kind, and optional overrides for single modules.

A link's codec table (``[uplink.<selector>]`` or ``[downlink.<selector>]`` in a node's config) is keyed by
*selectors*. Each selector names a set of modules:

========================  ============================================================
selector                  modules
========================  ============================================================
``encoder``               every encoder (likewise ``adapter``, ``head``)
``encoder:<modality>``    the encoder of one modality (``encoder:image``)
``adapter:<modality>``    every adapter on one modality
``adapter:<modality>:<task>``  one adapter (``adapter:image:digit``)
``head:<task>``           the head of one task (``head:digit``)
========================  ============================================================

A module takes the codec of its most specific selector: a single adapter before its modality's adapters, a named
module before its kind, its kind before ``fp32`` (what a kind without an entry uses). Overrides let an operator spend
bytes where they pay: modules differ in size by 10x (an 8-column image encoder against a 60-column inertial one), so
one codec per kind either wastes bytes on the large ones or loses accuracy on the small ones.

Pure: no MQTT, no config files; ``hffm_core.config.make_codecs`` builds a table from a config.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from hffm_core.compression.base import Codec
from hffm_core.errors import ConfigError
from hffm_core.protocol.keys import ANY, MODULE_KINDS, ModuleKey, check_name

__all__ = ["SELECTOR_FORMS", "CodecTable", "check_selector", "selectors_of"]

SELECTOR_FORMS = ("encoder", "adapter", "head", "encoder:<modality>", "adapter:<modality>",
                  "adapter:<modality>:<task>", "head:<task>")


def check_selector(text: object) -> str:
    """Return ``text`` if it is a valid selector (see the module docstring).

    Raises:
        ConfigError: naming the bad selector and the accepted forms.
    """
    bad = ConfigError(f"invalid module selector {text!r}; expected one of {', '.join(SELECTOR_FORMS)} "
                      "(names: [a-z0-9][a-z0-9-]*)")
    if not isinstance(text, str):
        raise bad
    parts = text.split(":")
    shapes = {"encoder": (1, 2), "adapter": (1, 2, 3), "head": (1, 2)}
    if parts[0] not in MODULE_KINDS or len(parts) not in shapes[parts[0]]:
        raise bad
    try:
        for name in parts[1:]:
            check_name(name, "name")
    except ValueError:
        raise bad from None
    return text


def selectors_of(key: ModuleKey) -> tuple[str, ...]:
    """The selectors that name ``key``, most specific first, ending with its kind."""
    if key.kind == "encoder":
        return (f"encoder:{key.modality}", "encoder")
    if key.kind == "head":
        return (f"head:{key.task}", "head")
    assert key.modality != ANY and key.task != ANY
    return (f"adapter:{key.modality}:{key.task}", f"adapter:{key.modality}", "adapter")


class CodecTable(Mapping[str, Codec]):
    """Codecs by selector. As a mapping it holds the three kinds (``table["head"]``: the kind's codec, ``fp32`` where
    the config names none); :meth:`for_key` resolves a module through its overrides."""

    def __init__(self, by_selector: Mapping[str, Codec], default: Codec) -> None:
        """``by_selector``: the configured codecs (each selector checked); ``default``: the codec of a kind that is
        not listed.

        Raises:
            ConfigError: an invalid selector.
        """
        self._by_selector = {check_selector(s): c for s, c in by_selector.items()}
        self._kinds = {kind: self._by_selector.get(kind, default) for kind in MODULE_KINDS}

    @classmethod
    def of(cls, codecs: Mapping[str, Codec], default: Codec) -> CodecTable:
        """``codecs`` itself if it is a table, else a table of its selectors (a plain ``{kind: codec}`` included)."""
        return codecs if isinstance(codecs, CodecTable) else cls(codecs, default)

    def for_key(self, key: ModuleKey) -> Codec:
        """The codec of module ``key``: its most specific selector's."""
        for selector in selectors_of(key):
            if selector in self._by_selector:
                return self._by_selector[selector]
        return self._kinds[key.kind]

    @property
    def overrides(self) -> dict[str, Codec]:
        """The configured selectors that name single modules or modalities (not whole kinds)."""
        return {s: c for s, c in self._by_selector.items() if ":" in s}

    def __getitem__(self, kind: str) -> Codec:
        return self._kinds[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)
