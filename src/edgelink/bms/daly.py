"""Daly BMS, the UART/RS485 protocol of the "BMS monitor" PC tool (frames start with 0xA5).

Every frame is 13 bytes: ``A5``, an address (``40`` host to BMS on UART,
``01`` BMS to host), a data id, the length ``08``, eight data bytes and a
checksum, the low byte of the sum of the twelve bytes before it. Numbers are
big-endian. The host asks with an all-zero data part; the BMS answers with
the same data id. The data ids read here:

- ``0x90`` pack: total voltage (0.1 V), acquisition voltage, current
  (0.1 A, offset 30000, positive = charging), SOC (0.1 %)
- ``0x91`` highest and lowest cell voltage (mV) and their cell numbers
- ``0x92`` highest and lowest temperature (°C + 40) and their sensors
- ``0x93`` state (0 idle, 1 charging, 2 discharging), charge MOS,
  discharge MOS, BMS life cycles, remaining capacity (mAh, 4 bytes)
- ``0x94`` cell count, temperature sensor count, charger and load state,
  DI/DO bits, charge cycles (2 bytes)
- ``0x95`` cell voltages: one frame per three cells, byte 0 the frame
  number from 1, then three voltages in mV
- ``0x96`` temperatures: one frame per seven sensors, byte 0 the frame
  number from 1, then seven temperatures (°C + 40)
- ``0x97`` balancing state, one bit per cell
- ``0x98`` failure status: seven bytes of alarm bits (`ALARM_BITS`) and a fault code

Cell and temperature frames need the counts of ``0x94``: until it has been
read they are checked but not decoded (a padding zero is not a cell).
"""

from __future__ import annotations

from typing import Final

from edgelink.bms.base import GARBAGE_REPORT, BleGatt, BmsParser, Decoded, DeviceMatch, FrameError
from edgelink.bms.reading import MAX_CELLS, MAX_TEMPERATURES, BmsReading
from edgelink.errors import ProtocolError

__all__ = ["ALARM_BITS", "DATA_IDS", "DalyParser", "daly_checksum", "daly_frame"]

START: Final = 0xA5
HOST_ADDRESS: Final = 0x40
BMS_ADDRESS: Final = 0x01
FRAME_SIZE: Final = 13
DATA_SIZE: Final = 8
#: The data ids polled, in the order they are asked for (0x94 first: the
#: cell and sensor counts decide how 0x95 and 0x96 are read).
DATA_IDS: Final = (0x94, 0x90, 0x91, 0x92, 0x93, 0x95, 0x96, 0x97, 0x98)
CURRENT_OFFSET: Final = 30000
TEMPERATURE_OFFSET: Final = 40

#: The alarm bits of data id 0x98, byte by byte, bit 0 first (None: reserved).
ALARM_BITS: Final[tuple[tuple[str | None, ...], ...]] = (
    (
        "cell_voltage_high_1",
        "cell_voltage_high_2",
        "cell_voltage_low_1",
        "cell_voltage_low_2",
        "pack_voltage_high_1",
        "pack_voltage_high_2",
        "pack_voltage_low_1",
        "pack_voltage_low_2",
    ),
    (
        "charge_temperature_high_1",
        "charge_temperature_high_2",
        "charge_temperature_low_1",
        "charge_temperature_low_2",
        "discharge_temperature_high_1",
        "discharge_temperature_high_2",
        "discharge_temperature_low_1",
        "discharge_temperature_low_2",
    ),
    (
        "charge_overcurrent_1",
        "charge_overcurrent_2",
        "discharge_overcurrent_1",
        "discharge_overcurrent_2",
        "soc_high_1",
        "soc_high_2",
        "soc_low_1",
        "soc_low_2",
    ),
    (
        "cell_voltage_difference_1",
        "cell_voltage_difference_2",
        "temperature_difference_1",
        "temperature_difference_2",
        None,
        None,
        None,
        None,
    ),
    (
        "charge_mos_temperature_high",
        "discharge_mos_temperature_high",
        "charge_mos_temperature_sensor",
        "discharge_mos_temperature_sensor",
        "charge_mos_adhesion",
        "discharge_mos_adhesion",
        "charge_mos_open_circuit",
        "discharge_mos_open_circuit",
    ),
    (
        "afe_chip",
        "cell_voltage_collection",
        "temperature_sensor",
        "eeprom",
        "rtc",
        "precharge",
        "communication",
        "internal_communication",
    ),
    (
        "current_module",
        "pack_voltage_detection",
        "short_circuit",
        "low_voltage_no_charge",
        None,
        None,
        None,
        None,
    ),
)


def daly_checksum(data: bytes | bytearray) -> int:
    """Return the Daly checksum of ``data``: the low byte of the sum of its bytes."""
    return sum(data) & 0xFF


def daly_frame(
    data_id: int, payload: bytes = bytes(DATA_SIZE), address: int = HOST_ADDRESS
) -> bytes:
    """Build one 13-byte frame (a request by default, all-zero data, host address).

    Raises:
        ValueError: if ``payload`` is not 8 bytes.
    """
    if len(payload) != DATA_SIZE:
        raise ValueError(f"a Daly frame carries 8 data bytes, not {len(payload)}")
    head = bytes((START, address, data_id, DATA_SIZE)) + payload
    return head + bytes((daly_checksum(head),))


class DalyParser(BmsParser):
    """Daly over UART or RS485 (`edgelink.bms.daly`)."""

    name = "daly"
    match = DeviceMatch(
        name_prefixes=("DL-", "Daly"), service_uuids=("0000fff0-0000-1000-8000-00805f9b34fb",)
    )
    baudrate = 9600
    gatt = BleGatt(
        service="0000fff0-0000-1000-8000-00805f9b34fb",
        notify="0000fff1-0000-1000-8000-00805f9b34fb",
        write="0000fff2-0000-1000-8000-00805f9b34fb",
    )

    def __init__(self, *, max_buffer: int = 4096) -> None:
        super().__init__(max_buffer=max_buffer)
        self.cell_count: int | None = None
        self.sensor_count: int | None = None

    def requests(self) -> list[bytes]:
        """Return one request per data id of `DATA_IDS`."""
        return [daly_frame(data_id) for data_id in DATA_IDS]

    def _split(self) -> list[bytes | FrameError]:
        buf = self.buffer
        out: list[bytes | FrameError] = []
        while buf.skip_to(b"\xa5") and len(buf.data) >= 4:
            if buf.data[3] != DATA_SIZE:
                # Not a frame start after all: resynchronise on the next 0xA5.
                buf.drop(1)
                continue
            if len(buf.data) < FRAME_SIZE:
                break
            expected = daly_checksum(buf.data[: FRAME_SIZE - 1])
            if buf.data[FRAME_SIZE - 1] != expected:
                restart = _next_header(buf.data)
                if restart is not None:
                    # A frame cut short, the next one right behind it: one
                    # bad frame, and the next one is intact.
                    data_id = buf.data[2]
                    del buf.data[:restart]
                    out.extend(buf.report_garbage("Daly"))
                    out.append(
                        ProtocolError(f"Daly frame 0x{data_id:02X} cut short after {restart} bytes")
                    )
                    continue
                frame = bytes(buf.data[:FRAME_SIZE])
                del buf.data[:FRAME_SIZE]
                out.extend(buf.report_garbage("Daly"))
                out.append(
                    ProtocolError(
                        f"Daly frame 0x{frame[2]:02X}: checksum 0x{frame[-1]:02X}, "
                        f"expected 0x{expected:02X}"
                    )
                )
                continue
            out.extend(buf.report_garbage("Daly"))
            out.append(bytes(buf.data[:FRAME_SIZE]))
            del buf.data[:FRAME_SIZE]
        out.extend(buf.report_garbage("Daly", at_least=GARBAGE_REPORT))
        return out

    def decode(self, frame: bytes) -> Decoded:
        """Decode one verified 13-byte frame (see the module docstring for the fields).

        Raises:
            ProtocolError: for an unknown data id, a counter out of range or a
                cell or sensor frame number that does not fit the counts.
        """
        data_id = frame[2]
        d = frame[4:12]
        r = BmsReading()
        if data_id == 0x90:
            r.voltage = round(int.from_bytes(d[0:2]) / 10, 1)
            r.current = round((int.from_bytes(d[4:6]) - CURRENT_OFFSET) / 10, 1)
            r.power = round(r.voltage * r.current, 2)
            soc = int.from_bytes(d[6:8]) / 10
            if soc > 100:
                raise ProtocolError(f"Daly frame 0x90: SOC {soc:g} % over 100")
            r.soc = soc
        elif data_id == 0x91:
            r.info.update(
                cell_max=int.from_bytes(d[0:2]) / 1000,
                cell_max_number=d[2],
                cell_min=int.from_bytes(d[3:5]) / 1000,
                cell_min_number=d[5],
            )
        elif data_id == 0x92:
            r.info.update(
                temp_max=d[0] - TEMPERATURE_OFFSET,
                temp_max_number=d[1],
                temp_min=d[2] - TEMPERATURE_OFFSET,
                temp_min_number=d[3],
            )
        elif data_id == 0x93:
            if d[0] > 2:
                raise ProtocolError(f"Daly frame 0x93: state {d[0]} is not 0, 1 or 2")
            r.info["state"] = ("idle", "charging", "discharging")[d[0]]
            r.charge_mos = bool(d[1])
            r.discharge_mos = bool(d[2])
            r.info["bms_life"] = d[3]
            r.capacity_remaining = int.from_bytes(d[4:8]) / 1000
        elif data_id == 0x94:
            cells, sensors = d[0], d[1]
            if not 1 <= cells <= MAX_CELLS:
                raise ProtocolError(f"Daly frame 0x94: {cells} cells; 1 to {MAX_CELLS} are read")
            if sensors > MAX_TEMPERATURES:
                raise ProtocolError(
                    f"Daly frame 0x94: {sensors} temperature sensors; at most {MAX_TEMPERATURES}"
                )
            self.cell_count, self.sensor_count = cells, sensors
            r.cycles = int.from_bytes(d[5:7])
            r.info.update(
                cell_count=cells, sensor_count=sensors, charger=bool(d[2]), load=bool(d[3])
            )
        elif data_id == 0x95:
            self._cells(d, r)
        elif data_id == 0x96:
            self._temperatures(d, r)
        elif data_id == 0x97:
            bits = int.from_bytes(d[0:6], "little")
            count = self.cell_count or MAX_CELLS
            r.info["balancing"] = bin(bits & ((1 << count) - 1)).count("1")
        elif data_id == 0x98:
            for byte, names in zip(d[:7], ALARM_BITS, strict=True):
                for bit, alarm in enumerate(names):
                    if alarm is not None:
                        r.alarms[alarm] = bool(byte >> bit & 1)
            r.info["fault_code"] = d[7]
        else:
            raise ProtocolError(f"Daly frame: unknown data id 0x{data_id:02X}")
        return Decoded(data_id, r, FRAME_SIZE)

    def _cells(self, d: bytes, r: BmsReading) -> None:
        number = d[0]
        if not 1 <= number <= (MAX_CELLS + 2) // 3:
            raise ProtocolError(f"Daly frame 0x95: frame number {number} out of range")
        if self.cell_count is None:
            return
        for i in range(3):
            cell = (number - 1) * 3 + i + 1
            if cell <= self.cell_count:
                r.cells[cell] = int.from_bytes(d[1 + 2 * i : 3 + 2 * i]) / 1000

    def _temperatures(self, d: bytes, r: BmsReading) -> None:
        number = d[0]
        if not 1 <= number <= (MAX_TEMPERATURES + 6) // 7:
            raise ProtocolError(f"Daly frame 0x96: frame number {number} out of range")
        if self.sensor_count is None:
            return
        for i in range(7):
            sensor = (number - 1) * 7 + i + 1
            if sensor <= self.sensor_count:
                r.temperatures[sensor] = d[1 + i] - TEMPERATURE_OFFSET


def _next_header(data: bytearray) -> int | None:
    """Return where a plausible frame header starts inside the first frame's bytes, if anywhere."""
    at = data.find(b"\xa5", 1, FRAME_SIZE)
    while at >= 0:
        if at + 3 < len(data) and data[at + 3] == DATA_SIZE:
            return at
        at = data.find(b"\xa5", at + 1, FRAME_SIZE)
    return None
