"""What signed envelopes cost: seal and open time per MB of payload, for the security benchmark."""

from __future__ import annotations

import time

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hffm_core.protocol import topics
from hffm_core.protocol.keys import ModuleKey
from hffm_core.security.signing import Signer, Verifier

DEFAULT_SIZES = (64 * 1024, 1024 * 1024)


def sign_verify_ms_per_mb(sizes: tuple[int, ...] = DEFAULT_SIZES, *, repeats: int = 20,
                          seed: int = 0) -> dict[str, dict[str, float]]:
    """Seal and open random payloads of each size ``repeats`` times (after one warm-up) with fresh in-memory keys.

    Returns ``{str(size): {"seal_ms", "open_ms", "seal_ms_per_mb", "open_ms_per_mb", "overhead_bytes"}}``, the
    times being medians per message; a MB is 2**20 bytes. Raises ``ValueError`` for a size < 1 or repeats < 1.
    """
    if repeats < 1 or any(s < 1 for s in sizes):
        raise ValueError(f"sizes must be >= 1 and repeats >= 1, got sizes={sizes!r}, repeats={repeats!r}")
    key = Ed25519PrivateKey.generate()
    signer = Signer(signer_id="dev-bench", private_key=key)
    verifier = Verifier(keys={"dev-bench": key.public_key()}, window=1 << 16)
    topic = topics.up("bench", "fog-bench", ModuleKey.adapter("imu", "activity"), "dev-bench")
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, float]] = {}
    for size in sizes:
        payload = rng.integers(0, 256, size=size, dtype=np.uint8).tobytes()
        seal_s, open_s = [], []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            sealed = signer.seal(topic, payload)
            t1 = time.perf_counter()
            _signer, inner = verifier.open(topic, sealed)
            t2 = time.perf_counter()
            if inner != payload:
                raise AssertionError("envelope round trip changed the payload")
            if i:  # the first pass warms caches
                seal_s.append(t1 - t0)
                open_s.append(t2 - t1)
        mb = size / 2**20
        seal_ms, open_ms = 1e3 * float(np.median(seal_s)), 1e3 * float(np.median(open_s))
        out[str(size)] = {"seal_ms": seal_ms, "open_ms": open_ms, "seal_ms_per_mb": seal_ms / mb,
                          "open_ms_per_mb": open_ms / mb, "overhead_bytes": float(len(sealed) - size)}
    return out
