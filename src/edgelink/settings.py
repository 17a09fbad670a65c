"""Supervision settings: the numbers of DESIGN section 3, validated.

`ConnectionSettings` is what one connection runs with; `ManagerSettings` adds
the manager-wide limits. Top-level ``settings`` in a config file are defaults,
a connection's own ``settings`` override them (`ConnectionSettings.merged`).
"""

from __future__ import annotations

import functools
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgelink.backoff import Backoff, JitterMode
from edgelink.dampening import Dampening

__all__ = ["ConnectionSettings", "ManagerSettings"]

PositiveSeconds = Field(gt=0)


class ConnectionSettings(BaseModel):
    """How one connection is supervised. Every field has the documented default."""

    # Strict: "30" or "yes" for a number or a flag is a config error, as in the
    # driver configs; an int is still fine where seconds are a float.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    reconnect_initial_delay: float = Field(
        default=0.1, ge=0, description="first reconnect delay, s"
    )
    reconnect_multiplier: float = Field(default=2.0, ge=1, description="delay growth per attempt")
    reconnect_max_delay: float = Field(default=10.0, gt=0, description="delay cap, s")
    reconnect_jitter: float = Field(default=0.2, ge=0, le=1, description="relative jitter, 0..1")
    reconnect_jitter_mode: JitterMode = Field(
        default=JitterMode.PROPORTIONAL,
        strict=False,  # the config file gives the mode as its string
        description="proportional (±jitter) or full (0..delay)",
    )
    reconnect_max_attempts: int | None = Field(
        default=10, ge=1, description="attempts before suspension; null = never give up"
    )
    stable_after: float = Field(
        default=10.0, ge=0, description="seconds connected before the attempt counter resets"
    )
    suspend_cooldown: float | None = Field(
        default=300.0,
        gt=0,
        description="probe a suspended connection after this long; null = never",
    )
    suspend_cooldown_max: float = Field(
        default=3600.0, gt=0, description="cap of the doubling cooldown"
    )
    connect_timeout: float = Field(default=3.0, gt=0, description="per attempt, s")
    fast_path_timeout: float = Field(
        default=0.5, gt=0, description="the immediate attempt after a TX drop"
    )
    request_timeout: float = Field(default=5.0, gt=0, description="one read/write/poll request, s")
    health_check_interval: float | None = Field(
        default=30.0, gt=0, description="seconds between health checks; null = none"
    )
    health_check_timeout: float = Field(default=5.0, gt=0, description="s")
    health_check_failures: int = Field(
        default=1, ge=1, description="consecutive failures before the link counts as lost"
    )
    health_degraded_latency: float | None = Field(
        default=1.0, gt=0, description="a passing check slower than this marks health degraded"
    )
    data_timeout: float | None = Field(
        default=None, gt=0, description="no data for this long while connected = lost (watchdog)"
    )
    sleep_probe_interval: float = Field(
        default=60.0, gt=0, description="how often a sleeping device is probed, s"
    )
    auto_reconnect: bool = True
    spam_max_pps: float | None = Field(
        default=500, gt=0, description="datapoints/s before spam protection suspends; null = off"
    )

    flap_dampening: bool = Field(
        default=True, description="hold down the reconnect of a flapping link (flap_* below)"
    )
    flap_penalty: float = Field(
        default=1000.0, gt=0, description="penalty per flap (up, then down)"
    )
    flap_half_life: float = Field(default=120.0, gt=0, description="the penalty halves in this, s")
    flap_suppress_limit: float = Field(
        default=2500.0, gt=0, description="a penalty this high flags the link flapping: held down"
    )
    flap_reuse_limit: float = Field(
        default=1000.0, gt=0, description="a held link reconnects once its penalty decays below"
    )
    flap_max_hold_down: float = Field(
        default=600.0, gt=0, description="the longest a flapping link is held down, s"
    )
    flap_event_interval: float = Field(
        default=60.0,
        ge=0,
        description="while flapping, per-attempt events of one type at most this often, s",
    )
    poison_after: int | None = Field(
        default=3,
        ge=1,
        description="consecutive crashes or timeouts of one poll read before it is quarantined; "
        "null = never",
    )

    fleet_recovery: bool = Field(
        default=True,
        description="a sibling that comes back cuts this connection's backoff short "
        "(docs/recovery.md)",
    )
    recovery_group: str | None = Field(
        default=None,
        min_length=1,
        description="the recovery group by name, instead of the one the endpoint gives",
    )
    recovery_scope: Literal["host", "subnet"] = Field(
        default="host", description="group network peers by host, or by subnet"
    )
    recovery_subnet_prefix: int = Field(
        default=24, ge=8, le=32, description="IPv4 prefix length of a subnet group"
    )

    failover_after: int = Field(
        default=3,
        ge=1,
        description="failed connect attempts on the active endpoint before the next one is "
        "tried (a refused or unreachable endpoint at once; docs/failover.md)",
    )
    failback: bool = Field(
        default=True, description="go back to the preferred endpoint once it is healthy again"
    )
    failback_after: float = Field(
        default=30.0, gt=0, description="the preferred endpoint must be healthy this long, s"
    )
    failback_probe_interval: float = Field(
        default=5.0, gt=0, description="how often the preferred endpoint is probed, s"
    )
    failback_holdoff: float = Field(
        default=300.0,
        ge=0,
        description="at most one failback per this window (hysteresis), s",
    )

    @model_validator(mode="after")
    def _check_delays(self) -> Self:
        if self.reconnect_max_delay < self.reconnect_initial_delay:
            raise ValueError(
                f"reconnect_max_delay ({self.reconnect_max_delay}) must be >= "
                f"reconnect_initial_delay ({self.reconnect_initial_delay})"
            )
        if self.flap_reuse_limit >= self.flap_suppress_limit:
            raise ValueError(
                f"flap_reuse_limit ({self.flap_reuse_limit}) must be < "
                f"flap_suppress_limit ({self.flap_suppress_limit})"
            )
        return self

    def backoff(self) -> Backoff:
        """Return the `Backoff` policy these settings describe."""
        return Backoff(
            initial=self.reconnect_initial_delay,
            multiplier=self.reconnect_multiplier,
            max=self.reconnect_max_delay,
            jitter=self.reconnect_jitter,
            max_attempts=self.reconnect_max_attempts,
            mode=self.reconnect_jitter_mode,
        )

    def dampening(self) -> Dampening | None:
        """Return the flap `Dampening` policy these settings describe (None when off).

        The same (frozen) object every time, shared by the connections that
        share these settings.
        """
        return self._dampening

    @functools.cached_property
    def _dampening(self) -> Dampening | None:
        if not self.flap_dampening:
            return None
        return Dampening(
            penalty=self.flap_penalty,
            half_life=self.flap_half_life,
            suppress_limit=self.flap_suppress_limit,
            reuse_limit=self.flap_reuse_limit,
            max_hold_down=self.flap_max_hold_down,
        )

    def merged(self, overrides: dict[str, Any] | None) -> ConnectionSettings:
        """Return these settings with ``overrides`` applied and validated."""
        if not overrides:
            return self
        data = self.model_dump(include=set(ConnectionSettings.model_fields))
        data.update(overrides)
        return ConnectionSettings.model_validate(data)


class ManagerSettings(ConnectionSettings):
    """Connection defaults plus the limits that apply to the whole manager."""

    max_connections: int | None = Field(
        default=None, ge=1, description="most connections the manager (and its pool) holds"
    )
    max_concurrent_connects: int = Field(
        default=64, ge=1, description="connect attempts in flight at once, manager-wide"
    )
    watchdog_interval: float = Field(
        default=5.0, gt=0, description="how often the supervisor watchdog looks at every task, s"
    )
    sync_workers: int = Field(
        default=32, ge=1, description="threads for blocking (SyncConnection) drivers"
    )
    fleet_wake_rate: float = Field(
        default=400.0,
        gt=0,
        description="woken siblings' connect attempts per second at most (fleet recovery)",
    )
    fleet_wake_window: float = Field(
        default=0.3, ge=0, description="the shortest window a fleet wake is spread over, s"
    )
    fleet_wake_holdoff: float = Field(
        default=1.0, ge=0, description="a connection is woken by a sibling at most once per this, s"
    )
    fleet_probe_interval: float | None = Field(
        default=0.25,
        gt=0,
        description="while a whole recovery group is down, one member tries at most this "
        "often, s; null = never",
    )
    loop_lag_interval: float = Field(
        default=0.25, gt=0, description="how often the event-loop lag is sampled, s"
    )
    loop_lag_threshold: float = Field(
        default=0.1,
        gt=0,
        description="event-loop lag counted as a stall and reported (loop_lag event), s",
    )

    def connection_defaults(self) -> ConnectionSettings:
        """Return the per-connection part of these settings.

        The same (frozen) object every time: connections without overrides
        share it instead of each holding a 2.8 KB copy.
        """
        return self._connection_defaults

    @functools.cached_property
    def _connection_defaults(self) -> ConnectionSettings:
        return ConnectionSettings.model_validate(
            self.model_dump(include=set(ConnectionSettings.model_fields))
        )
