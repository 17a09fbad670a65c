"""The git and pip commands the plugin manager runs (asyncio subprocesses, errors said)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["CommandError", "run"]


class CommandError(Exception):
    """A command failed: ``str()`` is what it said (the last lines of its output)."""


async def run(args: Sequence[str], *, cwd: Path | None = None, timeout: float = 300.0) -> str:
    """Run a command; return its stdout.

    Raises:
        CommandError: if it fails, times out or cannot start, with the reason.
    """
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise CommandError(f"{args[0]} cannot run: {exc}") from None
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CommandError(f"{' '.join(args[:3])} took longer than {timeout:g} s") from None
    if proc.returncode != 0:
        said = (err or out).decode(errors="replace").strip().splitlines()[-3:]
        raise CommandError(f"{' '.join(args[:3])} failed: {' / '.join(said) or proc.returncode}")
    return out.decode(errors="replace")
