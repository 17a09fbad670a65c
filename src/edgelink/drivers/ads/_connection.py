"""The ads driver's connection: the link to one PLC, its health and the data plane.

`AdsConnection` opens a local AMS port onto a route the process-wide
`AdsRuntime` holds, reads and writes symbols by name (typed by the PLC's
symbol table, `edgelink.drivers.ads._codec`), checks the PLC's ADS state for
health and hands its notifications to the ledger
(`edgelink.drivers.ads._subscriptions`). pyads is a blocking library, so
this is a `SyncConnection`: the Supervisor runs every call in a worker thread
under its timeouts.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import socket
import struct
from collections.abc import Mapping
from typing import Any, ClassVar

from pyads import constants as ads_constants
from pyads import pyads_ex
from pyads.structs import AmsAddr

from edgelink.drivers.ads._codec import (
    ADS_STATES,
    SymbolInfo,
    coerce,
    is_string,
    parse_symbol_table,
)
from edgelink.drivers.ads._runtime import RUNTIME
from edgelink.drivers.ads._subscriptions import AdsNotifications, notification_spec
from edgelink.drivers.configs import ADS_TCP_PORT, AdsConfig
from edgelink.errors import ConnectError, DeviceError, ProtocolError

__all__ = ["AdsConnection"]

logger = logging.getLogger(__name__)


class AdsConnection(AdsNotifications):
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
    endpoint_fields = frozenset({"ams_net_id", "ams_port", "host", "local_ams_net_id"})
    # The failback probe reads the state only: no notifications on the PLC.
    probe_overrides: ClassVar[Mapping[str, Any]] = {"notifications": []}

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
        specs = [notification_spec(item) for item in cfg.notifications]
        self._runtime = RUNTIME
        self._adr = AmsAddr(self.ams_net_id, self.ams_port)
        self._setup_notifications(specs)

    def endpoint_changed(self) -> None:
        """Take the net id, route and ports of the endpoint failover chose."""
        cfg = self.cfg
        self.ams_net_id = cfg.ams_net_id
        self.ams_port = cfg.ams_port
        self.host = cfg.host or ".".join(self.ams_net_id.split(".")[:4])
        self.local_ams_net_id = cfg.local_ams_net_id
        self._adr = AmsAddr(self.ams_net_id, self.ams_port)

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

    def read(self, tag: str) -> Any:
        """Read a symbol by name, decoded by the type the PLC's symbol table gives.

        Numbers and BOOL come back as Python numbers and bools, STRING as str,
        arrays as lists, structures and other compound types as bytes.

        Raises:
            DeviceError: if the PLC has no such symbol (ADS 0x710) or refuses the read.
            ConnectError: if the link is down.
        """
        symbol = self._symbol(tag)
        if is_string(symbol.plc_type):
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
        data, plc_type = coerce(symbol, value, self.connection_id)
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
        symbols = list(parse_symbol_table(table, self.connection_id))
        if len(symbols) != count:
            logger.debug(
                "%s: symbol table holds %d entries, info said %d",
                self.connection_id,
                len(symbols),
                count,
            )
        return symbols
