"""Helpers of the web UI's browser tests: the folder, the login token, screenshots, chromium.

Chromium is the system's (``apt-get install chromium``; `scripts/bootstrap`
installs it), never one downloaded by ``playwright install``. In CI
(``CI=true``) a missing chromium or playwright fails the tests; elsewhere
they are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

TOKEN = "ui-test-token-0123456789abcdef"
#: A user of ``ui.users`` and the password behind its argon2 hash.
USER, USER_PASSWORD = "alice", "correct horse battery"
FAST = {
    "connect_timeout": 0.5,
    "health_check_timeout": 0.3,
    "health_check_interval": 0.2,
    "reconnect_initial_delay": 0.05,
    "reconnect_max_delay": 0.2,
    "reconnect_jitter": 0.0,
    "request_timeout": 0.5,
}
#: Where the current screenshots are kept in the repository (docs/ui.md shows them).
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "ui"


def _missing() -> str | None:
    """Return why the browser tests cannot run here, or None."""
    try:
        import nicegui  # noqa: F401
        import playwright  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install -e '.[test]')"
    if shutil.which("chromium") is None:
        return "no chromium on PATH (apt-get install chromium; scripts/bootstrap does it)"
    return None


def require_browser() -> None:
    """Skip (in CI: fail) with the reason when chromium, playwright or nicegui is missing."""
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but the browser tests cannot run: {reason}")
    pytest.skip(f"browser tests skipped: {reason}")


def _cheap_hash(password: str) -> str:
    """An argon2 hash with small costs: the tests check logins, not argon2's strength."""
    from argon2 import PasswordHasher

    return PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(password)


def write_folder(folder: Path, ports: dict[str, int], **service: Any) -> None:
    """Write connections.json (tcp devices) and edgelink.json with the test token."""
    connections = {
        cid: {"type": "tcp", "name": f"device {cid}", "config": {"host": "127.0.0.1", "port": port}}
        for cid, port in ports.items()
    }
    (folder / "connections.json").write_text(
        json.dumps({"settings": FAST, "connections": connections})
    )
    (folder / "edgelink.json").write_text(
        json.dumps(
            {
                "api": {"token": TOKEN},
                "storage": {"path": "logs/system.db"},
                "ui": {
                    "name": "ui-test",
                    "users": {USER: {"password_hash": _cheap_hash(USER_PASSWORD)}},
                },
                **service,
            }
        )
    )


async def save_screenshot(page: Any, folder: Path, name: str) -> Path:
    """Save a full-page screenshot as ``name.png``; with ``EDGELINK_UI_DOCS=1`` also in docs/ui."""
    path = folder / f"{name}.png"
    await page.screenshot(path=path, full_page=True)
    if os.environ.get("EDGELINK_UI_DOCS") == "1":
        DOCS_SCREENSHOTS.mkdir(exist_ok=True)
        shutil.copyfile(path, DOCS_SCREENSHOTS / path.name)
    return path


@contextlib.asynccontextmanager
async def launched_chromium() -> AsyncIterator[Any]:
    """Launch Debian's headless chromium through playwright (skips/fails as `require_browser`)."""
    require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=shutil.which("chromium"))
        try:
            yield browser
        finally:
            await browser.close()


def url_of(gw: Any, path: str = "/") -> str:
    """Return the URL of ``path`` on a started gateway's API server."""
    assert gw.api_address is not None
    host, port = gw.api_address
    return f"http://{host}:{port}{path}"


async def log_in_with_token(page: Any, gw: Any, wait_ms: int = 10_000) -> None:
    """Log ``page`` in with the test token and wait for the instances page."""
    await page.goto(url_of(gw, "/login"))
    await page.get_by_label("Token").fill(TOKEN)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url(url_of(gw, "/"), timeout=wait_ms)


__all__ = [
    "DOCS_SCREENSHOTS",
    "FAST",
    "TOKEN",
    "launched_chromium",
    "log_in_with_token",
    "require_browser",
    "save_screenshot",
    "url_of",
    "write_folder",
]
