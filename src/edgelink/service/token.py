"""The admin API's bearer token: from config, the environment, or a generated file.

Order: ``api.token`` in ``edgelink.json``, then ``EDGELINK_TOKEN``, then the
token file in the config folder (``.edgelink_token``), which is generated on
first run with 256 random bits and mode 0600. Comparison is constant-time.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

__all__ = ["TOKEN_ENV", "kept_secret", "resolve_token", "token_matches"]

TOKEN_ENV = "EDGELINK_TOKEN"  # noqa: S105 - the variable's name, not a secret
#: Shortest token accepted from config or the environment.
MIN_TOKEN_LENGTH = 16


def resolve_token(configured: str | None, token_file: Path) -> tuple[str, str]:
    """Return ``(token, origin)``, origin being ``config``, ``env``, ``file`` or ``generated``.

    Raises:
        ValueError: for a configured or environment token shorter than 16 characters.
        OSError: if the token file can be neither read nor written.
    """
    for origin, value in (("config", configured), ("env", os.environ.get(TOKEN_ENV))):
        if value:
            if len(value) < MIN_TOKEN_LENGTH:
                raise ValueError(
                    f"the API token from {origin} is too short "
                    f"(at least {MIN_TOKEN_LENGTH} characters)"
                )
            return value, origin
    return kept_secret(token_file)


def kept_secret(path: Path) -> tuple[str, str]:
    """Return ``(secret, origin)`` from ``path``, generating it there first if needed.

    A file with fewer than 16 characters is replaced by 256 random bits,
    written with mode 0600; origin is ``file`` or ``generated``.

    Raises:
        OSError: if the file can be neither read nor written.
    """
    try:
        existing = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        existing = ""
    if len(existing) >= MIN_TOKEN_LENGTH:
        return existing, "file"
    secret = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created 0600 from the start: never a moment where others could read it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secret + "\n")
    os.chmod(path, 0o600)
    return secret, "generated"


def token_matches(given: str | None, expected: str) -> bool:
    """Compare in constant time (no early exit on the first differing byte)."""
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
