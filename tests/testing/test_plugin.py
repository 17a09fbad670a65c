"""The test kit's pytest plugin: a test that leaves a task pending fails, naming it."""

from __future__ import annotations

import pytest

pytest_plugins = ("pytester",)

LEAKY = """
import asyncio

async def test_leaks():
    asyncio.get_running_loop().create_task(asyncio.Event().wait(), name="leaky-task")

async def test_finishing_task_is_fine():
    asyncio.get_running_loop().create_task(asyncio.sleep(0.05), name="finishing")

async def test_owned_task_is_fine():
    task = asyncio.get_running_loop().create_task(asyncio.Event().wait())
    task.cancel()
"""


def test_leftover_task_fails_the_test(pytester: pytest.Pytester) -> None:
    """Test that a task left pending fails its test with the task's name; others pass."""
    pytester.makepyfile(LEAKY)
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-o",
        "asyncio_mode=auto",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
    )
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*Failed: the test left 1 asyncio task(s) pending*leaky-task*"])
