"""Message dataclasses without the codec: TensorBlob, the tensor helpers, and each type's ``__post_init__``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from hffm_core.errors import DecodeError
from hffm_core.protocol import codec
from hffm_core.protocol.checks import RANKS_SCHEMA_VERSION
from hffm_core.protocol.keys import ModuleKey
from hffm_core.protocol.messages import (
    ALLOWED_DTYPES,
    GLOBAL_STAGE,
    JOB_SCHEMA_VERSION,
    MAX_DIMS,
    MESSAGE_TYPES,
    SCHEMA_VERSION,
    FogAggregate,
    FogRoundReport,
    ModuleUpdate,
    ModuleVersion,
    NodeState,
    RoundControl,
    RoundMetrics,
    TensorBlob,
    blobs_from_state,
    state_from_blobs,
    tensors_sha256,
)

Make = Callable[..., Any]
SHAPES = [(), (0,), (3,), (2, 0, 4), (2, 3), (1, 2, 1, 3), (1,) * MAX_DIMS]


def blob(name: str = "w", dtype: str = "uint8", shape: tuple[int, ...] = (2,), data: bytes = b"ab") -> TensorBlob:
    return TensorBlob(name=name, dtype=dtype, shape=shape, data=data)


def test_every_message_type_has_a_factory_and_a_wire_name(make: Make) -> None:
    names = set()
    for cls in MESSAGE_TYPES:
        message = make(cls)
        assert type(message) is cls
        assert message.schema == codec.schema_of(cls) in (SCHEMA_VERSION, JOB_SCHEMA_VERSION, RANKS_SCHEMA_VERSION)
        names.add(cls.TYPE)
    assert len(names) == len(MESSAGE_TYPES), "wire names are unique"


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.TYPE)
def test_messages_are_frozen_with_slots(make: Make, cls: type) -> None:
    message = make(cls)
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.fleet = "other"
    assert not hasattr(message, "__dict__")
    with pytest.raises(TypeError):
        cls("positional")  # keyword-only constructors


# --- TensorBlob --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALLOWED_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_tensor_blob_array_round_trip(dtype: str, shape: tuple[int, ...]) -> None:
    array = (np.arange(math.prod(shape)) % 100 - 50).astype(dtype).reshape(shape)
    tensor = TensorBlob.from_array("t", array)
    assert (tensor.dtype, tensor.shape) == (dtype, shape)
    assert len(tensor.data) == array.nbytes
    back = tensor.to_array()
    assert back.dtype == np.dtype(dtype) and back.shape == shape
    np.testing.assert_array_equal(back, array)


def test_zero_dim_array_keeps_its_shape() -> None:
    for value in (np.float32(2.5), np.array(7, dtype=np.int64), np.array(-1.0)):
        tensor = TensorBlob.from_array("s", value)
        assert tensor.shape == ()
        assert tensor.to_array().shape == ()
        assert tensor.to_array() == value


def test_from_array_writes_little_endian_for_big_endian_and_strided_input() -> None:
    big = np.array([[1.5, -2.0], [3.25, 4.0]], dtype=">f4")
    tensor = TensorBlob.from_array("w", big)
    assert tensor.dtype == "float32"
    assert tensor.data == np.array([[1.5, -2.0], [3.25, 4.0]], dtype="<f4").tobytes()
    strided = np.arange(12, dtype=np.int16).reshape(3, 4).T[::2]
    tensor = TensorBlob.from_array("s", strided)
    assert tensor.shape == (2, 3)
    np.testing.assert_array_equal(tensor.to_array(), strided)


def test_to_array_is_a_writable_copy() -> None:
    tensor = TensorBlob.from_array("w", np.zeros(3, dtype=np.float32))
    array = tensor.to_array()
    array[0] = 5.0
    assert tensor.to_array()[0] == 0.0


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_to_array_rejects_non_finite_floats(dtype: str, bad: float) -> None:
    tensor = TensorBlob.from_array("w", np.array([1.0, bad], dtype=dtype))
    with pytest.raises(ValueError, match="tensor 'w' holds NaN or Inf"):
        tensor.to_array()


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"name": ""}, "bad tensor name ''"),
        ({"name": "n" * 257}, "bad tensor name"),
        ({"name": 3}, "bad tensor name 3"),
        ({"dtype": "bool", "data": b"\x00\x01"}, "dtype 'bool' not in"),
        ({"dtype": "complex64"}, "dtype 'complex64' not in"),
        ({"dtype": "float128"}, "dtype 'float128' not in"),
        ({"dtype": ">f4"}, "dtype '>f4' not in"),
        ({"dtype": "uint16"}, "dtype 'uint16' not in"),
        ({"shape": (1,) * (MAX_DIMS + 1), "data": b"a"}, "more than 8 dims"),
        ({"shape": (-1,)}, "shape entry must be an int >= 0"),
        ({"shape": (2, -1)}, "shape entry must be an int >= 0"),
        ({"shape": (True, 2)}, "shape entry must be an int >= 0"),
        ({"shape": (2.0,)}, "shape entry must be an int >= 0"),
        ({"shape": [2]}, "shape must be a tuple"),
        ({"data": "ab"}, "data must be bytes"),
        ({"data": b"abc"}, "3 data bytes, shape \\(2,\\) x uint8 needs 2"),
        ({"data": b""}, "0 data bytes"),
        ({"dtype": "float32"}, "2 data bytes, shape \\(2,\\) x float32 needs 8"),
        ({"shape": (), "data": b""}, "needs 1"),
        ({"shape": (0,), "data": b"a"}, "needs 0"),
    ],
)
def test_tensor_blob_rejects(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        blob(**fields)


def test_tensor_blob_accepts_the_extremes() -> None:
    assert blob(name="n" * 256).name == "n" * 256
    assert blob(shape=(1,) * MAX_DIMS, data=b"a").shape == (1,) * MAX_DIMS
    assert blob(shape=(0, 2**40), data=b"").shape == (0, 2**40)


# --- state helpers and the hash ----------------------------------------------------------------------------------


def test_blobs_from_state_is_sorted_by_name_and_inverts(sample: Callable[[int], dict[str, np.ndarray]]) -> None:
    state = sample(0)
    blobs = blobs_from_state(state)
    assert [b.name for b in blobs] == sorted(state)
    assert [b.name for b in blobs_from_state(dict(reversed(list(state.items()))))] == sorted(state)
    back = state_from_blobs(blobs)
    assert list(back) == sorted(state)
    for name, array in state.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape
        np.testing.assert_array_equal(back[name], array)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_state_from_blobs_rejects_non_finite(dtype: str, bad: float) -> None:
    blobs = blobs_from_state({"a": np.ones(2, dtype=dtype), "b": np.array([[0.0, bad]], dtype=dtype)})
    with pytest.raises(DecodeError, match="tensor 'b' holds NaN or Inf"):
        state_from_blobs(blobs)


def test_state_from_blobs_rejects_duplicate_names() -> None:
    with pytest.raises(DecodeError, match="duplicate tensor name 'w'"):
        state_from_blobs((blob(), blob()))


def test_state_from_blobs_of_nothing_is_empty() -> None:
    assert state_from_blobs(()) == {}


def test_tensors_sha256_is_a_deterministic_hex_digest(make: Make) -> None:
    blobs = make(ModuleVersion).tensors
    digest = tensors_sha256(blobs)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert tensors_sha256(tuple(blobs)) == digest
    assert tensors_sha256(()) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize(
    "changed",
    [
        blob(name="v"),
        blob(name="w "),
        blob(dtype="int8"),
        blob(shape=(1, 2)),
        blob(shape=(2, 1)),
        blob(data=b"ac"),
        blob(data=b"ba"),
    ],
    ids=["name", "name-space", "dtype", "shape-1x2", "shape-2x1", "last-byte", "byte-order"],
)
def test_tensors_sha256_changes_with_any_part(changed: TensorBlob) -> None:
    assert tensors_sha256((blob(),)) != tensors_sha256((changed,))


def test_tensors_sha256_depends_on_order_and_count() -> None:
    a, b = blob(name="a"), blob(name="b")
    assert tensors_sha256((a, b)) != tensors_sha256((b, a))
    assert tensors_sha256((a,)) != tensors_sha256((a, b))
    same_bytes_float = TensorBlob(name="a", dtype="float32", shape=(1,), data=b"\x00\x00\x80\x3f")
    same_bytes_int = TensorBlob(name="a", dtype="int32", shape=(1,), data=b"\x00\x00\x80\x3f")
    assert tensors_sha256((same_bytes_float,)) != tensors_sha256((same_bytes_int,))


# --- per-type invariants -----------------------------------------------------------------------------------------

BAD_FIELDS: list[tuple[type, dict[str, Any], str]] = [
    (ModuleUpdate, {"fleet": "Fleet"}, "invalid fleet 'Fleet'"),
    (ModuleUpdate, {"sender": "dev/1"}, "invalid sender 'dev/1'"),
    (ModuleUpdate, {"fog": ""}, "invalid fog ''"),
    (ModuleUpdate, {"global_round": -1}, "global_round must be an int >= 0"),
    (ModuleUpdate, {"cluster_round": True}, "cluster_round must be an int >= 0"),
    (ModuleUpdate, {"base": (1,)}, "base must be \\(global_round, stage\\)"),
    (ModuleUpdate, {"base": [3, 1]}, "base must be \\(global_round, stage\\)"),
    (ModuleUpdate, {"base": (-1, 0)}, "base\\[0\\] must be an int >= 0"),
    (ModuleUpdate, {"base": (0, -1)}, "base\\[1\\] must be an int >= 0"),
    (ModuleUpdate, {"num_samples": 0}, "num_samples must be an int > 0"),
    (ModuleUpdate, {"num_samples": True}, "num_samples must be an int >= 0"),
    (ModuleUpdate, {"num_samples": 2.0}, "num_samples must be an int >= 0"),
    (ModuleUpdate, {"train_loss": math.nan}, "train_loss must be finite"),
    (ModuleUpdate, {"train_loss": -math.inf}, "train_loss must be finite"),
    (ModuleUpdate, {"train_loss": True}, "train_loss must be finite"),
    (ModuleUpdate, {"codec": "int8"}, "codec 'int8' carries encoded tensors"),
    (ModuleUpdate, {"codec_params": {"k": 1}}, "codec 'fp32' takes no parameters"),
    (ModuleUpdate, {"tensors": ()}, "at least one tensor"),
    (ModuleUpdate, {"tensors": [blob()]}, "at least one tensor"),
    (ModuleUpdate, {"tensors": (blob(), blob())}, "duplicate tensor names"),
    (ModuleUpdate, {"sha256": "0" * 64}, "sha256 does not match"),
    (ModuleVersion, {"sender": "Cloud"}, "invalid sender 'Cloud'"),
    (ModuleVersion, {"stage": -1}, "stage must be an int >= 0"),
    (ModuleVersion, {"global_round": 1.0}, "global_round must be an int >= 0"),
    (ModuleVersion, {"sha256": ""}, "sha256 does not match"),
    (FogAggregate, {"fog": "fog#"}, "invalid fog 'fog#'"),
    (FogAggregate, {"total_weight": 0}, "total_weight must be > 0"),
    (FogAggregate, {"total_weight": -1.0}, "total_weight must be a finite number >= 0"),
    (FogAggregate, {"total_weight": math.inf}, "total_weight must be a finite number >= 0"),
    (FogAggregate, {"total_weight": math.nan}, "total_weight must be a finite number >= 0"),
    (FogAggregate, {"num_devices": 0}, "num_devices must be an int > 0"),
    (FogAggregate, {"num_devices": True}, "num_devices must be an int >= 0"),
    (FogRoundReport, {"devices": ("dev-1", "Dev-2")}, "invalid device 'Dev-2'"),
    (FogRoundReport, {"cluster_rounds": -1}, "cluster_rounds must be an int >= 0"),
    (RoundControl, {"agg_every": 0}, "agg_every must be >= 1"),
    (RoundControl, {"total_rounds": -1}, "total_rounds must be an int >= 0"),
    (RoundControl, {"local_epochs": False}, "local_epochs must be an int >= 0"),
    (RoundControl, {"deadline_s": -0.5}, "deadline_s must be a finite number >= 0"),
    (RoundControl, {"deadline_s": math.nan}, "deadline_s must be a finite number >= 0"),
    (RoundControl, {"deadline_s": True}, "deadline_s must be a finite number >= 0"),
    (RoundControl, {"final": 1}, "final must be a bool"),
    (RoundControl, {"sender": "+"}, "invalid sender '\\+'"),
    (NodeState, {"role": "relay"}, "unknown role 'relay'"),
    (NodeState, {"node": "#"}, "invalid node '#'"),
    (NodeState, {"online": 1}, "online must be a bool"),
    (NodeState, {"num_samples": {"Fall": 1}}, "invalid task 'Fall'"),
    (NodeState, {"num_samples": {"fall": -1}}, "num_samples\\['fall'\\] must be an int >= 0"),
    (RoundMetrics, {"accuracy": {"fall": 1.5}}, "accuracy\\['fall'\\] must be in \\[0, 1\\]"),
    (RoundMetrics, {"accuracy": {"fall": -0.1}}, "accuracy\\['fall'\\] must be in \\[0, 1\\]"),
    (RoundMetrics, {"accuracy": {"fall": math.nan}}, "accuracy\\['fall'\\] must be in \\[0, 1\\]"),
    (RoundMetrics, {"accuracy": {"_": 0.5}}, "invalid task '_'"),
    (RoundMetrics, {"total_rounds": -1}, "total_rounds must be an int >= 0"),
    (RoundMetrics, {"modules_updated": -1}, "modules_updated must be an int >= 0"),
    (RoundMetrics, {"fogs_reported": ("fog/a",)}, "invalid fog 'fog/a'"),
    *[(cls, {"job": bad}, "job id must be 1..64 characters") for cls in (RoundControl, ModuleVersion, NodeState)
      for bad in ("-starts-with-dash", "has space", "a/b", "x" * 65, 7, None)],
]


@pytest.mark.parametrize(
    ("cls", "overrides", "match"),
    BAD_FIELDS,
    ids=[f"{c.TYPE}-{'-'.join(o)}-{i}" for i, (c, o, _) in enumerate(BAD_FIELDS)],
)
def test_constructors_check_invariants(make: Make, cls: type, overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make(cls, **overrides)


def test_defaults_and_stamp(make: Make) -> None:
    version = make(ModuleVersion, global_round=7, stage=GLOBAL_STAGE)
    assert version.stamp == (7, GLOBAL_STAGE)
    assert make(ModuleUpdate).codec == "fp32"
    state = NodeState(fleet="f", node="n", role="fog", fog="n", online=False)
    assert (state.modules, state.num_samples, state.backbone) == ((), {}, "")
    plan = RoundControl(fleet="f", sender="cloud", global_round=0, cluster_round=0, total_rounds=1, agg_every=1,
                        local_epochs=0, deadline_s=0)
    assert plan.final is False and plan.job == "" and state.job == ""  # "" = no job named (yet)
    assert make(RoundControl, job="x" * 64).job == "x" * 64 and make(NodeState, job="J.1_a-b").job == "J.1_a-b"


def test_message_keys_are_module_keys(make: Make) -> None:
    assert make(ModuleUpdate).key == ModuleKey.adapter("imu", "activity")
    assert all(isinstance(k, ModuleKey) for k in make(FogRoundReport).modules)
