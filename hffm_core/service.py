"""The event loop every tier runs: MQTT messages go onto a queue and are handled one at a time in the main thread.

Backpressure (``receive_maximum`` > 0, the fog gateway): MQTT 5 Receive Maximum n with each QoS 1 message PUBACKed
once handled, and an inbox bounded to n + INBOX_SLACK, so the broker holds the backlog of a burst. Messages ready at
once are handled as a batch (``batch_max``, ``batch_s``), then :meth:`Service.flush` runs (the fog commits the
batch's updates in one transaction and only then sends their application-level acks). While a commit is pending,
the batch waits up to ``batch_wait_s`` for a message that is not in the inbox yet.

Handling is guarded: a message that fails to parse, decode or validate is logged and counted under a reason and
dropped; nothing already accepted is touched. Deadlines are driven by :meth:`Service.tick`, called between messages.
With a signer, every publish is sealed in a signed envelope; with a verifier, every delivery must be one, from the
node its topic names, and not a replay (hffm_core/security/signing.py).
"""

from __future__ import annotations

import logging
import queue
import signal
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hffm_core.atomic import write_json
from hffm_core.delivery.chunking import Reassembler
from hffm_core.delivery.watch import DROPPED_TOPIC, DroppedWatch
from hffm_core.errors import (
    DecodeError,
    HffmError,
    InternalError,
    RoundTimeoutError,
    SecurityError,
    StorageError,
    TransportError,
    storage_error,
)
from hffm_core.inbox import Delivery, Inbox
from hffm_core.observability import Gauge, Histogram, MetricsServer, Observation
from hffm_core.protocol import encode, topics
from hffm_core.protocol.envelope import expected_signer
from hffm_core.protocol.messages import Ack, Chunk
from hffm_core.protocol.routing import decode_message
from hffm_core.protocol.topics import Topic
from hffm_core.transport import MqttTransport, TrafficMeter
from hffm_core.transport.sealing import (
    SealingTransport,  # re-exported: the tiers import it from here
)

if TYPE_CHECKING:  # cryptography is imported only by nodes that sign
    from hffm_core.security.signing import Signer, Verifier
    from hffm_core.security.tls import TlsSettings

log = logging.getLogger(__name__)
INBOX_SLACK = 8  # room beside the Receive Maximum's QoS 1 messages (QoS 0 $SYS counters, a non-compliant broker)

def check_sender(expected: str, message: object) -> None:
    """Raises ``WrongSenderError`` when ``message`` names a sender other than ``expected``."""
    from hffm_core.security.signing import Verifier

    Verifier.check_sender(expected, message)


def _topic_publisher(topic: Topic) -> str:
    """The node that publishes on ``topic``. Raises ``DecodeError`` for a topic that names none."""
    try:
        return expected_signer(topic)
    except ValueError as exc:
        raise DecodeError(str(exc)) from None


def process_started() -> float:
    """When this process started, on the ``time.monotonic()`` clock (the connect deadline counts from here)."""
    import psutil

    age = max(0.0, time.time() - psutil.Process().create_time())
    return time.monotonic() - age


class Service:
    """Base of the edge agent, fog gateway and cloud service."""

    role = "service"
    watch_broker = False  # subscribe to the broker's dropped-message count and alert on it (needs $SYS read access)
    receive_maximum = 0  # > 0: MQTT 5 Receive Maximum, PUBACK after handling, a bounded inbox (see the docstring)
    batch_max = 1  # messages handled back to back before flush() and tick()
    batch_s = 0.1  # ... or for at most this long
    batch_wait_s = 0.0  # > 0: while commit_pending(), wait this long for another message before flush()
    decode_on_receive = False  # decode (msgpack, SHA-256 check) in paho's thread, off the main thread's path

    def __init__(self, *, node: str, host: str, port: int, metrics_file: Path | None = None,
                 will: tuple[str, bytes] | None = None, signer: Signer | None = None,
                 verifier: Verifier | None = None, tls: TlsSettings | None = None,
                 connect_timeout_s: float = 15.0, metrics_listen: str = "", metrics_insecure: bool = False,
                 metrics_tls: TlsSettings | None = None) -> None:
        """``metrics_listen``: serve Prometheus ``/metrics`` there while running (``[metrics] listen``; off when
        empty); off loopback over mutual TLS with ``metrics_tls`` (a server certificate, and the CA of the scrapers')
        unless ``metrics_insecure`` (hffm_core/observability.py)."""
        self.node, self.signer, self.verifier = node, signer, verifier
        self.meter = TrafficMeter(node)
        self.rejected: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.metrics_file, self.connect_timeout_s = metrics_file, connect_timeout_s
        self.received: dict[str, list[int]] = {}  # topic kind -> [bytes, messages] delivered (for /metrics)
        self._metrics_args = (metrics_listen, metrics_tls, metrics_insecure)
        self.metrics_server: MetricsServer | None = None
        self.crash: str | None = None  # why the loop ended with an error, once it has
        self.done = False
        if signer is not None and will is not None:
            # Sealed now with the number taken now: receivers accept it while it is inside their replay window.
            will = (will[0], signer.seal(will[0], will[1]))
        transport = MqttTransport(
            client_id=f"hffm-{self.role}-{node}", host=host, port=port, on_message=self._enqueue,
            meter=self.meter, will=will, tls=tls, persistent=True, connect_timeout_s=connect_timeout_s,
            receive_maximum=self.receive_maximum,
        )
        # payloads that arrive as chunks (above the broker's packet limit); the broker's dropped-message count
        self.reassembler, self.dropped_watch = Reassembler(), DroppedWatch(node)
        self.transport: MqttTransport | SealingTransport = (
            transport if signer is None else SealingTransport(transport, signer))
        early = self.decode_on_receive and verifier is None  # a verifier opens envelopes in order, in the main thread
        self._inbox = Inbox(self.receive_maximum + INBOX_SLACK if self.receive_maximum else 0,
                            awaiting=lambda: transport.awaiting_ack, decode=decode_message if early else None)

    def _enqueue(self, topic: str, payload: bytes, retain: bool, ack: tuple[int, int] | None = None) -> None:
        """paho's thread: queue a delivery (``ack``: its PUBACK token) on the inbox (hffm_core/inbox.py)."""
        self._inbox.put(topic, payload, retain, ack)
        parts = topic.split("/", 4)  # hffm/v1/{fleet}/{kind}/...; $SYS/... counts under "$SYS"
        counts = self.received.setdefault(parts[3] if len(parts) > 3 and parts[0] == "hffm" else parts[0], [0, 0])
        counts[0] += len(payload)  # only paho's network thread writes; a scrape reads a moment's figure
        counts[1] += 1

    # -- observability -------------------------------------------------------------------------------------------
    def observe(self) -> Observation:
        """What ``/metrics`` shows at a scrape: the counters every tier keeps, plus :meth:`observe_extra`."""
        sent: dict[str, tuple[int, int]] = {}
        for row in self.meter.snapshot()["traffic"]:  # type: ignore[union-attr]
            b, m = sent.get(row["category"], (0, 0))
            sent[row["category"]] = (b + row["bytes"], m + row["messages"])
        outbox = getattr(self, "outbox", None)
        return Observation(role=self.role, node=self.node, fleet=getattr(self, "fleet", ""),
                           connected=self.transport.connected, accepted=dict(self.accepted),
                           rejected=dict(self.rejected), sent=sent,
                           received={k: (v[0], v[1]) for k, v in list(self.received.items())},
                           inbox_depth=self._inbox.qsize(),
                           outbox_depth=outbox.pending() if outbox is not None else None,
                           extra=self._observe_extra())

    def observe_extra(self) -> list[Gauge | Histogram]:
        """Tier-specific figures for ``/metrics`` (rounds, participants, accuracy). Called from the scrape thread:
        read plain attributes only, never block. A read that races the main thread (a dict resized while copied)
        raises RuntimeError: :meth:`observe` retries it."""
        return []

    def _observe_extra(self) -> tuple[Gauge | Histogram, ...]:
        for _ in range(3):
            try:
                return tuple(self.observe_extra())
            except RuntimeError:  # "changed size during iteration": the main thread moved on; read again
                continue
        return ()

    # -- hooks for subclasses ------------------------------------------------------------------------------------
    def subscriptions(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        """Called once after connecting and subscribing."""

    def handle(self, topic: Topic, message: Any) -> None:
        raise NotImplementedError

    def tick(self) -> None:
        """Called between messages (at least every ``poll_s``): check deadlines."""

    def flush(self) -> None:
        """Called after each batch of messages, before :meth:`tick` (the fog commits the batch's updates here)."""

    def finish(self) -> None:
        """Called once when the loop ends."""

    def send_ack(self, fog: str, to: str, keys: list[str], status: str = "applied") -> None:
        """Acknowledge ``keys`` to node ``to`` on ``ack/{fog}/{to}/{self.node}`` (docs/reliability.md). Fire and
        forget: a lost ack costs one retransmission, which is acknowledged again. Counted under ``other``."""
        if not keys:
            return
        fleet = getattr(self, "fleet", "")
        ack = Ack(fleet=fleet, sender=self.node, to=to, keys=tuple(keys), status=status)
        if not self.transport.try_publish(topics.ack(fleet, fog, to, self.node), encode(ack), category="other"):
            log.info("%s %s: ack of %d key(s) to %s not sent (not connected)", self.role, self.node, len(keys), to)

    # -- the loop ------------------------------------------------------------------------------------------------
    def reject(self, topic: str, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        log.warning("%s %s: rejected message on %s (%s): %s", self.role, self.node, topic, reason, detail)

    def reject_error(self, topic: str, exc: HffmError) -> None:
        """:meth:`reject` under the reason a :class:`SecurityError` carries; any other error is ``decode``."""
        self.reject(topic, exc.reason if isinstance(exc, SecurityError) else "decode", str(exc))

    def dispatch(self, topic: str, payload: bytes, *, retained: bool = False, decoded: Any = None) -> None:
        """Open (with a verifier), decode and handle one message. Bad input is logged and counted, never raised; a
        TransportError (the broker did not take a publish) is raised, since the round state could not be shared.
        ``retained``: the broker delivered a retained message (the verifier lets it repeat the topic's last one).
        ``decoded``: what paho's thread already decoded, ``(Topic, message)`` or the error it raised (Inbox)."""
        if topic.startswith("$SYS/"):  # only the broker publishes there: nothing to open or decode
            if topic == DROPPED_TOPIC:
                self.dropped_watch.update(payload)
            return
        verifier, signer = self.verifier, ""
        if verifier is not None:
            try:
                signer, payload = verifier.open(topic, payload, retained=retained)
            except HffmError as exc:
                self.reject_error(topic, exc)
                return
            except Exception:
                self.rejected["internal"] += 1
                log.exception("%s %s: internal error opening %s", self.role, self.node, topic)
                return
        try:
            if isinstance(decoded, BaseException):
                raise decoded
            parsed, message = decoded if decoded is not None else decode_message(topic, payload)
            # With signing, the signer must be the sender the message names (and the verifier has matched the
            # signer to the topic). Without it, the message must at least name the publisher its topic names:
            # the brokers' access rules confine each client to its own topics, so a device cannot pass off an
            # ack or a state advert as another node's.
            check_sender(signer if verifier is not None else _topic_publisher(parsed), message)
            if parsed.kind == "chunk":
                whole = self._reassemble(parsed, message)
                if whole is None:
                    return
                parsed, message = whole
                check_sender(signer if verifier is not None else _topic_publisher(parsed), message)
        except HffmError as exc:
            self.reject_error(topic, exc)
            return
        try:
            self.handle(parsed, message)
            self.accepted[parsed.kind] += 1
        except (TransportError, StorageError, OSError, sqlite3.Error):
            raise  # the broker or the disk failed us mid-handling: stop loudly rather than half-apply a message
        except HffmError as exc:
            self.reject(topic, type(exc).__name__, str(exc))
        except Exception:
            self.rejected["internal"] += 1
            log.exception("%s %s: internal error handling %s", self.role, self.node, topic)

    def _reassemble(self, parsed: Topic, chunk: Chunk) -> tuple[Topic, Any] | None:
        """Add a chunk; decode the whole payload once complete. Raises DecodeError for a bad piece or a whole
        payload that is not for this node (its topic must name the chunk's sender as its publisher)."""
        if parsed.node != chunk.sender:
            raise DecodeError(f"chunk from {chunk.sender!r} on the topic of {parsed.node!r}")
        whole = self.reassembler.add(chunk)
        if whole is None:
            return None
        inner, message = decode_message(*whole)
        if inner.kind == "chunk" or expected_signer(inner) != chunk.sender:
            raise DecodeError(f"chunked payload for {whole[0]!r} was not sent by its publisher {chunk.sender!r}")
        return inner, message

    def run(self, *, time_limit_s: float = 24 * 3600.0, poll_s: float = 0.5) -> None:
        """Connect (retrying until ``connect_timeout_s`` after the process started), subscribe, then handle
        messages until ``done`` or the time limit.

        A crash is never silent: whatever ends the loop with an error is logged with its cause, :meth:`on_crash`
        records it (the device writes ``crashed`` into its status file), and the connection is dropped with MQTT 5
        reason 0x04 (Disconnect with Will Message), so the broker publishes this node's last will (its offline
        advert) exactly as it would after a kill. An ``OSError`` (a full or read-only state folder) becomes a
        :class:`StorageError` that names the cause.

        Raises:
            TransportError: the broker cannot be reached.
            RoundTimeoutError: the time limit passed before the job finished.
            StorageError: a state file could not be written.
            InternalError: anything else (a bug; the traceback is logged).
        """
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_sigterm)  # stop between messages, then finish() runs
        log.info("%s %s: connecting to %s:%d (retrying for up to %.0f s after start)", self.role, self.node,
                 self.transport.host, self.transport.port, self.connect_timeout_s)
        self.transport.connect(deadline=process_started() + self.connect_timeout_s)
        listen, tls, insecure = self._metrics_args
        try:
            if listen:
                self.metrics_server = MetricsServer(listen, self.observe, tls=tls, insecure=insecure)
            self._loop(time_limit_s, poll_s)
        except BaseException as exc:
            self._crashed(exc)
        else:
            self._stop_cleanly()

    def _loop(self, time_limit_s: float, poll_s: float) -> None:
        self.transport.subscribe(self.subscriptions() + ([DROPPED_TOPIC] if self.watch_broker else []))
        self.start()
        end = time.monotonic() + time_limit_s
        while not self.done:
            if time.monotonic() > end:
                raise RoundTimeoutError(f"{self.role} {self.node}: job not finished after {time_limit_s:.0f} s")
            try:
                first = self._inbox.get(timeout=poll_s)
            except queue.Empty:
                pass
            else:
                self._handle_batch(first)
            if self.verifier is not None:
                self.verifier.maybe_flush()
            if not self.done:
                self.tick()

    def _handle_batch(self, first: Delivery) -> None:
        """Handle ``first`` and whatever else is ready (up to ``batch_max``, ``batch_s``), then :meth:`flush`."""
        started, item, count = time.monotonic(), first, 0
        while True:
            topic, payload, retain, ack, decoded = item
            try:
                self.dispatch(topic, payload, retained=retain, decoded=decoded)
            finally:
                if ack is not None:  # handled (or failed loudly): the broker may send the next one
                    self.transport.ack(ack)
            count += 1
            if self.done or count >= self.batch_max or time.monotonic() - started > self.batch_s:
                break
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                # A commit is pending: a short wait for the next message (paho's thread needs the GIL to read it)
                # lets one commit take several, which is what makes group commit pay.
                wait = min(self.batch_wait_s, self.batch_s - (time.monotonic() - started))
                if wait <= 0 or not self.commit_pending():
                    break
                try:
                    item = self._inbox.get(timeout=wait)
                except queue.Empty:
                    break
        self.flush()

    def commit_pending(self) -> bool:
        """Whether :meth:`flush` has accepted messages to commit (the fog: staged updates)."""
        return False

    def _stop_cleanly(self) -> None:
        try:
            self.finish()
        finally:
            try:
                if self.verifier is not None:
                    self.verifier.flush()
            finally:
                self.write_metrics()
                self._close_metrics()
                self.transport.close()

    def _close_metrics(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None

    def _crashed(self, exc: BaseException) -> None:
        """Record why the loop ended, let the will fire, and raise the error as an :class:`HffmError`."""
        if isinstance(exc, KeyboardInterrupt):
            self.crash = "interrupted"
        elif isinstance(exc, OSError):
            exc = storage_error(exc, f"{self.role} {self.node}")
        elif isinstance(exc, sqlite3.Error):  # "database or disk is full", "attempt to write a readonly database"
            exc = StorageError(f"{self.role} {self.node}: a state database failed: {exc}")
        elif not isinstance(exc, HffmError):
            log.error("%s %s: internal error", self.role, self.node, exc_info=exc)
            exc = InternalError(f"{self.role} {self.node}: internal error: {type(exc).__name__}: {exc}")
        self.crash = self.crash or str(exc)
        log.error("%s %s: stopping on an error: %s", self.role, self.node, self.crash)
        for step in (lambda: self.on_crash(self.crash or ""), self.write_metrics, self._close_metrics):
            try:
                step()
            except Exception as inner:  # noqa: BLE001 - a full disk may fail these too; the will still fires
                log.warning("%s %s: while stopping on an error: %s", self.role, self.node, inner)
        self.transport.close(with_will=True)
        if isinstance(exc, KeyboardInterrupt):
            raise exc
        raise exc

    def on_crash(self, reason: str) -> None:
        """Called once when the loop ends with an error, before the will-firing disconnect: record ``reason``
        where an operator looks (the device writes it into its status file). Must not assume the disk works."""

    def _on_sigterm(self, signum: int, frame: object) -> None:
        log.warning("%s %s: SIGTERM received; stopping after the current message", self.role, self.node)
        self.done = True

    def write_metrics(self) -> None:
        if self.metrics_file is None:
            return
        snap = self.meter.snapshot()
        snap["rejected"] = dict(self.rejected)
        snap["accepted"] = dict(self.accepted)
        if self.watch_broker:
            snap["broker_dropped"] = self.dropped_watch.stats()
        snap.update(self.extra_metrics())
        write_json(self.metrics_file, snap)

    def extra_metrics(self) -> dict[str, Any]:
        return {}
