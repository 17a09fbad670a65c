"""Targets that leave the gateway: the MQTT bridge (Node-RED) and webhooks."""
