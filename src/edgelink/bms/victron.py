r"""Victron VE.Direct text protocol (BMV, SmartShunt) over a serial port.

The device talks on its own, at 19200 baud 8N1, about once a second: a
block of ``\r\n<label>\t<value>`` fields ending with the field
``Checksum\t<one byte>``. The block is valid when the sum of all its bytes,
the ``\r\n`` before each field and the checksum byte included, is 0 modulo
256. A BMV alternates two blocks (the live values and the history ``H1`` to
``H18``), each with its own checksum. Lines starting with ``:`` are
VE.Direct HEX messages the device may put between blocks; they do not count
towards the checksum and are ignored.

The fields read (units of the protocol, converted to SI):

- ``V`` battery voltage (mV), ``I`` current (mA, positive = charging),
  ``P`` power (W), ``SOC`` (per mille), ``CE`` consumed charge (mAh),
  ``TTG`` time to go (minutes, -1 = infinite), ``T`` battery temperature (°C),
  ``VS`` starter battery voltage (mV), ``VM`` mid-point voltage (mV),
  ``DM`` mid-point deviation (per mille), ``Alarm`` (ON/OFF),
  ``Relay`` (ON/OFF), ``AR`` alarm reason bits (`ALARM_REASON_BITS`),
  ``H4`` number of charge cycles, ``PID``, ``FW``, ``SER#``

The first block after a (re)connect is used to get in step and is not
decoded: it may have started before we listened. A field a value cannot be
read from (``V\tabc``) makes the block a `ProtocolError`, never a zero.
"""

from __future__ import annotations

from typing import Final

from edgelink.bms.base import BmsParser, Decoded, DeviceMatch, FrameError
from edgelink.bms.reading import BmsReading
from edgelink.errors import ProtocolError

__all__ = ["ALARM_REASON_BITS", "VictronParser", "vedirect_block", "vedirect_checksum"]

CHECKSUM_LABEL: Final = b"\r\nChecksum\t"
#: A text block is at most 22 fields of short values; a longer run without a
#: checksum is not VE.Direct.
MAX_BLOCK: Final = 1024
#: Victron's Bluetooth company identifier (the instant readout advertisements).
VICTRON_COMPANY_ID: Final = 0x02E1

#: The ``AR`` (alarm reason) bits, bit 0 first.
ALARM_REASON_BITS: Final = (
    "low_voltage",
    "high_voltage",
    "low_soc",
    "low_starter_voltage",
    "high_starter_voltage",
    "low_temperature",
    "high_temperature",
    "mid_voltage",
    "overload",
    "dc_ripple",
    "low_ac_voltage",
    "high_ac_voltage",
    "short_circuit",
    "bms_lockout",
)


def vedirect_checksum(block_without_checksum: bytes) -> int:
    """Return the checksum byte that makes the block's byte sum 0 modulo 256."""
    return (256 - sum(block_without_checksum)) & 0xFF


def vedirect_block(fields: list[tuple[str, str]]) -> bytes:
    r"""Build one text block with its checksum (what the simulator and the tests send)."""
    body = b"".join(f"\r\n{label}\t{value}".encode("ascii") for label, value in fields)
    body += CHECKSUM_LABEL
    return body + bytes((vedirect_checksum(body),))


class VictronParser(BmsParser):
    """Victron BMV / SmartShunt VE.Direct text frames (`edgelink.bms.victron`)."""

    name = "victron"
    match = DeviceMatch(name_prefixes=("SmartShunt", "BMV"), manufacturer_ids=(VICTRON_COMPANY_ID,))
    baudrate = 19200

    def __init__(self, *, max_buffer: int = 4096) -> None:
        super().__init__(max_buffer=max_buffer)
        self.in_step = False

    def reset(self) -> None:
        """Forget buffered bytes; the next block is used to get in step again."""
        super().reset()
        self.in_step = False

    def _split(self) -> list[bytes | FrameError]:
        buf = self.buffer
        out: list[bytes | FrameError] = []
        while True:
            at = buf.data.find(CHECKSUM_LABEL)
            if at < 0 or len(buf.data) < at + len(CHECKSUM_LABEL) + 1:
                if len(buf.data) > MAX_BLOCK and at < 0:
                    size = len(buf.data)
                    buf.data.clear()
                    buf.garbage_bytes += size
                    out.append(ProtocolError(f"{size} bytes without a VE.Direct checksum field"))
                break
            end = at + len(CHECKSUM_LABEL) + 1
            block = _without_hex(bytes(buf.data[:end]))
            del buf.data[:end]
            if not self.in_step:
                self.in_step = True
                buf.garbage_bytes += len(block)
                continue
            if len(block) > MAX_BLOCK:
                out.append(ProtocolError(f"VE.Direct block of {len(block)} bytes is too long"))
            elif sum(block) & 0xFF:
                out.append(
                    ProtocolError(
                        f"VE.Direct block of {len(block)} bytes: checksum off by "
                        f"{sum(block) & 0xFF}"
                    )
                )
            else:
                out.append(block)
        return out

    def decode(self, frame: bytes) -> Decoded:
        """Decode one checksum-verified text block.

        Raises:
            ProtocolError: if a field is not ``label<TAB>value`` or a number
                field does not hold a number.
        """
        r = BmsReading()
        lines = frame[2 : -len(CHECKSUM_LABEL) - 1].split(b"\r\n") if len(frame) > 13 else []
        for line in lines:
            label, tab, raw = line.partition(b"\t")
            if not tab or not label:
                raise ProtocolError(f"VE.Direct field {line[:32]!r} is not label<TAB>value")
            try:
                self._field(label.decode("ascii"), raw.decode("ascii"), r)
            except (UnicodeDecodeError, ValueError) as exc:
                raise ProtocolError(
                    f"VE.Direct field {label[:16]!r}: value {raw[:16]!r} cannot be read ({exc})"
                ) from exc
        return Decoded(0, r, len(frame))

    @staticmethod
    def _field(label: str, value: str, r: BmsReading) -> None:
        if label == "V":
            r.voltage = int(value) / 1000
        elif label == "I":
            r.current = int(value) / 1000
        elif label == "P":
            r.power = float(int(value))
        elif label == "SOC":
            soc = int(value)
            if not 0 <= soc <= 1000:
                raise ValueError(f"{soc} per mille is not 0 to 1000")
            r.soc = soc / 10
        elif label == "CE":
            r.info["consumed"] = int(value) / 1000
        elif label == "TTG":
            r.info["time_to_go"] = int(value)
        elif label == "T":
            r.temperatures[1] = float(int(value))
        elif label == "VS":
            r.info["starter_voltage"] = int(value) / 1000
        elif label == "VM":
            r.info["midpoint_voltage"] = int(value) / 1000
        elif label == "DM":
            r.info["midpoint_deviation"] = int(value) / 10
        elif label == "H4":
            r.cycles = int(value)
        elif label in ("Alarm", "Relay"):
            if value not in ("ON", "OFF"):
                raise ValueError("not ON or OFF")
            r.info[label.lower()] = value == "ON"
        elif label == "AR":
            bits = int(value)
            for bit, alarm in enumerate(ALARM_REASON_BITS):
                r.alarms[alarm] = bool(bits >> bit & 1)
        elif label in ("PID", "FW", "SER#", "BMV"):
            r.info[label.rstrip("#").lower()] = value
        # Other fields (history H1..H18 but H4, MPPT and inverter fields) are
        # valid VE.Direct that a battery reading has no place for.


def _without_hex(block: bytes) -> bytes:
    # A HEX message runs from a ':' at a line start to the next '\n'. The
    # checksum byte is the last byte of a block, never taken as a ':'.
    if b":" not in block[:-1]:
        return block
    out = bytearray()
    i, n = 0, len(block) - 1
    while i < n:
        if block[i] == 0x3A and (i == 0 or block[i - 1] == 0x0A):
            nl = block.find(b"\n", i)
            if nl < 0 or nl >= n:
                break
            i = nl + 1
            continue
        out.append(block[i])
        i += 1
    out.append(block[-1])
    return bytes(out)
