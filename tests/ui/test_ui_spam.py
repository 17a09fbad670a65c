"""The spam banner and the instances page's resources, sort and filter, in a real browser.

One gateway for the module: two PING/PONG devices on loopback and one that
floods (a real peer pushing ``tag=value`` lines over its socket, health checks
off so no PING waits for a PONG in the flood), the UI on a free port, one
headless system chromium (`browserkit.require_browser`).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from browserkit import FAST, TOKEN, require_browser, save_screenshot

from edgelink.api.server import ApiServer
from edgelink.service.gateway import Gateway
from edgelink.testing import eventually as _eventually
from edgelink.testing.peers import PingPongPeer

pytestmark = pytest.mark.asyncio(loop_scope="module")

WAIT_MS = 10_000
WHO = "token:" + hashlib.sha256(TOKEN.encode()).hexdigest()[:8]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def peers() -> AsyncIterator[dict[str, PingPongPeer]]:
    started = {cid: PingPongPeer(values={"temperature": "21.5"}) for cid in ("alpha", "beta")}
    started["flood"] = PingPongPeer()
    for peer in started.values():
        await peer.start()
    yield started
    for peer in started.values():
        await peer.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=shutil.which("chromium"))
        yield launched
        await launched.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ui-spam-screenshots")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(
    tmp_path_factory: pytest.TempPathFactory, peers: dict[str, PingPongPeer]
) -> AsyncIterator[Gateway]:
    require_browser()
    from edgelink.ui import mount_ui

    folder = tmp_path_factory.mktemp("ui-spam-gateway")
    connections: dict[str, Any] = {
        cid: {
            "type": "tcp",
            "name": f"device {cid}",
            "config": {"host": "127.0.0.1", "port": peer.port},
        }
        for cid, peer in peers.items()
    }
    connections["flood"]["settings"] = {"spam_max_pps": 50, "health_check_interval": None}
    # Never up: its failed connects count as errors (the error-count warning).
    connections["down"] = {"type": "tcp", "config": {"host": "127.0.0.1", "port": closed_port()}}
    (folder / "connections.json").write_text(
        json.dumps({"settings": FAST, "connections": connections}, indent=2)
    )
    (folder / "edgelink.json").write_text(
        json.dumps(
            {
                "api": {"token": TOKEN},
                "storage": {"path": "logs/system.db"},
                # Low enough that a flood of datapoints crosses the error threshold.
                "ui": {"name": "ui-spam-test", "warn": {"error_count": 1}},
            }
        )
    )
    gw = Gateway(folder, watch=False)
    await gw.start()
    await ApiServer(gw, port=0, mounts=[mount_ui]).start()
    try:
        for cid in peers:
            await gw.manager.wait_for_state(cid, "connected", timeout=5)
        yield gw
    finally:
        await gw.stop()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def url_of(gw: Gateway, path: str = "/") -> str:
    assert gw.api_address is not None
    host, port = gw.api_address
    return f"http://{host}:{port}{path}"


@pytest_asyncio.fixture(loop_scope="module")
async def admin(browser: Any, gateway: Gateway) -> AsyncIterator[Any]:
    """A page logged in with the token, on the instances page."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    await page.goto(url_of(gateway, "/login"))
    await page.get_by_label("Token").fill(TOKEN)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url(url_of(gateway, "/"), timeout=WAIT_MS)
    await page.get_by_test_id("card-alpha").wait_for(timeout=WAIT_MS)
    yield page
    await context.close()


#: Waits a little shorter here than the kit's default.
eventually = functools.partial(_eventually, timeout=6.0)


async def flood(gateway: Gateway, peer: PingPongPeer) -> None:
    """Have the flooding device send 400 datapoints at once; wait for its suspension."""
    assert peer.push([f"x={i}" for i in range(400)]) == 1
    await gateway.manager.wait_for_state("flood", "suspended", timeout=5)


async def test_a_flood_shows_the_banner_and_reactivate_brings_it_back(
    admin: Any, gateway: Gateway, peers: dict[str, PingPongPeer], screenshots: Path
) -> None:
    """Test the red banner: which connection, spam protection, the rate, Logs, Reactivate."""
    banner = admin.get_by_test_id("spam-flood")
    assert await banner.count() == 0
    await flood(gateway, peers["flood"])
    await banner.wait_for(timeout=WAIT_MS)
    text = await banner.inner_text()
    assert "flood (device flood) suspended by spam protection (SUSPENDED_BY_SPAM)" in text
    assert "over the threshold of 50" in text
    assert "last activity 20" in text
    (entry,) = gateway.spam_suspensions()
    assert entry["status"] == "SUSPENDED_BY_SPAM"
    assert gateway.manager.get_status("flood")["status_code"] == "SUSPENDED_BY_SPAM"
    assert f"{entry['rate_pps']:,.0f} datapoints/s" in text
    logs = banner.get_by_role("link", name="Logs")
    assert await logs.get_attribute("href") == "/logs?connection=flood"
    await save_screenshot(admin, screenshots, "spam-banner")

    # The banner is on every page (the frame): also on a second tab.
    second = await admin.context.new_page()
    await second.goto(url_of(gateway, "/"))
    await second.get_by_test_id("spam-flood").wait_for(timeout=WAIT_MS)
    await second.close()

    before = len(await gateway.query_audit(limit=100))
    await banner.get_by_role("button", name="Reactivate").click()
    await banner.wait_for(state="detached", timeout=WAIT_MS)
    await gateway.manager.wait_for_state("flood", "connected", timeout=5)
    records = await gateway.query_audit(limit=100)
    (record,) = records[: len(records) - before]
    assert (record["who"], record["action"], record["target"]) == (WHO, "resume", "flood")


async def test_adjust_threshold_shows_a_bad_value_next_to_the_field_and_saves_a_good_one(
    admin: Any, gateway: Gateway, peers: dict[str, PingPongPeer], screenshots: Path
) -> None:
    """Test the dialog: -5 and text refused beside the field, file unchanged; 1000 saved live."""
    file = gateway.config_dir / "connections.json"
    before = file.read_bytes()
    await flood(gateway, peers["flood"])
    banner = admin.get_by_test_id("spam-flood")
    await banner.wait_for(timeout=WAIT_MS)
    await banner.get_by_role("button", name="Adjust threshold").click()
    field = admin.get_by_label("spam_max_pps (datapoints/s)")
    await field.wait_for(timeout=WAIT_MS)
    assert await field.input_value() == "50"
    for bad, why in (("-5", "greater than 0"), ("lots", "valid number")):
        await field.fill(bad)
        await admin.get_by_role("button", name="Save").click()
        error = admin.get_by_text("connections.flood.settings.spam_max_pps: Input should be")
        await error.filter(has_text=why).wait_for(timeout=WAIT_MS)
        assert file.read_bytes() == before
        assert gateway.manager.get_spec("flood").settings.spam_max_pps == 50
    await save_screenshot(admin, screenshots, "spam-threshold-error")
    await field.fill("1000")
    await admin.get_by_role("button", name="Save").click()
    await field.wait_for(state="hidden", timeout=WAIT_MS)
    await banner.filter(has_text="threshold now 1,000").wait_for(timeout=WAIT_MS)
    written = json.loads(file.read_text())
    assert written["connections"]["flood"]["settings"]["spam_max_pps"] == 1000
    assert gateway.manager.get_spec("flood").settings.spam_max_pps == 1000
    (record,) = (await gateway.query_audit(limit=1))[:1]
    assert (record["who"], record["action"], record["result"]) == (WHO, "set_setting", "ok")
    # Still suspended until a person reactivates it; then 400 at once pass the new threshold.
    assert gateway.connection("flood")["status"] == "suspended"
    await banner.get_by_role("button", name="Reactivate").click()
    await banner.wait_for(state="detached", timeout=WAIT_MS)
    await gateway.manager.wait_for_state("flood", "connected", timeout=5)
    peers["flood"].push([f"x={i}" for i in range(400)])
    await eventually(lambda: getattr(gateway.data_point("flood.x"), "value", None) == "399")
    assert gateway.connection("flood")["status"] == "connected"


async def card_order(page: Any) -> list[str]:
    """The connection ids of the visible cards, in page order."""
    ids: list[str] = await page.locator('[data-testid^="card-"]:visible').evaluate_all(
        "els => els.map(e => e.dataset.testid.slice(5))"
    )
    return ids


async def choose(page: Any, label: str, option: str) -> None:
    await page.get_by_label(label).click()
    await page.get_by_role("option", name=option, exact=True).click()


async def test_instances_show_resources_warn_and_sort_by_cpu_and_filter(
    admin: Any, gateway: Gateway, peers: dict[str, PingPongPeer], screenshots: Path
) -> None:
    """Test the CPU and RAM figures, the error warning, sort by CPU and RAM, filters."""
    await gateway.set_connection_setting("flood", "spam_max_pps", None, who=WHO)
    if gateway.connection("flood")["status"] != "connected":
        await gateway.instance_action("flood", "resume", who=WHO)
        await gateway.manager.wait_for_state("flood", "connected", timeout=5)

    async def keep_flooding() -> None:
        while True:
            peers["flood"].push([f"x={i}" for i in range(300)])
            await asyncio.sleep(0.05)

    flooding = asyncio.create_task(keep_flooding())
    try:
        await choose(admin, "Sort by", "CPU")
        await eventually(lambda: _first_is(admin, "flood"), timeout=10.0)
        cpu = await admin.get_by_test_id("card-flood").get_by_test_id("cpu").inner_text()
        assert cpu.startswith("CPU ") and float(cpu.split()[1]) > 0, cpu
    finally:
        flooding.cancel()
    figures = {f["connection_id"]: f for f in gateway.instance_resources()["instances"]}
    assert figures["flood"]["cpu_seconds"] > figures["alpha"]["cpu_seconds"]
    ram = await admin.get_by_test_id("card-alpha").get_by_test_id("ram").inner_text()
    assert "in the gateway:" in ram and "MB" in ram
    # ui.warn.error_count is 1: the device that never answers warns, a healthy one does not.
    warning = admin.get_by_test_id("card-down").get_by_test_id("warning")
    await warning.filter(has_text="errors ≥ 1").wait_for(timeout=WAIT_MS)
    assert not await admin.get_by_test_id("card-alpha").get_by_test_id("warning").is_visible()
    await save_screenshot(admin, screenshots, "instances-resources")

    # RAM is the process's for every in-process card: the sort falls back to the name.
    await choose(admin, "Sort by", "RAM")
    await eventually(lambda: _order_is(admin, ["alpha", "beta", "down", "flood"]))
    await choose(admin, "State", "running")
    await eventually(lambda: _order_is(admin, ["alpha", "beta", "flood"]))
    await admin.get_by_label("Filter").fill("be")
    await eventually(lambda: _order_is(admin, ["beta"]))
    await admin.get_by_label("Filter").fill("")
    await choose(admin, "State", "all")
    await choose(admin, "Sort by", "name")
    await eventually(lambda: _order_is(admin, ["alpha", "beta", "down", "flood"]))


async def _first_is(page: Any, cid: str) -> bool:
    order = await card_order(page)
    return bool(order) and order[0] == cid


async def _order_is(page: Any, ids: list[str]) -> bool:
    return await card_order(page) == ids
