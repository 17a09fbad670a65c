"""Process isolation: run an instance's driver in a child process, under limits.

- `ProcessConnection` (`edgelink.isolation.parent`): the parent side, a driver
  the Supervisor runs like any other;
- `edgelink.isolation.child`: the child program running the real driver;
- `edgelink.isolation.ipc`: the frames between them (msgpack, batched);
- `edgelink.isolation.limits`: RAM escalation, CPU duty cycle, cgroup v2;
- `IsolationSpec` (`edgelink.isolation.spec`): the ``isolation`` config;
- `InstanceGuard` (`edgelink.isolation.safe`): ``safe_run`` for in-process code.

The parent side needs msgpack and psutil (``pip install 'edgelink[isolation]'``);
they are imported when an isolated connection is built, not with edgelink.
See docs/isolation.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from edgelink.errors import ConfigError
from edgelink.isolation.spec import PRIORITY_NICE, IsolationSpec, parse_isolation

if TYPE_CHECKING:
    from edgelink.connection import Connection, SyncConnection
    from edgelink.isolation.parent import ProcessConnection

__all__ = ["PRIORITY_NICE", "IsolationSpec", "build_isolated", "parse_isolation"]


def build_isolated(
    connection_id: str,
    config: Mapping[str, Any],
    context: Any,
    *,
    driver_class: type[Connection] | type[SyncConnection],
    isolation: IsolationSpec,
    poll: Sequence[tuple[Sequence[str], float]] = (),
    request_timeout: float = 5.0,
) -> ProcessConnection:
    """Build the `ProcessConnection` of an isolated connection (no I/O).

    ``poll``: the ``(tags, interval)`` groups the child reads itself
    (``isolation.poll == "child"``); the supervisor then polls nothing.

    Raises:
        ConfigError: if the isolation extra is missing (naming the ``pip
            install``), the driver class cannot be imported by a child, or
            the config is invalid.
    """
    try:
        from edgelink.isolation.parent import ProcessConnection
    except ImportError as exc:
        raise ConfigError(
            f"isolation needs an extra: pip install 'edgelink[isolation]' ({exc})",
            path="isolation",
        ) from exc
    return ProcessConnection(
        connection_id,
        config,
        context,
        driver_class=driver_class,
        isolation=isolation,
        poll=poll,
        request_timeout=request_timeout,
    )
