"""The bridge's payload modes end to end: a real mosquitto, a real Modbus poll group, the router."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_bridge import Subscriber, broker_connection

from edgelink import ConnectionManager
from edgelink.bridge.mqtt import MqttBridge
from edgelink.bridge.settings import BridgeSettings, ModeRule
from edgelink.errors import ConfigError
from edgelink.router.datapoint import QUALITY_REASON, QUALITY_SINCE
from edgelink.service.config import load_service_settings
from edgelink.service.gateway import Gateway
from edgelink.sim.modbus import ModbusDevice, ModbusServer
from edgelink.store import Database, UplinkBuffer
from edgelink.testing import ManualClock, eventually
from edgelink.testing.mosquitto import MosquittoBroker

FAST: dict[str, Any] = {
    "connect_timeout": 1.0,
    "health_check_timeout": 1.0,
    "health_check_interval": 1.0,
    "reconnect_initial_delay": 0.05,
    "reconnect_max_delay": 0.3,
    "reconnect_jitter": 0.0,
    "reconnect_max_attempts": None,
    "request_timeout": 1.0,
}


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker() as b:
        yield b


def received(sub: Subscriber, topic: str) -> list[dict[str, Any]]:
    return [json.loads(p) for t, p in sub.snapshot() if t == topic]


@contextlib.asynccontextmanager
async def moded_bridge(
    broker: MosquittoBroker, clock: ManualClock, **bridge: Any
) -> AsyncIterator[tuple[ConnectionManager, MqttBridge, Subscriber]]:
    """A live bridge (base ``m``) with ``bridge`` settings and a manual clock, a subscriber to m/#."""
    manager = ConnectionManager(**FAST)
    manager.add_connection(
        "broker",
        "mqtt",
        {"host": "127.0.0.1", "port": broker.port, "qos": 1},
        settings={"spam_max_pps": None},
    )
    sub = Subscriber(broker, "m/#")
    db = Database(":memory:")
    async with manager:
        await manager.wait_for_state("broker", "connected", timeout=10)
        await asyncio.to_thread(sub.subscribed.wait, 5)
        settings = BridgeSettings(connection="broker", base_topic="m", qos=1, **bridge)
        bridge_ = MqttBridge(manager, manager.router, settings, UplinkBuffer(db), clock=clock)
        await bridge_.start()
        try:
            await eventually(lambda: bridge_.stats()["live"])
            yield manager, bridge_, sub
        finally:
            await bridge_.stop()
            await db.close()
            sub.close()


def values(sub: Subscriber, topic: str) -> list[Any]:
    return [body["value"] for body in received(sub, topic)]


async def test_deadband_suppresses_small_changes_and_passes_big_ones_quality_and_heartbeat(
    broker: MosquittoBroker,
) -> None:
    """Test that the deadband holds back small moves, passes big ones, quality changes, heartbeats."""
    clock = ManualClock()
    bridge_settings = {
        "deadband": {"absolute": 1.0},
        "heartbeat_s": 10.0,
        "modes": [{"match": "dev", "tags": "pct", "deadband": {"percent": 10.0}}],
    }
    async with moded_bridge(broker, clock, **bridge_settings) as (manager, bridge, sub):
        route = manager.router.route_data
        for v in (10, 10.5, 11.2, 11.5, 9.9):
            route("dev", "abs", v)
        for v in (100, 105, 111, 95):
            route("dev", "pct", v)
        for text in ("a", "a", "b"):
            route("dev", "text", text)
        await eventually(lambda: values(sub, "m/dev/text") == ["a", "b"])
        assert values(sub, "m/dev/abs") == [10, 11.2, 9.9]  # 10.5, 11.5: moved < 1
        assert values(sub, "m/dev/pct") == [100, 111, 95]  # 105: < 10 % of 100
        assert bridge.stats()["suppressed"] == 4
        await clock.advance(9.0)
        route("dev", "abs", 10.4)  # within the band, heartbeat not due: held back
        await clock.advance(1.0)
        route("dev", "abs", 10.5)  # 10 s since 9.9 went out: goes out anyway
        route("dev", "abs", 10.5, {QUALITY_REASON: "overrange"}, quality="bad")
        await eventually(lambda: len(values(sub, "m/dev/abs")) == 5)
        bodies = received(sub, "m/dev/abs")
        assert [b["value"] for b in bodies[3:]] == [10.5, 10.5]
        assert (bodies[4]["quality"], bodies[4]["reason"]) == ("bad", "overrange")
        assert bridge.stats()["suppressed"] == 5


async def test_rate_limit_coalesces_counts_and_sends_the_latest_on_one_timer(
    broker: MosquittoBroker,
) -> None:
    """Test that min_interval_s sends the latest value when the interval passes, counted."""
    clock = ManualClock()
    async with moded_bridge(broker, clock, min_interval_s=1.0) as (manager, bridge, sub):
        route = manager.router.route_data
        for v in (1, 2, 3, 4):
            route("dev", "t", v)
        for n in range(50):
            route("dev", f"x{n}", 0)
            route("dev", f"x{n}", 1)
        await eventually(lambda: values(sub, "m/dev/t") == [1])
        assert bridge.stats()["coalesced"] == 2  # 2 and 3 replaced; 4 waits
        assert len(clock.pending()) == 1  # one timer for 51 waiting topics
        await clock.advance(1.0)
        await eventually(lambda: values(sub, "m/dev/t") == [1, 4])
        await eventually(lambda: all(values(sub, f"m/dev/x{n}") == [0, 1] for n in range(50)))
        assert not clock.pending()
        # The interval runs from the last send: a value now waits again.
        route("dev", "t", 5)
        await clock.advance(0.5)
        assert bridge.modes is not None
        assert bridge.stats()["published"] == 1 + 1 + 100
        await clock.advance(0.5)
        await eventually(lambda: values(sub, "m/dev/t") == [1, 4, 5])


async def test_mode_state_is_bounded_and_a_waiting_message_is_sent_on_eviction(
    broker: MosquittoBroker,
) -> None:
    """Test that per-topic state is an LRU of state_items, evictions counted, nothing lost."""
    clock = ManualClock()
    settings = {"min_interval_s": 5.0, "state_items": 3}
    async with moded_bridge(broker, clock, **settings) as (manager, bridge, sub):
        route = manager.router.route_data
        for tag in ("a", "b", "c"):
            route("dev", tag, 1)
            route("dev", tag, 2)  # waits for its interval
        route("dev", "d", 1)  # evicts a: its waiting 2 goes out now
        await eventually(lambda: values(sub, "m/dev/a") == [1, 2])
        stats = bridge.stats()
        assert (stats["mode_state"], stats["mode_state_evicted"]) == (3, 1)
        assert values(sub, "m/dev/b") == [1]
        await clock.advance(5.0)
        await eventually(lambda: values(sub, "m/dev/c") == [1, 2])
        assert values(sub, "m/dev/b") == [1, 2]


async def test_group_payload_carries_each_tags_quality_ts_and_unencodable_values(
    broker: MosquittoBroker,
) -> None:
    """Test a group of one loop turn: one message, bad/odd tags detailed, the rate limit merges."""
    clock = ManualClock()
    rules = [
        {"match": "grp", "mode": "group", "min_interval_s": 2.0},
        {"match": "status", "mode": "group"},
    ]
    discovery = [{"address": "grp.a.b"}]
    async with moded_bridge(broker, clock, modes=rules, discovery=discovery) as (
        manager,
        bridge,
        sub,
    ):
        route = manager.router.route_data
        meta = {QUALITY_REASON: "device said no", QUALITY_SINCE: 99.0}
        route("grp", "a.b", 1, ts=100.0)
        route("grp", "c", math.nan, ts=100.0)
        route("grp", "d", None, meta, quality="bad", ts=100.0)
        route("grp", "e", 7, ts=90.0)
        route("other", "x", 3, ts=100.0)  # no rule: its own message
        body = (await eventually(lambda: received(sub, "m/grp")))[0]
        assert body["ts"] == 100.0
        assert body["quality"] == "bad"
        assert body["values"] == {"a.b": 1, "c": None, "d": None, "e": 7}
        tags = body["tags"]
        assert tags["c"]["quality"] == "bad"
        assert "NaN" in tags["c"]["error"]
        assert tags["d"] == {
            "ts": 100.0,
            "quality": "bad",
            "reason": "device said no",
            "since": 99.0,
        }
        assert tags["e"] == {"ts": 90.0, "quality": "good"}
        assert "a.b" not in tags
        assert values(sub, "m/other/x") == [3]
        # A connection named "status" never overwrites the bridge's m/status.
        route("status", "x", 5)
        assert (await eventually(lambda: received(sub, "m/%73tatus")))[0]["values"] == {"x": 5}
        ((_, config),) = bridge.discovery_messages()
        assert config["state_topic"] == "m/grp"
        assert config["value_template"] == """{{ value_json['values']["a.b"] }}"""
        assert not [t for t, _ in sub.snapshot() if t.startswith("m/grp/")]
        # Two more rounds within the interval: merged into one message, counted.
        route("grp", "a.b", 2, ts=101.0)
        await asyncio.sleep(0)
        route("grp", "a.b", 3, ts=102.0)
        route("grp", "f", 4, ts=102.0)
        await asyncio.sleep(0)
        await clock.advance(2.0)
        later = (await eventually(lambda: received(sub, "m/grp")[1:]))[0]
        assert later["values"] == {"a.b": 3, "f": 4}
        assert later["quality"] == "good"
        stats = bridge.stats()
        assert (stats["coalesced"], stats["group_messages"]) == (1, 3)  # grp twice, status


async def test_a_group_without_a_valid_topic_is_dead_lettered_and_the_rest_flows(
    broker: MosquittoBroker,
) -> None:
    """Test that a group whose topic is over MQTT's limit is dead-lettered, counted, not sent."""
    clock = ManualClock()
    long_id = "p" * 70_000
    async with moded_bridge(broker, clock, mode="group") as (manager, bridge, sub):
        manager.router.route_data(long_id, "t", 1)
        manager.router.route_data("plc", "t", 2)
        await eventually(lambda: received(sub, "m/plc"))
        await bridge.store_dead_letters()
        (letter,) = await bridge.dead_letters.recent()
        assert letter["topic"] == f"m/{long_id}"[:1000]
        assert "MQTT allows 65535" in letter["reason"]
        assert json.loads(letter["payload"])["values"] == {"t": 1}
        assert bridge.stats()["dead_letters"] == 1


def write_folder(folder: Path, connections: dict[str, Any], bridge: dict[str, Any]) -> None:
    (folder / "connections.json").write_text(
        json.dumps({"settings": FAST, "connections": connections})
    )
    (folder / "routing.json").write_text(json.dumps({"version": "1.0", "routes": []}))
    (folder / "edgelink.json").write_text(
        json.dumps(
            {
                "api": {"token": "bridge-test-token-0123456789"},
                "bridge": {"connection": "broker", "base_topic": "smarthome", **bridge},
            }
        )
    )


async def test_group_mode_sends_a_modbus_poll_round_as_one_message_and_set_still_writes(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """Test a real poll group in group mode next to a per-datapoint device; /set and stale."""
    plc, meter = ModbusDevice(1), ModbusDevice(2)
    plc.hr[10:14] = [1, 2, 3, 4]
    meter.hr[10] = 42
    tags = ["hr:10", "hr:11", "hr:12", "hr:13"]
    async with ModbusServer([plc]) as plc_server, ModbusServer([meter]) as meter_server:

        def modbus(server: ModbusServer, unit: int, poll: list[str]) -> dict[str, Any]:
            return {
                "type": "modbus_tcp",
                "config": {"host": "127.0.0.1", "port": server.port, "unit_id": unit},
                "poll": [{"tags": poll, "interval": 0.05}],
            }

        connections = {
            "plc_1": modbus(plc_server, 1, tags),
            "meter": modbus(meter_server, 2, ["hr:10"]),
            "broker": broker_connection(broker),
        }
        write_folder(
            tmp_path, connections, {"qos": 1, "modes": [{"match": "plc_*", "mode": "group"}]}
        )
        sub = Subscriber(broker, "smarthome/#")
        gateway = Gateway(tmp_path, watch=False)
        await gateway.start()
        try:
            await gateway.manager.wait_for_state("broker", "connected", timeout=10)
            await asyncio.to_thread(sub.subscribed.wait, 5)
            rounds = await eventually(lambda: received(sub, "smarthome/plc_1")[2:])
            for body in rounds:
                assert body["values"] == dict(zip(tags, [1, 2, 3, 4], strict=True))
                assert body["quality"] == "good"
                assert "tags" not in body
            await eventually(lambda: values(sub, "smarthome/meter/hr:10"))
            assert not [t for t, _ in sub.snapshot() if t.startswith("smarthome/plc_1/hr")]
            # The per-tag /set topic still writes in group mode.
            sub.client.publish("smarthome/plc_1/hr:11/set", "77", qos=1)
            await eventually(lambda: plc.hr[11] == 77)
            await eventually(
                lambda: any(b["values"]["hr:11"] == 77 for b in received(sub, "smarthome/plc_1"))
            )
            # A lost link: one group message with every tag stale.
            await plc_server.stop()
            stale = await eventually(
                lambda: [b for b in received(sub, "smarthome/plc_1") if b["quality"] == "stale"]
            )
            assert set(stale[0]["tags"]) == set(tags)
            assert all(t["quality"] == "stale" and t["reason"] for t in stale[0]["tags"].values())
            stats = gateway.bridge_stats()
            assert stats["mode"] == "rules"
            assert stats["group_messages"] >= 3
        finally:
            await gateway.stop()
            sub.close()


@pytest.mark.parametrize(
    ("bridge", "where", "why"),
    [
        ({"mode": "groups"}, "bridge.mode", "'datapoint' or 'group'"),
        ({"modes": [{"match": "plc_*", "mode": "x"}]}, "bridge.modes[0].mode", "'group'"),
        ({"modes": [{"match": "plc_*"}]}, "bridge.modes[0]", "sets at least one of"),
        ({"modes": [{"mode": "group"}]}, "bridge.modes[0].match", "required"),
        ({"deadband": {}}, "bridge.deadband", "'absolute' or 'percent'"),
        ({"deadband": {"percent": -1}}, "bridge.deadband.percent", "greater than"),
        ({"min_interval_s": -1}, "bridge.min_interval_s", "greater than"),
        ({"heartbeat_s": 0}, "bridge.heartbeat_s", "greater than"),
        ({"state_items": 0}, "bridge.state_items", "greater than"),
        ({"modes": [{"match": "a", "rate": 1}]}, "bridge.modes[0].rate", ""),
    ],
)
def test_mode_config_errors_name_the_field(bridge: dict[str, Any], where: str, why: str) -> None:
    """Test that a bad mode setting is a ConfigError naming its field and the reason."""
    with pytest.raises(ConfigError) as info:
        load_service_settings({"bridge": bridge})
    assert f"{where}:" in str(info.value)
    assert why in str(info.value)


def test_default_settings_keep_the_per_datapoint_path() -> None:
    """Test that the defaults are the plain mode (no modes layer on the hot path)."""
    assert BridgeSettings(connection="b").plain
    assert not BridgeSettings(connection="b", min_interval_s=1).plain
    assert not BridgeSettings(connection="b", modes=[ModeRule(match="x", mode="group")]).plain
