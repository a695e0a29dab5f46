"""End-to-end delivery: the on-disk outbox, durable aggregation state, chunking of large payloads, and the
fault-injection harness that proves nothing is lost (docs/reliability.md)."""

from hffm_core.delivery.chunking import Reassembler, split
from hffm_core.delivery.durable_sum import DurableSums
from hffm_core.delivery.outbox import Entry, Outbox, OutboxError
from hffm_core.delivery.sender import ReliableSender

ROUND_TAG_BASE = 100_000  # cluster rounds per global round stay far below this


def round_tag(global_round: int, cluster_round: int = 0) -> int:
    """One sortable number for a round (g, c), as outbox rows store it: rounds below a tag are closed."""
    return global_round * ROUND_TAG_BASE + cluster_round


def report_key(fleet: str, fog: str, global_round: int) -> str:
    """The idempotency key of a fog's round report (the report carries none; both sides derive it)."""
    return f"{fleet}/{fog}/{global_round}/fogdone"


__all__ = ["DurableSums", "Entry", "Outbox", "OutboxError", "ROUND_TAG_BASE", "Reassembler", "ReliableSender",
           "report_key", "round_tag", "split"]
