"""The Routes, Logs and Service pages in a real browser, against a gateway with real peers.

One gateway for the module: two PING/PONG devices on loopback (``dev_a`` up,
``dev_down`` a closed port, so the event log holds real errors) and a route
table of one route. One headless chromium (the system's; see
`browserkit.require_browser`).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from browserkit import launched_chromium, log_in_with_token, save_screenshot, url_of, write_folder

from edgelink.api.server import ApiServer
from edgelink.service.gateway import Gateway
from edgelink.testing.peers import PingPongPeer

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

#: How long a browser waits for something the page must show, ms.
WAIT_MS = 10_000

ROUTES = {
    "routes": [
        {"id": "hot", "from": "dev_a.temperature", "to": "calc.hot", "condition": "value > 20"}
    ]
}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    from edgelink.ui import mount_ui

    async with PingPongPeer() as peer:
        folder = tmp_path_factory.mktemp("ui-admin")
        write_folder(folder, {"dev_a": peer.port, "dev_down": closed_port()})
        (folder / "routing.json").write_text(json.dumps(ROUTES))
        gw = Gateway(folder, watch=False)
        await gw.start()
        await ApiServer(gw, port=0, mounts=[mount_ui]).start()
        try:
            await gw.manager.wait_for_state("dev_a", "connected", timeout=5)
            yield gw
        finally:
            await gw.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(gateway: Gateway) -> AsyncIterator[Any]:
    async with launched_chromium() as launched:
        yield launched


@pytest_asyncio.fixture(loop_scope="module")
async def admin(browser: Any, gateway: Gateway) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    await log_in_with_token(page, gateway)
    yield page
    await context.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ui-admin-shots")


async def test_routes_edit_with_a_bad_expression_then_test_and_save(
    admin: Any, gateway: Gateway, screenshots: Path
) -> None:
    """Test a bad expression shown at its field (the table stays), Test, Save and Disable.

    The save reaches routing.json and the router, audited with the token.
    """
    await admin.goto(url_of(gateway, "/routes"))
    table = admin.get_by_test_id("routes-table")
    await table.get_by_text("dev_a.temperature").wait_for(timeout=WAIT_MS)
    await admin.get_by_test_id("edit-hot").click()
    condition = admin.get_by_test_id("route-condition")
    await condition.fill("value > > 3")
    error = admin.get_by_test_id("route-error")
    await error.filter(has_text="position 9").wait_for(timeout=WAIT_MS)
    await admin.get_by_text("unexpected '>'").first.wait_for(timeout=WAIT_MS)  # at the field
    await admin.get_by_role("button", name="Save").click()
    await save_screenshot(admin, screenshots, "routes-form-error")
    assert [r["id"] for r in gateway.manager.router.routes] == ["hot"]
    assert gateway.manager.router.routes[0]["condition"] == "value > 20"  # the old table stays

    await condition.fill("value > 30")
    async with asyncio.timeout(5):
        while await error.inner_text():  # the good condition clears the error
            await asyncio.sleep(0.05)
    await admin.get_by_test_id("route-transform").fill("scale(2)")
    await admin.get_by_test_id("sample-value").fill("40")
    await admin.get_by_role("button", name="Test").click()
    result = admin.get_by_test_id("route-test-result")
    await result.filter(has_text="would send 80 to calc.hot").wait_for(timeout=WAIT_MS)
    await admin.get_by_test_id("sample-value").fill("10")
    await admin.get_by_role("button", name="Test").click()
    await result.filter(has_text="condition false").wait_for(timeout=WAIT_MS)
    assert gateway.manager.router.data.get("calc.hot") is None  # nothing was sent

    await admin.get_by_role("button", name="Save").click()
    async with asyncio.timeout(5):
        while gateway.manager.router.routes[0].get("transform") != "scale(2)":
            await asyncio.sleep(0.05)
    written = json.loads((gateway.config_dir / "routing.json").read_text())
    assert written["routes"][0]["condition"] == "value > 30"
    await admin.get_by_test_id("toggle-hot").click()
    async with asyncio.timeout(5):
        while gateway.manager.router.routes[0].get("enabled", True):
            await asyncio.sleep(0.05)
    await table.get_by_text("disabled").wait_for(timeout=WAIT_MS)
    await admin.get_by_test_id("edit-hot").click()
    await save_screenshot(admin, screenshots, "routes")
    audit = await gateway.query_audit(action="routes_replace")
    assert audit and audit[0]["who"].startswith("token:")


async def test_logs_show_real_errors_filtered_and_the_overview(
    admin: Any, gateway: Gateway, screenshots: Path
) -> None:
    """Test that the closed port's connect errors are listed, filtered and counted."""
    async with asyncio.timeout(10):
        while not await gateway.query_events(connection_id="dev_down", level="error"):
            await asyncio.sleep(0.1)
    await admin.goto(url_of(gateway, "/logs?connection=dev_down"))
    rows = admin.get_by_test_id("log-row")
    await rows.first.wait_for(timeout=WAIT_MS)
    assert all("dev_down" in t for t in await rows.all_inner_texts())
    overview = admin.get_by_test_id("log-overview")
    await overview.filter(has_text="dev_down").wait_for(timeout=WAIT_MS)
    await save_screenshot(admin, screenshots, "logs")
    await admin.get_by_test_id("log-connection").click()
    await admin.get_by_role("option", name="dev_a", exact=True).click()
    await admin.get_by_test_id("log-note").filter(has_text="page 1").wait_for(timeout=WAIT_MS)
    async with asyncio.timeout(5):
        while any("dev_down" in t for t in await rows.all_inner_texts()):
            await asyncio.sleep(0.1)


async def test_service_shows_the_gateway_and_reload_reports(
    admin: Any, gateway: Gateway, screenshots: Path
) -> None:
    """Test version, uptime, bridge and resources, and that Reload re-reads the folder."""
    from edgelink import __version__

    await admin.goto(url_of(gateway, "/service"))
    await (
        admin.get_by_test_id("service-version")
        .filter(has_text=__version__)
        .wait_for(timeout=WAIT_MS)
    )
    await admin.get_by_test_id("service-bridge").filter(has_text="off").wait_for(timeout=WAIT_MS)
    await admin.get_by_test_id("service-memory").filter(has_text="MB").wait_for(timeout=WAIT_MS)
    before = gateway.last_reload
    await admin.get_by_role("button", name="Reload").click()
    await (
        admin.get_by_test_id("service-reload-result")
        .filter(has_text="reloaded")
        .wait_for(timeout=WAIT_MS)
    )
    assert gateway.last_reload is not before
    await save_screenshot(admin, screenshots, "service")
