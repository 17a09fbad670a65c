"""The ``edgelink`` command line, run as a real subprocess: check, schema, demo, sim."""

from __future__ import annotations

import json
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import edgelink

EDGELINK = [sys.executable, "-m", "edgelink.cli"]

GOOD = {
    "settings": {"health_check_interval": 30, "reconnect_max_attempts": 10},
    "connections": {
        "plc_1": {
            "type": "tcp",
            "name": "PLC Keller",
            "config": {"host": "127.0.0.1", "port": 5020},
            "settings": {"health_check_interval": 5},
            "poll": [{"tags": ["temperature"], "interval": 1.0}],
        },
        "dev_2": {"type": "tcp", "config": {"host": "127.0.0.1", "port": 5021}},
    },
}


def run(*args: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDGELINK, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_console_script_is_installed():
    """Test that the installed `edgelink` console script runs and knows its version."""
    script = Path(sys.executable).parent / "edgelink"
    assert script.exists()
    proc = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=15, check=False
    )
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"edgelink {edgelink.__version__}"


def test_check_good_file(tmp_path: Path):
    """Test that `edgelink check` says OK, with the connection ids, and exits 0 for a good file."""
    path = tmp_path / "connections.json"
    path.write_text(json.dumps(GOOD), encoding="utf-8")
    proc = run("check", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "OK: 2 connections (dev_2, plc_1)"


def test_check_good_yaml_file(tmp_path: Path):
    """Test that `edgelink check` accepts the same config written as YAML."""
    path = tmp_path / "connections.yaml"
    path.write_text(
        "connections:\n  plc_1:\n    type: tcp\n    config: {host: 127.0.0.1, port: 5020}\n",
        encoding="utf-8",
    )
    proc = run("check", str(path))
    assert proc.returncode == 0 and proc.stdout.startswith("OK: 1 connection (plc_1)")


def _with(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """GOOD with the value at ``path`` replaced."""
    config: dict[str, Any] = json.loads(json.dumps(GOOD))
    node: Any = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return config


@pytest.mark.parametrize(
    ("name", "text", "where", "why"),
    [
        (
            "interval.json",
            json.dumps(_with(("connections", "plc_1", "poll", 0, "interval"), -1)),
            "connections.plc_1.poll[0].interval",
            "greater than 0",
        ),
        (
            "typo.json",
            json.dumps(_with(("connections", "dev_2", "tpye"), "tcp")),
            "connections.dev_2.tpye",
            "unknown key",
        ),
        (
            "setting.json",
            json.dumps(_with(("settings", "reconnect_max_attempts"), "ten")),
            "settings.reconnect_max_attempts",
            "integer",
        ),
        ("syntax.json", '{"connections": {', "(root)", "JSON syntax error"),
        (
            "bad.yaml",
            "connections:\n  plc_1:\n    type: tcp\n    settings: {health_check_interval: -5}\n",
            "connections.plc_1.settings.health_check_interval",
            "greater than 0",
        ),
    ],
)
def test_check_bad_file(tmp_path: Path, name: str, text: str, where: str, why: str):
    """Test that `edgelink check` names the file, the JSON path and the reason, and exits 1."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    proc = run("check", str(path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("ERROR: ") and name in first
    assert f"{where}:" in first and why in proc.stdout
    assert "Traceback" not in proc.stderr


def test_check_missing_file(tmp_path: Path):
    """Test that `edgelink check` on a missing file says so and exits 1."""
    proc = run("check", str(tmp_path / "nope.json"))
    assert proc.returncode == 1
    assert "nope.json" in proc.stdout and "not found" in proc.stdout


def test_schema_is_json_with_connections():
    """Test that `edgelink schema` prints a JSON Schema describing connections and settings."""
    proc = run("schema")
    assert proc.returncode == 0
    schema = json.loads(proc.stdout)
    assert "connections" in schema["properties"] and "settings" in schema["properties"]
    assert schema["$schema"].startswith("https://json-schema.org/")


@pytest.mark.slow
def test_demo_runs_and_shows_a_reconnect():
    """Test that a short `edgelink demo` connects every device and shows at least one reconnect."""
    started = time.monotonic()
    proc = run(
        "demo",
        "--devices",
        "3",
        "--duration",
        "6",
        "--chaos-every",
        "2",
        "--outage",
        "1",
        "--plain",
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert time.monotonic() - started < 15
    out = proc.stdout
    assert out.startswith("edgelink demo: 3 simulated devices on 127.0.0.1 ports ")
    assert re.search(r"device_0[123]\s+tcp\s+connected\s+healthy", out)
    assert re.search(r"inverter_1\s+modbus_tcp\s+connected", out)
    assert "calc.inverter_1_kw = " in out
    assert "unplugged for 1 s (simulated)" in out
    finished = re.search(
        r"demo finished: connected=(\d+) disconnected=(\d+) reconnected=(\d+)", out
    )
    assert finished, out[-2000:]
    connected, disconnected, reconnected = map(int, finished.groups())
    assert connected >= 3 + reconnected and disconnected >= 1 and reconnected >= 1
    so_far = [int(n) for n in re.findall(r"reconnects so far: (\d+)", out)]
    assert so_far == sorted(so_far) and so_far[-1] >= 1
    assert "Traceback" not in proc.stderr
    assert re.search(r"API on http://127\.0\.0\.1:\d+  token \S{20,}", out)
    from edgelink.ui import is_available

    if is_available():
        assert re.search(r"web UI on http://127\.0\.0\.1:\d+/  \(log in with the token\)", out)


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output within {timeout} s"
    return proc.stdout.readline()


def _ping(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"PING\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(64)
            if not chunk:
                break
            data += chunk
        return data


def test_sim_tcp_answers_ping_and_stops_on_sigterm():
    """Test that `edgelink sim tcp` listens on ephemeral ports, answers PING, and ends on SIGTERM."""
    with subprocess.Popen(
        [*EDGELINK, "sim", "tcp", "--count", "2", "--base-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            line = _readline(proc, timeout=10)
            match = re.fullmatch(r"listening: 2 devices on 127\.0\.0\.1:(\d+)-(\d+)\n", line)
            assert match, line
            ports = [int(p) for p in match.groups()]
            assert all(ports) and ports[0] != ports[1]
            for port in ports:
                assert _ping(port) == b"PONG\n"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_demo_with_bms_adds_two_battery_monitors_on_ptys():
    """Test that `edgelink demo --bms` reads a simulated Daly and JBD over socat ptys."""
    proc = run(
        "demo",
        "--devices",
        "1",
        "--duration",
        "5",
        "--chaos-every",
        "0",
        "--plain",
        "--port",
        "0",
        "--bms",
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "bt.bms_001 (bms)" in out and "bt.bms_002 (bms)" in out
    assert re.search(r"bt\.bms_001\s+bms\s+connected\s+healthy", out)
    assert re.search(r"bt\.bms_002\s+bms\s+connected\s+healthy", out)


def test_demo_with_mqtt_mirrors_to_a_broker():
    """Test that `edgelink demo --mqtt` bridges the demo's datapoints to that broker."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from edgelink.testing.mosquitto import MosquittoBroker

    with MosquittoBroker() as broker:
        topics: list[str] = []
        sub = paho.Client(CallbackAPIVersion.VERSION2)
        sub.on_connect = lambda client, *_: client.subscribe("smarthome/#")
        sub.on_message = lambda client, userdata, msg: topics.append(msg.topic)
        sub.connect("127.0.0.1", broker.port)
        sub.loop_start()
        try:
            proc = run(
                "demo",
                "--devices",
                "2",
                "--duration",
                "4",
                "--chaos-every",
                "0",
                "--plain",
                "--port",
                "0",
                "--mqtt",
                f"127.0.0.1:{broker.port}",
                timeout=30,
            )
        finally:
            sub.loop_stop()
            sub.disconnect()
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "MQTT bridge on 127.0.0.1:" in proc.stdout
        assert re.search(r"broker\s+mqtt\s+connected", proc.stdout)
    # Routed values (smarthome/calc/...) are covered by tests/api/test_bridge.py;
    # here the demo's wiring: polled data and the bridge's status reach the broker.
    assert "smarthome/device_01/temperature" in topics
    assert "smarthome/status" in topics


def test_status_never_prints_the_password_of_its_url():
    """Test that edgelink status redacts the userinfo of --url in what it prints."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://admin:St-planted-pw-4471@127.0.0.1:{port}"
    proc = subprocess.run(
        [*EDGELINK, "status", "--url", url, "--token", "x"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert proc.returncode == 1
    assert "cannot reach http://***@127.0.0.1" in proc.stderr
    assert "St-planted-pw-4471" not in proc.stdout + proc.stderr
