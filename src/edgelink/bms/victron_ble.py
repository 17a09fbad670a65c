"""Victron "instant readout": battery monitor values in BLE advertisements, AES-CTR encrypted.

A SmartShunt or BMV-712 advertises manufacturer data under Victron's company
id 0x02E1. After the company id (little-endian, stripped by the BLE stack):

- byte 0 ``0x10`` (product advertisement), bytes 1-2 the model id
  (little-endian), byte 3 the readout type, byte 4 the record type
  (``0x02`` battery monitor), bytes 5-6 the nonce (little-endian), byte 7
  the first byte of the device's key (a quick check that the key is right),
  then the encrypted record (15 or 16 bytes).
- The record is AES-128 in counter mode with the 16-byte key shown in
  VictronConnect; the first counter block is the two nonce bytes followed
  by fourteen zero bytes.
- The battery monitor record, bit-packed from bit 0 of byte 0, little-endian:
  time to go (16 bits, minutes), voltage (16, signed, 10 mV), alarm reason
  (16, the VE.Direct ``AR`` bits), aux value (16), aux input type (2:
  0 starter voltage in 10 mV signed, 1 mid-point voltage in 10 mV,
  2 temperature in 10 mK, 3 none), current (22, signed, mA), consumed
  charge (20, 0.1 Ah), SOC (10, 0.1 %). All ones in a field means "not
  available": the field is left out, never read as a number.

`decode_instant_readout` needs the ``cryptography`` package
(``pip install 'edgelink[bms]'``), imported when first called.
"""

from __future__ import annotations

from typing import Final

from edgelink.bms.reading import BmsReading
from edgelink.bms.victron import ALARM_REASON_BITS
from edgelink.errors import ProtocolError

__all__ = [
    "BATTERY_MONITOR",
    "PRODUCT_ADVERTISEMENT",
    "decode_instant_readout",
    "decrypt_record",
    "parse_key",
]

PRODUCT_ADVERTISEMENT: Final = 0x10
BATTERY_MONITOR: Final = 0x02
HEADER_SIZE: Final = 8
#: The battery monitor record's fields: name, bit width, signed.
_FIELDS: Final = (
    ("ttg", 16, False),
    ("voltage", 16, True),
    ("alarm", 16, False),
    ("aux", 16, False),
    ("aux_type", 2, False),
    ("current", 22, True),
    ("consumed", 20, False),
    ("soc", 10, False),
)


def parse_key(key: str | bytes) -> bytes:
    """Return the 16-byte key from its 32 hex digits (as VictronConnect shows it) or bytes.

    Raises:
        ValueError: if it is not 16 bytes.
    """
    raw = bytes.fromhex(key) if isinstance(key, str) else bytes(key)
    if len(raw) != 16:
        raise ValueError(f"a Victron key is 16 bytes (32 hex digits), not {len(raw)}")
    return raw


def decrypt_record(nonce: bytes, encrypted: bytes, key: bytes) -> bytes:
    """Decrypt (or encrypt: counter mode is symmetric) one record with the device key."""
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Victron instant readout needs cryptography: pip install 'edgelink[bms]'"
        ) from exc
    cipher = Cipher(algorithms.AES(key), modes.CTR(nonce + bytes(16 - len(nonce))))
    decryptor = cipher.decryptor()
    return decryptor.update(encrypted) + decryptor.finalize()


def decode_instant_readout(manufacturer_data: bytes, key: str | bytes) -> BmsReading:
    """Decode a battery monitor advertisement (the bytes after the company id).

    Raises:
        ProtocolError: if it is not a battery monitor product advertisement,
            is too short, or the key's first byte does not match (a wrong key
            would decrypt to wrong numbers: it is refused instead).
        ValueError: if ``key`` is not 16 bytes.
    """
    raw = parse_key(key)
    data = bytes(manufacturer_data)
    if len(data) < HEADER_SIZE + 15:
        raise ProtocolError(f"Victron advertisement of {len(data)} bytes; at least 23 expected")
    if data[0] != PRODUCT_ADVERTISEMENT:
        raise ProtocolError(f"Victron advertisement type 0x{data[0]:02X} is not 0x10")
    if data[4] != BATTERY_MONITOR:
        raise ProtocolError(f"Victron record type 0x{data[4]:02X} is not a battery monitor (0x02)")
    if data[7] != raw[0]:
        raise ProtocolError(
            f"Victron advertisement: key byte 0x{data[7]:02X} does not match the key given "
            f"(0x{raw[0]:02X}): wrong key for this device"
        )
    plain = decrypt_record(data[5:7], data[HEADER_SIZE : HEADER_SIZE + 16], raw)
    bits = int.from_bytes(plain.ljust(16, b"\x00"), "little")
    values: dict[str, int | None] = {}
    at = 0
    for name, width, signed in _FIELDS:
        value = bits >> at & ((1 << width) - 1)
        at += width
        if signed:
            # Signed fields use the largest positive value for "not available".
            missing = (1 << (width - 1)) - 1
            if value == missing:
                values[name] = None
                continue
            if value >> (width - 1):
                value -= 1 << width
        elif value == (1 << width) - 1:
            values[name] = None
            continue
        values[name] = value
    r = BmsReading()
    model = int.from_bytes(data[1:3], "little")
    r.info["model_id"] = f"0x{model:04X}"
    if values["voltage"] is not None:
        r.voltage = values["voltage"] / 100
    if values["current"] is not None:
        r.current = values["current"] / 1000
    if r.voltage is not None and r.current is not None:
        r.power = round(r.voltage * r.current, 2)
    if values["soc"] is not None:
        if values["soc"] > 1000:
            raise ProtocolError(f"Victron advertisement: SOC {values['soc'] / 10:g} % over 100")
        r.soc = values["soc"] / 10
    if values["ttg"] is not None:
        r.info["time_to_go"] = values["ttg"]
    if values["consumed"] is not None:
        r.info["consumed"] = -values["consumed"] / 10
    if values["alarm"] is not None:
        for bit, alarm in enumerate(ALARM_REASON_BITS):
            r.alarms[alarm] = bool(values["alarm"] >> bit & 1)
    aux, aux_type = values["aux"], values["aux_type"]
    if aux is not None and aux_type is not None:
        if aux_type == 0:
            signed_aux = aux - (1 << 16) if aux >> 15 else aux
            r.info["starter_voltage"] = signed_aux / 100
        elif aux_type == 1:
            r.info["midpoint_voltage"] = aux / 100
        elif aux_type == 2:
            r.temperatures[1] = round(aux / 100 - 273.15, 2)
    return r
