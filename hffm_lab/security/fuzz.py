"""The decode fuzz of ``hffm bench security``: random bytes and random msgpack structures against every wire type.

A crash is any exception other than :class:`~hffm_core.errors.DecodeError` leaving ``codec.decode``. The
structured inputs carry a wire type's ``type`` tag and random values (of random msgpack types, nested) for its fields,
so they get past the outer checks and exercise the field validation, in both wire forms the codec reads: half are
positional arrays ``[type, schema, <one value per further field>]`` (the form ``encode`` emits; sometimes an item
short or long), half are maps of field names (sometimes a field missing or an extra one). The byte inputs are random
strings and random edits of the structured ones. (tests/unit/protocol/test_decode_fuzz.py runs a larger, shrinkable
variant in the test suite, and tests/fuzz/ has a coverage-guided atheris target.)
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from hffm_core.errors import DecodeError
from hffm_core.protocol import codec


def _value(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.randrange(9 if depth < 3 else 6)
    if pick == 0:
        return rng.choice([0, 1, -1, 2**31, -(2**63), 2**64 - 1, rng.randrange(-1000, 1000)])
    if pick == 1:
        return rng.choice([0.0, -0.0, 1.5, float("nan"), float("inf"), 1e308, rng.random()])
    if pick == 2:
        return rng.choice(["", "a", "fog-1", "adapter:inertial:activity", "x" * rng.randrange(300), "é\x00"])
    if pick == 3:
        return rng.randbytes(rng.randrange(0, 64))
    if pick == 4:
        return rng.choice([None, True, False])
    if pick == 5:
        return rng.choice(["fp32", "sign", "int8", "topk", "nope"])
    if pick == 6:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if pick == 7:
        return {str(_value(rng, depth + 1))[:16]: _value(rng, depth + 1) for _ in range(rng.randrange(3))}
    return [rng.choice(["w", "module"]), rng.choice(["<f4", "f4", 1]), [rng.randrange(-1, 9)], rng.randbytes(16)]


def _structure(rng: random.Random, cls: type) -> dict[str, Any] | list[Any]:
    schema = rng.choice([1, 1, 1, 0, 2])
    names = [f.name for f in dataclasses.fields(cls) if f.name != "schema"]  # type: ignore[arg-type]
    if rng.random() < 0.5:  # the positional form: [type, schema, <further fields in order>]
        items: list[Any] = [cls.TYPE, schema, *(_value(rng) for _ in names)]  # type: ignore[attr-defined]
        roll = rng.random()
        if roll < 0.05:  # sometimes an item is missing
            del items[rng.randrange(1, len(items))]
        elif roll < 0.1:  # or there is one too many
            items.insert(rng.randrange(1, len(items) + 1), _value(rng))
        return items
    body: dict[str, Any] = {"type": cls.TYPE, "schema": schema}  # type: ignore[attr-defined]
    for name in names:
        if rng.random() > 0.05:  # sometimes a field is missing
            body[name] = _value(rng)
    if rng.random() < 0.05:
        body["extra"] = 1
    return body


def run_decode_fuzz(*, n_bytes: int = 20_000, n_structured: int = 20_000, seed: int = 0) -> dict[str, Any]:
    """Decode every input as every wire type; returns ``{"inputs", "decodes", "crashes", "accepted", "examples"}``
    where ``examples`` holds up to 5 crashing inputs (hex) with their exception."""
    rng = random.Random(seed)
    types = codec.WIRE_TYPES
    decodes = crashes = accepted = 0
    examples: list[str] = []

    def attempt(payload: bytes, cls: type) -> None:
        nonlocal decodes, crashes, accepted
        decodes += 1
        try:
            codec.decode(payload, cls)
            accepted += 1
        except DecodeError:
            pass
        except Exception as exc:  # noqa: BLE001 - counting crashes is the point
            crashes += 1
            if len(examples) < 5:
                examples.append(f"{cls.__name__}: {type(exc).__name__}: {exc} <- {payload[:80].hex()}")

    structured: list[bytes] = []
    for _ in range(n_structured):
        cls = rng.choice(types)
        payload = codec.pack_raw(_structure(rng, cls))
        structured.append(payload)
        attempt(payload, cls)
    for i in range(n_bytes):
        if structured and i % 2:
            data = bytearray(rng.choice(structured))
            for _ in range(rng.randrange(1, 4)):
                if data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
            payload = bytes(data)
        else:
            payload = rng.randbytes(rng.randrange(0, 256))
        for cls in types:
            attempt(payload, cls)
    return {"inputs": n_bytes + n_structured, "decodes": decodes, "crashes": crashes, "accepted": accepted,
            "examples": examples}
