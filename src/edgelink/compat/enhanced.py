"""The enhanced connection manager's names on edgelink (``enhanced-connection-manager.md``).

The document describes a single-link, thread-based manager: a state machine
with ``FAILED`` and ``TX_DROPPED``, exponential backoff with ±10 % jitter and
``MAX_RETRIES``, a fast path after a frame dropped mid-way, a power monitor
that warns on 0 W readings, and structured ``EVENT_*`` log events handed to
handlers as ``(event_type, event_data)``. Here the link is one supervised
edgelink connection of a `edgelink.SyncConnectionManager` (its loop runs in
a thread of its own: the "monitoring thread"); the module's constants are
that connection's supervision settings, and the states and events are the
engine's, named as the document names them:

==========================  ==============================================
the document                edgelink
==========================  ==============================================
``DISCONNECTED``            ``disconnected`` (stopped, not started)
``CONNECTING``              ``connecting``
``CONNECTED``               ``connected`` (and ``sleeping``: a device that
                            sleeps on purpose is no failure)
``RECONNECTING``            ``reconnecting``
``FAILED``                  ``suspended`` after ``MAX_RETRIES`` attempts,
                            or ``error`` (retrying cannot help)
``TX_DROPPED``              from `ConnectionManager.mark_tx_drop` until the
                            link is up again
==========================  ==============================================

There is no state machine, backoff or retry loop here: only the power
monitor's counter of zero readings, which is the document's own.

Example:
    conn_mgr = ConnectionManager(type="tcp", config={"host": "10.0.0.7", "port": 4532})
    conn_mgr.add_event_handler(lambda event_type, data: print(event_type, data))
    conn_mgr.start_monitoring()
    conn_mgr.start_power_polling()
    ...
    conn_mgr.stop_monitoring()
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final

from edgelink.errors import EdgelinkError
from edgelink.events import Event, EventType, log_name, make_event
from edgelink.state import ConnectionState as EngineState
from edgelink.sync import SyncConnectionManager

__all__ = [
    "CONNECTION_TIMEOUT",
    "FAST_PATH_TIMEOUT",
    "INITIAL_BACKOFF_MS",
    "JITTER",
    "MAX_BACKOFF_MS",
    "MAX_RETRIES",
    "POWER_POLL_INTERVAL",
    "ZERO_POWER_THRESHOLD",
    "ConnectionManager",
    "ConnectionState",
    "LogEvent",
    "PowerMonitor",
]

logger = logging.getLogger(__name__)

# Connection timeouts
CONNECTION_TIMEOUT: Final = 3.0  # Seconds before connection timeout
FAST_PATH_TIMEOUT: Final = 0.5  # Fast-path timeout

# Power monitoring
POWER_POLL_INTERVAL: Final = 1.0  # Power polling interval
ZERO_POWER_THRESHOLD: Final = 0.1  # Watts threshold for zero power

# Backoff parameters
MAX_RETRIES: Final = 10  # Maximum reconnection attempts
INITIAL_BACKOFF_MS: Final = 100  # Initial backoff delay
MAX_BACKOFF_MS: Final = 10000  # Maximum backoff delay
#: ±10 % jitter on every backoff delay ("to prevent thundering herd").
JITTER: Final = 0.1

#: Zero readings in a row for a warning, and for the critical event.
POWER_WARNING_READINGS: Final = 1
POWER_CRITICAL_READINGS: Final = 3
#: Power readings kept ("Power history is limited to 10 entries").
POWER_HISTORY: Final = 10

#: The link the no-argument manager supervises: the CAT emulator of the
#: document's application, as hamlib's rigctld serves one (TCP port 4532).
DEFAULT_TYPE: Final = "tcp"
DEFAULT_CONFIG: Final[Mapping[str, Any]] = {"host": "127.0.0.1", "port": 4532}


class ConnectionState(enum.Enum):
    """The document's states of the one link."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    TX_DROPPED = "tx_dropped"


_FROM_ENGINE: Final[Mapping[EngineState, ConnectionState]] = {
    EngineState.DISCONNECTED: ConnectionState.DISCONNECTED,
    EngineState.CONNECTING: ConnectionState.CONNECTING,
    EngineState.CONNECTED: ConnectionState.CONNECTED,
    EngineState.SLEEPING: ConnectionState.CONNECTED,
    EngineState.RECONNECTING: ConnectionState.RECONNECTING,
    EngineState.SUSPENDED: ConnectionState.FAILED,
    EngineState.ERROR: ConnectionState.FAILED,
}


class LogEvent:
    """The document's structured log events (the engine's event types' log names)."""

    RECONNECT_START = "EVENT_RECONNECT_START"
    RECONNECT_OK = "EVENT_RECONNECT_OK"
    RECONNECT_FAILED = "EVENT_RECONNECT_FAILED"
    POWER_WARNING = "EVENT_POWER_WARNING"
    POWER_CRITICAL = "EVENT_POWER_CRITICAL"
    TX_DROP_DETECTED = "EVENT_TX_DROP_DETECTED"
    FAST_PATH_ACTIVE = "EVENT_FAST_PATH_ACTIVE"
    STATE_CHANGE = "EVENT_STATE_CHANGE"
    CONNECTION_STABLE = "EVENT_CONNECTION_STABLE"
    MAX_RETRIES_EXCEEDED = "EVENT_MAX_RETRIES_EXCEEDED"


#: The engine's events handlers hear, by their log name (= the LogEvent value).
_RELAYED: Final = frozenset(
    {
        EventType.RECONNECT_START,
        EventType.RECONNECT_OK,
        EventType.RECONNECT_FAILED,
        EventType.POWER_WARNING,
        EventType.POWER_CRITICAL,
        EventType.TX_DROP_DETECTED,
        EventType.FAST_PATH_ACTIVE,
        EventType.STATE_CHANGE,
        EventType.CONNECTION_STABLE,
        EventType.MAX_RETRIES_EXCEEDED,
    }
)

Handler = Callable[[str, dict[str, Any]], Any]


class PowerMonitor:
    """Early warning from power readings: 0 W once is a warning, three times critical.

    Args:
        threshold: Readings below this many watts count as zero.
        on_event: Called ``(log_event, data)`` for a warning or critical
            reading (the manager sends it on as a structured event).
    """

    def __init__(
        self,
        threshold: float = ZERO_POWER_THRESHOLD,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.threshold = threshold
        self.history: deque[float] = deque(maxlen=POWER_HISTORY)
        self.consecutive_zero = 0
        self._on_event = on_event
        self._lock = threading.Lock()

    @property
    def last_power(self) -> float | None:
        """The last reading, W (None before the first)."""
        with self._lock:
            return self.history[-1] if self.history else None

    def update_power(self, watts: float) -> str | None:
        """Take one reading; return `LogEvent.POWER_WARNING`, `LogEvent.POWER_CRITICAL` or None.

        The warning comes with the first zero reading in a row, the critical
        event with the third; a reading at or above the threshold starts over.

        Raises:
            ValueError: ``watts`` is not a number.
        """
        if isinstance(watts, bool) or not isinstance(watts, int | float):
            raise ValueError(f"update_power: watts must be a number, got {watts!r}")
        with self._lock:
            self.history.append(float(watts))
            if watts >= self.threshold:
                self.consecutive_zero = 0
                return None
            self.consecutive_zero += 1
            count = self.consecutive_zero
        event = None
        if count == POWER_WARNING_READINGS:
            event = LogEvent.POWER_WARNING
        elif count == POWER_CRITICAL_READINGS:
            event = LogEvent.POWER_CRITICAL
        elif count > POWER_CRITICAL_READINGS:
            return LogEvent.POWER_CRITICAL  # still critical; said once already
        if event is not None and self._on_event is not None:
            self._on_event(event, {"power_watts": float(watts), "consecutive_zero": count})
        return event

    def get_history(self) -> list[float]:
        """The last readings, oldest first (at most ten)."""
        with self._lock:
            return list(self.history)


class ConnectionManager:
    """The document's single-link manager: one supervised edgelink connection, run from threads.

    Args:
        type: The link's edgelink driver type (default ``tcp``).
        config: Its driver config (default: 127.0.0.1:4532, a CAT emulator).
        connection_id: The link's connection id.
        settings: Supervision settings over the module's constants
            (edgelink's names: ``reconnect_max_attempts``, ``health_check_interval``...).
        power_source: Called for each power reading of the polling thread,
            returns watts; default: the link device's ``power_tag``.
        power_tag: The tag the default power source reads.
        power_poll_interval: Seconds between power readings.
        clock: The engine's clock (`edgelink.testing.ManualClock` in tests).
        registry: Driver types (a user's own link type).

    Every method may be called from any thread.
    """

    def __init__(
        self,
        type: str = DEFAULT_TYPE,
        config: Mapping[str, Any] | None = None,
        *,
        connection_id: str = "link",
        settings: Mapping[str, Any] | None = None,
        power_source: Callable[[], float] | None = None,
        power_tag: str = "power",
        power_poll_interval: float = POWER_POLL_INTERVAL,
        clock: Any = None,
        registry: Any = None,
    ) -> None:
        self.connection_id = connection_id
        self.power_tag = power_tag
        self.power_poll_interval = power_poll_interval
        self._power_source = power_source
        self.shutdown_event = threading.Event()
        self.power_monitor = PowerMonitor(on_event=self._power_event)
        self._handlers: list[Handler] = []
        self._lock = threading.RLock()
        #: The link number when a TX drop was marked (None: none pending).
        self._tx_drop_link: int | None = None
        self._last_data_time: float | None = None
        self._monitoring = False
        self._stopped = False
        self._power_thread: threading.Thread | None = None
        engine_settings: dict[str, Any] = {
            "connect_timeout": CONNECTION_TIMEOUT,
            "fast_path_timeout": FAST_PATH_TIMEOUT,
            "reconnect_initial_delay": INITIAL_BACKOFF_MS / 1000,
            "reconnect_max_delay": MAX_BACKOFF_MS / 1000,
            "reconnect_multiplier": 2.0,
            "reconnect_jitter": JITTER,
            "reconnect_jitter_mode": "proportional",
            "reconnect_max_attempts": MAX_RETRIES,
            **(settings or {}),
        }
        self.engine = SyncConnectionManager(clock=clock, registry=registry)
        self.engine.add_connection(
            connection_id,
            type,
            dict(DEFAULT_CONFIG if config is None else config),
            settings=engine_settings,
        )
        self._unsubscribe = self.engine.on_event("*", self._relay)

    # -- the document's usage section ------------------------------------------------

    def start_monitoring(self) -> None:
        """Start supervising the link (connect, health checks, reconnects). Idempotent.

        Raises:
            RuntimeError: after `stop_monitoring` (make a new manager).
        """
        with self._lock:
            if self._stopped:
                raise RuntimeError("this manager was stopped: make a new one")
            if self._monitoring:
                return
            self._monitoring = True
        self.engine.start()

    def start_power_polling(self) -> None:
        """Start the power polling thread (`_power_polling_loop`). Idempotent."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("this manager was stopped: make a new one")
            if self._power_thread is not None and self._power_thread.is_alive():
                return
            self._power_thread = threading.Thread(
                target=self._power_polling_loop, name="edgelink-power-poll", daemon=True
            )
            self._power_thread.start()

    def update_last_data_time(self) -> None:
        """Say data arrived on the link now (feeds the engine's data watchdog)."""
        with self._lock:
            self._last_data_time = time.time()
        if self._monitoring:
            self.engine.record_activity(self.connection_id)

    def mark_tx_drop(self) -> None:
        """Say a transmission dropped mid-frame: ``TX_DROPPED``, then a fast-path reconnect."""
        with self._lock:
            self._tx_drop_link = self._supervisor().link_generation
        self.engine.mark_tx_drop(self.connection_id)

    def safe_reconnect(self, fast_path: bool = True) -> bool:
        """Drop the link and reconnect; block until it is up again.

        Args:
            fast_path: First attempt at once, with `FAST_PATH_TIMEOUT`;
                else after the backoff delay.

        Returns:
            Whether the link was up again within ``CONNECTION_TIMEOUT`` (plus
            `FAST_PATH_TIMEOUT` on the fast path); the engine keeps trying after.
        """
        if not self._monitoring:
            self.start_monitoring()
        generation = self._supervisor().link_generation
        self.engine.safe_reconnect(self.connection_id, fast_path)
        wait = CONNECTION_TIMEOUT + (FAST_PATH_TIMEOUT if fast_path else 0.0)
        try:
            self.engine.wait_for_link(self.connection_id, wait, newer_than=generation)
        except (EdgelinkError, TimeoutError) as exc:
            logger.info("safe_reconnect: the link is not back: %s", exc)
            return False
        return True

    def get_connection_status(self) -> dict[str, Any]:
        """The link's state and figures, in the document's terms and the engine's.

        After `stop_monitoring`: ``disconnected``, the last power figures, no
        ``connection``.
        """
        status: dict[str, Any] = {} if self._stopped else self.engine.get_status(self.connection_id)
        state = (
            self._document_state(EngineState(status["status"]))
            if status
            else ConnectionState.DISCONNECTED
        )
        with self._lock:
            last_data = self._last_data_time
        return {
            "state": state.value,
            "connected": state is ConnectionState.CONNECTED,
            "reconnect_count": status.get("reconnect_attempts", 0),
            "last_data_time": last_data or status.get("last_data_at"),
            "power_watts": self.power_monitor.last_power,
            "power_history": self.power_monitor.get_history(),
            "consecutive_zero_power": self.power_monitor.consecutive_zero,
            "last_error": status.get("last_error"),
            "monitoring": self._monitoring and not self._stopped,
            "power_polling": self._power_thread is not None and self._power_thread.is_alive(),
            "connection": status or None,
        }

    def stop_monitoring(self) -> None:
        """Stop every thread: power polling, the engine's loop (the link is closed). Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self.shutdown_event.set()
        thread = self._power_thread
        if thread is not None:
            thread.join(timeout=max(5.0, 2 * self.power_poll_interval))
        self._unsubscribe()
        self.engine.close()
        self._monitoring = False

    # -- events ------------------------------------------------------------------------

    def add_event_handler(self, handler: Handler) -> Callable[[], None]:
        """Call ``handler(event_type, event_data)`` for every structured event.

        ``event_type`` is a `LogEvent` value; ``event_data`` has ``event``,
        ``timestamp``, ``state`` (the document's), ``reconnect_count`` and the
        event's context (``power_watts`` for the power events, ``error``...).
        Handlers run on the engine's callback threads, one event at a time.

        Returns:
            A function that removes the handler again.
        """
        with self._lock:
            self._handlers.append(handler)

        def remove() -> None:
            with self._lock:
                if handler in self._handlers:
                    self._handlers.remove(handler)

        return remove

    def _relay(self, event: Event) -> None:
        if event.connection_id != self.connection_id or event.type not in _RELAYED:
            return
        data = {
            "event": log_name(event.type),
            "timestamp": event.ts,
            # The state the event was emitted in: no call into the loop per event.
            "state": (
                self._document_state(EngineState(event.state)) if event.state else self.state
            ).value,
            "reconnect_count": event.attempt,
            **event.data,
        }
        with self._lock:
            handlers = list(self._handlers)
        for handler in handlers:
            try:
                handler(log_name(event.type), data)
            except Exception:  # a handler's bug must not stop the others
                logger.exception("event handler %r failed on %s", handler, data["event"])

    def _power_event(self, log_event: str, data: dict[str, Any]) -> None:
        event_type = EventType(log_event.removeprefix("EVENT_").lower())
        state = str(self._supervisor().state)
        self.engine.manager.events.emit(
            make_event(event_type, self.connection_id, time.time(), state=state, **data)
        )

    # -- state -------------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """The link's state in the document's terms."""
        if self._stopped:
            return ConnectionState.DISCONNECTED
        try:
            state = self.engine.get_state(self.connection_id)  # not under the lock: a loop call
        except RuntimeError:  # stopped meanwhile (the engine is closed)
            return ConnectionState.DISCONNECTED
        return self._document_state(state)

    def _document_state(self, state: EngineState) -> ConnectionState:
        """The document's name of an engine state, ``TX_DROPPED`` laid over it."""
        with self._lock:
            if self._tx_drop_link is not None:
                # Until a link newer than the one that dropped the frame is up.
                newer = self._supervisor().link_generation > self._tx_drop_link
                if not (newer and state is EngineState.CONNECTED):
                    return ConnectionState.TX_DROPPED
                self._tx_drop_link = None
        return _FROM_ENGINE[state]

    def _supervisor(self) -> Any:
        return self.engine.manager.get_supervisor(self.connection_id)

    # -- power -------------------------------------------------------------------------

    def read_power(self) -> float:
        """One power reading: the ``power_source``, else the link device's ``power_tag``."""
        if self._power_source is not None:
            return float(self._power_source())
        value = self.engine.execute_with_retry(
            self.connection_id, lambda conn: conn.read(self.power_tag), retries=0
        )
        return float(value)

    def _power_polling_loop(self) -> None:
        while not self.shutdown_event.is_set():
            try:
                actual_power = self.read_power()
            except (EdgelinkError, OSError, TimeoutError, ValueError) as exc:
                logger.debug("power reading failed: %s", exc)
            else:
                self.power_monitor.update_power(actual_power)
            self.shutdown_event.wait(self.power_poll_interval)

    def __enter__(self) -> ConnectionManager:
        self.start_monitoring()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_monitoring()

    def __repr__(self) -> str:
        return f"<enhanced ConnectionManager {self.connection_id} {self.state.value}>"
