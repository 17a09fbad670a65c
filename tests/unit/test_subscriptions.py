"""The subscription ledger: replay on every link, confirmation deadlines, degraded reasons."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from edgelink.subscriptions import Subscription, SubscriptionLedger, SubscriptionState
from edgelink.testing import ManualClock


class Driver:
    """Records what the ledger asked to subscribe and what it said about health."""

    def __init__(self) -> None:
        self.replays: list[list[str]] = []
        self.degraded: list[str | None] = []

    def replay(self, entries: Sequence[Subscription]) -> None:
        self.replays.append([e.key for e in entries])

    def on_degraded(self, reason: str | None) -> None:
        self.degraded.append(reason)


def make(clock: ManualClock, **kwargs: float) -> tuple[SubscriptionLedger, Driver]:
    driver = Driver()
    ledger = SubscriptionLedger(
        driver.replay, clock=clock, on_degraded=driver.on_degraded, name="dev", **kwargs
    )
    return ledger, driver


async def test_link_up_replays_everything_and_ack_confirms(clock: ManualClock) -> None:
    """Test that link_up replays every entry in order and acknowledgements confirm them."""
    ledger, driver = make(clock)
    ledger.add("a/#", qos=1)
    ledger.add("b", qos=0)
    assert driver.replays == []  # no link yet: recorded only
    ledger.link_up()
    assert driver.replays == [["a/#", "b"]]
    assert [e.state for e in ledger] == [SubscriptionState.PENDING] * 2
    ledger.acknowledged("a/#")
    ledger.acknowledged("b")
    assert ledger.is_confirmed()
    assert clock.pending() == []  # nothing left to check
    assert driver.degraded == []
    assert ledger.get("a/#") is not None and ledger.get("a/#").options == {"qos": 1}  # type: ignore[union-attr]


async def test_every_reconnect_replays_again(clock: ManualClock) -> None:
    """Test that each new link replays the entries again, and link_down idles them."""
    ledger, driver = make(clock)
    ledger.add("t")
    for _ in range(3):
        ledger.link_up()
        ledger.acknowledged("t")
        ledger.link_down()
        assert ledger.get("t").state is SubscriptionState.IDLE  # type: ignore[union-attr]
    assert driver.replays == [["t"]] * 3
    assert not ledger.is_confirmed()


async def test_add_on_live_link_subscribes_at_once(clock: ManualClock) -> None:
    """Test that an entry added while the link is up is replayed at once, alone."""
    ledger, driver = make(clock)
    ledger.link_up()
    assert driver.replays == []  # nothing to replay
    ledger.add("x", qos=2)
    ledger.add("x", qos=2)  # unchanged: no second subscribe
    assert driver.replays == [["x"]]
    ledger.add("x", qos=1)  # changed options are subscribed again
    assert driver.replays == [["x"], ["x"]]


async def test_unconfirmed_entry_degrades_and_is_replayed_with_doubling_delay(
    clock: ManualClock,
) -> None:
    """Test that a missed deadline degrades the link and replays at 10, 20, 40 s, then confirms."""
    ledger, driver = make(clock, confirm_within=10.0)
    ledger.add("quiet")
    ledger.add("fine")
    ledger.link_up()
    ledger.acknowledged("fine")
    assert clock.pending() == [10.0]
    await clock.advance(9.9)
    assert driver.degraded == [] and len(driver.replays) == 1
    await clock.advance(0.1)
    assert driver.replays[-1] == ["quiet"]
    assert driver.degraded == ["1 subscription unconfirmed: 'quiet' (no confirmation within 10 s)"]
    assert ledger.degraded_reason == driver.degraded[-1]
    assert clock.pending() == [20.0]
    await clock.advance(20)
    assert clock.pending() == [40.0]
    assert len(driver.replays) == 3 and len(driver.degraded) == 1  # a transition, said once
    ledger.acknowledged("quiet")
    assert driver.degraded[-1] is None
    assert ledger.is_confirmed()
    assert ledger.get("quiet").replays == 3  # type: ignore[union-attr]


async def test_retry_delay_is_capped(clock: ManualClock) -> None:
    """Test that the doubling replay delay stops at retry_max."""
    ledger, driver = make(clock, confirm_within=10.0, retry_max=25.0)
    ledger.add("t")
    ledger.link_up()
    delays = []
    for _ in range(4):
        delays.append(clock.pending()[0])
        await clock.advance(delays[-1])
    assert delays == [10.0, 20.0, 25.0, 25.0]
    assert len(driver.replays) == 5


async def test_refusal_degrades_at_once(clock: ManualClock) -> None:
    """Test that a refused subscription degrades the link now, naming the peer's reason."""
    ledger, driver = make(clock)
    ledger.add("denied/#")
    ledger.link_up()
    ledger.acknowledged("denied/#", ok=False, error="Not authorized")
    assert driver.degraded == ["1 subscription unconfirmed: 'denied/#' (refused: Not authorized)"]
    await clock.advance(10)
    assert driver.replays == [["denied/#"], ["denied/#"]]
    ledger.acknowledged("denied/#")  # granted on the retry
    assert driver.degraded[-1] is None


async def test_expect_data_waits_for_a_datum(clock: ManualClock) -> None:
    """Test that an expect_data entry is confirmed by its first datum, not by the ack."""
    ledger, driver = make(clock)
    ledger.add("status/+", expect_data=True)
    ledger.link_up()
    assert list(ledger.awaiting_data) == ["status/+"]
    ledger.acknowledged("status/+")
    assert ledger.get("status/+").state is SubscriptionState.PENDING  # type: ignore[union-attr]
    await clock.advance(10)
    assert driver.degraded[-1] == "1 subscription unconfirmed: 'status/+' (no data within 10 s)"
    ledger.acknowledged("status/+")  # the retry's ack is not data either
    assert ledger.degraded_reason is not None
    ledger.data_received("status/+")
    assert driver.degraded[-1] is None
    assert ledger.awaiting_data == {}


async def test_refused_expect_data_entry_awaits_data_again_on_retry(clock: ManualClock) -> None:
    """Test that an expect_data entry refused once waits for a datum again when it is replayed."""
    ledger, driver = make(clock)
    ledger.add("MAIN.iCount", expect_data=True)
    ledger.link_up()
    ledger.acknowledged("MAIN.iCount", ok=False, error="symbol not found")
    assert ledger.awaiting_data == {}
    await clock.advance(10)
    assert driver.replays == [["MAIN.iCount"], ["MAIN.iCount"]]
    assert list(ledger.awaiting_data) == ["MAIN.iCount"]
    ledger.data_received("MAIN.iCount")
    assert driver.degraded[-1] is None
    assert ledger.is_confirmed()


async def test_link_down_clears_degraded_and_stops_timers(clock: ManualClock) -> None:
    """Test that losing the link clears the reason and no replay runs without a link."""
    ledger, driver = make(clock)
    ledger.add("t")
    ledger.link_up()
    await clock.advance(10)
    assert ledger.degraded_reason is not None
    ledger.link_down()
    assert driver.degraded[-1] is None
    assert clock.pending() == []
    ledger.acknowledged("t")  # a late answer from the old link changes nothing
    ledger.data_received("t")
    assert ledger.get("t").state is SubscriptionState.IDLE  # type: ignore[union-attr]


async def test_remove_clears_its_failure(clock: ManualClock) -> None:
    """Test that removing the only failed entry clears the degraded reason."""
    ledger, driver = make(clock)
    ledger.add("t")
    ledger.link_up()
    ledger.acknowledged("t", ok=False)
    assert ledger.degraded_reason == "1 subscription unconfirmed: 't' (refused)"
    assert ledger.remove("t") is not None
    assert ledger.remove("t") is None
    assert driver.degraded[-1] is None
    assert clock.pending() == []
    assert "t" not in ledger and len(ledger) == 0


async def test_reason_names_a_few_and_counts_the_rest(clock: ManualClock) -> None:
    """Test that a reason with many failures names three and counts the others."""
    ledger, _ = make(clock)
    for i in range(5):
        ledger.add(f"t{i}")
    ledger.link_up()
    await clock.advance(10)
    reason = ledger.degraded_reason
    assert reason is not None
    assert reason.startswith("5 subscriptions unconfirmed: 't0'")
    assert reason.endswith("and 2 more")


async def test_failing_replay_is_retried_at_the_deadline(clock: ManualClock) -> None:
    """Test that a replay function that raises leaves the entries to the next deadline."""
    calls: list[int] = []

    def replay(entries: Sequence[Subscription]) -> None:
        calls.append(len(entries))
        if len(calls) == 1:
            raise OSError("socket gone")

    ledger = SubscriptionLedger(replay, clock=clock)
    ledger.add("t")
    ledger.link_up()
    await clock.advance(10)
    assert calls == [1, 1]


def test_clock_may_be_a_function_and_bad_bounds_are_refused() -> None:
    """Test that the clock can be given late through a function and bounds are validated."""
    clock = ManualClock(start=5.0)
    ledger = SubscriptionLedger(lambda entries: None, clock=lambda: clock)
    assert ledger.clock is clock
    with pytest.raises(ValueError, match="confirm_within"):
        SubscriptionLedger(lambda entries: None, confirm_within=0)
    with pytest.raises(ValueError, match="retry_max"):
        SubscriptionLedger(lambda entries: None, retry_max=-1)
    with pytest.raises(ValueError, match="empty"):
        ledger.add("")
    assert "link=down" in repr(ledger)
