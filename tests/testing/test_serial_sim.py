"""The serial device simulator: socat pty pairs that unplug and re-plug, and ``sim serial``."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import serial

from edgelink.drivers.framing import Framing
from edgelink.sim.serial import SerialLink
from edgelink.testing.serial_peer import SerialPeer


def ask(path: Path, frame: bytes, size: int) -> bytes:
    with serial.Serial(str(path), timeout=2) as port:
        port.write(frame)
        return port.read(size)


async def test_link_paths_appear_vanish_and_come_back(tmp_path: Path) -> None:
    """Test that a link makes both paths, unplugging removes them and re-plugging restores them."""
    link = SerialLink(tmp_path / "ttyA")
    assert link.device_path == tmp_path / "ttyA.device"
    await link.start()
    try:
        assert link.is_running() and link.path.exists() and link.device_path.exists()
        first = os.path.realpath(link.path)
        assert first.startswith("/dev/pts/")
        await link.stop()
        assert not link.is_running()
        assert not os.path.lexists(link.path) and not os.path.lexists(link.device_path)
        await link.start()
        assert link.path.exists() and link.plugs == 2
        assert "plugged" in repr(link)
    finally:
        await link.stop()
        await link.stop()  # idempotent


def test_link_refuses_one_path_for_both_ends(tmp_path: Path) -> None:
    """Test that a link whose two ends share a path is refused with the reason."""
    with pytest.raises(ValueError, match="must differ"):
        SerialLink(tmp_path / "x", tmp_path / "x")


async def test_device_answers_and_detaches_when_unplugged(tmp_path: Path) -> None:
    """Test that the device answers framed requests, detaches on unplug and re-attaches."""
    framing = Framing("length", length_prefix="u8")
    async with SerialPeer(tmp_path / "ttyB", framing=framing, values={"t": "1"}) as peer:
        answer = await asyncio.to_thread(ask, peer.path, b"\x02t?", 2)
        assert answer == b"\x011"
        assert peer.requests == 1
        await peer.unplug()
        assert not peer.device.attached and not peer.is_plugged()
        await peer.plug()
        assert peer.device.attached
        assert await asyncio.to_thread(ask, peer.path, b"\x04PING", 5) == b"\x04PONG"


async def test_device_refuses_overlong_request(tmp_path: Path) -> None:
    """Test that an overlong request gets ERR bad request instead of growing a buffer."""
    device_framing = Framing(max_frame=16)
    async with SerialPeer(tmp_path / "ttyC", framing=device_framing) as peer:
        answer = await asyncio.to_thread(ask, peer.path, b"y" * 40, 16)
        assert answer == b"ERR bad request\n"


def test_sim_serial_command_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    """Test that `sim serial --link` serves PING on the link and removes it on SIGTERM."""
    link = tmp_path / "ttySIM"
    with subprocess.Popen(
        [sys.executable, "-m", "edgelink.sim", "serial", "--link", str(link)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 10)
            assert ready, "no output from sim serial"
            assert proc.stdout.readline() == f"listening: serial device on {link}\n"
            assert ask(link, b"PING\n", 5) == b"PONG\n"
            assert ask(link, b"temperature?\n", 5) == b"21.5\n"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            assert not os.path.lexists(link)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
