"""The ``ads`` driver: Beckhoff TwinCAT PLCs over ADS (pyads), symbols read and written by name.

Config keys (see docs/drivers/ads.md; the model `edgelink.drivers.configs.AdsConfig`):

- ``ams_net_id`` (required): the PLC's AMS net id, six numbers ``a.b.c.d.e.f``
- ``ams_port`` (851, the first TwinCAT 3 PLC runtime; 801 on TwinCAT 2)
- ``host``: the PLC's IP address; the first four numbers of ``ams_net_id`` by default
- ``port`` (48898): the AMS/TCP port; pyads's adslib on Linux dials no other
- ``local_ams_net_id``: this gateway's AMS net id (the PLC needs a route back
  to it); adslib derives ``<own IP>.1.1`` when no connection sets one
- ``timeout`` (2.0 s): how long one ADS request may take
- ``require_run`` (true): the health check passes only while the PLC is in RUN
- ``notifications``: symbols the PLC pushes (ADS device notifications), each a
  name or ``{"tag": ..., "mode": "change"|"cycle", "cycle_time": s, "max_delay": s}``
- ``notification_timeout`` (10.0 s): how long a (re-)added notification may take
  to deliver its first value before the health turns ``degraded``

pyads is a blocking library, so this is a `SyncConnection`: the Supervisor runs
every call in a worker thread under its timeouts.

Notifications are kept in a `edgelink.subscriptions.SubscriptionLedger` and
replayed on every new link. The PLC sends a notification's current value right
after it is added (TwinCAT does for on-change notifications; a cyclic one
delivers within its cycle), so the first value confirms the entry; one that
brings none within ``notification_timeout`` makes the health ``degraded`` and
is deleted and added again with the ledger's doubling delay. The ledger lives
on the event loop (it is not thread-safe and its timers run on the
supervisor's clock): link up and down, values from adslib's notification
thread and run-time `AdsConnection.subscribe` calls are handed to the loop
(`edgelink.connection.SyncConnection.call_on_loop`), and the blocking ADS
requests of a replay run in a worker thread, one replay after the other per
connection.

pyads's adslib keeps one
router per process — the local AMS net id, one TCP connection per PLC address
and the routes onto it — so that state is owned here, once per process
(`AdsRuntime`): several connections share routes and TCP links safely, and a
link found dead is torn down for all of them so the next connect builds a
fresh one.

ADS errors are translated at this boundary: symbol not found and other
"device said no" codes are a `DeviceError` (the link stays); timeouts, missing
routes, a closed port are a `ConnectError` (the link is rebuilt); secure-ADS
refusals are a `PermanentError` (access denied: an `AuthError`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import dataclasses
import functools
import logging
import math
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, Literal, TypeVar

from edgelink.connection import SyncConnection
from edgelink.drivers.configs import (
    ADS_TCP_PORT,
    AdsConfig,
    AdsNotification,
    notification_times_error,
)
from edgelink.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    DeviceError,
    PermanentError,
    ProtocolError,
)
from edgelink.drivers._subscriptions import Subscription, SubscriptionLedger
from edgelink.validation import format_path, validate_model

try:
    from pyads import constants as ads_constants
    from pyads import pyads_ex
    from pyads.structs import AmsAddr, NotificationAttrib, SAdsNotificationHeader
    from pyads.symbol import AdsSymbol
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("the ads driver needs pyads: pip install 'edgelink[ads]'") from exc

__all__ = ["AdsConnection", "AdsRuntime", "SymbolInfo"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: ADS codes that mean the link (route, TCP connection, local port) is broken.
LINK_ERRORS: Final = frozenset(
    {
        -1,  # adslib: the frame could not be written (broken pipe)
        1,  # internal error
        4,  # mailbox full
        6,  # target port not found: the PLC runtime is not running
        7,  # target machine not found: no route
        13,  # port not connected
        18,  # port disabled
        20,  # AMS sync Win32 error
        21,  # AMS sync timeout
        22,  # AMS sync AMS error
        24,  # invalid AMS port
        26,  # TCP send error
        27,  # host unreachable
        1861,  # ADSERR_CLIENT_SYNCTIMEOUT
        1864,  # ADSERR_CLIENT_PORTNOTOPEN
        10060,
        10061,
        10065,
    }
)
#: ADS codes that mean the PLC's answer was garbage.
GARBAGE_ERRORS: Final = frozenset({1876})  # ADSERR_CLIENT_INVALIDRESPONSE
#: ADS codes retrying cannot fix: licensing and secure-ADS refusals.
PERMANENT_ERRORS: Final = frozenset({16, 29, 30})
#: Of those, the PLC refusing our credentials: secure ADS access denied.
AUTH_ERRORS: Final = frozenset({30})
#: The symbol table changed (online change, download): cached handles are stale.
STALE_SYMBOL_ERRORS: Final = frozenset({1809, 1812, 1826})

#: 1970-01-01 as a Windows FILETIME (100 ns ticks since 1601), the PLC's clock.
_FILETIME_EPOCH: Final = 116_444_736_000_000_000

ADS_STATES: Final[Mapping[int, str]] = {
    getattr(ads_constants, name): name.removeprefix("ADSSTATE_")
    for name in dir(ads_constants)
    if name.startswith("ADSSTATE_")
}


@dataclasses.dataclass(frozen=True, slots=True)
class SymbolInfo:
    """One entry of a PLC's symbol table, as `AdsConnection.list_symbols` returns it.

    Attributes:
        name: The symbol name, e.g. ``MAIN.fTemperature`` or ``GVL.bAlarm``.
        type: The PLC type name: ``LREAL``, ``STRING(80)``, ``ARRAY [0..9] OF INT``, ``ST_Motor``.
        size: Bytes the value takes.
        comment: The comment the PLC program gave the symbol.
    """

    name: str
    type: str
    size: int
    comment: str

    def as_dict(self) -> dict[str, Any]:
        """Return the entry as a plain dict (for JSON)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class _Notification:
    tag: str
    mode: Literal["change", "cycle"] = "change"
    cycle_time: float = 0.1
    max_delay: float = 0.0

    def options(self) -> dict[str, Any]:
        """The ledger entry's options (`from_entry` turns them back into a spec)."""
        return {"mode": self.mode, "cycle_time": self.cycle_time, "max_delay": self.max_delay}

    @classmethod
    def from_entry(cls, entry: Subscription) -> _Notification:
        return cls(entry.key, **entry.options)


@dataclasses.dataclass(slots=True)
class _Symbol:
    name: str
    type_name: str
    size: int
    plc_type: Any
    handle: int


@dataclasses.dataclass(frozen=True, slots=True)
class _Lease:
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

    def acquire(self, net_id: str, host: str, connection_id: str) -> _Lease:
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
            return _Lease(host, net_id, link.generation)

    def release(self, lease: _Lease, *, broken: bool = False) -> None:
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


def _notification(item: AdsNotification) -> _Notification:
    return _Notification(item.tag, item.mode, item.cycle_time, item.max_delay)


class AdsConnection(SyncConnection):
    """A TwinCAT PLC: symbols read and written by name, typed by the PLC's symbol table.

    Example:
        manager.add_connection(
            "plc_1", "ads", {"ams_net_id": "192.168.2.162.1.1", "ams_port": 851},
            poll=[{"tags": ["MAIN.fTemperature"], "interval": 1.0}],
        )
        await manager.execute_with_retry("plc_1", lambda c: c.write("MAIN.bPump", True))
        symbols = await manager.execute_with_retry("plc_1", lambda c: c.list_symbols())
    """

    type_name = "ads"
    config_model = AdsConfig
    cfg: AdsConfig

    def __init__(
        self, connection_id: str, config: Mapping[str, Any] | None = None, context: Any = None
    ) -> None:
        super().__init__(connection_id, config, context)
        cfg = self.cfg
        self.ams_net_id: str = cfg.ams_net_id
        self.ams_port: int = cfg.ams_port
        self.host: str = cfg.host or ".".join(self.ams_net_id.split(".")[:4])
        self.local_ams_net_id: str | None = cfg.local_ams_net_id
        self.timeout = cfg.timeout
        self.require_run = cfg.require_run
        self.notification_timeout = cfg.notification_timeout
        specs = [_notification(item) for item in cfg.notifications]

        self._runtime = RUNTIME
        self._adr = AmsAddr(self.ams_net_id, self.ams_port)
        # One lock per connection: a disconnect never closes the port under a
        # call still running in another worker thread.
        self._lock = threading.RLock()
        self._port: int | None = None
        self._lease: _Lease | None = None
        self._broken = False
        self._symbols: dict[str, _Symbol] = {}
        #: Counts the links this driver opened; the open one's number tells a
        #: replay, a value or a refusal of an earlier link from its own.
        self._generation = 0
        #: Live notification handles of this link, by tag (under ``_lock``).
        self._active: dict[str, tuple[int, int | None]] = {}
        # The ledger and what goes with it are used on the event loop only.
        self._ledger = SubscriptionLedger(
            self._replay,
            confirm_within=self.notification_timeout,
            clock=lambda: self.clock,
            on_degraded=self.report_degraded,
            name=connection_id,
        )
        for spec in specs:
            self._ledger.add(spec.tag, expect_data=True, **spec.options())
        #: The link the ledger is up for (0: down).
        self._ledger_link = 0
        #: Blocking work for the ledger, run in order by one worker thread at a time.
        self._jobs: collections.deque[Callable[[], None]] = collections.deque()
        self._jobs_running: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ link

    def connect(self) -> None:
        """Route to the PLC, open a local AMS port and have the notifications replayed.

        The replay runs after this returns (on the event loop and a worker
        thread); without an owner to report to, nothing is added on the PLC.

        Raises:
            ConnectError: if the PLC cannot be reached.
            ConfigError: for a net id conflict with another connection of this process.
        """
        self.disconnect()
        with self._lock:
            ip = self._resolve()
            self._probe(ip)
            if self.local_ams_net_id is not None:
                self._runtime.set_local_net_id(self.local_ams_net_id, self.connection_id)
            lease = self._runtime.acquire(self.ams_net_id, ip, self.connection_id)
            try:
                port = pyads_ex.adsPortOpenEx()
            except RuntimeError as exc:
                self._runtime.release(lease)
                raise ConnectError(
                    f"no free local AMS port: {exc}", connection_id=self.connection_id, cause=exc
                ) from exc
            self._port, self._lease = port, lease
            self._broken = False
            self._generation += 1
            self._symbols.clear()
            self._active.clear()
            try:
                try:
                    pyads_ex.adsSyncSetTimeoutEx(port, int(self.timeout * 1000))
                except pyads_ex.ADSError as exc:
                    raise ConnectError(
                        f"cannot set the ADS timeout: {exc}",
                        connection_id=self.connection_id,
                        cause=exc,
                    ) from exc
            except BaseException:
                self._close_locked()
                raise
            # Queued under the lock: whatever ends this link queues its
            # link-down after this, so the loop sees them in that order.
            self.call_on_loop(self._link_up, self._generation)

    def _resolve(self) -> str:
        try:
            infos = socket.getaddrinfo(self.host, ADS_TCP_PORT, socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:
            raise ConnectError(
                f"cannot resolve PLC host {self.host!r}: {exc}",
                connection_id=self.connection_id,
                cause=exc,
            ) from exc
        return str(infos[0][4][0])

    def _probe(self, ip: str) -> None:
        # adslib dials the PLC inside AddRoute while holding its process-wide
        # lock, with the OS connect timeout (minutes for a dead address): a
        # short probe first keeps one unreachable PLC from stalling the others.
        try:
            with socket.create_connection((ip, ADS_TCP_PORT), timeout=self.timeout):
                pass
        except OSError as exc:
            raise ConnectError(
                f"PLC {ip}:{ADS_TCP_PORT} unreachable: {exc.strerror or exc}",
                connection_id=self.connection_id,
                cause=exc,
            ) from exc

    def disconnect(self) -> None:
        """Drop notifications and handles, close the local port, release the route.

        Idempotent, never raises; skips the PLC round trips once the link is known dead.
        """
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        port, lease = self._port, self._lease
        self._port = self._lease = None
        if port is None:
            return
        self.call_on_loop(self._link_down, self._generation)
        # Tidy up on the PLC while the link works; after the first failure
        # every further round trip would only wait out its timeout.
        remote = not self._broken
        for handles in self._active.values():
            if remote:
                try:
                    self._ads(
                        "remove notification",
                        pyads_ex.adsSyncDelDeviceNotificationReqEx,
                        port,
                        self._adr,
                        *handles,
                        port=port,
                    )
                except (ConnectError, ProtocolError):
                    remote = False
                except DeviceError:
                    logger.debug("%s: notification already gone", self.connection_id)
            # pyads keeps each callback in a process-wide store until the
            # notification is deleted; a dead link never gets that far.
            pyads_ex.callback_store.pop((self._adr, handles[0]), None)
        self._active.clear()
        for symbol in self._symbols.values():
            if not remote:
                break
            try:
                self._ads(
                    "release handle",
                    pyads_ex.adsReleaseHandle,
                    port,
                    self._adr,
                    symbol.handle,
                    port=port,
                )
            except (ConnectError, ProtocolError):
                remote = False
            except DeviceError:
                logger.debug("%s: handle of %s already gone", self.connection_id, symbol.name)
        self._symbols.clear()
        with contextlib.suppress(pyads_ex.ADSError):
            pyads_ex.adsPortCloseEx(port)
        if lease is not None:
            self._runtime.release(lease, broken=self._broken)

    def is_connected(self) -> bool:
        """Return True while the local port is open and no request found the link dead."""
        return self._port is not None and not self._broken

    def health_check(self) -> bool:
        """Read the PLC's ADS state; healthy while it is RUN (or any state, see ``require_run``).

        Raises:
            ConnectError: if the state cannot be read, or the PLC is not in RUN.
        """
        ads_state, _device_state = self._call("read state", pyads_ex.adsSyncReadStateReqEx)
        if self.require_run and ads_state != ads_constants.ADSSTATE_RUN:
            raise ConnectError(
                f"PLC {self.ams_net_id}:{self.ams_port} is in ADS state "
                f"{ADS_STATES.get(ads_state, ads_state)}, not RUN",
                connection_id=self.connection_id,
            )
        return True

    def read_state(self) -> tuple[str, int]:
        """Return the PLC's ADS state name (``RUN``, ``STOP``, ``CONFIG``, ...) and device state."""
        ads_state, device_state = self._call("read state", pyads_ex.adsSyncReadStateReqEx)
        return str(ADS_STATES.get(ads_state, ads_state)), int(device_state)

    # ------------------------------------------------------------ data plane

    def read(self, tag: str) -> Any:
        """Read a symbol by name, decoded by the type the PLC's symbol table gives.

        Numbers and BOOL come back as Python numbers and bools, STRING as str,
        arrays as lists, structures and other compound types as bytes.

        Raises:
            DeviceError: if the PLC has no such symbol (ADS 0x710) or refuses the read.
            ConnectError: if the link is down.
        """
        symbol = self._symbol(tag)
        if _is_string(symbol.plc_type):
            raw = self._by_handle(
                symbol, ctypes.c_ubyte * symbol.size, return_ctypes=True, check_length=False
            )
            return bytes(raw).split(b"\x00", 1)[0].decode("cp1252")
        value = self._by_handle(symbol, symbol.plc_type)
        # A type pyads has no ctypes type for (a structure) comes back as bytes.
        return bytes(value) if symbol.plc_type is None else value

    def write(self, tag: str, value: Any) -> None:
        """Write a symbol by name; the value is checked against the symbol's PLC type.

        Raises:
            ValueError: if ``value`` does not fit the symbol's type (says which and why).
            DeviceError: if the PLC has no such symbol or refuses the write.
            ConnectError: if the link is down.
        """
        symbol = self._symbol(tag)
        data, plc_type = _coerce(symbol, value, self.connection_id)
        self._call(
            f"write {tag}",
            pyads_ex.adsSyncWriteReqEx,
            ads_constants.ADSIGRP_SYM_VALBYHND,
            symbol.handle,
            data,
            plc_type,
            symbol=symbol,
        )
        self.update_stats(bytes_sent=symbol.size)

    def list_symbols(self) -> list[SymbolInfo]:
        """Upload the PLC's symbol table: name, type, size and comment of every symbol.

        Raises:
            ConnectError: if the link is down.
            ProtocolError: if the table the PLC sent cannot be parsed.
        """
        info = bytes(
            self._call(
                "read symbol table size",
                pyads_ex.adsSyncReadReqEx2,
                ads_constants.ADSIGRP_SYM_UPLOADINFO2,
                0,
                ctypes.c_ubyte * 24,
                True,
                False,
            )
        )
        count, length = struct.unpack_from("<II", info)
        if length == 0:
            return []
        table = bytes(
            self._call(
                "upload symbol table",
                pyads_ex.adsSyncReadReqEx2,
                ads_constants.ADSIGRP_SYM_UPLOAD,
                0,
                ctypes.c_ubyte * length,
                True,
                False,
            )
        )
        self.update_stats(bytes_received=len(table))
        symbols = list(self._parse_symbol_table(table))
        if len(symbols) != count:
            logger.debug(
                "%s: symbol table holds %d entries, info said %d",
                self.connection_id,
                len(symbols),
                count,
            )
        return symbols

    def _parse_symbol_table(self, table: bytes) -> Iterator[SymbolInfo]:
        # Each entry: length, index group, index offset, size, data type,
        # flags (6 x uint32), name/type/comment lengths (3 x uint16), then the
        # three strings, each NUL-terminated. Entries may carry more after.
        pos = 0
        while pos + 30 <= len(table):
            entry_length, _group, _offset, size, _dtype, _flags = struct.unpack_from(
                "<6I", table, pos
            )
            name_len, type_len, comment_len = struct.unpack_from("<3H", table, pos + 24)
            end = pos + 30 + name_len + type_len + comment_len + 2
            if entry_length < 30 or pos + entry_length > len(table) or end > len(table):
                raise ProtocolError(
                    f"symbol table entry at byte {pos} is cut off or malformed",
                    connection_id=self.connection_id,
                )
            start = pos + 30

            def text(offset: int, length: int) -> str:
                return table[offset : offset + length].decode("cp1252")

            yield SymbolInfo(
                name=text(start, name_len),
                type=text(start + name_len + 1, type_len),
                size=size,
                comment=text(start + name_len + type_len + 2, comment_len),
            )
            pos += entry_length

    # --------------------------------------------------------- notifications

    @property
    def subscriptions(self) -> SubscriptionLedger:
        """The notification ledger: what is subscribed and whether its first value came.

        Read it on the event loop thread: it is not thread-safe.
        """
        return self._ledger

    def subscribe(
        self,
        tag: str,
        *,
        mode: Literal["change", "cycle"] = "change",
        cycle_time: float = 0.1,
        max_delay: float = 0.0,
    ) -> None:
        """Have the PLC push ``tag`` (an ADS device notification); values arrive as data.

        The notification is recorded in the ledger, added at once on a live
        link and again after every reconnect. This returns without waiting for
        the PLC: the first value confirms the notification; one that brings
        none within ``notification_timeout``, or that the PLC refuses (a symbol
        it lacks), turns the health ``degraded`` and is added again with a
        doubling delay until it delivers. A symbol the PLC lacks is also
        reported as a datapoint of quality ``bad`` at every attempt; the link
        stays. Calling it again for the same tag with other options replaces
        the notification. Thread-safe.

        Raises:
            ConfigError: for a bad mode or time.
        """
        path = ("config", "notifications", len(self._ledger))
        item = validate_model(
            AdsNotification,
            {"tag": tag, "mode": mode, "cycle_time": cycle_time, "max_delay": max_delay},
            prefix=path,
            connection_id=self.connection_id,
        )
        why = notification_times_error(item, self.notification_timeout)
        if why is not None:
            raise ConfigError(why, path=format_path(path), connection_id=self.connection_id)
        spec = _notification(item)
        self._on_ledger(
            functools.partial(self._ledger.add, tag, expect_data=True, **spec.options())
        )

    def unsubscribe(self, tag: str) -> None:
        """Stop the notification for ``tag`` and forget it (no replay). Thread-safe.

        This returns at once: once the event loop took it (at once when called
        there) no further value of ``tag`` is reported, and the notification
        is deleted on the PLC a moment later.
        """
        self._on_ledger(functools.partial(self._forget, tag))

    def _on_ledger(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` where the ledger lives: on the owner's loop, inline while there is none."""
        if self.call_on_loop(fn):
            return
        if not self._ledger.is_link_up:
            # Without a loop the ledger never went up: this only records.
            fn()

    # On the loop thread: the ledger's side of the link.

    def _link_up(self, link: int) -> None:
        if link != self._live_link():
            return  # that link ended before the loop got here
        self._ledger_link = link
        self._ledger.link_up()

    def _link_down(self, link: int) -> None:
        if link != self._ledger_link:
            return
        self._ledger_link = 0
        self._ledger.link_down()

    def _confirm(self, link: int, tag: str) -> None:
        if link == self._ledger_link:
            self._ledger.data_received(tag)

    def _refused(self, link: int, tag: str, error: str) -> None:
        if link == self._ledger_link:
            self._ledger.acknowledged(tag, ok=False, error=error)

    def _replay(self, entries: Sequence[Subscription]) -> None:
        """(Re-)add ledger entries on the current link; the ADS requests run in a worker."""
        link = self._ledger_link
        if link:
            specs = [_Notification.from_entry(entry) for entry in entries]
            self._enqueue(functools.partial(self._replay_now, link, specs))

    def _forget(self, tag: str) -> None:
        if self._ledger.remove(tag) is not None and self._ledger_link:
            self._enqueue(functools.partial(self._delete_now, self._ledger_link, tag))

    def _enqueue(self, job: Callable[[], None]) -> None:
        self._jobs.append(job)
        if self._jobs_running is None:
            self._start_jobs()

    def _start_jobs(self) -> None:
        running = asyncio.get_running_loop().run_in_executor(None, self._run_jobs)
        self._jobs_running = running
        running.add_done_callback(self._jobs_done)

    def _jobs_done(self, running: asyncio.Future[None]) -> None:
        self._jobs_running = None
        if self._jobs:
            # Queued after the worker found the queue empty.
            self._start_jobs()

    # In a worker thread: the blocking ADS requests.

    def _run_jobs(self) -> None:
        # One worker per connection at a time, so jobs run in the order they
        # were queued: a delete after the add it undoes, a retry after the add.
        while self._jobs:
            job = self._jobs.popleft()
            try:
                job()
            except Exception:
                logger.exception("%s: notification request failed", self.connection_id)

    def _live_link(self) -> int:
        """The open link's number, or 0 while none is open (or it broke)."""
        return self._generation if self._port is not None and not self._broken else 0

    def _replay_now(self, link: int, specs: Sequence[_Notification]) -> None:
        for spec in specs:
            with self._lock:
                if link != self._live_link():
                    return  # that link is gone; the next one replays everything
                try:
                    # A retry replaces the notification that brought nothing.
                    self._unsubscribe_now(spec.tag)
                    self._subscribe_now(spec, link)
                except (DeviceError, PermanentError) as exc:
                    refusal = _refusal(exc)
                except (ConnectError, ProtocolError) as exc:
                    # The link broke: it is marked broken, its link-down is
                    # queued, and the next link replays everything.
                    logger.debug("%s: replay stopped: %s", self.connection_id, exc)
                    return
                else:
                    continue
            # Not a link failure: say so on the data path and in the ledger, go on.
            logger.debug("%s: cannot subscribe to %s: %s", self.connection_id, spec.tag, refusal)
            self.report_data(spec.tag, None, quality="bad")
            self.call_on_loop(self._refused, link, spec.tag, refusal)

    def _delete_now(self, link: int, tag: str) -> None:
        with self._lock:
            if link == self._live_link():
                with contextlib.suppress(ConnectError, ProtocolError, PermanentError):
                    self._unsubscribe_now(tag)

    def _subscribe_now(self, spec: _Notification, link: int) -> None:
        symbol = self._symbol(spec.tag)
        attrib = NotificationAttrib(
            symbol.size,
            ads_constants.ADSTRANS_SERVERONCHA
            if spec.mode == "change"
            else ads_constants.ADSTRANS_SERVERCYCLE,
            # pyads takes milliseconds here.
            max_delay=spec.max_delay * 1000,
            cycle_time=spec.cycle_time * 1000,
        )
        callback = self._make_callback(symbol, link)
        handles = self._call(
            f"subscribe {spec.tag}",
            pyads_ex.adsSyncAddDeviceNotificationReqEx,
            (ads_constants.ADSIGRP_SYM_VALBYHND, symbol.handle),
            attrib,
            callback,
            symbol=symbol,
        )
        self._active[spec.tag] = (int(handles[0]), None)

    def _unsubscribe_now(self, tag: str) -> None:
        handles = self._active.pop(tag, None)
        if handles is None:
            return
        try:
            self._call(
                f"unsubscribe {tag}",
                pyads_ex.adsSyncDelDeviceNotificationReqEx,
                *handles,
            )
        except DeviceError:
            logger.debug("%s: notification for %s already gone", self.connection_id, tag)
        finally:
            pyads_ex.callback_store.pop((self._adr, handles[0]), None)

    def _make_callback(self, symbol: _Symbol, link: int) -> Callable[[Any, Any], None]:
        tag = symbol.name
        ledger = self._ledger

        def on_notification(notification: Any, _data: Any) -> None:
            # Runs on adslib's notification thread: decode, hand over, never raise.
            try:
                contents = notification.contents
                size = int(contents.cbSampleSize)
                raw = bytes(
                    (ctypes.c_ubyte * size).from_address(
                        ctypes.addressof(contents) + SAdsNotificationHeader.data.offset
                    )
                )
                ts = (int(contents.nTimeStamp) - _FILETIME_EPOCH) / 1e7
            except Exception:
                logger.exception("%s: bad notification for %s", self.connection_id, tag)
                return
            self.update_stats(packets_received=1, bytes_received=size)
            # Dict lookups, safe from this thread. Unsubscribed: its delete is
            # on the way. Awaiting: the loop put it there before it queued the
            # replay that brought this value.
            if tag not in ledger:
                return
            try:
                value = _decode(symbol, raw)
            except (ValueError, TypeError) as exc:
                # Bytes the symbol's type cannot hold (a STRING outside
                # Windows-1252): the value is bad, said once, the link is fine.
                why = f"cannot decode {raw[:32]!r} as {symbol.type_name}: {exc}"
                self.report_data(tag, None, quality="bad", ts=ts, reason=why)
            else:
                self.report_data(tag, value, ts=ts)
            if tag in ledger.awaiting_data:
                self.call_on_loop(self._confirm, link, tag)

        return on_notification

    # --------------------------------------------------------------- helpers

    def _symbol(self, tag: str) -> _Symbol:
        if not isinstance(tag, str) or not tag:
            raise ConfigError(
                f"tag {tag!r} is not a symbol name", path="tag", connection_id=self.connection_id
            )
        with self._lock:
            cached = self._symbols.get(tag)
            if cached is not None:
                return cached
            info = self._call(f"look up {tag}", pyads_ex.adsGetSymbolInfo, tag)
            handle = self._call(f"get handle of {tag}", pyads_ex.adsGetHandle, tag)
            type_name = str(info.symbol_type)
            symbol = _Symbol(
                tag, type_name, int(info.size), AdsSymbol.get_type_from_str(type_name), int(handle)
            )
            self._symbols[tag] = symbol
            return symbol

    def _by_handle(
        self,
        symbol: _Symbol,
        plc_type: Any,
        *,
        return_ctypes: bool = False,
        check_length: bool = True,
    ) -> Any:
        if plc_type is None:
            plc_type = ctypes.c_ubyte * symbol.size
        value = self._call(
            f"read {symbol.name}",
            pyads_ex.adsSyncReadReqEx2,
            ads_constants.ADSIGRP_SYM_VALBYHND,
            symbol.handle,
            plc_type,
            return_ctypes,
            check_length,
            symbol=symbol,
        )
        self.update_stats(bytes_received=symbol.size)
        return value

    def _call(
        self, what: str, fn: Callable[..., T], *args: Any, symbol: _Symbol | None = None
    ) -> T:
        """Call ``fn(port, address, *args)`` on the open link, errors translated."""
        with self._lock:
            port = self._port
            if port is None or self._broken:
                raise ConnectError(
                    f"not connected to PLC {self.ams_net_id}:{self.ams_port}",
                    connection_id=self.connection_id,
                )
            try:
                return self._ads(what, fn, port, self._adr, *args, port=port)
            except DeviceError as exc:
                if symbol is not None and exc.code in STALE_SYMBOL_ERRORS:
                    # An online change replaced the symbol: look it up afresh next time.
                    self._symbols.pop(symbol.name, None)
                raise

    def _ads(self, what: str, fn: Callable[..., T], *args: Any, port: int) -> T:
        # Every call here is one ADS request and its response.
        try:
            result = fn(*args)
        except pyads_ex.ADSError as exc:
            self.update_stats(packets_sent=1)
            raise self._translate(what, exc) from exc
        except (RuntimeError, ValueError, TypeError, struct.error) as exc:
            # pyads found the answer malformed (wrong length, bad encoding).
            error = ProtocolError(
                f"ADS {what}: bad answer from PLC: {exc}", connection_id=self.connection_id
            )
            self._mark_broken(error, port)
            raise error from exc
        self.update_stats(packets_sent=1, packets_received=1)
        return result

    def _translate(self, what: str, exc: Any) -> Exception:
        code = getattr(exc, "err_code", None)
        text = f"ADS {what} on {self.ams_net_id}:{self.ams_port}: {exc}"
        if code in PERMANENT_ERRORS:
            cls = AuthError if code in AUTH_ERRORS else PermanentError
            return cls(text, connection_id=self.connection_id, cause=exc)
        if code in GARBAGE_ERRORS:
            garbage = ProtocolError(text, connection_id=self.connection_id, cause=exc)
            if self._port is not None:
                self._mark_broken(garbage, self._port)
            return garbage
        if code is None or code in LINK_ERRORS or code < 0x700 or 0x740 <= code < 0x800:
            # The AMS layer, adslib or the OS failed: the link is gone.
            error = ConnectError(text, connection_id=self.connection_id, cause=exc)
            if self._port is not None:
                self._mark_broken(error, self._port)
            return error
        return DeviceError(text, code=code, connection_id=self.connection_id, cause=exc)

    def _mark_broken(self, error: BaseException, port: int) -> None:
        if port != self._port or self._broken:
            return
        self._broken = True
        self.call_on_loop(self._link_down, self._generation)
        self.connection_lost(error)


def _refusal(exc: DeviceError | PermanentError) -> str:
    """What the PLC said when it refused a notification: ``symbol not found (1808)``."""
    cause = exc.cause
    if isinstance(cause, pyads_ex.ADSError):
        return str(cause).removeprefix("ADSError: ").rstrip(". ")
    return exc.message or type(exc).__name__


def _is_string(plc_type: Any) -> bool:
    return plc_type is ads_constants.PLCTYPE_STRING or (
        isinstance(plc_type, type)
        and issubclass(plc_type, ctypes.Array)
        and plc_type._type_ is ads_constants.PLCTYPE_STRING
    )


def _is_array(plc_type: Any) -> bool:
    return isinstance(plc_type, type) and issubclass(plc_type, ctypes.Array)


_INT_TYPES: Final = (
    ctypes.c_int8,
    ctypes.c_int16,
    ctypes.c_int32,
    ctypes.c_int64,
    ctypes.c_uint8,
    ctypes.c_uint16,
    ctypes.c_uint32,
    ctypes.c_uint64,
)
_SIGNED: Final = (ctypes.c_int8, ctypes.c_int16, ctypes.c_int32, ctypes.c_int64)


def _decode(symbol: _Symbol, raw: bytes) -> Any:
    """Decode a value's raw bytes (from a notification) by the symbol's type."""
    plc_type = symbol.plc_type
    if _is_string(plc_type):
        return raw.split(b"\x00", 1)[0].decode("cp1252")
    if plc_type is None or len(raw) != ctypes.sizeof(plc_type):
        return raw
    value = plc_type.from_buffer_copy(raw)
    if isinstance(value, ctypes.Array):
        return list(value)
    return value.value


def _coerce(symbol: _Symbol, value: Any, connection_id: str) -> tuple[Any, Any]:
    """Check ``value`` against the symbol's type; return what pyads writes and its type."""
    plc_type = symbol.plc_type

    def bad(why: str) -> ValueError:
        return ValueError(
            f"[{connection_id}] cannot write {value!r} to {symbol.name} ({symbol.type_name}): {why}"
        )

    if _is_string(plc_type):
        if not isinstance(value, str):
            raise bad("a STRING takes text")
        try:
            data = value.encode("cp1252") + b"\x00"
        except UnicodeEncodeError:
            raise bad("characters outside Windows-1252, which TwinCAT STRING holds") from None
        if len(data) > symbol.size:
            raise bad(f"{len(data) - 1} characters, the symbol holds {symbol.size - 1}")
        # The whole buffer, NUL-padded, as the PLC lays the STRING out.
        return list(data.ljust(symbol.size, b"\x00")), ctypes.c_ubyte * symbol.size
    if plc_type is None:
        if not isinstance(value, bytes | bytearray) or len(value) != symbol.size:
            raise bad(f"a {symbol.type_name} is written as exactly {symbol.size} raw bytes")
        return list(value), ctypes.c_ubyte * symbol.size
    if _is_array(plc_type):
        array: Any = plc_type
        length = int(array._length_)
        if not isinstance(value, list | tuple) or len(value) != length:
            raise bad(f"an array takes a list of {length} items")
        element = _Symbol(symbol.name, symbol.type_name, 0, array._type_, 0)
        return [_coerce(element, v, connection_id)[0] for v in value], plc_type
    if plc_type is ctypes.c_bool:
        return _to_bool(value, bad), plc_type
    if plc_type in _INT_TYPES:
        number = _to_int(value, bad)
        bits = 8 * ctypes.sizeof(plc_type)
        low, high = (
            (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
            if plc_type in _SIGNED
            else (0, (1 << bits) - 1)
        )
        if not low <= number <= high:
            raise bad(f"out of range {low}..{high}")
        return number, plc_type
    if plc_type in (ctypes.c_float, ctypes.c_double):
        number_f = _to_float(value, bad)
        if plc_type is ctypes.c_float and math.isfinite(number_f) and abs(number_f) > 3.4028235e38:
            raise bad("out of the REAL range")
        return number_f, plc_type
    return value, plc_type


def _to_bool(value: Any, bad: Callable[[str], ValueError]) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise bad("a BOOL takes true/false (or 1/0)")


def _to_int(value: Any, bad: Callable[[str], ValueError]) -> int:
    if isinstance(value, bool):
        raise bad("an integer type takes a number, not a bool")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return int(value.strip(), 0)
    raise bad("an integer type takes a whole number")


def _to_float(value: Any, bad: Callable[[str], ValueError]) -> float:
    if isinstance(value, bool):
        raise bad("a REAL/LREAL takes a number, not a bool")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    raise bad("a REAL/LREAL takes a number")
