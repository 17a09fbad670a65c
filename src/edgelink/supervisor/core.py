"""The Supervisor class: the parts of one connection's supervision as one object."""

from __future__ import annotations

from typing import Any

from edgelink.state import Reason, status_code
from edgelink.supervisor.lifecycle import SupervisorLifecycle


class Supervisor(SupervisorLifecycle):
    """Runs one connection: connect, watch, reconnect, report.

    Created and owned by `edgelink.manager.ConnectionManager`; all methods run
    on the manager's event loop unless documented thread-safe.
    """

    __slots__ = ()

    def status_dict(self) -> dict[str, Any]:
        """Return the explainable status of DESIGN section 4 (``endpoints`` with failover)."""
        status = {
            "connection_id": self.connection_id,
            "type": self.type_name,
            "name": self.name,
            "status": str(self._sm.state),
            "reason": self._sm.reason,
            "status_code": status_code(self._sm.state, self._sm.reason),
            "desired": self.desired,
            "since": self._sm.since,
            "health": str(self._health),
            "health_latency": self._health_latency,
            "health_reason": self.connection.degraded_reason
            or (Reason.FLAPPING if self._flapping_since is not None else None),
            "connected_at": self._connected_at,
            "last_data_at": self._last_data_at,
            "last_error": self._last_error,
            "reconnect_attempts": self._attempts,
            "next_retry_at": self._next_retry_at,
            "stats": self.connection.stats.as_dict(),
            "transitions": [t.as_dict() for t in list(self._sm.history)[-5:]],
            "flapping": self._flapping_since is not None,
            "flap": self.flap_status(),
            "quarantined": [dict(entry) for entry in self._quarantine.values()],
        }
        if self._endpoints is not None:
            status["endpoints"] = self._endpoints.status()
        return status

    def __repr__(self) -> str:
        return (
            f"<Supervisor {self.connection_id} {self._sm.state} health={self._health} "
            f"failures={self._health_failures} attempts={self._attempts}"
            f"{' flapping' if self._flapping_since is not None else ''}"
            f"{f' quarantined={len(self._quarantine)}' if self._quarantine else ''}>"
        )
