"""Tests of the TCP device simulator: devices, drift, kill/revive, ``python -m edgelink.sim``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import re
import signal
import sys
from collections.abc import AsyncIterator

import pytest

from edgelink.sim import add_sim_arguments, run_sim_from_args
from edgelink.sim.tcp import TcpSimulator, run_tcp_simulator

Link = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def sim() -> AsyncIterator[TcpSimulator]:
    async with TcpSimulator(5, seed=1) as sim:
        yield sim


async def connect(port: int) -> Link:
    return await asyncio.open_connection("127.0.0.1", port)


async def ask(link: Link, line: bytes) -> bytes:
    reader, writer = link
    writer.write(line)
    return await asyncio.wait_for(reader.readline(), 2)


async def close(link: Link) -> None:
    _, writer = link
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def sees_close(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(100), 2) == b""
    except ConnectionResetError:
        return True


async def test_every_device_answers_on_its_own_port(sim: TcpSimulator) -> None:
    """Test that each simulated device listens on its own port and speaks the protocol."""
    assert len(set(sim.ports)) == 5
    identities = set()
    for port in sim.ports:
        link = await connect(port)
        assert await ask(link, b"PING\n") == b"PONG\n"
        assert await ask(link, b"x=1\n") == b"OK\n"
        assert await ask(link, b"x?\n") == b"1\n"
        assert await ask(link, b"y?\n") == b"ERR unknown y\n"
        assert await ask(link, b"what\n") == b"ERR bad request\n"
        identities.add(await ask(link, b"ID?\n"))
        await close(link)
    assert len(identities) == 5
    assert sim.requests == 30


async def test_temperature_and_power_drift(sim: TcpSimulator) -> None:
    """Test that temperature and power read as plausible numbers that change over time."""
    link = await connect(sim.ports[0])
    temperatures = []
    for _ in range(5):
        temperatures.append(float(await ask(link, b"temperature?\n")))
        power = float(await ask(link, b"power?\n"))
        assert power >= 0
        await asyncio.sleep(0.02)
    assert all(10 < t < 35 for t in temperatures)
    assert len(set(temperatures)) > 1
    assert await ask(link, b"temperature=30\n") == b"OK\n"
    assert await ask(link, b"temperature?\n") == b"30\n"
    await close(link)


async def test_stop_device_kills_one_and_start_device_revives_it(sim: TcpSimulator) -> None:
    """Test that a stopped device refuses and drops links, others run, and it returns rebooted."""
    port = sim.ports[2]
    link = await connect(port)
    identity = await ask(link, b"ID?\n")
    assert await ask(link, b"x=1\n") == b"OK\n"
    other = await connect(sim.ports[3])
    await sim.stop_device(2)
    assert not sim.is_running(2)
    assert await sees_close(link[0])
    await close(link)
    with pytest.raises(ConnectionRefusedError):
        await connect(port)
    assert await ask(other, b"PING\n") == b"PONG\n"
    await sim.start_device(2)
    await sim.start_device(2)
    assert sim.ports[2] == port
    link = await connect(port)
    assert await ask(link, b"PING\n") == b"PONG\n"
    assert await ask(link, b"ID?\n") != identity
    assert await ask(link, b"x?\n") == b"ERR unknown x\n"
    assert f"5 devices 127.0.0.1:{sim.ports[0]}-{sim.ports[-1]} running=5" in repr(sim)
    await close(link)
    await close(other)


async def test_device_state_is_reachable_for_faults(sim: TcpSimulator) -> None:
    """Test that a device's respond flag can hang it like a PingPongPeer."""
    link = await connect(sim.ports[1])
    sim.device(1).respond = False
    link[1].write(b"PING\n")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(link[0].readline(), 0.1)
    sim.device(1).respond = True
    assert await ask(link, b"PING\n") == b"PONG\n"
    await close(link)


def test_bad_counts_and_ports_are_rejected() -> None:
    """Test that a zero count or a port range past 65535 raises ValueError."""
    with pytest.raises(ValueError, match="count"):
        TcpSimulator(0)
    with pytest.raises(ValueError, match="out of range"):
        TcpSimulator(10, 65530)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_thousand_devices_start_and_stop_cleanly() -> None:
    """Test that 1,000 devices start, answer, and stop leaving no file descriptors or tasks."""
    gc.collect()  # let what earlier tests left closing finish first
    await asyncio.sleep(0.05)
    fds_before = open_fds()
    tasks_before = len(asyncio.all_tasks())
    sim = TcpSimulator(1000)
    await sim.start()
    assert len(asyncio.all_tasks()) == tasks_before
    assert open_fds() == fds_before + 1000
    links = [await connect(port) for port in sim.ports[::100]]
    assert [await ask(link, b"PING\n") for link in links] == [b"PONG\n"] * 10
    await sim.stop()
    await sim.stop()
    for reader, _ in links:
        assert await sees_close(reader)
    for link in links:
        await close(link)
    await asyncio.sleep(0)
    assert open_fds() == fds_before


async def test_run_tcp_simulator_prints_and_stops_on_cancel(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Test that run_tcp_simulator prints its listening line and stops its devices on cancel."""
    task = asyncio.create_task(run_tcp_simulator(2, 0), name="test.sim")
    async with asyncio.timeout(2):
        while not (out := capsys.readouterr().out):
            await asyncio.sleep(0.01)
    match = re.fullmatch(r"listening: 2 devices on 127\.0\.0\.1:(\d+)-(\d+)\n", out)
    assert match
    link = await connect(int(match.group(2)))
    assert await ask(link, b"PING\n") == b"PONG\n"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await sees_close(link[0])
    await close(link)
    with pytest.raises(ConnectionRefusedError):
        await connect(int(match.group(1)))


def test_sim_arguments_parse() -> None:
    """Test that add_sim_arguments parses the tcp subcommand with its defaults."""
    parser = argparse.ArgumentParser()
    add_sim_arguments(parser)
    args = parser.parse_args(["tcp", "--count", "3"])
    assert (args.sim_kind, args.count, args.base_port, args.host) == ("tcp", 3, 0, "127.0.0.1")
    with pytest.raises(SystemExit):
        parser.parse_args(["tcp", "--count", "0"])
    assert (
        run_sim_from_args(
            argparse.Namespace(sim_kind="tcp", count=10, base_port=65530, host="127.0.0.1")
        )
        == 2
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_module_runs_until_signalled(signum: signal.Signals) -> None:
    """Test that python -m edgelink.sim tcp prints its ports, answers PING, exits 0 on a signal."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgelink.sim",
        "tcp",
        "--count",
        "3",
        "--base-port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 10)
        match = re.fullmatch(rb"listening: 3 devices on 127\.0\.0\.1:(\d+)-(\d+)\n", line)
        assert match, line
        for port in match.groups():
            link = await connect(int(port))
            assert await ask(link, b"PING\n") == b"PONG\n"
            await close(link)
        process.send_signal(signum)
        _, stderr = await asyncio.wait_for(process.communicate(), 10)
        assert process.returncode == 0, stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_modbus_sim_serves_the_inverter_map() -> None:
    """Test that python -m edgelink.sim modbus serves changing inverter registers and exits 0."""
    from edgelink.drivers.modbus import ModbusTcpConnection

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgelink.sim",
        "modbus",
        "--count",
        "2",
        "--units",
        "2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 10)
        match = re.fullmatch(rb"listening: 2 devices on 127\.0\.0\.1:(\d+)-(\d+)\n", line)
        assert match, line
        conn = ModbusTcpConnection(
            "inv", {"host": "127.0.0.1", "port": int(match.group(2)), "unit_id": 2}
        )
        await conn.connect()
        try:
            tags = ["ir:0", "ir:1:float32", "ir:3*0.1", "ir:8*0.1", "hr:0", "coil:0", "di:0"]
            first = await conn.read_many(tags)
            assert first["ir:0"] == 1 and first["hr:0"] == 100 and first["coil:0"] is True
            assert 0 <= first["ir:1:float32"] <= 5000 and 200 < first["ir:3*0.1"] < 260
            assert 0 <= first["ir:8*0.1"] <= 100 and first["di:0"] is True
            await conn.write("coil:0", False)  # inverter off: no power
            assert await conn.read_many(["ir:0", "ir:1:float32"]) == {
                "ir:0": 0,
                "ir:1:float32": 0.0,
            }
        finally:
            await conn.disconnect()
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 10)
        assert process.returncode == 0, stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_modbus_sim_arguments() -> None:
    """Test that the modbus subcommand parses its options and refuses impossible ones."""
    parser = argparse.ArgumentParser()
    add_sim_arguments(parser)
    args = parser.parse_args(["modbus", "--count", "4", "--base-port", "15020", "--units", "3"])
    assert (args.sim_kind, args.count, args.base_port, args.units) == ("modbus", 4, 15020, 3)
    bad = argparse.Namespace(sim_kind="modbus", count=1, base_port=0, host="127.0.0.1", units=300)
    assert run_sim_from_args(bad) == 2


async def test_modbus_simulator_unplugs_and_replugs_a_device() -> None:
    """Test that a stopped simulated Modbus device refuses and serves again on its port."""
    from edgelink.sim.modbus import ModbusSimulator

    async with ModbusSimulator(3, seed=7) as modbus_sim:
        ports = modbus_sim.ports
        assert len(set(ports)) == 3
        await modbus_sim.stop_device(1)
        with pytest.raises(ConnectionRefusedError):
            await connect(ports[1])
        await modbus_sim.start_device(1)
        assert modbus_sim.ports[1] == ports[1]
        reader, writer = await connect(ports[1])
        # FC 4, ir:0, one register, unit 1: the status register answers "running".
        writer.write(bytes.fromhex("0001 0000 0006 01 04 0000 0001"))
        assert await asyncio.wait_for(reader.readexactly(11), 5) == bytes.fromhex(
            "0001 0000 0005 01 04 02 0001"
        )
        await close((reader, writer))
        assert modbus_sim.requests == 1


async def test_modbus_sim_control_takes_every_device_down_and_up() -> None:
    """Test that --control's 'down' makes every port refuse and 'up' serves them again."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgelink.sim",
        "modbus",
        "--count",
        "3",
        "--control",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdin is not None
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 10)
        match = re.fullmatch(rb"listening: 3 devices on 127\.0\.0\.1:(\d+)-(\d+)\n", line)
        assert match, line
        first, last = int(match.group(1)), int(match.group(2))
        held = await connect(first)
        process.stdin.write(b"down\n")
        assert await asyncio.wait_for(process.stdout.readline(), 10) == b"down: 3 devices\n"
        assert await sees_close(held[0])
        await close(held)
        with pytest.raises(ConnectionRefusedError):
            await connect(last)
        process.stdin.write(b"up\n")
        assert await asyncio.wait_for(process.stdout.readline(), 10) == line
        link = await connect(last)
        await close(link)
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 10)
        assert process.returncode == 0, stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
