"""`AdsPeer`: pyads's ADS test server, answering like a TwinCAT PLC, for the ``ads`` driver's tests.

It runs ``pyads.testserver.AdsTestServer`` with a subclass of its
``AdvancedHandler`` that closes the gaps between the stock handler and a real
PLC which the driver depends on:

- an unknown symbol is answered with ADS error 0x710 (*symbol not found*),
  where the stock handler raises in its thread and never answers;
- the symbol table upload (``ADSIGRP_SYM_UPLOAD``) carries each symbol's name,
  type, size and comment, where the stock one sends empty entries;
- the ADS state (``read_state``) can be set: RUN, STOP, CONFIG, ...;
- device notifications can be added by handle (how pyads adds them by name)
  and their handles are unique across symbols;
- right after a notification is added the symbol's current value is sent
  once, as a TwinCAT PLC does (the stock handler sends a value only when it
  changes), so a client can tell a notification that works from one that
  does not;
- notifications on a symbol can be dropped (`AdsPeer.drop_notifications`):
  accepted with a handle like any other, but never sent, neither that first
  value nor changes;
- those first values and the changes `AdsPeer.set_value` makes reach a
  client's callback in a buffer of the value's full size (the stock handler
  copies a value past the end of a one-byte header field; it still does for
  values a client writes over ADS).

The server thread's stream handling is made robust too: requests are split by
their AMS/TCP length (the stock loop takes one request per ``recv``, so two
requests in one TCP segment lose the second), and a client that resets its
link ends that client's thread quietly instead of with a traceback.

On Linux, pyads's adslib always dials the AMS port 48898, so the peer listens
on 127.0.0.1:48898: two peers run at once only on two addresses (``host``
127.0.0.1 and 127.0.0.2, both loopback on Linux, as the failover tests do),
and `port_in_use` lets tests skip when something else holds the port. Needs
the ``ads`` extra.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import itertools
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from edgelink.lifecycle import Service

try:
    from pyads import constants
    from pyads.filetimes import dt_to_filetime
    from pyads.pyads_ex import callback_store
    from pyads.structs import SAdsNotificationHeader
    from pyads.testserver import AdsTestServer, AdvancedHandler, PLCVariable
    from pyads.testserver.handler import AmsPacket, AmsResponseData
    from pyads.testserver.testserver import AdsClientConnection
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("AdsPeer needs pyads: pip install 'edgelink[ads]'") from exc

__all__ = ["ADS_TCP_PORT", "AdsPeer", "PlcHandler", "port_in_use"]

logger = logging.getLogger(__name__)

#: The AMS/TCP port; adslib on Linux dials no other.
ADS_TCP_PORT = 48898

#: ADS error codes a PLC answers with.
ADSERR_DEVICE_INVALIDOFFSET = 0x703
ADSERR_DEVICE_SYMBOLNOTFOUND = 0x710
ADSERR_DEVICE_NOTIFYHNDINVALID = 0x714

#: Scalar types the peer can hold: ADS type id and struct format.
_SCALARS: dict[str, tuple[int, str]] = {
    "BOOL": (constants.ADST_BIT, "<?"),
    "BYTE": (constants.ADST_UINT8, "<B"),
    "USINT": (constants.ADST_UINT8, "<B"),
    "SINT": (constants.ADST_INT8, "<b"),
    "WORD": (constants.ADST_UINT16, "<H"),
    "UINT": (constants.ADST_UINT16, "<H"),
    "INT": (constants.ADST_INT16, "<h"),
    "DWORD": (constants.ADST_UINT32, "<I"),
    "UDINT": (constants.ADST_UINT32, "<I"),
    "DINT": (constants.ADST_INT32, "<i"),
    "TIME": (constants.ADST_UINT32, "<I"),
    "ULINT": (constants.ADST_UINT64, "<Q"),
    "LINT": (constants.ADST_INT64, "<q"),
    "REAL": (constants.ADST_REAL32, "<f"),
    "LREAL": (constants.ADST_REAL64, "<d"),
}


#: Notification handles, unique in the process: pyads keeps every client's
#: callbacks in one process-wide store keyed by handle, and the handler fires
#: a notification by looking its handle up there.
_NOTIFICATION_IDS = itertools.count(1)

#: How long the first value of a new notification waits for the client to
#: store its callback (pyads does so once the add's answer reached it).
FIRST_VALUE_WAIT = 2.0


def port_in_use(host: str = "127.0.0.1", port: int = ADS_TCP_PORT) -> bool:
    """Return True if something already listens on (or holds) ``host:port``."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _encode(type_name: str, value: Any) -> tuple[int, bytes]:
    upper = type_name.upper()
    if upper in _SCALARS:
        ads_type, fmt = _SCALARS[upper]
        return ads_type, struct.pack(fmt, value if value is not None else 0)
    if upper.startswith("STRING"):
        size = 81
        if "(" in upper:
            size = int(upper[upper.index("(") + 1 : upper.index(")")]) + 1
        text = (value or "").encode("cp1252")
        if len(text) >= size:
            raise ValueError(f"{value!r} does not fit {type_name}")
        return constants.ADST_STRING, text.ljust(size, b"\x00")
    if isinstance(value, bytes):
        # Anything else (a structure, a function block): raw bytes of its size.
        return constants.ADST_BIGTYPE, value
    raise ValueError(f"AdsPeer cannot hold {type_name} from {value!r}; pass raw bytes")


def _decode(type_name: str, raw: bytes) -> Any:
    upper = type_name.upper()
    if upper in _SCALARS:
        return struct.unpack(_SCALARS[upper][1], raw)[0]
    if upper.startswith("STRING"):
        return raw.split(b"\x00", 1)[0].decode("cp1252")
    return raw


class PlcHandler(AdvancedHandler):  # type: ignore[misc]
    """pyads's AdvancedHandler, answering like a TwinCAT PLC (see the module docstring).

    Attributes:
        ads_state: What ``read_state`` reports (``pyads.ADSSTATE_RUN`` by default).
    """

    def __init__(self) -> None:
        super().__init__()
        self.ads_state: int = constants.ADSSTATE_RUN
        self._lock = threading.Lock()
        #: Symbols whose new notifications are dropped.
        self._dropped: set[str] = set()
        #: Handles of dropped notifications, with their symbol: they never fire.
        self._dead: dict[int, str] = {}
        #: Notifications added, by symbol name (dropped ones too).
        self.notifications_added: collections.Counter[str] = collections.Counter()
        #: New notifications whose first value goes out after the answer.
        self._first_values: list[tuple[PLCVariable, int]] = []

    def add_symbol(
        self, name: str, type_name: str, value: Any = None, *, comment: str = ""
    ) -> PLCVariable:
        """Add a symbol (``MAIN.counter``, ``INT``, 5) and return its stored variable."""
        ads_type, raw = _encode(type_name, value)
        var = PLCVariable(name, raw, ads_type, type_name)
        var.comment = comment
        with self._lock:
            self.add_variable(var)
        return var

    def drop_notifications(self, name: str, *, drop: bool = True) -> None:
        """Drop notifications on ``name`` added from now on (``drop=False``: send them again).

        A dropped notification is added like any other (the client gets a
        handle, and may delete it), but nothing is ever sent on it. Those
        added before keep working, and those dropped stay dead.
        """
        with self._lock:
            if drop:
                self._dropped.add(name)
            else:
                self._dropped.discard(name)

    def set_value(self, var: PLCVariable, raw: bytes) -> None:
        """Store a variable's new raw value; its live notifications fire if it changed."""
        with self._lock:
            if var.value == raw:
                return
            var.value = raw
            for handle in list(var.notifications):
                self._fire(handle, raw)

    def send_first_values(self) -> None:
        """Send the current value on the notifications just added, once the client is ready.

        Called after an answer went out. Each value waits in its own thread
        until the client stored the callback for its handle, so the request
        stream goes on meanwhile.
        """
        with self._lock:
            pending, self._first_values = self._first_values, []
        for var, handle in pending:
            threading.Thread(
                target=self._send_first_value,
                args=(var, handle),
                name=f"AdsPeer-first-value-{handle}",
                daemon=True,
            ).start()

    def _send_first_value(self, var: PLCVariable, handle: int) -> None:
        deadline = time.monotonic() + FIRST_VALUE_WAIT
        while time.monotonic() < deadline:
            with self._lock:
                if handle not in var.notifications:
                    return  # deleted before the client was ready
                if self._fire(handle, var.value):
                    return
            time.sleep(0.001)
        logger.debug("AdsPeer: no client callback for notification %d", handle)

    @staticmethod
    def _fire(handle: int, raw: bytes) -> bool:
        """Call the client callbacks stored for ``handle`` with ``raw``; False if there is none."""
        # pyads keeps every client's callbacks in one process-wide store; the
        # copy keeps a client adding one meanwhile from breaking the loop.
        callbacks = [(key[0], fn) for key, fn in list(callback_store.items()) if key[1] == handle]
        if not callbacks:
            return False
        # The header and the value behind it, in one buffer of the full size.
        buffer = ctypes.create_string_buffer(ctypes.sizeof(SAdsNotificationHeader) + len(raw))
        header = SAdsNotificationHeader.from_buffer(buffer)
        header.hNotification = handle
        header.nTimeStamp = dt_to_filetime(datetime.now().astimezone())
        header.cbSampleSize = len(raw)
        ctypes.memmove(ctypes.addressof(header) + SAdsNotificationHeader.data.offset, raw, len(raw))
        for address, fn in callbacks:
            fn(address.amsAddrStruct(), header, 0)
        return True

    def variables(self) -> Iterator[PLCVariable]:
        """Return the stored variables."""
        with self._lock:
            return iter(list(self._data.values()))

    def handle_request(self, request: AmsPacket) -> AmsResponseData:
        """Answer one request; unknown symbols get ADS error 0x710."""
        header = request.ams_header
        command = struct.unpack("<H", header.command_id)[0]
        state = struct.pack("<H", struct.unpack("<H", header.state_flags)[0] | 0x0001)
        try:
            with self._lock:
                if command == constants.ADSCOMMAND_READSTATE:
                    return self._ok(state, struct.pack("<HH", self.ads_state, 0))
                if command == constants.ADSCOMMAND_READ:
                    group = struct.unpack("<I", header.data[:4])[0]
                    if group == constants.ADSIGRP_SYM_UPLOADINFO2:
                        return self._ok(state, self._with_length(self._upload_info()))
                    if group == constants.ADSIGRP_SYM_UPLOAD:
                        return self._ok(state, self._with_length(self._upload()))
                if command == constants.ADSCOMMAND_ADDDEVICENOTE:
                    return self._ok(state, self._add_notification(header.data))
                if command == constants.ADSCOMMAND_DELDEVICENOTE:
                    handle = struct.unpack("<I", header.data[:4])[0]
                    if self._dead.pop(handle, None) is not None:
                        return self._ok(state, b"")
                return super().handle_request(request)
        except KeyError:
            code = (
                ADSERR_DEVICE_SYMBOLNOTFOUND
                if command == constants.ADSCOMMAND_READWRITE
                else ADSERR_DEVICE_INVALIDOFFSET
            )
            if command == constants.ADSCOMMAND_DELDEVICENOTE:
                code = ADSERR_DEVICE_NOTIFYHNDINVALID
            return AmsResponseData(state, header.error_code, struct.pack("<II", code, 0))

    @staticmethod
    def _ok(state: bytes, content: bytes) -> AmsResponseData:
        return AmsResponseData(state, b"\x00" * 4, b"\x00" * 4 + content)

    @staticmethod
    def _with_length(data: bytes) -> bytes:
        return struct.pack("<I", len(data)) + data

    def _upload(self) -> bytes:
        return b"".join(var.get_packed_info() for var in self._data.values())

    def _upload_info(self) -> bytes:
        # AdsSymbolUploadInfo2: symbols, their table size, data types (none
        # here), their size, dynamic symbols (max, used).
        return struct.pack("<6I", len(self._data), len(self._upload()), 0, 0, 0, 0)

    def _add_notification(self, data: bytes) -> bytes:
        group, offset = struct.unpack("<II", data[:8])
        if group == constants.ADSIGRP_SYM_VALBYHND:
            var = self.get_variable_by_handle(offset)
        else:
            var = self.get_variable_by_indices(group, offset)
        handle = next(_NOTIFICATION_IDS)
        self.notifications_added[var.name] += 1
        if var.name in self._dropped:
            self._dead[handle] = var.name
        else:
            var.notifications.append(handle)
            self._first_values.append((var, handle))
        return struct.pack("<I", handle)


class _Client(AdsClientConnection):  # type: ignore[misc]
    """One client link of the test server, reading whole AMS/TCP packets off the stream."""

    _run: bool

    def run(self) -> None:
        buffer = b""
        try:
            while self._run:
                ready, _, _ = select.select([self.client], [], [], 0.05)
                if not ready:
                    continue
                chunk = self.client.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                # AMS/TCP header: 2 reserved bytes, then the length of what follows.
                while len(buffer) >= 6:
                    size = 6 + struct.unpack("<I", buffer[2:6])[0]
                    if len(buffer) < size:
                        break
                    packet, buffer = buffer[:size], buffer[size:]
                    self._answer(packet)
        except (OSError, ValueError):
            # A reset link, or a socket closed under select at shutdown.
            pass
        finally:
            self._run = False
            with contextlib.suppress(OSError):
                self.client.close()

    def _answer(self, packet: bytes) -> None:
        request = self.construct_request(packet)
        self.server.request_history.append(request)
        response = self.server.handler.handle_request(request)
        self.client.sendall(self.construct_response(response, request))
        self.server.handler.send_first_values()


class _Server(AdsTestServer):  # type: ignore[misc]
    """The test server with a shutdown that cannot race its own accept loop."""

    _run: bool
    clients: list[_Client]

    def run(self) -> None:
        # listen() already ran in AdsPeer.start: a client dialling right after
        # start() must not find the port closed while this thread spins up.
        while self._run:
            try:
                ready, _, _ = select.select([self.server], [], [], 0.05)
                if not ready:
                    continue
                client, address = self.server.accept()
            except (OSError, ValueError):
                continue
            thread = _Client(handler=self.handler, client=client, address=address, server=self)
            thread.daemon = True
            thread.start()
            self.clients.append(thread)

    def stop(self) -> None:
        self._run = False
        if self.is_alive() and threading.current_thread() is not self:
            self.join(2.0)
        for client in list(self.clients):
            client._run = False
        for client in list(self.clients):
            if client.is_alive():
                client.join(2.0)
        self.clients = []
        self.server.close()


class AdsPeer(Service):
    """A TwinCAT-like PLC on 127.0.0.1:48898 for tests, restartable with its symbols kept.

    Example:
        async with AdsPeer() as plc:
            plc.add_symbol("MAIN.temperature", "LREAL", 21.5, comment="boiler")
            manager.add_connection("plc", "ads", {"ams_net_id": "127.0.0.1.1.1",
                                                  "host": "127.0.0.1"})
            await plc.stop()                 # the PLC is gone: the link times out
            await plc.start()                # back, same symbols
            plc.ads_state = pyads.ADSSTATE_STOP   # read_state says STOP
            plc.drop_notifications("MAIN.temperature")   # new ones never deliver

    Args:
        host: The address to listen on.
        port: The port; adslib on Linux only ever dials 48898.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = ADS_TCP_PORT) -> None:
        self.host = host
        self.port = port
        self.handler = PlcHandler()
        self._server: _Server | None = None

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<AdsPeer {self.host}:{self.port} {state}>"

    @property
    def ads_state(self) -> int:
        """The ADS state ``read_state`` reports (``pyads.ADSSTATE_RUN``, ``..._STOP``, ...)."""
        return self.handler.ads_state

    @ads_state.setter
    def ads_state(self, value: int) -> None:
        self.handler.ads_state = value

    @property
    def bound_port(self) -> int:
        """The port the server listens on (the ephemeral one when created with ``port=0``).

        Raises:
            RuntimeError: if the peer is not running.
        """
        if self._server is None:
            raise RuntimeError("AdsPeer is not running")
        return int(self._server.server.getsockname()[1])

    @property
    def requests(self) -> int:
        """Requests answered since the last start."""
        return len(self._server.request_history) if self._server is not None else 0

    def is_running(self) -> bool:
        """Return whether the server listens."""
        return self._server is not None

    def add_symbol(
        self, name: str, type_name: str, value: Any = None, *, comment: str = ""
    ) -> None:
        """Add a symbol of a scalar type (``BOOL``, ``INT``, ``LREAL``...) or ``STRING(n)``.

        Any other type name (a structure) takes ``value`` as its raw bytes.
        """
        self.handler.add_symbol(name, type_name, value, comment=comment)

    def _variable(self, name: str) -> PLCVariable:
        for var in self.handler.variables():
            if var.name == name:
                return var
        raise KeyError(f"AdsPeer has no symbol {name!r}")

    def value(self, name: str) -> Any:
        """Return a symbol's current value, decoded by its type.

        Raises:
            KeyError: for an unknown symbol.
        """
        var = self._variable(name)
        return _decode(var.symbol_type, var.value)

    def set_value(self, name: str, value: Any) -> None:
        """Change a symbol as the PLC program would; notifications on it fire.

        Raises:
            KeyError: for an unknown symbol.
        """
        var = self._variable(name)
        _, raw = _encode(var.symbol_type, value)
        self.handler.set_value(var, raw)

    def set_raw(self, name: str, raw: bytes) -> None:
        """Change a symbol's bytes as they are, even ones its type cannot decode.

        Raises:
            KeyError: for an unknown symbol.
        """
        self.handler.set_value(self._variable(name), raw)

    def drop_notifications(self, name: str, *, drop: bool = True) -> None:
        """Drop notifications on ``name`` added from now on: accepted, never sent.

        ``drop=False`` sends the ones added after it again. What a PLC whose
        notifications are lost on the way looks like to a client.
        """
        self.handler.drop_notifications(name, drop=drop)

    def notifications_added(self, name: str) -> int:
        """Return how many notifications clients added on ``name`` (dropped ones too)."""
        return self.handler.notifications_added[name]

    async def start(self) -> None:
        """Listen on host:port (again, after a `stop`). No-op if running.

        Raises:
            OSError: if the port is taken.
        """
        if self._server is not None:
            return
        server = await asyncio.to_thread(
            _Server, handler=self.handler, ip_address=self.host, port=self.port, logging=False
        )
        server.server.listen(16)
        server.start()
        self._server = server

    async def stop(self) -> None:
        """Stop listening and cut every client link, as a PLC that went away. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(server.stop)

    async def restart(self) -> None:
        """Stop, then listen again on the same port; symbols and values are kept."""
        await self.stop()
        await self.start()
