"""JBD (Jiabaida) / Xiaoxiang BMS: frames from ``0xDD`` to ``0x77``.

The host reads a register with ``DD A5 <reg> 00 <checksum> 77``; the BMS
answers ``DD <reg> <status> <length> <data> <checksum> 77``. The checksum is
two bytes, big-endian: 0x10000 minus the sum of the bytes from the status
(or the read command's register) through the data. Status 0 is success;
anything else is the BMS refusing (a `DeviceError`). Numbers are big-endian.

Register ``0x03`` (basic information), offsets into the data:

- 0 total voltage (10 mV), 2 current (10 mA, signed, positive = charging),
  4 remaining capacity (10 mAh), 6 full capacity (10 mAh), 8 cycles,
  10 production date, 12 and 14 balancing bits (cells 1-16, 17-32),
  16 protection bits (`PROTECTION_BITS`), 18 software version, 19 SOC (%),
  20 MOS state (bit 0 charge, bit 1 discharge), 21 cell count, 22 NTC
  count, then per NTC two bytes in 0.1 K

Register ``0x04`` (cell voltages): two bytes per cell, mV.
"""

from __future__ import annotations

from typing import Final

from edgelink.bms.base import GARBAGE_REPORT, BleGatt, BmsParser, Decoded, DeviceMatch, FrameError
from edgelink.bms.reading import MAX_CELLS, MAX_TEMPERATURES, BmsReading
from edgelink.errors import DeviceError, ProtocolError

__all__ = ["PROTECTION_BITS", "JbdParser", "jbd_checksum", "jbd_request", "jbd_response"]

START: Final = 0xDD
END: Final = 0x77
READ: Final = 0xA5
BASIC_INFO: Final = 0x03
CELL_VOLTAGES: Final = 0x04
#: 0 °C in the 0.1 K of the NTC readings.
ZERO_CELSIUS: Final = 2731
#: The fixed part of a basic-info answer before the NTC readings.
BASIC_INFO_SIZE: Final = 23

#: The protection bits of register 0x03 (offset 16), bit 0 first (None: reserved).
PROTECTION_BITS: Final[tuple[str | None, ...]] = (
    "cell_overvoltage",
    "cell_undervoltage",
    "pack_overvoltage",
    "pack_undervoltage",
    "charge_overtemperature",
    "charge_undertemperature",
    "discharge_overtemperature",
    "discharge_undertemperature",
    "charge_overcurrent",
    "discharge_overcurrent",
    "short_circuit",
    "frontend_ic_error",
    "mos_software_lock",
    None,
    None,
    None,
)


def jbd_checksum(body: bytes | bytearray) -> int:
    """Return the JBD checksum of ``body`` (status or register, length, data)."""
    return (0x10000 - sum(body)) & 0xFFFF


def jbd_request(register: int) -> bytes:
    """Build the read request of ``register`` (``DD A5 03 00 FF FD 77`` for 0x03)."""
    body = bytes((register, 0))
    return bytes((START, READ)) + body + jbd_checksum(body).to_bytes(2) + bytes((END,))


def jbd_response(register: int, data: bytes, status: int = 0) -> bytes:
    """Build a BMS answer (what the simulator and the tests send).

    Raises:
        ValueError: if ``data`` is longer than 255 bytes.
    """
    if len(data) > 255:
        raise ValueError(f"a JBD frame carries at most 255 data bytes, not {len(data)}")
    body = bytes((status, len(data))) + data
    return bytes((START, register)) + body + jbd_checksum(body).to_bytes(2) + bytes((END,))


class JbdParser(BmsParser):
    """JBD / Xiaoxiang over UART, RS485 or BLE (`edgelink.bms.jbd`)."""

    name = "jbd"
    match = DeviceMatch(
        name_prefixes=("xiaoxiang", "SP", "JBD-"),
        service_uuids=("0000ff00-0000-1000-8000-00805f9b34fb",),
    )
    baudrate = 9600
    gatt = BleGatt(
        service="0000ff00-0000-1000-8000-00805f9b34fb",
        notify="0000ff01-0000-1000-8000-00805f9b34fb",
        write="0000ff02-0000-1000-8000-00805f9b34fb",
    )

    def requests(self) -> list[bytes]:
        """Return the reads of basic information (0x03) and cell voltages (0x04)."""
        return [jbd_request(BASIC_INFO), jbd_request(CELL_VOLTAGES)]

    def _split(self) -> list[bytes | FrameError]:
        buf = self.buffer
        out: list[bytes | FrameError] = []
        while buf.skip_to(b"\xdd") and len(buf.data) >= 4:
            # Our own request heard back (an RS485 adapter that hears itself)
            # is seven bytes whatever its third byte says.
            size = 7 if buf.data[1] == READ else 4 + buf.data[3] + 3
            if len(buf.data) < size:
                break
            if buf.data[size - 1] != END:
                buf.drop(1)
                continue
            frame = bytes(buf.data[:size])
            del buf.data[:size]
            out.extend(buf.report_garbage("JBD"))
            if frame[1] == READ:
                continue
            got = int.from_bytes(frame[-3:-1])
            expected = jbd_checksum(frame[2:-3])
            if got != expected:
                out.append(
                    ProtocolError(
                        f"JBD frame 0x{frame[1]:02X}: checksum 0x{got:04X}, "
                        f"expected 0x{expected:04X}"
                    )
                )
                continue
            out.append(frame)
        out.extend(buf.report_garbage("JBD", at_least=GARBAGE_REPORT))
        return out

    def decode(self, frame: bytes) -> Decoded:
        """Decode one verified answer to 0x03 or 0x04.

        Raises:
            DeviceError: if the status byte is not 0.
            ProtocolError: for another register, or a length that does not
                fit the counts the frame gives.
        """
        register, status, data = frame[1], frame[2], frame[4:-3]
        if status != 0:
            raise DeviceError(
                f"JBD register 0x{register:02X}: the BMS answered status 0x{status:02X}"
            )
        r = BmsReading()
        if register == BASIC_INFO:
            self._basic_info(data, r)
        elif register == CELL_VOLTAGES:
            if len(data) % 2 or len(data) // 2 > MAX_CELLS:
                raise ProtocolError(
                    f"JBD register 0x04: {len(data)} data bytes are not 1 to {MAX_CELLS} cells"
                )
            for i in range(len(data) // 2):
                r.cells[i + 1] = int.from_bytes(data[2 * i : 2 * i + 2]) / 1000
        else:
            raise ProtocolError(f"JBD frame: register 0x{register:02X} is not read here")
        return Decoded(register, r, len(frame))

    @staticmethod
    def _basic_info(d: bytes, r: BmsReading) -> None:
        if len(d) < BASIC_INFO_SIZE:
            raise ProtocolError(
                f"JBD register 0x03: {len(d)} data bytes, at least {BASIC_INFO_SIZE} expected"
            )
        ntc = d[22]
        if ntc > MAX_TEMPERATURES or len(d) < BASIC_INFO_SIZE + 2 * ntc:
            raise ProtocolError(
                f"JBD register 0x03: {ntc} temperature sensors do not fit {len(d)} data bytes"
            )
        if not 0 <= d[21] <= MAX_CELLS:
            raise ProtocolError(f"JBD register 0x03: {d[21]} cells; at most {MAX_CELLS}")
        if d[19] > 100:
            raise ProtocolError(f"JBD register 0x03: SOC {d[19]} % over 100")
        r.voltage = int.from_bytes(d[0:2]) / 100
        r.current = int.from_bytes(d[2:4], signed=True) / 100
        r.power = round(r.voltage * r.current, 2)
        r.capacity_remaining = int.from_bytes(d[4:6]) / 100
        r.capacity_full = int.from_bytes(d[6:8]) / 100
        r.cycles = int.from_bytes(d[8:10])
        date = int.from_bytes(d[10:12])
        r.info["production_date"] = (
            f"{2000 + (date >> 9):04d}-{(date >> 5) & 0x0F:02d}-{date & 0x1F:02d}"
        )
        balancing = int.from_bytes(d[12:14]) | int.from_bytes(d[14:16]) << 16
        r.info["balancing"] = bin(balancing).count("1")
        protection = int.from_bytes(d[16:18])
        for bit, alarm in enumerate(PROTECTION_BITS):
            if alarm is not None:
                r.alarms[alarm] = bool(protection >> bit & 1)
        r.info["software_version"] = f"{d[18] >> 4}.{d[18] & 0x0F}"
        r.soc = float(d[19])
        r.charge_mos = bool(d[20] & 1)
        r.discharge_mos = bool(d[20] & 2)
        r.info["cell_count"] = d[21]
        for i in range(ntc):
            raw = int.from_bytes(d[BASIC_INFO_SIZE + 2 * i : BASIC_INFO_SIZE + 2 * i + 2])
            r.temperatures[i + 1] = round((raw - ZERO_CELSIUS) / 10, 1)
