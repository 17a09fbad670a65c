"""The Edge OS seed's code, run on edgelink with only its imports changed.

One gateway runs the document's ``routing.json`` as written, against real
peers: ``plc_001`` is an ``ads`` connection to pyads's test server
(``AdsPeer``, 127.0.0.1:48898), ``mqtt.broker_local`` an ``mqtt`` connection
to a mosquitto of the test's own, ``webhook.alert_service`` posts to the HTTP
device simulator. Datapoints come in through `DataGateway.route_data` and
through the document's own sketch of it (``edgeos_examples.SketchDataGateway``,
normalize / match / transform / send_to_target): both must end at the same
peers with the same counters. Also here: the ``/api/router/*`` names, ``edgelink
migrate plc-configs`` and the process priorities.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import edgeos_examples as seed
import httpx
import pytest

from edgelink.api.server import ApiServer
from edgelink.cli import main
from edgelink.compat import edgeos
from edgelink.compat.edgeos import DROPPED, DataGateway
from edgelink.errors import ConfigError
from edgelink.router import Router
from edgelink.service.gateway import Gateway
from edgelink.sim.http import HttpSimulator
from edgelink.state import SUSPENDED_BY_SPAM, ConnectionState, Reason, status_code
from edgelink.testing import eventually
from edgelink.testing.ads_peer import AdsPeer, port_in_use
from edgelink.testing.mosquitto import MosquittoBroker

TOKEN = "edgeos-seed-test-token-0123456789"
FAST = {
    "connect_timeout": 1.0,
    "health_check_timeout": 1.0,
    "reconnect_initial_delay": 0.05,
    "reconnect_max_delay": 0.2,
    "reconnect_jitter": 0.0,
}
VOLTAGE = "MAIN.fbBattery.fVoltage"
ALARM_TOPIC = "mqtt.broker_local.alarms/critical"


@dataclass
class Stack:
    gateway: Gateway
    plc: AdsPeer
    hooks: HttpSimulator
    broker: MosquittoBroker

    def route_stats(self, route_id: str) -> dict[str, Any]:
        stats: dict[str, Any] = self.gateway.manager.router.route_stats(route_id)
        return stats


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    if port_in_use():
        pytest.skip("127.0.0.1:48898 is in use: the ADS tests need that fixed port")
    connections = {
        "plc_001": {
            "type": "ads",
            "name": "PLC Keller",
            "config": {"ams_net_id": "127.0.0.1.1.1", "host": "127.0.0.1", "timeout": 1.0},
        },
        "mqtt.broker_local": {"type": "mqtt", "config": {}},
    }
    plc = AdsPeer()
    plc.add_symbol(VOLTAGE, "LREAL", 0.0)
    plc.add_symbol("MAIN.bAlarmActive", "BOOL", False)
    with MosquittoBroker() as broker, HttpSimulator() as hooks:
        connections["mqtt.broker_local"]["config"] = {
            "host": "127.0.0.1",
            "port": broker.port,
            "qos": 1,
            "subscribe": ["alarms/#"],
        }
        (tmp_path / "connections.json").write_text(
            json.dumps({"settings": FAST, "connections": connections})
        )
        (tmp_path / "routing.json").write_text(seed.ROUTING_JSON)
        (tmp_path / "edgelink.json").write_text(
            json.dumps(
                {
                    "api": {"token": TOKEN},
                    "storage": {"path": "logs/system.db"},
                    "webhooks": {"alert_service": {"url": f"{hooks.url}/values/alert"}},
                }
            )
        )
        async with plc:
            gw = Gateway(tmp_path, watch=False)
            await gw.start()
            await ApiServer(gw, port=0).start()
            try:
                for cid in connections:
                    await gw.manager.wait_for_state(cid, "connected", timeout=10)
                yield Stack(gw, plc, hooks, broker)
            finally:
                await gw.stop()


def test_public_names_exist_where_issue_12_puts_them() -> None:
    """Test the document's names: route_data's signature, the steps, priorities, the status."""
    params = list(inspect.signature(DataGateway.route_data).parameters)
    assert params == ["self", "source_id", "tag", "value", "metadata"]
    assert inspect.signature(DataGateway.route_data).parameters["metadata"].default is None
    for name in ("normalize", "set_priority"):
        assert callable(getattr(DataGateway, name)), name
    assert callable(edgeos.RoutingEngine.match)
    for name in ("transform", "send_to_target"):
        assert callable(getattr(edgeos.RoutedRoute, name)), name
    assert (edgeos.PRIORITY_HIGH, edgeos.PRIORITY_NORMAL) == ("high", "normal")
    assert edgeos.SUSPENDED_BY_SPAM == "SUSPENDED_BY_SPAM"
    assert set(edgeos.__all__) >= {"DataGateway", "PRIORITY_ABOVE_NORMAL", "PRIORITY_BELOW_NORMAL"}


def test_status_code_reads_suspended_by_spam() -> None:
    """Test the seed's status: upper-case state names, SUSPENDED_BY_SPAM for a spam trip only."""
    assert status_code(ConnectionState.SUSPENDED, Reason.SPAM) == SUSPENDED_BY_SPAM
    assert status_code(ConnectionState.SUSPENDED, Reason.MAX_ATTEMPTS) == "SUSPENDED"
    assert status_code(ConnectionState.CONNECTED, None) == "CONNECTED"


async def test_route_data_runs_the_documents_routes_to_real_peers(stack: Stack) -> None:
    """Test route_data: BMS voltage scaled into the PLC; an alarm to MQTT, webhook and log."""
    gateway = DataGateway(stack.gateway)
    assert gateway.route_data("bt.bms_001", "voltage", 52310) is True
    await eventually(lambda: stack.plc.value(VOLTAGE) == pytest.approx(52.31))
    assert gateway.route_data("plc_001", "MAIN.bAlarmActive", False, {"quality": "good"})
    assert stack.route_stats("alarm_multi_target")["filtered"] == 1
    gateway.route_data("plc_001", "MAIN.bAlarmActive", True, {"quality": "good"})
    router = stack.gateway.manager.router
    # Round trip through mosquitto: the broker connection subscribes to alarms/#.
    await eventually(lambda: router.data.get(ALARM_TOPIC) is not None)
    await eventually(lambda: "alert" in stack.hooks.device.values)
    posted = stack.hooks.device.values["alert"]
    assert (posted["value"], posted["address"]) == (True, "plc_001.MAIN.bAlarmActive")
    assert posted["path"] == ["alarm_multi_target"]
    assert stack.route_stats("alarm_multi_target")["passed"] == 1
    assert router.data.value("bt.bms_001.voltage") == 52310  # the data space has it


async def test_the_documents_sketch_does_what_route_data_does(stack: Stack) -> None:
    """Test the document's normalize / match / transform / send_to_target loop, unchanged."""
    sketch = seed.SketchDataGateway(stack.gateway)
    sketch.route_data("bt.bms_001", "voltage", 48000)
    await eventually(lambda: stack.plc.value(VOLTAGE) == pytest.approx(48.0))
    assert stack.route_stats("bms_to_plc")["passed"] == 1
    sketch.route_data("plc_001", "MAIN.bAlarmActive", False)
    assert stack.route_stats("alarm_multi_target")["filtered"] == 1  # the condition, in match
    sketch.route_data("plc_001", "MAIN.bAlarmActive", True)
    await eventually(lambda: "alert" in stack.hooks.device.values)
    assert stack.hooks.device.values["alert"]["path"] == ["alarm_multi_target"]
    await eventually(lambda: stack.gateway.manager.router.data.get(ALARM_TOPIC) is not None)
    assert stack.route_stats("alarm_multi_target")["passed"] == 1
    # A value the transform fails on: counted as the route's error, nothing sent.
    before = stack.plc.value(VOLTAGE)
    sketch.route_data("bt.bms_001", "voltage", "not a number")
    assert stack.route_stats("bms_to_plc")["errors"] == 1
    await stack.gateway.manager.router.drain()
    assert stack.plc.value(VOLTAGE) == before


async def test_steps_one_at_a_time(stack: Stack) -> None:
    """Test match's targets, DROPPED sending nothing, and normalize's time and quality."""
    gateway = DataGateway(stack.gateway.manager)
    dp = gateway.normalize("bt.bms_001", "voltage", 1000, {"ts": 1_700_000_000.0, "quality": "bad"})
    assert (dp.address, dp.source, dp.ts, dp.quality) == (
        "bt.bms_001.voltage",
        "bt.bms_001",
        1_700_000_000.0,
        "bad",
    )
    (route,) = gateway.routing_engine.match(dp)
    assert (route.id, route.targets) == ("bms_to_plc", [f"plc_001.{VOLTAGE}"])
    assert route.transform(dp) == pytest.approx(1.0)
    route.send_to_target(DROPPED)
    stats = stack.route_stats("bms_to_plc")
    assert (stats["passed"], stats["suppressed"]) == (0, 1)
    assert gateway.routing_engine.match(gateway.normalize("nobody", "x", 1)) == []
    assert [r["id"] for r in gateway.routing_engine.routes()] == [
        "bms_to_plc",
        "alarm_multi_target",
    ]


def test_bad_input_is_a_clear_error() -> None:
    """Test that a bad source or tag, a bad priority and a bad source object say what is wrong."""
    gateway = DataGateway(Router())
    with pytest.raises(ConfigError, match="source_id must be a non-empty string, got ''"):
        gateway.route_data("", "voltage", 1)
    with pytest.raises(ConfigError, match="tag must be a non-empty string, got 5"):
        gateway.normalize("plc", 5, 1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown priority 'urgent'"):
        gateway.set_priority("urgent")
    with pytest.raises(ConfigError, match=r"-20\.\.19, got 40"):
        gateway.set_priority(40)
    with pytest.raises(ConfigError, match="needs a Router, a ConnectionManager or a started"):
        DataGateway(object())


def test_priorities_set_the_process_nice_value() -> None:
    """Test the document's priority calls in a process of their own (nice cannot be undone)."""
    code = """
import os, psutil
import edgeos_examples as seed
from edgelink.compat.edgeos import DataGateway
from edgelink.router import Router
gw = DataGateway(Router())
seed.set_priorities(gw, gw, gw, gw)
print(psutil.Process().nice(), gw.set_priority("high"), os.geteuid() == 0)
"""
    seeds = str(Path(__file__).parent)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": seeds, "PATH": "/usr/bin:/bin"},
    ).stdout.split()
    # The last call lowered it to below_normal (nice 5); raising it needs root.
    assert out[0] == "5"
    assert out[1] == out[2]  # high (nice -5) is applied as root only, else refused


async def test_api_answers_under_api_router(stack: Stack) -> None:
    """Test /api/router/routes, /validate and /stats: the same table and counters as /api/routes."""
    assert stack.gateway.api_address is not None
    host, port = stack.gateway.api_address
    headers = {"Authorization": f"Bearer {TOKEN}"}
    DataGateway(stack.gateway).route_data("bt.bms_001", "voltage", 50000)
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", headers=headers) as client:
        table = (await client.get("/api/router/routes")).json()
        assert table == (await client.get("/api/routes")).json()
        assert [r["id"] for r in table["routes"]] == ["bms_to_plc", "alarm_multi_target"]
        stats = (await client.get("/api/router/stats")).json()
        assert stats["routes"]["bms_to_plc"]["passed"] == 1
        assert stats["stats"]["received"] >= 1
        good = json.loads(seed.ROUTING_JSON)
        answer = (await client.post("/api/router/validate", json=good)).json()
        assert answer == {"ok": True, "routes": 2}
        bad = {"routes": [{**good["routes"][0], "transform": "scale(0.001"}]}
        answer = (await client.post("/api/router/validate", json=bad)).json()
        assert answer["ok"] is False and answer["path"].startswith("routes[0].transform")
        put = await client.put("/api/router/routes", json={"routes": good["routes"][:1]})
        assert put.status_code == 200, put.text
        assert [r["id"] for r in stack.gateway.manager.router.routes] == ["bms_to_plc"]
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as stranger:
        assert (await stranger.get("/api/router/routes")).status_code == 401


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_migrate_plc_configs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Test ``edgelink migrate plc-configs``: a list of PLCs and the v4.x single net id."""
    plcs = tmp_path / "plc_configs.json"
    plcs.write_text(
        json.dumps(
            [
                {"name": "PLC_1 (Keller)", "ams_net_id": "192.168.2.162.1.1", "ams_port": 801},
                {
                    "id": "garage",
                    "name": "PLC_2 (Garage)",
                    "ams_net_id": "192.168.2.163.1.1",
                    "ip": "192.168.2.163",
                    "port": 801,
                    "cache_ms": 100,
                },
            ]
        )
    )
    code, out, err = run_cli(capsys, "migrate", "plc-configs", str(plcs))
    assert code == 0, err
    connections = json.loads(out)["connections"]
    assert connections["plc_001"] == {
        "type": "ads",
        "name": "PLC_1 (Keller)",
        "config": {"ams_net_id": "192.168.2.162.1.1", "ams_port": 801},
    }
    assert connections["garage"]["config"]["host"] == "192.168.2.163"
    assert "[1]: not migrated: cache_ms" in err

    # v4.x: one PLC by plc_ams_net_id, added to an existing connections.json.
    old = tmp_path / "config.json"
    old.write_text(json.dumps({"plc_ams_net_id": "5.1.2.3.1.1", "plc_ip": "10.0.0.5"}))
    target = tmp_path / "connections.json"
    target.write_text(
        json.dumps(
            {"connections": {"inv": {"type": "tcp", "config": {"host": "127.0.0.1", "port": 9}}}}
        )
    )
    code, out, err = run_cli(capsys, "migrate", "plc-configs", str(old), "-o", str(target))
    assert code == 0, err
    assert "added plc_001" in out
    written = json.loads(target.read_text())["connections"]
    assert sorted(written) == ["inv", "plc_001"]
    assert written["plc_001"]["config"] == {"ams_net_id": "5.1.2.3.1.1", "host": "10.0.0.5"}
    assert run_cli(capsys, "check", str(target))[0] == 0

    # Again: the id is taken, and nothing is written.
    before = target.read_text()
    code, _, err = run_cli(capsys, "migrate", "plc-configs", str(old), "-o", str(target))
    assert code == 1
    assert "already has connection 'plc_001'" in err and "Traceback" not in err
    assert target.read_text() == before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"name": "x", "ams_net_id": "1.2.3"}]', "[0]: ams_net_id: must be an AMS net id"),
        ('{"plc_ams_net_id": 5}', "ams_net_id (or plc_ams_net_id) is required"),
        ("[1]", "[0]: a PLC entry must be an object, got 1"),
        ("{", "not JSON: Expecting property name enclosed in double quotes at line 1"),
        ('{"plcs": [{"ams_net_id": "1.1.1.1.1.1", "ams_port": 70000}]}', "plcs[0]: ams_port"),
        (
            '[{"id": "a", "ams_net_id": "1.1.1.1.1.1"}, {"id": "a", "ams_net_id": "1.1.1.1.1.2"}]',
            "[1]: connection id 'a' is used twice",
        ),
    ],
)
def test_migrate_refuses_bad_input_with_where_and_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    """Test that a bad PLC config is one line naming the file, the entry and the field."""
    bad = tmp_path / "plc_configs.json"
    bad.write_text(content)
    code, out, err = run_cli(capsys, "migrate", "plc-configs", str(bad))
    assert code == 1 and out == ""
    assert err.startswith(f"edgelink: {bad}: ")
    assert message in err
    assert "Traceback" not in err
