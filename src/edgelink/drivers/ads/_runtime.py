"""The process-wide part of pyads: local AMS net id, routes and TCP links, owned once (`RUNTIME`).

pyads's adslib keeps one router per process — the local AMS net id, one TCP
connection per PLC address and the routes onto it — so that state is owned
here, once per process (`AdsRuntime`): several connections share routes and
TCP links safely, and a link found dead is torn down for all of them so the
next connect builds a fresh one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from typing import Any

from pyads import pyads_ex
from pyads.structs import AmsAddr

from edgelink.drivers.configs import ADS_TCP_PORT
from edgelink.errors import ConfigError, ConnectError

__all__ = ["RUNTIME", "AdsRuntime", "Lease"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    """One connection's use of a route, valid for the generation of the link it was given on."""

    host: str
    net_id: str
    generation: int


@dataclasses.dataclass(slots=True)
class _HostLink:
    """What this process routed onto one PLC address (one adslib TCP connection)."""

    generation: int
    users: dict[str, int] = dataclasses.field(default_factory=dict)
    mapped: list[str] = dataclasses.field(default_factory=list)


def _net_id_struct(net_id: str) -> Any:
    return AmsAddr(net_id, 0).netIdStruct()


class AdsRuntime:
    """The process-wide part of pyads: local AMS net id, routes and TCP links to PLCs.

    adslib keeps one AMS router per process; a route maps an AMS net id to an
    IP address, and all routes to one address share one TCP connection, which
    adslib never rebuilds by itself. This object owns those calls for every
    `AdsConnection` in the process: connections `acquire` a route and
    `release` it; the last one out of an address removes its routes (closing
    the TCP connection), and a connection that found the link dead releases
    with ``broken=True``, which tears the address down at once so the next
    `acquire` dials a fresh TCP connection. Other connections on that address
    then fail their next request and reconnect too. Thread-safe.

    adslib counts `AddRoute` calls per TCP connection and only forgets a route
    when that count reaches zero, one route per zero; `_teardown` drives it
    there route by route, and works as well with an adslib that forgets routes
    at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._links: dict[str, _HostLink] = {}
        self._net_hosts: dict[str, str] = {}
        self._generations = iter(range(1, 1 << 62))
        self.local_net_id: str | None = None
        self._local_owner: str | None = None

    def set_local_net_id(self, net_id: str, connection_id: str) -> None:
        """Set the process's local AMS net id (once; the same value again is fine).

        Raises:
            ConfigError: if another connection set a different one: adslib has one per process.
        """
        with self._lock:
            if self.local_net_id == net_id:
                return
            if self.local_net_id is not None:
                raise ConfigError(
                    f"local_ams_net_id {net_id} conflicts with {self.local_net_id}, set by "
                    f"connection {self._local_owner!r}: one process has one local AMS net id",
                    path="config.local_ams_net_id",
                    connection_id=connection_id,
                )
            pyads_ex.adsSetLocalAddress(_net_id_struct(net_id))
            self.local_net_id = net_id
            self._local_owner = connection_id

    def acquire(self, net_id: str, host: str, connection_id: str) -> Lease:
        """Make sure ``net_id`` is routed to ``host`` and count one more user.

        Raises:
            ConfigError: if ``net_id`` is routed to another host by another connection.
            ConnectError: if adslib cannot add the route (its TCP connect failed).
        """
        with self._lock:
            routed = self._net_hosts.get(net_id)
            if routed is not None and routed != host:
                raise ConfigError(
                    f"ams_net_id {net_id} is already routed to {routed} by another "
                    f"connection; one AMS net id lives at one address",
                    path="config.ams_net_id",
                    connection_id=connection_id,
                )
            link = self._links.get(host)
            if link is None:
                link = self._links[host] = _HostLink(next(self._generations))
            if net_id not in link.mapped:
                try:
                    pyads_ex.adsAddRoute(_net_id_struct(net_id), host)
                except pyads_ex.ADSError as exc:
                    if not link.mapped:
                        del self._links[host]
                    raise ConnectError(
                        f"cannot route {net_id} to {host}:{ADS_TCP_PORT}: {exc}",
                        connection_id=connection_id,
                        cause=exc,
                    ) from exc
                link.mapped.append(net_id)
                self._net_hosts[net_id] = host
            link.users[net_id] = link.users.get(net_id, 0) + 1
            return Lease(host, net_id, link.generation)

    def release(self, lease: Lease, *, broken: bool = False) -> None:
        """Count one user less; remove the address's routes when it has none, or when broken.

        A lease from before a teardown is stale and releases nothing.
        """
        with self._lock:
            link = self._links.get(lease.host)
            if link is None or link.generation != lease.generation:
                return
            users = link.users.get(lease.net_id, 0) - 1
            if users > 0:
                link.users[lease.net_id] = users
            else:
                link.users.pop(lease.net_id, None)
            if broken or not link.users:
                self._teardown(lease.host, link)

    def _teardown(self, host: str, link: _HostLink) -> None:
        refs = len(link.mapped)
        for net_id in link.mapped:
            ams = _net_id_struct(net_id)
            if refs == 0:
                # The TCP connection object lives on while a route points at
                # it: re-count this route so the next delete forgets it.
                with contextlib.suppress(pyads_ex.ADSError):
                    pyads_ex.adsAddRoute(ams, host)
                refs = 1
            while refs > 0:
                pyads_ex.adsDelRoute(ams)
                refs -= 1
            self._net_hosts.pop(net_id, None)
        del self._links[host]
        logger.debug("ads: routes to %s removed (%s)", host, ", ".join(link.mapped))

    def routes(self) -> dict[str, list[str]]:
        """Return the routed AMS net ids by host (a snapshot, for status and tests)."""
        with self._lock:
            return {host: list(link.mapped) for host, link in self._links.items()}


#: The one runtime of this process.
RUNTIME = AdsRuntime()
