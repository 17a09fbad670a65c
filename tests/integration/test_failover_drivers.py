"""Failover of real drivers between two real peers: two pymodbus servers, two mosquittos.

The data keeps flowing from the alternate while the preferred peer is away,
the subscription ledger is replayed and confirmed on the new broker, and the
process never holds a data link to both peers.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as paho
import psutil
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import Recorder
from edgelink import ConnectionManager, ConnectionState
from edgelink.sim.modbus import ModbusDevice, ModbusServer
from edgelink.testing import ManualClock
from edgelink.testing.mosquitto import MosquittoBroker

S = ConnectionState
Make = Callable[..., ConnectionManager]
SETTINGS: dict[str, Any] = {
    "failover_after": 2,
    "failback_after": 2.0,
    "failback_probe_interval": 1.0,
    "failback_holdoff": 60.0,
    "health_check_interval": 1000.0,
    "fleet_recovery": False,
}


async def until(pred: Callable[[], object], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.005)


def links_to(port: int) -> int:
    """Count this process's established TCP connections to ``port``."""
    return sum(
        1
        for c in psutil.Process(os.getpid()).net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


def active(m: ConnectionManager, cid: str) -> int:
    return int(m.get_status(cid)["endpoints"]["active_index"])


async def drive(clock: ManualClock, pred: Callable[[], bool], timeout: float = 10.0) -> None:
    """Advance the manual clock through the short timers (backoff, polls) until ``pred()``."""
    async with asyncio.timeout(timeout):
        while not pred():
            delays = [d for d in clock.pending() if d < 5]
            if delays:
                await clock.advance(delays[0] + 1e-6)
            await asyncio.sleep(0.01)


def probes_done(m: ConnectionManager, cid: str) -> int:
    return int(m.get_status(cid).get("endpoints", {}).get("probes", 0))


async def fail_back(m: ConnectionManager, clock: ManualClock, cid: str) -> None:
    """Let the failback probes run until the connection is back on its preferred endpoint."""
    async with asyncio.timeout(10):
        while not (active(m, cid) == 0 and m.get_state(cid) is S.CONNECTED):
            probes = probes_done(m, cid)

            def probed(n: int = probes) -> bool:
                return probes_done(m, cid) > n or active(m, cid) == 0

            await clock.advance(1.0)
            await until(probed)


async def test_modbus_fails_over_to_the_second_gateway_and_back(
    make_manager: Make, clock: ManualClock
) -> None:
    """Test that a Modbus connection reads from the alternate server while the first is away."""
    first, second = ModbusDevice(1, registers=10), ModbusDevice(1, registers=10)
    first.hr[0], second.hr[0] = 111, 222
    async with ModbusServer([first]) as a, ModbusServer([second]) as b:
        m = make_manager(clock=clock, watchdog_interval=1e9)
        rec = Recorder(m)
        m.add_connection(
            "inv",
            "modbus_tcp",
            {"host": "127.0.0.1", "port": a.port, "timeout": 0.3},
            settings=SETTINGS,
            endpoints=[{}, {"port": b.port}],
            poll=[{"tags": ["hr:0"], "interval": 1.0}],
        )
        await m.start()
        await m.wait_for_state("inv", S.CONNECTED, timeout=5)
        await drive(clock, lambda: m.router.data.value("inv.hr:0") == 111)
        assert links_to(a.port) == 1 and links_to(b.port) == 0

        await a.stop()
        await drive(clock, lambda: m.router.data.value("inv.hr:0") == 222)
        assert active(m, "inv") == 1
        assert links_to(a.port) == 0 and links_to(b.port) == 1
        dp = m.router.data.get("inv.hr:0")
        assert dp is not None and dp.metadata == {
            "endpoint": f"127.0.0.1:{b.port}",
            "endpoint_index": 1,
        }
        assert len(await rec.of("failover")) == 1

        await a.start()
        await fail_back(m, clock, "inv")
        await drive(clock, lambda: m.router.data.value("inv.hr:0") == 111)
        assert links_to(a.port) == 1 and links_to(b.port) == 0
        assert len(await rec.of("failback")) == 1


class Publisher:
    """A plain paho client publishing to one broker from its own thread."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"pub-{secrets.token_hex(4)}"
        )
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self._lock = threading.Lock()

    def publish(self, topic: str, payload: str) -> None:
        with self._lock:
            self.client.publish(topic, payload, 1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def brokers() -> Iterator[tuple[MosquittoBroker, MosquittoBroker]]:
    with MosquittoBroker() as a, MosquittoBroker() as b:
        yield a, b


async def test_mqtt_replays_its_subscriptions_on_the_standby_broker(
    make_manager: Make, clock: ManualClock, brokers: tuple[MosquittoBroker, MosquittoBroker]
) -> None:
    """Test that an MQTT connection resubscribes on the standby broker, confirmed, and comes back."""
    a, b = brokers
    m = make_manager(clock=clock, watchdog_interval=1e9)
    rec = Recorder(m)
    values: list[tuple[str, Any]] = []
    m.on_data(lambda cid, tag, value, quality, ts: values.append((tag, value)))
    driver = m.add_connection(
        "broker",
        "mqtt",
        {"host": a.host, "port": a.port, "subscribe": ["plant/#"]},
        settings={**SETTINGS, "health_check_interval": 1000.0},
        endpoints=[{"name": "main"}, {"port": b.port, "name": "standby"}],
    )
    await m.start()
    await m.wait_for_state("broker", S.CONNECTED, timeout=5)
    ledger = driver.subscriptions  # type: ignore[union-attr]
    await until(ledger.is_confirmed)

    a.stop()
    await drive(clock, lambda: m.get_state("broker") is S.CONNECTED and active(m, "broker") == 1)
    await until(ledger.is_confirmed)
    assert links_to(a.port) == 0 and links_to(b.port) == 1
    pub_b = Publisher(b)
    try:
        pub_b.publish("plant/temp", "21.5")
        await until(lambda: ("plant/temp", 21.5) in values)
    finally:
        pub_b.close()
    [ev] = await rec.of("failover")
    assert ev.data["to_endpoint"] == "standby"

    a.start()
    await fail_back(m, clock, "broker")
    await until(ledger.is_confirmed)
    assert links_to(b.port) == 0
    await until(lambda: links_to(a.port) == 1)
    pub_a = Publisher(a)
    try:
        pub_a.publish("plant/temp", "23.0")
        await until(lambda: ("plant/temp", 23.0) in values)
    finally:
        pub_a.close()
    assert m.get_status("broker")["endpoints"]["failbacks"] == 1
