"""``edgelink run --loop``: uvloop when installed, asyncio's loop on request or without it."""

from __future__ import annotations

import os
import sys

import pytest

from edgelink.cli import _build_parser, event_loop_factory
from edgelink.errors import ConfigError


def test_auto_takes_uvloop_when_installed_and_asyncio_opts_out() -> None:
    """Test that ``auto`` and ``uvloop`` pick uvloop, ``asyncio`` the stock loop."""
    uvloop = pytest.importorskip("uvloop")
    assert _build_parser().parse_args(["run", "--config", "x"]).loop == os.environ.get(
        "EDGELINK_LOOP", "asyncio"
    )
    assert event_loop_factory("auto") is uvloop.new_event_loop
    assert event_loop_factory("uvloop") is uvloop.new_event_loop
    assert event_loop_factory("asyncio") is None


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Test that a default install (no uvloop) runs on asyncio, and asking for uvloop says why not."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert event_loop_factory("auto") is None
    with pytest.raises(ConfigError, match=r"uvloop is not installed.*edgelink\[fast\]"):
        event_loop_factory("uvloop")
    with pytest.raises(ConfigError, match="--loop must be one of"):
        event_loop_factory("trio")


def test_the_environment_sets_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that $EDGELINK_LOOP is the default of --loop."""
    monkeypatch.delenv("EDGELINK_LOOP", raising=False)
    assert _build_parser().parse_args(["run", "--config", "x"]).loop == "asyncio"
    monkeypatch.setenv("EDGELINK_LOOP", "auto")
    assert _build_parser().parse_args(["run", "--config", "x"]).loop == "auto"
