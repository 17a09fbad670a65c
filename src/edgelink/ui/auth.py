"""Who may use the web UI: login checks, sessions, one-time login tickets, a login throttle.

Plain Python (no NiceGUI), so each part is tested on its own. Every table
here is bounded: a full table drops its oldest entry and counts it.

- `hash_password`: the argon2id hash ``ui.users`` keeps (``edgelink hash-password``).
- `verify_login`: the admin token (constant-time) or a user of ``ui.users``
  with an argon2-hashed password; returns the `Identity` the audit log records.
- `Sessions`: server-side sessions behind an opaque 256-bit cookie value;
  they end at their expiry, at logout, or when the gateway stops.
- `Tickets`: a successful login happens over the UI's websocket, which cannot
  set an HttpOnly cookie; it gets a single-use ticket valid 30 s, and the
  browser trades it for the cookie at ``/login/session`` (plain HTTP).
- `LoginThrottle`: after `FREE_FAILURES` wrong logins from one client, each
  further attempt waits twice as long as the previous one (up to 60 s).
"""

from __future__ import annotations

import functools
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgelink.service.audit import token_identity, user_identity
from edgelink.service.token import token_matches

if TYPE_CHECKING:
    from edgelink.service.config import UiSettings

__all__ = [
    "FREE_FAILURES",
    "Identity",
    "LoginThrottle",
    "Session",
    "Sessions",
    "Tickets",
    "hash_password",
    "verify_login",
]

#: Wrong logins from one client answered without delay; after them the wait doubles.
FREE_FAILURES = 3
#: The longest wait after repeated failures, s.
MAX_WAIT_S = 60.0
#: How long a login ticket may take from the websocket to ``/login/session``, s.
TICKET_TTL_S = 30.0


@functools.cache
def _dummy_hash() -> str:
    """An argon2 hash of a random password, for unknown user names.

    An unknown name then costs the same verification time as a known one, so
    names cannot be probed by timing.
    """
    from argon2 import PasswordHasher

    return PasswordHasher().hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    """Return an argon2id hash of ``password`` for ``ui.users`` (``edgelink hash-password``).

    argon2's default costs, the ones `verify_login` checks with; the hash
    carries its parameters and a random salt, so two hashes of one password differ.

    Raises:
        ValueError: for an empty password.
    """
    if not password:
        raise ValueError("the password is empty")
    from argon2 import PasswordHasher

    return str(PasswordHasher().hash(password))


@dataclass(frozen=True, slots=True)
class Identity:
    """Who logged in: ``who`` for the audit log, ``name`` for the header ("token" or the user)."""

    who: str
    name: str


def verify_login(settings: UiSettings, token: str, user: str, secret: str) -> Identity | None:
    """Return who logs in with ``secret``, or None.

    Without a ``user`` name, ``secret`` must be the admin ``token``; with one,
    it must match that user's argon2 hash in ``ui.users``. Slow on purpose
    (argon2): call it off the event loop.
    """
    user = user.strip()
    if not user:
        return Identity(token_identity(token), "token") if token_matches(secret, token) else None
    from argon2 import PasswordHasher
    from argon2.exceptions import InvalidHashError, VerificationError

    entry = settings.users.get(user)
    stored = entry.password_hash.get_secret_value() if entry is not None else _dummy_hash()
    try:
        PasswordHasher().verify(stored, secret)
    except (VerificationError, InvalidHashError):
        return None
    return Identity(user_identity(user), user) if entry is not None else None


@dataclass(frozen=True, slots=True)
class Session:
    """One logged-in browser: its cookie value, who it is and until when (epoch s)."""

    sid: str
    identity: Identity
    expires_at: float


class Sessions:
    """Server-side sessions, at most ``max_sessions`` (the oldest go first).

    Args:
        lifetime_s: How long a session lasts from login.
        max_sessions: Sessions kept at most.
    """

    def __init__(self, lifetime_s: float, max_sessions: int = 1024) -> None:
        self.lifetime_s = lifetime_s
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        #: Sessions dropped because the table was full.
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, identity: Identity, now: float) -> Session:
        """Start a session for ``identity``; return it (its ``sid`` goes into the cookie)."""
        session = Session(secrets.token_urlsafe(32), identity, now + self.lifetime_s)
        self._sessions[session.sid] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
            self.evicted += 1
        return session

    def get(self, sid: str | None, now: float) -> Session | None:
        """Return the live session of a cookie value, or None (an expired one is dropped)."""
        if not sid:
            return None
        session = self._sessions.get(sid)
        if session is None:
            return None
        if session.expires_at <= now:
            del self._sessions[sid]
            return None
        return session

    def drop(self, sid: str | None) -> None:
        """End a session (logout); unknown values are ignored."""
        if sid:
            self._sessions.pop(sid, None)


class Tickets:
    """Single-use login tickets, valid `TICKET_TTL_S`, at most ``max_tickets`` pending."""

    def __init__(self, max_tickets: int = 256) -> None:
        self.max_tickets = max_tickets
        self._tickets: OrderedDict[str, tuple[Identity, float]] = OrderedDict()
        self.evicted = 0

    def issue(self, identity: Identity, now: float) -> str:
        """Return a new ticket for ``identity``."""
        ticket = secrets.token_urlsafe(32)
        self._tickets[ticket] = (identity, now + TICKET_TTL_S)
        while len(self._tickets) > self.max_tickets:
            self._tickets.popitem(last=False)
            self.evicted += 1
        return ticket

    def redeem(self, ticket: str | None, now: float) -> Identity | None:
        """Return the identity of a live ticket and forget the ticket; else None."""
        if not ticket:
            return None
        entry = self._tickets.pop(ticket, None)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]


class LoginThrottle:
    """Slows down repeated wrong logins per client (its address), bounded.

    After `FREE_FAILURES` failures a client must wait 1 s, then 2, 4, ...
    up to `MAX_WAIT_S` before its next attempt is checked at all. A success
    forgets the client; so does an hour without failures.

    Args:
        max_clients: Clients remembered at most; the least recently failed go first.
    """

    #: A client's failures are forgotten after this long without a new one, s.
    FORGET_AFTER_S = 3600.0

    def __init__(self, max_clients: int = 4096) -> None:
        self.max_clients = max_clients
        #: client -> (failures, not before, last failure)
        self._clients: OrderedDict[str, tuple[int, float, float]] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._clients)

    def retry_after(self, client: str, now: float) -> float:
        """Return how long ``client`` must still wait before its next attempt (0 = go)."""
        entry = self._clients.get(client)
        if entry is None:
            return 0.0
        if now - entry[2] > self.FORGET_AFTER_S:
            del self._clients[client]
            return 0.0
        return max(0.0, entry[1] - now)

    def failed(self, client: str, now: float) -> float:
        """Count a wrong login of ``client``; return the wait before its next attempt."""
        failures = self._clients.pop(client, (0, 0.0, 0.0))[0] + 1
        wait = 0.0
        if failures > FREE_FAILURES:
            wait = min(MAX_WAIT_S, 2.0 ** (failures - FREE_FAILURES - 1))
        self._clients[client] = (failures, now + wait, now)
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)
            self.evicted += 1
        return wait

    def succeeded(self, client: str) -> None:
        """Forget ``client``'s failures."""
        self._clients.pop(client, None)
