"""MQTT 5 transport: the only module that imports paho.

Incoming messages go to a quick callback (services queue them), wrapped so that an exception is logged and counted,
never raised into paho's network thread; with ``receive_maximum`` the caller PUBACKs each after handling it.
Publishes are QoS 1 by default and wait for the broker's PUBACK (bounded), so a service knows the broker took the
message and keeps the publish order. Payload bytes are counted in a :class:`TrafficMeter` by category.

With ``tls`` (:class:`~hffm_core.security.tls.TlsSettings`) the connection is mutual TLS (the fleet CA, the host's
name, the client's own certificate); a broker that refuses it makes :meth:`MqttTransport.connect` raise a
:class:`TransportError` saying so. A PUBACK or SUBACK with an MQTT 5 failure reason code (0x87 Not authorized: an
ACL denial) raises :class:`MqttRefusedError`, which carries the code.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hffm_core.errors import TransportError
from hffm_core.security.tls import TlsSettings
from hffm_core.transport.meter import TrafficMeter
from hffm_core.transport.refusals import MqttRefusedError, _reason_text, _Unreachable

log = logging.getLogger(__name__)

# (topic, payload, retained); with a Receive Maximum also ``ack=(mid, qos)``, to hand to MqttTransport.ack
MessageHandler = Callable[..., None]
SESSION_EXPIRY_S = 600
NOT_AUTHORIZED = 0x87
_MAX_REFUSALS_KEPT = 4096
_RETRY_FIRST_S = 0.25
_RETRY_MAX_S = 2.0


class MqttTransport:
    """One MQTT 5 connection with bounded connect/subscribe/publish and automatic reconnect + resubscribe."""

    def __init__(
        self,
        *,
        client_id: str,
        host: str,
        port: int,
        on_message: MessageHandler,
        meter: TrafficMeter | None = None,
        will: tuple[str, bytes] | None = None,
        keepalive: int = 15,
        timeout_s: float = 15.0,
        tls: TlsSettings | None = None,
        persistent: bool = False,
        max_packet_size: int = 0,
        connect_timeout_s: float | None = None,
        receive_maximum: int = 0,
    ) -> None:
        """``persistent``: connect with clean_start false every time, so a restarted process gets back its
        subscriptions and the QoS 1 messages the broker queued for it (within ``SESSION_EXPIRY_S``); the default
        starts clean on the first connect and resumes the session only on reconnects of the same process.
        ``max_packet_size``: the broker's packet limit from config (0: unknown); the CONNACK's Maximum Packet Size,
        when the broker sends one, takes precedence (see :attr:`max_packet_size`).
        ``connect_timeout_s``: how long :meth:`connect` keeps retrying a refused or unanswered first connect
        (default ``timeout_s``).
        ``receive_maximum`` n > 0: the CONNECT asks for MQTT 5 Receive Maximum n, paho's automatic PUBACK is off, and
        ``on_message`` gets ``ack=(mid, qos)`` to pass to :meth:`ack` once the message is handled.

        Raises: ConfigError: ``tls`` names files that cannot be loaded as a CA, certificate and key."""
        self.client_id, self.host, self.port = client_id, host, port
        self.meter = meter if meter is not None else TrafficMeter()
        self.timeout_s = timeout_s
        self.connect_timeout_s = timeout_s if connect_timeout_s is None else connect_timeout_s
        self.connect_attempts = 0
        self.connections = 0  # CONNACKs accepted: the first connect and every automatic reconnect
        self.handler_errors = 0
        self._on_message, self._keepalive, self._persistent = on_message, keepalive, persistent
        self._configured_max_packet, self._connack_max_packet = max_packet_size, 0
        self._filters: list[str] = []
        self._connected = threading.Event()
        self._connect_error: str | None = None
        self._last_error: str | None = None
        self._tls = tls is not None
        self._settled = threading.Event()  # the first CONNACK arrived, or the connection attempt failed
        self._lock = threading.Lock()
        self._acks = threading.Condition(self._lock)
        self._refused_pubs: dict[int, int] = {}  # mid -> failing PUBACK reason code
        self._acked_pubs: dict[int, None] = {}  # mids of PUBACKs for publishes made while disconnected (ordered)
        self._subacks: dict[int, list[int] | None] = {}  # mid -> SUBACK reason codes (None until it arrives)
        self.receive_maximum, self._awaiting = receive_maximum, 0  # _awaiting: callers waiting for a PUBACK/SUBACK
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, reconnect_on_failure=True,
            manual_ack=receive_maximum > 0,
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=5)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._client.on_socket_open = self._handle_socket_open
        self._client.on_publish = self._handle_publish
        self._client.on_subscribe = self._handle_subscribe
        self._client.on_log = self._handle_log
        if tls is not None:
            self._client.tls_set_context(tls.client_context())
        if will is not None:
            self._client.will_set(will[0], will[1], qos=1, retain=True)

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def connect(self, *, deadline: float | None = None) -> None:
        """Connect and start the network thread, retrying like a field device: a refused TCP connect or a broker
        that does not answer is retried with backoff (0.25 s doubling to 2 s, one log line per attempt) until
        ``deadline`` (a ``time.monotonic()`` value; default ``connect_timeout_s`` from now). At least one attempt
        is made. A TLS handshake failure or a CONNACK refusal is an answer, not an outage: it fails at once.

        Raises:
            TransportError: the broker could not be reached by the deadline, the TLS handshake failed (the broker's
                certificate is not trusted, or the broker refused ours), or the broker refused the connection.
        """
        end = deadline if deadline is not None else time.monotonic() + self.connect_timeout_s
        delay, started = _RETRY_FIRST_S, time.monotonic()
        while True:
            self.connect_attempts += 1
            try:
                self._connect_once(wait_s=min(self.timeout_s, max(end - time.monotonic(), 1.0)))
            except _Unreachable as exc:
                left = end - time.monotonic()
                if left <= 0:
                    raise TransportError(f"{exc}; gave up after {self.connect_attempts} attempt(s) in "
                                         f"{time.monotonic() - started:.1f} s") from None
                pause = min(delay, left)
                log.warning("%s: %s; attempt %d, retrying in %.2f s (%.1f s left)", self.client_id, exc,
                            self.connect_attempts, pause, left)
                time.sleep(pause)
                delay = min(delay * 2, _RETRY_MAX_S)
                continue
            if self.connect_attempts > 1:
                log.info("%s: connected to %s:%d at attempt %d", self.client_id, self.host, self.port,
                         self.connect_attempts)
            return

    def _connect_once(self, *, wait_s: float) -> None:
        """One connect attempt. Raises _Unreachable (worth retrying) or TransportError (an answer: fail)."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        if self.receive_maximum > 0:
            props.ReceiveMaximum = self.receive_maximum
        self._settled.clear()
        self._connect_error = self._last_error = None
        self._client.on_log = self._handle_log  # only while connecting: paho formats every line for a log handler
        try:
            self._client.connect(self.host, self.port, keepalive=self._keepalive, properties=props,
                                 clean_start=False if self._persistent else mqtt.MQTT_CLEAN_START_FIRST_ONLY)
        except ssl.SSLError as exc:  # before OSError: SSLError is one
            raise TransportError(f"TLS handshake with MQTT broker {self.host}:{self.port} failed for "
                                 f"{self.client_id!r}: {exc}") from None
        except OSError as exc:
            raise _Unreachable(f"cannot reach MQTT broker {self.host}:{self.port}: {exc}") from None
        self._client.loop_start()
        settled = self._settled.wait(wait_s)
        if not self._connected.is_set():
            reason = self._connect_error if settled else f"no CONNACK within {wait_s:.1f} s"
            self.close()
            if not settled:
                raise _Unreachable(f"MQTT broker {self.host}:{self.port} did not answer {self.client_id!r}: {reason}")
            raise TransportError(f"MQTT broker {self.host}:{self.port} did not accept {self.client_id!r}: {reason}")
        self._client.on_log = None  # connected: no more formatting of a debug line per packet

    def close(self, *, with_will: bool = False) -> None:
        """Disconnect and stop the network thread. ``with_will``: disconnect with MQTT 5 reason 0x04 (Disconnect
        with Will Message), so the broker publishes this client's last will as after a crash."""
        try:
            if with_will and self._connected.is_set():
                self._client.disconnect(reasoncode=mqtt.ReasonCode(PacketTypes.DISCONNECT, identifier=0x04))
            else:
                self._client.disconnect()
        finally:
            self._client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def max_packet_size(self) -> int:
        """The largest MQTT packet the broker takes: the smaller of the CONNACK's Maximum Packet Size (MQTT 5;
        Mosquitto sends it when ``max_packet_size`` is set) and the configured limit; 0 when neither is known."""
        known = [v for v in (self._connack_max_packet, self._configured_max_packet) if v > 0]
        return min(known) if known else 0

    def try_publish(self, topic: str, payload: bytes, *, category: str, retain: bool = False,
                    expiry_s: int = 0) -> bool:
        """Hand a QoS 1 publish to paho without waiting for the PUBACK; False (nothing queued) when not
        connected or paho refuses it. For senders with their own retransmission (the outbox): the app-level ack,
        not the PUBACK, says the message arrived. ``expiry_s`` > 0 sets the MQTT 5 Message Expiry Interval, so a
        broker drops a message still queued when it goes stale. Never raises for a broker problem."""
        if not self._connected.is_set():
            return False
        props = None
        if expiry_s > 0:
            props = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = int(expiry_s)
        try:
            info = self._client.publish(topic, payload, qos=1, retain=retain, properties=props)
        except (ValueError, RuntimeError) as exc:  # e.g. a payload paho refuses outright
            log.warning("%s: publish to %s refused by the client: %s", self.client_id, topic, exc)
            return False
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        self.meter.add(category, len(payload))
        return True

    def ack(self, token: tuple[int, int]) -> None:
        """PUBACK a message handed over with ``ack=token``; not connected: the broker resends it on reconnect."""
        mid, qos = token
        if qos > 0 and self.receive_maximum > 0:
            rc = self._client.ack(mid, qos)
            if rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.warning("%s: PUBACK of message %d not sent: %s", self.client_id, mid, mqtt.error_string(rc))

    @property
    def awaiting_ack(self) -> bool:  # a caller waits for a PUBACK or SUBACK: paho's thread must keep reading
        return self._awaiting > 0

    def _await(self, step: int) -> None:
        with self._lock:
            self._awaiting += step

    # -- operations --------------------------------------------------------------------------------------------
    def subscribe(self, filters: list[str], qos: int = 1) -> None:
        """Subscribe (and remember the filters for resubscription after a reconnect); waits (bounded by
        ``timeout_s``) for the broker's SUBACK.

        Raises:
            MqttRefusedError: the SUBACK refused a filter (0x87 Not authorized: the broker's ACL denies it); the
                refused filters are not resubscribed after a reconnect.
            TransportError: the client is not connected, paho refused the request, or no SUBACK arrived in time.
        """
        with self._lock:
            self._filters.extend(f for f in filters if f not in self._filters)
        if not filters:
            return
        with self._lock:  # held until the mid is registered, so that a fast SUBACK is not missed
            rc, mid = self._client.subscribe([(f, qos) for f in filters])
            if rc == mqtt.MQTT_ERR_SUCCESS:
                self._subacks[mid] = None
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise TransportError(f"subscribe to {filters} failed: {mqtt.error_string(rc)}")
        codes = self._wait_suback(mid)
        if codes is None:
            raise TransportError(f"broker did not acknowledge the subscription to {filters} within {self.timeout_s} s")
        refused = [(f, c) for f, c in zip(filters, codes, strict=False) if c >= 0x80]
        if refused:
            with self._lock:
                self._filters = [f for f in self._filters if f not in {f for f, _ in refused}]
            detail = ", ".join(f"{f!r}: {_reason_text(c, PacketTypes.SUBACK)}" for f, c in refused)
            raise MqttRefusedError(f"broker refused subscription {detail}", reason_code=refused[0][1])

    def publish(self, topic: str, payload: bytes, *, category: str, retain: bool = False, qos: int = 1) -> None:
        """Publish and, for QoS >= 1, wait for the broker's acknowledgement (bounded by ``timeout_s``).

        Raises:
            MqttRefusedError: the PUBACK carries a failure reason code (0x87 Not authorized: the broker's ACL
                denies the topic; the message reached no one).
            TransportError: paho refused the publish or the broker did not acknowledge it in time.
        """
        # Never hold self._lock across a paho call: paho runs on_publish under its own message lock.
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise TransportError(f"publish to {topic!r} failed: {mqtt.error_string(info.rc)}")
        if qos > 0 and info.rc == mqtt.MQTT_ERR_NO_CONN:
            # paho keeps the message and sends it once the connection is back (the session survives): wait for
            # that PUBACK within the same bound instead of failing at once on a broker restart. Its PUBACK cannot
            # come before a reconnect (>= 1 s away), so an entry for this mid now is a stale one of a reused mid.
            with self._acks:
                self._acked_pubs.pop(info.mid, None)
                self._refused_pubs.pop(info.mid, None)
            self._wait_puback(topic, info.mid)
        elif qos > 0:
            self._await(1)
            try:
                info.wait_for_publish(timeout=self.timeout_s)
            except (RuntimeError, ValueError) as exc:
                raise TransportError(f"publish to {topic!r} failed: {exc}") from None
            finally:
                self._await(-1)
            if not info.is_published():
                raise TransportError(f"broker did not acknowledge publish to {topic!r} within {self.timeout_s} s")
            with self._lock:
                code = self._refused_pubs.pop(info.mid, 0)
            if code >= 0x80:
                raise MqttRefusedError(f"broker refused publish to {topic!r}: {_reason_text(code, PacketTypes.PUBACK)}",
                                       reason_code=code)
        self.meter.add(category, len(payload))

    def _wait_puback(self, topic: str, mid: int) -> None:
        end = time.monotonic() + self.timeout_s
        with self._acks:
            self._awaiting += 1
            while mid not in self._acked_pubs and mid not in self._refused_pubs and (left := end - time.monotonic()) > 0:
                self._acks.wait(left)
            self._awaiting -= 1
            acked = self._acked_pubs.pop(mid, 0) is None
            code = self._refused_pubs.pop(mid, 0)
        if code >= 0x80:
            raise MqttRefusedError(f"broker refused publish to {topic!r}: {_reason_text(code, PacketTypes.PUBACK)}",
                                   reason_code=code)
        if not acked:
            raise TransportError(f"not connected, and no acknowledgement of the publish to {topic!r} within "
                                 f"{self.timeout_s} s")

    def _wait_suback(self, mid: int) -> list[int] | None:
        end = time.monotonic() + self.timeout_s
        with self._acks:
            self._awaiting += 1
            while self._subacks.get(mid) is None and (left := end - time.monotonic()) > 0:
                self._acks.wait(left)
            self._awaiting -= 1
            return self._subacks.pop(mid, None)

    # -- paho callbacks (never raise) --------------------------------------------------------------------------
    def _handle_socket_open(self, client: mqtt.Client, userdata: object, sock: object) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]
        except (OSError, AttributeError):
            log.debug("could not set TCP_NODELAY on %s", self.client_id)

    def _handle_publish(self, client: mqtt.Client, userdata: object, mid: int, reason: object, props: object) -> None:
        code = int(getattr(reason, "value", 0))
        with self._acks:
            if code >= 0x80:  # failures are kept: publish() pops them; a timed-out publish leaves one behind
                self._refused_pubs[mid] = code
                if len(self._refused_pubs) > _MAX_REFUSALS_KEPT:
                    del self._refused_pubs[next(iter(self._refused_pubs))]
            else:  # successes too, bounded, for publishes waited for after a reconnect (_wait_puback)
                self._acked_pubs[mid] = None
                if len(self._acked_pubs) > _MAX_REFUSALS_KEPT:
                    del self._acked_pubs[next(iter(self._acked_pubs))]
            self._acks.notify_all()

    def _handle_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reasons: list[object],
                          props: object) -> None:
        codes = [int(getattr(r, "value", r)) for r in reasons]  # type: ignore[call-overload]
        with self._acks:
            if mid in self._subacks:
                self._subacks[mid] = codes
                self._acks.notify_all()
                return
        if any(c >= 0x80 for c in codes):  # a resubscription after a reconnect
            log.warning("%s: broker refused a resubscription: %s", self.client_id,
                        [_reason_text(c, PacketTypes.SUBACK) for c in codes])

    def _handle_log(self, client: mqtt.Client, userdata: object, level: int, text: str) -> None:
        if level == mqtt.MQTT_LOG_ERR and not self._settled.is_set():
            self._last_error = text  # e.g. the TLS alert of a broker that refused our certificate

    def _handle_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        if getattr(reason, "is_failure", False):
            self._connect_error = str(reason)
            self._settled.set()
            log.warning("%s: broker %s:%d refused connection: %s", self.client_id, self.host, self.port, reason)
            return
        size = getattr(props, "MaximumPacketSize", 0) if props is not None else 0
        self._connack_max_packet = int(size) if isinstance(size, int) else 0
        with self._lock:
            filters = list(self._filters)
        if filters:
            client.subscribe([(f, 1) for f in filters])
        self.connections += 1
        self._connected.set()
        self._settled.set()
        log.debug("%s connected to %s:%d", self.client_id, self.host, self.port)

    def _handle_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        if not self._settled.is_set():  # closed before the CONNACK: a refused certificate, for example
            self._connect_error = f"the connection was closed before the CONNACK ({self._last_error or reason})"
            if self._tls:
                self._connect_error += ("; a TLS broker does this when it does not accept the client certificate "
                                        "(not signed by its CA, expired, or revoked)")
            self._settled.set()
            return
        self._connected.clear()
        if getattr(reason, "value", 0) != 0:
            log.warning("%s disconnected from %s:%d: %s", self.client_id, self.host, self.port, reason)

    def _handle_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        manual = self.receive_maximum > 0
        try:
            if manual:
                self._on_message(msg.topic, bytes(msg.payload), bool(msg.retain), ack=(msg.mid, msg.qos))
            else:
                self._on_message(msg.topic, bytes(msg.payload), bool(msg.retain))
        except Exception:  # noqa: BLE001 - a handler bug must not kill paho's network thread
            self.handler_errors += 1
            log.exception("%s: message handler failed for topic %s", self.client_id, msg.topic)
            if manual:  # nobody will handle it: free its Receive Maximum slot
                self.ack((msg.mid, msg.qos))
