"""Settings of the MQTT bridge (the ``bridge`` section of ``edgelink.json``).

They live with the bridge, which reads them; `edgelink.service.config`
re-exports them as part of the service's settings.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["BridgeSettings", "BufferSettings", "Deadband", "DiscoveryEntry", "ModeRule"]

#: The payload modes: one message per datapoint, or one per poll group of a connection.
PayloadMode = Literal["datapoint", "group"]


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


class Deadband(BaseModel):
    """Report by exception: a value goes out only when it moved by at least the band.

    With both given, the band is the larger of the two (``absolute`` is the
    floor of ``percent`` near zero).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    absolute: float | None = Field(default=None, ge=0, description="in the value's unit")
    percent: float | None = Field(
        default=None, ge=0, description="of the last value sent, e.g. 1.0 = 1 %"
    )

    @model_validator(mode="after")
    def _one_band(self) -> Self:
        if self.absolute is None and self.percent is None:
            raise ValueError("a deadband needs 'absolute' or 'percent' (or both)")
        return self


class ModeRule(BaseModel):
    """How the datapoints of matching connections (and tags) go to the broker.

    The first rule of ``bridge.modes`` whose ``match`` (a glob on the
    connection id) and ``tags`` (a glob on the tag) both match decides; what
    it leaves out comes from the ``bridge`` section itself.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: str = Field(min_length=1, description="glob on the connection id, e.g. plc_*")
    tags: str = Field(default="*", min_length=1, description="glob on the tag, e.g. MAIN.temp*")
    mode: PayloadMode | None = None
    deadband: Deadband | None = None
    heartbeat_s: float | None = Field(default=None, gt=0)
    min_interval_s: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _sets_something(self) -> Self:
        fields = ("mode", "deadband", "heartbeat_s", "min_interval_s")
        if all(getattr(self, name) is None for name in fields):
            raise ValueError(
                "a rule sets at least one of mode, deadband, heartbeat_s, min_interval_s"
            )
        return self


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
    mode: PayloadMode = Field(
        default="datapoint",
        description="datapoint: one message per datapoint; group: one per poll group",
    )
    deadband: Deadband | None = Field(
        default=None, description="report by exception; null = every value goes out"
    )
    heartbeat_s: float | None = Field(
        default=60.0,
        gt=0,
        description="with a deadband: a value unchanged this long goes out anyway; null = never",
    )
    min_interval_s: float = Field(
        default=0.0,
        ge=0,
        description="per topic, at most one message this often (the latest wins); 0 = no limit",
    )
    modes: list[ModeRule] = Field(
        default_factory=list, description="per connection (and tag) overrides, first match wins"
    )
    state_items: int = Field(
        default=100_000,
        ge=1,
        description="topics whose mode state (deadband, rate limit) is kept; past it LRU",
    )

    @property
    def plain(self) -> bool:
        """Whether every datapoint goes out as its own message at once (the default)."""
        return (
            self.mode == "datapoint"
            and self.deadband is None
            and not self.min_interval_s
            and not self.modes
        )
