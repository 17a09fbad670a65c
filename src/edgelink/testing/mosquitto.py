"""`MosquittoBroker`: a private mosquitto on a free loopback port, for tests and benchmarks.

Each broker gets its own directory with a generated config (and, if asked, a
password file and an ACL file) and listens on 127.0.0.1 only, on a port that
was free when it started: it never touches a system broker on 1883. `stop`,
`kill` and `restart` act on the real process, so a test can take the broker
away and bring it back on the same port.

Example:
    with MosquittoBroker(users={"alice": "secret"}) as broker:
        manager.add_connection("broker", "mqtt", {"host": broker.host, "port": broker.port,
                                                  "username": "alice", "password": "secret"})
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Self

__all__ = ["MosquittoBroker", "MosquittoNotFoundError"]

_LOOPBACK = "127.0.0.1"
#: Tries to find a free port: another process may take the one we picked
#: between our probe and mosquitto's bind.
_PORT_TRIES = 5


class MosquittoNotFoundError(RuntimeError):
    """The mosquitto executable is not installed."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        return int(sock.getsockname()[1])


class MosquittoBroker:
    """One mosquitto process with a generated config on a free loopback port.

    Args:
        users: Username to password; with users, anonymous clients are refused
            unless ``allow_anonymous`` says otherwise.
        acl: The text of a mosquitto ACL file (``user alice`` / ``topic read x/#``).
        allow_anonymous: Defaults to True without users, False with them.
        port: A fixed port; by default a free one is picked at the first start
            and kept for restarts.
        persistence: Keep retained messages and sessions across `restart`
            (in the broker's directory).
        certfile: With ``keyfile``, the listener speaks TLS with this certificate
            (PEM, the chain after the server certificate).
        keyfile: The certificate's private key (PEM).
        extra_config: More mosquitto.conf lines.
        executable: The mosquitto binary (default: found on PATH or in /usr/sbin).

    Raises:
        MosquittoNotFoundError: at `start` if mosquitto is not installed.
    """

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        acl: str | None = None,
        allow_anonymous: bool | None = None,
        port: int | None = None,
        persistence: bool = False,
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
        extra_config: str = "",
        executable: str | None = None,
    ) -> None:
        if (certfile is None) != (keyfile is None):
            raise ValueError("certfile and keyfile go together")
        self.certfile = None if certfile is None else Path(certfile)
        self.keyfile = None if keyfile is None else Path(keyfile)
        self.host = _LOOPBACK
        self.users = dict(users or {})
        self.acl = acl
        self.allow_anonymous = (not self.users) if allow_anonymous is None else allow_anonymous
        self._port = port
        self._fixed_port = port is not None
        self.persistence = persistence
        self.extra_config = extra_config
        self._executable = executable
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<MosquittoBroker {self.host}:{self._port} {state}>"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        """The port the broker listens on.

        Raises:
            RuntimeError: before the first `start` picked one.
        """
        if self._port is None:
            raise RuntimeError("the broker has no port before start()")
        return self._port

    @property
    def is_running(self) -> bool:
        """True while the mosquitto process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self._proc.pid if self.is_running and self._proc is not None else None

    @property
    def directory(self) -> Path:
        """The broker's own directory (config, password file, log)."""
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="edgelink-mosquitto-"))
        return self._dir

    def log_text(self) -> str:
        """What mosquitto logged so far."""
        path = self.directory / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _find(self, name: str) -> str:
        if name == "mosquitto" and self._executable:
            return self._executable
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
        if found is None:
            raise MosquittoNotFoundError(
                f"{name} is not installed: apt-get install mosquitto (scripts/bootstrap does)"
            )
        return found

    def _write_config(self, port: int) -> Path:
        d = self.directory
        lines = [f"listener {port} {self.host}"]
        if self.certfile is not None and self.keyfile is not None:
            lines += [f"certfile {self.certfile}", f"keyfile {self.keyfile}"]
        lines += [
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {d}/",
            f"log_dest file {d / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            # As root mosquitto would switch to the 'mosquitto' user, who cannot
            # read our private directory.
            lines.append("user root")
        if self.users:
            pw = d / "passwords"
            pw.write_text("")
            tool = self._find("mosquitto_passwd")
            for user, password in self.users.items():
                subprocess.run(  # noqa: S603 - our argv, no shell
                    [tool, "-b", str(pw), user, password],
                    check=True,
                    capture_output=True,
                    timeout=10,
                )
            pw.chmod(0o600)
            lines.append(f"password_file {pw}")
        if self.acl is not None:
            acl = d / "acl"
            acl.write_text(self.acl)
            acl.chmod(0o600)
            lines.append(f"acl_file {acl}")
        if self.extra_config:
            lines.append(self.extra_config)
        conf = d / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto and return once it accepts connections.

        Raises:
            MosquittoNotFoundError: if mosquitto is not installed.
            RuntimeError: if it exits or does not listen within ``timeout``.
        """
        if self.is_running:
            return
        exe = self._find("mosquitto")
        tries = 1 if (self._fixed_port or self.starts) else _PORT_TRIES
        error = ""
        for _ in range(tries):
            port = self._port if self._port is not None else _free_port()
            conf = self._write_config(port)
            log_offset = len(self.log_text())
            proc = subprocess.Popen(  # noqa: S603 - our argv, no shell
                [exe, "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._wait_listening(proc, port, timeout):
                self._proc = proc
                self._port = port
                self.starts += 1
                return
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=5)
            error = self.log_text()[log_offset:].strip()[-500:]
            if not self._fixed_port and not self.starts:
                self._port = None  # pick another free port
        raise RuntimeError(f"mosquitto did not start on {self.host}: {error or 'no log'}")

    def _wait_listening(self, proc: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                if sock.connect_ex((self.host, port)) == 0:
                    return True
            time.sleep(0.01)
        return False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop mosquitto (SIGTERM; SIGKILL after ``timeout``) and reap it. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL mosquitto, a crash: clients see their links reset. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=5)

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start(timeout=timeout)

    def publish(
        self, topic: str, payload: str | bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish one message as a plain client (anonymous; blocks until the broker has it).

        Raises:
            RuntimeError: if the broker did not take it within 5 s.
        """
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        client = paho.Client(CallbackAPIVersion.VERSION2)
        client.connect(_LOOPBACK, self.port)
        client.loop_start()
        try:
            info = client.publish(topic, payload, qos=qos, retain=retain)
            info.wait_for_publish(timeout=5.0)
            if not info.is_published():
                raise RuntimeError(f"mosquitto on {self.port} did not take {topic!r}")
        finally:
            client.disconnect()
            client.loop_stop()

    def close(self) -> None:
        """Stop the broker and remove its directory."""
        self.stop()
        d, self._dir = self._dir, None
        if d is not None:
            shutil.rmtree(d, ignore_errors=True)
