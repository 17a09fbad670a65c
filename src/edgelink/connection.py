"""The driver contract: `BaseConnection`, `Connection` (async) and `SyncConnection` (blocking).

`BaseConnection` is the seed's one base class: a subclass written with
blocking methods becomes a `SyncConnection` (its methods run in worker
threads under the same timeouts), one written with ``async def`` becomes a
`Connection`. The flavour is decided when the class is defined, from the
methods it defines; a class that mixes both is refused there.

A driver speaks one protocol to one device. It opens and closes the link,
answers health checks and reads/writes tags; it never decides states, counts
retries or sleeps between attempts: its `Supervisor` does. The base classes
give every driver `update_stats`, `report_data`, `mark_tx_drop`,
`connection_lost`, `record_activity` and `get_status`, which talk to the
supervisor through the small `ConnectionOwner` protocol. A driver whose link
works but not fully (a subscription the peer never confirmed) says so with
`report_degraded`: the state stays connected and the health shows ``degraded``.
A blocking driver hands what must run on the event loop (a subscription
ledger) over with `call_on_loop`.

Example:
    class PingDevice(Connection):
        type_name = "ping_device"

        async def connect(self) -> None:
            self._r, self._w = await asyncio.open_connection(self.config["host"], 5000)

        async def disconnect(self) -> None: ...
        def is_connected(self) -> bool: ...
        async def health_check(self) -> bool: ...
"""

from __future__ import annotations

import abc
import asyncio
import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any, ClassVar, Final, Protocol, TypeVar

from pydantic import BaseModel

from edgelink._validation import validate_model
from edgelink.clock import Clock, SystemClock
from edgelink.errors import ConnectError, DeviceError
from edgelink.redact import collect_secrets, redact, remember_secrets
from edgelink.state import ConnectionState

__all__ = [
    "AnyConnection",
    "BaseConnection",
    "Connection",
    "ConnectionOwner",
    "DriverAdapter",
    "Stats",
    "SyncConnection",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The clock of a driver that runs without an owner (tests, scripts).
_SYSTEM_CLOCK = SystemClock()

STAT_FIELDS = (
    "packets_sent",
    "packets_received",
    "bytes_sent",
    "bytes_received",
    "errors",
    "reconnects",
)


class Stats:
    """Traffic counters of one connection. Thread-safe increments."""

    __slots__ = (*STAT_FIELDS, "_lock", "last_activity")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.packets_sent = 0
        self.packets_received = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.errors = 0
        self.reconnects = 0
        self.last_activity: float | None = None

    def add(self, deltas: Mapping[str, int], now: float) -> None:
        """Add ``deltas`` to the counters and stamp ``last_activity``.

        Raises:
            ValueError: for a counter name that does not exist.
        """
        with self._lock:
            for name, delta in deltas.items():
                if name not in STAT_FIELDS:
                    raise ValueError(f"unknown stat {name!r}; known: {', '.join(STAT_FIELDS)}")
                setattr(self, name, getattr(self, name) + delta)
            if deltas.keys() - {"errors", "reconnects"}:
                self.last_activity = now

    def count_sent(self, nbytes: int) -> None:
        """Count one packet of ``nbytes`` sent: the hot path of `add` for drivers."""
        with self._lock:
            self.packets_sent += 1
            self.bytes_sent += nbytes
            self.last_activity = time.time()

    def count_exchange(self, bytes_sent: int, packets_received: int, bytes_received: int) -> None:
        """Count one request sent and its answer: the hot path of `add` for request drivers."""
        with self._lock:
            self.packets_sent += 1
            self.bytes_sent += bytes_sent
            self.packets_received += packets_received
            self.bytes_received += bytes_received
            self.last_activity = time.time()

    def count_received(self, nbytes: int) -> None:
        """Count one packet of ``nbytes`` received: the hot path of `add` for drivers."""
        with self._lock:
            self.packets_received += 1
            self.bytes_received += nbytes
            self.last_activity = time.time()

    def as_dict(self) -> dict[str, Any]:
        """Return the counters as a dict (the status shape of DESIGN section 4)."""
        with self._lock:
            data: dict[str, Any] = {name: getattr(self, name) for name in STAT_FIELDS}
            data["last_activity"] = self.last_activity
            return data

    def __getitem__(self, key: str) -> Any:
        return self.as_dict()[key]

    def __setitem__(self, key: str, value: int) -> None:
        # The seed's drivers write ``self.stats['errors'] += 1``.
        if key not in STAT_FIELDS:
            raise KeyError(f"unknown stat {key!r}; known: {', '.join(STAT_FIELDS)}")
        with self._lock:
            setattr(self, key, value)

    def __repr__(self) -> str:
        return f"<Stats {self.as_dict()}>"


class ConnectionOwner(Protocol):
    """What a driver's base class reports to: the Supervisor (or a pool)."""

    @property
    def state(self) -> ConnectionState:
        """The connection's supervised state."""

    @property
    def last_error(self) -> str | None:
        """The last error, as text."""

    @property
    def connected_at(self) -> float | None:
        """Wall-clock time the link came up."""

    @property
    def reconnect_attempts(self) -> int:
        """Reconnect attempts since the link was last stable."""

    def on_data(
        self, tag: str, value: Any, quality: str, ts: float | None, reason: str | None = None
    ) -> None:
        """A datapoint arrived (may be called from any thread)."""

    def on_tx_drop(self) -> None:
        """A frame broke mid-way (may be called from any thread)."""

    def on_lost(self, exc: BaseException | None) -> None:
        """The driver noticed its link is gone (may be called from any thread)."""

    def on_activity(self) -> None:
        """The link showed life (feeds the data watchdog)."""

    def status_dict(self) -> dict[str, Any]:
        """Return the full status dict."""

    # Added after the first drivers: an owner written before may lack these
    # three, so the base class looks them up with getattr.

    @property
    def clock(self) -> Clock:
        """The clock the owner waits on (a `ManualClock` in tests)."""

    def on_degraded(self, reason: str | None) -> None:
        """The driver's link works but not fully (None: fully again). May come from any thread."""

    def call_soon(self, callback: Callable[..., object], *args: Any) -> bool:
        """Run ``callback(*args)`` on the owner's event loop thread. May come from any thread.

        Returns:
            False if the owner has no loop to run it on (never started, or closed).
        """


class _ConnectionBase:
    """What both driver styles share: identity, config, stats and the owner hooks."""

    #: The registry name: "tcp", "modbus_tcp", ...
    type_name: ClassVar[str] = ""
    #: The pydantic model of ``config``, or None for a driver that reads the dict
    #: itself (the seed's style). With a model, the base validates ``config``
    #: once, before the driver's ``__init__`` goes on, and sets ``cfg``.
    config_model: ClassVar[type[BaseModel] | None] = None
    #: ``config`` validated by ``config_model`` (None without a model).
    cfg: Any
    #: The config keys an ``endpoints`` entry may set (docs/failover.md): None
    #: allows any key, an empty set means the driver has no endpoint to fail over.
    endpoint_fields: ClassVar[frozenset[str] | None] = None
    #: Config keys replaced in the failback probe's config, so that the probe
    #: of a preferred endpoint never carries data (subscriptions, a will).
    probe_overrides: ClassVar[Mapping[str, Any]] = {}

    def __init__(
        self,
        connection_id: str,
        config: Mapping[str, Any] | None = None,
        context: Any = None,
        *,
        app_context: Any = None,
    ) -> None:
        self.connection_id = connection_id
        if context is None:
            context = app_context
        self.config: dict[str, Any] = dict(config or {})
        # The log filter's safety net learns this config's secrets (see edgelink.redact).
        remember_secrets(collect_secrets(self.config))
        model = type(self).config_model
        self.cfg = (
            None
            if model is None
            else validate_model(model, self.config, prefix=("config",), connection_id=connection_id)
        )
        self.context = context
        self._stats = Stats()
        self._owner: ConnectionOwner | None = None
        # Seed-style drivers assign these themselves; the supervisor's view wins,
        # but what the driver said is kept as a hint for a standalone driver.
        self._own_last_error: str | None = None
        self._own_connected_at: float | None = None
        self._own_status: ConnectionState | None = None
        self._degraded_reason: str | None = None

    # -- owner wiring -------------------------------------------------------

    def attach(self, owner: ConnectionOwner | None) -> None:
        """Bind this driver to the supervisor (or pool) that runs it; None detaches."""
        self._owner = owner

    @property
    def owner(self) -> ConnectionOwner | None:
        """The supervisor running this driver, if any."""
        return self._owner

    @property
    def app_context(self) -> Any:
        """The seed's name for ``context``."""
        return self.context

    # -- given by the base class -------------------------------------------

    def can_write(self, tag: str) -> bool:
        """Return whether a `write` of ``tag`` can work (for the UI's write form; no I/O).

        True when the driver has a ``write`` of its own; a driver whose tags
        can be read-only (Modbus input registers) overrides this.
        """
        own = type(self).write  # type: ignore[attr-defined]
        return own is not Connection.write and own is not SyncConnection.write

    def update_stats(self, **deltas: int) -> None:
        """Add to the traffic counters: ``update_stats(packets_sent=1, bytes_sent=n)``.

        Raises:
            ValueError: for an unknown counter name.
        """
        self._stats.add(deltas, time.time())
        if self._owner is not None and deltas.keys() - {"errors", "reconnects"}:
            self._owner.on_activity()

    def count_exchange(self, bytes_sent: int, packets_received: int, bytes_received: int) -> None:
        """Count one request of ``bytes_sent`` and what came back; the link showed life.

        The same as ``update_stats(packets_sent=1, bytes_sent=..., packets_received=...,
        bytes_received=...)``, without a dict and a name check per request.
        """
        self._stats.count_exchange(bytes_sent, packets_received, bytes_received)
        if self._owner is not None:
            self._owner.on_activity()

    def report_data(
        self,
        tag: str,
        value: Any,
        *,
        quality: str = "good",
        ts: float | None = None,
        reason: str | None = None,
    ) -> None:
        """Report a datapoint read from or pushed by the device. Thread-safe.

        The supervisor stamps ``last_data_at``, feeds the data watchdog and the
        vital-sign watches, and hands the datapoint to the manager's data sink
        (the router).

        A value the driver cannot decode is reported as
        ``report_data(tag, None, quality="bad", reason="why")``, never dropped
        silently nor raised: the supervisor passes it on once per good->bad
        transition of the tag, and the reason travels with the datapoint
        (``quality_reason`` in its metadata).
        """
        owner = self._owner
        if owner is None:
            return
        if reason is None:
            owner.on_data(tag, value, quality, ts)
        else:
            owner.on_data(tag, value, quality, ts, reason)

    def mark_tx_drop(self) -> None:
        """Say that a frame broke mid-way: the supervisor reconnects on the fast path."""
        if self._owner is not None:
            self._owner.on_tx_drop()

    def connection_lost(self, exc: BaseException | None = None) -> None:
        """Say that the link is gone (EOF, reset). The supervisor reconnects."""
        if self._owner is not None:
            self._owner.on_lost(exc)

    def record_activity(self) -> None:
        """Say the link showed life without a datapoint (feeds the data watchdog)."""
        if self._owner is not None:
            self._owner.on_activity()

    def report_degraded(self, reason: str | None) -> None:
        """Say the link works but not fully, and why; None says it is whole again. Thread-safe.

        For what a health check cannot see, e.g. a subscription replayed after a
        reconnect that the peer never confirmed (`edgelink.subscriptions`). The
        supervisor keeps the state and shows health ``degraded`` with the reason
        (``health_reason`` in the status) until the driver clears it. It never
        reconnects for this: a failing health check does that.
        """
        if reason == self._degraded_reason:
            return
        self._degraded_reason = reason
        hook = getattr(self._owner, "on_degraded", None)
        if hook is not None:
            hook(reason)

    def call_on_loop(self, callback: Callable[..., object], *args: Any) -> bool:
        """Run ``callback(*args)`` on the owner's event loop thread. Thread-safe.

        For what a blocking driver keeps on the loop, from its worker threads and
        its library's callback threads: a `edgelink.subscriptions.SubscriptionLedger`
        is not thread-safe and its timers run on the owner's clock. Called on the
        loop thread it runs at once, from any other thread soon after.

        Returns:
            False if nothing will run it: the driver has no owner (used on its
            own), or the owner has no running loop.
        """
        hook = getattr(self._owner, "call_soon", None)
        if hook is None:
            return False
        return bool(hook(callback, *args))

    def emit_event(self, event_type: str, **data: Any) -> None:
        """Emit an event about this connection through its owner's bus. Thread-safe.

        For what only the driver sees (an isolated driver's child process
        started or exited); without an owner (a driver used on its own) the
        event is logged at DEBUG and dropped.
        """
        hook = getattr(self._owner, "emit_event", None)
        if hook is None:
            logger.debug("%s: %s %s (no owner)", self.connection_id, event_type, data)
            return
        hook(event_type, **data)

    @property
    def degraded_reason(self) -> str | None:
        """Why the driver said its link is degraded (`report_degraded`), or None."""
        return self._degraded_reason

    @property
    def clock(self) -> Clock:
        """The clock of the owner (a `ManualClock` in tests); the system clock without one.

        Drivers that keep timers of their own (a confirmation deadline) use it,
        so that tests can advance them like the supervisor's.
        """
        clock = getattr(self._owner, "clock", None)
        return clock if clock is not None else _SYSTEM_CLOCK

    def get_status(self) -> dict[str, Any]:
        """Return the status dict of DESIGN section 4."""
        if self._owner is not None:
            return self._owner.status_dict()
        return {
            "connection_id": self.connection_id,
            "type": self.type_name or type(self).__name__,
            "status": str(self.status),
            "connected_at": self.connected_at,
            "last_error": self.last_error,
            "reconnect_attempts": 0,
            "stats": self._stats.as_dict(),
        }

    # -- read-only views (the seed's attributes) ----------------------------

    @property
    def stats(self) -> Stats:
        """The traffic counters."""
        return self._stats

    @property
    def status(self) -> ConnectionState:
        """The supervised state (or connected/disconnected for a standalone driver)."""
        if self._owner is not None:
            return self._owner.state
        if self._own_status is not None:
            return self._own_status
        return (
            ConnectionState.CONNECTED
            if self._safe_is_connected()
            else (ConnectionState.DISCONNECTED)
        )

    @status.setter
    def status(self, value: Any) -> None:
        # Seed-style drivers set their own status. The supervisor owns the
        # state: what the driver says is kept as a hint only (the status of a
        # standalone driver, and `is_connected` of a seed-style class without one).
        try:
            self._own_status = ConnectionState(value.value if hasattr(value, "value") else value)
        except ValueError:
            logger.debug("%s: driver set unknown status=%r (ignored)", self.connection_id, value)
            return
        logger.debug(
            "%s: driver set status=%s (a hint; the supervisor owns the state)",
            self.connection_id,
            value,
        )

    @property
    def last_error(self) -> str | None:
        """The last error the supervisor saw, as text."""
        if self._owner is not None and self._owner.last_error is not None:
            return self._owner.last_error
        return self._own_last_error

    @last_error.setter
    def last_error(self, value: str | None) -> None:
        self._own_last_error = value

    @property
    def connected_at(self) -> float | None:
        """Wall-clock time the link last came up."""
        if self._owner is not None:
            return self._owner.connected_at
        return self._own_connected_at

    @connected_at.setter
    def connected_at(self, value: float | None) -> None:
        self._own_connected_at = value

    @property
    def reconnect_attempts(self) -> int:
        """Reconnect attempts since the link was last stable."""
        return self._owner.reconnect_attempts if self._owner is not None else 0

    @reconnect_attempts.setter
    def reconnect_attempts(self, value: int) -> None:
        logger.debug("%s: driver set reconnect_attempts=%s (ignored)", self, value)

    def _safe_is_connected(self) -> bool:
        try:
            return bool(self.is_connected())
        except Exception:  # noqa: BLE001 - a status view must not raise
            return False

    def is_connected(self) -> bool:
        """Return True while the link is up, from local knowledge only (no I/O)."""
        raise NotImplementedError

    def check_tag(self, tag: str) -> None:
        """Check that ``tag`` is valid for this driver, before anything runs. No I/O.

        The manager calls this for every polled and watched tag when a
        connection is added, so a mistyped tag fails at config time. The
        default accepts every tag.

        Raises:
            ConfigError: (or ValueError) saying why the tag is invalid.
        """

    def use_endpoint(self, config: Mapping[str, Any]) -> None:
        """Point the driver at another endpoint: ``config`` becomes its whole config.

        What failover calls between two links, never while one is open
        (`edgelink.supervisor.failover`): ``config`` is validated as at
        construction, then `endpoint_changed` lets the driver re-derive what it
        took from it. No I/O.

        Raises:
            ConfigError: if ``config`` is invalid (it was checked when the
                connection was added, so this means a bug).
        """
        self.config = dict(config)
        model = type(self).config_model
        if model is not None:
            self.cfg = validate_model(
                model, self.config, prefix=("config",), connection_id=self.connection_id
            )
        self.endpoint_changed()

    def endpoint_changed(self) -> None:
        """Re-derive what ``__init__`` took from the endpoint fields; the default does nothing.

        A driver that copies its host, port or device path into attributes in
        ``__init__`` overrides this to copy them again from ``cfg`` (or ``config``).
        """

    def __repr__(self) -> str:
        cfg = redact(self.config)
        return f"<{type(self).__name__} {self.connection_id} {self.status} config={cfg}>"


class Connection(_ConnectionBase, abc.ABC):
    """The async driver base class (the seed's ``BaseConnection``).

    Implement ``connect``, ``disconnect``, ``is_connected`` and ``health_check``;
    ``read`` and ``write`` if the device has a data plane; ``identity`` and
    ``on_reset`` for device-reset detection.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A blocking method on the async base would fail at the first await:
        # say so when the class is defined.
        blocking = [n for n, is_async in _flavour_methods(cls.__dict__).items() if not is_async]
        if blocking:
            raise TypeError(
                f"{cls.__qualname__}: {_names(blocking)} blocking on an async Connection: "
                "make them 'async def', or subclass BaseConnection (decides per class) "
                "or SyncConnection"
            )

    @abc.abstractmethod
    async def connect(self) -> bool | None:
        """Open the link. Raise (or return False) on failure; never retry or sleep."""

    @abc.abstractmethod
    async def disconnect(self) -> None:
        """Close the link. Idempotent, never raises."""

    @abc.abstractmethod
    def is_connected(self) -> bool:
        """Return True while the link is up (no I/O)."""

    @abc.abstractmethod
    async def health_check(self) -> bool:
        """Send one real request and check the answer. False or raise = unhealthy."""

    async def read(self, tag: str) -> Any:
        """Read one tag from the device."""
        raise NotImplementedError(f"{type(self).__name__} has no read()")

    async def read_many(self, tags: Sequence[str]) -> dict[str, Any]:
        """Read several tags, batching them where the protocol can (a poll group).

        Returns a dict by tag. A tag the device refused maps to the exception
        (a `DeviceError`), so one bad tag does not cost the others their
        values; an error that breaks the link is raised instead. This default
        reads tag by tag with `read`; drivers that can coalesce requests
        (Modbus reads contiguous registers in one request) override it, and
        the Supervisor then polls each group with one call bounded by
        ``request_timeout``.
        """
        results: dict[str, Any] = {}
        for tag in tags:
            try:
                results[tag] = await self.read(tag)
            except DeviceError as exc:
                results[tag] = exc
        return results

    async def write(self, tag: str, value: Any) -> None:
        """Write one tag to the device."""
        raise NotImplementedError(f"{type(self).__name__} has no write()")

    async def identity(self) -> str | None:
        """Return something that changes when the device resets (serial + boot id), or None."""
        return None

    async def on_reset(self) -> None:
        """Re-provision the device after a reset was detected. Raise to fail the attempt."""

    async def on_stopped(self) -> None:
        """Free what the driver keeps between links; the connection was stopped.

        Called by the supervisor after an admin stop, a shutdown or a removal,
        once the link is closed (never between two links of a running
        connection). The default does nothing; an isolated connection ends its
        child process here. Must not raise.
        """


class SyncConnection(_ConnectionBase, abc.ABC):
    """A driver written with blocking calls, in the seed's ``connect() -> bool`` style.

    The supervisor runs every method in a worker thread under the same
    timeouts as an async driver, so a thread-style driver works unchanged.
    A call that times out is abandoned (its thread runs on until the blocking
    call returns), so blocking calls should carry their own socket timeouts.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        coros = [n for n, is_async in _flavour_methods(cls.__dict__).items() if is_async]
        if coros:
            raise TypeError(
                f"{cls.__qualname__}: {_names(coros)} 'async def' on a blocking SyncConnection: "
                "make them plain methods, or subclass BaseConnection (decides per class) "
                "or Connection"
            )

    @abc.abstractmethod
    def connect(self) -> bool | None:
        """Open the link. Raise or return False on failure."""

    @abc.abstractmethod
    def disconnect(self) -> bool | None:
        """Close the link. Idempotent."""

    @abc.abstractmethod
    def is_connected(self) -> bool:
        """Return True while the link is up (no I/O)."""

    @abc.abstractmethod
    def health_check(self) -> bool:
        """Send one real request and check the answer."""

    def read(self, tag: str) -> Any:
        """Read one tag from the device."""
        raise NotImplementedError(f"{type(self).__name__} has no read()")

    def write(self, tag: str, value: Any) -> None:
        """Write one tag to the device."""
        raise NotImplementedError(f"{type(self).__name__} has no write()")

    def identity(self) -> str | None:
        """Return something that changes when the device resets, or None."""
        return None

    def on_reset(self) -> None:
        """Re-provision the device after a reset was detected."""


#: The methods whose style (blocking or ``async def``) decides a driver's flavour.
FLAVOUR_METHODS: Final = (
    "connect",
    "disconnect",
    "health_check",
    "read",
    "read_many",
    "write",
    "identity",
    "on_reset",
    "on_stopped",
)


#: Where the seed's classes keep their link; a default ``disconnect`` closes them.
SEED_LINK_ATTRIBUTES: Final = ("socket", "client", "serial", "session")


def _flavour_methods(namespace: Mapping[str, Any]) -> dict[str, bool]:
    """Return which flavour methods ``namespace`` defines, each mapped to "is async"."""
    found: dict[str, bool] = {}
    for name in FLAVOUR_METHODS:
        method = namespace.get(name)
        if method is None:
            continue
        if isinstance(method, staticmethod | classmethod):
            method = method.__func__
        if callable(method):
            found[name] = inspect.iscoroutinefunction(method)
    return found


def _names(names: Sequence[str]) -> str:
    listed = ", ".join(f"{n}()" for n in names)
    return f"{listed} {'is' if len(names) == 1 else 'are'}"


class _SeedDefaults:
    """What the seed's shortened classes leave out (blocking flavour).

    The seed's examples set ``self.status`` in ``connect`` and define little
    else; these defaults take that status as the link's state. A class that
    defines the method itself wins.
    """

    _own_status: ConnectionState | None

    def disconnect(self) -> bool | None:
        """Close what the seed's classes keep their link in, and forget the link.

        The seed's examples hold it in ``socket``, ``client``, ``serial`` or
        ``session`` and show no ``disconnect``; each of those that has a
        ``close()`` is closed (errors ignored), so a reconnect leaks nothing.
        """
        self._own_status = ConnectionState.DISCONNECTED
        for name in SEED_LINK_ATTRIBUTES:
            close = getattr(getattr(self, name, None), "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # closing is best effort
                    logger.debug("closing %s raised", name, exc_info=True)
        return True

    def is_connected(self) -> bool:
        """Return True while the driver's own ``status`` says connected."""
        return self._own_status == ConnectionState.CONNECTED

    def health_check(self) -> bool:
        """Return `is_connected` (no I/O: the class defines no real check)."""
        return bool(self.is_connected())


class _AsyncSeedDefaults:
    """`_SeedDefaults` for the async flavour."""

    _own_status: ConnectionState | None

    async def disconnect(self) -> None:
        """Close the seed's link attributes (see `_SeedDefaults.disconnect`); forget the link."""
        _SeedDefaults.disconnect(self)  # type: ignore[arg-type]

    def is_connected(self) -> bool:
        """Return True while the driver's own ``status`` says connected."""
        return self._own_status == ConnectionState.CONNECTED

    async def health_check(self) -> bool:
        """Return `is_connected` (no I/O)."""
        return bool(self.is_connected())


class _FlavourMeta(abc.ABCMeta):
    """Decides a `BaseConnection` subclass's flavour from the methods it defines."""

    def __new__(
        mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any
    ) -> _FlavourMeta:
        flavoured = (Connection, SyncConnection)
        if bases and not any(issubclass(b, flavoured) for b in bases):
            found: dict[str, bool] = {}
            for base in reversed([b for b in bases if isinstance(b, _FlavourMeta)]):
                for klass in reversed(base.__mro__):
                    found.update(_flavour_methods(vars(klass)))
            found.update(_flavour_methods(namespace))
            styles = set(found.values())
            if len(styles) > 1:
                blocking = [n for n, is_async in found.items() if not is_async]
                coros = [n for n, is_async in found.items() if is_async]
                raise TypeError(
                    f"{namespace.get('__qualname__', name)} mixes blocking and async methods: "
                    f"{_names(blocking)} blocking, {_names(coros)} 'async def'; "
                    "write them all one way (blocking ones run in worker threads)"
                )
            if styles == {True}:
                bases = (*bases, _AsyncSeedDefaults, Connection)
            elif styles == {False}:
                bases = (*bases, _SeedDefaults, SyncConnection)
            # No flavour method yet: the class stays undecided (an abstract
            # helper base); its subclasses decide.
        return super().__new__(mcls, name, bases, namespace, **kwargs)


class BaseConnection(_ConnectionBase, metaclass=_FlavourMeta):
    """The seed's driver base: blocking or async methods, decided per subclass.

    A subclass whose ``connect``, ``disconnect``, ``health_check``, ``read``,
    ``write`` ... are plain methods becomes a `SyncConnection` (each call runs
    in a worker thread under the same timeouts); one whose methods are all
    ``async def`` becomes a `Connection`. A class that mixes both is refused
    when it is defined, naming the methods. ``disconnect``, ``is_connected``
    and ``health_check`` may be left out, as the seed's short examples do:
    then the driver's own ``self.status`` says whether the link is up.
    Every `Connection` and `SyncConnection` is also an instance of this class.

    Example:
        class CustomTCPConnection(BaseConnection):
            def connect(self) -> bool:
                self.socket = socket.create_connection((self.config["host"], 5000), 5)
                self.status = ConnectionStatus.CONNECTED
                return True
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        """Refuse a class that is still undecided (defines none of the flavour methods)."""
        if not issubclass(cls, Connection | SyncConnection):
            raise TypeError(
                f"{cls.__qualname__} defines none of {', '.join(FLAVOUR_METHODS)}: "
                "cannot tell a blocking driver from an async one; define connect()"
            )
        return super().__new__(cls)


BaseConnection.register(Connection)  # type: ignore[type-abstract]
BaseConnection.register(SyncConnection)  # type: ignore[type-abstract]

AnyConnection = Connection | SyncConnection


class DriverAdapter:
    """One async face over either driver style, used by the supervisor and the pool.

    For a `SyncConnection` every call runs on ``executor``; for a `Connection`
    it is awaited directly. ``connect()`` returning False becomes a `ConnectError`.
    """

    __slots__ = ("_executor", "conn", "has_read_many", "is_sync")

    def __init__(self, conn: AnyConnection, executor: Executor | None = None) -> None:
        self.conn = conn
        self.is_sync = isinstance(conn, SyncConnection)
        #: True if the driver batches reads itself (overrides `Connection.read_many`).
        self.has_read_many = (
            isinstance(conn, Connection) and type(conn).read_many is not Connection.read_many
        )
        self._executor = executor

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def connect(self) -> None:
        """Open the link; raise `ConnectError` if the driver says False."""
        conn = self.conn
        # Only what the driver says during this attempt explains its False:
        # `last_error` answers with the supervisor's text of the previous
        # failure, and quoting that would nest one message in the next.
        conn._own_last_error = None
        if isinstance(conn, SyncConnection):
            result = await self._run(conn.connect)
        else:
            result = await conn.connect()
        if result is False:
            raise ConnectError(
                conn._own_last_error or "connect() returned False",
                connection_id=conn.connection_id,
            )

    async def disconnect(self) -> None:
        """Close the link; errors are logged, never raised."""
        conn = self.conn
        try:
            if isinstance(conn, SyncConnection):
                await self._run(conn.disconnect)
            else:
                await conn.disconnect()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.debug("%s: disconnect raised", conn.connection_id, exc_info=True)

    def is_connected(self) -> bool:
        """Ask the driver, no I/O."""
        return bool(self.conn.is_connected())

    async def health_check(self) -> bool:
        """Run the driver's health check."""
        conn = self.conn
        if isinstance(conn, SyncConnection):
            return bool(await self._run(conn.health_check))
        return bool(await conn.health_check())

    async def read(self, tag: str) -> Any:
        """Read one tag."""
        conn = self.conn
        if isinstance(conn, SyncConnection):
            return await self._run(conn.read, tag)
        return await conn.read(tag)

    async def read_many(self, tags: Sequence[str]) -> dict[str, Any]:
        """Read several tags with the driver's batched read (see `Connection.read_many`)."""
        conn = self.conn
        if isinstance(conn, SyncConnection):
            return {tag: await self._run(conn.read, tag) for tag in tags}
        return await conn.read_many(tags)

    async def write(self, tag: str, value: Any) -> None:
        """Write one tag."""
        conn = self.conn
        if isinstance(conn, SyncConnection):
            await self._run(conn.write, tag, value)
        else:
            await conn.write(tag, value)

    async def identity(self) -> str | None:
        """Return the device identity, or None."""
        conn = self.conn
        if isinstance(conn, SyncConnection):
            return await self._run(conn.identity)
        return await conn.identity()

    async def on_reset(self) -> None:
        """Run the re-provisioning hook."""
        conn = self.conn
        if isinstance(conn, SyncConnection):
            await self._run(conn.on_reset)
        else:
            await conn.on_reset()

    async def call(self, op: Callable[[Any], Any]) -> Any:
        """Run a user operation ``op(connection)``: in a thread for a sync driver."""
        if self.is_sync:
            result = await self._run(op, self.conn)
        else:
            result = op(self.conn)
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        return result
