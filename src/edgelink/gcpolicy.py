"""A garbage-collection policy for large fleets.

CPython's cyclic collector (3.11) runs a full collection when the objects that
survived into the oldest generation since the last one exceed a quarter of
those that were there before. A gateway with 10,000 links holds several
hundred thousand long-lived objects (drivers, transports, supervisors, route
entries), and a full collection walks every one of them: 0.3-0.5 s with the
loop stopped, measured in ``bench/connections.py``. Those objects live as long
as their connection; walking them again and again finds nothing.

``gc.freeze()`` moves every object the collector tracks into a permanent
generation that collections skip, in constant time. Freezing once the fleet
is up (and again after a reload) leaves the collector only what was made
since, so a full collection costs what the churn costs, not what the fleet
weighs. Objects that were frozen and later become cyclic garbage are not
freed until the next ``unfreeze``: the policy bounds that by collecting for
real (``unfreeze`` + full collection + ``freeze``) once the frozen set has
grown by ``refreeze_growth`` since the last real collection, which is rare
(reloads and fleet changes) and paid at a moment the policy chooses.

It is off by default in the library, because the collector is process-wide
and an embedding application may have its own ideas; ``edgelink run`` turns
it on. ``ConnectionManager(gc_policy="fleet")`` or ``GcPolicy(...)`` does it
for a library user.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["FLEET", "GcPolicy", "GcState", "resolve_gc_policy"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GcPolicy:
    """What to do with the garbage collector for a long-running fleet.

    Attributes:
        freeze: Freeze the tracked objects once the fleet is up and after each
            reload, so full collections skip them.
        settle: Seconds after start (and after a reload) before the freeze, so
            the links' own objects exist by then.
        thresholds: ``gc.set_threshold`` values, or None to keep the
            interpreter's. A larger first threshold means fewer young
            collections; each walks only what is young, so this trades a few
            hundred microseconds of pause for fewer of them.
        refreeze_growth: Collect for real (unfreeze, full collection, freeze)
            once the frozen set has grown by this factor since the last real
            collection, so frozen cyclic garbage stays bounded.
    """

    freeze: bool = True
    settle: float = 5.0
    thresholds: tuple[int, int, int] | None = (10_000, 20, 20)
    refreeze_growth: float = 1.5


#: The policy ``edgelink run`` uses and ``gc_policy="fleet"`` names.
FLEET = GcPolicy()


def resolve_gc_policy(value: GcPolicy | str | None) -> GcPolicy | None:
    """Turn the ``gc_policy`` argument into a policy (``"fleet"``, ``"off"``, None, or one)."""
    if value is None or isinstance(value, GcPolicy):
        return value
    if value == "fleet":
        return FLEET
    if value in ("off", "none", ""):
        return None
    raise ValueError(f"gc_policy must be 'fleet', 'off' or a GcPolicy, not {value!r}")


class GcState:
    """Applies a `GcPolicy` in one process and remembers what it did."""

    __slots__ = ("_baseline", "_old_thresholds", "collections", "freezes", "last_freeze", "policy")

    def __init__(self, policy: GcPolicy) -> None:
        self.policy = policy
        self._old_thresholds: tuple[int, int, int] | None = None
        self._baseline = 0
        self.freezes = 0
        self.collections = 0
        self.last_freeze: float | None = None

    def install(self) -> None:
        """Set the thresholds (the freeze waits for `settled`)."""
        if self.policy.thresholds is not None and self._old_thresholds is None:
            self._old_thresholds = gc.get_threshold()
            gc.set_threshold(*self.policy.thresholds)

    def settled(self) -> None:
        """Freeze what exists now; collect for real first if the frozen set grew too much."""
        if not self.policy.freeze:
            return
        frozen = gc.get_freeze_count()
        if self._baseline and frozen > self._baseline * self.policy.refreeze_growth:
            t0 = time.perf_counter()
            gc.unfreeze()
            gc.collect()
            self.collections += 1
            logger.info(
                "gc: frozen set grew %d -> %d objects; collected in %.0f ms",
                self._baseline,
                frozen,
                (time.perf_counter() - t0) * 1000,
            )
            self._baseline = 0
        # Young garbage need not be frozen: a young collection is cheap.
        gc.collect(1)
        gc.freeze()
        if not self._baseline:
            self._baseline = gc.get_freeze_count()
        self.freezes += 1
        self.last_freeze = time.time()

    def uninstall(self) -> None:
        """Restore the thresholds and unfreeze (the process goes on without the fleet)."""
        if self._old_thresholds is not None:
            gc.set_threshold(*self._old_thresholds)
            self._old_thresholds = None
        if self.freezes:
            gc.unfreeze()
            self._baseline = 0

    def snapshot(self) -> dict[str, Any]:
        """What the collector looks like now, for status and metrics."""
        stats = gc.get_stats()
        return {
            "policy": "fleet" if self.policy == FLEET else "custom",
            "frozen_objects": gc.get_freeze_count(),
            "freezes": self.freezes,
            "full_collections_forced": self.collections,
            "collections": [s["collections"] for s in stats],
            "thresholds": list(gc.get_threshold()),
        }
