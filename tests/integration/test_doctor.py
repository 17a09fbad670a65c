"""``edgelink doctor`` against real peers: the simulators, mosquitto, a refused port."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgelink.service.doctor import Verdict, run_doctor
from edgelink.sim.http import HttpSimulator
from edgelink.sim.modbus import ModbusDevice, ModbusServer
from edgelink.sim.tcp import TcpSimulator
from edgelink.testing.mosquitto import MosquittoBroker

EDGELINK = [sys.executable, "-m", "edgelink.cli"]

#: Short settings: every step of a doctor run takes well under a second here.
SETTINGS: dict[str, Any] = {
    "connect_timeout": 0.5,
    "health_check_interval": 0.3,
    "health_check_timeout": 0.3,
    "request_timeout": 0.5,
    "reconnect_initial_delay": 0.05,
    "reconnect_max_delay": 0.2,
    "reconnect_jitter": 0.0,
}


def refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker() as b:
        yield b


def write(folder: Path, name: str, data: Any) -> None:
    (folder / name).write_text(json.dumps(data))


async def doctor_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *EDGELINK,
        "doctor",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONASYNCIODEBUG": "0", "COLUMNS": "200"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def verdicts(report: dict[str, Any]) -> dict[tuple[str, str, str], str]:
    return {(c["section"], c["subject"], c["name"]): c["verdict"] for c in report["checks"]}


async def test_doctor_json_report_on_a_real_installation(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """Test that doctor --json gives each check its verdict against real peers, and rc 1 for a fail."""
    device = ModbusDevice(1)
    device.hr[0] = 1234
    async with TcpSimulator(1) as tcp, ModbusServer([device]) as modbus:
        with HttpSimulator() as http:
            connections = {
                "dev_tcp": {
                    "type": "tcp",
                    "config": {"host": "127.0.0.1", "port": tcp.ports[0]},
                    "poll": [{"tags": ["temperature"], "interval": 1.0}],
                },
                "dev_modbus": {
                    "type": "modbus_tcp",
                    "config": {"host": "127.0.0.1", "port": modbus.port, "unit_id": 1},
                    "poll": [{"tags": ["hr:0"], "interval": 1.0}],
                },
                "dev_http": {
                    "type": "http",
                    "config": {"base_url": http.url},
                    "poll": [{"tags": ["/status"], "interval": 1.0}],
                    "settings": {"health_check_interval": 120},
                },
                "dead": {"type": "tcp", "config": {"host": "127.0.0.1", "port": refused_port()}},
                "broker": {
                    "type": "mqtt",
                    "config": {"host": "127.0.0.1", "port": broker.port, "client_id": "gw"},
                },
            }
            write(tmp_path, "connections.json", {"settings": SETTINGS, "connections": connections})
            routes = [
                {"id": "good", "from": "dev_tcp.temperature", "to": "log.system"},
                {"id": "wild", "from": "dev_modbus.*", "to": "log.system"},
                {"id": "typo", "from": "dev_tpc.temperature", "to": "log.system"},
            ]
            write(tmp_path, "routing.json", {"version": "1.0", "routes": routes})
            write(tmp_path, "edgelink.json", {"bridge": {"connection": "broker"}})
            (tmp_path / "edgelink.lock").write_text(str(os.getpid()))

            code, out, err = await doctor_cli("--config", str(tmp_path), "--json")
    report = json.loads(out)
    got = verdicts(report)
    for cid in ("dev_tcp", "dev_modbus", "dev_http"):
        for name in ("resolve", "connect", "health", "read"):
            assert got[("connection", cid, name)] == "pass", (cid, name, report)
    reads = {c["subject"]: c["detail"] for c in report["checks"] if c["name"] == "read"}
    assert "hr:0 = 1234" in reads["dev_modbus"]
    assert got[("connection", "dead", "connect")] == "fail"
    assert ("connection", "dead", "health") not in got
    assert got[("connection", "broker", "connect")] == "pass"
    # 0.3 s checks: detected fast; http's 120 s interval is over the 60 s threshold.
    assert got[("connection", "dev_tcp", "half_open")] == "pass"
    assert got[("connection", "dev_http", "half_open")] == "warn"
    assert got[("bridge", "broker", "broker")] == "pass"
    assert got[("bridge", "broker", "topics")] == "pass"
    assert got[("routes", "routing.json", "compile")] == "pass"
    assert got[("routes", "good", "sources")] == "pass"
    assert got[("routes", "wild", "sources")] == "pass"
    assert got[("routes", "typo", "sources")] == "warn"
    assert got[("storage", str(tmp_path / "system_logs.db"), "database")] == "pass"
    # The lock names a live PID (this test's): a gateway seems to run here.
    assert got[("lock", str(tmp_path / "edgelink.lock"), "instance")] == "warn"
    assert report["verdict"] == "fail"
    assert code == report["exit_code"] == 1, err
    assert report["duration_s"] < 10


async def test_doctor_passes_a_healthy_folder_and_prints_a_table(tmp_path: Path) -> None:
    """Test that a folder whose checks pass or warn exits 0, and the table names each check."""
    async with TcpSimulator(1) as tcp:
        connections = {
            "dev": {"type": "tcp", "config": {"host": "127.0.0.1", "port": tcp.ports[0]}}
        }
        write(tmp_path, "connections.json", {"settings": SETTINGS, "connections": connections})
        code, out, err = await doctor_cli("--config", str(tmp_path))
    assert code == 0, out + err
    assert "connect" in out and "half_open" in out and "PASS" in out


async def test_doctor_faults_drills_a_tcp_device_through_the_proxy(tmp_path: Path) -> None:
    """Test that --faults drops, stalls and half-opens a tcp sim link and sees it recover."""
    async with TcpSimulator(1) as tcp:
        connections = {
            "dev": {
                "type": "tcp",
                "config": {"host": "127.0.0.1", "port": tcp.ports[0]},
                "settings": {"health_check_interval": 30.0},
            }
        }
        write(tmp_path, "connections.json", {"settings": SETTINGS, "connections": connections})
        report = await run_doctor(tmp_path, faults=True)
    for fault in ("drop", "stall", "half_open"):
        check = report.find("faults", "dev", fault)
        assert check is not None and check.verdict is Verdict.PASS, report.to_dict()
        assert check.data["detected_s"] <= check.data["detect_limit_s"]
        assert check.data["recovered_s"] <= check.data["recover_limit_s"]
    # The 30 s interval was shortened for the drill, and the report says so.
    setup = report.find("faults", "dev", "drills")
    assert setup is not None and "health_check_interval 30->1 s" in setup.detail
    assert report.exit_code == 0
    assert report.duration_s < 15


@pytest.mark.parametrize(
    ("setup", "needle"),
    [
        ("missing", "config folder not found"),
        ("bad_json", "connections.json"),
        ("bad_driver", "port"),
    ],
)
async def test_doctor_user_errors_are_one_line_rc_2(
    tmp_path: Path, setup: str, needle: str
) -> None:
    """Test that a missing folder or a bad config is one line on stderr and rc 2, no traceback."""
    folder = tmp_path / "cfg"
    if setup != "missing":
        folder.mkdir()
        text = (
            "{not json"
            if setup == "bad_json"
            else json.dumps({"connections": {"d": {"type": "tcp", "config": {"host": "h"}}}})
        )
        (folder / "connections.json").write_text(text)
    code, out, err = await doctor_cli("--config", str(folder))
    assert code == 2
    assert out == ""
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
