"""The PLC symbols page in a real browser against the ADS test peer (127.0.0.1:48898).

The peer serves a symbol table like a TwinCAT runtime's (programs, global
variable lists, a structure); the page uploads it through the ``ads``
connection, filters, searches, shows the details and adds a symbol to the
polled tags, which then report.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from browserkit import (
    FAST,
    TOKEN,
    launched_chromium,
    log_in_with_token,
    require_browser,
    save_screenshot,
    url_of,
)

from edgelink.api.server import ApiServer
from edgelink.service.gateway import Gateway
from edgelink.testing.ads_peer import AdsPeer, port_in_use

pytestmark = pytest.mark.asyncio(loop_scope="module")

WAIT_MS = 10_000
SYMBOLS = [
    ("MAIN.fTemperature", "LREAL", 21.5, "boiler temperature"),
    ("MAIN.nCounter", "DINT", 7, "cycles"),
    ("MAIN.bPump", "BOOL", True, "pump on"),
    ("GVL_Plant.sName", "STRING(20)", "hall", "display name"),
    ("GVL_Plant.nSetpoint", "INT", 450, "setpoint in 0.1 degC"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Gateway, Path]]:
    require_browser()
    if port_in_use():
        pytest.skip("127.0.0.1:48898 is in use: the ADS tests need that fixed port")
    from edgelink.ui import mount_ui

    folder = tmp_path_factory.mktemp("ui-symbols")
    connections = {
        "plc": {
            "type": "ads",
            "config": {"ams_net_id": "127.0.0.1.1.1", "host": "127.0.0.1", "timeout": 0.5},
        }
    }
    (folder / "connections.json").write_text(
        json.dumps({"settings": FAST, "connections": connections})
    )
    (folder / "edgelink.json").write_text(
        json.dumps({"api": {"token": TOKEN}, "storage": {"path": "logs/system.db"}})
    )
    peer = AdsPeer()
    for name, type_name, value, comment in SYMBOLS:
        peer.add_symbol(name, type_name, value, comment=comment)
    async with peer:
        gw = Gateway(folder, watch=False)
        await gw.start()
        await ApiServer(gw, port=0, mounts=[mount_ui]).start()
        try:
            await gw.manager.wait_for_state("plc", "connected", timeout=5)
            yield gw, folder
        finally:
            await gw.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    async with launched_chromium() as launched:
        yield launched


async def test_tree_filters_and_types() -> None:
    """Test the tree of dotted names, the type groups and the search (no browser)."""
    from edgelink.ui.pages.symbols import base_type, symbol_tree

    table = [
        {"name": n, "type": t, "size": 1, "comment": c, "index_group": 1, "index_offset": i}
        for i, (n, t, _, c) in enumerate(SYMBOLS)
    ]
    nodes, shown = symbol_tree(table)
    assert shown == 5 and [n["id"] for n in nodes] == ["MAIN", "GVL_Plant"]
    assert nodes[0]["children"][0]["label"] == "fTemperature : LREAL"
    assert base_type("STRING(20)") == "STRING" and base_type("ARRAY [0..9] OF INT") == "ARRAY"
    assert symbol_tree(table, type_filter="STRING")[1] == 1
    assert symbol_tree(table, text="pump")[1] == 1  # the comment is searched too


async def test_symbols_are_browsed_and_one_is_polled(
    browser: Any, gateway: tuple[Gateway, Path], tmp_path: Path
) -> None:
    """Test that the peer's symbols show as a tree, filter by type, and Poll adds a reporting tag."""
    gw, folder = gateway
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    try:
        await log_in_with_token(page, gw)
        await page.goto(url_of(gw, "/symbols"))
        summary = page.get_by_test_id("symbols-summary")
        await summary.filter(has_text="5 of 5 symbols of plc").wait_for(timeout=WAIT_MS)
        tree = page.get_by_test_id("symbols-tree")
        await tree.get_by_text("MAIN", exact=True).wait_for(timeout=WAIT_MS)
        await tree.get_by_text("GVL_Plant", exact=True).wait_for(timeout=WAIT_MS)

        await page.get_by_label("Search").fill("setpoint")
        await summary.filter(has_text="1 of 5").wait_for(timeout=WAIT_MS)
        await tree.get_by_text("nSetpoint : INT").click()
        details = page.get_by_test_id("symbol-details")
        await details.filter(has_text="index group: 0x").wait_for(timeout=WAIT_MS)
        assert "setpoint in 0.1 degC" in await details.inner_text()
        await save_screenshot(page, tmp_path, "symbols")

        await page.get_by_test_id("poll-symbol").click()
        async with asyncio.timeout(10):
            while gw.data_point("plc.GVL_Plant.nSetpoint") is None:
                await asyncio.sleep(0.05)
        assert gw.data_point("plc.GVL_Plant.nSetpoint").value == 450  # type: ignore[union-attr]
        saved = json.loads((folder / "connections.json").read_text())["connections"]["plc"]
        assert saved["poll"] == [{"tags": ["GVL_Plant.nSetpoint"], "interval": 1.0}]
        audit = await gw.query_audit(action="poll_add")
        assert audit and audit[0]["target"] == "plc"
    finally:
        await context.close()
