"""Fixtures of the web UI's browser tests: peers, one chromium per module, a screenshot folder.

Chromium is the system's (``apt-get install chromium``; `scripts/bootstrap`
installs it), never one downloaded by ``playwright install``. In CI
(``CI=true``) a missing chromium or playwright fails the tests; elsewhere
they are skipped with the reason (`browserkit.require_browser`).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from browserkit import require_browser

from edgelink.testing.peers import PingPongPeer


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def peers() -> AsyncIterator[list[PingPongPeer]]:
    started = [PingPongPeer(values={"temperature": "21.5"}) for _ in range(2)]
    for peer in started:
        await peer.start()
    yield started
    for peer in started:
        await peer.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    """One headless chromium per module."""
    require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=shutil.which("chromium"))
        yield launched
        await launched.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests save screenshots (a temporary folder; see `save_screenshot`)."""
    return tmp_path_factory.mktemp("ui-screenshots")
