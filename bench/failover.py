"""Benchmark: failover and failback times of a redundant pair against the configured values.

Two devices on loopback, ``primary`` and ``standby``: PING/PONG devices
(``edgelink.testing.peers.PingPongPeer``) for ``--driver tcp``, simulated
HTTP devices (``edgelink.sim.http.HttpSimulator``) for ``--driver http``.
Two connections poll a tag every ``--poll`` s:

- ``pair``: ``endpoints`` [primary, standby] with ``failover_after``,
  ``failback_after``, ``failback_probe_interval`` and ``failback_holdoff 0``;
- ``single``: the primary alone: the baseline, as a connection was before.

Each of ``--rounds`` rounds stops the primary (every link closes, the port
refuses), waits ``--outage`` s, starts it again and waits until ``pair`` is
back on it. Figures per round, real clock:

- ``failover_gap_s``: for ``pair``, from the stop to its first value from the
  standby (the two devices hold different values) -- the data outage;
- ``single_gap_s``: for ``single``, from the stop to its first value after the
  primary is back: the outage the same device costs without failover;
- ``failback_s``: from the primary listening again to ``pair``'s first value
  from it; the target is ``failback_after`` plus at most two probe intervals
  (the first probe comes up to one interval after the restart, the last is
  one interval after the stable period started) plus 0.5 s;
- ``links``: this process's established links to each device port, sampled
  while on the standby and after the failback: ``pair`` + ``single`` hold
  exactly one each, never two.

Ratio: failover gap / single gap (the outage failover saves).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

import psutil
from _common import check, median, r, run_benchmark

from edgelink import ConnectionManager
from edgelink.sim.http import HttpSimulator
from edgelink.testing.peers import PingPongPeer

#: The tag each device answers, by driver: the value tells the devices apart.
TAGS = {"tcp": "t", "http": "/values/t"}


class Device:
    """One loopback device of the pair: the driver's peer, stopped and started by rounds."""

    def __init__(self, driver: str, value: int) -> None:
        self.driver = driver
        self.value = str(value)
        self._tcp = PingPongPeer(values={"t": self.value}) if driver == "tcp" else None
        self._http = HttpSimulator() if driver == "http" else None
        if self._http is not None:
            self._http.device.set_value("t", value)

    @property
    def port(self) -> int:
        if self._tcp is not None:
            return self._tcp.port
        assert self._http is not None
        return self._http.port

    def endpoint(self) -> dict[str, Any]:
        """The fields of a driver config that point at this device."""
        if self._http is not None:
            return {"base_url": self._http.url}
        return {"host": "127.0.0.1", "port": self.port}

    async def start(self) -> None:
        if self._tcp is not None:
            await self._tcp.start()
        else:
            assert self._http is not None
            await asyncio.to_thread(self._http.start)

    async def stop(self) -> None:
        if self._tcp is not None:
            await self._tcp.stop()
        else:
            assert self._http is not None
            await asyncio.to_thread(self._http.stop)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--driver", choices=sorted(TAGS), default="tcp")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--outage", type=float, default=3.0, help="seconds the primary is away")
    p.add_argument("--poll", type=float, default=0.02, help="poll interval, s")
    p.add_argument("--failover-after", type=int, default=3)
    p.add_argument("--failback-after", type=float, default=1.0)
    p.add_argument("--probe-interval", type=float, default=0.2)
    p.add_argument("--max-runtime", type=float, default=300.0)
    return p.parse_args(argv)


def links_to(port: int) -> int:
    return sum(
        1
        for c in psutil.Process(os.getpid()).net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


async def first(pred: Any, timeout: float = 30.0, step: float = 0.001) -> float:
    """Return the monotonic time ``pred()`` first held (polled every ``step`` s)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(step)
    return time.monotonic()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = {
        "failover_after": args.failover_after,
        "failback_after": args.failback_after,
        "failback_probe_interval": args.probe_interval,
        "failback_holdoff": 0.0,
        "health_check_interval": 5.0,
        "reconnect_initial_delay": 0.1,
        "reconnect_max_delay": 1.0,
        "fleet_recovery": False,
        "flap_dampening": False,
        "reconnect_max_attempts": None,
    }
    gaps: list[float] = []
    single_gaps: list[float] = []
    backs: list[float] = []
    links: list[tuple[int, int]] = []
    primary, standby = Device(args.driver, 1), Device(args.driver, 2)
    tag = TAGS[args.driver]
    await primary.start()
    await standby.start()
    try:
        m = ConnectionManager(connect_timeout=0.5, reconnect_jitter=0.0)
        cfg = primary.endpoint()
        poll = [{"tags": [tag], "interval": args.poll}]
        m.add_connection(
            "pair",
            args.driver,
            cfg,
            settings=settings,
            endpoints=[{}, standby.endpoint()],
            poll=poll,
        )
        m.add_connection("single", args.driver, cfg, settings=settings, poll=poll)
        #: connection -> (monotonic time, value) of its last good value.
        seen: dict[str, tuple[float, str]] = {}

        def on_data(cid: str, tag: str, value: Any, quality: str, ts: float) -> None:
            if quality == "good":
                seen[cid] = (time.monotonic(), str(value))

        m.on_data(on_data)

        def at(cid: str) -> float:
            return seen[cid][0] if cid in seen else 0.0

        def endpoint_of(cid: str) -> int | None:
            if cid not in seen:
                return None
            return [primary.value, standby.value].index(seen[cid][1])

        async with m:
            await m.wait_for_state("pair", "connected", timeout=5)
            await m.wait_for_state("single", "connected", timeout=5)
            await first(lambda: endpoint_of("pair") == 0 and "single" in seen)
            for _ in range(args.rounds):
                await asyncio.sleep(0.3)
                stopped = time.monotonic()
                await primary.stop()
                fell = await first(lambda t=stopped: endpoint_of("pair") == 1 and at("pair") > t)
                gaps.append(fell - stopped)
                links.append((links_to(primary.port), links_to(standby.port)))
                await asyncio.sleep(max(0.0, stopped + args.outage - time.monotonic()))
                await primary.start()
                back_at = time.monotonic()
                single_back = await first(lambda t=back_at: at("single") > t)
                single_gaps.append(single_back - stopped)
                came = await first(lambda: endpoint_of("pair") == 0)
                backs.append(came - back_at)
                await asyncio.sleep(args.poll * 5)
                links.append((links_to(primary.port), links_to(standby.port)))
            status = m.get_status("pair")["endpoints"]
    finally:
        await primary.stop()
        await standby.stop()
    gap, single, back = median(gaps), median(single_gaps), median(backs)
    budget = args.failback_after + 2 * args.probe_interval + 0.5
    # While on the standby: single's link is down, pair's on the standby (0, 1);
    # after the failback both on the primary (2, 0).
    expected = [(0, 1), (2, 0)] * args.rounds
    checks = {
        "failover_gap_max": check(r(max(gaps)), "<", 1.0),
        "failback_max": check(r(max(backs)), "<=", round(budget, 3)),
        "failback_min": check(r(min(backs)), ">=", args.failback_after),
        "links_one_per_connection": check(float(links == expected), "==", 1.0),
    }
    return {
        "benchmark": "failover",
        "config": vars(args),
        "failover_gap_s": {"median": r(gap), "max": r(max(gaps)), "all": [r(x) for x in gaps]},
        "single_gap_s": {"median": r(single), "all": [r(x) for x in single_gaps]},
        "failback_s": {"median": r(back), "max": r(max(backs)), "all": [r(x) for x in backs]},
        "failback_configured_s": args.failback_after,
        "failback_excess_s": r(None if back is None else back - args.failback_after),
        "ratio_failover_gap_to_single_gap": r(
            None if gap is None or not single else gap / single, 4
        ),
        "links": links,
        "failovers": status["failovers"],
        "failbacks": status["failbacks"],
        "probes": status["probes"],
        "checks": checks,
        "pass": all(c["pass"] for c in checks.values()),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_benchmark("failover", lambda: run(args), max_runtime=args.max_runtime)


if __name__ == "__main__":
    raise SystemExit(main())
