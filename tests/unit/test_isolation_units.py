"""Isolation's pure parts: the RAM escalation, the duty cycle, the config, errors on the wire."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edgelink import errors
from edgelink.isolation.ipc import ChildError, error_from_wire, error_to_wire, to_wire
from edgelink.isolation.limits import CgroupCpu, DutyCycle, MemoryEscalation, cgroup_dir
from edgelink.isolation.spec import IsolationSpec, parse_isolation


@pytest.mark.parametrize(
    ("samples", "steps"),
    [
        ([50, 79], [[], []]),
        ([80, 85, 89], [["warn"], [], []]),
        ([90], [["warn", "throttle"]]),
        ([92, 80, 84, 92], [["warn", "throttle"], ["release"], [], ["throttle"]]),
        ([85, 70, 85], [["warn"], [], ["warn"]]),
        ([100], [["warn", "kill"]]),
        ([95, 120, 85], [["warn", "throttle"], ["kill"], ["warn"]]),
    ],
)
def test_memory_escalation(samples: list[float], steps: list[list[str]]) -> None:
    """Test warn at 80 %, throttle at 90 %, kill at 100 %, with hysteresis, per sample."""
    esc = MemoryEscalation(100.0)
    assert [[str(s) for s in esc.update(x)] for x in samples] == steps


def test_duty_cycle_holds_a_busy_process_at_its_share() -> None:
    """Test that a process using all it may run for gets the share over a long run."""
    dc = DutyCycle(share=0.1, burst=0.005)
    cpu, run, t = 0.0, True, 0.0
    period = 0.05
    for _ in range(20 * 60):  # 60 s of decisions
        if run:
            cpu += period  # busy: a whole period of CPU while running
        t += period
        run = dc.decide(t, cpu)
    assert abs(cpu / t - 0.1) < 0.01


def test_duty_cycle_leaves_a_light_process_alone() -> None:
    """Test that a process below its share is never stopped."""
    dc = DutyCycle(share=0.5)
    assert all(dc.decide(i * 0.1, i * 0.01) for i in range(100))


def test_isolation_spec_shapes_and_limits() -> None:
    """Test the 'process'/'none' shorthands, defaults and rejected values."""
    assert parse_isolation(None) is None and parse_isolation("none") is None
    spec = parse_isolation("process")
    assert spec == IsolationSpec() and spec.pulse_timeout == 15.0 and spec.nice == 0
    assert parse_isolation({"priority": "heavy"}).nice == 10  # type: ignore[union-attr]
    assert IsolationSpec(heartbeat_interval=0.2, heartbeat_timeout=1.0).pulse_timeout == 1.0
    for bad in ({"priority": 25}, {"max_cpu_share": 0}, {"memory_warn_at": 0.95}, {"x": 1}):
        with pytest.raises(ValidationError):
            IsolationSpec.model_validate(bad)
    with pytest.raises(ValueError, match="isolation must be"):
        parse_isolation("thread")


def test_errors_cross_the_wire_as_their_class_with_causes() -> None:
    """Test that edgelink errors and builtins come back as their class (the policy), others as ChildError."""
    try:
        try:
            raise ConnectionRefusedError(111, "refused")
        except OSError as inner:
            raise errors.ConnectError("cannot connect", connection_id="x") from inner
    except errors.ConnectError as exc:
        back = error_from_wire(error_to_wire(exc), "iso")
    assert type(back) is errors.ConnectError and back.connection_id == "iso"
    assert isinstance(back.__cause__, ConnectionRefusedError)
    assert errors.classify(back).reason == "refused"
    dev = error_from_wire(error_to_wire(errors.DeviceError("no", code=2)), "iso")
    assert isinstance(dev, errors.DeviceError) and dev.code == 2
    cfg = error_from_wire(error_to_wire(errors.ConfigError("bad", path="p")), "iso")
    assert isinstance(cfg, errors.ConfigError) and errors.classify(cfg).action == "permanent"

    class OddError(Exception):
        pass

    odd = error_from_wire(error_to_wire(OddError("x")), "iso")
    assert isinstance(odd, ChildError) and "OddError: x" in str(odd)
    assert errors.classify(odd).action == "poison"


def test_to_wire_reduces_what_msgpack_cannot_carry() -> None:
    """Test the reductions of values a driver may report."""
    assert to_wire({1, 2}) in ([1, 2], [2, 1])
    assert to_wire((1, "a")) == [1, "a"]
    assert to_wire(bytearray(b"ab")) == b"ab"
    assert to_wire(errors.Action.RECONNECT) == "reconnect"
    assert to_wire(Path("/x")) == "/x"


def test_cgroup_needs_a_delegated_cpu_controller(tmp_path: Path) -> None:
    """Test that without the cpu controller enabled for children the reason comes back, and with it the files are written.

    The cgroup filesystem is stood in for by a folder: this machine's cgroup v2
    hierarchy has no controllers to delegate (the real run is duty cycling).
    """
    assert CgroupCpu.create("g", 1, 0.1, base=tmp_path).startswith("cannot read")  # type: ignore[union-attr]
    (tmp_path / "cgroup.subtree_control").write_text("memory io\n")
    assert "cpu controller is not enabled" in str(CgroupCpu.create("g", 1, 0.1, base=tmp_path))
    (tmp_path / "cgroup.subtree_control").write_text("cpu memory\n")
    group = CgroupCpu.create("g", 4242, 0.25, base=tmp_path)
    assert isinstance(group, CgroupCpu)
    assert (tmp_path / "g" / "cpu.max").read_text() == "25000 100000\n"
    assert (tmp_path / "g" / "cgroup.procs").read_text() == "4242\n"


def test_cgroup_dir_reads_proc(tmp_path: Path) -> None:
    """Test the cgroup v2 path from /proc/self/cgroup and mountinfo (and None on v1 only)."""
    (tmp_path / "cgroup").write_text("0::/system.slice/edgelink.service\n")
    (tmp_path / "mountinfo").write_text(
        "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
    )
    assert cgroup_dir(tmp_path) == Path("/sys/fs/cgroup/system.slice/edgelink.service")
    (tmp_path / "cgroup").write_text("4:memory:/x\n")
    assert cgroup_dir(tmp_path) is None
