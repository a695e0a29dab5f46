"""What a job's report says was refused, leaving out the normal cost of at-least-once delivery."""

from __future__ import annotations

from collections.abc import Mapping

# A resent copy of a message already applied (its first ack came after the sender's resend backoff, as on a busy
# machine) is acked "applied" again and counted as ``duplicate``; nothing was refused.
RESENT = frozenset({"duplicate"})


def refusals(rejected: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """A report's ``rejected_messages`` (node -> counter -> count) without the duplicate counts, and without the
    nodes left with none."""
    out = {node: {k: n for k, n in counts.items() if k not in RESENT and n} for node, counts in rejected.items()}
    return {node: counts for node, counts in out.items() if counts}


def node_refusals(counts: Mapping[str, int]) -> dict[str, int]:
    """One node's ``rejected`` counters without the duplicate counts."""
    return refusals({"node": counts}).get("node", {})
