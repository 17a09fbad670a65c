"""Simulated battery management systems on a socat pty pair: Daly, JBD and Victron VE.Direct.

`BmsModel` is the battery: cells, current, SOC, temperatures, alarms and MOS
states that change with time. The encoders (`daly_answers`, `jbd_answer`,
`victron_blocks`) turn it into the frames of each protocol, as the protocol
descriptions in `edgelink.bms` lay them out. `BmsDevice` answers a driver's
requests on the device end of a `SerialLink` (Daly and JBD) or talks on its
own once a ``period`` (VE.Direct), and can misbehave on demand (`BmsFault`):
garbage before each frame, frames cut short, a broken checksum, silence.
Unplugging is the link's business (`SerialLink.stop`).

``edgelink sim bms --type daly|jbd|victron --link PATH`` runs one until
SIGTERM or SIGINT (`run_bms_simulator`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from edgelink.bms.ant import END as ANT_END
from edgelink.bms.ant import START as ANT_START
from edgelink.bms.ant import STATUS_REQUEST as ANT_STATUS_REQUEST
from edgelink.bms.ant import ant_crc, ant_frame
from edgelink.bms.daly import (
    ALARM_BITS,
    BMS_ADDRESS,
    CURRENT_OFFSET,
    TEMPERATURE_OFFSET,
    daly_checksum,
    daly_frame,
)
from edgelink.bms.jbd import PROTECTION_BITS, ZERO_CELSIUS, jbd_checksum, jbd_response
from edgelink.bms.reading import MAX_CELLS, MAX_TEMPERATURES
from edgelink.bms.victron import ALARM_REASON_BITS, vedirect_block
from edgelink.bms.victron_ble import decrypt_record, parse_key
from edgelink.sim.serial import SerialDevice, SerialLink

__all__ = [
    "BMS_TYPES",
    "BmsDevice",
    "BmsFault",
    "BmsModel",
    "BmsResponder",
    "ant_status",
    "daly_answers",
    "jbd_answer",
    "run_bms_simulator",
    "victron_advertisement",
    "victron_blocks",
]

#: The protocols the simulator speaks.
BMS_TYPES: Final = ("daly", "jbd", "victron")

#: The garbage `BmsFault.GARBAGE` puts before every frame (no start byte of any protocol).
GARBAGE: Final = b"\x00\x13\x37\xfe\x42"


class BmsFault(enum.Enum):
    """How a `BmsDevice` misbehaves (``None`` on the device: it behaves)."""

    #: A few bytes of line noise before every frame.
    GARBAGE = "garbage"
    #: Every frame cut off after half its bytes.
    CUT = "cut"
    #: Every frame with a wrong checksum.
    CORRUPT = "corrupt"
    #: Requests are read and never answered; VE.Direct sends nothing.
    SILENCE = "silence"


@dataclass(slots=True)
class BmsModel:
    """A battery whose values move with time (``now`` in seconds, for repeatable tests).

    Args:
        cells: Number of cells (1 to 32).
        temperatures: The temperature sensors' base values, °C (below zero is fine).
        alarms: Names of the raised alarms (of the protocol spoken; unknown ones are ignored).
        animate: False keeps every value at its base (tests compare exact numbers).
    """

    cells: int = 16
    temperatures: tuple[float, ...] = (21.0, 23.0)
    alarms: set[str] = field(default_factory=set)
    animate: bool = True
    capacity_full: float = 100.0
    cycles: int = 42
    charge_mos: bool = True
    discharge_mos: bool = True
    #: The current at ``now = 0`` (positive = charging).
    base_current: float = -12.5
    base_soc: float = 76.4
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if not 1 <= self.cells <= MAX_CELLS:
            raise ValueError(f"cells must be 1 to {MAX_CELLS}, not {self.cells}")
        if len(self.temperatures) > MAX_TEMPERATURES:
            raise ValueError(f"at most {MAX_TEMPERATURES} temperature sensors")

    def _wave(self, period: float, amplitude: float) -> float:
        if not self.animate:
            return 0.0
        return amplitude * math.sin(2 * math.pi * (time.monotonic() - self.started) / period)

    def cell_voltages(self) -> list[float]:
        """Return each cell's voltage in V (millivolt resolution)."""
        swing = self._wave(30.0, 0.02)
        return [round(3.300 + 0.001 * (i % 7) + swing, 3) for i in range(self.cells)]

    def voltage(self) -> float:
        """Return the pack voltage in V (0.01 V resolution)."""
        return round(sum(self.cell_voltages()), 2)

    def current(self) -> float:
        """Return the current in A (0.1 A resolution), negative while discharging."""
        return round(self.base_current + self._wave(20.0, 8.0), 1)

    def soc(self) -> float:
        """Return the state of charge in % (0.1 % resolution)."""
        return round(min(100.0, max(0.0, self.base_soc + self._wave(120.0, 5.0))), 1)

    def temps(self) -> list[float]:
        """Return each sensor's temperature in °C (whole degrees)."""
        swing = self._wave(60.0, 1.0)
        return [round(t + swing) for t in self.temperatures]

    def remaining(self) -> float:
        """Return the remaining capacity in Ah."""
        return round(self.capacity_full * self.soc() / 100, 2)


def _u16(value: float) -> bytes:
    return round(value).to_bytes(2)


def daly_answers(model: BmsModel, data_id: int) -> list[bytes]:
    """Return the Daly frames answering a request for ``data_id`` (none for an unknown id)."""
    cells, temps = model.cell_voltages(), model.temps()
    current = model.current()
    if data_id == 0x90:
        volts = _u16(model.voltage() * 10)
        payloads = [volts + volts + _u16(current * 10 + CURRENT_OFFSET) + _u16(model.soc() * 10)]
    elif data_id == 0x91:
        hi, lo = max(cells), min(cells)
        payloads = [
            _u16(hi * 1000)
            + bytes((cells.index(hi) + 1,))
            + _u16(lo * 1000)
            + bytes((cells.index(lo) + 1, 0, 0))
        ]
    elif data_id == 0x92:
        hi_t, lo_t = (max(temps), min(temps)) if temps else (0.0, 0.0)
        payloads = [
            bytes(
                (
                    int(hi_t) + TEMPERATURE_OFFSET,
                    temps.index(hi_t) + 1 if temps else 0,
                    int(lo_t) + TEMPERATURE_OFFSET,
                    temps.index(lo_t) + 1 if temps else 0,
                )
            )
            + bytes(4)
        ]
    elif data_id == 0x93:
        state = 1 if current > 0 else 2 if current < 0 else 0
        payloads = [
            bytes((state, model.charge_mos, model.discharge_mos, model.cycles % 256))
            + int(model.remaining() * 1000).to_bytes(4)
        ]
    elif data_id == 0x94:
        payloads = [
            bytes((model.cells, len(temps), current > 0, current < 0, 0))
            + model.cycles.to_bytes(2)
            + b"\x00"
        ]
    elif data_id == 0x95:
        payloads = []
        for n in range(0, model.cells, 3):
            chunk = [_u16(v * 1000) for v in cells[n : n + 3]]
            chunk += [b"\x00\x00"] * (3 - len(chunk))
            payloads.append(bytes((n // 3 + 1,)) + b"".join(chunk) + b"\x00")
    elif data_id == 0x96:
        payloads = []
        for n in range(0, len(temps), 7):
            raw = [int(t) + TEMPERATURE_OFFSET for t in temps[n : n + 7]]
            raw += [0] * (7 - len(raw))
            payloads.append(bytes((n // 7 + 1, *raw)))
    elif data_id == 0x97:
        payloads = [(1).to_bytes(6, "little") + bytes(2)]
    elif data_id == 0x98:
        payload = bytearray(8)
        for byte, names in enumerate(ALARM_BITS):
            for bit, name in enumerate(names):
                if name in model.alarms:
                    payload[byte] |= 1 << bit
        payloads = [bytes(payload)]
    else:
        return []
    return [daly_frame(data_id, p, address=BMS_ADDRESS) for p in payloads]


def jbd_answer(model: BmsModel, register: int) -> bytes | None:
    """Return the JBD answer to a read of ``register`` (0x03 or 0x04; None for others)."""
    if register == 0x04:
        return jbd_response(0x04, b"".join(_u16(v * 1000) for v in model.cell_voltages()))
    if register != 0x03:
        return None
    temps = model.temps()
    protection = sum(1 << bit for bit, name in enumerate(PROTECTION_BITS) if name in model.alarms)
    data = (
        _u16(model.voltage() * 100)
        + round(model.current() * 100).to_bytes(2, signed=True)
        + _u16(model.remaining() * 100)
        + _u16(model.capacity_full * 100)
        + model.cycles.to_bytes(2)
        + ((24 << 9) | (3 << 5) | 15).to_bytes(2)  # made 2024-03-15
        + (1).to_bytes(2)  # cell 1 balancing
        + bytes(2)
        + protection.to_bytes(2)
        + b"\x23"  # software 2.3
        + bytes((int(model.soc()), model.charge_mos | model.discharge_mos << 1))
        + bytes((model.cells, len(temps)))
        + b"".join(_u16(t * 10 + ZERO_CELSIUS) for t in temps)
    )
    return jbd_response(0x03, data)


def victron_blocks(model: BmsModel) -> list[bytes]:
    """Return the two VE.Direct blocks a SmartShunt sends: live values, then history."""
    ar = sum(1 << bit for bit, name in enumerate(ALARM_REASON_BITS) if name in model.alarms)
    current = model.current()
    live = [
        ("PID", "0xA389"),
        ("V", str(round(model.voltage() * 1000))),
        ("I", str(round(current * 1000))),
        ("P", str(round(model.voltage() * current))),
        ("CE", str(-round((model.capacity_full - model.remaining()) * 1000))),
        ("SOC", str(round(model.soc() * 10))),
        ("TTG", "-1" if current >= 0 else str(round(model.remaining() / -current * 60))),
        ("Alarm", "ON" if ar else "OFF"),
        ("Relay", "OFF"),
        ("AR", str(ar)),
        ("BMV", "SmartShunt 500A/50mV"),
        ("FW", "0419"),
    ]
    temps = model.temps()
    if temps:
        live.insert(3, ("T", str(round(temps[0]))))
    history = [("H1", "-1234"), ("H2", "-567"), ("H3", "-890"), ("H4", str(model.cycles))]
    return [vedirect_block(live), vedirect_block(history)]


def ant_status(model: BmsModel, *, protection: int = 0, warning: int = 0) -> bytes:
    """Return an ANT status frame (function 0x11) for ``model`` (at most 4 sensors used)."""
    temps = model.temps()[:4]
    current = model.current()

    def le(value: float, size: int = 2, *, signed: bool = False) -> bytes:
        return round(value).to_bytes(size, "little", signed=signed)

    data = (
        bytes((5, 2 if current > 0 else 3 if current < 0 else 1, len(temps), model.cells))
        + protection.to_bytes(8, "little")
        + warning.to_bytes(8, "little")
        + bytes(8)
        + b"".join(le(v * 1000) for v in model.cell_voltages())
        + b"".join(le(t, signed=True) for t in temps)
        + le(31, signed=True)
        + le(30, signed=True)
        + le(model.voltage() * 100)
        + le(current * 10, signed=True)
        + le(model.soc())
        + le(100)
        + bytes((1 if model.charge_mos else 0, 1 if model.discharge_mos else 0, 0, 0))
        + le(model.capacity_full * 1_000_000, 4)
        + le(model.remaining() * 1_000_000, 4)
        + le(model.cycles * model.capacity_full * 1000, 4)
        + le(model.voltage() * current, 4, signed=True)
        + le(3600, 4)
        + bytes(4)
    )
    return ant_frame(0x11, 0, data)


def victron_advertisement(
    model: BmsModel, key: str | bytes, nonce: int = 0x0B79, *, model_id: int = 0xA389
) -> bytes:
    """Return a SmartShunt's instant-readout manufacturer data (after the company id).

    The first temperature sensor, if any, is the aux input (type 2, in 10 mK).
    """
    raw = parse_key(key)
    ar = sum(1 << bit for bit, name in enumerate(ALARM_REASON_BITS) if name in model.alarms)
    temps = model.temps()
    aux, aux_type = (round((temps[0] + 273.15) * 100), 2) if temps else (0xFFFF, 3)
    consumed = round((model.capacity_full - model.remaining()) * 10)
    fields = (
        (0xFFFF, 16),
        (round(model.voltage() * 100) & 0xFFFF, 16),
        (ar, 16),
        (aux, 16),
        (aux_type, 2),
        (round(model.current() * 1000) & 0x3FFFFF, 22),
        (consumed, 20),
        (round(model.soc() * 10), 10),
    )
    bits, at = 0, 0
    for value, width in fields:
        bits |= value << at
        at += width
    nonce_bytes = nonce.to_bytes(2, "little")
    record = decrypt_record(nonce_bytes, bits.to_bytes(16, "little")[:15], raw)
    header = bytes((0x10, *model_id.to_bytes(2, "little"), 0xA0, 0x02))
    return header + nonce_bytes + raw[:1] + record


class BmsResponder:
    """The device side of a polled BMS protocol: request bytes in, answer frames out.

    Pure (no I/O): the pty simulator (`BmsDevice`) and the BLE test kit
    (`edgelink.testing.ble`) both answer with it. Bytes may arrive split
    anywhere; a request with a bad checksum is ignored, as a device does.

    Example:
        responder = BmsResponder("jbd", BmsModel())
        frames = responder.feed(bytes.fromhex("dda50300fffd77"))   # basic info
    """

    #: The protocols it answers (VE.Direct talks unasked and needs none).
    KINDS: Final = ("daly", "jbd", "ant")

    def __init__(self, kind: str, model: BmsModel) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"no polled protocol {kind!r}; known: {', '.join(self.KINDS)}")
        self.kind = kind
        self.model = model
        #: Valid requests seen.
        self.requests = 0
        self._box = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Take request bytes; return the answer frames of every complete, valid request."""
        box = self._box
        box += data
        out: list[bytes] = []
        if self.kind == "daly":
            while (at := box.find(b"\xa5")) >= 0 and len(box) - at >= 13:
                request = bytes(box[at : at + 13])
                del box[: at + 13]
                if daly_checksum(request[:-1]) == request[-1]:
                    self.requests += 1
                    out += daly_answers(self.model, request[2])
        elif self.kind == "jbd":
            while (at := box.find(b"\xdd\xa5")) >= 0 and len(box) - at >= 7:
                request = bytes(box[at : at + 7])
                del box[: at + 7]
                if request[-1] == 0x77 and jbd_checksum(request[2:4]) == int.from_bytes(
                    request[4:6]
                ):
                    self.requests += 1
                    answer = jbd_answer(self.model, request[2])
                    if answer is not None:
                        out.append(answer)
        else:
            while (at := box.find(ANT_START)) >= 0 and len(box) - at >= 10:
                request = bytes(box[at : at + 10])
                del box[: at + 10]
                crc_ok = int.from_bytes(request[6:8], "little") == ant_crc(request[1:6])
                if request[8:10] == ANT_END and crc_ok and request[2] == ANT_STATUS_REQUEST:
                    self.requests += 1
                    out.append(ant_status(self.model))
        # A request is at most 13 bytes; anything older is noise.
        del box[:-64]
        return out


class BmsDevice(SerialDevice):
    """A simulated BMS on the device end of a `SerialLink`.

    Example:
        device = BmsDevice(link.device_path, "daly", BmsModel(cells=32))
        device.attach()
        device.fault = BmsFault.GARBAGE

    Args:
        path: The device end of the link.
        kind: ``daly``, ``jbd`` or ``victron``.
        model: The battery (a fresh `BmsModel` by default); tests may change it.
        period: Seconds between two VE.Direct block pairs (a real device: 1.0).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        kind: str,
        model: BmsModel | None = None,
        *,
        period: float = 1.0,
    ) -> None:
        if kind not in BMS_TYPES:
            raise ValueError(f"unknown BMS type {kind!r}; known: {', '.join(BMS_TYPES)}")
        super().__init__(path)
        self.kind = kind
        self.model = model or BmsModel()
        self.period = period
        #: How the device misbehaves; None: it behaves.
        self.fault: BmsFault | None = None
        #: Frames sent (faulty ones included).
        self.frames_sent = 0
        self._inbox = bytearray()
        self._responder = BmsResponder(kind, self.model) if kind != "victron" else None
        self._talker: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return (
            f"<BmsDevice {self.kind} {self.path} {state} requests={self.requests} "
            f"frames={self.frames_sent} fault={self.fault.value if self.fault else None}>"
        )

    def attach(self) -> None:
        """Open the device end; a VE.Direct device starts talking. No-op if attached."""
        was = self.attached
        super().attach()
        self._inbox.clear()
        if self._responder is not None:
            self._responder = BmsResponder(self.kind, self.model)
        if not was and self.kind == "victron":
            self._schedule_talk()

    def detach(self) -> None:
        """Close the device end and stop talking. Idempotent."""
        talker, self._talker = self._talker, None
        if talker is not None:
            talker.cancel()
        super().detach()

    def send_frame(self, payload: bytes) -> None:
        """Send one protocol frame, spoiled as `fault` says."""
        fault = self.fault
        if fault is BmsFault.SILENCE:
            return
        self.frames_sent += 1
        if fault is BmsFault.GARBAGE:
            payload = GARBAGE + payload
        elif fault is BmsFault.CUT:
            payload = payload[: len(payload) // 2]
        elif fault is BmsFault.CORRUPT:
            # The byte before the end: the checksum (Daly, VE.Direct) or its
            # low byte (JBD, whose frame ends with 0x77).
            at = -2 if self.kind == "jbd" else -1
            spoiled = bytearray(payload)
            spoiled[at] ^= 0x5A
            payload = bytes(spoiled)
        self.send_raw(payload)

    def _schedule_talk(self) -> None:
        if self._loop is not None:
            self._talker = self._loop.call_later(self.period, self._talk)

    def _talk(self) -> None:
        self._talker = None
        if not self.attached:
            return
        for block in victron_blocks(self.model):
            self.send_frame(block)
        self._schedule_talk()

    def _on_readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            self.detach()
            return
        if not data:
            self.detach()
            return
        self._inbox += data
        # A request is at most 13 bytes; anything older is noise.
        del self._inbox[:-64]
        for answer in self._answers():
            self.send_frame(answer)

    def _answers(self) -> list[bytes]:
        responder = self._responder
        data = bytes(self._inbox)
        self._inbox.clear()
        if responder is None:
            return []
        responder.model = self.model  # tests may swap the battery
        before = responder.requests
        out = responder.feed(data)
        self.requests += responder.requests - before
        return out


async def run_bms_simulator(
    kind: str,
    link_path: str | os.PathLike[str],
    *,
    device_path: str | os.PathLike[str] | None = None,
    model: BmsModel | None = None,
    fault: BmsFault | None = None,
    on_ready: Callable[[BmsDevice], None] | None = None,
) -> None:
    """Run a simulated BMS behind a new socat pty pair until cancelled.

    Prints one ``listening: <kind> BMS on PATH`` line once the link is up;
    re-attaches if its end is closed under it.

    Raises:
        OSError: if socat is missing or the link cannot be created.
    """
    async with SerialLink(link_path, device_path) as link:
        device = BmsDevice(link.device_path, kind, model)
        device.fault = fault
        device.attach()
        if on_ready is not None:
            on_ready(device)
        print(f"listening: {kind} BMS on {link.path}", flush=True)
        try:
            while True:
                await asyncio.sleep(0.5)
                if not device.attached and link.is_running():
                    with contextlib.suppress(OSError):
                        device.attach()
        finally:
            device.detach()
