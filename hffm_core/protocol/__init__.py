"""The wire protocol: topics, module keys, message types and the msgpack codec. Nothing else builds topics."""

from hffm_core.protocol import topics
from hffm_core.protocol.codec import decode, encode
from hffm_core.protocol.envelope import SignedEnvelope
from hffm_core.protocol.keys import ModuleKey, modules_for
from hffm_core.protocol.messages import (
    GLOBAL_STAGE,
    JOB_SCHEMA_VERSION,
    RAW_CODEC,
    SCHEMA_VERSION,
    Ack,
    Chunk,
    EncodedTensor,
    FogAggregate,
    FogRoundReport,
    ModuleUpdate,
    ModuleVersion,
    NodeState,
    ResyncRequest,
    RoundControl,
    RoundMetrics,
    TensorBlob,
    blobs_from_state,
    check_job_id,
    state_from_blobs,
    tensors_sha256,
)

__all__ = [
    "Ack",
    "Chunk",
    "GLOBAL_STAGE",
    "JOB_SCHEMA_VERSION",
    "RAW_CODEC",
    "EncodedTensor",
    "SCHEMA_VERSION",
    "FogAggregate",
    "FogRoundReport",
    "ModuleKey",
    "ModuleUpdate",
    "ModuleVersion",
    "NodeState",
    "ResyncRequest",
    "RoundControl",
    "RoundMetrics",
    "SignedEnvelope",
    "TensorBlob",
    "blobs_from_state",
    "check_job_id",
    "decode",
    "encode",
    "modules_for",
    "state_from_blobs",
    "tensors_sha256",
    "topics",
]
