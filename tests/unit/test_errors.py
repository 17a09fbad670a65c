"""Tests of the error tree."""

from __future__ import annotations

import pickle

import pytest

from edgelink import errors as e


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (e.ConfigError, ValueError),
        (e.ConnectError, ConnectionError),
        (e.ConnectTimeout, TimeoutError),
        (e.ConnectTimeout, e.ConnectError),
        (e.ConnectionLostError, ConnectionError),
        (e.RouteError, ValueError),
    ],
)
def test_builtins_are_double_inherited(cls: type[Exception], builtin: type[Exception]) -> None:
    """Test that errors also are the builtin whose meaning they share."""
    assert issubclass(cls, builtin)
    assert issubclass(cls, e.EdgelinkError)


@pytest.mark.parametrize("name", e.__all__)
def test_every_error_is_an_edgelink_error(name: str) -> None:
    """Test that every exported class belongs to the one tree."""
    obj = getattr(e, name)
    if isinstance(obj, type) and issubclass(obj, BaseException):
        assert issubclass(obj, e.EdgelinkError)


def test_errors_carry_data_and_pickle() -> None:
    """Test that connection_id, cause and retry_after survive str() and pickling."""
    cause = ConnectionRefusedError(111, "refused")
    err = e.ConnectError("no way", connection_id="plc_1", cause=cause, retry_after=2.5)
    assert str(err) == "[plc_1] no way"
    back = pickle.loads(pickle.dumps(err))
    assert (back.connection_id, back.retry_after, type(back)) == ("plc_1", 2.5, e.ConnectError)
    dev = e.DeviceError("illegal address", code=2)
    assert dev.code == 2


def test_config_error_names_file_path_and_reason() -> None:
    """Test that a ConfigError prints file, JSON path and reason."""
    err = e.ConfigError("must be > 0", file="conn.json", path="connections.a.settings.x")
    assert str(err) == "conn.json: connections.a.settings.x: must be > 0"
    many = e.ConfigError("first", file="f.yaml", path="a", errors=[("a", "first"), ("b", "second")])
    assert "2 errors" in str(many) and "b: second" in str(many)


def test_route_error_names_file_path_route_expression_position() -> None:
    """Test that a RouteError prints where it is, survives pickling, and lists many errors."""
    err = e.RouteError(
        "bad condition: unexpected '>'",
        route_id="r1",
        expression="value >> 1",
        position=8,
        file="routing.json",
        path="routes[0].condition",
    )
    text = "routing.json: routes[0].condition: route 'r1': bad condition: unexpected '>'"
    assert str(err) == text + " in 'value >> 1' at position 8"
    back = pickle.loads(pickle.dumps(err))
    assert (back.route_id, back.position, back.path) == ("r1", 8, "routes[0].condition")
    long = e.RouteError("x", expression="v" * 500, position=1)
    assert len(str(long)) < 200
    many = e.RouteError("a", file="f.json", errors=[("routes[0].id", "a"), ("routes[1].to", "b")])
    assert "2 errors" in str(many) and "routes[1].to: b" in str(many)
