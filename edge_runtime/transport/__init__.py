"""MQTT transport (the only place that imports paho) and the traffic meter."""

from edge_runtime.transport.meter import CATEGORIES, TrafficMeter
from edge_runtime.transport.mqtt import MqttTransport

__all__ = ["CATEGORIES", "MqttTransport", "TrafficMeter"]
