"""Start-up of ``edgelink run`` and ``edgelink check`` as real processes, and the folder they own.

User errors at start are one line with the file, the JSON path and the
reason, exit status 2; ``check`` loads a folder exactly as ``run`` does; one
gateway per folder; the folder watch ignores the service's own files; data
files are private; routing.json is written atomically.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgelink._documents import write_atomically
from edgelink.service.gateway import Gateway
from edgelink.service.lock import LOCK_FILE, FolderLock

EDGELINK = [sys.executable, "-m", "edgelink.cli"]
TOKEN = "startup-test-token-0123456789abcdef"
ENV = {
    **{k: v for k, v in os.environ.items() if k != "PYTHONASYNCIODEBUG"},
    "EDGELINK_TOKEN": TOKEN,
}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tcp(port: int | None = None) -> dict[str, Any]:
    return {"type": "tcp", "config": {"host": "127.0.0.1", "port": port or closed_port()}}


def write_folder(
    folder: Path,
    connections: dict[str, Any] | None = None,
    routing: Any = None,
    service: Any = None,
    settings: dict[str, Any] | None = None,
) -> Path:
    folder.mkdir(exist_ok=True)
    doc = {"settings": settings or {}, "connections": connections or {"dev": tcp()}}
    (folder / "connections.json").write_text(json.dumps(doc))
    for name, content in (("routing.json", routing), ("edgelink.json", service)):
        if content is not None:
            text = content if isinstance(content, str) else json.dumps(content)
            (folder / name).write_text(text)
    return folder


def run_cli(*args: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDGELINK, *args], capture_output=True, text=True, timeout=timeout, check=False, env=ENV
    )


def start_run(folder: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*EDGELINK, "run", "--config", str(folder), "--port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )


def read_until(proc: subprocess.Popen[str], needle: str, timeout: float = 15.0) -> list[str]:
    """Read lines until one contains ``needle``; return every line read."""
    assert proc.stdout is not None
    lines: list[str] = []
    found = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if needle in line:
                found.set()
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout)
    if not found.is_set():
        raise AssertionError(f"no {needle!r} in: {''.join(lines)}")
    return lines


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM the process and return the rest of its output."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


ROUTE = {"id": "r", "from": "dev.x", "to": "log.system"}

RUN_ERRORS = [
    ("routing-syntax", {"routing": '{"routes": ['}, "routing.json", "(root)", "JSON syntax error"),
    ("routing-shape", {"routing": "[]"}, "routing.json", "(root)", "top level must be an object"),
    (
        "routing-unknown-key",
        {"routing": {"routes": [{**ROUTE, "too": "x"}]}},
        "routing.json",
        "routes[0].too",
        "unknown key",
    ),
    (
        "routing-unknown-target",
        {"routing": {"routes": [{**ROUTE, "to": ["log.system", "webhook.nope"]}]}},
        "routing.json",
        "routes[0].to[1]",
        "unknown target 'webhook.nope'",
    ),
    (
        "routing-condition",
        {"routing": {"routes": [{**ROUTE, "condition": "value >"}]}},
        "routing.json",
        "routes[0].condition",
        "bad condition",
    ),
    (
        "routing-transform",
        {"routing": {"routes": [{**ROUTE, "transform": "bogus(1)"}]}},
        "routing.json",
        "routes[0].transform",
        "unknown transform",
    ),
    (
        "routing-duplicate-id",
        {"routing": {"routes": [ROUTE, ROUTE]}},
        "routing.json",
        "routes[1].id",
        "duplicate route id",
    ),
    (
        "routing-several",
        {"routing": {"routes": [{**ROUTE, "to": ""}, {**ROUTE, "id": "s", "from": ""}]}},
        "routing.json",
        "routes[",
        "and 1 more",
    ),
    (
        "storage-directory",
        {"service": {"storage": {"path": "."}}},
        "edgelink.json",
        "storage.path",
        "is a directory",
    ),
    (
        "storage-under-a-file",
        {"service": {"storage": {"path": "connections.json/db.sqlite"}}},
        "edgelink.json",
        "storage.path",
        "is not a directory",
    ),
    (
        "storage-not-a-database",
        {"service": {"storage": {"path": "junk.db"}}, "junk": True},
        "edgelink.json",
        "storage.path",
        "not a database",
    ),
    (
        "driver-port",
        {"connections": {"dev": {"type": "tcp", "config": {"host": "h", "port": 99999}}}},
        "connections.json",
        "connections.dev.config.port",
        "less than or equal to 65535",
    ),
    (
        "driver-unknown-type",
        {"connections": {"dev": {"type": "nope"}}},
        "connections.json",
        "connections.dev.type",
        "unknown connection type",
    ),
    (
        "bridge-not-mqtt",
        {"service": {"bridge": {"connection": "dev"}}},
        "edgelink.json",
        "bridge.connection",
        "must be an mqtt connection",
    ),
]


@pytest.mark.parametrize(
    ("case", "parts", "file", "where", "why"), RUN_ERRORS, ids=[c[0] for c in RUN_ERRORS]
)
def test_run_start_error_is_one_line_with_rc_2(
    tmp_path: Path, case: str, parts: dict[str, Any], file: str, where: str, why: str
) -> None:
    """Test that a bad folder at start is one line (file, JSON path, reason), rc 2, no traceback."""
    junk = parts.pop("junk", False)
    folder = write_folder(tmp_path / "cfg", **parts)
    if junk:
        (folder / "junk.db").write_bytes(b"this is no sqlite file, only junk bytes" * 4)
    proc = run_cli(
        "run", "--config", str(folder), "--port", "0", "--no-watch", "--log-level", "WARNING"
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"edgelink: {folder / file}: {where}"), lines[0]
    assert why in lines[0]
    assert "<config>" not in lines[0] and "<dict>" not in lines[0]
    # Nothing was left behind holding the folder.
    assert check_is_free(folder) is True


def test_run_start_error_at_info_level_has_no_traceback(tmp_path: Path) -> None:
    """Test that at the default log level a bad routing.json still ends in one error line, rc 2."""
    folder = write_folder(tmp_path, routing={"routes": [{**ROUTE, "condition": "value >"}]})
    proc = run_cli("run", "--config", str(folder), "--port", "0", "--no-watch")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edgelink: ")]
    assert len(errors) == 1 and "routes[0].condition" in errors[0]


# ------------------------------------------------------------------ check

CHECK_ERRORS = [
    ("unknown-type", {"type": "nope"}, "connections.dev.type", "unknown connection type"),
    ("missing-port", {"type": "tcp", "config": {"host": "h"}}, "connections.dev.config", "port"),
    (
        "port-99999",
        {"type": "tcp", "config": {"host": "h", "port": 99999}},
        "connections.dev.config.port",
        "less than or equal to 65535",
    ),
    (
        "modbus-tag",
        {
            "type": "modbus_tcp",
            "config": {"host": "h", "port": 502},
            "poll": [{"tags": ["hr:abc"], "interval": 1}],
        },
        "connections.dev.poll[0].tags[0]",
        "hr:abc",
    ),
]


@pytest.mark.parametrize("as_dir", [True, False], ids=["dir", "file"])
@pytest.mark.parametrize(
    ("case", "entry", "where", "why"), CHECK_ERRORS, ids=[c[0] for c in CHECK_ERRORS]
)
def test_check_refuses_what_run_refuses(
    tmp_path: Path, case: str, entry: dict[str, Any], where: str, why: str, as_dir: bool
) -> None:
    """Test that check builds every driver's config: it refuses what run refuses, naming the file."""
    folder = write_folder(tmp_path, connections={"dev": entry})
    target = folder if as_dir else folder / "connections.json"
    checked = run_cli("check", str(target))
    assert checked.returncode == 1, checked.stdout
    first = checked.stdout.splitlines()[0]
    assert first.startswith(f"ERROR: {folder / 'connections.json'}: {where}"), first
    assert why in checked.stdout
    ran = run_cli("run", "--config", str(folder), "--port", "0", "--no-watch")
    assert ran.returncode == 2
    assert f"{folder / 'connections.json'}: {where}" in ran.stderr


def test_check_dir_loads_the_folder_as_run_does(tmp_path: Path) -> None:
    """Test that check DIR validates routes and edgelink.json too, writing nothing."""
    folder = write_folder(
        tmp_path,
        connections={"dev": tcp(), "broker": {"type": "mqtt", "config": {"host": "h"}}},
        routing={"routes": [ROUTE, {**ROUTE, "id": "hook", "to": "webhook.alerts"}]},
        service={
            "bridge": {"connection": "broker"},
            "webhooks": {"alerts": {"url": "http://127.0.0.1:9/hook"}},
        },
    )
    before = sorted(p.name for p in folder.iterdir())
    ok = run_cli("check", str(folder))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip() == "OK: 2 connections (broker, dev); 2 routes"
    assert sorted(p.name for p in folder.iterdir()) == before  # no lock, token or database
    (folder / "edgelink.json").write_text(json.dumps({"bridge": {"connection": "dev"}}))
    bad = run_cli("check", str(folder))
    assert bad.returncode == 1
    assert bad.stdout.startswith(f"ERROR: {folder / 'edgelink.json'}: bridge.connection")
    (folder / "edgelink.json").write_text(json.dumps({"storage": {"path": "."}}))
    assert "storage.path" in run_cli("check", str(folder)).stdout
    (folder / "edgelink.json").unlink()
    bad = run_cli("check", str(folder))
    assert bad.stdout.startswith(f"ERROR: {folder / 'routing.json'}: routes[1].to")
    assert run_cli("check", str(folder / "routing.json")).stdout.strip() == "OK: 2 routes"
    (folder / "routing.json").write_text('{"routes": [{"id": "x"}]}')
    assert run_cli("check", str(folder / "routing.json")).stdout.startswith("ERROR: ")


# ------------------------------------------------------------------- lock


@pytest.mark.timeout(60)  # three `edgelink run` processes start one after the other
def test_second_run_on_the_same_folder_exits_naming_the_first(tmp_path: Path) -> None:
    """Test that a second run on one folder (another port) exits 2 naming the first's PID."""
    folder = write_folder(tmp_path)
    first = start_run(folder, "--no-watch")
    try:
        read_until(first, "running;")
        assert (folder / LOCK_FILE).read_text().strip() == str(first.pid)
        assert stat.S_IMODE((folder / LOCK_FILE).stat().st_mode) == 0o600
        second = run_cli("run", "--config", str(folder), "--port", "0", "--no-watch")
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"PID {first.pid}" in second.stderr
        assert len(second.stderr.splitlines()) == 1 and "Traceback" not in second.stderr
        assert first.poll() is None  # the first one runs on, untouched
        assert check_is_free(folder) is False
        # A killed holder leaves its file behind, with its PID: that must not block.
        first.kill()
        first.wait(10)
        assert (folder / LOCK_FILE).read_text().strip() == str(first.pid)
        third = start_run(folder, "--no-watch")
        try:
            read_until(third, "running;")
            assert (folder / LOCK_FILE).read_text().strip() == str(third.pid)
        finally:
            assert "Traceback" not in stop(third)
        assert third.returncode == 0
    finally:
        stop(first)


def check_is_free(folder: Path) -> bool:
    lock = FolderLock(folder)
    try:
        lock.acquire()
    except ValueError:
        return False
    lock.release()
    return True


async def test_gateway_releases_the_folder_on_stop(tmp_path: Path) -> None:
    """Test that the lock is held while a gateway runs and free after stop (in one process too)."""
    folder = write_folder(tmp_path)
    gw = Gateway(folder, watch=False)
    await gw.start()
    try:
        assert check_is_free(folder) is False
        with pytest.raises(ValueError, match=f"PID {os.getpid()}"):
            await Gateway(folder, watch=False).start()
    finally:
        await gw.stop()
    assert check_is_free(folder) is True


# ------------------------------------------------------------------ watch


def test_watch_ignores_own_files_and_logs_one_reload_per_change(tmp_path: Path) -> None:
    """Test that the service's own writes log nothing, and one real change logs one reload."""
    fast = {"reconnect_initial_delay": 0.02, "reconnect_max_delay": 0.05, "reconnect_jitter": 0}
    folder = write_folder(tmp_path, settings=fast)
    proc = start_run(folder)
    lines: list[str] = []
    try:
        lines += read_until(proc, "running;")
        db = folder / "system_logs.db"
        size = db.stat().st_size + (folder / "system_logs.db-wal").stat().st_size
        time.sleep(1.5)  # reconnect events of the closed port are written meanwhile
        grown = db.stat().st_size + (folder / "system_logs.db-wal").stat().st_size
        assert grown > size  # the service did write its own files in the watched folder
        (folder / "routing.json").write_text(json.dumps({"routes": [ROUTE]}))
        lines += read_until(proc, "config changed")
        time.sleep(1.0)
    finally:
        lines += stop(proc).splitlines(keepends=True)
    out = "".join(lines)
    assert not [line for line in lines if "system_logs.db" in line or LOCK_FILE in line], out
    # watchfiles' own line, for the one real change at most (its level is not ours to set)
    assert len([line for line in lines if "change detected" in line]) <= 1, out
    assert len([line for line in lines if "config changed" in line]) == 1, out
    reloaded = f"routes loaded from {folder / 'routing.json'}"
    assert len([line for line in lines if reloaded in line]) == 1, out


# ------------------------------------------------------------------ files


@pytest.mark.parametrize("umask", [0o022, 0o000])
async def test_data_files_are_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """Test that the database (with -wal/-shm, the bridge buffer's home) and lock are 0600."""
    folder = write_folder(tmp_path)
    old_db = folder / "system_logs.db"
    old_db.touch(mode=0o644)
    os.chmod(old_db, 0o644)  # a database left by an older edgelink is narrowed too
    previous = os.umask(umask)
    try:
        gw = Gateway(folder, watch=False)
        await gw.start()
        try:
            assert gw.events is not None and gw.db is not None
            gw.events.record_error("test", "written")
            await gw.events.flush()
            names = ["system_logs.db", "system_logs.db-wal", "system_logs.db-shm", LOCK_FILE]
            modes = {name: stat.S_IMODE((folder / name).stat().st_mode) for name in names}
            assert modes == dict.fromkeys(names, 0o600)
        finally:
            await gw.stop()
    finally:
        os.umask(previous)


def test_write_atomically_fsyncs_the_file_and_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Test that the file and then its folder are fsynced, and the content and mode are right."""
    synced: list[tuple[str, bytes | None]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            synced.append(("dir", None))
        else:
            synced.append(("file", os.pread(fd, 1 << 16, 0)))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    target = tmp_path / "routing.json"
    target.write_text("old")
    os.chmod(target, 0o640)
    write_atomically(target, '{"routes": []}\n')
    assert synced == [("file", b'{"routes": []}\n'), ("dir", None)]
    assert target.read_text() == '{"routes": []}\n'
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["routing.json"]  # no temp file left


async def test_replace_routes_writes_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Test that replace_routes fsyncs routing.json and its folder, and the file holds the table."""
    folder = write_folder(tmp_path)
    gw = Gateway(folder, watch=False)
    await gw.start()
    try:
        synced: list[str] = []
        real_fsync = os.fsync

        def recording_fsync(fd: int) -> None:
            st = os.fstat(fd)
            synced.append("dir" if stat.S_ISDIR(st.st_mode) else "file")
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", recording_fsync)
        table = {"version": "1.0", "routes": [ROUTE]}
        report = await gw.replace_routes(table)
        assert report["ok"] is True
        assert synced[-2:] == ["file", "dir"]
        assert json.loads((folder / "routing.json").read_text()) == table
        assert not list(folder.glob("*.tmp"))
    finally:
        await gw.stop()


async def test_reload_errors_name_the_file(tmp_path: Path) -> None:
    """Test that a driver's config error on reload names connections.json, not <config>."""
    folder = write_folder(tmp_path)
    gw = Gateway(folder, watch=False)
    await gw.start()
    try:
        bad = {"connections": {"dev": {"type": "tcp", "config": {"host": "h", "port": 99999}}}}
        (folder / "connections.json").write_text(json.dumps(bad))
        report = await gw.reload({"connections"})
        assert report["connections"]["ok"] is False
        error = gw.config_errors["connections"]
        assert error.startswith(f"{folder / 'connections.json'}: connections.dev.config.port:")
        routes = {"routes": [{**ROUTE, "to": "webhook.ghost"}]}
        (folder / "routing.json").write_text(json.dumps(routes))
        report = await gw.reload({"routing"})
        assert "unknown target 'webhook.ghost'" in gw.config_errors["routing"]
        with pytest.raises(ValueError, match=r"routes\[0\]\.to"):
            await gw.replace_routes(routes)
    finally:
        await gw.stop()
