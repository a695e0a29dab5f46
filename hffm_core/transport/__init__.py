"""MQTT transport (the only place that imports paho) and the traffic meter."""

from hffm_core.transport.meter import CATEGORIES, TrafficMeter
from hffm_core.transport.mqtt import MqttTransport

__all__ = ["CATEGORIES", "MqttTransport", "TrafficMeter"]
