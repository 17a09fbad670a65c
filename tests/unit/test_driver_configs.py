"""Tests of the typed driver configs: one model per driver, validated once by the base class."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import pytest
from pydantic import BaseModel

from edgelink import ConfigError, Connection, ConnectionManager
from edgelink.config import config_json_schema, load_config
from edgelink.drivers.configs import BUILTIN_CONFIG_MODELS, DriverConfig, Host, Port
from edgelink.registry import DriverRegistry

#: A config of every built-in type that builds (no I/O: constructors only store config).
GOOD: dict[str, dict[str, Any]] = {
    "tcp": {"host": "127.0.0.1", "port": 9000, "keepalive_idle": 20, "tcp_user_timeout": 5},
    "serial": {"port": "/dev/ttyUSB0", "baudrate": 115200, "parity": "e", "stopbits": 1.5},
    "modbus_tcp": {"host": "127.0.0.1", "port": 5020, "unit_id": 3, "timeout": 1},
    "modbus_rtu": {"port": "/dev/ttyUSB1", "baudrate": 9600, "unit_id": 2, "parity": "even"},
    "http": {"base_url": "http://127.0.0.1:8080/api", "api_key": "k", "verify": "/ca.pem"},
    "mqtt": {
        "host": "127.0.0.1",
        "subscribe": ["a/+", {"topic": "b/#", "qos": 1, "expect_data": True}],
        "keepalive": 30,
        "will": {"topic": "gw/state", "payload": "offline"},
        "protocol": 5,
    },
    "ads": {"ams_net_id": "192.168.2.162.1.1", "notifications": ["MAIN.x", {"tag": "MAIN.y"}]},
    "zkteco": {"host": "192.168.1.201", "password": 1234, "timeout": 2, "max_chunk": 4096},
    "bms": {"parser": "daly", "port": "/dev/ttyUSB2", "interval": 5, "parity": "n"},
    "ble": {
        "address": "AA:BB:CC:DD:EE:FF",
        "notify": {"t": {"uuid": "2a6e", "format": "i16le", "scale": 0.01}},
        "max_attempts": 2,
    },
}

#: A key each type uses for a port-like number, and one for a keepalive-like number.
PORT_KEY = {
    "tcp": "port",
    "serial": "bytesize",
    "modbus_tcp": "port",
    "modbus_rtu": "bytesize",
    "http": "keepalive_idle",
    "mqtt": "port",
    "ads": "ams_port",
    "zkteco": "port",
    "bms": "bytesize",
    "ble": "max_attempts",
}
KEEPALIVE_KEY = {
    "tcp": "keepalive_idle",
    "serial": "frame_timeout",
    "modbus_tcp": "keepalive_idle",
    "modbus_rtu": "timeout",
    "http": "keepalive_count",
    "mqtt": "keepalive",
    "ads": "timeout",
    "zkteco": "keepalive_idle",
    "bms": "interval",
    "ble": "interval",
}
TYPES = sorted(GOOD)


def build(type_name: str, config: dict[str, Any]) -> None:
    """Build the driver the way the manager does, so errors carry the full JSON path."""
    manager = ConnectionManager()
    manager.add_connection("dev", type_name, config)


def test_every_builtin_type_has_a_model_and_an_example() -> None:
    """Test that the models and this file's examples cover every built-in type."""
    assert sorted(BUILTIN_CONFIG_MODELS) == TYPES
    assert set(TYPES) <= set(DriverRegistry(load_entry_points=False).names())


@pytest.mark.parametrize("type_name", TYPES)
def test_good_config_builds_with_a_typed_cfg(type_name: str) -> None:
    """Test that a good config builds and the driver holds it typed in ``cfg``."""
    driver = DriverRegistry(load_entry_points=False).create("dev", type_name, GOOD[type_name])
    assert isinstance(driver.cfg, BUILTIN_CONFIG_MODELS[type_name])
    assert driver.config == GOOD[type_name]  # the mapping as given stays


@pytest.mark.parametrize("type_name", TYPES)
def test_unknown_key_is_refused_with_its_path(type_name: str) -> None:
    """Test that an unknown key is a ConfigError naming connections.<id>.config.<key>."""
    with pytest.raises(ConfigError) as info:
        build(type_name, {**GOOD[type_name], "bogus_key": 1})
    assert info.value.path == "connections.dev.config.bogus_key"
    assert info.value.message.startswith("unknown key")


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("value", ["abc", "502", 99999, True, 1.5])
def test_bad_port_is_refused_with_its_path(type_name: str, value: object) -> None:
    """Test that a string, an out-of-range number, a boolean or a float is no port."""
    key = PORT_KEY[type_name]
    with pytest.raises(ConfigError) as info:
        build(type_name, {**GOOD[type_name], key: value})
    assert info.value.path == f"connections.dev.config.{key}"
    assert str(value) not in info.value.message  # never echoes the input


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("value", ["x", "10", True, -1])
def test_bad_keepalive_or_timeout_is_refused_with_its_path(type_name: str, value: object) -> None:
    """Test that a keepalive or timeout given as text, a boolean or below range is refused."""
    key = KEEPALIVE_KEY[type_name]
    with pytest.raises(ConfigError) as info:
        build(type_name, {**GOOD[type_name], key: value})
    assert info.value.path == f"connections.dev.config.{key}"


def test_every_error_of_a_config_is_reported_one_line_each() -> None:
    """Test that several bad keys give one ConfigError with one line per key."""
    with pytest.raises(ConfigError) as info:
        build("tcp", {"host": "h", "port": "abc", "keepalive_idle": "x", "bogus_key": 1})
    assert sorted(p for p, _ in info.value.errors) == [
        "connections.dev.config.bogus_key",
        "connections.dev.config.keepalive_idle",
        "connections.dev.config.port",
    ]
    assert len(str(info.value).splitlines()) == 4


def test_nested_unknown_key_suggests_the_known_one() -> None:
    """Test that an unknown key inside a nested object names its path and the close match."""
    with pytest.raises(ConfigError) as info:
        build("mqtt", {"host": "h", "subscribe": [{"topic": "a", "qso": 1}]})
    assert info.value.path == "connections.dev.config.subscribe[0].qso"
    assert info.value.message == "unknown key; did you mean 'qos'?"


def test_from_config_names_the_file(tmp_path: Path) -> None:
    """Test that a bad driver key in connections.json names the file, the path and the reason."""
    path = tmp_path / "connections.json"
    path.write_text('{"connections": {"plc": {"type": "tcp", "config": {"host": "h", "port": 0}}}}')
    with pytest.raises(ConfigError) as info:
        ConnectionManager.from_config(path)
    assert str(info.value) == (
        f"{path}: connections.plc.config.port: Input should be greater than or equal to 1"
    )


@pytest.mark.parametrize(
    ("entry", "path"),
    [
        ({"type": "tcp", "enabled": "yes"}, "connections.dev.enabled"),
        ({"type": "tcp", "enabled": 1}, "connections.dev.enabled"),
        ({"type": "tcp", "name": 5}, "connections.dev.name"),
        ({"type": "tcp", "poll": [{"tags": ["a"], "interval": "1"}]}, "connections.dev.poll[0].interval"),
        ({"type": "tcp", "watch": [{"tag": "a", "below": "1"}]}, "connections.dev.watch[0].below"),
        ({"type": "tcp", "watch": [{"tag": "a", "below": 1, "health_check": "no"}]}, "connections.dev.watch[0].health_check"),
    ],
)  # fmt: skip
def test_connection_entry_types_are_strict(entry: dict[str, Any], path: str) -> None:
    """Test that booleans and numbers given as strings are refused in a connection entry."""
    with pytest.raises(ConfigError) as info:
        load_config({"connections": {"dev": entry}})
    assert info.value.path == path


def test_connection_entry_takes_an_int_for_a_float() -> None:
    """Test that an integer interval is still accepted where seconds are a float."""
    entry = {"type": "tcp", "poll": [{"tags": ["a"], "interval": 2}]}
    spec = load_config({"connections": {"dev": entry}}).specs()["dev"]
    assert spec.poll[0].interval == 2.0


@pytest.mark.parametrize("type_name", TYPES)
def test_schema_describes_each_drivers_config(type_name: str) -> None:
    """Test that the JSON Schema accepts a good config of every driver and refuses an unknown key."""
    validator = jsonschema.Draft202012Validator(config_json_schema())
    good = {"connections": {"dev": {"type": type_name, "config": GOOD[type_name]}}}
    assert list(validator.iter_errors(good)) == []
    bad = {"connections": {"dev": {"type": type_name, "config": {**GOOD[type_name], "bogus": 1}}}}
    messages = [e.message for e in validator.iter_errors(bad)]
    assert any("'bogus' was unexpected" in m for m in messages), messages


def test_schema_leaves_a_custom_types_config_free() -> None:
    """Test that a type the schema does not know keeps a free-form config."""
    validator = jsonschema.Draft202012Validator(config_json_schema())
    doc = {"connections": {"dev": {"type": "custom_tcp", "config": {"anything": [1, 2]}}}}
    assert list(validator.iter_errors(doc)) == []


class PumpConfig(DriverConfig):
    """A custom driver's model."""

    host: Host
    port: Port = 4001


class PumpConnection(Connection):
    """A custom driver with a config model."""

    type_name = "pump"
    config_model: ClassVar[type[BaseModel] | None] = PumpConfig
    cfg: PumpConfig

    async def connect(self) -> None:
        """Connect (nothing to do)."""

    async def disconnect(self) -> None:
        """Disconnect (nothing to do)."""

    def is_connected(self) -> bool:
        """Never connected."""
        return False

    async def health_check(self) -> bool:
        """Always healthy."""
        return True


class DictConnection(PumpConnection):
    """A custom driver in the seed's style: no model, the config is a dict."""

    config_model = None


def test_custom_driver_with_a_model_gets_cfg_and_strict_checks() -> None:
    """Test that a custom driver's model is validated by the base class like a built-in one."""
    manager = ConnectionManager()
    manager.register_connection_type("pump", PumpConnection)
    driver = manager.add_connection("p1", "pump", {"host": "10.0.0.9"})
    assert isinstance(driver, PumpConnection)
    assert driver.cfg.port == 4001
    with pytest.raises(ConfigError) as info:
        manager.add_connection("p2", "pump", {"host": "h", "prot": 1})
    assert info.value.path == "connections.p2.config.prot"
    assert info.value.message == "unknown key; did you mean 'port'?"


def test_custom_driver_without_a_model_keeps_its_dict() -> None:
    """Test that a driver without a model gets its config as given and no cfg."""
    driver = DictConnection("d", {"anything": "goes", "port": "abc"})
    assert driver.config == {"anything": "goes", "port": "abc"}
    assert driver.cfg is None
