r"""The PING/PONG line-protocol device: its protocol, and a simulator of many of them.

This module owns the one implementation of the line protocol that the ``tcp``
driver speaks, used by `TcpSimulator` (``edgelink demo``, ``edgelink sim tcp``,
benchmarks) and by `edgelink.testing.PingPongPeer` (the driver's tests).

One request per line (``\n`` terminated, ``\r\n`` tolerated), one answer line:

==================  ===========================================
request             answer
==================  ===========================================
``PING``            ``PONG``
``ID?``             the device identity (a boot id)
``<tag>=<value>``   ``OK``; the value is stored as text
``<tag>?``          the stored value, or ``ERR unknown <tag>``
anything else       ``ERR bad request``
==================  ===========================================

A device is served by plain `asyncio.Protocol` objects and one listening
server: no task per device or per link, so one process can hold 10,000
simulated devices.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import secrets
import sys
import time
from collections import deque
from collections.abc import Callable, MutableMapping
from typing import Final, cast

from edgelink.lifecycle import Service

__all__ = [
    "Drift",
    "LineDevice",
    "LineProtocol",
    "TcpSimulator",
    "answer_request",
    "raise_open_file_limit",
    "run_tcp_simulator",
]

logger = logging.getLogger(__name__)

#: A request line longer than this (without its newline) is refused and the
#: link closed, so a peer streaming garbage cannot grow a buffer without bound.
MAX_LINE: Final = 65536

BAD_REQUEST: Final = "ERR bad request"


def answer_request(request: str, values: MutableMapping[str, str], identity: str) -> str:
    r"""Answer one request line of the PING/PONG protocol.

    This is the whole protocol, pure and shared by every device implementation.

    Args:
        request: The request line; a trailing ``\n`` or ``\r\n`` is ignored.
        values: The device's values; ``<tag>=<value>`` stores into it and
            ``<tag>?`` looks up with ``values[tag]`` (so a mapping may compute
            values on demand).
        identity: The answer to ``ID?``.

    Returns:
        The answer line, without its newline. Never raises for any input.
    """
    line = request.rstrip("\r\n")
    if line == "PING":
        return "PONG"
    if line == "ID?":
        return identity
    tag, sep, value = line.partition("=")
    if sep:
        if not _is_tag(tag):
            return BAD_REQUEST
        values[tag] = value
        return "OK"
    if line.endswith("?"):
        tag = line[:-1]
        if not _is_tag(tag):
            return BAD_REQUEST
        try:
            return values[tag]
        except KeyError:
            return f"ERR unknown {tag}"
    return BAD_REQUEST


def _is_tag(tag: str) -> bool:
    return bool(tag) and "?" not in tag and not any(ch.isspace() for ch in tag)


class LineDevice:
    """The state of one line-protocol device, shared by all its client links.

    Attributes:
        identity: The answer to ``ID?``.
        values: The device's values (see `answer_request`).
        respond: False makes the device swallow requests without answering,
            like a hung device process behind a live TCP stack.
        response_delay: Seconds between a request and its answer.
        requests: Request lines received so far, answered or not.
        links: The open client links.
        accepting: False while the device is stopped: a connection its closed
            listener accepted just before closing is reset instead of served.
    """

    __slots__ = (
        "accepting",
        "identity",
        "links",
        "requests",
        "respond",
        "response_delay",
        "values",
    )

    def __init__(self, identity: str, values: MutableMapping[str, str] | None = None) -> None:
        self.identity = identity
        self.values: MutableMapping[str, str] = {} if values is None else values
        self.respond = True
        self.response_delay = 0.0
        self.requests = 0
        self.links: set[LineProtocol] = set()
        self.accepting = True

    def close_links(self) -> None:
        """Close every client link; a link with unsent data is reset instead."""
        for link in list(self.links):
            link.close()


class LineProtocol(asyncio.Protocol):
    """One client link of a `LineDevice`: splits lines and writes answers in order.

    Answers are written in request order even when ``response_delay`` changes
    between requests. Reading pauses while the client does not read its
    answers, so a client that only writes cannot grow our send buffer.
    """

    __slots__ = ("_buffer", "_device", "_eof", "_pending", "_timer", "_transport")

    def __init__(self, device: LineDevice) -> None:
        self._device = device
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._pending: deque[tuple[float, bytes]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register the link with its device."""
        # A stream transport; not asserted as asyncio.Transport: uvloop's are no
        # subclasses of it.
        transport = cast(asyncio.Transport, transport)
        if not self._device.accepting:
            # Accepted by the kernel before the listener closed, connected only now.
            transport.abort()
            return
        self._transport = transport
        self._device.links.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the link and any answers still waiting for their delay."""
        self._device.links.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending = None
        self._transport = None

    def pause_writing(self) -> None:
        """Stop reading requests while the client is not reading answers."""
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        """Read requests again once the client caught up."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        """Answer every complete request line in ``data``."""
        self._buffer += data
        device = self._device
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            device.requests += 1
            if device.respond:
                answer = answer_request(
                    line.decode("utf-8", "replace"), device.values, device.identity
                )
                self._send((answer + "\n").encode("utf-8"), device.response_delay)
        if len(self._buffer) > MAX_LINE:
            self._buffer.clear()
            self._send(f"{BAD_REQUEST}\n".encode(), 0.0)
            self.close()

    def push(self, data: bytes) -> None:
        """Write ``data`` unasked, after any answers still waiting (a device reporting itself)."""
        self._send(data, 0.0)

    def eof_received(self) -> bool:
        """Close when the client did, after any answers still waiting for their delay."""
        if self._pending:
            self._eof = True
            return True
        return False

    def close(self) -> None:
        """Close the link: FIN if everything was sent, reset if data is stuck."""
        transport = self._transport
        if transport is None:
            return
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()

    def _send(self, data: bytes, delay: float) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if delay <= 0 and not self._pending:
            transport.write(data)
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + max(delay, 0.0)
        if self._pending is None:
            self._pending = deque()
        if self._pending:
            # Never overtake an earlier answer that waits for a longer delay.
            due = max(due, self._pending[-1][0])
        self._pending.append((due, data))
        if self._timer is None:
            self._timer = loop.call_at(self._pending[0][0], self._flush_due)

    def _flush_due(self) -> None:
        self._timer = None
        pending = self._pending
        transport = self._transport
        if pending is None or transport is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        while pending and pending[0][0] <= now:
            _, data = pending.popleft()
            if not transport.is_closing():
                transport.write(data)
        if pending:
            self._timer = loop.call_at(pending[0][0], self._flush_due)
        elif self._eof:
            transport.close()


class Drift:
    """An Ornstein-Uhlenbeck process: a reading that wanders around ``mean``.

    Advanced lazily, on read, with the exact discretisation for the time that
    passed, so it costs nothing while nobody asks.
    """

    __slots__ = ("_mean", "_sigma", "_tau", "_value", "_when", "digits", "low")

    def __init__(
        self, mean: float, sigma: float, tau: float, digits: int, low: float, now: float
    ) -> None:
        self._mean = mean
        self._sigma = sigma
        self._tau = tau
        self._value = mean
        self._when = now
        self.digits = digits
        self.low = low

    def read(self, now: float, rng: random.Random) -> str:
        """Advance to ``now``; return the value as text, ``digits`` decimals, at least ``low``."""
        dt = max(now - self._when, 0.0)
        self._when = now
        keep = math.exp(-dt / self._tau)
        spread = self._sigma * math.sqrt(1.0 - keep * keep)
        self._value = self._mean + (self._value - self._mean) * keep + spread * rng.gauss()
        return f"{max(self._value, self.low):.{self.digits}f}"


class _SimValues(dict[str, str]):
    """A simulated device's values: written ones, plus ``temperature`` and ``power``.

    ``temperature`` (°C, around 20..25) and ``power`` (W, around 80..160)
    drift slowly and change on every read; writing either pins it.
    """

    __slots__ = ("_drifts", "_rng")

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self._rng = rng
        self._drifts: dict[str, Drift] | None = None

    def __missing__(self, tag: str) -> str:
        if tag not in ("temperature", "power"):
            raise KeyError(tag)
        now = time.monotonic()
        if self._drifts is None:
            rng = self._rng
            self._drifts = {
                # Minutes-scale drift; a read 50 ms later still moves a few hundredths.
                "temperature": Drift(rng.uniform(20, 25), 1.5, 300.0, 2, -40.0, now),
                "power": Drift(rng.uniform(80, 160), 12.0, 60.0, 1, 0.0, now),
            }
        return self._drifts[tag].read(now, self._rng)


class _SimDevice:
    __slots__ = ("device", "index", "port", "server")

    def __init__(self, index: int, port: int, device: LineDevice) -> None:
        self.index = index
        self.port = port
        self.device = device
        self.server: asyncio.Server | None = None


def raise_open_file_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit, where the OS allows.

    Returns:
        The soft limit in force afterwards (``-1`` where there is no such limit).
    """
    if sys.platform == "win32":
        return -1
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        # An infinite hard limit is not a valid soft limit on Linux (nr_open caps it).
        target = max(soft, 1_048_576) if soft != resource.RLIM_INFINITY else soft
    else:
        target = hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            logger.warning("could not raise RLIMIT_NOFILE from %d to %d: %s", soft, target, exc)
        else:
            soft = target
    return int(soft)


class TcpSimulator(Service):
    r"""Many PING/PONG devices in one process, each on its own TCP port.

    Device ``i`` listens on ``base_port + i``, or on an ephemeral port when
    ``base_port`` is 0 (see `ports`). Besides what clients write, each device
    has ``temperature`` and ``power`` values that drift slowly. Stopping and
    starting a device simulates a reboot: same port, new ``ID?`` identity,
    written values forgotten.

    Example:
        async with TcpSimulator(100, base_port=0) as sim:
            reader, writer = await asyncio.open_connection("127.0.0.1", sim.ports[0])
            writer.write(b"temperature?\n")   # -> b"21.37\n"
            await sim.stop_device(0)          # connections refused until...
            await sim.start_device(0)         # ...it is back on the same port

    Args:
        count: How many devices (at least 1).
        base_port: The first device's port, or 0 for ephemeral ports.
        host: The address every device listens on.
        seed: Seeds the values' drift, for reproducible runs.

    Raises:
        ValueError: If ``count`` or ``base_port`` are out of range.
    """

    def __init__(
        self,
        count: int,
        base_port: int = 0,
        *,
        host: str = "127.0.0.1",
        seed: int | None = None,
    ) -> None:
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        if base_port < 0 or (base_port and base_port + count - 1 > 65535):
            raise ValueError(f"ports {base_port}..{base_port + count - 1} are out of range")
        self.count = count
        self.base_port = base_port
        self.host = host
        self._rng = random.Random(seed)
        self._devices: list[_SimDevice] = []
        self._started = False

    def __repr__(self) -> str:
        running = sum(1 for d in self._devices if d.server is not None)
        return (
            f"<TcpSimulator {self.count} devices {self.host}:{self._port_span()} "
            f"running={running} links={self.connections}>"
        )

    @property
    def ports(self) -> list[int]:
        """The device ports, by device index (empty before `start`)."""
        return [d.port for d in self._devices]

    @property
    def connections(self) -> int:
        """Open client links over all devices."""
        return sum(len(d.device.links) for d in self._devices)

    @property
    def requests(self) -> int:
        """Request lines received over all devices."""
        return sum(d.device.requests for d in self._devices)

    def device(self, index: int) -> LineDevice:
        """Return device ``index``'s state (values, identity, respond, response_delay).

        Raises:
            IndexError: If there is no such device (or the simulator never started).
        """
        return self._devices[index].device

    def is_running(self, index: int) -> bool:
        """Return whether device ``index`` is listening."""
        return self._devices[index].server is not None

    async def start(self) -> None:
        """Start listening on every device's port.

        Raises:
            OSError: If a port cannot be bound; devices already started are stopped.
            RuntimeError: If the simulator was started before.
        """
        if self._started:
            raise RuntimeError("TcpSimulator.start() called twice")
        self._started = True
        limit = raise_open_file_limit()
        if 0 <= limit < self.count + 64:
            logger.warning("open file limit %d is low for %d devices", limit, self.count)
        self._devices = [
            _SimDevice(i, self.base_port + i if self.base_port else 0, self._new_device(i))
            for i in range(self.count)
        ]
        try:
            for sim_device in self._devices:
                await self._listen(sim_device)
        except BaseException:
            self._close_all()
            raise
        logger.info("tcp simulator: %d devices on %s:%s", self.count, self.host, self._port_span())

    async def stop(self) -> None:
        """Stop every device and close every client link. Idempotent."""
        self._close_all()
        # Closed transports release their sockets on the next loop turn.
        await asyncio.sleep(0)

    async def stop_device(self, index: int) -> None:
        """Kill device ``index``: its port refuses connections and its links close.

        Raises:
            IndexError: If there is no such device.
        """
        sim_device = self._devices[index]
        self._close_device(sim_device)
        await asyncio.sleep(0)

    async def start_device(self, index: int) -> None:
        """Revive device ``index`` on the same port, as if it rebooted. No-op if running.

        Raises:
            IndexError: If there is no such device.
            OSError: If the port cannot be bound again.
        """
        sim_device = self._devices[index]
        if sim_device.server is not None:
            return
        sim_device.device = self._new_device(index)
        await self._listen(sim_device)

    def _new_device(self, index: int) -> LineDevice:
        boot = secrets.token_hex(4)
        return LineDevice(f"sim-tcp-{index}-{boot}", _SimValues(self._rng))

    async def _listen(self, sim_device: _SimDevice) -> None:
        loop = asyncio.get_running_loop()
        factory: Callable[[], LineProtocol] = functools.partial(LineProtocol, sim_device.device)
        server = await loop.create_server(
            factory, self.host, sim_device.port, reuse_address=True, backlog=128
        )
        sim_device.server = server
        sim_device.port = server.sockets[0].getsockname()[1]

    def _close_device(self, sim_device: _SimDevice) -> None:
        if sim_device.server is not None:
            # Server.close() closes the listening socket at once, so the port
            # refuses from here on and can be bound again right away.
            sim_device.server.close()
            sim_device.server = None
        sim_device.device.accepting = False
        sim_device.device.close_links()

    def _close_all(self) -> None:
        for sim_device in self._devices:
            self._close_device(sim_device)

    def _port_span(self) -> str:
        ports = self.ports
        if not ports:
            return "-"
        return f"{ports[0]}-{ports[-1]}"


async def run_tcp_simulator(count: int, base_port: int, host: str = "127.0.0.1") -> None:
    """Run `TcpSimulator` until cancelled.

    Prints ``listening: <count> devices on <host>:<first>-<last>`` to stdout
    once every device listens. Cancellation stops every device and is then
    re-raised.

    Raises:
        OSError: If a port cannot be bound.
        ValueError: If ``count`` or ``base_port`` are out of range.
    """
    simulator = TcpSimulator(count, base_port, host=host)
    await simulator.start()
    try:
        ports = simulator.ports
        print(f"listening: {count} devices on {host}:{ports[0]}-{ports[-1]}", flush=True)
        await asyncio.Event().wait()
    finally:
        await simulator.stop()
