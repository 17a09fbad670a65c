"""The web UI in a real browser: login, the instances page, actions, panic, hot reload.

One gateway (simulated PING/PONG TCP devices on loopback, the UI on a free
port) and one headless chromium for the module; each test opens its own
browser context (its own cookies). Chromium is the system's, never one from
``playwright install``; in CI (``CI=true``) a missing chromium fails the tests,
elsewhere they are skipped with the reason (`browserkit.require_browser`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from browserkit import TOKEN, USER, USER_PASSWORD, require_browser, save_screenshot, write_folder

from edgelink.api.server import ApiServer
from edgelink.service.gateway import Gateway
from edgelink.testing import eventually as _eventually
from edgelink.testing.peers import PingPongPeer

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: How long a browser waits for something the page must show, ms.
WAIT_MS = 10_000


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(
    tmp_path_factory: pytest.TempPathFactory, peers: list[PingPongPeer]
) -> AsyncIterator[Gateway]:
    require_browser()
    from edgelink.ui import mount_ui

    folder = tmp_path_factory.mktemp("ui-gateway")
    write_folder(
        folder, {"dev_a": peers[0].port, "dev_b": peers[1].port, "dev_down": closed_port()}
    )
    gw = Gateway(folder, watch=False)
    await gw.start()
    await ApiServer(gw, port=0, mounts=[mount_ui]).start()
    try:
        for cid in ("dev_a", "dev_b"):
            await gw.manager.wait_for_state(cid, "connected", timeout=5)
        yield gw
    finally:
        await gw.stop()


def url_of(gw: Gateway, path: str = "/") -> str:
    assert gw.api_address is not None
    host, port = gw.api_address
    return f"http://{host}:{port}{path}"


@pytest_asyncio.fixture(loop_scope="module")
async def anon(browser: Any, gateway: Gateway) -> AsyncIterator[Any]:
    """A page in a fresh browser context (no cookies)."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    yield page
    await context.close()


async def log_in(page: Any, gw: Gateway, token: str = TOKEN, user: str = "") -> None:
    await page.goto(url_of(gw, "/login"))
    await page.get_by_label("User").fill(user)
    await page.get_by_label("Token").fill(token)
    await page.get_by_role("button", name="Log in").click()


@pytest_asyncio.fixture(loop_scope="module")
async def admin(anon: Any, gateway: Gateway) -> Any:
    """A page logged in with the token, on the instances page."""
    await log_in(anon, gateway)
    await anon.wait_for_url(url_of(gateway, "/"), timeout=WAIT_MS)
    await anon.get_by_test_id("card-dev_a").wait_for(timeout=WAIT_MS)
    return anon


#: Waits a little shorter here than the kit's default.
eventually = functools.partial(_eventually, timeout=6.0)


def card(page: Any, cid: str) -> Any:
    return page.get_by_test_id(f"card-{cid}")


async def card_shows(page: Any, cid: str, field: str, text: str) -> None:
    """Wait until a card's field (``state``, ``badge``...) reads ``text``."""
    await card(page, cid).get_by_test_id(field).filter(has_text=text).wait_for(timeout=WAIT_MS)


async def test_every_page_needs_a_login_and_a_wrong_token_is_refused(
    anon: Any, gateway: Gateway, screenshots: Path
) -> None:
    """Test the redirect to /login, a refused token, the cookie, logout."""
    await anon.goto(url_of(gateway, "/"))
    assert anon.url == url_of(gateway, "/login")
    await log_in(anon, gateway, token="not-the-token-0123456789")
    await anon.get_by_text("Wrong token").wait_for(timeout=WAIT_MS)
    assert anon.url == url_of(gateway, "/login")
    await save_screenshot(anon, screenshots, "login")
    await log_in(anon, gateway)
    await anon.wait_for_url(url_of(gateway, "/"), timeout=WAIT_MS)
    (cookie,) = [c for c in await anon.context.cookies() if c["name"].startswith("edgelink_")]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert 11 * 3600 < cookie["expires"] - time.time() <= 12 * 3600
    assert TOKEN not in await anon.content()
    await anon.get_by_role("button", name="Log out").click()
    await anon.wait_for_url(url_of(gateway, "/login"), timeout=WAIT_MS)
    await anon.goto(url_of(gateway, "/"))
    assert anon.url == url_of(gateway, "/login")


async def test_repeated_wrong_tokens_are_slowed_down(
    anon: Any, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Test that after three failures the page asks to wait and checks nothing meanwhile."""
    from edgelink.ui.context import UiContext

    # The throttle's clock stands still until the test moves it: a slow machine
    # cannot let the 1-s wait run out before the "too soon" attempt.
    ctx = UiContext.of(gateway)
    now = [time.time()]
    monkeypatch.setattr(ctx, "clock", lambda: now[0])
    message = anon.locator(".text-negative")
    for attempt in range(4):
        await log_in(anon, gateway, token=f"wrong-token-{attempt:02d}-0123456789")
        await message.filter(has_text="Wrong token").wait_for(timeout=WAIT_MS)
    assert "next attempt in 1 s" in await message.inner_text()
    await log_in(anon, gateway)  # the right token, but too soon: not even checked
    await message.filter(has_text="Too many failed attempts").wait_for(timeout=WAIT_MS)
    assert anon.url == url_of(gateway, "/login")
    now[0] += 1.1  # the wait asked for; then the right token gets in (and resets)
    await log_in(anon, gateway)
    await anon.wait_for_url(url_of(gateway, "/"), timeout=WAIT_MS)


async def test_the_socket_checks_origin_and_session(admin: Any, gateway: Gateway) -> None:
    """Test that NiceGUI's socket refuses a foreign Origin and a page's id without its cookie."""
    client_id = await admin.evaluate("window.clientId")
    jar = "; ".join(f"{c['name']}={c['value']}" for c in await admin.context.cookies())
    cookies = {"Cookie": jar}
    socket_url = url_of(gateway, "/_nicegui_ws/socket.io/")
    query = {"client_id": client_id, "EIO": "4", "transport": "polling"}
    async with httpx.AsyncClient(timeout=5) as http:
        ok = await http.get(socket_url, params=query, headers=cookies)
        assert ok.status_code == 200
        no_cookie = await http.get(socket_url, params=query)
        assert no_cookie.status_code == 403
        foreign = await http.get(
            socket_url, params=query, headers={**cookies, "Origin": "http://evil.example"}
        )
        assert foreign.status_code == 403
        unknown = await http.get(
            socket_url, params={**query, "client_id": "made-up"}, headers=cookies
        )
        assert unknown.status_code == 403


async def test_cards_show_the_real_states(admin: Any, gateway: Gateway, screenshots: Path) -> None:
    """Test that each card's state and badge are the connection's own, a dead port's too."""
    from edgelink.ui.pages.instances import badge_of

    async def shows_real_state(cid: str) -> bool:
        state = await card(admin, cid).get_by_test_id("state").inner_text()
        badge = await card(admin, cid).get_by_test_id("badge").inner_text()
        status = gateway.connection(cid)
        return bool(state == status["status"] and badge == badge_of(status))

    for cid in ("dev_a", "dev_b", "dev_down"):
        await eventually(functools.partial(shows_real_state, cid))
    await card_shows(admin, "dev_a", "badge", "running")
    assert gateway.connection("dev_down")["status"] != "connected"
    assert await card(admin, "dev_down").get_by_test_id("badge").inner_text() in (
        "starting",
        "error",
    )
    counts = admin.locator("header").get_by_text("connected")
    assert "2 connected" in await counts.first.inner_text()
    await admin.get_by_label("Filter").fill("dev_d")
    await card(admin, "dev_a").wait_for(state="hidden", timeout=WAIT_MS)
    assert await card(admin, "dev_down").is_visible()
    await admin.get_by_label("Filter").fill("")
    await card(admin, "dev_a").wait_for(timeout=WAIT_MS)
    await save_screenshot(admin, screenshots, "instances")


async def test_a_killed_device_goes_reconnecting_and_back(
    admin: Any, gateway: Gateway, peers: list[PingPongPeer]
) -> None:
    """Test that a card follows its device going away and coming back."""
    await card_shows(admin, "dev_b", "state", "connected")
    await peers[1].stop()
    try:
        await card_shows(admin, "dev_b", "badge", "starting")
        assert gateway.connection("dev_b")["status"] != "connected"
    finally:
        await peers[1].start()
    await card_shows(admin, "dev_b", "state", "connected")
    await card_shows(admin, "dev_b", "badge", "running")


async def test_stop_and_start_from_a_card_are_audited_with_who(
    admin: Any, gateway: Gateway
) -> None:
    """Test the Stop and Start buttons: the gateway's action, one audit record each, the token."""
    before = len(await gateway.query_audit(limit=100))
    await card(admin, "dev_a").get_by_role("button", name="Stop", exact=True).click()
    await card_shows(admin, "dev_a", "badge", "stopped")
    assert gateway.connection("dev_a")["desired"] == "stopped"
    await card(admin, "dev_a").get_by_role("button", name="Start", exact=True).click()
    await card_shows(admin, "dev_a", "badge", "running")
    records = await eventually(lambda: _audit_after(gateway, before, 2), timeout=5.0)
    assert [r["action"] for r in records] == ["start", "stop"]
    assert {r["who"] for r in records} == {"token:" + _fingerprint(TOKEN)}
    assert {r["target"] for r in records} == {"dev_a"}


async def test_a_user_logs_in_with_a_password_and_is_audited_by_name(
    anon: Any, gateway: Gateway
) -> None:
    """Test a ui.users login: a wrong password refused, the right one in, actions as user:alice."""
    await log_in(anon, gateway, token="not-her-password", user=USER)
    await anon.get_by_text("Wrong user or password").wait_for(timeout=WAIT_MS)
    await log_in(anon, gateway, token=USER_PASSWORD, user=USER)
    await anon.wait_for_url(url_of(gateway, "/"), timeout=WAIT_MS)
    await anon.locator("header").get_by_text(USER, exact=True).wait_for(timeout=WAIT_MS)
    before = len(await gateway.query_audit(limit=100))
    await card(anon, "dev_b").get_by_role("button", name="Restart", exact=True).click()
    (record,) = await eventually(lambda: _audit_after(gateway, before, 1))
    assert (record["who"], record["action"], record["target"]) == ("user:alice", "restart", "dev_b")
    await card_shows(anon, "dev_b", "badge", "running")


async def _audit_after(gateway: Gateway, before: int, count: int) -> list[dict[str, Any]] | None:
    records = await gateway.query_audit(limit=100)
    return records[: len(records) - before] if len(records) - before >= count else None


def _fingerprint(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()[:8]


async def test_panic_countdown_cancel_panic_now_banner_and_recover(
    admin: Any, gateway: Gateway, screenshots: Path
) -> None:
    """Test the Panic dialog (countdown, Cancel, Panic now), the banner, refusals, Recover."""
    await admin.get_by_role("button", name="Panic", exact=True).click()
    countdown = admin.get_by_text("Panic in")
    await countdown.filter(has_text="Panic in 5 s").wait_for(timeout=WAIT_MS)
    await countdown.filter(has_text="Panic in 4 s").wait_for(timeout=WAIT_MS)
    await save_screenshot(admin, screenshots, "panic-dialog")
    await admin.get_by_role("button", name="Cancel").click()
    await countdown.wait_for(state="hidden", timeout=WAIT_MS)
    await asyncio.sleep(0.6)
    assert not gateway.panicked

    await admin.get_by_role("button", name="Panic", exact=True).click()
    await admin.get_by_role("button", name="Panic now").click()
    banner = admin.get_by_text("PANIC since")
    await banner.wait_for(timeout=WAIT_MS)
    assert gateway.panicked
    assert f"by token:{_fingerprint(TOKEN)}" in await banner.inner_text()
    await card_shows(admin, "dev_a", "badge", "stopped")
    await card(admin, "dev_a").get_by_role("button", name="Start", exact=True).click()
    await admin.get_by_text("in panic").first.wait_for(timeout=WAIT_MS)
    assert gateway.connection("dev_a")["desired"] == "stopped"
    await save_screenshot(admin, screenshots, "panic-banner")

    await admin.get_by_role("button", name="Recover").click()
    await banner.wait_for(state="hidden", timeout=WAIT_MS)
    assert not gateway.panicked
    await card_shows(admin, "dev_a", "badge", "running")


async def test_the_countdown_triggers_panic_by_itself(admin: Any, gateway: Gateway) -> None:
    """Test that the dialog left alone triggers panic after 5 s."""
    await admin.get_by_role("button", name="Panic", exact=True).click()
    started = time.monotonic()
    await admin.get_by_text("PANIC since").wait_for(timeout=8000)
    assert 4.5 <= time.monotonic() - started < 7.5
    assert gateway.panicked
    await admin.get_by_role("button", name="Recover").click()
    await admin.get_by_text("PANIC since").wait_for(state="hidden", timeout=WAIT_MS)
    assert not gateway.panicked


async def test_cards_appear_and_disappear_on_reload(
    admin: Any, gateway: Gateway, peers: list[PingPongPeer]
) -> None:
    """Test that a connection added or removed by a reload gets or loses its card."""
    folder = gateway.config_dir
    original = (folder / "connections.json").read_text()
    document = json.loads(original)
    document["connections"]["dev_new"] = {
        "type": "tcp",
        "config": {"host": "127.0.0.1", "port": peers[0].port},
    }
    (folder / "connections.json").write_text(json.dumps(document))
    try:
        await gateway.reload()
        await card_shows(admin, "dev_new", "badge", "running")
    finally:
        (folder / "connections.json").write_text(original)
        await gateway.reload()
    await card(admin, "dev_new").wait_for(state="detached", timeout=WAIT_MS)
