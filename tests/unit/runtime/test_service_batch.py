"""Service batches (hffm_core/service.py): while a commit is pending, a batch waits up to ``batch_wait_s`` for a
message that is not in the inbox yet, so that one flush (the fog's group commit) takes it too; with nothing to
commit, or with no wait configured, the batch ends when the inbox is empty."""

from __future__ import annotations

import threading
import time

import pytest

from hffm_core.service import Service


class _Batching(Service):
    role = "test"
    batch_max = 16

    def __init__(self, *, wait_s: float, pending: bool) -> None:
        super().__init__(node="batcher", host="127.0.0.1", port=1)
        self.batch_wait_s, self.pending = wait_s, pending
        self.handled: list[str] = []
        self.flushes: list[list[str]] = []

    def subscriptions(self) -> list[str]:
        return []

    def dispatch(self, topic: str, payload: bytes, *, retained: bool = False, decoded: object = None) -> None:
        self.handled.append(topic)

    def commit_pending(self) -> bool:
        return self.pending and len(self.handled) > len(sum(self.flushes, []))

    def flush(self) -> None:
        done = sum(self.flushes, [])
        self.flushes.append(self.handled[len(done):])


def _late(svc: _Batching, topic: str, after_s: float) -> threading.Thread:
    def put() -> None:
        time.sleep(after_s)
        svc._inbox.put(topic, b"", False)

    thread = threading.Thread(target=put, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(("wait_s", "pending", "batches"), [(2.0, True, [["a", "b"]]), (0.0, True, [["a"], ["b"]]),
                                                            (2.0, False, [["a"], ["b"]])])
def test_a_pending_commit_waits_for_the_next_message(wait_s: float, pending: bool, batches: list[list[str]]) -> None:
    svc = _Batching(wait_s=wait_s, pending=pending)
    svc.batch_s = 5.0
    late = _late(svc, "b", 0.05)
    svc._handle_batch(("a", b"", False, None, None))
    late.join()
    if len(svc.flushes) < 2 and svc.handled == ["a"]:
        svc._handle_batch(svc._inbox.get(timeout=5))
    assert svc.flushes == batches


def test_the_wait_ends_with_the_batch_time() -> None:
    svc = _Batching(wait_s=10.0, pending=True)
    svc.batch_s = 0.05
    started = time.monotonic()
    svc._handle_batch(("a", b"", False, None, None))
    assert svc.flushes == [["a"]] and time.monotonic() - started < 5.0
