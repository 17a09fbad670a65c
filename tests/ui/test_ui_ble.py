"""The Bluetooth page in a real browser: devices in range with RSSI and identification, Connect.

The radio is simulated (`edgelink.testing.ble.FakeRadio`; there is no adapter
here); the gateway, the UI and chromium are real.
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
    launched_chromium,
    log_in_with_token,
    require_browser,
    save_screenshot,
    url_of,
    write_folder,
)

from edgelink.api.server import ApiServer
from edgelink.service.gateway import Gateway
from edgelink.sim.bms import BmsModel
from edgelink.testing.ble import BmsPeripheral, FakePeripheral, FakeRadio

pytestmark = pytest.mark.asyncio(loop_scope="module")

WAIT_MS = 10_000
DALY = "C0:00:00:00:00:41"
OTHER = "C0:00:00:00:00:42"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Gateway, Path]]:
    require_browser()
    from edgelink.ui import mount_ui

    radio = FakeRadio(advert_interval=0.05)
    radio.add(BmsPeripheral(DALY, "daly", BmsModel(cells=8, animate=False)))
    radio.add(FakePeripheral(OTHER, "Kettle", rssi=-88, service="180f"))
    folder = tmp_path_factory.mktemp("ui-ble")
    write_folder(folder, {})
    with radio.installed():
        async with radio.running():
            gw = Gateway(folder, watch=False)
            await gw.start()
            await ApiServer(gw, port=0, mounts=[mount_ui]).start()
            try:
                yield gw, folder
            finally:
                await gw.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    async with launched_chromium() as launched:
        yield launched


async def test_browser_lists_identifies_and_connects(
    browser: Any, gateway: tuple[Gateway, Path], tmp_path: Path
) -> None:
    """Test RSSI and identification per device, and Connect adding a BMS whose cells then arrive."""
    gw, folder = gateway
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    try:
        await log_in_with_token(page, gw)
        await page.goto(url_of(gw, "/ble"))
        daly = page.get_by_test_id(f"ble-{DALY}")
        await daly.get_by_test_id("identified").filter(has_text="daly").wait_for(timeout=WAIT_MS)
        await daly.get_by_test_id("rssi").filter(has_text="-60 dBm").wait_for(timeout=WAIT_MS)
        other = page.get_by_test_id(f"ble-{OTHER}")
        await (
            other.get_by_test_id("identified").filter(has_text="unknown").wait_for(timeout=WAIT_MS)
        )
        await save_screenshot(page, tmp_path, "ble")

        # An unknown device without a parser is refused in the form, nothing is written.
        before = (folder / "connections.json").read_text()
        await other.get_by_test_id("connect").click()
        await page.get_by_test_id("add-connection").click()
        await (
            page.get_by_test_id("connect-error").filter(has_text="parser").wait_for(timeout=WAIT_MS)
        )
        assert (folder / "connections.json").read_text() == before
        await page.get_by_role("button", name="Cancel").click()

        await daly.get_by_test_id("connect").click()
        await page.get_by_label("Connection id").fill("bt.bms_001")
        await page.get_by_test_id("add-connection").click()
        async with asyncio.timeout(10):
            while gw.data_point("bt.bms_001.cells.8") is None:
                await asyncio.sleep(0.05)
        saved = json.loads((folder / "connections.json").read_text())["connections"]
        assert saved["bt.bms_001"]["config"]["parser"] == "daly"
        assert saved["bt.bms_001"]["config"]["transport"] == "ble"

        # The battery card: SOC, 8 cell bars with the spread, MOS states.
        await page.goto(url_of(gw, "/ble"))
        battery = page.get_by_test_id("bms-bt.bms_001")
        await battery.get_by_test_id("spread").filter(has_text="8 cells").wait_for(timeout=WAIT_MS)
        await battery.get_by_test_id("soc").filter(has_text="% SOC").wait_for(timeout=WAIT_MS)
        assert "V" in await battery.get_by_test_id("pack").inner_text()
        await save_screenshot(page, tmp_path, "ble-battery")
    finally:
        await context.close()
