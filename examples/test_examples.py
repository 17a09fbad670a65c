"""Every example runs as its own process, exits 0 on its own and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgelink import check_config

HERE = Path(__file__).parent

#: Each example and lines its output must contain.
EXPECTED = {
    "quickstart.py": [
        "temperature: 21.5",
        "status: connected health=healthy",
        "done",
    ],
    "custom_connection.py": [
        "connected: sensor_1",
        "setpoint: 42",
        "device said no: [sensor_1] ERR bad request",
        "status: line_device connected",
        "done",
    ],
    "modbus_inverter.py": [
        "connected: inverter_1, inverter_2",
        "inverter_2 ir:8*0.1       battery SoC, %",
        "power limit: 10 %, AC power now",
        "one TCP link for both units: yes",
        "inverter_1: connected health=healthy",
        "done",
    ],
    "routing.py": [
        "heater setpoint: 43.0",
        "last reading: 18.0",
        "route: passed=True filtered=True",
        "heater setpoint still: 43.0",
        "done",
    ],
    "sync_facade.py": [
        "connected: boiler, pump",
        "4 threads wrote and read back 4 setpoints",
        "polled data arrives: yes",
        "boiler: connected health=healthy",
        "pump: connected health=healthy",
        "done",
    ],
}


def test_every_example_is_tested():
    """Test that every example script in examples/ has expected output listed here."""
    scripts = {p.name for p in HERE.glob("*.py") if not p.name.startswith("test_")}
    assert scripts == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str, tmp_path: Path):
    """Test that an example exits 0 within 30 s and prints its key lines, with no warnings."""
    proc = subprocess.run(  # noqa: S603 - this interpreter, our own scripts
        [sys.executable, "-W", "error", str(HERE / name)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for expected in EXPECTED[name]:
        assert any(line.startswith(expected) for line in lines), (expected, proc.stdout)
    assert lines[-1] == "done"
    assert "Traceback" not in proc.stderr
    assert "Exception ignored" not in proc.stderr


def test_example_config_is_valid():
    """Test that examples/connections.json passes `edgelink check`."""
    assert check_config(HERE / "connections.json") == ["OK: 2 connections (boiler, pump)"]
