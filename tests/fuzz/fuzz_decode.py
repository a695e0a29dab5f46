"""Coverage-guided fuzzing of hffm's decoders with atheris (libFuzzer). Run by hand; pytest does not collect it.

    pip install atheris
    python tests/fuzz/fuzz_decode.py --make-corpus /tmp/hffm-corpus     # seed files: one valid payload per type
    python tests/fuzz/fuzz_decode.py /tmp/hffm-corpus -atheris_runs=1000000 -max_len=4096

The first input byte picks a wire type (every message type and the signed envelope); the rest is decoded as that
type, and also opened by a Verifier on a fixed topic. Only DecodeError and SecurityError may come out: any other
exception is a crash, and libFuzzer writes the input that caused it to ``crash-<sha1>`` in the current folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import atheris
except ImportError:  # pragma: no cover - a hand-run tool; say what is missing instead of a traceback
    sys.exit("fuzz_decode.py needs atheris: pip install atheris")

with atheris.instrument_imports():
    from hffm_core.errors import DecodeError, SecurityError
    from hffm_core.protocol import codec, topics
    from hffm_core.protocol.keys import ModuleKey
    from hffm_core.security import signing

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

TYPES = codec.WIRE_TYPES
TOPIC = topics.up("fleet-1", "fog-a", ModuleKey.adapter("imu", "activity"), "dev-01")
_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))  # fixed: crashes must reproduce
VERIFIER = signing.Verifier(keys={"dev-01": _KEY.public_key()}, window=1 << 20)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    cls = TYPES[data[0] % len(TYPES)]
    payload = data[1:]
    try:
        codec.decode(payload, cls)
    except DecodeError:
        pass
    try:
        VERIFIER.open(TOPIC, payload)
    except (DecodeError, SecurityError):
        pass


def make_corpus(folder: Path) -> None:
    """One seed file per wire type: its index byte, then a valid encoded instance (sealed, for the envelope)."""
    import numpy as np

    from hffm_core.protocol import (
        ModuleUpdate,
        NodeState,
        blobs_from_state,
        encode,
        tensors_sha256,
    )

    folder.mkdir(parents=True, exist_ok=True)
    tensors = blobs_from_state({"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    update = encode(ModuleUpdate(fleet="fleet-1", sender="dev-01", fog="fog-a", key=ModuleKey.adapter("imu", "activity"),
                                 global_round=1, cluster_round=1, base=(0, 0), num_samples=4, train_loss=0.5,
                                 tensors=tensors, sha256=tensors_sha256(tensors), idempotency_key="k"))
    state = encode(NodeState(fleet="fleet-1", node="dev-01", role="device", fog="fog-a", online=True))
    sealed = signing.Signer(signer_id="dev-01", private_key=_KEY).seal(TOPIC, update)
    samples = {TYPES.index(ModuleUpdate): update, TYPES.index(NodeState): state, len(TYPES) - 1: sealed}
    for index, payload in samples.items():
        (folder / f"seed-{TYPES[index].TYPE}").write_bytes(bytes([index]) + payload)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--make-corpus":
        make_corpus(Path(sys.argv[2]))
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
