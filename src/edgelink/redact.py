"""Keep secrets out of status, events, logs and reprs. Pure (no I/O).

Three layers, each cheap enough for every record:

- `redact` walks a config or event payload and replaces the values of
  secret-named keys (``password``, ``api_key``, ``token``, ``Authorization``,
  ``Cookie``, ``key``, ...) with ``***``, and redacts every string in it with
  `redact_text`.
- `redact_text` rewrites free text: the userinfo of every URL
  (``http://admin:pass@host`` becomes ``http://***@host``), the values of
  secret-named query keys (``?token=abc`` becomes ``?token=***``, by the same
  key-name rule), and every secret value the process was told about with
  `remember_secrets`.
- `RedactingFilter` is a `logging.Filter` that applies `redact_text` to a
  record's message, arguments, exception and stack text; ``edgelink run``
  and ``demo`` put it on their log handlers, so even a third-party logger
  raised to DEBUG cannot print a password.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = [
    "REDACTED",
    "RedactingFilter",
    "collect_secrets",
    "is_secret_key",
    "redact",
    "redact_text",
    "redact_url",
    "remember_secrets",
]

REDACTED = "***"

logger = logging.getLogger(__name__)

# Names that hold secrets: passwords, secrets, tokens, API keys, auth headers,
# credentials, private keys, PSKs, bearer values, cookies, signatures, and a
# key named ``key`` or ending in ``_key`` / ``-key`` (access_key, secret-key).
_SECRET = re.compile(
    r"(pass(word|wd)?|pwd|secret|token|api[_-]?key|auth|credential|private[_-]?key|psk|bearer"
    r"|cookie|signature|(^|[_-])key$|^sig$)",
    re.IGNORECASE,
)

# scheme://[userinfo@]rest - the userinfo ends at the last '@' before the first
# '/', '?' or '#' (a password with a raw '@' in it is still caught).
_URL_USERINFO: Final = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)([^\s/?#'\"<>]*@)")
# ?key=value, &key=value, ;key=value in a URL or a request path in a message.
_QUERY_PAIR: Final = re.compile(r"([?&;])([^=&#;?\s'\"<>/]+)=([^&#;\s'\"<>]*)")

#: Secrets shorter than this are not remembered: redacting every "admin" in a log
#: would ruin it (a short password is still cut from URLs and secret-named keys).
MIN_SECRET_LEN: Final = 6
# Secret-named keys whose value describes a secret rather than being one
# (api_key_header: "X-API-Key", token_file: ".edgelink_token").
_DESCRIBES_SECRET: Final = re.compile(r"(_header|_prefix|_file|_path|_timeout|_ttl)$", re.I)
#: Remembered secrets at most (the oldest stay; the rest are counted in `secrets_overflow`).
MAX_SECRETS: Final = 4096

_known: set[str] = set()
# The first MIN_SECRET_LEN characters of each secret -> the secrets, longest first.
_known_heads: dict[str, tuple[str, ...]] = {}
_known_lock = threading.Lock()
secrets_overflow = 0


def is_secret_key(key: str) -> bool:
    """Return True if a config key, header name or query key names a secret."""
    return bool(_SECRET.search(key))


def redact(value: Any) -> Any:
    """Return a copy of ``value`` with the values of secret-named keys replaced.

    Walks dicts, lists and tuples; strings go through `redact_text`; other
    values are returned as they are.
    """
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            k: (
                REDACTED if isinstance(k, str) and is_secret_key(k) and v is not None else redact(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value


def _query_pair(match: re.Match[str]) -> str:
    sep, key, value = match.groups()
    if value and is_secret_key(urllib.parse.unquote_plus(key)):
        return f"{sep}{key}={REDACTED}"
    return match.group(0)


def redact_url(url: str) -> str:
    """Return ``url`` without its userinfo and with secret query values replaced.

    ``http://admin:pass@host/p?token=x&n=1`` becomes ``http://***@host/p?token=***&n=1``.
    """
    return redact_text(url)


def redact_text(text: str) -> str:
    """Return ``text`` with URL userinfo, secret query values and remembered secrets redacted.

    Never raises; returns ``text`` itself when there is nothing to redact (the
    common case costs two substring tests and, with remembered secrets, one
    regex search).
    """
    if not isinstance(text, str):
        return text
    out = text
    if "://" in out:
        out = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", out)
    if "=" in out:
        out = _QUERY_PAIR.sub(_query_pair, out)
    if _known:
        out = _replace_known(out)
    return out if out != text else text


def _replace_known(text: str) -> str:
    # One dict lookup per position, whatever the number of secrets (a regex
    # alternation of a thousand literals costs ~0.3 ms per record here).
    heads = _known_heads
    n, i, start = len(text), 0, 0
    parts: list[str] = []
    while i <= n - MIN_SECRET_LEN:
        found = heads.get(text[i : i + MIN_SECRET_LEN])
        if found is not None:
            for secret in found:
                if text.startswith(secret, i):
                    parts += (text[start:i], REDACTED)
                    i = start = i + len(secret)
                    break
            else:
                i += 1
        else:
            i += 1
    if not parts:
        return text
    parts.append(text[start:])
    return "".join(parts)


def collect_secrets(value: Any) -> set[str]:
    """Return the secret values inside a config: what `remember_secrets` should learn.

    The values of secret-named keys (and the credential after a ``Bearer `` /
    ``Basic `` scheme), the userinfo of every URL (user, password, both
    percent-decoded, and the Basic-auth form a client would send), and the
    values of secret query keys.
    """
    found: set[str] = set()

    def walk(item: Any, secret: bool) -> None:
        if isinstance(item, Mapping):
            for k, v in item.items():
                named = isinstance(k, str) and is_secret_key(k) and not _DESCRIBES_SECRET.search(k)
                walk(v, secret or named)
        elif isinstance(item, list | tuple):
            for v in item:
                walk(v, secret)
        elif isinstance(item, str):
            if secret:
                found.add(item)
                scheme, _, credential = item.partition(" ")
                if credential and scheme.isalpha():
                    found.add(credential.strip())
            if "://" in item:
                _url_secrets(item, found)

    walk(value, False)
    return {s for s in found if len(s) >= MIN_SECRET_LEN}


def _url_secrets(text: str, found: set[str]) -> None:
    for match in _URL_USERINFO.finditer(text):
        userinfo = match.group(2)[:-1]
        user, _, password = userinfo.partition(":")
        found.update({userinfo, urllib.parse.unquote(userinfo)})
        for part in (password, urllib.parse.unquote(password)):
            if part:
                found.add(part)
        plain = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
        found.add(base64.b64encode(plain.encode()).decode())
    for match in _QUERY_PAIR.finditer(text):
        key, value = match.group(2), match.group(3)
        if value and is_secret_key(urllib.parse.unquote_plus(key)):
            found.update({value, urllib.parse.unquote_plus(value)})


def remember_secrets(values: Iterable[str]) -> None:
    """Teach `redact_text` (and so every log record) secret values to replace wherever they appear.

    Values shorter than `MIN_SECRET_LEN` are ignored. At most `MAX_SECRETS`
    are kept for the life of the process; the rest are counted in
    ``secrets_overflow``. Thread-safe.
    """
    global _known_heads, secrets_overflow
    with _known_lock:
        new = {v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_LEN} - _known
        room = MAX_SECRETS - len(_known)
        if len(new) > room:
            if not secrets_overflow:
                logger.warning(
                    "more than %d secret values: the rest are not redacted from free text "
                    "(URL userinfo and secret-named keys still are)",
                    MAX_SECRETS,
                )
            secrets_overflow += len(new) - max(room, 0)
            new = set(sorted(new, key=len, reverse=True)[: max(room, 0)])
        if not new:
            return
        _known.update(new)
        heads = dict(_known_heads)  # copy on write: readers never take the lock
        for secret in new:
            head = secret[:MIN_SECRET_LEN]
            # Longest first: a secret that contains another is replaced whole.
            heads[head] = tuple(sorted((*heads.get(head, ()), secret), key=len, reverse=True))
        _known_heads = heads


class RedactingFilter(logging.Filter):
    """A logging filter that redacts every record; it never drops one.

    Put it on a handler (``handler.addFilter(RedactingFilter())``): the
    message (with its arguments), the exception text and the stack text of
    every record that reaches the handler go through `redact_text`. A record
    with nothing to redact is left as it is.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place; always return True."""
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is the handler's to report
            return True
        clean = redact_text(message)
        if clean is not message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True
