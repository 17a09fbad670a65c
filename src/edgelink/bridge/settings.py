"""Settings of the MQTT bridge (the ``bridge`` section of ``edgelink.json``).

They live with the bridge, which reads them; `edgelink.service.config`
re-exports them as part of the service's settings.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BridgeSettings", "BufferSettings", "DiscoveryEntry"]


class BufferSettings(BaseModel):
    """Bounds of the bridge's queues: memory on the way to the broker, SQLite while it is away."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_items: int = Field(default=100_000, ge=1, description="SQLite plus memory, at most")
    max_age_s: float = Field(default=86400.0, gt=0)
    memory_items: int = Field(
        default=10_000,
        ge=1,
        description="messages in memory (queued and in flight) at most; past it the oldest go",
    )


class DiscoveryEntry(BaseModel):
    """One datapoint announced to Home Assistant as a sensor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str = Field(min_length=3, description="e.g. calc.inverter_1_kw")
    name: str | None = Field(default=None, description="shown in Home Assistant")
    unit: str | None = Field(default=None, description="unit_of_measurement, e.g. kW")
    device_class: str | None = Field(default=None, description="e.g. power, temperature")
    state_class: str | None = Field(default="measurement")


class BridgeSettings(BaseModel):
    """The MQTT bridge: which ``mqtt`` connection it publishes through, and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connection: str | None = Field(
        default=None, description="id of an mqtt connection; null = bridge off"
    )
    base_topic: str = Field(default="smarthome", min_length=1)
    qos: int = Field(default=0, ge=0, le=2)
    retain: bool = True
    buffer: BufferSettings = BufferSettings()
    discovery: list[DiscoveryEntry] = Field(
        default_factory=list, description="datapoints announced to Home Assistant (MQTT discovery)"
    )
    discovery_prefix: str = Field(default="homeassistant", min_length=1)
