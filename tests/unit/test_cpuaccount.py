"""`edgelink.cpuaccount`: each connection's event-loop time, on a real asyncio loop and sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from edgelink.cpuaccount import CURRENT, CpuAccount, CpuAccounting, account_context
from edgelink.service.resources import CpuRates


@pytest.fixture
async def accounting() -> AsyncIterator[None]:
    CpuAccounting.install(exact=True)  # every handle timed: exact figures
    yield
    CpuAccounting.uninstall()


def burn(seconds: float) -> None:
    """Use ``seconds`` of this thread's CPU (however long a busy machine makes that take)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


async def test_task_steps_callbacks_and_protocol_callbacks_count_to_their_connection(
    accounting: None,
) -> None:
    """Test that a busy connection's steps, its call_soon and its socket's data_received count."""
    busy, idle, by_socket = CpuAccount("busy"), CpuAccount("idle"), CpuAccount("socket")
    loop = asyncio.get_running_loop()
    received = asyncio.Event()

    async def busy_main() -> None:
        assert CURRENT.get() is busy
        for _ in range(3):
            burn(0.01)  # a task step
            await asyncio.sleep(0)
        done: asyncio.Future[None] = loop.create_future()

        def callback() -> None:  # a callback it scheduled
            burn(0.01)
            done.set_result(None)

        loop.call_soon(callback)
        await done
        child = asyncio.create_task(asyncio.to_thread(lambda: None))  # a child task
        await child

    async def idle_main() -> None:
        for _ in range(5):
            await asyncio.sleep(0.001)

    class Burning(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            burn(0.02)
            received.set()

    async def server_side(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        await writer.drain()
        await reader.read()  # until the client closes
        writer.close()

    server = await asyncio.start_server(server_side, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def socket_main() -> None:
        # The transport is made inside this task: its reader callback carries its context.
        transport, _ = await loop.create_connection(Burning, "127.0.0.1", port)
        await received.wait()
        transport.close()

    tasks = [
        loop.create_task(busy_main(), context=account_context(busy)),
        loop.create_task(idle_main(), context=account_context(idle)),
        loop.create_task(socket_main(), context=account_context(by_socket)),
    ]
    await asyncio.gather(*tasks)
    server.close()
    await server.wait_closed()
    assert busy.seconds >= 0.04  # three steps and the callback, 10 ms each
    assert by_socket.seconds >= 0.02  # data_received ran in the socket task's context
    assert idle.seconds < 0.01
    assert CURRENT.get() is None  # the test's own context is nobody's


async def test_nothing_counts_after_uninstall_and_the_loop_is_restored() -> None:
    """Test install/uninstall counting, and that an account grows only while installed."""
    account = CpuAccount("dev")
    loop = asyncio.get_running_loop()
    assert "_process_events" not in vars(loop)
    assert not CpuAccounting.active()
    assert CpuAccounting.install(exact=True)  # every handle timed: one step must count
    assert CpuAccounting.install()
    try:
        assert CpuAccounting.active()
        await loop.create_task(asyncio.sleep(0), context=account_context(account))
        CpuAccounting.uninstall()
        assert CpuAccounting.active()  # one user left
    finally:
        CpuAccounting.uninstall()
    assert not CpuAccounting.active()
    assert "_process_events" not in vars(loop)  # the class's own again
    CpuAccounting.uninstall()  # one too many: harmless
    before = account.ns
    assert before > 0

    async def work() -> None:
        burn(0.005)

    await loop.create_task(work(), context=account_context(account))
    assert account.ns == before


async def test_sampled_accounts_estimate_the_real_time() -> None:
    """Test that timing one handle in four, counted four times, adds up to each one's time.

    Two connections and a bystander share the turns: each turn runs a step of
    each, so a drawn handle is any of the three. Each account must come out
    near its own connection's time, the bystander's time on nobody's.
    """
    heavy, light = CpuAccount("heavy"), CpuAccount("light")
    loop = asyncio.get_running_loop()

    async def work(seconds: float) -> None:
        for _ in range(800):
            burn(seconds)
            await asyncio.sleep(0)

    CpuAccounting.install(sample_every=4)
    try:
        await asyncio.gather(
            loop.create_task(work(0.0004), context=account_context(heavy)),  # 0.32 s
            loop.create_task(work(0.0001), context=account_context(light)),  # 0.08 s
            loop.create_task(work(0.0002)),  # nobody's
        )
    finally:
        CpuAccounting.uninstall()
    # About 200 of each connection's 800 steps timed: the spread of each
    # estimate is about 6 % of it; these bounds are more than 4 deviations wide.
    assert 0.17 <= heavy.seconds <= 0.50
    assert 0.04 <= light.seconds <= 0.13
    with pytest.raises(ValueError, match="at least 1"):
        CpuAccounting.install(sample_every=0)
    assert not CpuAccounting.installed()


async def test_a_drawn_handle_cancelled_before_it_runs_does_not_run() -> None:
    """Test the stand-in of a drawn handle: cancelling the handle still stops its callback."""
    account = CpuAccount("dev")
    loop = asyncio.get_running_loop()
    ran: list[str] = []
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    CpuAccounting.install(exact=True)
    try:
        for name in ("a", "b"):
            loop.call_soon(ran.append, name, context=account_context(account))
        await asyncio.sleep(0)  # the turn that ran them
        assert ran == ["a", "b"]
        later: list[asyncio.Handle] = []
        loop.call_soon(lambda: later[0].cancel())  # runs first in the turn that would run c
        later.append(loop.call_soon(ran.append, "c", context=account_context(account)))
        (late,) = later
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert ran == ["a", "b"]
        assert late.cancelled()
        assert errors == []  # the cancelled handle was not run at all
    finally:
        CpuAccounting.uninstall()
        loop.set_exception_handler(None)


def test_a_loop_without_the_hook_reports_inactive() -> None:
    """Test that a loop with no ``_process_events`` (as uvloop's) is on but not active."""

    class Bare:
        pass

    loop = Bare()
    assert CpuAccounting.install(loop) is False  # type: ignore[arg-type]
    assert CpuAccounting.installed(loop)  # type: ignore[arg-type]
    assert not CpuAccounting.active(loop)  # type: ignore[arg-type]
    CpuAccounting.uninstall(loop)  # type: ignore[arg-type]
    assert not CpuAccounting.installed(loop)  # type: ignore[arg-type]
    assert CpuAccounting.install() is False  # no running loop: nothing to hook


def test_cpu_rates_need_a_full_window_and_forget_removed_connections() -> None:
    """Test the share over >= 1 s, the last share in between, a re-added account, pruning."""
    rates = CpuRates(window=1.0)
    assert rates.sample({"a": 0, "b": 0}, mono=10.0) == {"a": None, "b": None}
    assert rates.sample({"a": 100_000_000, "b": 0}, mono=10.5) == {"a": None, "b": None}
    assert rates.sample({"a": 250_000_000, "b": 0}, mono=11.0) == {"a": 25.0, "b": 0.0}
    assert rates.sample({"a": 300_000_000, "b": 0}, mono=11.2) == {"a": 25.0, "b": 0.0}
    # "a" was re-added (a new account starts at 0): no share until its window is full.
    assert rates.sample({"a": 1_000, "b": 10_000_000}, mono=12.0) == {"a": None, "b": 1.0}
    assert rates.sample({"b": 10_000_000}, mono=12.1) == {"b": 1.0}
    assert list(rates._last) == ["b"]
