"""`PostgresServer`: a private PostgreSQL on a free loopback port, for tests.

It runs the machine's installed PostgreSQL programs (``initdb``, ``postgres``;
found on PATH or under ``/usr/lib/postgresql/<version>/bin``, newest first) in
a temporary folder of its own: a fresh cluster with trust authentication for
the ``postgres`` user, listening on 127.0.0.1 only, without fsync. It never
touches a system server. PostgreSQL refuses to run as root, so as root the
programs run as the ``postgres`` user (``runuser``) in a folder given to it.

Example:
    with PostgresServer() as pg:
        url = pg.create_database("registry_test")   # postgresql+asyncpg://...
        ...
        pg.drop_database("registry_test")
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from edgelink.testing.mosquitto import _free_port

__all__ = ["PostgresNotFoundError", "PostgresServer", "find_postgres_bin"]

_LOOPBACK = "127.0.0.1"
_USER = "postgres"
#: Tries to find a free port: another process may take ours between probe and bind.
_PORT_TRIES = 5


class PostgresNotFoundError(RuntimeError):
    """The PostgreSQL server programs are not installed."""


def find_postgres_bin() -> Path:
    """Return the folder holding ``initdb`` and ``postgres`` (the newest version's).

    Raises:
        PostgresNotFoundError: naming the package to install.
    """
    for folder in sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parent.name.split(".")],
        reverse=True,
    ):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "postgres").exists():
            return Path(folder)
    initdb = shutil.which("initdb")
    if initdb is not None:
        found = Path(initdb).resolve().parent
        if (found / "postgres").exists():
            return found
    raise PostgresNotFoundError(
        "PostgreSQL is not installed (no initdb/postgres): apt-get install postgresql"
        " (scripts/bootstrap does)"
    )


class PostgresServer:
    """One ``postgres`` process with its own cluster in a temporary folder.

    Args:
        bin_dir: The folder of ``initdb``/``postgres`` (`find_postgres_bin` if None).

    Raises:
        PostgresNotFoundError: at `start` if PostgreSQL is not installed.
    """

    def __init__(self, *, bin_dir: str | os.PathLike[str] | None = None) -> None:
        self.host = _LOOPBACK
        self._bin = Path(bin_dir) if bin_dir is not None else None
        self._dir: Path | None = None
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<PostgresServer {self.host}:{self._port} {state}>"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port the server listens on.

        Raises:
            RuntimeError: before `start`.
        """
        if self._port is None:
            raise RuntimeError("the PostgreSQL server has no port before start()")
        return self._port

    @property
    def is_running(self) -> bool:
        """True while the postgres process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def url(self, database: str = "postgres", *, driver: str = "asyncpg") -> str:
        """The SQLAlchemy URL of a database on this server (``postgresql+asyncpg://...``)."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{_USER}@{self.host}:{self.port}/{database}"

    def _as_postgres(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        return [runuser, "-u", _USER, "--", *argv]

    def _run(self, argv: list[str], *, timeout: float = 60.0) -> None:
        done = subprocess.run(  # noqa: S603 - our argv, no shell
            self._as_postgres(argv), capture_output=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            output = (done.stderr or done.stdout).decode(errors="replace").strip()
            raise RuntimeError(f"{Path(argv[0]).name} failed ({done.returncode}): {output}")

    def start(self, timeout: float = 30.0) -> None:
        """Create the cluster (first time) and start the server; return once it accepts.

        Raises:
            PostgresNotFoundError: if PostgreSQL is not installed.
            RuntimeError: if ``initdb`` or the server fails (with its output).
            TimeoutError: if the server does not accept within ``timeout``.
        """
        if self.is_running:
            return
        bin_dir = self._bin = self._bin or find_postgres_bin()
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="edgelink-postgres-"))
            if os.geteuid() == 0:
                user = pwd.getpwnam(_USER)
                os.chown(self._dir, user.pw_uid, user.pw_gid)
            self._run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self._dir / "data"),
                    "-U",
                    _USER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                ]
            )
        for attempt in range(_PORT_TRIES):
            port = _free_port()
            self._spawn(bin_dir, port)
            try:
                self._wait_ready(port, timeout)
            except RuntimeError:
                self._terminate()
                if attempt == _PORT_TRIES - 1:
                    raise
                continue
            self._port = port
            return

    def _spawn(self, bin_dir: Path, port: int) -> None:
        assert self._dir is not None
        log = open(self._dir / "postgres.log", "ab")  # noqa: SIM115 - the child holds it
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - our argv, no shell
                self._as_postgres(
                    [
                        str(bin_dir / "postgres"),
                        "-D",
                        str(self._dir / "data"),
                        "-p",
                        str(port),
                        "-k",
                        str(self._dir),
                        "-c",
                        f"listen_addresses={self.host}",
                        "-c",
                        "fsync=off",
                        "-c",
                        "synchronous_commit=off",
                        "-c",
                        "full_page_writes=off",
                    ]
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()

    def _wait_ready(self, port: int, timeout: float) -> None:
        assert self._bin is not None
        ready = self._bin / "pg_isready"
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited ({self._proc.returncode}): {self.log_text()}")
            done = subprocess.run(  # noqa: S603 - our argv, no shell
                [str(ready), "-q", "-h", self.host, "-p", str(port), "-U", _USER],
                capture_output=True,
                timeout=10,
                check=False,
            )
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"postgres not ready within {timeout:g} s: {self.log_text()}")
            time.sleep(0.05)

    def log_text(self) -> str:
        """What the server logged so far."""
        if self._dir is None:
            return ""
        path = self._dir / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _psql(self, sql: str) -> None:
        assert self._bin is not None
        done = subprocess.run(  # noqa: S603 - our argv, no shell
            [
                str(self._bin / "psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                _USER,
                "-d",
                "postgres",
                "-c",
                sql,
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.decode(errors='replace').strip()}")

    def create_database(self, name: str) -> str:
        """Create a fresh database (dropped first if it exists); return its URL."""
        self._check_name(name)
        self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, closing its sessions."""
        self._check_name(name)
        self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @staticmethod
    def _check_name(name: str) -> None:
        if not name.replace("_", "").isalnum() or len(name) > 63:
            raise ValueError(f"database names here are letters, digits and _: {name!r}")

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        # SIGINT: PostgreSQL's fast shutdown (sessions are ended, no waiting for them).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 2)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(timeout=5)

    def stop(self) -> None:
        """Stop the server and delete its folder (idempotent)."""
        self._terminate()
        folder, self._dir = self._dir, None
        self._port = None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
