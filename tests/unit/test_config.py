"""Tests of config loading, validation, resolution, diffing and the JSON Schema."""

from __future__ import annotations

import copy
import json
import traceback
from pathlib import Path
from typing import Any

import pytest

from edgelink.config import (
    ConfigDiff,
    ConnectionSpec,
    GatewayConfig,
    build_spec,
    check_config,
    config_json_schema,
    diff_configs,
    diff_specs,
    load_config,
)
from edgelink.errors import ConfigError
from edgelink.settings import ConnectionSettings

SECRET = "hunter2-Sup3rSecret"

EXAMPLE: dict[str, Any] = {
    "settings": {"health_check_interval": 30, "reconnect_max_attempts": 10},
    "connections": {
        "plc_1": {
            "type": "ads",
            "name": "PLC Keller",
            "enabled": True,
            "config": {"ams_net_id": "192.168.2.162.1.1", "port": 851},
            "settings": {"health_check_interval": 5},
            "poll": [{"tags": ["MAIN.temperature"], "interval": 1.0}],
            "watch": [
                {
                    "tag": "power",
                    "below": 0.1,
                    "warning_after": 1,
                    "critical_after": 3,
                    "health_check": True,
                }
            ],
        },
        "bt.bms_001": {"type": "ble", "config": {"address": "AA:BB"}},
    },
}

EXAMPLE_YAML = """\
settings:
  health_check_interval: 30
  reconnect_max_attempts: 10
connections:
  plc_1:
    type: ads
    name: PLC Keller
    enabled: true
    config:
      port: 851
      ams_net_id: 192.168.2.162.1.1
    settings:
      health_check_interval: 5
    poll:
      - tags: [MAIN.temperature]
        interval: 1.0
    watch:
      - {tag: power, below: 0.1, warning_after: 1, critical_after: 3, health_check: true}
  bt.bms_001:
    type: ble
    config: {address: "AA:BB"}
"""


def _one(**entry: Any) -> dict[str, Any]:
    """Return a config with one connection ``plc_1`` of type ads plus ``entry``."""
    return {"connections": {"plc_1": {"type": "ads", **entry}}}


def _load_error(source: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(source)
    return info.value


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("data", "path", "reason"),
    [
        pytest.param(
            _one(settings={"health_check_interval": "fast"}),
            "connections.plc_1.settings.health_check_interval",
            "valid number",
            id="bad-type-setting",
        ),
        pytest.param(
            _one(enabled=[1]),
            "connections.plc_1.enabled",
            "valid boolean",
            id="bad-type-enabled",
        ),
        pytest.param(
            _one(poll=[{"tags": ["a"], "interval": -1}]),
            "connections.plc_1.poll[0].interval",
            "greater than 0",
            id="negative-interval",
        ),
        pytest.param(
            _one(poll=[{"tags": ["a"], "interval": 1}, {"tags": [], "interval": 1}]),
            "connections.plc_1.poll[1].tags",
            "must not be empty",
            id="empty-tags",
        ),
        pytest.param(
            _one(poll=[{"tags": ["a"]}]),
            "connections.plc_1.poll[0].interval",
            "Field required",
            id="poll-missing-interval",
        ),
        pytest.param(
            _one(settings={"health_check_intervall": 5}),
            "connections.plc_1.settings.health_check_intervall",
            "did you mean 'health_check_interval'",
            id="unknown-setting-key",
        ),
        pytest.param(
            _one(settings={"max_connections": 5}),
            "connections.plc_1.settings.max_connections",
            "manager-wide",
            id="manager-setting-in-connection",
        ),
        pytest.param(
            _one(settings={"connect_timeout": None}),
            "connections.plc_1.settings.connect_timeout",
            "valid number",
            id="null-for-non-nullable-setting",
        ),
        pytest.param(
            _one(settings={"reconnect_jitter_mode": "wild"}),
            "connections.plc_1.settings.reconnect_jitter_mode",
            "'proportional' or 'full'",
            id="bad-enum-setting",
        ),
        pytest.param(
            _one(settings={"reconnect_max_delay": 0.01}),
            "connections.plc_1.settings",
            "reconnect_max_delay",
            id="merged-settings-inconsistent",
        ),
        pytest.param(
            {**_one(), "conections": {}},
            "conections",
            "unknown key; did you mean 'connections'",
            id="unknown-top-level-key",
        ),
        pytest.param(
            _one(typ="x"),
            "connections.plc_1.typ",
            "unknown key",
            id="unknown-connection-key",
        ),
        pytest.param(
            {"connections": {"plc_1": {"config": {}}}},
            "connections.plc_1.type",
            "Field required",
            id="missing-type",
        ),
        pytest.param(
            _one(type=""),
            "connections.plc_1.type",
            "at least 1 character",
            id="empty-type",
        ),
        pytest.param(
            {"connections": {"plc 1": {"type": "ads"}}},
            'connections["plc 1"]',
            "connection id must not contain whitespace",
            id="id-with-space",
        ),
        pytest.param(
            {"connections": {"": {"type": "ads"}}},
            'connections[""]',
            "must not be empty",
            id="id-empty",
        ),
        pytest.param(
            {"connections": {"x" * 129: {"type": "ads"}}},
            "connections." + "x" * 129,
            "at most 128 characters",
            id="id-too-long",
        ),
        pytest.param(
            {"connections": {"plc..1": {"type": "ads"}}},
            "connections.plc..1",
            "'..'",
            id="id-empty-segment",
        ),
        pytest.param(
            {"connections": {"plc#1": {"type": "ads"}}},
            "connections.plc#1",
            "'#'",
            id="id-mqtt-wildcard",
        ),
        pytest.param(
            _one(watch=[{"tag": "power"}]),
            "connections.plc_1.watch[0]",
            "at least one of 'below' and 'above'",
            id="watch-without-limit",
        ),
        pytest.param(
            _one(watch=[{"tag": "power", "below": 1, "warning_after": 3, "critical_after": 2}]),
            "connections.plc_1.watch[0]",
            "'critical_after' must be >= 'warning_after'",
            id="watch-critical-before-warning",
        ),
        pytest.param(
            _one(watch=[{"tag": "power", "below": 5, "above": 1}]),
            "connections.plc_1.watch[0]",
            "'below' must be less than 'above'",
            id="watch-swapped-limits",
        ),
        pytest.param(
            _one(watch=[{"tag": "power", "below": 1, "warning_after": 0}]),
            "connections.plc_1.watch[0].warning_after",
            "greater than or equal to 1",
            id="watch-zero-count",
        ),
        pytest.param(
            {"connections": []},
            "connections",
            "Input should be an object",
            id="connections-not-object",
        ),
        pytest.param(
            _one(config=["port", 1]),
            "connections.plc_1.config",
            "Input should be an object",
            id="config-not-object",
        ),
        pytest.param(
            {"settings": {"max_concurrent_connects": 0}},
            "settings.max_concurrent_connects",
            "greater than or equal to 1",
            id="top-level-setting-range",
        ),
        pytest.param(
            {"settings": {"sync_worker": 2}},
            "settings.sync_worker",
            "did you mean 'sync_workers'",
            id="top-level-setting-typo",
        ),
    ],
)
def test_bad_config_names_path_and_reason(data: dict[str, Any], path: str, reason: str) -> None:
    """Test that each bad config raises a ConfigError with the exact JSON path and a reason."""
    err = _load_error(data)
    assert isinstance(err, ValueError)
    assert err.file == "<dict>"
    assert err.path == path
    assert reason in err.message
    assert (path, err.message) == err.errors[0]
    assert path in str(err)
    assert "<dict>" in str(err)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        pytest.param(
            "c.json",
            '{\n  "connections": {\n    "a": {"type": "tcp",}\n  }\n}\n',
            "JSON syntax error at line 3, column 25",
            id="json-syntax",
        ),
        pytest.param(
            "c.yaml",
            "connections:\n  a:\n    type: tcp\n   bad: [\n",
            "YAML syntax error at line 4",
            id="yaml-syntax",
        ),
        pytest.param(
            "c.yml",
            "connections:\n  a: {type: tcp}\n  a: {type: x}\n",
            "line 3, column 3: found duplicate key 'a'",
            id="yaml-duplicate-key",
        ),
        pytest.param(
            "c.json",
            '{"connections": {"a": {"type": "tcp"}, "a": {"type": "x"}}}',
            "duplicate key 'a'",
            id="json-duplicate-key",
        ),
        pytest.param("c.json", "[1, 2]", "must be an object", id="top-level-array"),
        pytest.param("c.yaml", "just a string\n", "got a string", id="top-level-scalar"),
        pytest.param("c.json", "  \n", "empty", id="empty-file"),
        pytest.param("c.json", b"\xff\xfe{}", "not valid UTF-8", id="not-utf8"),
        pytest.param(
            "c.conf",
            '{"connections": {"a": {"type": "tcp"}',
            "JSON syntax error at line 1",
            id="unknown-suffix-json-like",
        ),
        pytest.param(
            "c.conf",
            "connections: [\n",
            "YAML syntax error at line 2",
            id="unknown-suffix-yaml-like",
        ),
    ],
)
def test_bad_file_names_file_and_reason(
    tmp_path: Path, name: str, content: str | bytes, reason: str
) -> None:
    """Test that unparseable files raise a ConfigError naming the file and the position."""
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    err = _load_error(path)
    assert err.file == str(path)
    assert err.path is None
    assert reason in err.message
    assert str(path) in str(err)
    assert err.__cause__ is None


def test_missing_file(tmp_path: Path) -> None:
    """Test that a missing file is a ConfigError naming the file."""
    path = tmp_path / "nope.json"
    err = _load_error(path)
    assert err.file == str(path)
    assert err.message == "file not found"
    assert str(err).startswith(str(path))


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    """Test that a directory given as the config is a ConfigError."""
    assert "directory" in _load_error(tmp_path).message


@pytest.mark.parametrize("data", [[1, 2], None, 3, b"{}"])
def test_non_object_top_level(data: Any) -> None:
    """Test that a parsed top level that is not a mapping is a ConfigError at the root."""
    with pytest.raises(ConfigError, match="top level must be an object") as info:
        load_config(data)
    assert info.value.path is None


def test_all_validation_errors_are_collected() -> None:
    """Test that every validation error is reported, the first in path and message."""
    data = _one(
        settings={"connect_timeout": -1, "bogus": 1},
        poll=[{"tags": [], "interval": 0}],
    )
    data["extra"] = 1
    err = _load_error(data)
    paths = [p for p, _ in err.errors]
    assert paths == [
        "connections.plc_1.settings.connect_timeout",
        "connections.plc_1.settings.bogus",
        "connections.plc_1.poll[0].tags",
        "connections.plc_1.poll[0].interval",
        "extra",
    ]
    assert err.path == paths[0]
    assert err.message == err.errors[0][1]
    assert err.connection_id is None
    assert str(err).splitlines()[0] == "<dict>: 5 errors"


def test_errors_in_one_connection_carry_its_id() -> None:
    """Test that errors all inside one connection set connection_id to it."""
    err = _load_error(_one(poll=[{"tags": [], "interval": 0}]))
    assert err.connection_id == "plc_1"


# ------------------------------------------------------------------- good input


def test_example_loads_to_resolved_specs() -> None:
    """Test that the DESIGN example loads and resolves with overrides over defaults."""
    config = load_config(EXAMPLE)
    specs = config.specs()
    assert sorted(specs) == ["bt.bms_001", "plc_1"]
    plc = specs["plc_1"]
    assert plc.type == "ads"
    assert plc.name == "PLC Keller"
    assert plc.enabled is True
    assert plc.config == {"ams_net_id": "192.168.2.162.1.1", "port": 851}
    assert plc.settings.health_check_interval == 5
    assert plc.settings.reconnect_max_attempts == 10
    assert (
        plc.settings.connect_timeout == ConnectionSettings.model_fields["connect_timeout"].default
    )
    assert [(g.tags, g.interval) for g in plc.poll] == [(("MAIN.temperature",), 1.0)]
    (rule,) = plc.watch
    assert (rule.tag, rule.below, rule.above, rule.critical_after) == ("power", 0.1, None, 3)
    assert rule.health_check is True
    bms = specs["bt.bms_001"]
    assert bms.settings.health_check_interval == 30
    assert bms.name is None
    assert bms.poll == ()


def test_json_and_yaml_files_load_to_equal_specs(tmp_path: Path) -> None:
    """Test that the same config as JSON and as YAML gives equal specs."""
    json_path = tmp_path / "connections.json"
    json_path.write_text(json.dumps(EXAMPLE), encoding="utf-8")
    yaml_path = tmp_path / "connections.yaml"
    yaml_path.write_text(EXAMPLE_YAML, encoding="utf-8")
    from_json = load_config(json_path).specs()
    from_yaml = load_config(str(yaml_path)).specs()
    assert from_json == from_yaml
    assert from_json == load_config(EXAMPLE).specs()


def test_unknown_suffix_falls_back_to_yaml(tmp_path: Path) -> None:
    """Test that a file with an unknown suffix is read as JSON, else as YAML."""
    path = tmp_path / "connections.conf"
    path.write_text(EXAMPLE_YAML, encoding="utf-8")
    assert load_config(path).specs() == load_config(EXAMPLE).specs()
    path.write_text(json.dumps(EXAMPLE), encoding="utf-8")
    assert load_config(path).specs() == load_config(EXAMPLE).specs()


def test_empty_config_and_empty_yaml_keys() -> None:
    """Test that an empty config is valid and null collections count as empty."""
    assert load_config({}).specs() == {}
    config = load_config(
        {"connections": {"a": {"type": "tcp", "config": None, "settings": None, "poll": None}}}
    )
    spec = config.specs()["a"]
    assert spec.config == {}
    assert spec.settings == ConnectionSettings.model_validate({})
    assert load_config({"connections": None}).connections == {}


def test_null_setting_override_is_kept() -> None:
    """Test that an explicit null overrides a nullable default (never give up)."""
    spec = load_config(_one(settings={"reconnect_max_attempts": None})).specs()["plc_1"]
    assert spec.settings.reconnect_max_attempts is None


def test_schema_key_is_accepted() -> None:
    """Test that a "$schema" key for editors is allowed at the top level."""
    config = load_config({"$schema": "./connections.schema.json", **_one()})
    assert config.schema_uri == "./connections.schema.json"


def test_input_mapping_is_not_mutated() -> None:
    """Test that loading never changes the caller's dict."""
    data = _one(config={"port": 1, "auto_reconnect": False})
    before = copy.deepcopy(data)
    load_config(data)
    assert data == before


# ------------------------------------------------------ defaults and overrides


def test_top_level_defaults_and_connection_overrides_merge() -> None:
    """Test that top-level settings are defaults and a connection's settings override them."""
    config = load_config(
        {
            "settings": {"connect_timeout": 7, "health_check_interval": 60, "max_connections": 5},
            "connections": {
                "a": {"type": "tcp", "settings": {"connect_timeout": 1}},
                "b": {"type": "tcp"},
            },
        }
    )
    specs = config.specs()
    assert specs["a"].settings.connect_timeout == 1
    assert specs["a"].settings.health_check_interval == 60
    assert specs["b"].settings.connect_timeout == 7
    assert specs["b"].settings.reconnect_multiplier == 2.0
    assert config.settings.max_connections == 5
    assert not hasattr(specs["a"].settings, "max_connections")


def test_auto_reconnect_in_config_block_moves_to_settings() -> None:
    """Test that the seed's config.auto_reconnect becomes a setting, not driver config."""
    spec = load_config(_one(config={"port": 851, "auto_reconnect": False})).specs()["plc_1"]
    assert spec.settings.auto_reconnect is False
    assert spec.config == {"port": 851}


def test_auto_reconnect_in_settings_wins_over_config_block() -> None:
    """Test that an explicit settings.auto_reconnect beats the one in the config block."""
    data = _one(config={"auto_reconnect": False}, settings={"auto_reconnect": True})
    spec = load_config(data).specs()["plc_1"]
    assert spec.settings.auto_reconnect is True
    assert spec.config == {}


def test_bad_auto_reconnect_in_config_block_is_reported_under_settings() -> None:
    """Test that a bad auto_reconnect value in the config block is a settings error."""
    err = _load_error(_one(config={"auto_reconnect": "sometimes"}))
    assert err.path == "connections.plc_1.settings.auto_reconnect"


def test_build_spec_uses_given_defaults_and_file_paths() -> None:
    """Test that build_spec resolves one entry and reports errors with file-like paths."""
    defaults = ConnectionSettings.model_validate({"connect_timeout": 9})
    spec = build_spec("dev.1", {"type": "tcp", "settings": {"stable_after": 1}}, defaults)
    assert spec.connection_id == "dev.1"
    assert (spec.settings.connect_timeout, spec.settings.stable_after) == (9, 1)
    with pytest.raises(ConfigError) as info:
        build_spec("dev.1", {"type": "tcp", "poll": [{"tags": ["a"], "interval": 0}]})
    assert info.value.path == "connections.dev.1.poll[0].interval"
    assert info.value.connection_id == "dev.1"
    with pytest.raises(ConfigError) as info:
        build_spec("dev 1", {"type": "tcp"})
    assert info.value.path == 'connections["dev 1"]'


# ----------------------------------------------------------------- spec equality


def test_spec_equality_ignores_key_order_but_not_value_types() -> None:
    """Test that specs compare by value: key order does not matter, 1 vs true does."""
    a = load_config(_one(config={"x": 1, "y": 2})).specs()["plc_1"]
    b = load_config(_one(config={"y": 2, "x": 1})).specs()["plc_1"]
    c = load_config(_one(config={"x": True, "y": 2})).specs()["plc_1"]
    assert a == b
    assert hash(a) == hash(b)
    assert a != c
    assert len({a, b, c}) == 2
    float_port = load_config(_one(config={"x": 1.0, "y": 2})).specs()["plc_1"]
    assert a != float_port


def test_spec_equality_with_yaml_only_values(tmp_path: Path) -> None:
    """Test that configs with mixed key types, dates and NaN compare by value."""
    text = (
        "connections:\n  a:\n    type: tcp\n"
        "    config: {m: {1: one, b: 2}, d: 2019-01-01, c: .nan}\n"
    )
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    first = load_config(path).specs()
    assert first == load_config(path).specs()
    path.write_text(text.replace("one", "two"), encoding="utf-8")
    assert first != load_config(path).specs()


def test_spec_equality_sees_every_field() -> None:
    """Test that a change of name, enabled, settings, poll or watch makes specs differ."""
    base = load_config(_one()).specs()["plc_1"]
    entries: list[dict[str, Any]] = [
        {"name": "n"},
        {"enabled": False},
        {"type": "tcp"},
        {"settings": {"stable_after": 3}},
        {"poll": [{"tags": ["a"], "interval": 1}]},
        {"watch": [{"tag": "p", "below": 1}]},
    ]
    for entry in entries:
        other = load_config(_one(**entry)).specs()["plc_1"]
        assert other != base, entry


# --------------------------------------------------------------------- diff


def _cfg(settings: dict[str, Any] | None = None, **connections: dict[str, Any]) -> GatewayConfig:
    return load_config({"settings": settings or {}, "connections": connections})


def test_diff_added_removed_changed_unchanged() -> None:
    """Test that the diff sorts ids into added, removed, changed and unchanged."""
    old = _cfg(
        a={"type": "tcp"},
        b={"type": "tcp", "config": {"port": 1}},
        c={"type": "tcp"},
        z={"type": "tcp"},
    )
    new = _cfg(
        b={"type": "tcp", "config": {"port": 2}},
        c={"type": "tcp"},
        z={"type": "tcp"},
        e={"type": "tcp"},
        d={"type": "tcp"},
    )
    diff = diff_configs(old, new)
    assert diff == ConfigDiff(added=["d", "e"], removed=["a"], changed=["b"], unchanged=["c", "z"])
    assert not diff.is_empty


def test_diff_from_nothing_adds_everything() -> None:
    """Test that diffing against no config adds every connection."""
    diff = diff_configs(None, _cfg(b={"type": "tcp"}, a={"type": "tcp"}))
    assert diff.added == ["a", "b"]
    assert diff.removed == diff.changed == diff.unchanged == []


def test_diff_of_equal_configs_is_empty() -> None:
    """Test that the same config twice gives an empty diff."""
    diff = diff_configs(load_config(EXAMPLE), load_config(copy.deepcopy(EXAMPLE)))
    assert diff.is_empty
    assert diff.unchanged == ["bt.bms_001", "plc_1"]


def test_top_level_default_change_affects_only_non_overriding_connections() -> None:
    """Test that a changed default changes exactly the connections that do not override it."""
    conns: dict[str, dict[str, Any]] = {
        "keeps": {"type": "tcp", "settings": {"health_check_interval": 5}},
        "follows": {"type": "tcp"},
    }
    old = _cfg({"health_check_interval": 30}, **conns)
    new = _cfg({"health_check_interval": 60}, **conns)
    diff = diff_configs(old, new)
    assert diff.changed == ["follows"]
    assert diff.unchanged == ["keeps"]


def test_manager_only_setting_change_restarts_nothing() -> None:
    """Test that changing a manager-wide limit changes no connection."""
    old = _cfg({"max_concurrent_connects": 64}, a={"type": "tcp"})
    new = _cfg({"max_concurrent_connects": 8}, a={"type": "tcp"})
    assert diff_configs(old, new).is_empty


def test_diff_specs_works_on_spec_mappings() -> None:
    """Test that diff_specs compares plain mappings of specs."""
    specs: dict[str, ConnectionSpec] = _cfg(a={"type": "tcp"}).specs()
    assert diff_specs(specs, {}).removed == ["a"]
    assert diff_specs({}, specs).added == ["a"]


# ------------------------------------------------------------------ secrets


def _secret_config() -> dict[str, Any]:
    return {
        "connections": {
            "plc_1": {
                "type": "mqtt",
                "config": {
                    "host": "broker",
                    "password": SECRET,
                    "auth": {"token": SECRET},
                    "api_key": SECRET,
                },
            }
        }
    }


def test_secrets_never_in_repr_or_str() -> None:
    """Test that reprs and strs of configs and specs show secret values as ***."""
    config = load_config(_secret_config())
    spec = config.specs()["plc_1"]
    for text in [
        repr(config),
        str(config),
        repr(config.connections["plc_1"]),
        str(config.connections["plc_1"]),
        repr(spec),
        str(spec),
        repr(config.specs()),
    ]:
        assert SECRET not in text
        assert "***" in text
    assert spec.config["password"] == SECRET  # the driver still gets the real value


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(
            lambda d: d["connections"]["plc_1"].update(settings={"connect_timeout": SECRET}),
            id="secret-as-bad-value",
        ),
        pytest.param(lambda d: d.update(password=SECRET), id="secret-under-unknown-key"),
        pytest.param(
            lambda d: d["connections"]["plc_1"].update(name={"password": SECRET}),
            id="secret-in-bad-name",
        ),
        pytest.param(
            lambda d: d["connections"]["plc_1"].update(
                poll=[{"tags": [SECRET], "interval": SECRET}]
            ),
            id="secret-in-poll",
        ),
    ],
)
def test_secrets_never_in_validation_errors(mutate: Any) -> None:
    """Test that validation errors never echo input values, secrets included."""
    data = _secret_config()
    mutate(data)
    err = _load_error(data)
    text = "".join(traceback.format_exception(err)) + repr(err) + repr(err.errors)
    assert SECRET not in text


def test_secrets_never_in_yaml_syntax_errors(tmp_path: Path) -> None:
    """Test that a YAML error on a line holding a secret does not quote that line."""
    path = tmp_path / "c.yaml"
    path.write_text(f'connections:\n  a:\n    config: {{password: "{SECRET}\n', encoding="utf-8")
    err = _load_error(path)
    assert "YAML syntax error" in err.message
    assert SECRET not in "".join(traceback.format_exception(err)) + repr(err)


def test_secrets_never_in_json_syntax_errors(tmp_path: Path) -> None:
    """Test that a JSON error next to a secret does not quote it."""
    path = tmp_path / "c.json"
    path.write_text('{"connections": {"a": {"config": {"password": "' + SECRET + '" "x": 1}}}}')
    err = _load_error(path)
    assert "JSON syntax error at line 1" in err.message
    assert SECRET not in "".join(traceback.format_exception(err)) + repr(err)


# ---------------------------------------------------------- schema and check


def test_json_schema_is_json_and_describes_connections() -> None:
    """Test that the JSON Schema round-trips through JSON and lists connections."""
    schema = config_json_schema()
    assert json.loads(json.dumps(schema)) == schema
    assert schema["title"] == "edgelink connections.json"
    assert schema["type"] == "object"
    assert {"connections", "settings", "$schema"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False
    conn = schema["$defs"]["ConnectionConfig"]
    assert conn["required"] == ["type"]
    overrides = conn["properties"]["settings"]
    overrides = schema["$defs"].get(overrides.get("$ref", "").rpartition("/")[2], overrides)
    assert "health_check_interval" in overrides["properties"]
    assert "default" not in overrides["properties"]["health_check_interval"]


def test_check_config_ok_line(tmp_path: Path) -> None:
    """Test that check_config reports the connection count and ids of a good file."""
    path = tmp_path / "connections.json"
    path.write_text(json.dumps(EXAMPLE), encoding="utf-8")
    assert check_config(path) == ["OK: 2 connections (bt.bms_001, plc_1)"]
    assert check_config({}) == ["OK: 0 connections"]
    many = {"connections": {f"c{i:02d}": {"type": "tcp"} for i in range(12)}}
    (line,) = check_config(many)
    assert line.startswith("OK: 12 connections (c00, c01,")
    assert line.endswith("c09, … (+2 more))")


def test_check_config_error_lines(tmp_path: Path) -> None:
    """Test that check_config returns error lines instead of raising."""
    lines = check_config(tmp_path / "missing.json")
    assert lines == [f"ERROR: {tmp_path / 'missing.json'}: (root): file not found"]
    lines = check_config(_one(poll=[{"tags": [], "interval": 0}]))
    assert lines[0] == "ERROR: <dict>: 2 errors"
    assert lines[1:] == [
        "  connections.plc_1.poll[0].tags: must not be empty",
        "  connections.plc_1.poll[0].interval: Input should be greater than 0",
    ]


@pytest.mark.parametrize(
    ("settings", "path"),
    [
        ({"health_check_interval": "30"}, "settings.health_check_interval"),
        ({"auto_reconnect": "yes"}, "settings.auto_reconnect"),
        ({"reconnect_max_attempts": 3.0}, "settings.reconnect_max_attempts"),
    ],
)
def test_settings_are_strict(settings: dict[str, object], path: str) -> None:
    """Test that numbers and flags given as strings (or a float count) are refused by path."""
    with pytest.raises(ConfigError) as info:
        load_config({"settings": settings, "connections": {}})
    assert path in str(info.value)


def test_settings_take_an_int_for_seconds_and_the_jitter_mode_as_text() -> None:
    """Test that strictness keeps what a JSON file naturally says."""
    config = load_config(
        {
            "settings": {"health_check_interval": 30, "reconnect_jitter_mode": "full"},
            "connections": {},
        }
    )
    assert config.settings.health_check_interval == 30.0
    assert config.settings.reconnect_jitter_mode == "full"
