"""Compression codecs for module deltas, one per file behind :class:`Codec`, in a strict registry.

``make_codec(name, params)`` builds a codec from the ``codec`` / ``codec_params`` an envelope carries; error feedback
(:class:`ErrorFeedback`) and whole-state helpers sit beside the codecs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from hffm_core.compression.base import Codec
from hffm_core.compression.error_feedback import ErrorFeedback
from hffm_core.compression.fp16 import Fp16Codec
from hffm_core.compression.fp32 import Fp32Codec
from hffm_core.compression.int8 import Int8Codec
from hffm_core.compression.lowrank import LowRankCodec
from hffm_core.compression.sign import SignCodec
from hffm_core.compression.state import decode_state, encode_state
from hffm_core.compression.topk import TopKCodec
from hffm_core.errors import ConfigError

CODECS: dict[str, type[Codec]] = {}
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def register(cls: type[Codec]) -> type[Codec]:
    """Add a codec class under ``cls.name``. Raises ``ValueError`` for a non-codec, an invalid name (lower-case
    letters, digits and ``_``, starting with a letter, at most 32 characters) or a duplicate."""
    if not isinstance(cls, type) or not issubclass(cls, Codec):
        raise ValueError(f"{cls!r} is not a Codec subclass")
    name = cls.name
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"codec name {name!r} is invalid; expected [a-z][a-z0-9_]{{0,31}}")
    if name in CODECS:
        raise ValueError(f"codec {name!r} is already registered")
    CODECS[name] = cls
    return cls


def make_codec(name: str, params: Mapping[str, Any] | None = None) -> Codec:
    """A codec by name with ``params`` over its defaults.

    Raises:
        ConfigError: an unknown codec, an unknown parameter, a parameter of the wrong type or a bad value.
    """
    if not isinstance(name, str) or name not in CODECS:
        raise ConfigError(f"unknown codec {name!r}; expected one of {sorted(CODECS)}")
    if params is not None and not isinstance(params, Mapping):
        raise ConfigError(f"codec {name!r}: parameters must be a mapping, got {type(params).__name__}")
    return CODECS[name](params)


for _cls in (Fp32Codec, Fp16Codec, Int8Codec, TopKCodec, SignCodec, LowRankCodec):
    register(_cls)

__all__ = [
    "CODECS",
    "Codec",
    "ErrorFeedback",
    "Fp16Codec",
    "SignCodec",
    "Fp32Codec",
    "Int8Codec",
    "LowRankCodec",
    "TopKCodec",
    "decode_state",
    "encode_state",
    "make_codec",
    "register",
]
