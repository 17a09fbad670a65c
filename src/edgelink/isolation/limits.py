"""Resource limits of an isolated instance: the policies (pure) and the cgroup writer.

- `MemoryEscalation`: the seed's escalation for a RAM limit, warning at 80 %,
  throttling at 90 %, kill at 100 %, each step once per crossing (with a
  little hysteresis, so a value that wobbles around a line does not repeat).
- `DutyCycle`: holds a process to a CPU share by stopping and continuing it
  (SIGSTOP/SIGCONT), a token bucket of CPU seconds: the share accrues per
  wall-clock second, what the process used is taken out, and it is stopped
  while the bucket is empty. Over-use between two decisions is paid back, so
  the long-run share is exact however coarse the decisions are.
- `CgroupCpu`: cgroup v2 ``cpu.max`` when the gateway's own cgroup delegates
  the ``cpu`` controller and is writable; `CgroupCpu.create` says why not
  otherwise, and the caller duty-cycles instead.
"""

from __future__ import annotations

import contextlib
import enum
import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CgroupCpu", "DutyCycle", "MemoryEscalation", "MemoryStep", "cgroup_dir"]

#: Below a line by this much (a share of the limit) re-arms its step.
HYSTERESIS = 0.05


class MemoryStep(enum.StrEnum):
    """One step of the RAM escalation."""

    WARN = "warn"
    THROTTLE = "throttle"
    RELEASE = "release"
    KILL = "kill"


@dataclass(slots=True)
class MemoryEscalation:
    """Warn, throttle, kill: what a new RSS sample calls for. Pure.

    Example:
        >>> esc = MemoryEscalation(limit_mb=100)
        >>> [[str(s) for s in esc.update(mb)] for mb in (85, 86, 95, 101)]
        [['warn'], [], ['throttle'], ['kill']]
    """

    limit_mb: float
    warn_at: float = 0.8
    throttle_at: float = 0.9
    warned: bool = False
    throttled: bool = False

    def update(self, rss_mb: float) -> list[MemoryStep]:
        """Return the steps the sample ``rss_mb`` calls for (often none)."""
        ratio = rss_mb / self.limit_mb
        steps: list[MemoryStep] = []
        if ratio >= self.warn_at and not self.warned:
            self.warned = True
            steps.append(MemoryStep.WARN)
        elif ratio < self.warn_at - HYSTERESIS:
            self.warned = False
        if ratio >= 1.0:
            steps.append(MemoryStep.KILL)
            self.reset()
            return steps
        if ratio >= self.throttle_at and not self.throttled:
            self.throttled = True
            steps.append(MemoryStep.THROTTLE)
        elif self.throttled and ratio < self.throttle_at - HYSTERESIS:
            self.throttled = False
            steps.append(MemoryStep.RELEASE)
        return steps

    def reset(self) -> None:
        """Forget the steps taken (a new process starts from scratch)."""
        self.warned = False
        self.throttled = False


@dataclass(slots=True)
class DutyCycle:
    """Hold a process to ``share`` of one core by stopping it while over budget. Pure.

    Feed it `decide(now, cpu_seconds)` every period with the wall clock and the
    process's total CPU time; it answers whether the process should run.

    Example:
        >>> dc = DutyCycle(share=0.1)
        >>> dc.decide(0.0, 0.0), dc.decide(0.05, 0.05), dc.decide(0.5, 0.05), dc.decide(0.6, 0.05)
        (True, False, True, True)
    """

    share: float
    #: The most CPU seconds the bucket holds: an idle process may burst this much.
    burst: float = 0.02
    budget: float = 0.0
    _last_wall: float | None = field(default=None, repr=False)
    _last_cpu: float = field(default=0.0, repr=False)

    def decide(self, now: float, cpu_seconds: float) -> bool:
        """Return True if the process may run until the next decision."""
        if self._last_wall is None:
            self._last_wall, self._last_cpu = now, cpu_seconds
            return True
        self.budget += self.share * max(0.0, now - self._last_wall)
        self.budget -= max(0.0, cpu_seconds - self._last_cpu)
        self.budget = min(self.budget, self.burst)
        self._last_wall, self._last_cpu = now, cpu_seconds
        return self.budget >= 0.0

    def set_share(self, share: float) -> None:
        """Change the share from the next decision on (the debt so far stays)."""
        self.share = share


def cgroup_dir(proc_self: Path = Path("/proc/self")) -> Path | None:
    """Return this process's cgroup v2 directory, or None on a v1-only system."""
    try:
        lines = (proc_self / "cgroup").read_text().splitlines()
        mounts = (proc_self / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    rel = next((line[3:] for line in lines if line.startswith("0::")), None)
    if rel is None:
        return None
    for line in mounts:
        pre, sep, post = line.partition(" - ")
        if sep and post.split(" ", 1)[0] == "cgroup2":
            mount = pre.split(" ")[4]
            return Path(mount) / rel.lstrip("/")
    return None


class CgroupCpu:
    """A cgroup v2 group for one child with ``cpu.max`` set; `close` removes it.

    Use `create`; it returns the reason instead when cgroups cannot be used here.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(
        cls,
        name: str,
        pid: int,
        share: float,
        *,
        base: Path | None = None,
        period_us: int = 100_000,
    ) -> CgroupCpu | str:
        """Make ``<own cgroup>/<name>``, set ``cpu.max`` to ``share`` and move ``pid`` in.

        Returns:
            The group, or why it could not be made (no cgroup v2, the ``cpu``
            controller not delegated, no permission).
        """
        base = base if base is not None else cgroup_dir()
        if base is None:
            return "no cgroup v2 hierarchy"
        try:
            enabled = (base / "cgroup.subtree_control").read_text().split()
        except OSError as exc:
            return f"cannot read {base / 'cgroup.subtree_control'}: {exc.strerror}"
        if "cpu" not in enabled:
            return f"the cpu controller is not enabled for the children of {base}"
        path = base / name
        try:
            path.mkdir(exist_ok=True)
            quota = max(1000, int(share * period_us))
            (path / "cpu.max").write_text(f"{quota} {period_us}\n")
            (path / "cgroup.procs").write_text(f"{pid}\n")
        except OSError as exc:
            with contextlib.suppress(OSError):
                path.rmdir()
            return f"cannot write cgroup {path}: {exc.strerror or exc}"
        return cls(path)

    def close(self) -> None:
        """Remove the group (its process has exited). Never raises."""
        with contextlib.suppress(OSError):
            os.rmdir(self.path)
