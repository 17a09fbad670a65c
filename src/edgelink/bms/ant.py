"""ANT BMS (the 2021 protocol of the ANT-BLE* boards): frames ``7E A1`` ... ``AA 55`` with a CRC.

A frame is ``7E A1 <function> <address, 2 bytes LE> <length> <data>
<CRC, 2 bytes LE> AA 55``; the CRC is CRC-16/MODBUS over the bytes from
``A1`` through the data. The status request is function 0x01 at address 0
for 0xBE bytes (``7E A1 01 00 00 BE 18 55 AA 55``); the BMS answers with
function 0x11. Numbers are little-endian. The status data, offsets into
the frame:

- 6 permissions, 7 battery state (0 unknown, 1 idle, 2 charging,
  3 discharging, 4 standby, 5 error), 8 temperature sensor count (≤ 4),
  9 cell count (≤ 32), 10 protection bits (8 bytes), 18 warning bits (8),
  26 balancing bits (8)
- 34 the cell voltages (mV, two bytes each), then the sensors'
  temperatures (°C, signed), the MOSFET and the balancer temperature
- then total voltage (10 mV), current (0.1 A, signed, positive =
  charging), SOC (%), SOH (%), charge MOS state, discharge MOS state
  (1 = on; other codes say why it is off), balancer state, a reserved byte,
  full and remaining capacity (µAh, 4 bytes each), cycled capacity (mAh),
  power (W, signed), runtime (s), balancing cells (bits)

The meaning of each protection and warning bit is not published with the
frame layout: they are reported as ``alarms.protection`` / ``alarms.warning``
(any bit set) and the raw masks as ``info.protection_bits`` /
``info.warning_bits``, never guessed names.
"""

from __future__ import annotations

from typing import Final

from edgelink.bms.base import GARBAGE_REPORT, BleGatt, BmsParser, Decoded, DeviceMatch, FrameError
from edgelink.bms.reading import MAX_CELLS, BmsReading
from edgelink.errors import ProtocolError

__all__ = ["AntParser", "ant_crc", "ant_frame", "ant_request"]

START: Final = b"\x7e\xa1"
END: Final = b"\xaa\x55"
STATUS_REQUEST: Final = 0x01
STATUS: Final = 0x11
MAX_SENSORS: Final = 4
#: Bytes of status data after the cells and sensors up to the balancing bits.
_TAIL: Final = 40


def ant_crc(data: bytes | bytearray) -> int:
    """Return the CRC-16/MODBUS of ``data`` (polynomial 0xA001 reflected, start 0xFFFF)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _wrap(body: bytes) -> bytes:
    return b"\x7e" + body + ant_crc(body).to_bytes(2, "little") + END


def ant_request(function: int, address: int, value: int) -> bytes:
    """Build a request: its sixth byte is a value (the bytes to read), no data follows."""
    return _wrap(bytes((0xA1, function)) + address.to_bytes(2, "little") + bytes((value,)))


def ant_frame(function: int, address: int, data: bytes) -> bytes:
    """Build an answer frame carrying ``data`` (what the simulator and the tests send).

    Raises:
        ValueError: if ``data`` is longer than 255 bytes.
    """
    if len(data) > 255:
        raise ValueError(f"an ANT frame carries at most 255 data bytes, not {len(data)}")
    return _wrap(
        bytes((0xA1, function)) + address.to_bytes(2, "little") + bytes((len(data),)) + data
    )


class AntParser(BmsParser):
    """ANT BMS status frames (`edgelink.bms.ant`), as sent over BLE notifications."""

    name = "ant"
    match = DeviceMatch(
        name_prefixes=("ANT-BLE", "ANT_BLE"),
        service_uuids=("0000ffe0-0000-1000-8000-00805f9b34fb",),
    )
    baudrate = 19200
    gatt = BleGatt(
        service="0000ffe0-0000-1000-8000-00805f9b34fb",
        notify="0000ffe1-0000-1000-8000-00805f9b34fb",
        write="0000ffe1-0000-1000-8000-00805f9b34fb",
    )

    def requests(self) -> list[bytes]:
        """Return the status request ``7E A1 01 00 00 BE 18 55 AA 55``."""
        return [ant_request(STATUS_REQUEST, 0, 0xBE)]

    def answer_key(self, request: bytes) -> int:
        """Return the function of the answer: the request's with bit 4 set (0x01 -> 0x11)."""
        return request[2] | 0x10

    def _split(self) -> list[bytes | FrameError]:
        buf = self.buffer
        out: list[bytes | FrameError] = []
        while buf.skip_to(START) and len(buf.data) >= 6:
            size = 6 + buf.data[5] + 4
            if len(buf.data) < size:
                break
            if buf.data[size - 2 : size] != END:
                buf.drop(1)
                continue
            frame = bytes(buf.data[:size])
            del buf.data[:size]
            out.extend(buf.report_garbage("ANT"))
            got = int.from_bytes(frame[-4:-2], "little")
            expected = ant_crc(frame[1:-4])
            if got != expected:
                out.append(
                    ProtocolError(
                        f"ANT frame 0x{frame[2]:02X}: CRC 0x{got:04X}, expected 0x{expected:04X}"
                    )
                )
                continue
            out.append(frame)
        out.extend(buf.report_garbage("ANT", at_least=GARBAGE_REPORT))
        return out

    def decode(self, frame: bytes) -> Decoded:
        """Decode one verified status frame (function 0x11).

        Raises:
            ProtocolError: for another function, more than 32 cells or 4
                sensors, or a length that does not hold them.
        """
        if frame[2] != STATUS:
            raise ProtocolError(f"ANT frame: function 0x{frame[2]:02X} is not read here")
        f = frame
        sensors, cells = f[8], f[9]
        if cells > MAX_CELLS or sensors > MAX_SENSORS:
            raise ProtocolError(
                f"ANT status: {cells} cells and {sensors} sensors; at most {MAX_CELLS} and "
                f"{MAX_SENSORS}"
            )
        at = 34 + 2 * cells + 2 * sensors
        if len(f) - 4 < at + _TAIL:
            raise ProtocolError(
                f"ANT status: {f[5]} data bytes do not hold {cells} cells and {sensors} sensors"
            )

        def u16(i: int) -> int:
            return int.from_bytes(f[i : i + 2], "little")

        def s16(i: int) -> int:
            return int.from_bytes(f[i : i + 2], "little", signed=True)

        def u32(i: int) -> int:
            return int.from_bytes(f[i : i + 4], "little")

        r = BmsReading()
        for n in range(cells):
            r.cells[n + 1] = u16(34 + 2 * n) / 1000
        for n in range(sensors):
            r.temperatures[n + 1] = float(s16(34 + 2 * cells + 2 * n))
        soc = u16(at + 8)
        if soc > 100:
            raise ProtocolError(f"ANT status: SOC {soc} % over 100")
        protection, warning = int.from_bytes(f[10:18], "little"), int.from_bytes(f[18:26], "little")
        r.alarms["protection"] = bool(protection)
        r.alarms["warning"] = bool(warning)
        r.voltage = u16(at + 4) / 100
        r.current = s16(at + 6) / 10
        r.soc = float(soc)
        r.charge_mos = f[at + 12] == 1
        r.discharge_mos = f[at + 13] == 1
        r.capacity_full = round(u32(at + 16) / 1_000_000, 3)
        r.capacity_remaining = round(u32(at + 20) / 1_000_000, 3)
        r.power = float(int.from_bytes(f[at + 28 : at + 32], "little", signed=True))
        r.info.update(
            state=f[7],
            mosfet_temperature=s16(at),
            balancer_temperature=s16(at + 2),
            soh=u16(at + 10),
            charge_mos_code=f[at + 12],
            discharge_mos_code=f[at + 13],
            cycled_capacity=u32(at + 24) / 1000,
            runtime=u32(at + 32),
            balancing=bin(u32(at + 36)).count("1"),
            protection_bits=protection,
            warning_bits=warning,
        )
        return Decoded(STATUS, r, len(frame))
