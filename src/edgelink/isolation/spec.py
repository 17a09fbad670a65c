"""`IsolationSpec`: how an isolated instance runs, and the limits it runs under.

A connection's ``isolation`` key takes ``"process"`` (every limit at its
default) or an object::

    "isolation": {"mode": "process", "max_memory_mb": 200, "max_cpu_share": 0.1,
                  "priority": "heavy", "heartbeat_interval": 5}

``"none"`` (or leaving the key out) runs the driver in the gateway's process.
Pure: validation only, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["PRIORITY_NICE", "IsolationSpec", "parse_isolation"]

#: The seed's priority classes as nice values (lower runs first). ``critical``
#: and ``high`` raise the priority above the gateway's own: that needs
#: CAP_SYS_NICE (or root), and a refusal is evented, never fatal.
PRIORITY_NICE: Final[Mapping[str, int]] = {
    "critical": -10,
    "high": -5,
    "above_normal": -2,
    "standard": 0,
    "normal": 0,
    "below_normal": 5,
    "heavy": 10,
    "low": 15,
    "idle": 19,
}

Priority = Literal[
    "critical", "high", "above_normal", "standard", "normal", "below_normal", "heavy", "low", "idle"
]


class IsolationSpec(BaseModel):
    """An instance's child process: health pulse and resource limits.

    Example:
        >>> IsolationSpec(max_memory_mb=200).memory_warn_at
        0.8
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    mode: Literal["process"] = Field(default="process", description="run in a child process")
    heartbeat_interval: float = Field(
        default=5.0, gt=0, description="seconds between two health pulses of the child"
    )
    heartbeat_timeout: float | None = Field(
        default=None,
        gt=0,
        description="silence after which the child counts as hung and is restarted; "
        "null = three heartbeat intervals",
    )
    monitor_interval: float = Field(
        default=1.0, gt=0, description="seconds between two resource samples (memory, CPU)"
    )
    max_memory_mb: float | None = Field(
        default=None, gt=0, description="RSS limit: warn, throttle, then kill and restart"
    )
    memory_warn_at: float = Field(default=0.8, gt=0, lt=1, description="warn at this share")
    memory_throttle_at: float = Field(
        default=0.9, gt=0, lt=1, description="throttle the child's CPU at this share"
    )
    throttle_cpu_share: float = Field(
        default=0.1, gt=0, le=1, description="CPU share (of one core) while memory is throttled"
    )
    max_cpu_share: float | None = Field(
        default=None, gt=0, le=64, description="CPU share of one core, e.g. 0.1 = 10 %"
    )
    cpu_period: float = Field(
        default=0.05, ge=0.005, le=1.0, description="seconds between two duty-cycle decisions"
    )
    priority: Priority | int = Field(
        default="standard",
        description="a priority class (critical, high, standard, heavy, ...) or a nice value",
    )
    poll: Literal["child", "parent"] = Field(
        default="child",
        description="child: the child reads the poll groups on its own timers and sends "
        "the values; parent: the supervisor asks for every round (one more round trip)",
    )
    flush_interval: float = Field(
        default=0.02,
        ge=0,
        le=1.0,
        description="seconds the child gathers datapoints before it sends them (0: at once)",
    )
    start_timeout: float = Field(
        default=20.0, gt=0, description="seconds the child may take to start and answer"
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if isinstance(self.priority, int) and not -20 <= self.priority <= 19:
            raise ValueError("priority: a nice value must be between -20 and 19")
        if self.memory_throttle_at < self.memory_warn_at:
            raise ValueError("memory_throttle_at must be >= memory_warn_at")
        return self

    @property
    def nice(self) -> int:
        """The nice value of `priority`."""
        if isinstance(self.priority, int):
            return self.priority
        return PRIORITY_NICE[self.priority]

    @property
    def pulse_timeout(self) -> float:
        """Seconds of silence after which the child counts as hung."""
        if self.heartbeat_timeout is not None:
            return self.heartbeat_timeout
        return 3.0 * self.heartbeat_interval


def parse_isolation(value: Any) -> IsolationSpec | None:
    """Return the `IsolationSpec` of an ``isolation`` value, or None for in-process.

    Accepts None, ``"none"``, ``"process"``, or a mapping of `IsolationSpec` fields.

    Raises:
        ValueError: (a pydantic ``ValidationError``) for anything else.
    """
    if value is None or value == "none":
        return None
    if value == "process":
        return IsolationSpec()
    if isinstance(value, IsolationSpec):
        return value
    if isinstance(value, Mapping):
        return IsolationSpec.model_validate(dict(value))
    raise ValueError(f"isolation must be 'none', 'process' or an object, not {value!r}")
