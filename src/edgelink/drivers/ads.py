"""The ``ads`` driver: Beckhoff TwinCAT PLCs over ADS (pyads), symbols read and written by name.

Config keys (see docs/drivers/ads.md):

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

pyads is a blocking library, so this is a `SyncConnection`: the Supervisor runs
every call in a worker thread under its timeouts. pyads's adslib keeps one
router per process — the local AMS net id, one TCP connection per PLC address
and the routes onto it — so that state is owned here, once per process
(`AdsRuntime`): several connections share routes and TCP links safely, and a
link found dead is torn down for all of them so the next connect builds a
fresh one.

ADS errors are translated at this boundary: symbol not found and other
"device said no" codes are a `DeviceError` (the link stays); timeouts, missing
routes, a closed port are a `ConnectError` (the link is rebuilt); secure-ADS
refusals are a `PermanentError`.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import math
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, Literal, TypeVar

from edgelink.connection import SyncConnection
from edgelink.errors import (
    ConfigError,
    ConnectError,
    DeviceError,
    PermanentError,
    ProtocolError,
)

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

#: The AMS/TCP port; adslib on Linux connects to it whatever one asks.
ADS_TCP_PORT: Final = 48898

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


def _parse_net_id(value: Any, key: str, connection_id: str) -> str:
    parts = value.split(".") if isinstance(value, str) else []
    if len(parts) != 6 or not all(p.isdigit() and int(p) <= 255 for p in parts):
        raise ConfigError(
            f"must be an AMS net id of six numbers 0..255 like 192.168.1.10.1.1, got {value!r}",
            path=f"config.{key}",
            connection_id=connection_id,
        )
    return ".".join(str(int(p)) for p in parts)


def _parse_notification(item: Any, index: int, connection_id: str) -> _Notification:
    path = f"config.notifications[{index}]"

    def bad(why: str) -> ConfigError:
        return ConfigError(why, path=path, connection_id=connection_id)

    if isinstance(item, str):
        item = {"tag": item}
    if not isinstance(item, Mapping):
        raise bad(f"must be a symbol name or an object with 'tag', got {item!r}")
    unknown = set(item) - {"tag", "mode", "cycle_time", "max_delay"}
    if unknown:
        raise bad(f"unknown keys {sorted(unknown)}; known: tag, mode, cycle_time, max_delay")
    tag = item.get("tag")
    if not isinstance(tag, str) or not tag:
        raise bad("tag must be a non-empty symbol name")
    mode = item.get("mode", "change")
    if mode not in ("change", "cycle"):
        raise bad(f"mode must be 'change' or 'cycle', got {mode!r}")
    numbers = {}
    for key, default in (("cycle_time", 0.1), ("max_delay", 0.0)):
        value = item.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise bad(f"{key} must be a number of seconds >= 0, got {value!r}")
        numbers[key] = float(value)
    return _Notification(tag, mode, numbers["cycle_time"], numbers["max_delay"])


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

    def __init__(
        self, connection_id: str, config: Mapping[str, Any] | None = None, context: Any = None
    ) -> None:
        super().__init__(connection_id, config, context)
        cfg = self.config

        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(why, path=f"config.{key}", connection_id=connection_id)

        if "ams_net_id" not in cfg:
            raise bad("ams_net_id", "ams_net_id is required: the PLC's AMS net id, a.b.c.d.e.f")
        self.ams_net_id = _parse_net_id(cfg["ams_net_id"], "ams_net_id", connection_id)
        ams_port = cfg.get("ams_port", 851)
        if isinstance(ams_port, bool) or not isinstance(ams_port, int) or not 0 < ams_port < 65536:
            raise bad("ams_port", f"must be an integer 1..65535 (851: TwinCAT 3), got {ams_port!r}")
        self.ams_port: int = ams_port
        host = cfg.get("host", ".".join(self.ams_net_id.split(".")[:4]))
        if not isinstance(host, str) or not host:
            raise bad("host", f"must be the PLC's IP address, got {host!r}")
        self.host: str = host
        port = cfg.get("port", ADS_TCP_PORT)
        if port != ADS_TCP_PORT or isinstance(port, bool):
            hint = " (the PLC runtime's port is ams_port)" if port in (801, 851, 852) else ""
            raise bad(
                "port",
                f"must be {ADS_TCP_PORT}, got {port!r}{hint}: pyads's adslib always "
                f"connects to the AMS/TCP port {ADS_TCP_PORT}",
            )
        local = cfg.get("local_ams_net_id")
        self.local_ams_net_id: str | None = (
            None if local is None else _parse_net_id(local, "local_ams_net_id", connection_id)
        )
        timeout = cfg.get("timeout", 2.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise bad("timeout", f"must be a positive number of seconds, got {timeout!r}")
        self.timeout = float(timeout)
        require_run = cfg.get("require_run", True)
        if not isinstance(require_run, bool):
            raise bad("require_run", f"must be true or false, got {require_run!r}")
        self.require_run = require_run
        raw = cfg.get("notifications", [])
        if not isinstance(raw, Sequence) or isinstance(raw, str):
            raise bad("notifications", "must be a list of symbol names or objects")
        specs = [_parse_notification(item, i, connection_id) for i, item in enumerate(raw)]

        self._runtime = RUNTIME
        self._adr = AmsAddr(self.ams_net_id, self.ams_port)
        # One lock per connection: a disconnect never closes the port under a
        # call still running in another worker thread.
        self._lock = threading.RLock()
        self._port: int | None = None
        self._lease: _Lease | None = None
        self._broken = False
        self._symbols: dict[str, _Symbol] = {}
        #: The subscription ledger: what is replayed on every connect.
        self._wanted: dict[str, _Notification] = {spec.tag: spec for spec in specs}
        #: Live notification handles of this link, by tag.
        self._active: dict[str, tuple[int, int | None]] = {}

    # ------------------------------------------------------------------ link

    def connect(self) -> None:
        """Route to the PLC, open a local AMS port and replay the notifications.

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
                for spec in list(self._wanted.values()):
                    self._subscribe_now(spec)
            except BaseException:
                self._close_locked()
                raise

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

    def subscribe(
        self,
        tag: str,
        *,
        mode: Literal["change", "cycle"] = "change",
        cycle_time: float = 0.1,
        max_delay: float = 0.0,
    ) -> None:
        """Have the PLC push ``tag`` (an ADS device notification); values arrive as data.

        The subscription is kept and replayed after every reconnect. Calling it
        again for the same tag replaces the subscription.

        While the link is down the subscription waits for the next connect. A
        symbol the PLC lacks is reported as a datapoint of quality ``bad`` (at
        every replay) instead of failing the link.

        Raises:
            ConfigError: for a bad mode or time.
            ConnectError: if the link breaks while subscribing.
        """
        spec = _parse_notification(
            {"tag": tag, "mode": mode, "cycle_time": cycle_time, "max_delay": max_delay},
            len(self._wanted),
            self.connection_id,
        )
        with self._lock:
            self._wanted[tag] = spec
            if self.is_connected():
                self._unsubscribe_now(tag)
                self._subscribe_now(spec)

    def unsubscribe(self, tag: str) -> None:
        """Stop the notification for ``tag`` and forget it (no replay)."""
        with self._lock:
            self._wanted.pop(tag, None)
            if self.is_connected():
                self._unsubscribe_now(tag)

    def subscriptions(self) -> list[str]:
        """Return the tags in the subscription ledger."""
        with self._lock:
            return list(self._wanted)

    def _subscribe_now(self, spec: _Notification) -> None:
        try:
            symbol = self._symbol(spec.tag)
        except DeviceError as exc:
            # A symbol the PLC lacks must not stop the link, nor the other
            # subscriptions: say so on the data path and go on.
            logger.warning("%s: cannot subscribe to %s: %s", self.connection_id, spec.tag, exc)
            self.report_data(spec.tag, None, quality="bad")
            return
        attrib = NotificationAttrib(
            symbol.size,
            ads_constants.ADSTRANS_SERVERONCHA
            if spec.mode == "change"
            else ads_constants.ADSTRANS_SERVERCYCLE,
            # pyads takes milliseconds here.
            max_delay=spec.max_delay * 1000,
            cycle_time=spec.cycle_time * 1000,
        )
        callback = self._make_callback(symbol)
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

    def _make_callback(self, symbol: _Symbol) -> Callable[[Any, Any], None]:
        tag = symbol.name

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
                value = _decode(symbol, raw)
                ts = (int(contents.nTimeStamp) - _FILETIME_EPOCH) / 1e7
            except Exception:
                logger.exception("%s: bad notification for %s", self.connection_id, tag)
                return
            self.update_stats(packets_received=1, bytes_received=size)
            self.report_data(tag, value, ts=ts)

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
            return PermanentError(text, connection_id=self.connection_id, cause=exc)
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
        self.connection_lost(error)


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
