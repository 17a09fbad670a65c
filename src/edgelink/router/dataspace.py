"""The data space: the last values of every address, a short history, a tree, subscriptions."""

from __future__ import annotations

import heapq
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from sys import intern as _intern
from typing import Any, Final

from edgelink.router.address import PatternIndex, parse_pattern
from edgelink.router.datapoint import QUALITY_REASON, QUALITY_SINCE, STALE, DataPoint

__all__ = ["DataSpace", "DataSubscriber", "Record"]

logger = logging.getLogger(__name__)

#: A datapoint as stored: a DataPoint, or a plain tuple of its fields in its
#: order (what the router stores; a DataPoint is made from it when read).
Record = (
    DataPoint | tuple[str, Any, float, str, str, Mapping[str, Any] | None, tuple[str, ...], int]
)

_as_datapoint = tuple.__new__
_EMPTY: Final[tuple[()]] = ()
_GOOD: Final = "good"


class _Whole:
    """An older record kept whole in a `HistoryRing` (it is not plain)."""

    __slots__ = ("record",)

    def __init__(self, record: Record) -> None:
        self.record = record


#: A slot of a `HistoryRing` not filled yet.
_UNSET: Final = _Whole(())  # type: ignore[arg-type]


class HistoryRing(list[Any]):
    """The history of one address: its last record, and up to ``capacity`` older ones.

    An older record that is plain (quality ``good``, no metadata, no route
    path, from the ring's source) is kept as two slots of this list, its value
    and its timestamp, not as a tuple of eight fields (the address, source
    and the rest are the same for all of them and made again when read); a
    driver's poll stamps its values with one float, so the timestamp is
    usually shared too. Any other record is kept whole (`_Whole`, its
    timestamp slot None). The ring is preallocated to ``capacity``: about 250
    bytes for 9 older records where a deque of tuples took 2.5 KB. Pushing is
    on the router's hot path: one object, no call below it.
    """

    __slots__ = ("head", "last", "source")

    def __init__(self, first: Record, capacity: int) -> None:
        super().__init__((_UNSET, None) * capacity)
        self.last: Record = first
        self.source: str = first[4]
        #: Where the next older record goes (the oldest is there once full).
        self.head = 0

    def push(self, record: Record) -> None:
        """Make ``record`` the last one; the last one so far becomes the newest older one."""
        # The router's hot path (about 100 ns): literals over globals, the
        # cheapest tests first.
        older = self.last
        self.last = record
        i = self.head
        if older[5] is None and older[3] == "good" and not older[6] and older[4] == self.source:
            self[i] = older[1]
            self[i + 1] = older[2]
        else:
            self[i] = _Whole(older)
            self[i + 1] = None
        i += 2
        self.head = 0 if i == len(self) else i

    def records(self, address: str) -> list[Record]:
        """Every kept record of ``address``, oldest first, the last one last."""
        source = self.source
        head = self.head
        out: list[Record] = []
        for i in (*range(head, len(self), 2), *range(0, head, 2)):
            value = self[i]
            if value.__class__ is _Whole:
                if value is not _UNSET:
                    out.append(value.record)
            else:
                out.append((address, value, self[i + 1], _GOOD, source, None, _EMPTY, 0))
        out.append(self.last)
        return out


def _last(entry: HistoryRing | Record) -> Record:
    """The last record of an address's entry (a ring, or its only record)."""
    if entry.__class__ is HistoryRing:
        return entry.last
    return entry  # type: ignore[return-value]


def _dp(record: Record) -> DataPoint:
    if type(record) is DataPoint:
        return record
    made: DataPoint = _as_datapoint(DataPoint, record)
    return made


#: ``callback(datapoint)``: called on the event loop, inside ``route_data``.
DataSubscriber = Callable[[DataPoint], None]

#: Subscription lookups cached per address; beyond this the cache starts over.
_SUB_CACHE_LIMIT: Final = 100_000


class _Subscription:
    __slots__ = ("active", "callback", "changes_only", "errors", "pattern")

    def __init__(self, pattern: str, callback: DataSubscriber, changes_only: bool) -> None:
        self.pattern = pattern
        self.callback = callback
        self.changes_only = changes_only
        self.errors = 0
        self.active = True


class DataSpace:
    """Last value per address, a bounded history (ring) per address, browsable as a tree.

    The router stores every datapoint it receives here (and every value
    routed to a virtual address). Writes to devices and targets are not
    stored: a device's value is what it reports.

    Example:
        space = router.data
        space.get("plc_1.MAIN.temperature")        # DataPoint | None
        space.children("plc_1.MAIN")               # ["plc_1.MAIN.fbBattery", ...]
        space.history("plc_1.MAIN.temperature")    # oldest first
        off = space.subscribe("plc_1.**", print)   # every change under plc_1

    Memory is bounded by ``max_addresses``: a new address beyond it evicts
    the least recently updated one (its last value, history, tree branch and
    place in its source's index go; counted in ``evicted``), so a source
    inventing addresses (an MQTT topic per message) cannot grow memory. An
    address seen once costs its record only: its history ring is made when
    its second datapoint comes.

    Args:
        history: Datapoints kept per address (at least 1: the last value).
        max_addresses: Addresses kept (at least 1).
    """

    def __init__(self, *, history: int = 10, max_addresses: int = 100_000) -> None:
        if max_addresses < 1:
            raise ValueError(f"max_addresses must be at least 1, got {max_addresses}")
        self.history_size = max(1, int(history))
        self.max_addresses = max_addresses
        # The router writes here directly on its hot path: per address its
        # entry, least recently updated first. An entry is the address's only
        # record (`Record`), or once a second one came (and history > 1) a
        # `HistoryRing` whose ``last`` is the last value. Never rebound.
        self._rings: OrderedDict[str, HistoryRing | Record] = OrderedDict()
        # The browse tree: path -> the paths one level below it; a branch with
        # one child holds that child's path itself (most topic levels have one).
        self._tree: dict[str, set[str] | str] = {}
        #: Grows whenever a path enters or leaves the tree (a browser's cue to look again).
        self.tree_version = 0
        #: source -> its addresses, so marking a source stale costs O(its addresses).
        self._by_source: dict[str, set[str]] = {}
        self._subs: list[_Subscription] = []
        self._sub_index: PatternIndex[_Subscription] = PatternIndex()
        self._sub_cache: dict[str, tuple[_Subscription, ...]] = {}
        #: Addresses forgotten to make room for new ones (``max_addresses``).
        self.evicted = 0
        #: Last values marked stale by `mark_stale`.
        self.stale_marked = 0
        self._warned_full = False

    def get(self, address: str) -> DataPoint | None:
        """Return the last datapoint of ``address``, or None."""
        entry = self._rings.get(address)
        return None if entry is None else _dp(_last(entry))

    def value(self, address: str, default: object = None) -> object:
        """Return the last value of ``address``, or ``default``."""
        entry = self._rings.get(address)
        return default if entry is None else _last(entry)[1]

    def history(self, address: str) -> list[DataPoint]:
        """Return the kept datapoints of ``address``, oldest first."""
        entry = self._rings.get(address)
        if entry is None:
            return []
        if entry.__class__ is HistoryRing:
            return [_dp(r) for r in entry.records(address)]
        return [_dp(entry)]  # type: ignore[arg-type]

    def children(self, prefix: str = "", limit: int | None = None) -> list[str]:
        """Return the paths one level below ``prefix`` (``""`` for the top), sorted.

        Levels are the segments of an address and, inside a segment, its MQTT
        topic levels: ``children("plc_1.MAIN")`` gives ``["plc_1.MAIN.fbBattery",
        "plc_1.MAIN.temperature"]`` and ``children("broker.plant")`` gives
        ``["broker.plant/line1"]`` for the address ``broker.plant/line1/power``.
        A child is an address, a branch, or both. A trailing ``.`` or ``/``
        of ``prefix`` is ignored unless that path is a branch itself (a topic
        with an empty level). With ``limit``, only the first ``limit`` paths
        (see `child_count` for how many there are).
        """
        branch = self._tree.get(self._branch_key(prefix))
        if branch is None:
            return []
        if branch.__class__ is str:
            return [branch] if limit is None or limit > 0 else []
        if limit is not None and len(branch) > limit:
            return heapq.nsmallest(max(0, limit), branch)
        return sorted(branch)

    def child_count(self, prefix: str = "") -> int:
        """Return how many paths are one level below ``prefix`` (see `children`)."""
        branch = self._tree.get(self._branch_key(prefix))
        if branch is None:
            return 0
        return 1 if branch.__class__ is str else len(branch)

    def has_children(self, path: str) -> bool:
        """Return whether anything is stored below ``path`` (it is a branch of the tree)."""
        return path in self._tree

    def _branch_key(self, prefix: str) -> str:
        if prefix in self._tree:
            return prefix
        return prefix.rstrip("./")

    def addresses(self, pattern: str | None = None) -> list[str]:
        """Return every stored address (matching ``pattern``, if given), sorted."""
        if pattern is None:
            return sorted(self._rings)
        index: PatternIndex[bool] = PatternIndex()
        parsed = parse_pattern(pattern)
        if parsed.is_exact:
            return [pattern] if pattern in self._rings else []
        index.add(parsed, True)
        return sorted(a for a in self._rings if index.match(a))

    def snapshot(self, prefix: str = "") -> dict[str, DataPoint]:
        """Return the last datapoint of every address at or under ``prefix``."""
        below = prefix + "."
        return {
            a: _dp(_last(e))
            for a, e in self._rings.items()
            if not prefix or a == prefix or a.startswith(below)
        }

    def __contains__(self, address: object) -> bool:
        return address in self._rings

    def __len__(self) -> int:
        return len(self._rings)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._rings))

    def __repr__(self) -> str:
        return (
            f"<DataSpace addresses={len(self._rings)}/{self.max_addresses} "
            f"history={self.history_size} evicted={self.evicted} "
            f"subscriptions={len(self._subs)}>"
        )

    def put(self, dp: Record) -> None:
        """Store a datapoint as the last value of its address and notify subscribers."""
        address = dp[0]
        entry = self._rings.get(address)
        if entry is None:
            self.store_new(dp)
            return
        self.store(address, entry, dp)

    def store(self, address: str, entry: HistoryRing | Record, dp: Record) -> None:
        """Store ``dp`` at an address already kept, whose entry is ``entry`` (the router's path)."""
        rings = self._rings
        rings.move_to_end(address)
        if entry.__class__ is HistoryRing:
            prev: Record = entry.last
            entry.push(dp)
        else:
            prev = entry  # type: ignore[assignment]
            if self.history_size > 1:
                ring = rings[address] = HistoryRing(prev, self.history_size - 1)
                ring.push(dp)
            else:
                rings[address] = dp
        if self._subs:
            self.notify(dp, prev)

    def store_new(self, dp: Record) -> None:
        """Store the first datapoint of a new address (evicting the least recent one if full)."""
        rings = self._rings
        if len(rings) >= self.max_addresses:
            self._evict()
        # Interned: the route plan cached for it (`Dispatch._plan`) shares the string.
        address = _intern(dp[0])
        rings[address] = dp
        source = dp[4]
        addresses = self._by_source.get(source)
        if addresses is None:
            addresses = self._by_source[source] = set()
        addresses.add(address)
        self._add_to_tree(address)
        if self._subs:
            self.notify(dp, None)

    def _add_to_tree(self, address: str) -> None:
        """Link ``address`` into the tree, and each new branch above it (``.`` and ``/`` levels).

        It walks up from the address and stops at the first branch that was
        there already (its own ancestors are linked): a new address under a
        known branch costs one step, whatever its depth.
        """
        tree = self._tree
        self.tree_version += 1
        child = address
        while True:
            pos = max(child.rfind("."), child.rfind("/"))
            parent = child[:pos] if pos > 0 else ""
            branch = tree.get(parent)
            if branch is None:
                tree[parent] = child
                if not parent:
                    return
                child = parent
                continue
            if branch.__class__ is str:
                if branch != child:
                    tree[parent] = {branch, child}
            else:
                branch.add(child)  # type: ignore[union-attr]
            return

    def _evict(self) -> None:
        """Forget the least recently updated address (the data space is full)."""
        address, entry = self._rings.popitem(last=False)
        self.evicted += 1
        if not self._warned_full:
            self._warned_full = True
            logger.warning(
                "data space full (%d addresses): the least recently updated addresses are "
                "forgotten to make room (router.max_addresses; counted in 'evicted')",
                self.max_addresses,
            )
        self._forget(address, _last(entry)[4])

    def _forget(self, address: str, source: str) -> None:
        """Take ``address`` (no longer kept) out of its source's index and the tree."""
        addresses = self._by_source.get(source)
        if addresses is not None:
            addresses.discard(address)
            if not addresses:
                del self._by_source[source]
        tree = self._tree
        self.tree_version += 1
        child = address
        while child not in tree and child not in self._rings:
            # Neither an address nor a branch any more: out of its parent's set.
            pos = max(child.rfind("."), child.rfind("/"))
            parent = child[:pos] if pos >= 0 else ""
            branch = tree.get(parent)
            if branch is None:
                return
            if branch.__class__ is str:
                if branch != child:
                    return
            else:
                branch.discard(child)  # type: ignore[union-attr]
                if len(branch) > 1:
                    return
                if branch:
                    tree[parent] = next(iter(branch))
                    return
            del tree[parent]
            if not parent:
                return
            child = parent

    def remove(self, prefix: str) -> int:
        """Forget the address ``prefix`` and every address under it; return how many."""
        below = prefix + "."
        gone = [a for a in self._rings if a == prefix or a.startswith(below)]
        for address in gone:
            del self._rings[address]
        if gone:
            self._rebuild_tree()
            gone_set = set(gone)
            for source, addresses in list(self._by_source.items()):
                addresses -= gone_set
                if not addresses:
                    del self._by_source[source]
        return len(gone)

    def clear(self) -> None:
        """Forget every address."""
        self._rings.clear()
        self._tree.clear()
        self._by_source.clear()
        self.tree_version += 1

    def _rebuild_tree(self) -> None:
        # ``_rings`` is never rebound: the router holds it for its hot path.
        self._tree = {}
        for address in self._rings:
            self._add_to_tree(address)

    def mark_stale(self, source: str, reason: str, since: float) -> int:
        """Mark the last values of ``source`` stale: it stopped delivering them.

        The value and its timestamp stay; the quality becomes ``stale`` and
        the metadata gains ``quality_reason`` and ``quality_since``. The last
        record is replaced, not appended, so the history holds measurements
        only. Subscribers (the bridge, the stream) get the marked datapoint;
        routes do not, because nothing was measured (`Router.mark_stale`).
        A value already stale is left alone, so an outage marks each address
        once however often it is reported; a ``bad`` value stays bad. The
        next datapoint the source reports is stored as it comes (``good``).
        Costs O(addresses of ``source``).

        Returns:
            How many addresses were marked.
        """
        addresses = self._by_source.get(source)
        if not addresses:
            return 0
        marked = 0
        rings = self._rings
        for address in tuple(addresses):
            entry = rings.get(address)
            if entry is None:
                continue
            last = _last(entry)
            if last[3] == STALE or last[3] == "bad":
                continue
            metadata = {**last[5]} if last[5] else {}
            metadata[QUALITY_REASON] = reason
            metadata[QUALITY_SINCE] = since
            record: Record = (address, last[1], last[2], STALE, last[4], metadata, last[6], last[7])
            if entry.__class__ is HistoryRing:
                entry.last = record
            else:
                # Replaced in place: a mark is no update, the address keeps its place.
                rings[address] = record
            marked += 1
            if self._subs:
                self.notify(record, last)
        self.stale_marked += marked
        return marked

    def subscribe(
        self, pattern: str, callback: DataSubscriber, *, changes_only: bool = True
    ) -> Callable[[], None]:
        """Call ``callback(datapoint)`` for datapoints stored at addresses matching ``pattern``.

        Patterns are those of routes (``plc_1.**``, ``mqtt.*.alarms/#``).
        With ``changes_only`` only a datapoint whose value or quality differs
        from the address's previous one is passed on. Callbacks run on the
        event loop inside ``route_data``: keep them short (put the datapoint
        on a queue). One that raises is logged once and counted, never
        stops routing.

        Returns:
            A function that unsubscribes.

        Raises:
            RouteError: for a bad pattern.
        """
        parsed = parse_pattern(pattern)
        sub = _Subscription(pattern, callback, changes_only)
        # _subs is mutated in place, never rebound: the router holds it too.
        self._subs.append(sub)
        self._sub_index.add(parsed, sub)
        self._sub_cache = {}

        def unsubscribe() -> None:
            if not sub.active:
                return
            sub.active = False
            self._subs.remove(sub)
            index: PatternIndex[_Subscription] = PatternIndex()
            for s in self._subs:
                index.add(parse_pattern(s.pattern), s)
            self._sub_index = index
            self._sub_cache = {}

        return unsubscribe

    def notify(self, record: Record, prev: Record | None) -> None:
        """Hand a stored datapoint to the subscribers of its address (`put` and the router)."""
        address = record[0]
        subs = self._sub_cache.get(address)
        if subs is None:
            subs = tuple(s for s, _ in self._sub_index.match(address))
            if len(self._sub_cache) >= _SUB_CACHE_LIMIT:
                self._sub_cache = {}
            self._sub_cache[address] = subs
        if not subs:
            return
        changed: bool | None = None
        dp: DataPoint | None = None
        for sub in subs:
            if not sub.active:
                continue
            if sub.changes_only:
                if changed is None:
                    changed = _changed(prev, record)
                if not changed:
                    continue
            if dp is None:
                dp = _dp(record)
            try:
                sub.callback(dp)
            except Exception:
                sub.errors += 1
                if sub.errors == 1:
                    logger.exception("data subscriber %r for %r failed", sub.callback, sub.pattern)


def _changed(prev: Record | None, record: Record) -> bool:
    if prev is None:
        return True
    try:
        return bool(prev[1] != record[1]) or prev[3] != record[3]
    except Exception:  # noqa: BLE001 - a value type with an odd __ne__ counts as changed
        return True
