"""The runnable examples of docs/drivers/mqtt.md, http.md and zkteco.md print what they show."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs" / "drivers"


def try_it(name: str) -> tuple[str, list[str]]:
    """Return the 'Try it' section's Python code and the output lines it shows."""
    text = (DOCS / name).read_text()
    section = text[text.index("## Try it") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    output = re.search(r"```text\n(.*?)```", section, re.S)
    assert code is not None and output is not None, f"{name}: no python and text blocks"
    return code.group(1), output.group(1).strip().splitlines()


@pytest.mark.parametrize("name", ["mqtt.md", "http.md", "zkteco.md"])
def test_try_it_example_runs(name: str, tmp_path: Path) -> None:
    """Test that the doc's example exits 0 without warnings and prints every line it shows."""
    code, expected = try_it(name)
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for line in expected:
        assert line in lines, (line, proc.stdout)
