"""The pure parts of failover: hard failures, labels, endpoint checks, the switching rules."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from edgelink.errors import ConfigError, ConnectError, classify
from edgelink.settings import ConnectionSettings
from edgelink.supervisor.failover import (
    Endpoint,
    Endpoints,
    check_endpoints,
    endpoint_configs,
    endpoint_label,
    is_hard_failure,
)
from edgelink.testing import ManualClock


def unreachable() -> ConnectError:
    try:
        raise ConnectError("no route") from OSError(errno.EHOSTUNREACH, "No route to host")
    except ConnectError as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "hard"),
    [
        (ConnectionRefusedError(), True),
        (ConnectError("x", cause=ConnectionRefusedError()), True),
        (unreachable(), True),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), True),
        (TimeoutError(), False),
        (ConnectionResetError(), False),
        (ConnectError("first health check failed"), False),
    ],
)
def test_hard_failures(exc: BaseException, hard: bool) -> None:
    """Test that refused and unreachable are hard failures, timeouts and resets are not."""
    assert is_hard_failure(exc, classify(exc)) is hard


@pytest.mark.parametrize(
    ("config", "label"),
    [
        ({"name": "standby", "host": "h"}, "standby"),
        ({"host": "10.0.0.7", "port": 502}, "10.0.0.7:502"),
        ({"host": "broker"}, "broker"),
        ({"base_url": "http://u:secret@dev.local/api"}, "http://***@dev.local/api"),
        ({"port": "/dev/ttyUSB1"}, "/dev/ttyUSB1"),
        ({"ams_net_id": "10.0.0.7.1.1"}, "10.0.0.7.1.1"),
        ({}, "#3"),
    ],
)
def test_endpoint_label(config: dict[str, Any], label: str) -> None:
    """Test that an endpoint is shown by its name, else its address, never with a password."""
    assert endpoint_label(config, 3) == label


def test_endpoint_configs_merge_over_config() -> None:
    """Test that each entry's fields go over the config and ``name`` stays out."""
    base = {"host": "a", "port": 1, "timeout": 2}
    assert endpoint_configs(base, []) == [base]
    assert endpoint_configs(base, [{"name": "x"}, {"host": "b"}]) == [
        base,
        {"host": "b", "port": 1, "timeout": 2},
    ]


def test_check_endpoints_names_every_bad_entry() -> None:
    """Test that every bad entry is named by connection, index and field."""
    entries: list[dict[str, Any]] = [{}, {"timeout": 1}, {}, {"name": ""}]
    configs = endpoint_configs({"host": "a"}, entries)
    with pytest.raises(ConfigError) as info:
        check_endpoints("dev", "tcp", entries, frozenset({"host", "port"}), configs)
    paths = [p for p, _ in info.value.errors]
    assert paths == [
        "connections.dev.endpoints[1].timeout",
        "connections.dev.endpoints[2]",
        "connections.dev.endpoints[3].name",
        "connections.dev.endpoints[3]",
    ]
    with pytest.raises(ConfigError, match="no endpoint to fail over"):
        check_endpoints("dev", "sim", [{}, {"x": 1}], frozenset(), [{}, {"x": 1}])


def make(n: int = 3, **settings: Any) -> Endpoints:
    eps = [Endpoint(i, f"e{i}", {"host": f"h{i}"}) for i in range(n)]
    return Endpoints("dev", eps, ConnectionSettings.model_validate(settings), clock=ManualClock())


def test_failover_after_counts_tries_per_endpoint_and_rounds() -> None:
    """Test the switching rule: ``failover_after`` tries each, no wait inside a round."""
    eps = make(3, failover_after=2)
    timeout = TimeoutError()
    verdict = classify(timeout)
    assert eps.wait_attempts() == 0
    steps = []
    for attempt in range(1, 7):
        switch = eps.attempt_failed(timeout, verdict, attempt)
        steps.append((eps.active, switch is not None, eps.wait_attempts()))
    # e0 twice (backoff of round 0 between), then e1 at once, twice, e2 at once,
    # twice, and back to e0 after the first full round: its backoff is round 1's.
    assert steps == [
        (0, False, 0),
        (1, True, None),
        (1, False, 0),
        (2, True, None),
        (2, False, 0),
        (0, True, 1),
    ]
    assert eps.rounds == 1 and eps.failovers == 3
    eps.attempt_ok()
    assert eps.rounds == 0
    assert eps.link_metadata == {"endpoint": "e0", "endpoint_index": 0}


def test_hard_failure_fails_over_at_once() -> None:
    """Test that a refused endpoint is left after one attempt, whatever ``failover_after``."""
    eps = make(2, failover_after=5)
    refused = ConnectionRefusedError()
    switch = eps.attempt_failed(refused, classify(refused), 1)
    assert switch is not None and switch.hard and switch.new.index == 1
    assert switch.event_data()["reason"] == "refused"
    assert eps.endpoints[0].last_result == "refused"


def test_reset_goes_back_to_the_preferred() -> None:
    """Test that a restart starts over at the preferred endpoint."""
    eps = make(2, failover_after=1)
    exc = TimeoutError()
    eps.attempt_failed(exc, classify(exc), 1)
    assert eps.active == 1
    eps.reset()
    assert eps.active == 0 and eps.wait_attempts() == 0


def test_needs_two_endpoints() -> None:
    """Test that failover state for a single endpoint is refused (that is the old form)."""
    with pytest.raises(ValueError, match="two endpoints"):
        make(1)
