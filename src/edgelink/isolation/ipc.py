"""The wire between a gateway and the child process of an isolated instance.

One ``AF_UNIX`` stream socketpair per child. Each frame is one msgpack array
whose first item says what it is (`Kind`); msgpack frames delimit themselves,
so the reader feeds what arrives into a streaming unpacker and never copies a
frame twice. No pickle: a frame carries plain data (None, bool, int, float,
str, bytes, lists, dicts); other values are reduced by `to_wire` first.

Writes are batched: frames queued during one turn of the event loop leave in
one ``send`` (`FrameChannel.send`), so a burst of datapoints costs one system
call. Everything that grows is bounded: a frame is at most
`MAX_FRAME_BYTES`, the unread input at most `MAX_BUFFER_BYTES`, and the write
buffer applies asyncio's back-pressure (`FrameChannel.drain`).

Parent -> child: ``[INIT, connection_id, type, config, options]`` once, then
``[CALL, call_id, method, args]`` and ``[CLOSE]``. Child -> parent:
``[RESULT, call_id, ok, value]``, ``[DATA, [[tag, value, quality, ts, reason],
...]]``, ``[GOOD, [[ts, [tag, value, tag, value, ...]], ...]]`` (the good
values of poll reads, the hot path), ``[SIGNAL, name, arg]`` (lost, tx_drop, degraded, activity) and
``[BEAT, stats, sent_at]``, the health pulse.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import enum
import itertools
import logging
from collections.abc import Callable
from typing import Any, Final, cast

import msgpack

from edgelink import errors

__all__ = [
    "MAX_BUFFER_BYTES",
    "MAX_FRAME_BYTES",
    "ChildError",
    "FrameChannel",
    "Kind",
    "error_from_wire",
    "error_to_wire",
    "to_wire",
]

logger = logging.getLogger(__name__)

#: The largest frame either side accepts (a read of many registers is far below).
MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
#: Unread input beyond this ends the channel: the peer floods us.
MAX_BUFFER_BYTES: Final = 64 * 1024 * 1024
#: Causes kept when an exception crosses the wire (its class decides the policy).
MAX_CAUSES: Final = 4


class Kind(enum.IntEnum):
    """The first item of every frame."""

    INIT = 0
    CALL = 1
    CLOSE = 2
    RESULT = 3
    DATA = 4
    SIGNAL = 5
    BEAT = 6
    GOOD = 7


class ChildError(Exception):
    """An exception of a class the parent cannot rebuild (a library's own).

    Its class is no edgelink error and no builtin, so it is classified as a
    bug in driver code (``poison``), exactly as the original would be in process.
    """


def to_wire(value: Any) -> Any:
    """Reduce a value msgpack cannot carry to one it can (the ``default`` hook).

    Dataclasses become dicts, enums their value, sets and tuples lists;
    anything else its ``str``. Never raises.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return str(value)


def error_to_wire(exc: BaseException) -> list[Any]:
    """Return ``exc`` and its causes as ``[[module, qualname, message, extra], ...]``."""
    chain: list[Any] = []
    cur: BaseException | None = exc
    seen: set[int] = set()
    while cur is not None and id(cur) not in seen and len(chain) < MAX_CAUSES:
        seen.add(id(cur))
        cls = type(cur)
        extra: dict[str, Any] = {}
        if isinstance(cur, errors.EdgelinkError):
            message = cur.message
            if cur.retry_after is not None:
                extra["retry_after"] = cur.retry_after
            if isinstance(cur, errors.DeviceError) and cur.code is not None:
                extra["code"] = cur.code
        else:
            message = str(cur)
        chain.append([cls.__module__, cls.__qualname__, message, extra])
        cur = cur.__cause__ or getattr(cur, "cause", None)
    return chain


def _rebuild_one(
    module: str, qualname: str, message: str, extra: dict[str, Any], connection_id: str
) -> BaseException:
    if module == errors.__name__:
        cls = getattr(errors, qualname, None)
        if isinstance(cls, type) and issubclass(cls, errors.EdgelinkError):
            # Built without __init__: subclasses take different keywords.
            err = cls.__new__(cls)
            Exception.__init__(err, message)
            err.message = message
            err.connection_id = connection_id
            err.cause = None
            err.retry_after = extra.get("retry_after")
            if isinstance(err, errors.DeviceError):
                err.code = extra.get("code")
            if isinstance(err, errors.ConfigError):
                err.file = None
                err.path = None
                err.errors = [("", message)]
            return err
    if module == builtins.__name__:
        cls = getattr(builtins, qualname, None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            try:
                return cls(message)
            except Exception:  # noqa: BLE001 - a builtin with another signature
                logger.debug("cannot rebuild %s(%r)", qualname, message)
    return ChildError(f"{module}.{qualname}: {message}")


def error_from_wire(chain: list[Any], connection_id: str) -> BaseException:
    """Rebuild an exception sent by `error_to_wire`, causes linked.

    edgelink errors and builtins come back as their own class (the class is
    the policy, `edgelink.errors.classify`); anything else as `ChildError`.
    """
    built = [_rebuild_one(e[0], e[1], e[2], e[3], connection_id) for e in chain] or [
        ChildError("unknown error")
    ]
    for outer, inner in itertools.pairwise(built):
        outer.__cause__ = inner
        if isinstance(outer, errors.EdgelinkError):
            outer.cause = inner
    return built[0]


class FrameChannel(asyncio.BufferedProtocol):
    """One end of the socketpair: frames in to ``on_frame``, frames out batched.

    ``on_frame(frame)`` runs on the event loop for every frame received, in
    order; ``on_close(exc)`` once when the channel ends (EOF, error, or a
    peer that broke the protocol). `send` never blocks: frames of one loop
    turn leave together.

    Example:
        transport, channel = await loop.create_unix_connection(
            lambda: FrameChannel(handle, closed), sock=sock)
        channel.send([Kind.CALL, 1, "read", ["x"]])
    """

    def __init__(
        self,
        on_frame: Callable[[list[Any]], None],
        on_close: Callable[[BaseException | None], None],
    ) -> None:
        self._on_frame = on_frame
        self._on_close = on_close
        self._unpacker = msgpack.Unpacker(
            raw=False,
            use_list=True,
            strict_map_key=False,
            max_buffer_size=MAX_BUFFER_BYTES,
            max_bin_len=MAX_FRAME_BYTES,
            max_str_len=MAX_FRAME_BYTES,
        )
        self._readbuf = memoryview(bytearray(256 * 1024))
        self._packer = msgpack.Packer(default=to_wire, use_bin_type=True, autoreset=True)
        self._out = bytearray()
        self._flush_scheduled = False
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._paused = False
        self._resumed: asyncio.Future[None] | None = None
        #: Frames sent and received, and bytes, since the channel opened.
        self.frames_out = 0
        self.frames_in = 0
        self.bytes_out = 0
        self.bytes_in = 0

    # -- asyncio protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport (asyncio calls this once)."""
        # A stream transport; not asserted as asyncio.Transport: uvloop's are no
        # subclasses of it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self._loop = asyncio.get_running_loop()

    def get_buffer(self, sizehint: int) -> memoryview:
        """Hand asyncio our read buffer (no copy per read)."""
        return self._readbuf

    def buffer_updated(self, nbytes: int) -> None:
        """Decode the frames that arrived and hand each to ``on_frame``."""
        self.bytes_in += nbytes
        try:
            self._unpacker.feed(self._readbuf[:nbytes])
            for frame in self._unpacker:
                self.frames_in += 1
                if not isinstance(frame, list) or not frame:
                    raise errors.ProtocolError(f"not a frame: {type(frame).__name__}")
                self._on_frame(frame)
        except (ValueError, msgpack.UnpackException, errors.ProtocolError) as exc:
            # BufferFull is a ValueError: the peer sent more than we bound.
            logger.warning("isolation channel: bad input, closing: %s", exc)
            self._end(errors.ProtocolError(f"bad frame on the isolation channel: {exc}"))

    def eof_received(self) -> bool:
        """The peer closed its end: close ours too."""
        return False  # close our end too

    def connection_lost(self, exc: Exception | None) -> None:
        """The channel ended: tell ``on_close`` once."""
        self._end(exc)

    def pause_writing(self) -> None:
        """The write buffer is full: `drain` waits."""
        self._paused = True

    def resume_writing(self) -> None:
        """The write buffer drained: wake `drain`."""
        self._paused = False
        fut, self._resumed = self._resumed, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    # -- sending -------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        """True once the channel ended; `send` then drops frames."""
        return self._closed

    def send(self, frame: list[Any]) -> None:
        """Queue one frame; frames of one loop turn leave in one write.

        Raises:
            TypeError: if the frame holds a value msgpack cannot carry even
                after `to_wire` (a recursive structure).
        """
        if self._closed:
            return
        self._out += self._packer.pack(frame)
        self.frames_out += 1
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def send_now(self, frame: list[Any]) -> None:
        """Queue one frame and write everything queued at once (no loop turn)."""
        self.send(frame)
        self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out or self._transport is None or self._closed:
            return
        self._out = bytearray()
        self.bytes_out += len(out)
        self._transport.write(out)

    async def drain(self) -> None:
        """Wait while the peer reads slower than we write (asyncio's back-pressure)."""
        if self._paused and not self._closed:
            loop = asyncio.get_running_loop()
            if self._resumed is None:
                self._resumed = loop.create_future()
            await self._resumed

    def close(self) -> None:
        """Flush what is queued and close our end (idempotent)."""
        if self._transport is not None and not self._closed:
            self._flush()
            self._transport.close()

    def abort(self) -> None:
        """Close our end at once, dropping what is queued (idempotent)."""
        if self._transport is not None:
            self._transport.abort()

    def _end(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._out = bytearray()
        if self._transport is not None:
            self._transport.abort()
        fut, self._resumed = self._resumed, None
        if fut is not None and not fut.done():
            fut.set_result(None)
        self._on_close(exc)
