"""The mqtt driver's I/O bridge: paho's client driven by the asyncio loop, no thread.

paho's client does the MQTT protocol; the loop does the I/O through paho's
external-loop hooks: ``add_reader`` on its socket; what paho queued is written
in one flush per loop turn (what a readable event caused, at its end, in the
same turn), with ``add_writer`` only while the socket buffer is full;
``loop_misc`` once a second in the task ``edgelink[<id>].mqtt``. QoS 0
PUBLISH packets are parsed from the read buffer by `PahoClient.take_publishes`
and queued by `PahoClient.edgelink_publish0` (no paho message objects). So no
thread runs per client and a publish is a plain function call that paho
buffers. The TCP connect, name lookup and TLS handshake are done here without
blocking the loop (`open_socket`, `start_tls`; paho's own ``connect`` would
block) and the socket is handed to paho (`PahoClient`), which can never
reconnect by itself.
"""

from __future__ import annotations

import abc
import asyncio
import os
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

from edgelink.connection import Connection, Stats
from edgelink.errors import (
    ConfigError,
    ConnectError,
    EdgelinkError,
    ExceptionMap,
    PermanentError,
    ProtocolError,
    map_exceptions,
)

__all__ = [
    "MISC_INTERVAL",
    "READ_BATCH",
    "SUCCESS",
    "TLS_ERRORS",
    "PahoClient",
    "PahoLink",
    "TlsFiles",
    "open_socket",
    "start_tls",
]

#: Packets handled per readable event before the loop gets a turn (fairness).
READ_BATCH: Final = 256
#: How often paho's keepalive bookkeeping runs (it sends PINGREQ when idle).
MISC_INTERVAL: Final = 1.0
#: Bytes asked of the socket per ``recv`` (paho asks for each field of a packet alone).
READ_CHUNK: Final = 65536
#: Bytes of queued packets joined into one ``send`` (paho sends each packet alone).
WRITE_CHUNK: Final = 65536
_PUBLISH: Final = int(paho.PUBLISH)
_DISCONNECT: Final = int(paho.DISCONNECT)

SUCCESS: Final = MQTTErrorCode.MQTT_ERR_SUCCESS

#: TLS contexts by (ca_file, verify, client_cert, client_key), shared by every
#: connection: loading a CA bundle takes tens of ms, which must neither block
#: the loop nor happen per connect.
TlsFiles = tuple[str | None, bool, str | None, str | None]
_tls_contexts: dict[TlsFiles, ssl.SSLContext] = {}
_tls_lock = threading.Lock()


def _tls_context(key: TlsFiles) -> ssl.SSLContext:
    with _tls_lock:
        ctx = _tls_contexts.get(key)
        if ctx is None:
            ca, verify, cert, private_key = key
            is_dir = ca is not None and os.path.isdir(ca)
            ctx = ssl.create_default_context(
                cafile=None if is_dir else ca, capath=ca if is_dir else None
            )
            if not verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if cert is not None:
                ctx.load_cert_chain(cert, private_key)
            _tls_contexts[key] = ctx
        return ctx


def _refused_certificate(exc: Exception, *, server_name: str, **_: Any) -> EdgelinkError | None:
    assert isinstance(exc, ssl.SSLCertVerificationError)
    return PermanentError(
        f"TLS: the broker's certificate for {server_name!r} was refused: "
        f"{exc.verify_message or exc}"
    )


#: What a failed TLS handshake becomes, first match wins (subclasses first).
TLS_ERRORS: Final[ExceptionMap] = {
    ssl.SSLCertVerificationError: _refused_certificate,
    OSError: (ConnectError, "TLS handshake with {where} failed: {error}"),  # ssl.SSLError too
}


def _varint(n: int) -> bytes:
    """MQTT's variable byte integer (a packet's remaining length)."""
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def _tls_pending(sock: Any) -> int:
    """Bytes a TLS socket has decrypted but not handed out yet (0 for plain sockets)."""
    pending = getattr(sock, "pending", None)
    return int(pending()) if pending is not None else 0


async def _fd_ready(loop: asyncio.AbstractEventLoop, sock: socket.socket, *, write: bool) -> None:
    """Wait until ``sock`` is readable (or writable)."""
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    if write:
        loop.add_writer(sock, ready)
    else:
        loop.add_reader(sock, ready)
    try:
        await fut
    finally:
        if write:
            loop.remove_writer(sock)
        else:
            loop.remove_reader(sock)


class PahoClient(paho.Client):
    """paho's client, connected over a socket edgelink opened without blocking the loop.

    paho's ``connect``/``reconnect`` would open the TCP connection with a
    blocking ``socket.create_connection``; this subclass hands it the socket
    edgelink connected with ``loop.sock_connect`` instead, and refuses to open
    one itself, so paho can never reconnect (or block) behind the supervisor.
    """

    edgelink_socket: socket.socket | None = None
    #: Bytes read from the socket and not handed to paho yet, and where they start.
    _edgelink_rbuf: bytes = b""
    _edgelink_rpos: int = 0
    #: The last ``recv`` took less than it asked for: the socket had no more then.
    drained: bool = False
    #: Bytes written to the socket on this link (the health check's sign of a moving link).
    edgelink_sent: int = 0

    def buffered(self) -> int:
        """Return the bytes read from the socket that paho has not parsed yet."""
        return len(self._edgelink_rbuf) - self._edgelink_rpos

    def _sock_recv(self, bufsize: int) -> bytes:
        """Serve paho's small reads from one large ``recv``.

        paho reads a packet in three calls (its type, its length, its body):
        three system calls for a PUBACK. Here one ``recv`` of up to
        `READ_CHUNK` bytes serves them; `PahoLink._on_readable` parses what is
        buffered before it waits for the socket again.
        """
        data, pos = self._edgelink_rbuf, self._edgelink_rpos
        if pos >= len(data):
            data = super()._sock_recv(max(bufsize, READ_CHUNK))
            self.drained = len(data) < READ_CHUNK
            if len(data) <= bufsize:
                self._edgelink_rbuf, self._edgelink_rpos = b"", 0
                return data
            pos = 0
        end = pos + bufsize
        self._edgelink_rbuf, self._edgelink_rpos = data, min(end, len(data))
        return data[pos:end]

    def edgelink_publish0(self, topic: bytes, payload: bytes, retain: bool) -> bool:
        """Queue a QoS 0 PUBLISH; False if the link is gone.

        paho's ``publish`` builds a message info with a lock and a condition
        for every message (a tenth of the route path's CPU at 10,000 msg/s):
        nothing waits on a QoS 0 one, so the packet goes to paho's queue
        without it. ``topic`` is valid and at most 65,535 bytes (the caller
        checked).
        """
        if self._sock is None:
            return False
        tlen = len(topic)
        props = b"\x00" if self._protocol == paho.MQTTv5 else b""
        remaining = 2 + tlen + len(props) + len(payload)
        if remaining < 128:
            head = bytes((_PUBLISH | retain, remaining, tlen >> 8, tlen & 0xFF))
        else:
            head = bytes((_PUBLISH | retain, *_varint(remaining), tlen >> 8, tlen & 0xFF))
        self._packet_queue(_PUBLISH, b"".join((head, topic, props, payload)), 0, 0, None)
        return True

    def take_publishes(self, handler: Callable[[bytes, bytes, int], None], limit: int) -> int:
        """Hand the complete QoS 0 PUBLISH packets at the front of the read buffer to ``handler``.

        paho parses each packet in three reads into a message object with a
        timestamp, and logs it; a QoS 0 PUBLISH needs none of that (no
        acknowledgement, no state). ``handler(topic, payload, retain)`` gets
        the raw topic and payload. Anything else (another packet type, QoS 1
        or 2, MQTT 5 properties, a packet cut at the buffer's end) stops
        here and is left to paho's ``loop_read``.

        Returns:
            The packets handed over (at most ``limit``).
        """
        if self._in_packet["command"] or self._protocol == paho.MQTTv5:
            return 0  # paho is inside a packet (or v5 properties to parse)
        data, pos = self._edgelink_rbuf, self._edgelink_rpos
        end = len(data)
        taken = 0
        while taken < limit and pos + 4 <= end:
            command = data[pos]
            if command & 0xF6 != _PUBLISH:  # the packet type and the QoS bits
                break
            i = pos + 1
            length = data[i] & 0x7F
            if data[i] & 0x80:
                shift = 7
                while True:
                    i += 1
                    if i >= end or shift > 21:
                        length = -1
                        break
                    length |= (data[i] & 0x7F) << shift
                    if not data[i] & 0x80:
                        break
                    shift += 7
                if length < 0:
                    break
            start = i + 1
            stop = start + length
            if stop > end or length < 2:
                break
            tlen = (data[start] << 8) | data[start + 1]
            if tlen + 2 > length:
                break  # paho reports the malformed packet
            pos = stop
            self._edgelink_rpos = pos
            handler(data[start + 2 : start + 2 + tlen], data[start + 2 + tlen : stop], command & 1)
            taken += 1
        if taken:
            with self._msgtime_mutex:
                self._last_bytes_received = paho.time_func()
        return taken

    def fill(self) -> bool:
        """Read what the socket has into the empty buffer; False if nothing came (paho sees why)."""
        try:
            data = super()._sock_recv(READ_CHUNK)
        except (BlockingIOError, OSError, AttributeError):
            return False
        if not data:
            return False
        self._edgelink_rbuf, self._edgelink_rpos = data, 0
        self.drained = len(data) < READ_CHUNK
        return True

    def _create_socket_connection(self) -> socket.socket:
        sock, self.edgelink_socket = self.edgelink_socket, None
        if sock is None:
            raise OSError("edgelink: reconnecting is the supervisor's job, not paho's")
        return sock

    def _packet_write(self) -> MQTTErrorCode:
        """Write the queued packets, up to `WRITE_CHUNK` bytes per ``send`` call.

        paho writes each packet with its own ``send`` (one system call per
        message: a quarter of the bridge's CPU at 5,000 messages/s). Here
        consecutive packets go out joined. A QoS 0 PUBLISH is marked published
        without an ``on_publish`` call (edgelink's ``on_publish`` only settles
        acknowledgements); a DISCONNECT goes through paho's own path.
        """
        out = self._out_packet
        while out:
            first = out[0]
            if first["command"] & 0xF0 == _DISCONNECT:
                return super()._packet_write()
            parts: list[Any] = []
            packets: list[Any] = []
            size = 0
            for packet in out:
                if packet["command"] & 0xF0 == _DISCONNECT:
                    break
                pos = packet["pos"]
                data = packet["packet"]
                parts.append(memoryview(data)[pos:] if pos else data)
                packets.append(packet)
                size += packet["to_process"]
                if size >= WRITE_CHUNK:
                    break
            try:
                sent = self._sock_send(b"".join(parts) if len(parts) > 1 else parts[0])
            except (AttributeError, ValueError):
                return SUCCESS
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError:
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            self.edgelink_sent += sent
            with self._msgtime_mutex:
                self._last_msg_out = paho.time_func()
            for packet in packets:
                left = packet["to_process"]
                if sent < left:
                    packet["to_process"] = left - sent
                    packet["pos"] += sent
                    return MQTTErrorCode.MQTT_ERR_AGAIN  # the socket took no more
                sent -= left
                out.popleft()
                packet["to_process"] = 0
                packet["pos"] += left
                if packet["command"] & 0xF0 == _PUBLISH and packet["qos"] == 0:
                    info = packet["info"]
                    if info is not None:
                        info._set_as_published()
        return SUCCESS


async def open_socket(
    loop: asyncio.AbstractEventLoop, host: str, port: int, *, connection_id: str
) -> socket.socket:
    """Resolve ``host`` and connect a non-blocking TCP socket to the first address that answers.

    Raises:
        ConnectError: if the name does not resolve or no address accepts the connection.
    """
    where = f"{host}:{port}"
    try:
        infos = await loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except OSError as exc:
        raise ConnectError(
            f"cannot resolve {host!r}: {exc}", connection_id=connection_id, cause=exc
        ) from exc
    error: OSError | None = None
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, addr)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise ConnectError(
        f"cannot connect to {where}: {error.strerror or error}"
        if error
        else f"no address for {where}",
        connection_id=connection_id,
        cause=error,
    ) from error


async def start_tls(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    *,
    host: str,
    port: int,
    server_name: str | None,
    files: TlsFiles,
    connection_id: str,
) -> ssl.SSLSocket:
    """Wrap the connected socket in TLS and run the handshake without blocking the loop.

    Args:
        loop: The running loop.
        sock: The connected TCP socket.
        host: The broker's host, the server name unless ``server_name`` is given.
        port: The broker's port (for messages).
        server_name: The name the broker's certificate must carry, if not ``host``.
        files: The CA file or folder, whether to verify, the client certificate and key.
        connection_id: The connection the errors name.

    Raises:
        ConfigError: if the CA bundle or client certificate cannot be loaded.
        PermanentError: if the broker's certificate is refused (wrong CA or name).
        ConnectError: if the handshake fails otherwise.
    """
    ctx = _tls_contexts.get(files)
    if ctx is None:
        try:
            ctx = await asyncio.to_thread(_tls_context, files)
        except (OSError, ssl.SSLError) as exc:
            path = "config.client_cert" if files[2] else "config.ca_file"
            raise ConfigError(
                f"cannot load the TLS files: {exc}", path=path, connection_id=connection_id
            ) from exc
    name = server_name or host
    ssock = ctx.wrap_socket(sock, server_hostname=name, do_handshake_on_connect=False)
    where = f"{host}:{port}"
    try:
        with map_exceptions(TLS_ERRORS, connection_id=connection_id, where=where, server_name=name):
            while True:
                try:
                    ssock.do_handshake()
                    return ssock
                except ssl.SSLWantReadError:
                    await _fd_ready(loop, ssock, write=False)
                except ssl.SSLWantWriteError:
                    await _fd_ready(loop, ssock, write=True)
    except BaseException:
        ssock.close()
        raise


#: Every callback edgelink sets on a paho client, cleared when it lets go of one.
_HOOKS: Final = (
    "on_socket_open",
    "on_socket_close",
    "on_socket_register_write",
    "on_socket_unregister_write",
    "on_connect",
    "on_disconnect",
    "on_message",
    "on_subscribe",
    "on_unsubscribe",
    "on_publish",
)


class PahoLink(Connection):
    """The loop side of one paho client: its socket watched, its writes flushed, its keepalive run.

    Subclasses open the link (a `PahoClient` on a socket from `open_socket`,
    with the socket hooks of this class set) and say what a lost link means
    (`_link_gone`). Traffic is counted on the hot paths as plain ints and
    added to the shared `Stats` in bulk (`update_stats` per message would
    cost more than paho's own work for a publish): whoever reads `stats`
    gets exact figures.
    """

    def __init__(
        self, connection_id: str, config: Mapping[str, Any] | None = None, context: Any = None
    ) -> None:
        super().__init__(connection_id, config, context)
        self._client: PahoClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: A flush of paho's queued packets is scheduled; the loop watches the
        #: socket for writability (only while its buffer is full).
        self._flush_pending = False
        self._writer_on = False
        #: `_on_readable` runs: what it queues is flushed at its end, in the same turn.
        self._reading = False
        self._misc_task: asyncio.Task[None] | None = None
        #: The broker accepted the session on the current link.
        self._connected = False
        self._closing = False
        self._lost_error: BaseException | None = None
        self._rx_messages = 0
        #: Loop time of the last bytes from the broker.
        self._last_rx = 0.0
        self._pending_tx = [0, 0]
        self._pending_rx = [0, 0]
        #: ``(topic, payload, retain)`` of a QoS 0 PUBLISH read straight from
        #: the buffer (`PahoClient.take_publishes`); None: paho parses them all.
        self._raw_publish: Callable[[bytes, bytes, int], None] | None = None

    @abc.abstractmethod
    def _link_gone(self, error: BaseException) -> None:
        """The broker's link ended without us closing it."""

    @property
    def stats(self) -> Stats:
        """The traffic counters (PUBLISH packets and their wire bytes), up to date."""
        self._flush_stats()
        return self._stats

    def _flush_stats(self) -> None:
        tx, rx = self._pending_tx, self._pending_rx
        if tx[0] or rx[0]:
            self._pending_tx, self._pending_rx = [0, 0], [0, 0]
            self.update_stats(
                packets_sent=tx[0],
                bytes_sent=tx[1],
                packets_received=rx[0],
                bytes_received=rx[1],
            )

    def _teardown(self) -> None:
        """Detach from the paho client and close its socket (no I/O beyond close)."""
        client, self._client = self._client, None
        if client is None:
            return
        for hook in _HOOKS:
            setattr(client, hook, None)
        self._flush_pending = self._writer_on = False
        sock = client.socket()
        loop = self._loop
        if sock is not None and sock.fileno() != -1:
            if loop is not None and not loop.is_closed():
                loop.remove_reader(sock)
                loop.remove_writer(sock)
            sock.close()

    def _fail(self, error: BaseException) -> None:
        """Close the link after an error of our own side (a frame paho could not parse)."""
        self._link_gone(error)
        self._closing = True
        self._teardown()
        task = self._misc_task
        if task is not None:
            task.cancel()

    async def _run_misc(self, client: PahoClient) -> None:
        # paho keeps keepalive time with its own monotonic clock, so this runs
        # on real time, not the injectable clock.
        while client is self._client and client.socket() is not None:
            await asyncio.sleep(MISC_INTERVAL)
            if client is not self._client:
                return
            # Also feeds the data watchdog for a link that only publishes.
            self._flush_stats()
            try:
                rc = client.loop_misc()
            except Exception as exc:  # noqa: BLE001 - becomes a lost link
                self._fail(ConnectError(f"MQTT keepalive failed: {exc}", cause=exc))
                return
            if rc != SUCCESS:
                return  # paho closed the link and said so through on_disconnect

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_reader(sock, self._on_readable)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._writer_on = False
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(sock)
            loop.remove_writer(sock)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # paho queued a packet. It goes out in one flush on the next loop turn,
        # with whatever else was queued meanwhile; the loop watches the socket
        # for writability only while it is full. A writer registered and
        # removed per publish costs two epoll_ctl calls and two selector
        # updates each time (bench/bridge.py: 8 % of the CPU at 5,000 msg/s).
        if self._writer_on or self._flush_pending:
            return
        self._flush_pending = True
        if self._reading:
            return  # _on_readable flushes when it is done (what a message routed out)
        assert self._loop is not None
        self._loop.call_soon(self._flush_writes, client)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if not self._writer_on:
            return
        self._writer_on = False
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_writer(sock)

    def _flush_writes(self, client: paho.Client) -> None:
        if client is not self._client:
            return  # torn down since: the old socket is closed
        self._flush_pending = False
        self._on_writable()
        sock = client.socket()
        if (
            client is self._client
            and sock is not None
            and not self._writer_on
            and client.want_write()
        ):
            # The socket buffer is full: the rest goes when the loop says it drained.
            assert self._loop is not None
            self._writer_on = True
            self._loop.add_writer(sock, self._on_writable)

    def _on_readable(self) -> None:
        client = self._client
        if client is None:
            return
        if self._loop is not None:
            self._last_rx = self._loop.time()
        handler = self._raw_publish
        self._reading = True
        try:
            # paho reads one packet per call, the QoS 0 PUBLISH packets already
            # read are taken here in a row; a burst is handled in one turn
            # (bounded, so other connections get the loop too).
            budget = READ_BATCH
            while budget > 0:
                if handler is not None and (client.buffered() or client.fill()):
                    budget -= client.take_publishes(handler, budget)
                    if client is not self._client:
                        return  # a message closed the link
                    if budget <= 0:
                        continue  # the batch is used up (the else below)
                    if client.drained and not client.buffered():
                        sock = client.socket()
                        if sock is not None and not _tls_pending(sock):
                            break  # no recv that would only say EAGAIN
                before = self._rx_messages
                rc = client.loop_read()
                budget -= 1
                sock = client.socket()
                if rc != SUCCESS or sock is None:
                    return
                if self._rx_messages == before and not client.buffered() and not _tls_pending(sock):
                    break
            else:
                # The batch is used up. Bytes already read (or decrypted by
                # TLS) wake no selector: come back for them on the next turn.
                sock = client.socket()
                if (client.buffered() or _tls_pending(sock)) and self._loop is not None:
                    self._loop.call_soon(self._on_readable)
        except ProtocolError as exc:
            self._fail(exc)
        except Exception as exc:  # noqa: BLE001 - a frame paho choked on is garbage
            self._fail(
                ProtocolError(
                    f"unreadable MQTT packet from the broker: {type(exc).__name__}: {exc}",
                    connection_id=self.connection_id,
                    cause=exc,
                )
            )
        finally:
            self._reading = False
            if self._flush_pending:
                # What the packets read released or caused (QoS acks, messages
                # waiting for an inflight slot, what the router wrote for them)
                # goes out now, in this loop turn, in one send.
                self._flush_writes(client)

    def _on_writable(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            client.loop_write()
        except Exception as exc:  # noqa: BLE001 - a failed write is a lost link
            self._fail(
                ConnectError(f"write failed: {exc}", connection_id=self.connection_id, cause=exc)
            )
