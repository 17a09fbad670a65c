"""`BmsReading`: what a battery management system reported, in SI units.

A reading holds only what the frames it came from carried: a Daly ``0x90``
frame fills voltage, current, power and SOC and leaves the cells empty. A
parser merges the readings of a poll cycle into its `BmsParser.state`; a
driver publishes each frame's reading as it arrives (`BmsReading.datapoints`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Final

__all__ = ["MAX_CELLS", "MAX_TEMPERATURES", "BmsReading"]

#: Cell voltages a reading holds at most (DESIGN section 13).
MAX_CELLS: Final = 32
#: Temperature sensors a reading holds at most.
MAX_TEMPERATURES: Final = 16


@dataclass(slots=True)
class BmsReading:
    """Values decoded from BMS frames; ``None`` (or empty) where a frame said nothing.

    Units: volts, amperes (positive = charging, negative = discharging),
    watts, percent, degrees Celsius, ampere-hours. Cells and temperature
    sensors are numbered from 1, as on the BMS's own display.

    Example:
        >>> r = BmsReading(voltage=52.1, current=-3.2, cells={1: 3.301})
        >>> dict(r.datapoints())["cells.1"]
        3.301
    """

    voltage: float | None = None
    current: float | None = None
    power: float | None = None
    soc: float | None = None
    cells: dict[int, float] = field(default_factory=dict)
    temperatures: dict[int, float] = field(default_factory=dict)
    #: Every alarm the frame covers, by name: True raised, False clear.
    alarms: dict[str, bool] = field(default_factory=dict)
    charge_mos: bool | None = None
    discharge_mos: bool | None = None
    cycles: int | None = None
    capacity_remaining: float | None = None
    capacity_full: float | None = None
    #: What a protocol reports beyond the common fields (``cell_max``, ``time_to_go``, ...).
    info: dict[str, float | int | str | bool] = field(default_factory=dict)

    def merge(self, other: BmsReading) -> None:
        """Take every value ``other`` carries; keep ours where it says nothing."""
        # Named fields rather than dataclasses.fields(): this runs once per
        # frame, and the generic loop was half of a frame's cost (bench/bms.py).
        for name in _SCALARS:
            value = getattr(other, name)
            if value is not None:
                setattr(self, name, value)
        if other.cells:
            self.cells.update(other.cells)
        if other.temperatures:
            self.temperatures.update(other.temperatures)
        if other.alarms:
            self.alarms.update(other.alarms)
        if other.info:
            self.info.update(other.info)

    def is_empty(self) -> bool:
        """Return True if the reading carries no value at all."""
        return all(getattr(self, f.name) in (None, {}) for f in fields(self))

    def datapoints(self) -> Iterator[tuple[str, Any]]:
        """Yield ``(tag, value)`` for every value present, in the naming of docs/bms.md.

        ``voltage``, ``current``, ``power``, ``soc``, ``cells.<n>``,
        ``temps.<n>``, ``alarms.<name>``, ``mos.charge``, ``mos.discharge``,
        ``cycles``, ``capacity.remaining``, ``capacity.full``, ``info.<name>``.
        Under a connection id ``bt.bms_001`` the voltage is the address
        ``bt.bms_001.voltage``.
        """
        for tag, value in (
            ("voltage", self.voltage),
            ("current", self.current),
            ("power", self.power),
            ("soc", self.soc),
        ):
            if value is not None:
                yield tag, value
        for n, volts in sorted(self.cells.items()):
            yield f"cells.{n}", volts
        for n, celsius in sorted(self.temperatures.items()):
            yield f"temps.{n}", celsius
        for name, raised in self.alarms.items():
            yield f"alarms.{name}", raised
        for tag, value in (
            ("mos.charge", self.charge_mos),
            ("mos.discharge", self.discharge_mos),
            ("cycles", self.cycles),
            ("capacity.remaining", self.capacity_remaining),
            ("capacity.full", self.capacity_full),
        ):
            if value is not None:
                yield tag, value
        for name, extra in self.info.items():
            yield f"info.{name}", extra


_MAPS: Final = ("cells", "temperatures", "alarms", "info")
_SCALARS: Final = tuple(f.name for f in fields(BmsReading) if f.name not in _MAPS)
