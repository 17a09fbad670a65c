"""The dispatch: `route_data`'s fast path, the loop-guarded general path, echoes and plans."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from sys import intern as _intern
from typing import Any, ClassVar, Final

from edgelink.errors import RouteError
from edgelink.router.address import (
    resolve_endpoint,
)
from edgelink.router.datapoint import DataPoint
from edgelink.router.dataspace import DataSpace, HistoryRing, Record, _Whole
from edgelink.router.expr import (
    DROP,
    EvalError,
    LimitError,
    loose_equal,
)
from edgelink.router.outbox import Delivery, Outbox
from edgelink.router.quarantine import Gate
from edgelink.router.table import LOG_EVERY, Out, Plan, Route, RouteTable
from edgelink.router.targets import LogTarget

#: One logger for the whole router (its records keep the name they always had).
logger = logging.getLogger("edgelink.router.engine")

#: Echoes remembered at once; older ones go first.
ECHO_LIMIT: Final = 10_000
#: Writes remembered per address for echo recognition.
_ECHOES_PER_ADDRESS: Final = 4

_new_datapoint = tuple.__new__
_Echo = tuple[Any, tuple[str, ...], int, tuple[str, ...], float]
_EMPTY: Final[tuple[()]] = ()
#: Stands for an address's last level in `Dispatch._wild_match` (no pattern names it).
_PLACEHOLDER: Final = "\x00"
#: Where an echo (`_Echo`) keeps its expiry time.
_EXPIRES: Final = 4


class Dispatch(Delivery):
    """The Router's dispatch of datapoints (a part of `Router`)."""

    #: False in a subclass: every datapoint takes the general, loop-guarded path
    #: (`_fire`) instead of the inlined first hop (the property test compares them).
    _INLINE_FIRST_HOP: ClassVar[bool] = True

    # Set by Router.__init__ (see `Quarantine`).
    _inline_first_hop: bool
    data: DataSpace
    _table: RouteTable
    _rings: OrderedDict[str, HistoryRing | Record]
    _touch: Callable[[str], None]
    _subs: Any
    _echoes: OrderedDict[str, list[_Echo]]
    echo_evicted: int
    max_hops: int
    max_plans: int
    plan_cache_resets: int
    echo_window: float
    queue_limit: int
    received: int
    spam_dropped: int
    paused: bool
    paused_dropped: int
    loop_blocked: int

    def route_data(
        self,
        source_id: str,
        tag: str,
        value: Any,
        metadata: Mapping[str, Any] | None = None,
        *,
        quality: str | None = None,
        ts: float | None = None,
    ) -> bool:
        """Route one datapoint: store it, match routes, check, transform, schedule delivery.

        Synchronous and cheap; call it on the event loop. The datapoint's
        timestamp and quality come from ``ts``/``quality``, else from
        ``metadata["ts"]``/``metadata["quality"]``, else now and ``"good"``;
        ``metadata`` stays on the datapoint as it is. Deliveries run in the
        background: ``await drain()`` waits for them. Never raises for a bad
        value: a failing condition or transform counts as an error of its route.

        Returns:
            False if spam protection dropped the datapoint, its source is
            quarantined (`enable_source`), or the router is paused (`pause`),
            else True.
        """
        if self.paused:
            self.paused_dropped += 1
            return False
        if metadata is not None:
            if quality is None:
                quality = metadata.get("quality", "good")
            if ts is None:
                ts = metadata.get("ts")
        if self._guards:
            guard = self._guards.get(source_id)
            if guard is not None and not guard.admit():
                # A quarantined source's gate stands among the guards: no check of its own.
                if guard.__class__ is Gate:
                    self.quarantine_dropped += 1
                else:
                    self.spam_dropped += 1
                return False
        self.received += 1
        address = f"{source_id}.{tag}"
        if ts is None:
            ts = self._time()
        if quality is None:
            quality = "good"
        # The datapoint as a plain tuple of DataPoint's fields: building the
        # DataPoint itself costs three times as much, and only the routes that
        # pass need one (the data space makes one when it is read).
        dp: Record
        trail: tuple[str, ...] | None = None
        if self._echoes:
            dp, trail = self._echo_record(address, value, ts, quality, source_id, metadata)
        else:
            dp = (address, value, ts, quality, source_id, metadata, _EMPTY, 0)
        # Captured before the data space runs subscribers: one of them may load
        # new routes, and this datapoint must see one table only.
        table = self._table
        try:
            entry = self._rings[address]
        except KeyError:
            # A new address (an MQTT topic per message may never come again):
            # its plan is computed but cached only from its second datapoint.
            self.data.store_new(dp)
            plan = table.plans.get(address)
            if plan is None:
                plan = self._plan(table, address, source_id, tag, cache=False)
        else:
            if self._subs or entry.__class__ is not HistoryRing:
                self.data.store(address, entry, dp)
            else:
                self._touch(address)  # the least recently updated address goes first
                # HistoryRing.push, inlined (a call is most of its cost here).
                older = entry.last
                entry.last = dp
                i = entry.head
                if (
                    older[5] is None
                    and older[3] == "good"
                    and not older[6]
                    and older[4] == entry.source
                ):
                    entry[i] = older[1]
                    entry[i + 1] = older[2]
                else:
                    entry[i] = _Whole(older)
                    entry[i + 1] = None
                i += 2
                entry.head = 0 if i == len(entry) else i
            try:
                plan = table.plans[address]
            except KeyError:
                plan = self._plan(table, address, source_id, tag)
        if not plan:
            return True
        if trail is not None or not self._inline_first_hop:
            # An echo of our own write carries its route path: the loop guard applies.
            self._fire(table, plan, dp, value, (address,) if trail is None else trail, ts)
            return True
        # The first hop, inlined: this loop is _fire without the loop guard (an
        # empty path cannot hold a route), and it is most of route_data's cost.
        # tests/unit/test_router_fastpath_property.py checks that both agree.
        for route, outs in plan:
            try:
                cond = route.condition
                if cond is not None and not cond(value, dp):
                    route.filtered += 1
                    continue
                transform = route.transform
                out = value if transform is None else transform(value, dp)
            except Exception as exc:  # noqa: BLE001 - a bad value fails its route only
                self._route_failed(route, exc, source_id)
                continue
            if out is DROP:
                route.suppressed += 1
                continue
            route.passed += 1
            route.last_fired = ts
            if route.failing:
                self._route_recovered(route)
            out_dp: DataPoint = _new_datapoint(
                DataPoint,
                (address, out, ts, quality, source_id, metadata, route.path1, 1),
            )
            virtual = None
            for ob, ttag in outs:
                if ob is None:
                    # Routed on after this route's own targets have their datapoint.
                    virtual = [ttag] if virtual is None else [*virtual, ttag]
                    continue
                if ob.idle and ob.direct is not None:
                    self._write_now(ob, (ttag, out_dp))
                else:
                    queue = ob.queue
                    queue.append((ttag, out_dp))
                    if ob.idle:
                        self._start(ob)
                    elif len(queue) > ob.limit:
                        ob.trim()
                if ob.echo:
                    self._remember_echo(ob, ttag, out_dp, (address,))
            if virtual is not None:
                for target in virtual:
                    self._route_virtual(table, target, out_dp, (address,))
        return True

    def _echo_record(
        self,
        address: str,
        value: Any,
        ts: float,
        quality: str,
        source_id: str,
        metadata: Mapping[str, Any] | None,
    ) -> tuple[Record, tuple[str, ...] | None]:
        """Build the record; if it echoes a recent write, with that write's path and trail."""
        entries = self._echoes.get(address)
        if entries is not None:
            now = self._monotonic()
            live = [e for e in entries if e[_EXPIRES] >= now]
            if len(live) != len(entries):
                if live:
                    self._echoes[address] = live
                else:
                    del self._echoes[address]
            for written, path, hops, trail, _ in reversed(live):
                if loose_equal(written, value):
                    return (address, value, ts, quality, source_id, metadata, path, hops), trail
        return (address, value, ts, quality, source_id, metadata, _EMPTY, 0), None

    def _fire(
        self,
        table: RouteTable,
        plan: Plan,
        dp: Record,
        value: Any,
        trail: tuple[str, ...],
        ts: float,
    ) -> None:
        """Run a plan for a datapoint that already passed routes, with the loop guard.

        ``trail`` holds the addresses the datapoint's lineage has been at. A
        route never fires twice in one lineage (``path``), a lineage ends
        after ``max_hops`` routes, and nothing is sent back to an address in
        the trail: that is what settles a bidirectional pair whose two sides
        change at once (each side's write would otherwise race the other's
        report forever).
        """
        # Named fields by unpacking: one instruction, cheaper than indexing each.
        address, _, stamp, quality, source, metadata, path, hops = dp
        for route, outs in plan:
            if hops >= self.max_hops or route.id in path:
                route.loop_blocked += 1
                self.loop_blocked += 1
                continue
            try:
                cond = route.condition
                if cond is not None and not cond(value, dp):
                    route.filtered += 1
                    continue
                transform = route.transform
                out = value if transform is None else transform(value, dp)
            except Exception as exc:  # noqa: BLE001 - a bad value fails its route only
                self._route_failed(route, exc, source)
                continue
            if out is DROP:
                route.suppressed += 1
                continue
            route.passed += 1
            route.last_fired = ts
            if route.failing:
                self._route_recovered(route)
            out_dp: DataPoint = _new_datapoint(
                DataPoint,
                (address, out, stamp, quality, source, metadata, path + route.path1, hops + 1),
            )
            self._hand_on(table, route, outs, out_dp, trail)

    def _hand_on(
        self,
        table: RouteTable,
        route: Route,
        outs: tuple[Out, ...],
        out_dp: DataPoint,
        trail: tuple[str, ...],
    ) -> None:
        """Hand a passed route's datapoint to its targets; never back to an address in ``trail``."""
        virtual = None
        for ob, ttag in outs:
            target = ttag if ob is None else ob.address_of(ttag)
            if target in trail:
                route.loop_blocked += 1
                self.loop_blocked += 1
                continue
            if ob is None:
                virtual = [ttag] if virtual is None else [*virtual, ttag]
                continue
            if ob.idle and ob.direct is not None:
                self._write_now(ob, (ttag, out_dp))
            else:
                queue = ob.queue
                queue.append((ttag, out_dp))
                if ob.idle:
                    self._start(ob)
                elif len(queue) > ob.limit:
                    ob.trim()
            if ob.echo:
                self._remember_echo(ob, ttag, out_dp, trail)
        if virtual is not None:
            for target in virtual:
                self._route_virtual(table, target, out_dp, trail)

    def plan_of(self, dp: DataPoint) -> tuple[RouteTable, Plan]:
        """The route table now and the routes matching ``dp.address`` in it, with their targets.

        For callers that run the steps of `route_data` one at a time (the Edge
        OS layer, `edgelink.compat.edgeos`): nothing is stored, counted or cached.
        """
        table = self._table
        plan = table.plans.get(dp.address)
        if plan is None:
            _, _, tag = dp.address.partition(".")
            plan = self._plan(table, dp.address, dp.source, tag, cache=False)
        return table, plan

    def send_passed(
        self, table: RouteTable, route: Route, outs: tuple[Out, ...], dp: DataPoint, value: Any
    ) -> None:
        """Send ``value`` on as ``route``'s output for ``dp``: counted and loop-guarded as live.

        The other half of `plan_of`: the route's condition and transform have
        run (the caller's part); this counts the route as passed and delivers.
        """
        if dp.hops >= self.max_hops or route.id in dp.path:
            route.loop_blocked += 1
            self.loop_blocked += 1
            return
        if value is DROP:
            route.suppressed += 1
            return
        route.passed += 1
        route.last_fired = dp.ts
        if route.failing:
            self._route_recovered(route)
        out_dp = dp._replace(value=value, path=dp.path + route.path1, hops=dp.hops + 1)
        self._hand_on(table, route, outs, out_dp, (dp.address,))

    def _route_virtual(
        self, table: RouteTable, address: str, out: DataPoint, trail: tuple[str, ...]
    ) -> None:
        """Route a value sent to a virtual address (``calc.total_power``) as a new datapoint."""
        source, _, tag = address.partition(".")
        if self._quarantined and source in self._quarantined:
            self._quarantined[source]["dropped"] += 1
            self.quarantine_dropped += 1
            return
        _, value, ts, quality, _, metadata, path, hops = out
        dp: Record = (address, value, ts, quality, source, metadata, path, hops)
        self.data.put(dp)
        plan = table.plans.get(address)
        if plan is None:
            plan = self._plan(table, address, source, tag)
        if plan:
            self._fire(table, plan, dp, value, (*trail, address), ts)

    def _remember_echo(self, ob: Outbox, tag: str, out: DataPoint, trail: tuple[str, ...]) -> None:
        """Expect what was just sent to an echo target back within ``echo_window``.

        The last few values sent to an address are kept: a device may report
        an older write after a newer one was sent.
        """
        address = ob.address_of(tag)
        mono = self._monotonic()
        echoes = self._echoes
        _, value, _, _, _, _, path, hops = out
        entry = (value, path, hops, (*trail, address), mono + self.echo_window)
        entries = echoes.get(address)
        if entries is not None:
            entries.append(entry)
            if len(entries) > _ECHOES_PER_ADDRESS:
                del entries[0]
            # Addresses in the order of their last write, so of their expiry
            # (the window is one for all): the front expires first.
            echoes.move_to_end(address)
            return
        # Expired echoes go from the front: amortized O(1) per write, however
        # many addresses are written (an MQTT topic per message).
        while echoes:
            first = next(iter(echoes.values()))
            if first[-1][_EXPIRES] >= mono:
                break
            echoes.popitem(last=False)
        if len(echoes) >= ECHO_LIMIT:
            echoes.popitem(last=False)
            self.echo_evicted += 1
        echoes[address] = [entry]

    def _plan(
        self, table: RouteTable, address: str, source: str, tag: str, *, cache: bool = True
    ) -> Plan:
        hits: dict[Route, tuple[str, ...]] = {}
        for route in table.exact.get(address, ()):
            hits.setdefault(route, ())
        if len(table.wild):
            for route, caps in self._wild_match(table, address):
                hits.setdefault(route, caps)
        entries = []
        for route in sorted(hits, key=lambda r: r.index):
            caps = hits[route]
            outs = []
            for template in route.templates:
                target = template.text if template.is_static else template.render(caps, tag, source)
                outs.append(self._resolve_target(table, route, target))
            entries.append((route, tuple(outs)))
        plan = tuple(entries)
        if cache:
            if len(table.plans) >= self.max_plans:
                # Starting over is cheaper than an LRU on the hot path: the
                # addresses still reported get their plans back on their next datapoint.
                table.plans = {}
                self.plan_cache_resets += 1
            # Interned, as the data space's key is: one string for both.
            table.plans[_intern(address)] = plan
        return plan

    def _wild_match(self, table: RouteTable, address: str) -> list[tuple[Route, tuple[str, ...]]]:
        """The wildcard routes matching ``address``, with their captures, cached per shape.

        The last level of an address that no pattern names literally (a new
        MQTT topic per message: ``broker.in/u000123``) is matched by wildcards
        only, so every such address under one parent matches the same routes:
        the match is made once per parent (with a placeholder for the last
        level) and the captures get the real level.
        """
        pos = max(address.rfind("/"), address.rfind("."))
        last = address[pos + 1 :]
        if pos < 0 or not last or last in table.wild.literals or _PLACEHOLDER in address:
            return table.wild.match(address)
        prefix = address[: pos + 1]
        shape = table.shapes.get(prefix)
        if shape is None:
            shape = table.wild.match(prefix + _PLACEHOLDER)
            if len(table.shapes) >= self.max_plans:
                table.shapes = {}
            table.shapes[prefix] = shape
        if not shape:
            return shape
        return [
            (route, tuple([c.replace(_PLACEHOLDER, last) for c in caps])) for route, caps in shape
        ]

    def _resolve_target(self, table: RouteTable, route: Route, address: str) -> Out:
        endpoint, tag = resolve_endpoint(address, self._outboxes)
        if endpoint is not None:
            return self._outboxes[endpoint], tag
        if address.startswith("log.") and len(address) > 4:
            name, _, tag = address[4:].partition(".")
            endpoint = "log." + name
            ob = Outbox(endpoint, LogTarget(name), "log", self.queue_limit)
            self._outboxes[endpoint] = ob
            return ob, tag
        key = (route.id, address)
        if key not in table.warned:
            table.warned.add(key)
            logger.info(
                "route %s: %r names no connection or target: routed as a virtual address",
                route.id,
                address,
            )
        return None, address

    def _route_failed(self, route: Route, exc: BaseException, source: str) -> None:
        route.eval_errors += 1
        text = f"{type(exc).__name__}: {exc}"
        route.last_error = text
        now = self._monotonic()
        if not route.failing or now - route._last_log >= LOG_EVERY:
            route._last_log = now
            logger.warning(
                "route %s failed (%d errors so far): %s", route.id, route.eval_errors, text
            )
        route.failing = True
        if isinstance(exc, LimitError):
            route.limit_errors += 1
            if exc.entry:
                # The value came in over a cap: the source's doing, not the route's.
                self._strike_source(source, text, now)
            else:
                self._strike_route(route, text, now)
        elif not isinstance(exc, EvalError | RouteError):
            # Not a value the language refuses but a crash of its handler.
            route.crashes += 1
            self._strike_source(source, text, now)

    def _route_recovered(self, route: Route) -> None:
        route.failing = False
        logger.info("route %s works again", route.id)
