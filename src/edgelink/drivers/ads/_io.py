"""The ads driver's I/O bridge: every pyads call, its errors translated, and the worker threads.

pyads is a blocking library: each call here is one ADS request and its
response, made under the connection's lock on the open local port, counted
in the stats, and its error translated at this boundary — symbol not found
and other "device said no" codes are a `DeviceError` (the link stays);
timeouts, missing routes, a closed port are a `ConnectError`, garbage a
`ProtocolError` (the link is marked broken and rebuilt); secure-ADS
refusals are a `PermanentError` (access denied: an `AuthError`).

Work for the event loop's side (the notification ledger) runs in a worker
thread, one job after the other per connection (`AdsLink._enqueue`); values
from adslib's notification thread are read out by `notification_sample`.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import ctypes
import logging
import struct
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

from pyads import constants as ads_constants
from pyads import pyads_ex
from pyads.structs import AmsAddr, SAdsNotificationHeader
from pyads.symbol import AdsSymbol

from edgelink.connection import SyncConnection
from edgelink.drivers.ads._codec import FILETIME_EPOCH, Symbol
from edgelink.drivers.ads._runtime import Lease
from edgelink.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    DeviceError,
    PermanentError,
    ProtocolError,
)

__all__ = [
    "AUTH_ERRORS",
    "GARBAGE_ERRORS",
    "LINK_ERRORS",
    "PERMANENT_ERRORS",
    "STALE_SYMBOL_ERRORS",
    "AdsLink",
    "notification_sample",
]

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


def notification_sample(notification: Any) -> tuple[bytes, float]:
    """Read a notification's value bytes and its PLC timestamp (Unix seconds) out of adslib's frame.

    Runs on adslib's notification thread, on memory adslib owns only during the callback.
    """
    contents = notification.contents
    size = int(contents.cbSampleSize)
    raw = bytes(
        (ctypes.c_ubyte * size).from_address(
            ctypes.addressof(contents) + SAdsNotificationHeader.data.offset
        )
    )
    return raw, (int(contents.nTimeStamp) - FILETIME_EPOCH) / 1e7


class AdsLink(SyncConnection):
    """One local AMS port to one PLC: its requests, symbol handles and worker jobs.

    Subclasses open and close the port and say what the loop's side does when
    a link ends (`_link_down`, queued with `call_on_loop`).
    """

    ams_net_id: str
    ams_port: int
    _adr: AmsAddr

    def __init__(
        self, connection_id: str, config: Mapping[str, Any] | None = None, context: Any = None
    ) -> None:
        super().__init__(connection_id, config, context)
        # One lock per connection: a disconnect never closes the port under a
        # call still running in another worker thread.
        self._lock = threading.RLock()
        self._port: int | None = None
        self._lease: Lease | None = None
        self._broken = False
        self._symbols: dict[str, Symbol] = {}
        #: Counts the links this driver opened; the open one's number tells a
        #: replay, a value or a refusal of an earlier link from its own.
        self._generation = 0
        #: Blocking work for the ledger, run in order by one worker thread at a time.
        self._jobs: collections.deque[Callable[[], None]] = collections.deque()
        self._jobs_running: asyncio.Future[None] | None = None

    @abc.abstractmethod
    def _link_down(self, link: int) -> None:
        """On the loop thread: link number ``link`` ended."""

    def _live_link(self) -> int:
        """The open link's number, or 0 while none is open (or it broke)."""
        return self._generation if self._port is not None and not self._broken else 0

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

    def _run_jobs(self) -> None:
        # One worker per connection at a time, so jobs run in the order they
        # were queued: a delete after the add it undoes, a retry after the add.
        while self._jobs:
            job = self._jobs.popleft()
            try:
                job()
            except Exception:
                logger.exception("%s: notification request failed", self.connection_id)

    def _symbol(self, tag: str) -> Symbol:
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
            symbol = Symbol(
                tag, type_name, int(info.size), AdsSymbol.get_type_from_str(type_name), int(handle)
            )
            self._symbols[tag] = symbol
            return symbol

    def _by_handle(
        self,
        symbol: Symbol,
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

    def _call(self, what: str, fn: Callable[..., T], *args: Any, symbol: Symbol | None = None) -> T:
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
