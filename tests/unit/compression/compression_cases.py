"""The table of codec configurations every compression test runs over, and shared Hypothesis strategies."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hffm_core.compression import Codec, make_codec

# Every registered codec appears at least once (test_every_registered_codec_is_tested checks it).
CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("fp32", {}),
    ("fp16", {}),
    ("int8", {}),
    ("int8", {"block": 1}),
    ("int8", {"block": 5}),
    ("topk", {}),
    ("topk", {"fraction": 0.2, "values": "fp16"}),
    ("topk", {"fraction": 0.3, "values": "int8", "block": 4}),
    ("topk", {"fraction": 0.75, "values": "int8"}),
    ("topk", {"fraction": 1.0, "values": "fp32"}),
    ("sign", {}),
    ("sign", {"block": 3}),
    ("sign", {"fraction": 0.3, "seed": 11}),
    ("lowrank", {}),
    ("lowrank", {"rank": 2}),
    ("lowrank", {"rank": 5}),
    ("lowrank", {"rank": 2, "loadings": "int4"}),
]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in params.items()) or 'default'}" for name, params in CONFIGS]

ANY_FLOAT32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
DELTA_LIKE = st.floats(-0.0625, 0.0625, width=32)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9)
ARRAYS = st.one_of(
    hnp.arrays(np.float32, SHAPES, elements=ANY_FLOAT32),
    hnp.arrays(np.float32, SHAPES, elements=DELTA_LIKE),
)


def codec_of(name: str, params: dict[str, Any]) -> Codec:
    return make_codec(name, params)


def sent_mask(codec: Codec, x: np.ndarray) -> np.ndarray:
    """Which elements a codec transmits: the top-k selection for sparsifying codecs, every element otherwise."""
    mask = np.ones(x.size, dtype=bool)
    select = getattr(codec, "select", None)
    if codec.name == "sign":
        from hffm_core.compression.sign import subset

        mask[:] = False
        mask[subset(x.size, float(codec.params["fraction"]), int(codec.params["seed"]))] = True
    elif select is not None:
        mask[:] = False
        mask[select(x)] = True
    return mask.reshape(x.shape)
