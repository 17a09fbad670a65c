"""One gateway per config folder: an exclusive lock on ``.edgelink.lock`` in the folder.

Two ``edgelink run`` on one folder would drive the same devices and write the
same SQLite files. The first takes ``fcntl.flock`` on the lock file for its
whole life and writes its PID there; a second one fails at once with a
`ConfigError` naming that PID. The kernel drops the lock when its process
ends (even by ``kill -9``), so a lock file left behind never blocks: only a
live holder does.

Example:
    lock = FolderLock(Path("config/"))
    lock.acquire()        # raises ConfigError if another gateway runs there
    ...
    lock.release()
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Final

from edgelink.errors import ConfigError

__all__ = ["LOCK_FILE", "FolderLock"]

#: The lock file's name in the config folder.
LOCK_FILE: Final = ".edgelink.lock"


class FolderLock:
    """An exclusive, process-lifetime lock on a config folder.

    Args:
        folder: The config folder; the lock file is created in it, mode 0600.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self._fd: int | None = None

    @property
    def is_held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and write our PID into the file (idempotent).

        Raises:
            ConfigError: if another process holds it (naming its PID), or the
                lock file cannot be created.
        """
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the lock file: {exc.strerror or exc}", file=str(self.path)
            ) from None
        try:
            os.fchmod(fd, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"PID {holder}" if holder else "another process"
            raise ConfigError(
                f"another edgelink ({who}) already runs from this config folder; "
                "stop it first (one gateway per folder)",
                file=str(self.path.parent),
            ) from None
        except OSError as exc:
            os.close(fd)
            raise ConfigError(
                f"cannot lock the config folder: {exc.strerror or exc}", file=str(self.path)
            ) from None
        # The PID of a holder that died may still be there: ours replaces it.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Empty the file and drop the lock (idempotent).

        The file stays: unlinking it would let a third process lock a fresh
        file while a second one still waits on the old inode.
        """
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)

    def __repr__(self) -> str:
        return f"<FolderLock {self.path} {'held' if self.is_held else 'free'}>"


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
