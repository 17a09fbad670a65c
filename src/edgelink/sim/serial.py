r"""A simulated serial device on a socat pty pair: the peer of the ``serial`` driver.

`SerialLink` is the cable: a ``socat`` process joining two pseudo-terminals,
each reachable under a fixed path (a symlink socat creates). The driver opens
``path``; the device opens ``device_path``. Killing socat is pulling the plug:
both ends see the port vanish and the paths go away. A new socat on the same
paths is the plug going back in.

`SerialDevice` is the device at the other end. It speaks the PING/PONG line
protocol of `edgelink.sim.tcp` (``PING`` -> ``PONG``, ``<tag>?``,
``<tag>=<value>``, ``ID?``), framed by the same `Framing` rules as the driver
(``line`` with a delimiter, or ``length`` with a length prefix).

``edgelink sim serial --link PATH`` runs both until SIGTERM or SIGINT
(`run_serial_simulator`). Needs ``socat`` on the PATH and a POSIX system.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import MutableMapping
from pathlib import Path

from edgelink.drivers.framing import FrameError, Framing
from edgelink.lifecycle import Service
from edgelink.sim.tcp import BAD_REQUEST, answer_request

__all__ = ["SerialDevice", "SerialLink", "run_serial_simulator"]

logger = logging.getLogger(__name__)

#: How long `SerialLink.start` waits for socat to create both paths.
START_TIMEOUT = 5.0


class SerialLink(Service):
    """A socat pty pair: a serial cable between ``path`` and ``device_path``.

    Example:
        async with SerialLink(tmp_path / "ttyS0") as link:
            ...                       # the driver opens link.path
            await link.stop()         # unplugged: the port vanishes
            await link.start()        # plugged back in, same paths

    Args:
        path: Where the driver's end appears (a symlink to a ``/dev/pts/N``).
        device_path: Where the device's end appears; ``<path>.device`` by default.
        socat: The socat executable.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        device_path: str | os.PathLike[str] | None = None,
        *,
        socat: str = "socat",
    ) -> None:
        self.path = Path(path)
        self.device_path = (
            Path(device_path) if device_path is not None else Path(f"{self.path}.device")
        )
        if self.path == self.device_path:
            raise ValueError(f"path and device_path must differ, both are {self.path}")
        self._socat = socat
        self._proc: asyncio.subprocess.Process | None = None
        self.plugs = 0

    def __repr__(self) -> str:
        state = "plugged" if self.is_running() else "unplugged"
        return f"<SerialLink {self.path} <-> {self.device_path} {state} plugs={self.plugs}>"

    def is_running(self) -> bool:
        """Return whether the socat process is alive."""
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> None:
        """Start socat and wait until both paths lead to a pty. No-op if running.

        Raises:
            FileNotFoundError: if socat is not installed.
            OSError: if socat exits or does not create the paths within 5 s.
        """
        if self.is_running():
            return
        exe = shutil.which(self._socat)
        if exe is None:
            raise FileNotFoundError(
                f"{self._socat!r} not found: install socat (apt-get install socat)"
            )
        for p in (self.path, self.device_path):
            p.parent.mkdir(parents=True, exist_ok=True)
            self._remove_stale(p)
        # raw,echo=0 on both ends: bytes pass unchanged, nothing is echoed back.
        proc = await asyncio.create_subprocess_exec(
            exe,
            f"pty,raw,echo=0,link={self.path}",
            f"pty,raw,echo=0,link={self.device_path}",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._proc = proc
        deadline = time.monotonic() + START_TIMEOUT
        # socat makes the paths a few milliseconds after it starts; there is
        # nothing to wait on but the file system.
        while not (self.path.exists() and self.device_path.exists()):
            if proc.returncode is not None or time.monotonic() > deadline:
                await self.stop()
                raise OSError(f"socat did not create {self.path} and {self.device_path}")
            await asyncio.sleep(0.005)
        self.plugs += 1
        logger.debug("serial link up: %s <-> %s", self.path, self.device_path)

    async def stop(self) -> None:
        """Kill socat (the plug is pulled) and remove both paths. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.returncode is None:
                # SIGKILL, not SIGTERM: a pulled cable gives nobody time to tidy up.
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()
        # socat had no chance to remove its symlinks: the paths vanish like a
        # device node of an unplugged USB adapter.
        for p in (self.path, self.device_path):
            self._remove_stale(p)

    @staticmethod
    def _remove_stale(p: Path) -> None:
        if p.is_symlink() and not p.exists():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


class SerialDevice:
    r"""A line-protocol device on the device end of a `SerialLink`.

    Attach it after the link is up; when the link goes away it detaches by
    itself (`attached` turns False) and can be attached again once the link is
    back.

    Example:
        device = SerialDevice(link.device_path, values={"temperature": "21.5"})
        device.attach()
        device.send_frame(b"alarm=1")   # an unsolicited message
        device.send_raw(b"\xff\xfe")    # line noise

    Args:
        path: The device end of the link.
        framing: How messages are framed (the driver must use the same).
        values: The device's values; the dict is used as is.
        identity: The answer to ``ID?``; a random hex boot id by default.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        framing: Framing | None = None,
        *,
        values: MutableMapping[str, str] | None = None,
        identity: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.framing = framing or Framing()
        self.values: MutableMapping[str, str] = {} if values is None else values
        self.identity = secrets.token_hex(8) if identity is None else identity
        #: False: requests are read and counted but never answered (a hung device).
        self.respond = True
        #: Requests received so far, answered or not.
        self.requests = 0
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._decoder = self.framing.decoder()

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return f"<SerialDevice {self.path} {state} requests={self.requests}>"

    @property
    def attached(self) -> bool:
        """Whether the device holds its end of the link open."""
        return self._fd is not None

    def attach(self) -> None:
        """Open the device end of the link and start answering. No-op if attached.

        Must be called on the event loop.

        Raises:
            OSError: if the path cannot be opened (the link is down).
        """
        if self._fd is not None:
            return
        import termios
        import tty

        fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            tty.setraw(fd, termios.TCSANOW)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._decoder.reset()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._on_readable)

    def detach(self) -> None:
        """Close the device end of the link. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(fd)
        os.close(fd)

    def send_frame(self, payload: bytes) -> None:
        """Send one framed message on the device's own initiative.

        Raises:
            FrameError: if the payload cannot be framed.
        """
        self.send_raw(self.framing.encode(payload))

    def send_raw(self, data: bytes) -> None:
        """Send bytes exactly as given (garbage, partial frames). Ignored when detached."""
        fd = self._fd
        if fd is None:
            return
        try:
            # A pty takes kilobytes without blocking; a short write here only
            # drops the tail of a test's garbage, which is fine for a simulator.
            os.write(fd, data)
        except OSError:
            self.detach()

    def _on_readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            # EIO: the other end of the pty is gone (socat was killed).
            self.detach()
            return
        if not data:
            self.detach()
            return
        try:
            requests = self._decoder.feed(data)
        except FrameError:
            self._decoder.reset()
            self._answer(BAD_REQUEST)
            return
        for request in requests:
            self.requests += 1
            if self.respond:
                self._answer(
                    answer_request(request.decode("utf-8", "replace"), self.values, self.identity)
                )

    def _answer(self, text: str) -> None:
        try:
            self.send_frame(text.encode("utf-8"))
        except FrameError:
            # An answer the framing cannot carry (a value over max_frame): a
            # real device would send nothing sensible either.
            logger.debug("serial device %s: cannot frame answer %r", self.path, text[:32])


async def run_serial_simulator(
    link_path: str | os.PathLike[str],
    *,
    device_path: str | os.PathLike[str] | None = None,
    framing: Framing | None = None,
) -> None:
    """Run a simulated device behind a new socat pty pair until cancelled.

    Prints one ``listening: serial device on PATH`` line once the link is up.
    If the device's end is closed under it the device re-attaches.

    Raises:
        OSError: if socat is missing or the link cannot be created.
    """
    async with SerialLink(link_path, device_path) as link:
        device = SerialDevice(link.device_path, framing, values={"temperature": "21.5"})
        device.attach()
        print(f"listening: serial device on {link.path}", flush=True)
        try:
            while True:
                await asyncio.sleep(0.5)
                if not device.attached and link.is_running():
                    with contextlib.suppress(OSError):
                        device.attach()
        finally:
            device.detach()
