"""MQTT 5 transport: the only module that imports paho.

Incoming messages are handed to a callback that must be quick (services put them on a queue); the callback is
wrapped so that an exception is logged and counted, never raised into paho's network thread. Publishes are QoS 1 by
default and wait for the broker's PUBACK (bounded), so a service knows the broker took the message and keeps the
publish order. Payload bytes are counted in a :class:`TrafficMeter` under a category chosen by the caller.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_runtime.errors import TransportError
from edge_runtime.transport.meter import TrafficMeter

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, bool], None]
SESSION_EXPIRY_S = 600


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
    ) -> None:
        self.client_id = client_id
        self.host = host
        self.port = port
        self.meter = meter if meter is not None else TrafficMeter()
        self.timeout_s = timeout_s
        self.handler_errors = 0
        self._on_message = on_message
        self._keepalive = keepalive
        self._filters: list[str] = []
        self._connected = threading.Event()
        self._connect_error: str | None = None
        self._lock = threading.Lock()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, reconnect_on_failure=True
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=5)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._client.on_socket_open = self._handle_socket_open
        if will is not None:
            self._client.will_set(will[0], will[1], qos=1, retain=True)

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Connect and start the network thread.

        Raises:
            TransportError: the broker refused or did not answer within ``timeout_s``.
        """
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        try:
            self._client.connect(self.host, self.port, keepalive=self._keepalive, properties=props)
        except OSError as exc:
            raise TransportError(f"cannot reach MQTT broker {self.host}:{self.port}: {exc}") from None
        self._client.loop_start()
        if not self._connected.wait(self.timeout_s):
            self.close()
            reason = self._connect_error or "no CONNACK"
            raise TransportError(f"MQTT broker {self.host}:{self.port} did not accept {self.client_id!r}: {reason}")

    def close(self) -> None:
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- operations --------------------------------------------------------------------------------------------
    def subscribe(self, filters: list[str], qos: int = 1) -> None:
        """Subscribe (and remember the filters for resubscription after a reconnect).

        Raises:
            TransportError: the client is not connected or paho refused the request.
        """
        with self._lock:
            self._filters.extend(f for f in filters if f not in self._filters)
        if not filters:
            return
        rc, _mid = self._client.subscribe([(f, qos) for f in filters])
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise TransportError(f"subscribe to {filters} failed: {mqtt.error_string(rc)}")

    def publish(self, topic: str, payload: bytes, *, category: str, retain: bool = False, qos: int = 1) -> None:
        """Publish and, for QoS >= 1, wait for the broker's acknowledgement (bounded by ``timeout_s``).

        Raises:
            TransportError: paho refused the publish or the broker did not acknowledge it in time.
        """
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise TransportError(f"publish to {topic!r} failed: {mqtt.error_string(info.rc)}")
        if qos > 0:
            try:
                info.wait_for_publish(timeout=self.timeout_s)
            except (RuntimeError, ValueError) as exc:
                raise TransportError(f"publish to {topic!r} failed: {exc}") from None
            if not info.is_published():
                raise TransportError(f"broker did not acknowledge publish to {topic!r} within {self.timeout_s} s")
        self.meter.add(category, len(payload))

    # -- paho callbacks (never raise) --------------------------------------------------------------------------
    def _handle_socket_open(self, client: mqtt.Client, userdata: object, sock: object) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]
        except (OSError, AttributeError):
            log.debug("could not set TCP_NODELAY on %s", self.client_id)

    def _handle_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        if getattr(reason, "is_failure", False):
            self._connect_error = str(reason)
            log.warning("%s: broker %s:%d refused connection: %s", self.client_id, self.host, self.port, reason)
            return
        with self._lock:
            filters = list(self._filters)
        if filters:
            client.subscribe([(f, 1) for f in filters])
        self._connected.set()
        log.debug("%s connected to %s:%d", self.client_id, self.host, self.port)

    def _handle_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        self._connected.clear()
        if getattr(reason, "value", 0) != 0:
            log.warning("%s disconnected from %s:%d: %s", self.client_id, self.host, self.port, reason)

    def _handle_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            self._on_message(msg.topic, bytes(msg.payload), bool(msg.retain))
        except Exception:  # noqa: BLE001 - a handler bug must not kill paho's network thread
            self.handler_errors += 1
            log.exception("%s: message handler failed for topic %s", self.client_id, msg.topic)
