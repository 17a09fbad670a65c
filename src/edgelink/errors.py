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
    ├── PermanentError                     retrying cannot help (auth, unsupported): state error
    ├── ConnectionHealthError              a health check could not run
    ├── ConnectionPoolExhaustedError       no connection free within acquire_timeout
    └── RouteError(ValueError)             bad route, condition or transform

Drivers translate their library's exceptions at the boundary
(``raise ConnectError("...", connection_id=cid) from exc``).
"""

from __future__ import annotations

import os
from typing import Any

from edgelink.redact import redact_text

__all__ = [
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
    "PermanentError",
    "ProtocolError",
    "ReconnectionError",
    "RouteError",
    "is_link_error",
    "is_permanent",
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


def is_permanent(exc: BaseException) -> bool:
    """Return True if retrying after ``exc`` cannot help (permanent or config errors)."""
    return isinstance(exc, PermanentError | ConfigError)


def is_link_error(exc: BaseException) -> bool:
    """Return True if ``exc`` means the link itself is broken and must be rebuilt.

    Device-level refusals (`DeviceError`) and sleep notices keep the link.
    """
    if isinstance(exc, DeviceError | DeviceSleepError | PermanentError | ConfigError | RouteError):
        return False
    return isinstance(
        exc,
        ConnectError
        | ConnectionLostError
        | ProtocolError
        | ConnectionHealthError
        | OSError
        | TimeoutError
        | EOFError,
    )
