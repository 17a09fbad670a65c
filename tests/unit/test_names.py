"""Event types and status reasons as StrEnums: the same strings, JSON and comparisons as before."""

from __future__ import annotations

import json
import time

import pytest

import edgelink
from edgelink import ConnectionManager, EventType, Reason
from edgelink.errors import AuthError, ConnectError, classify
from edgelink.events import DELIBERATE, EVENT_TYPES, make_event

#: The event types as free strings, before the enum: none may change.
_OLD_EVENT_TYPES = {
    "connected", "disconnected", "error", "health_check_failed", "state_change",
    "reconnect_start", "reconnect_ok", "reconnect_failed", "max_retries_exceeded",
    "suspended", "resumed", "tx_drop_detected", "fast_path_active", "connection_stable",
    "device_reset", "spam_suspended", "power_warning", "power_critical",
    "supervisor_restarted", "health_change", "flapping", "flap_cleared", "poll_quarantined",
    "quarantine_released", "panic", "recovered", "config_reloaded", "config_error",
    "webhook_failed", "bridge_buffering", "bridge_dropped", "loop_lag", "route_quarantined",
    "source_quarantined", "quarantine_lifted", "fleet_wake", "failover", "failback",
    "child_started", "child_exited", "heartbeat_missed", "memory_warning", "memory_throttled",
    "memory_released", "memory_killed", "cpu_limited", "priority_refused", "instance_crashed",
    "plugin_update_available", "plugin_check_failed",
}  # fmt: skip


def test_event_types_are_the_same_strings_as_before() -> None:
    """Test that EventType has exactly the old event type strings and EVENT_TYPES derives from it."""
    assert {t.value for t in EventType} == _OLD_EVENT_TYPES
    assert EVENT_TYPES == _OLD_EVENT_TYPES
    assert all(type(t) is str for t in EVENT_TYPES)


@pytest.mark.parametrize("member", [EventType.RECONNECT_START, Reason.ADMIN_STOP, Reason.REFUSED])
def test_a_member_is_its_string_in_comparisons_json_and_formatting(member: str) -> None:
    """Test that a member equals, hashes, formats and serialises as its plain string."""
    plain = member.value  # type: ignore[attr-defined]
    assert member == plain
    assert {plain: 1}[member] == 1
    assert f"{member}" == plain
    assert str(member) == plain
    assert json.dumps({"k": member}) == json.dumps({"k": plain})


def test_an_event_made_with_a_member_serialises_as_before() -> None:
    """Test that an event built from EventType gives the same dict and JSON as from a string."""
    ts = time.time()
    by_enum = make_event(EventType.DISCONNECTED, "plc", ts, reason=Reason.ADMIN_STOP)
    by_text = make_event("disconnected", "plc", ts, reason="admin_stop")
    assert json.dumps(by_enum.as_dict()) == json.dumps(by_text.as_dict())
    assert by_enum.as_dict()["event"] == "EVENT_DISCONNECTED"


def test_classify_gives_reason_members_and_deliberate_uses_them() -> None:
    """Test that classify's reasons are Reason members equal to the old strings."""
    assert classify(AuthError("no")).reason is Reason.AUTH
    assert classify(ConnectionRefusedError()).reason == "refused"
    assert classify(ConnectError("x")).reason is Reason.CONNECT_FAILED
    assert "shutdown" in DELIBERATE


async def test_a_status_reason_is_a_member_and_a_plain_string(make_manager) -> None:
    """Test that a stopped connection's status reason is Reason.ADMIN_STOP and == 'admin_stop'."""
    manager: ConnectionManager = make_manager()
    manager.add_connection("dev", "tcp", {"host": "127.0.0.1", "port": 9})
    await manager.start()
    await manager.stop_connection("dev")
    status = manager.get_status("dev")
    assert status["reason"] == "admin_stop"
    assert status["reason"] is Reason.ADMIN_STOP
    assert json.loads(json.dumps(status, default=str))["reason"] == "admin_stop"


def test_the_enums_are_public() -> None:
    """Test that EventType and Reason are exported by edgelink."""
    assert {"EventType", "Reason"} <= set(edgelink.__all__)


def test_acronym_cased_driver_names_and_their_old_aliases() -> None:
    """Test that the drivers are TcpConnection etc. and the old names are the same classes."""
    from edgelink.drivers import configs, http, mqtt, tcp
    from edgelink.registry import DriverRegistry

    assert tcp.TCPConnection is tcp.TcpConnection
    assert http.HTTPConnection is http.HttpConnection
    assert mqtt.MQTTConnection is mqtt.MqttConnection
    assert configs.TCPConfig is configs.TcpConfig
    assert configs.HTTPConfig is configs.HttpConfig
    assert configs.MQTTConfig is configs.MqttConfig
    registry = DriverRegistry()
    assert registry.get("tcp") is tcp.TcpConnection
    assert registry.get("mqtt").__name__ == "MqttConnection"
    assert registry.get("http").__name__ == "HttpConnection"


def test_supervisor_adapter_and_its_old_name(make_manager) -> None:
    """Test that Supervisor.adapter is the DriverAdapter, .connection the driver, .driver the alias."""
    from edgelink.connection import DriverAdapter
    from edgelink.drivers.tcp import TcpConnection

    manager: ConnectionManager = make_manager()
    manager.add_connection("dev", "tcp", {"host": "127.0.0.1", "port": 9})
    sup = manager.get_supervisor("dev")
    assert isinstance(sup.connection, TcpConnection)
    assert isinstance(sup.adapter, DriverAdapter)
    assert sup.driver is sup.adapter
