"""Keep secrets out of status, events, logs and reprs. Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["REDACTED", "is_secret_key", "redact"]

REDACTED = "***"

# password, passwd, secret, token, api_key, apikey, auth, credential, private_key, psk ...
_SECRET = re.compile(
    r"(pass(word|wd)?|secret|token|api[_-]?key|auth|credential|private[_-]?key|psk|bearer)",
    re.IGNORECASE,
)


def is_secret_key(key: str) -> bool:
    """Return True if a config key names a secret."""
    return bool(_SECRET.search(key))


def redact(value: Any) -> Any:
    """Return a copy of ``value`` with the values of secret-named keys replaced.

    Walks dicts, lists and tuples; other values are returned as they are.
    """
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
