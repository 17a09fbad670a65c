"""The exception tree of edgelink.

The class of an error decides what the Supervisor does with it::

    EdgelinkError
    ├── ConfigError(ValueError)            bad config: file, JSON path, reason    permanent
    ├── ConnectError(ConnectionError)      an attempt failed                       transient
    │   └── ConnectTimeout(TimeoutError)
    ├── ConnectionLostError(ConnectionError)  gone, not recovered in time
    ├── ReconnectionError                  reconnect attempts exhausted
    ├── ProtocolError                      the peer spoke garbage: drop the link, reconnect
    ├── DeviceError                        the device answered "no": keep the link
    ├── DeviceSleepError                   the device sleeps: not a failure (state sleeping)
    ├── DeviceResetError                   re-provisioning after a reset failed
    ├── PermanentError                     retrying cannot help (unsupported, refused): state error
    │   └── AuthError                      bad or missing credentials: state error, reason auth
    ├── ConnectionHealthError              a health check could not run
    ├── ConnectionPoolExhaustedError       no connection free within acquire_timeout
    └── RouteError(ValueError)             bad route, condition or transform

What happens after an exception is decided in one place, `classify`: it
returns a `Verdict`, the `Action` to take and the status ``reason``. Drivers
translate their library's exceptions at the boundary with a table
(`map_exceptions`), so the class of what reaches the Supervisor is the policy.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, TypeAlias

from edgelink.redact import redact_text
from edgelink.state import Reason

__all__ = [
    "Action",
    "AuthError",
    "ConfigError",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionHealthError",
    "ConnectionLostError",
    "ConnectionPoolExhaustedError",
    "DeviceError",
    "DeviceResetError",
    "DeviceSleepError",
    "EdgelinkError",
    "ExceptionMap",
    "PermanentError",
    "ProtocolError",
    "ReconnectionError",
    "RouteError",
    "Translation",
    "Translator",
    "Verdict",
    "classify",
    "map_exceptions",
]


class EdgelinkError(Exception):
    """Base of every error edgelink raises.

    Args:
        message: What went wrong, for a person.
        connection_id: The connection the error belongs to, if any.
        cause: The underlying exception, if any (also set as ``__cause__`` by ``raise from``).
        retry_after: Seconds the peer asked us to wait before trying again, if it said so.
    """

    def __init__(
        self,
        message: str = "",
        *,
        connection_id: str | None = None,
        cause: BaseException | None = None,
        retry_after: float | None = None,
    ) -> None:
        # A message may quote a URL or a request path: never keep its credentials.
        message = redact_text(message)
        super().__init__(message)
        self.message = message
        self.connection_id = connection_id
        self.cause = cause
        self.retry_after = retry_after

    def __str__(self) -> str:
        text = self.message or type(self).__name__
        if self.connection_id is not None:
            text = f"[{self.connection_id}] {text}"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.__dict__.copy()))


def _rebuild(cls: type[EdgelinkError], message: str, state: dict[str, Any]) -> EdgelinkError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class ConfigError(EdgelinkError, ValueError):
    """A configuration is invalid. Permanent: retrying the same config cannot help.

    Args:
        message: The reason.
        file: The file that was read, if the config came from one.
        path: The JSON path inside the document, e.g.
            ``connections.plc_1.settings.health_check_interval``.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        path: str | None = None,
        errors: list[tuple[str, str]] | None = None,
        connection_id: str | None = None,
    ) -> None:
        self.file = file
        self.path = path
        self.errors: list[tuple[str, str]] = [
            (p, redact_text(m)) for p, m in errors or [(path or "", message)]
        ]
        super().__init__(message, connection_id=connection_id)

    def in_file(self, file: str | os.PathLike[str]) -> ConfigError:
        """Return this error naming ``file``; itself if it names a real file already.

        Errors raised on an already-parsed document (``<dict>``) or by a
        driver's own validation know no file; the loader of the file adds it.
        """
        if self.file not in (None, "<dict>"):
            return self
        located = type(self).__new__(type(self))
        located.__dict__.update(self.__dict__)
        Exception.__init__(located, self.message)
        located.file = os.fspath(file)
        return located

    def __str__(self) -> str:
        where = self.file or "<config>"
        if len(self.errors) > 1:
            lines = [f"{where}: {len(self.errors)} errors"]
            lines += [f"  {p or '(root)'}: {m}" for p, m in self.errors]
            return "\n".join(lines)
        return f"{where}: {self.path or '(root)'}: {self.message}"


class ConnectError(EdgelinkError, ConnectionError):
    """A connect attempt (or an operation on the link) failed. Transient: back off and retry."""


class ConnectTimeout(ConnectError, TimeoutError):  # noqa: N818 - the public name of DESIGN
    """A connect attempt did not finish within its timeout. Transient."""


class ConnectionLostError(EdgelinkError, ConnectionError):
    """The connection is gone and could not be recovered in time."""


class ReconnectionError(EdgelinkError):
    """Reconnect attempts were exhausted."""


class ProtocolError(EdgelinkError):
    """The peer sent garbage or a partial frame: drop the link and reconnect."""


class DeviceError(EdgelinkError):
    """The device answered, and the answer was no (e.g. a Modbus exception). Keep the link."""

    def __init__(self, message: str = "", *, code: int | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.code = code


class DeviceSleepError(EdgelinkError):
    """The device said it sleeps. Not a failure: the connection goes ``sleeping``."""


class DeviceResetError(EdgelinkError):
    """The device was reset and re-provisioning it failed."""


class PermanentError(EdgelinkError):
    """Retrying cannot help (bad credentials, unsupported device): state ``error``."""


class AuthError(PermanentError):
    """The peer refused the credentials (HTTP 401/403, MQTT bad user name or password).

    Permanent like every `PermanentError`; the status reason is ``auth``.
    """


class ConnectionHealthError(EdgelinkError):
    """A health check could not run."""


class ConnectionPoolExhaustedError(EdgelinkError):
    """No pooled connection became free within ``acquire_timeout``."""


class RouteError(EdgelinkError, ValueError):
    """A route, condition or transform is invalid (or ``routing.json`` is).

    Args:
        message: The reason.
        route_id: The route it concerns, if known.
        expression: The condition or transform text that is wrong, if any.
        position: 1-based character position inside ``expression``.
        file: The file that was read, if the routes came from one.
        path: The JSON path inside the document, e.g. ``routes[2].condition``.
        errors: Every ``(path, reason)`` found, when a document had several.
    """

    def __init__(
        self,
        message: str,
        *,
        route_id: str | None = None,
        expression: str | None = None,
        position: int | None = None,
        file: str | None = None,
        path: str | None = None,
        errors: list[tuple[str, str]] | None = None,
    ) -> None:
        self.route_id = route_id
        self.expression = expression
        self.position = position
        self.file = file
        self.path = path
        self.errors: list[tuple[str, str]] = errors or [(path or "", message)]
        super().__init__(message)

    @property
    def detail(self) -> str:
        """The reason with the route, expression and position, without file and path."""
        text = self.message
        if self.expression is not None:
            where = f" at position {self.position}" if self.position is not None else ""
            shown = self.expression
            if len(shown) > 120:
                shown = shown[:117] + "..."
            text = f"{text} in {shown!r}{where}"
        if self.route_id is not None:
            text = f"route {self.route_id!r}: {text}"
        return text

    def __str__(self) -> str:
        if len(self.errors) > 1:
            lines = [f"{self.file or '<routes>'}: {len(self.errors)} errors"]
            lines += [f"  {p or '(root)'}: {m}" for p, m in self.errors]
            return "\n".join(lines)
        return ": ".join([*(p for p in (self.file, self.path) if p), self.detail])


class Action(enum.StrEnum):
    """What a supervisor, a retrying caller or a pool does after an exception.

    Sites differ only where the design says they do (a timed-out poll read
    also counts a strike against its tag; a timed-out health check is
    ``half_open`` while the socket still looks open); the action is the same.
    """

    #: Not ours to handle (cancellation, ``KeyboardInterrupt``, ``SystemExit``): re-raise.
    PROPAGATE = "propagate"
    #: The link is broken (transient, or garbage on the wire): drop it, back off, reconnect.
    RECONNECT = "reconnect"
    #: No answer in time: the request/response stream is out of step, the link goes too.
    TIMEOUT = "timeout"
    #: The device answered "no" (or cannot do this): keep the link, report the tag bad.
    REFUSED = "refused"
    #: The device sleeps: not a failure, probe slowly (state ``sleeping``).
    SLEEP = "sleep"
    #: Retrying cannot help (auth, config, unsupported): state ``error``, no retries.
    PERMANENT = "permanent"
    #: A bug in driver or decode code (``KeyError``, ``struct.error``...): a reconnect
    #: cannot fix it, so the link stays and the read counts a strike.
    POISON = "poison"
    #: An edgelink error that says nothing about the link (a failed reset,
    #: an exhausted pool): the operation failed; its caller gets it as it is.
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The policy for one exception: the action, and the status ``reason`` of DESIGN section 4.

    Example:
        >>> classify(ConnectionRefusedError())
        Verdict(action=<Action.RECONNECT: 'reconnect'>, reason=<Reason.REFUSED: 'refused'>)
    """

    action: Action
    reason: str

    @property
    def breaks_link(self) -> bool:
        """True if the link is broken: a request may be retried on a new one."""
        return self.action is Action.RECONNECT or self.action is Action.TIMEOUT


#: The action by the class of the exception itself; the first match wins.
_ACTIONS: Final[
    tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], Action], ...]
] = (
    ((DeviceError, NotImplementedError), Action.REFUSED),
    (DeviceSleepError, Action.SLEEP),
    ((PermanentError, ConfigError), Action.PERMANENT),
    (TimeoutError, Action.TIMEOUT),
    (
        (
            ConnectError,
            ConnectionLostError,
            ProtocolError,
            ConnectionHealthError,
            OSError,
            EOFError,
        ),
        Action.RECONNECT,
    ),
    (EdgelinkError, Action.FAIL),
    (Exception, Action.POISON),
)

#: The reason from the first exception along the ``cause`` chain that says more
#: than a failed connect: ``ConnectError(...) from ConnectionRefusedError`` is ``refused``.
_REASONS: Final[
    tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], Reason], ...]
] = (
    (ConnectionRefusedError, Reason.REFUSED),
    (DeviceSleepError, Reason.DEVICE_SLEEP),
    (AuthError, Reason.AUTH),
    (PermanentError, Reason.PERMANENT),
    (ProtocolError, Reason.PROTOCOL_ERROR),
    (DeviceResetError, Reason.DEVICE_RESET_FAILED),
    (TimeoutError, Reason.TIMEOUT),
    ((ConnectionResetError, BrokenPipeError, EOFError), Reason.CONNECTION_RESET),
)


def classify(exc: BaseException) -> Verdict:
    """Return what to do after ``exc``, and the status reason to show for it.

    Pure: looks at the class of ``exc`` (the action) and along its cause chain
    (the reason), and never raises. A `BaseException` that is no `Exception`
    (above all `asyncio.CancelledError`) is always `Action.PROPAGATE`.
    """
    action = Action.PROPAGATE
    for classes, candidate in _ACTIONS:
        if isinstance(exc, classes):
            action = candidate
            break
    return Verdict(action, _reason(exc))


def _reason(exc: BaseException) -> Reason:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        for classes, reason in _REASONS:
            if isinstance(cur, classes):
                return reason
        cur = cur.__cause__ or getattr(cur, "cause", None)
    return Reason.CONNECT_FAILED if isinstance(exc, ConnectError | OSError) else Reason.ERROR


#: Builds the edgelink error for a library exception from the fields given to
#: `map_exceptions`; None passes it on to the next matching entry of the table.
Translator: TypeAlias = Callable[..., "EdgelinkError | None"]
#: An edgelink error class and its message template, or a `Translator`.
Translation: TypeAlias = tuple[type[EdgelinkError], str] | Translator
ExceptionMap: TypeAlias = Mapping[type[Exception] | tuple[type[Exception], ...], Translation]


class map_exceptions:  # noqa: N801 - a context manager named like contextlib.suppress
    """Translate a library's exceptions into edgelink errors, by a table, at a driver's boundary.

    The first entry whose key ``exc`` is an instance of wins (so list
    subclasses first). A ``(cls, template)`` entry raises ``cls(message,
    connection_id=..., cause=exc) from exc``, the message being
    ``template.format(**fields)`` with these fields added: ``error`` (the
    exception), ``text`` (its text, or its class name when it has none) and
    ``error_type`` (its class name). A `Translator` entry is called as
    ``fn(exc, **fields)`` and returns the error (``connection_id`` and
    ``cause`` are filled in if it left them empty) or None to let a later
    entry decide. Edgelink errors, exceptions the table does not name and
    every `BaseException` that is no `Exception` pass through untouched.

    Example:
        >>> with map_exceptions({OSError: (ConnectError, "cannot connect to {where}: {text}")},
        ...                     connection_id="plc_1", where="10.0.0.5:502"):
        ...     ...
    """

    __slots__ = ("_connection_id", "_fields", "_table")

    def __init__(
        self, table: ExceptionMap, *, connection_id: str | None = None, **fields: Any
    ) -> None:
        self._table = table
        self._connection_id = connection_id
        self._fields = fields

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, EdgelinkError):
            return False
        error = self.translate(exc)
        if error is None:
            return False
        raise error from exc

    def translate(self, exc: Exception) -> EdgelinkError | None:
        """Return the edgelink error the table makes of ``exc``, or None if it names none."""
        for classes, target in self._table.items():
            if not isinstance(exc, classes):
                continue
            if isinstance(target, tuple):
                cls, template = target
                message = template.format(
                    **self._fields,
                    error=exc,
                    text=str(exc) or type(exc).__name__,
                    error_type=type(exc).__name__,
                )
                return cls(message, connection_id=self._connection_id, cause=exc)
            error = target(exc, **self._fields)
            if error is None:
                continue
            if error.connection_id is None:
                error.connection_id = self._connection_id
            if error.cause is None:
                error.cause = exc
            return error
        return None
