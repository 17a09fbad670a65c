# mypy: ignore-errors
"""The code of the Edge OS seed (edge-os-changelog.de.md), imports changed only.

The document's Python is a sketch of ``DataGateway.route_data`` (a method:
here the body of a subclass, as the document writes it), its
``routing.json`` and the process priorities. The lines that differ from the
document are the imports at the top and the class line that holds the method
(the document shows the method alone); docs/seeds/edgeos.md says why.
"""

from typing import Any

from edgelink.compat.edgeos import (
    PRIORITY_ABOVE_NORMAL,
    PRIORITY_BELOW_NORMAL,
    PRIORITY_HIGH,
    PRIORITY_NORMAL,
    DataGateway,
)

# --- "1. Universal Data Router": "Technische Details" ---------------------------


class SketchDataGateway(DataGateway):  # not the document's: the method needs a class
# Beispiel: Routing-Engine
    def route_data(self, source_id: str, tag: str, value: Any, metadata: dict = None):
        """
        Universal Router für alle Datenquellen

        Args:
            source_id: Quelle (z.B. "plc_001", "bt.bms_001", "mqtt.broker_1")
            tag: Datenpunkt (z.B. "MAIN.temperature", "voltage")
            value: Wert
            metadata: Zusätzliche Metadaten (Timestamp, Quality, etc.)
        """
        # Normalisierung in Unified Data Space
        datapoint = self.normalize(source_id, tag, value, metadata)

        # Route-Matching
        routes = self.routing_engine.match(datapoint)

        # Transformationen anwenden
        for route in routes:
            transformed_value = route.transform(datapoint)
            route.send_to_target(transformed_value)


# --- "routing.json Schema" -------------------------------------------------------

ROUTING_JSON = """
{
  "version": "1.0",
  "routes": [
    {
      "id": "bms_to_plc",
      "from": "bt.bms_001.voltage",
      "to": "plc_001.MAIN.fbBattery.fVoltage",
      "transform": "scale(0.001)",
      "enabled": true
    },
    {
      "id": "alarm_multi_target",
      "from": "plc_001.MAIN.bAlarmActive",
      "to": [
        "mqtt.broker_local.alarms/critical",
        "webhook.alert_service",
        "log.system"
      ],
      "condition": "value == true"
    }
  ]
}
"""

# --- "10. CPU-Throttling & Spam-Protection": "Prozess-Prioritäten (via psutil)" ----


def set_priorities(webservice, data_gateway, mqtt_client, video_stream):  # not the document's
    # System-kritische Dienste
    webservice.set_priority(PRIORITY_HIGH)
    data_gateway.set_priority(PRIORITY_ABOVE_NORMAL)

    # Standard-Plugins
    mqtt_client.set_priority(PRIORITY_NORMAL)

    # Rechenintensive Plugins
    video_stream.set_priority(PRIORITY_BELOW_NORMAL)
