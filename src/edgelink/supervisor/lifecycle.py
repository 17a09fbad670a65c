"""The lifecycle: the main task driving the state machine.

Connect with ``connect_timeout`` (link opened *and* a first health check
answered), back off with jitter, suspend after ``reconnect_max_attempts``,
probe after ``suspend_cooldown``, fast-path one immediate attempt after a TX
drop, sleep on `DeviceSleepError`, stop in ``error`` on a permanent error.
What follows an attempt or a loss is decided by `edgelink.supervisor.policy`;
this module carries it out. Start, stop, restart, resume and suspend are
serialized per connection by one lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from edgelink._tasks import cancel_and_wait
from edgelink.connection import Connection
from edgelink.cpuaccount import account_context
from edgelink.errors import (
    ConnectError,
    ConnectTimeout,
    DeviceResetError,
    classify,
)
from edgelink.events import EventType
from edgelink.state import ConnectionState, Health, Reason
from edgelink.supervisor.children import SupervisorChildren
from edgelink.supervisor.policy import (
    RESTING,
    Lost,
    Next,
    WaitKind,
    after_attempt_failed,
    after_loss,
    describe,
    wait_before_attempt,
)

logger = logging.getLogger("edgelink.supervisor")

S = ConnectionState


class SupervisorLifecycle(SupervisorChildren):
    """The main task of a link (a part of `edgelink.supervisor.Supervisor`)."""

    __slots__ = ()

    def start(self) -> None:
        """Start supervising (idempotent). Must be called on the event loop."""
        self.desired = "running"
        if self.is_running():
            return
        self._loop = asyncio.get_running_loop()
        self._thread_id = threading.get_ident()
        self.crashed = None
        if self._sm.state in RESTING:
            self._sm.transition(S.CONNECTING, reason=Reason.START)
        # In a context of its own: what the task starts (child tasks, callbacks,
        # its sockets' protocol callbacks) counts to this connection's CPU account.
        self._task = self._loop.create_task(
            self._run_main(),
            name=f"edgelink[{self.connection_id}].main",
            context=account_context(self.cpu),
        )

    async def stop(self, *, reason: str = Reason.ADMIN_STOP, graceful: bool = True) -> None:
        """Stop supervising: end every task, close the link, go ``disconnected``.

        Lifecycle calls (stop, restart, resume) are serialized per connection,
        so two admins restarting the same connection at once cannot interleave.

        Args:
            reason: The status reason to record (``admin_stop``, ``panic``, ``killed``...).
            graceful: Give the driver's disconnect ``connect_timeout`` to finish;
                False gives it a tenth of a second (kill).
        """
        async with self._lifecycle:
            await self._stop(reason=reason, graceful=graceful)

    async def _stop(self, *, reason: str, graceful: bool = True) -> None:
        self.desired = "stopped"
        await self._cancel_main()
        if self._endpoints is not None:
            await self._endpoints.close()
        timeout = self.settings.connect_timeout if graceful else 0.1
        await self._close_link(timeout=timeout)
        await self._release_driver(timeout=timeout)
        self._next_retry_at = None
        if self._sm.state is not S.DISCONNECTED:
            was_connected = self._sm.state is S.CONNECTED
            self._transition(S.DISCONNECTED, reason)
            if was_connected:
                self._emit(EventType.DISCONNECTED, reason=reason)

    async def restart(self, *, reason: str = Reason.RESTART) -> None:
        """Stop and start again, with a fresh attempt counter."""
        async with self._lifecycle:
            await self._stop(reason=reason)
            self._attempts = 0
            if self._endpoints is not None:
                self._endpoints.reset()
            self._cooldown = self.settings.suspend_cooldown
            if reason != Reason.SUPERVISOR_RESTARTED:
                # A person restarted it: the flap history is forgiven. The
                # watchdog restarting a dead task forgives nothing.
                self._reset_flap(reason)
            self.start()

    async def resume(self) -> None:
        """Bring a suspended or failed connection back (a person said so).

        A connection that is running and not resting is left alone.
        """
        async with self._lifecycle:
            was = self._sm.state
            if was not in RESTING and self.is_running():
                return
            await self._cancel_main()
            await self._close_link(timeout=self.settings.connect_timeout)
            self._attempts = 0
            if self._endpoints is not None:
                self._endpoints.reset()
            self._cooldown = self.settings.suspend_cooldown
            self._reset_flap("resumed")
            self.desired = "running"
            self.start()
            self._emit(EventType.RESUMED, previous=str(was))

    async def suspend(
        self,
        reason: str,
        *,
        only_if: Callable[[], bool] | None = None,
        **data: Any,
    ) -> bool:
        """Suspend a running connection for ``reason`` (e.g. ``spam``): it waits for a person.

        Ends every task, closes the link, goes ``suspended`` with ``reason``
        and emits ``suspended`` (and ``disconnected`` if it was connected).
        No cooldown probe follows; `resume` brings it back.

        Args:
            reason: The status reason.
            only_if: Checked under the lifecycle lock; False leaves the
                connection alone (the cause went away while we waited).
            **data: Context for the ``suspended`` event.

        Returns:
            True if the connection was suspended now; False if it was not
            running (stopped, failed, already suspended) or ``only_if`` said no.
        """
        async with self._lifecycle:
            if self._sm.state in RESTING or (only_if is not None and not only_if()):
                return False
            was_connected = self._sm.state is S.CONNECTED
            await self._cancel_main()
            await self._close_link(timeout=self.settings.connect_timeout)
            self._next_retry_at = None
            self._transition(S.SUSPENDED, reason)
            if was_connected:
                self._emit(EventType.DISCONNECTED, reason=reason)
            self._emit(EventType.SUSPENDED, reason=reason, **data)
            return True

    async def _cancel_main(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            # A driver that swallows cancellation could hold us here forever:
            # bound the wait, the watchdog reports such a driver. (A task that
            # ended already was looked at by the watchdog.)
            await cancel_and_wait(task, timeout=self.settings.connect_timeout + 1.0)
        self._lost = None
        self._connected_at = None
        await self._end_connected_tasks()

    def abandon(self) -> None:
        """Forget a stuck main task (the watchdog will start a new one)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
        self._busy.clear()

    async def _run_main(self) -> None:
        try:
            await self._run_lifecycle()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.crashed = exc
            self._last_error = describe(exc)
            logger.exception("%s: supervisor task failed", self.connection_id)
        finally:
            if self._owns():
                await self._end_connected_tasks()

    def _owns(self) -> bool:
        """Return True if the running task is this supervisor's current main task.

        A task that was abandoned (stuck, then replaced by the watchdog) or is
        being stopped must not touch shared state while it unwinds: whoever
        replaced or stopped it has cleaned up already.
        """
        return asyncio.current_task() is self._task

    async def _run_lifecycle(self) -> None:
        s = self.settings
        fast = False
        in_cooldown = self._sm.state is S.SUSPENDED
        while self._owns():
            if not await self._wait_before_attempt(in_cooldown=in_cooldown, fast=fast):
                return
            eps = self._endpoints
            if eps is not None and (switch := eps.prepare(self.connection)) is not None:
                self._emit(EventType.FAILBACK, **switch.event_data())
            if fast:
                self._emit(EventType.FAST_PATH_ACTIVE, timeout=s.fast_path_timeout)
            timeout = s.fast_path_timeout if fast else s.connect_timeout
            fast = False
            self._fast_requested = False

            error = await self._attempt(timeout)
            if error is None:
                lost = await self._run_connected()
                await self._close_link(timeout=s.connect_timeout)
                if self.desired == "stopped":
                    return
                outcome = self._handle_loss(lost)
                if outcome is Next.FAIL:
                    return
                if outcome is Next.RETRY:
                    # Read after the events: a listener may have asked for a fast reconnect.
                    fast = lost.fast or self._fast_requested
                    in_cooldown = False
                # After a sleep the cooldown, if any, goes on as it was.
                continue
            outcome = self._handle_failed_attempt(error, in_cooldown=in_cooldown)
            if outcome is Next.FAIL:
                return
            in_cooldown = outcome is Next.SUSPEND or outcome is Next.PROBE_FAILED

    async def _wait_before_attempt(self, *, in_cooldown: bool, fast: bool) -> bool:
        """Wait as `wait_before_attempt` says; return False if no attempt follows."""
        s = self.settings
        attempts = self._attempts
        if self._endpoints is not None:
            # Failover: the next endpoint is tried at once; the backoff grows per round.
            per_round = self._endpoints.wait_attempts()
            if per_round is None:
                if not in_cooldown and self._sm.state is S.RECONNECTING:
                    return True
            else:
                attempts = per_round
        wait = wait_before_attempt(
            self._sm.state,
            attempts,
            in_cooldown=in_cooldown,
            fast=fast,
            cooldown=self._cooldown,
            hold_down=self._hold_down,
            backoff=self._backoff,
            sleep_probe_interval=s.sleep_probe_interval,
        )
        if wait.kind is WaitKind.END:
            return False
        if wait.kind is not WaitKind.NONE:
            self._next_retry_at = self._clock.time() + wait.delay
            if wait.kind is WaitKind.HOLD_DOWN:
                # An admin reconnect cuts the hold-down short (a person said so).
                self._sm.set_reason(Reason.FLAPPING)
            elif wait.kind is WaitKind.BACKOFF:
                self._emit(
                    EventType.RECONNECT_START,
                    delay=round(wait.delay, 4),
                    next_attempt=wait.attempt,
                )
            observer = self._observer
            if observer is None:
                await self._wait(wait.delay)
            else:
                observer.on_wait(self, wait.kind, wait.delay)
                try:
                    await self._wait(wait.delay)
                finally:
                    observer.on_wait_end(self)
            if wait.kind is WaitKind.COOLDOWN:
                self._cooldown = min(wait.delay * 2, s.suspend_cooldown_max)
        self._next_retry_at = None
        return True

    def _handle_loss(self, lost: Lost) -> Next:
        """Carry out `after_loss` for a link that was up: state, events, flap penalty."""
        self._last_error = describe(lost.error) if lost.error else lost.reason
        self._set_health(Health.UNHEALTHY)
        decision = after_loss(lost, self._attempts, auto_reconnect=self.settings.auto_reconnect)
        if decision.next is Next.FAIL:
            self._transition(S.ERROR, decision.reason)
            self._emit(EventType.DISCONNECTED, reason=decision.reason)
            self._emit(EventType.ERROR, reason=decision.reason, error=self._last_error)
        elif decision.next is Next.SLEEP:
            self._transition(S.SLEEPING, decision.reason)
            self._emit(EventType.DISCONNECTED, reason=Reason.DEVICE_SLEEP)
        else:
            self._transition(S.RECONNECTING, decision.reason)
            self._emit(EventType.DISCONNECTED, reason=decision.reason, error=self._last_error)
            if decision.flap:
                self._record_flap()
        return decision.next

    def _handle_failed_attempt(self, error: BaseException, *, in_cooldown: bool) -> Next:
        """Carry out `after_attempt_failed`: count the attempt, go to the next state, event it."""
        verdict = classify(error)
        self._last_error = describe(error)
        # The device itself is unreachable: reads that timed out were the
        # link's fault, not their tags'.
        self._strikes.clear()
        self.connection.stats.add({"errors": 1}, self._clock.time())
        decision = after_attempt_failed(
            self._sm.state,
            self._attempts,
            verdict,
            in_cooldown=in_cooldown,
            auto_reconnect=self.settings.auto_reconnect,
            backoff=self._backoff,
        )
        if decision.counted:
            self._attempts = decision.attempts
            self._emit(EventType.RECONNECT_FAILED, error=self._last_error, reason=verdict.reason)
        if (
            self._endpoints is not None
            and decision.next is not Next.FAIL
            and (switch := self._endpoints.attempt_failed(error, verdict, self._attempts))
        ):
            self._emit(EventType.FAILOVER, **switch.event_data())
        if decision.next is Next.FAIL:
            self._transition(S.ERROR, decision.reason)
            self._emit(EventType.ERROR, reason=decision.reason, error=self._last_error)
        elif decision.next is Next.PROBE_FAILED:
            # One probe after the cooldown failed: stay suspended and say so again.
            self._emit(
                EventType.SUSPENDED,
                reason=Reason.MAX_ATTEMPTS,
                error=self._last_error,
                next_probe_in=self._cooldown,
            )
            self._sm.set_reason(Reason.MAX_ATTEMPTS)
        elif decision.next is Next.SUSPEND:
            self._transition(S.SUSPENDED, decision.reason)
            self._emit(
                EventType.MAX_RETRIES_EXCEEDED, attempts=self._attempts, error=self._last_error
            )
            self._emit(
                EventType.SUSPENDED,
                reason=Reason.MAX_ATTEMPTS,
                error=self._last_error,
                next_probe_in=self._cooldown,
            )
        else:
            # Retry or sleep.
            self._transition(decision.state, decision.reason)
        return decision.next

    async def _wait(self, delay: float) -> None:
        """Wait ``delay`` on the clock; `reconnect()` cuts the wait short."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._wake = fut

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        handle = self._clock.call_later(delay, wake)
        try:
            await fut
        finally:
            handle.cancel()
            self._wake = None

    async def _attempt(self, timeout: float) -> BaseException | None:
        """One connect attempt: open the link and get a first health check answered."""
        admission = self._admission
        try:
            if admission is not None:
                async with admission:
                    await self._call("connect", timeout, self._open)
            else:
                await self._call("connect", timeout, self._open)
        except asyncio.CancelledError:
            if self._owns():
                await self._close_link(timeout=0.5)
            raise
        except TimeoutError as exc:
            if self._owns():
                await self._close_link(timeout=0.5)
            if isinstance(exc, ConnectTimeout) and exc.message:
                return exc  # the driver's own timeout, with its reason (not the attempt's)
            return ConnectTimeout(
                f"no connection within {timeout:g} s", connection_id=self.connection_id
            ).with_traceback(exc.__traceback__)
        except Exception as exc:  # noqa: BLE001 - every driver error is classified, not fatal
            if self._owns():
                await self._close_link(timeout=0.5)
            return exc
        return None

    async def _open(self) -> None:
        self._link_open = True
        await self.adapter.connect()
        ok = await self.adapter.health_check()
        if not ok:
            raise ConnectError("first health check failed", connection_id=self.connection_id)
        identity = await self.adapter.identity()
        if identity is not None:
            previous, self._identity = self._identity, identity
            if previous is not None and previous != identity:
                self._emit(EventType.DEVICE_RESET, old_identity=previous, new_identity=identity)
                try:
                    await self.adapter.on_reset()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    raise DeviceResetError(
                        f"re-provisioning after reset failed: {exc}",
                        connection_id=self.connection_id,
                        cause=exc,
                    ) from exc

    async def _release_driver(self, *, timeout: float) -> None:
        """Let an async driver free what it keeps between links (`Connection.on_stopped`)."""
        conn = self.connection
        if not isinstance(conn, Connection):
            return
        # Shielded like the close: a stop that cancels us must still end a child process.
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            async with asyncio.timeout(timeout):
                await asyncio.shield(conn.on_stopped())

    async def _close_link(self, *, timeout: float) -> None:
        if not self._link_open:
            return
        self._link_open = False
        # Shield the close: a stop that cancels us must still release the socket.
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.adapter.disconnect())

    async def _run_connected(self) -> Lost:
        s = self.settings
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[Lost] = loop.create_future()
        self._lost = lost
        was_reconnect = self._sm.state is not S.CONNECTING
        self._connected_at = self._clock.time()
        self._last_data_mono = self._clock.monotonic()
        self._health_failures = 0
        self._set_health(
            Health.HEALTHY
            if self.connection.degraded_reason is None and self._flapping_since is None
            else Health.DEGRADED
        )
        self._last_error = None
        attempt = self._attempts
        if self._endpoints is not None:
            self._endpoints.attempt_ok()
        if was_reconnect:
            self.connection.stats.add({"reconnects": 1}, self._clock.time())
        self._transition(S.CONNECTED, None)
        self._emit(EventType.CONNECTED, reconnect=was_reconnect)
        if was_reconnect:
            self._emit(EventType.RECONNECT_OK, attempts=attempt)
        if self._observer is not None:
            self._observer.on_link_up(self, attempt)

        self._child_crashes = None
        if s.health_check_interval is not None:
            self._spawn_child("health")
        for i in range(len(self._poll)):
            self._spawn_child(f"poll{i}")
        if self._attempts and s.stable_after >= 0:
            self._timers.append(self._clock.call_later(s.stable_after, self._on_stable))
        if self._flapping_since is not None:
            self._timers.append(self._clock.call_later(s.stable_after, self._on_flap_stable))
        if s.data_timeout is not None:
            self._arm_data_watchdog(s.data_timeout)
        # A TX drop reported during the attempt itself still counts.
        try:
            return await lost
        finally:
            if self._owns():
                self._lost = None
                await self._end_connected_tasks()
                self._connected_at = None

    def _on_stable(self) -> None:
        if self._sm.state is S.CONNECTED:
            attempts, self._attempts = self._attempts, 0
            self._cooldown = self.settings.suspend_cooldown
            self._emit(EventType.CONNECTION_STABLE, previous_attempts=attempts)
