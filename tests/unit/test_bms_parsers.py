r"""The BMS parsers on bytes: test vectors from the published protocol descriptions.

Sources (read for the frame layouts, nothing copied):

- Daly: "Daly UART/RS485 communication protocol" V1.2 (Dongguan Daly
  Electronics), summarised in the README of github.com/maland16/daly-bms-uart:
  13-byte frames ``A5 <addr> <id> 08 <8 data> <sum>``, data ids 0x90-0x98,
  current offset 30000 in 0.1 A, temperatures offset 40, the 0x98 alarm bits.
- JBD: "Jiabaida software board general protocol" (V4, V13), e.g. as
  ``JBD_BMS/Software_Board_Universal_Protocol_V13.md`` in
  github.com/mahmoudamr1205/Electra_Bike and the register map in
  github.com/FurTrader/OverkillSolarBMS: ``DD <reg> <status> <len> <data>
  <0x10000 - sum> 77``; the documented examples ``DD A5 03 00 FF FD 77`` and
  the 0x03 / 0x04 answers are used verbatim below.
- ANT (2021 boards, BLE): the status frame layout and captured frames of an
  ANT-BLE16ZMUB in github.com/syssi/esphome-ant-bms (``docs/pdus/
  model2021-req-7ea1010000be1855aa55.txt``, used verbatim below):
  ``7E A1 <fn> <addr LE> <len> <data> <CRC-16/MODBUS LE> AA 55``.
- Victron: "VE.Direct Protocol" whitepaper and the VE.Direct FAQ with its
  frame handler (victronenergy.com/live/vedirect_protocol:faq): text blocks of
  ``\r\n<label>\t<value>`` ending in ``Checksum\t<byte>``, the byte sum of
  a block 0 modulo 256, ``:`` HEX messages outside the checksum; the ``AR``
  alarm reason bits.
"""

from __future__ import annotations

import pytest

from edgelink.bms import (
    AntParser,
    BmsReading,
    DalyParser,
    Decoded,
    JbdParser,
    VictronParser,
    get_parser,
    identify,
)
from edgelink.bms.ant import ant_crc, ant_frame
from edgelink.bms.daly import ALARM_BITS, daly_frame
from edgelink.bms.jbd import PROTECTION_BITS, jbd_request, jbd_response
from edgelink.bms.victron import ALARM_REASON_BITS, vedirect_block
from edgelink.bms.victron_ble import decode_instant_readout, decrypt_record
from edgelink.errors import DeviceError, ProtocolError
from edgelink.sim.bms import (
    BmsModel,
    ant_status,
    daly_answers,
    jbd_answer,
    victron_advertisement,
    victron_blocks,
)

#: The JBD protocol document's own example answers (register 0x03, 0x04).
JBD_BASIC = bytes.fromhex(
    "DD 03 00 1B 17 00 00 00 02 D0 03 E8 00 00 20 78 00 00 00 00 00 00 10 48 03 0F 02 0B 76 0B 82"
    " FB FF 77"
)
JBD_CELLS = bytes.fromhex(
    "DD 04 00 1E 0F 66 0F 63 0F 63 0F 64 0F 3E 0F 63 0F 37 0F 5B 0F 65 0F 3B 0F 63 0F 63 0F 3C"
    " 0F 66 0F 3D F9 F9 77"
)


def decoded(items: list[Decoded | ProtocolError | DeviceError]) -> list[BmsReading]:
    return [i.reading for i in items if isinstance(i, Decoded)]


def errors(items: list[Decoded | ProtocolError | DeviceError]) -> list[str]:
    return [str(i) for i in items if not isinstance(i, Decoded)]


def daly(data_id: int, payload: bytes) -> bytes:
    return daly_frame(data_id, payload, address=0x01)


# -- JBD ---------------------------------------------------------------------


def test_jbd_requests_are_the_documented_bytes() -> None:
    """Test that the read requests are the protocol document's DD A5 03 00 FF FD 77 and 04."""
    assert JbdParser().requests() == [
        bytes.fromhex("DD A5 03 00 FF FD 77"),
        bytes.fromhex("DD A5 04 00 FF FC 77"),
    ]
    assert jbd_request(0x05) == bytes.fromhex("DD A5 05 00 FF FB 77")


def test_jbd_documented_answers_decode() -> None:
    """Test that the document's 0x03 and 0x04 examples decode to their values."""
    p = JbdParser()
    items = p.feed(JBD_BASIC + JBD_CELLS)
    assert errors(items) == []
    basic, cells = decoded(items)
    assert (basic.voltage, basic.current, basic.soc) == (58.88, 0.0, 72.0)
    assert (basic.capacity_remaining, basic.capacity_full, basic.cycles) == (7.2, 10.0, 0)
    assert basic.temperatures == {1: 20.3, 2: 21.5}  # 0x0B76 = 2934 (0.1 K)
    assert (basic.charge_mos, basic.discharge_mos) == (True, True)
    assert not any(basic.alarms.values())
    assert len(cells.cells) == 15
    assert cells.cells[1] == 3.942 and cells.cells[15] == 3.901
    assert p.state.voltage == 58.88 and len(p.state.cells) == 15


def test_jbd_32_cells_negative_current_and_frost() -> None:
    """Test 32 cells, a discharge current and sensors below zero through the encoder."""
    m = BmsModel(cells=32, temperatures=(-12.0, -0.0, 3.0), animate=False, base_current=-87.3)
    p = JbdParser()
    items = p.feed(jbd_answer(m, 0x03) + jbd_answer(m, 0x04))  # type: ignore[operator]
    assert errors(items) == []
    assert p.state.current == -87.3
    assert p.state.power is not None and p.state.power < 0
    assert p.state.temperatures == {1: -12.0, 2: 0.0, 3: 3.0}
    assert sorted(p.state.cells) == list(range(1, 33))


@pytest.mark.parametrize(
    ("bit", "name"), [(b, n) for b, n in enumerate(PROTECTION_BITS) if n is not None]
)
def test_jbd_every_protection_bit(bit: int, name: str) -> None:
    """Test that each protection bit raises its named alarm and only that one."""
    r = decoded(JbdParser().feed(jbd_answer(BmsModel(alarms={name}, animate=False), 0x03)))[0]  # type: ignore[arg-type]
    assert [k for k, v in r.alarms.items() if v] == [name]
    assert len(r.alarms) == 13


def test_jbd_bad_checksum_is_a_protocol_error_and_nothing_is_decoded() -> None:
    """Test that one flipped data byte makes the frame a ProtocolError, not a wrong voltage."""
    bad = bytearray(JBD_BASIC)
    bad[5] ^= 0x01
    p = JbdParser()
    items = p.feed(bytes(bad))
    assert decoded(items) == []
    assert errors(items) == ["JBD frame 0x03: checksum 0xFBFF, expected 0xFBFE"]
    assert p.state.voltage is None and p.frames_bad == 1


def test_jbd_error_status_is_a_device_error() -> None:
    """Test that a non-zero status byte is the BMS refusing (DeviceError), not garbage."""
    items = JbdParser().feed(jbd_response(0x03, b"", status=0x80))
    assert len(items) == 1 and isinstance(items[0], DeviceError)
    assert "status 0x80" in str(items[0])


def test_jbd_lengths_that_do_not_fit_are_refused() -> None:
    """Test that a short basic-info answer, 33 cells and NTCs past the end are ProtocolErrors."""
    short = JbdParser().feed(jbd_response(0x03, bytes(10)))
    assert errors(short) == ["JBD register 0x03: 10 data bytes, at least 23 expected"]
    many = JbdParser().feed(jbd_response(0x04, bytes(66)))
    assert "not 1 to 32 cells" in errors(many)[0]
    ntc = bytearray(JBD_BASIC[4:-3])
    ntc[22] = 5
    assert "5 temperature sensors" in errors(JbdParser().feed(jbd_response(0x03, bytes(ntc))))[0]


def test_jbd_reassembles_byte_by_byte_after_garbage() -> None:
    """Test that a frame fed one byte at a time after line noise decodes once, noise reported."""
    p = JbdParser()
    items: list[Decoded | ProtocolError | DeviceError] = []
    for b in b"\x00\x77\x13" + JBD_BASIC:
        items += p.feed(bytes((b,)))
    assert errors(items) == ["3 bytes of garbage before a JBD frame"]
    assert [r.voltage for r in decoded(items)] == [58.88]
    assert p.buffer.garbage_bytes == 3


def test_jbd_echoed_request_is_skipped() -> None:
    """Test that our own request heard back (RS485 echo) is neither a frame nor an error."""
    items = JbdParser().feed(jbd_request(0x03) + JBD_CELLS)
    assert errors(items) == [] and len(decoded(items)) == 1


# -- Daly --------------------------------------------------------------------


def test_daly_requests_are_13_bytes_with_the_sum() -> None:
    """Test that requests are A5 40 <id> 08 00*8 <sum> for the ids 0x90-0x98."""
    reqs = DalyParser().requests()
    assert reqs[1] == bytes.fromhex("A5 40 90 08 00 00 00 00 00 00 00 00 7D")
    assert sorted(r[2] for r in reqs) == list(range(0x90, 0x99))


def test_daly_pack_frame_with_negative_current() -> None:
    """Test 0x90: 52.3 V, current 29750 (= -25.0 A), SOC 87.5 %, power from both."""
    frame = daly(0x90, bytes.fromhex("020B 020B 7436 036B"))
    (r,) = decoded(DalyParser().feed(frame))
    assert (r.voltage, r.current, r.soc, r.power) == (52.3, -25.0, 87.5, -1307.5)


def test_daly_32_cells_and_frost_need_the_counts_first() -> None:
    """Test that 0x95/0x96 decode only after 0x94 gave the counts; 32 cells, -40 °C."""
    m = BmsModel(cells=32, temperatures=(-40.0, -1.0, 0.0, 5.0, 6, 7, 8, 9), animate=False)
    p = DalyParser()
    before = decoded(p.feed(b"".join(daly_answers(m, 0x95))))
    assert before and all(r.cells == {} for r in before)  # padding is never a cell
    p.feed(b"".join(daly_answers(m, 0x94)))
    items = p.feed(b"".join(daly_answers(m, 0x95) + daly_answers(m, 0x96)))
    assert errors(items) == []
    assert sorted(p.state.cells) == list(range(1, 33))
    assert p.state.cells[32] == m.cell_voltages()[31]
    assert p.state.temperatures == {1: -40, 2: -1, 3: 0, 4: 5, 5: 6, 6: 7, 7: 8, 8: 9}
    assert p.state.cycles == 42


@pytest.mark.parametrize(
    ("byte", "bit", "name"),
    [(y, b, n) for y, names in enumerate(ALARM_BITS) for b, n in enumerate(names) if n],
)
def test_daly_every_alarm_bit(byte: int, bit: int, name: str) -> None:
    """Test that each 0x98 bit raises its named alarm and only that one."""
    payload = bytearray(8)
    payload[byte] = 1 << bit
    (r,) = decoded(DalyParser().feed(daly(0x98, bytes(payload))))
    assert [k for k, v in r.alarms.items() if v] == [name]
    assert len(r.alarms) == sum(1 for names in ALARM_BITS for n in names if n)


def test_daly_mos_and_capacity() -> None:
    """Test 0x93: charging off, discharging on, 123.456 Ah left."""
    (r,) = decoded(DalyParser().feed(daly(0x93, bytes.fromhex("02 00 01 07 0001E240"))))
    assert (r.charge_mos, r.discharge_mos, r.capacity_remaining) == (False, True, 123.456)
    assert r.info["state"] == "discharging"


def test_daly_bad_frames_say_why() -> None:
    """Test checksum, unknown id, SOC over 100 %, 33 cells: each a ProtocolError, nothing decoded."""
    good = daly(0x90, bytes.fromhex("020B 020B 7530 036B"))
    corrupt = good[:-1] + bytes(((good[-1] + 1) & 0xFF,))
    cases = {
        corrupt: "checksum",
        daly(0x99, bytes(8)): "unknown data id 0x99",
        daly(0x90, bytes.fromhex("020B 020B 7530 03E9")): "SOC 100.1 % over 100",
        daly(0x94, bytes((33, 2, 0, 0, 0, 0, 0, 0))): "33 cells",
        daly(0x95, bytes((12, 0, 0, 0, 0, 0, 0, 0))): "frame number 12",
    }
    for frame, why in cases.items():
        p = DalyParser()
        items = p.feed(frame)
        assert decoded(items) == [] and len(items) == 1, why
        assert isinstance(items[0], ProtocolError) and why in str(items[0])
        assert p.state.is_empty()


def test_daly_resyncs_after_a_cut_frame_and_noise() -> None:
    """Test that a frame cut short, then noise holding 0xA5, then a good frame: one decodes."""
    good = daly(0x90, bytes.fromhex("020B 020B 7530 036B"))
    p = DalyParser()
    items = p.feed(good[:6] + b"\xa5\x00\xa5" + good)
    assert [r.voltage for r in decoded(items)] == [52.3]
    # The noise after the cut is inside the cut frame's 13 bytes: one bad frame.
    assert errors(items) == ["Daly frame 0x90 cut short after 9 bytes"]


def test_buffer_is_bounded() -> None:
    """Test that a frame start followed by endless bytes is cut at max_buffer and reported."""
    p = JbdParser(max_buffer=64)
    items = p.feed(b"\xdd\x03\x00\xff" + bytes(100))
    assert "bytes buffered without a complete frame" in errors(items)[-1]
    assert len(p.buffer) == 0 and p.buffer.overflows == 1


# -- Victron VE.Direct -------------------------------------------------------


def block(*fields: tuple[str, str]) -> bytes:
    return vedirect_block(list(fields))


def in_step(parser: VictronParser) -> VictronParser:
    parser.feed(block(("PID", "0x203")))  # the first block only brings the parser in step
    return parser


def test_vedirect_checksum_makes_the_sum_zero() -> None:
    """Test that a built block sums to 0 modulo 256 (the whitepaper's rule)."""
    b = block(("V", "12800"), ("I", "-1500"))
    assert sum(b) % 256 == 0 and b.startswith(b"\r\nV\t12800")


def test_vedirect_block_decodes_units_and_sign() -> None:
    """Test mV, mA (discharge negative), per mille SOC, temperature below zero, H4 cycles."""
    p = in_step(VictronParser())
    items = p.feed(
        block(("V", "26201"), ("I", "-12345"), ("P", "-323"), ("SOC", "875"), ("T", "-7"))
        + block(("H4", "17"))
    )
    assert errors(items) == []
    s = p.state
    assert (s.voltage, s.current, s.power, s.soc, s.cycles) == (26.201, -12.345, -323.0, 87.5, 17)
    assert s.temperatures == {1: -7.0}


def test_vedirect_first_block_only_syncs() -> None:
    """Test that the first block after a reset is not decoded (it may be a tail)."""
    p = VictronParser()
    assert p.feed(block(("V", "1"))) == []
    assert p.state.voltage is None
    assert decoded(p.feed(block(("V", "2"))))[0].voltage == 0.002


@pytest.mark.parametrize(("bit", "name"), list(enumerate(ALARM_REASON_BITS)))
def test_vedirect_every_alarm_reason_bit(bit: int, name: str) -> None:
    """Test that each AR bit raises its named alarm and only that one."""
    (r,) = decoded(in_step(VictronParser()).feed(block(("AR", str(1 << bit)))))
    assert [k for k, v in r.alarms.items() if v] == [name]


def test_vedirect_bad_checksum_and_bad_values() -> None:
    """Test that a changed byte, a non-number and a SOC over 1000 ‰ are ProtocolErrors."""
    good = block(("V", "12800"))
    bad_sum = good.replace(b"12800", b"12801")
    for frame, why in (
        (bad_sum, "checksum off by 1"),
        (block(("V", "12k")), "value b'12k' cannot be read"),
        (block(("SOC", "1001")), "1001 per mille"),
        (block(("Alarm", "MAYBE")), "not ON or OFF"),
    ):
        p = in_step(VictronParser())
        items = p.feed(frame)
        assert decoded(items) == [], why
        assert why in errors(items)[0]
        assert p.state.voltage is None and p.state.soc is None


def test_vedirect_hex_messages_between_blocks_are_ignored() -> None:
    """Test that a ':' HEX message before a block does not spoil its checksum."""
    p = in_step(VictronParser())
    items = p.feed(b":A4F10000100\n" + block(("V", "12800")))
    assert errors(items) == [] and decoded(items)[0].voltage == 12.8


def test_vedirect_without_checksum_is_bounded() -> None:
    """Test that kilobytes without a checksum field are dropped and reported."""
    p = in_step(VictronParser())
    items = p.feed(b"\r\nV\t1" * 300)
    assert "without a VE.Direct checksum" in errors(items)[0]
    assert len(p.buffer) == 0


def test_simulator_blocks_round_trip() -> None:
    """Test that the simulator's SmartShunt blocks decode to the model's values."""
    m = BmsModel(animate=False, alarms={"low_soc"}, temperatures=(-3.0,))
    p = VictronParser()
    p.feed(b"".join(victron_blocks(m)) * 2)
    assert p.state.voltage == m.voltage() and p.state.current == m.current()
    assert p.state.soc == m.soc() and p.state.alarms["low_soc"] is True
    assert p.state.temperatures == {1: -3.0} and p.state.cycles == m.cycles


# -- common ------------------------------------------------------------------


def test_datapoint_names() -> None:
    """Test the tags a reading turns into (docs/bms.md)."""
    r = BmsReading(
        voltage=52.0,
        soc=80.0,
        cells={2: 3.3, 1: 3.2},
        temperatures={1: -5.0},
        alarms={"short_circuit": False},
        charge_mos=True,
        capacity_remaining=80.0,
        info={"balancing": 1},
    )
    assert list(r.datapoints()) == [
        ("voltage", 52.0),
        ("soc", 80.0),
        ("cells.1", 3.2),
        ("cells.2", 3.3),
        ("temps.1", -5.0),
        ("alarms.short_circuit", False),
        ("mos.charge", True),
        ("capacity.remaining", 80.0),
        ("info.balancing", 1),
    ]


def test_get_parser_and_identify() -> None:
    """Test parser lookup by name and identification by advertisement."""
    assert isinstance(get_parser("daly"), DalyParser)
    with pytest.raises(ValueError, match="known: ant, daly, jbd, victron"):
        get_parser("seplos")
    assert identify("xiaoxiang BMS") == ["jbd"]
    assert identify(None, manufacturer_ids=[0x02E1]) == ["victron"]
    assert identify("DL-40D63C2101") == ["daly"]
    assert identify("Unknown") == []


# -- Victron instant readout (BLE advertisements) -----------------------------
#
# Layout from Victron's "Extra Manufacturer Data" document (2022-12-14, posted
# with "Victron Bluetooth Advertising Protocol" on community.victronenergy.com)
# and the byte and bit maps of a BMV-712 advertisement in
# github.com/chrisj7903/Read-Victron-advertised-data (docs/): 0x10, model id,
# readout type, record type 0x02, nonce (LE), key byte 0, AES-128-CTR record
# of bit fields TTG 16, V 16 signed, alarm 16, aux 16, aux type 2, I 22
# signed, consumed 20, SOC 10.

KEY = "0123456789abcdef0123456789abcdef"


def pack(*fields: tuple[int, int]) -> bytes:
    bits, at = 0, 0
    for value, width in fields:
        bits |= (value & ((1 << width) - 1)) << at
        at += width
    return bits.to_bytes(16, "little")


def advertisement(plain: bytes, *, key: str = KEY, nonce: bytes = b"\x79\x0b") -> bytes:
    record = decrypt_record(nonce, plain[:15], bytes.fromhex(key))
    return bytes.fromhex("10 89 A3 A0 02") + nonce + bytes.fromhex(key)[:1] + record


def test_instant_readout_hand_packed_record() -> None:
    """Test a record packed bit by bit: 12.89 V, -5.6 A, 87.5 %, -5 °C aux, 12.3 Ah used."""
    plain = pack(
        (185, 16), (1289, 16), (0b100, 16), (26815, 16), (2, 2), (-5600, 22), (123, 20), (875, 10)
    )
    r = decode_instant_readout(advertisement(plain), KEY)
    assert (r.voltage, r.current, r.soc) == (12.89, -5.6, 87.5)
    assert r.power == round(12.89 * -5.6, 2)
    assert r.temperatures == {1: -5.0}  # 268.15 K
    assert r.info["time_to_go"] == 185 and r.info["consumed"] == -12.3
    assert [k for k, v in r.alarms.items() if v] == ["low_soc"]
    assert r.info["model_id"] == "0xA389"


def test_instant_readout_not_available_fields_are_left_out() -> None:
    """Test that all-ones fields (not available) give no value rather than a number."""
    plain = pack(
        (0xFFFF, 16), (0x7FFF, 16), (0, 16), (0xFFFF, 16), (3, 2), (0x1FFFFF, 22),
        (0xFFFFF, 20), (0x3FF, 10),
    )  # fmt: skip
    r = decode_instant_readout(advertisement(plain), KEY)
    assert r.voltage is r.current is r.soc is r.power is None
    assert r.temperatures == {} and "time_to_go" not in r.info and "consumed" not in r.info


def test_instant_readout_refuses_what_it_cannot_trust() -> None:
    """Test wrong key, short data, another record type and SOC over 100 % are ProtocolErrors."""
    good = advertisement(pack((0, 16), (1289, 16)))
    other_key = "ff" + KEY[2:]
    with pytest.raises(ProtocolError, match="wrong key"):
        decode_instant_readout(good, other_key)
    with pytest.raises(ProtocolError, match="at least 23"):
        decode_instant_readout(good[:20], KEY)
    with pytest.raises(ProtocolError, match="not a battery monitor"):
        decode_instant_readout(good[:4] + b"\x01" + good[5:], KEY)
    over = advertisement(
        pack((0, 16), (0, 16), (0, 16), (0, 16), (3, 2), (0, 22), (0, 20), (1001, 10))
    )
    with pytest.raises(ProtocolError, match="over 100"):
        decode_instant_readout(over, KEY)
    with pytest.raises(ValueError, match="16 bytes"):
        decode_instant_readout(good, "abcd")


@pytest.mark.parametrize(("bit", "name"), list(enumerate(ALARM_REASON_BITS)))
def test_instant_readout_every_alarm_bit(bit: int, name: str) -> None:
    """Test that each alarm bit of the advertisement raises its named alarm only."""
    r = decode_instant_readout(advertisement(pack((0, 16), (0, 16), (1 << bit, 16))), KEY)
    assert [k for k, v in r.alarms.items() if v] == [name]


def test_instant_readout_simulator_round_trip() -> None:
    """Test that the simulator's advertisement decodes to the model's values (frost included)."""
    m = BmsModel(animate=False, temperatures=(-12.0,), alarms={"high_temperature"})
    data = victron_advertisement(m, KEY)
    assert len(data) == 23
    r = decode_instant_readout(data, bytes.fromhex(KEY))
    assert r.voltage == round(m.voltage(), 2) and r.current == m.current() and r.soc == m.soc()
    assert r.temperatures == {1: -12.0} and r.alarms["high_temperature"] is True
    assert identify(None, manufacturer_ids=[0x02E1]) == ["victron"]


# -- ANT ---------------------------------------------------------------------

#: A status frame captured from an ANT-BLE16ZMUB (14 cells, sensor 3 at -40 °C).
ANT_CAPTURED = bytes.fromhex(
    "7E A1 11 00 00 8E 05 01 04 0E 02 00 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 00"
    " 00 00 00 00" + " 11 10" * 14 + " 1C 00 1C 00 D8 FF 1C 00 1C 00 1C 00 7E 16 00 00 60 00 64 00"
    " 01 02 00 00 80 C3 C9 01 4F 55 B3 01 08 53 00 00 00 00 00 00 6B 28 12 00 00 00 00 00 11 10"
    " 01 00 11 10 01 00 00 00 11 10 02 00 70 00 03 00 AC 02 F1 FA 7D 2E 00 00 94 77 00 00 DE 07"
    " 00 00 77 76 00 00 35 E2 AA 55"
)


def test_ant_request_and_crc_match_the_capture() -> None:
    """Test the status request bytes and that the captured frame's CRC is CRC-16/MODBUS."""
    assert AntParser().requests() == [bytes.fromhex("7E A1 01 00 00 BE 18 55 AA 55")]
    assert ant_crc(ANT_CAPTURED[1:-4]) == 0xE235


def test_ant_captured_status_frame_decodes() -> None:
    """Test the captured frame: 57.58 V, 14 cells of 4.113 V, 96 %, a sensor at -40 °C."""
    p = get_parser("ant")
    (r,) = decoded(p.feed(b"\x00" + ANT_CAPTURED[:50]) + p.feed(ANT_CAPTURED[50:]))
    assert (r.voltage, r.current, r.soc) == (57.58, 0.0, 96.0)
    assert r.cells == dict.fromkeys(range(1, 15), 4.113)
    assert r.temperatures == {1: 28.0, 2: 28.0, 3: -40.0, 4: 28.0}
    assert (r.capacity_full, r.capacity_remaining) == (30.0, 28.53)
    assert (r.charge_mos, r.discharge_mos) == (True, False)
    assert r.alarms == {"protection": True, "warning": True}
    assert r.info["protection_bits"] == 2 and r.info["warning_bits"] == 1 << 24


def test_ant_32_cells_discharge_and_bad_crc() -> None:
    """Test 32 cells and a negative current via the encoder; one flipped byte is a CRC error."""
    m = BmsModel(cells=32, temperatures=(-20.0, 1.0), animate=False, base_current=-42.0)
    frame = ant_status(m)
    p = get_parser("ant")
    (r,) = decoded(p.feed(frame))
    assert sorted(r.cells) == list(range(1, 33)) and r.current == -42.0
    assert r.temperatures == {1: -20.0, 2: 1.0} and r.alarms == {
        "protection": False,
        "warning": False,
    }
    bad = bytearray(frame)
    bad[40] ^= 0x10
    items = get_parser("ant").feed(bytes(bad))
    assert decoded(items) == [] and "CRC" in errors(items)[0]
    too_many = bytearray(ant_status(BmsModel(cells=4, animate=False)))
    too_many[9] = 33
    body = bytes(too_many[1:-4])
    fixed = b"\x7e" + body + ant_crc(body).to_bytes(2, "little") + b"\xaa\x55"
    assert "33 cells" in errors(get_parser("ant").feed(fixed))[0]
    assert "not read here" in errors(get_parser("ant").feed(ant_frame(0x12, 0, b"\x00")))[0]
