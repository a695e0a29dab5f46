"""What every wire type shares: the schema versions, the dataclass decorator and the checks ``__post_init__`` runs.

Each check raises ``ValueError`` naming the field and quoting the bad value; the codec turns it into a
:class:`~hffm_core.errors.DecodeError`. Nothing here imports another protocol module, so that the message types,
the envelope and the topic scheme can all use it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

SCHEMA_VERSION = 1
# The types that name the job they belong to (RoundControl, ModuleVersion, NodeState) gained a ``job`` field in
# schema 2; every other type is still at SCHEMA_VERSION. A type's version is the default of its ``schema`` field.
JOB_SCHEMA_VERSION = 2
# NodeState gained ``lora_ranks`` (the LoRA ranks a device holds / a fog serves: mixed ranks) in schema 3.
RANKS_SCHEMA_VERSION = 3
MAX_JOB_LEN = 64
MAX_KEY_LEN = 512  # characters of an idempotency key
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,%d}" % (MAX_JOB_LEN - 1))
_SEGMENT = re.compile(r"^[a-z0-9_-]{1,64}$")

# Every wire type: frozen, slotted, keyword-only (its field order is its positional wire order).
wire_type = dataclass(frozen=True, slots=True, kw_only=True)


def check(cond: bool, message: str) -> None:
    """Raises ``ValueError(message)`` unless ``cond``."""
    if not cond:
        raise ValueError(message)


def check_segment(value: str, what: str) -> str:
    """Return ``value`` if it is a valid topic segment (``[a-z0-9_-]{1,64}``): node ids, fleets, targets.

    Raises:
        ValueError: naming ``what`` and quoting the bad value.
    """
    if not isinstance(value, str) or not _SEGMENT.fullmatch(value):
        raise ValueError(f"invalid {what} {value!r}: must match [a-z0-9_-]{{1,64}}")
    return value


def check_segments(values: Iterable[str], what: str) -> None:
    """:func:`check_segment` on each of ``values``."""
    for value in values:
        check_segment(value, what)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def nonneg_int(value: object, what: str) -> None:
    check(isinstance(value, int) and not isinstance(value, bool) and value >= 0, f"{what} must be an int >= 0")


def positive_int(value: object, what: str) -> None:
    nonneg_int(value, what)
    check(value > 0, f"{what} must be an int > 0")  # type: ignore[operator]


def finite_nonneg(value: object, what: str) -> None:
    ok = is_number(value) and math.isfinite(value) and value >= 0  # type: ignore[arg-type,operator]
    check(ok, f"{what} must be a finite number >= 0, got {value!r}")


def check_stamp(value: object, what: str) -> None:
    """A version stamp: a pair of ints >= 0, ``(global_round, stage)``."""
    check(isinstance(value, tuple) and len(value) == 2, f"{what} must be (global_round, stage)")
    for i, item in enumerate(value):  # type: ignore[arg-type]
        nonneg_int(item, f"{what}[{i}]")


def check_key(value: object) -> None:
    """An idempotency key: a non-empty string of at most :data:`MAX_KEY_LEN` characters."""
    check(isinstance(value, str) and 0 < len(value) <= MAX_KEY_LEN,
          f"idempotency_key must be a non-empty string of at most {MAX_KEY_LEN} characters")


def check_job_id(value: object, *, allow_empty: bool = True) -> None:
    """Raises ``ValueError`` unless ``value`` is a job id: 1..64 of ``[A-Za-z0-9._-]``, starting with a letter or digit
    (or, with ``allow_empty``, the empty string: a node that has not learned its job yet)."""
    ok = isinstance(value, str) and ((allow_empty and value == "") or _JOB_ID.fullmatch(value) is not None)
    check(ok, f"job id must be 1..{MAX_JOB_LEN} characters of [A-Za-z0-9._-] starting with a letter or digit"
              f"{' (or empty)' if allow_empty else ''}, got {value!r}")


def check_fields(message: object, *, segments: Iterable[str] = (), nonneg: Iterable[str] = (),
                 positive: Iterable[str] = (), stamps: Iterable[str] = ()) -> None:
    """The checks most wire types run on their fields, each named after its field: topic segments (node ids, the
    fleet: :func:`check_segment`), ints >= 0 (:func:`nonneg_int`), ints > 0 (:func:`positive_int`) and version
    stamps (:func:`check_stamp`), in that order.

    Raises:
        ValueError: the first field that fails, named and quoted.
    """
    for name in segments:
        check_segment(getattr(message, name), name)
    for name in nonneg:
        nonneg_int(getattr(message, name), name)
    for name in positive:
        positive_int(getattr(message, name), name)
    for name in stamps:
        check_stamp(getattr(message, name), name)
