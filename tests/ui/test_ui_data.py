"""The Data and MQTT topics pages in a real browser, with real peers.

One gateway for the module: a simulated Modbus device (pymodbus server on
loopback) polled as ``inv``, and an ``mqtt`` connection ``broker`` to a
private mosquitto on a free port, subscribed to ``nodered/#``; messages are
published with a plain paho client. One headless chromium (the system's;
see `browserkit.require_browser`), a fresh browser context per test.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from browserkit import FAST, TOKEN, require_browser, save_screenshot

from edgelink.api.server import ApiServer
from edgelink.service.audit import token_identity
from edgelink.service.gateway import Gateway
from edgelink.sim.modbus import ModbusDevice, ModbusServer
from edgelink.testing.mosquitto import MosquittoBroker

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: How long a browser waits for something the page must show, ms.
WAIT_MS = 10_000


@pytest.fixture(scope="module")
def broker() -> Any:
    require_browser()
    with MosquittoBroker() as b:
        yield b


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def modbus() -> AsyncIterator[ModbusServer]:
    dev = ModbusDevice(1, registers=16, bits=8)
    dev.hr[0] = 7
    dev.ir[0] = 100
    async with ModbusServer([dev]) as server:
        yield server


@pytest.fixture(scope="module")
def device(modbus: ModbusServer) -> ModbusDevice:
    return modbus.device(1)


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
    return tmp_path_factory.mktemp("ui-data-screenshots")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(
    tmp_path_factory: pytest.TempPathFactory, broker: MosquittoBroker, modbus: ModbusServer
) -> AsyncIterator[Gateway]:
    from edgelink.ui import mount_ui

    folder = tmp_path_factory.mktemp("ui-data-gateway")
    connections = {
        "inv": {
            "type": "modbus_tcp",
            "name": "inverter",
            "config": {"host": "127.0.0.1", "port": modbus.port, "unit_id": 1},
            "poll": [{"tags": ["hr:0", "ir:0"], "interval": 0.1}],
        },
        "broker": {
            "type": "mqtt",
            "name": "local broker",
            "config": {
                "host": "127.0.0.1",
                "port": broker.port,
                "qos": 1,
                "subscribe": ["nodered/#"],
            },
            "settings": {"spam_max_pps": None},
        },
    }
    (folder / "connections.json").write_text(
        json.dumps({"settings": FAST, "connections": connections})
    )
    (folder / "edgelink.json").write_text(
        json.dumps(
            {
                "api": {"token": TOKEN},
                "storage": {"path": "logs/system.db"},
                "ui": {"name": "ui-data-test"},
            }
        )
    )
    gw = Gateway(folder, watch=False)
    await gw.start()
    await ApiServer(gw, port=0, mounts=[mount_ui]).start()
    try:
        for cid in ("inv", "broker"):
            await gw.manager.wait_for_state(cid, "connected", timeout=10)
        yield gw
    finally:
        await gw.stop()


def url_of(gw: Gateway, path: str = "/") -> str:
    assert gw.api_address is not None
    host, port = gw.api_address
    return f"http://{host}:{port}{path}"


@pytest_asyncio.fixture(loop_scope="module")
async def admin(browser: Any, gateway: Gateway) -> AsyncIterator[Any]:
    """A page of a fresh browser context, logged in with the token."""
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    await page.goto(url_of(gateway, "/login"))
    await page.get_by_label("Token").fill(TOKEN)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url(url_of(gateway, "/"), timeout=WAIT_MS)
    yield page
    await context.close()


async def publish(broker: MosquittoBroker, topic: str, payload: str) -> None:
    await asyncio.to_thread(broker.publish, topic, payload)


def tree_node(page: Any, label: str) -> Any:
    """The header of the tree node whose own label is ``label``."""
    return page.locator(".q-tree__node-header").filter(has=page.get_by_text(label, exact=True))


async def test_data_page_shows_live_modbus_values_and_a_write_round_trips(
    admin: Any, gateway: Gateway, device: ModbusDevice, screenshots: Path
) -> None:
    """Test the tree, live values from the device, the chart, and Write with its answer."""
    await admin.goto(url_of(gateway, "/data"))
    await tree_node(admin, "inv").click()
    value = admin.get_by_test_id("value-inv.ir:0")
    await value.filter(has_text="100").wait_for(timeout=WAIT_MS)
    device.ir[0] = 123  # the device changes: the page follows by itself
    await value.filter(has_text="123").wait_for(timeout=WAIT_MS)
    assert await admin.get_by_test_id("point-inv.ir:0").is_visible()

    await admin.get_by_test_id("point-inv.ir:0").click()
    await admin.get_by_test_id("point-title").filter(has_text="inv.ir:0").wait_for(timeout=WAIT_MS)
    assert not await admin.get_by_role("button", name="Write", exact=True).is_visible()  # read-only

    await admin.get_by_test_id("point-inv.hr:0").click()
    await admin.get_by_test_id("point-title").filter(has_text="inv.hr:0").wait_for(timeout=WAIT_MS)
    await admin.get_by_test_id("detail-quality").filter(has_text="good").wait_for(timeout=WAIT_MS)
    await admin.locator(".nicegui-echart canvas").first.wait_for(timeout=WAIT_MS)
    await admin.get_by_label("Value").fill("42")
    await admin.get_by_role("button", name="Write", exact=True).click()
    await admin.get_by_text("Write 42 (int) to inv.hr:0?").wait_for(timeout=WAIT_MS)
    await admin.get_by_role("button", name="Confirm").click()
    answer = admin.get_by_test_id("write-answer")
    await answer.filter(has_text="read back: 42").wait_for(timeout=WAIT_MS)
    assert (await answer.inner_text()).startswith("OK: the device took 42")
    assert device.hr[0] == 42
    await admin.get_by_test_id("value-inv.hr:0").filter(has_text="42").wait_for(timeout=WAIT_MS)
    (record,) = [r for r in await gateway.query_audit(limit=20) if r["action"] == "write"]
    assert (record["who"], record["target"], record["result"]) == (
        token_identity(TOKEN),
        "inv.hr:0",
        "ok",
    )
    await save_screenshot(admin, screenshots, "data")

    # Cancel writes nothing; a value the register cannot hold is refused with the reason.
    await admin.get_by_label("Value").fill("7")
    await admin.get_by_role("button", name="Write", exact=True).click()
    await admin.get_by_role("button", name="Cancel").click()
    await admin.get_by_label("Value").fill("70000")
    await admin.get_by_role("button", name="Write", exact=True).click()
    await admin.get_by_role("button", name="Confirm").click()
    await answer.filter(has_text="refused").wait_for(timeout=WAIT_MS)
    assert device.hr[0] == 42


async def test_mqtt_tree_shows_levels_and_subscribe_adds_a_filter(
    admin: Any, gateway: Gateway, broker: MosquittoBroker, screenshots: Path
) -> None:
    """Test the topic levels of a real broker, live; Subscribe and Unsubscribe through the ledger."""
    await publish(broker, "nodered/flows/temp", "21.5")
    await publish(broker, "nodered/flows/hum", "40")
    await admin.goto(url_of(gateway, "/mqtt"))
    await admin.get_by_test_id("sub-nodered/#").wait_for(timeout=WAIT_MS)
    assert await admin.get_by_test_id("sub-origin-nodered/#").inner_text() == "config"
    await (
        admin.get_by_test_id("sub-state-nodered/#")
        .filter(has_text="confirmed")
        .wait_for(timeout=WAIT_MS)
    )
    await tree_node(admin, "nodered").click()
    await tree_node(admin, "flows").click()
    await tree_node(admin, "temp").wait_for(timeout=WAIT_MS)
    await tree_node(admin, "hum").wait_for(timeout=WAIT_MS)
    await (
        admin.get_by_test_id("value-broker.nodered/flows/temp")
        .filter(has_text="21.5")
        .wait_for(timeout=WAIT_MS)
    )
    await publish(broker, "nodered/flows/pressure", "1013")  # a new topic shows up live
    await tree_node(admin, "pressure").wait_for(timeout=WAIT_MS)
    await publish(broker, "nodered/flows/temp", "22.5")
    await (
        admin.get_by_test_id("value-broker.nodered/flows/temp")
        .filter(has_text="22.5")
        .wait_for(timeout=WAIT_MS)
    )
    await admin.get_by_test_id("point-broker.nodered/flows/temp").click()
    await (
        admin.get_by_test_id("point-title")
        .filter(has_text="broker.nodered/flows/temp")
        .wait_for(timeout=WAIT_MS)
    )

    before = len(await gateway.query_audit(limit=100))
    await admin.get_by_label("Topic filter").fill("plant/+/power")
    await admin.get_by_role("button", name="Subscribe", exact=True).click()
    await (
        admin.get_by_test_id("sub-origin-plant/+/power")
        .filter(has_text="run time")
        .wait_for(timeout=WAIT_MS)
    )
    await (
        admin.get_by_test_id("sub-state-plant/+/power")
        .filter(has_text="confirmed")
        .wait_for(timeout=WAIT_MS)
    )
    await publish(broker, "plant/4/power", "1500")
    await tree_node(admin, "plant").wait_for(timeout=WAIT_MS)
    assert gateway.data_point("broker.plant/4/power") is not None
    await save_screenshot(admin, screenshots, "mqtt")

    await admin.get_by_label("Topic filter").fill("bad/#/filter")
    await admin.get_by_role("button", name="Subscribe", exact=True).click()
    await admin.get_by_text("not subscribed").wait_for(timeout=WAIT_MS)

    await admin.get_by_test_id("unsub-plant/+/power").click()
    await admin.get_by_test_id("sub-plant/+/power").wait_for(state="detached", timeout=WAIT_MS)
    assert [e["key"] for e in gateway.subscriptions("broker")] == ["nodered/#"]
    records = await gateway.query_audit(limit=100)
    records = records[: len(records) - before]
    actions = [(r["action"], r["result"], r["params"]["filter"]) for r in records]
    assert ("subscribe", "ok", "plant/+/power") in actions
    assert ("subscribe", "error", "bad/#/filter") in actions
    assert ("unsubscribe", "ok", "plant/+/power") in actions
    assert {r["who"] for r in records} == {token_identity(TOKEN)}
