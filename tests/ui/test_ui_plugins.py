"""The plugins page in a real browser: badges, Install from the index, Enable, Configure, README."""

from __future__ import annotations

import json
import subprocess
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

pytestmark = pytest.mark.asyncio(loop_scope="module")

WAIT_MS = 10_000
README = """# Relay plugin

Switches a relay. See [the project](https://example.org/relay).

```python
def register(host):
    host.add_driver("relay", Relay)
```
"""


def git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd, check=True, capture_output=True,
    )  # fmt: skip


def make_remote(root: Path, name: str, config_schema: dict[str, Any]) -> Path:
    work = root / f"{name}-work"
    work.mkdir(parents=True)
    (work / "manifest.json").write_text(json.dumps({
        "name": name, "version": "1.0.0", "author": "tests", "description": f"{name} for tests",
        "entry": f"{name}_main:register", "config_schema": config_schema,
    }))  # fmt: skip
    (work / "README.md").write_text(README)
    (work / f"{name}_main.py").write_text("def register(host):\n    pass\n")
    bare = root / f"{name}.git"
    git(root, "init", "-q", "--bare", str(bare))
    git(work, "init", "-q")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "v1.0.0")
    git(work, "tag", "v1.0.0")
    git(work, "remote", "add", "origin", str(bare))
    git(work, "push", "-q", "--tags", "origin", "HEAD")
    return bare


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    require_browser()
    from edgelink.ui import mount_ui

    root = tmp_path_factory.mktemp("ui-plugins")
    folder = root / "config"
    folder.mkdir()
    write_folder(folder, {})
    bare = make_remote(root, "relay_plugin", {"pulse_ms": 200, "inverted": False})
    (folder / "plugins").mkdir()
    (folder / "plugins" / "index.json").write_text(json.dumps({"plugins": [{
        "name": "relay_plugin", "description": "relay", "repository": str(bare), "version": "1.0.0",
    }]}))  # fmt: skip
    gw = Gateway(folder, watch=False)
    await gw.start()
    await ApiServer(gw, port=0, mounts=[mount_ui]).start()
    try:
        yield gw
    finally:
        await gw.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    async with launched_chromium() as launched:
        yield launched


async def test_install_enable_configure_and_readme(
    browser: Any, gateway: Gateway, tmp_path: Path
) -> None:
    """Test the available badge, Install, Enable, a saved config, the README modal."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    try:
        await log_in_with_token(page, gateway)
        await page.goto(url_of(gateway, "/plugins"))
        card = page.get_by_test_id("plugin-relay_plugin")
        await card.get_by_test_id("badge").filter(has_text="available").wait_for(timeout=WAIT_MS)

        await card.get_by_test_id("install").click()
        await card.get_by_test_id("badge").filter(has_text="inactive").wait_for(timeout=WAIT_MS)
        await card.get_by_test_id("enable").click()
        await card.get_by_test_id("badge").filter(has_text="active").wait_for(timeout=WAIT_MS)
        assert gateway.plugins.get("relay_plugin").active

        await card.get_by_role("button", name="Configure").click()
        await page.get_by_label("pulse_ms").fill("350")
        await page.get_by_test_id("save-config").click()
        await page.get_by_test_id("save-config").wait_for(state="hidden", timeout=WAIT_MS)
        assert gateway.plugins.get("relay_plugin").config == {"pulse_ms": 350, "inverted": False}

        await card.get_by_role("button", name="README").click()
        readme = page.get_by_test_id("readme")
        await readme.get_by_text("Relay plugin").wait_for(timeout=WAIT_MS)
        link = readme.get_by_role("link", name="the project")
        assert await link.get_attribute("target") == "_blank"
        assert "noopener" in (await link.get_attribute("rel") or "")
        assert await readme.locator("pre span").count() > 0  # highlighted by Pygments
        await save_screenshot(page, tmp_path, "plugins-readme")
        await page.get_by_role("button", name="Close").click()
        await save_screenshot(page, tmp_path, "plugins")
        audit = await gateway.query_audit(action="plugin_configure")
        assert audit and audit[0]["result"] == "ok"
    finally:
        await context.close()


async def test_render_readme_drops_raw_html() -> None:
    """Test that raw HTML in a README is escaped, never rendered (no script from a plugin)."""
    from edgelink.ui.pages.plugins import render_readme

    html = render_readme(
        "hi <script>alert(1)</script>\n\n<img src=x onerror=alert(1)>\n\n[x](javascript:alert(1))"
    )
    assert "<script>" not in html and "<img" not in html and 'href="javascript' not in html
