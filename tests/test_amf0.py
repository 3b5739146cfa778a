"""sfstream.rtmp.amf0 against hand-written AMF0 bytes (Adobe AMF0 spec, 2007).

Every expected encoding below is spelled out byte by byte; nothing is produced
by the encoder under test and then fed back to it, except in the hypothesis
round trip.
"""
from __future__ import annotations

import math
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfstream.rtmp import amf0
from sfstream.rtmp.amf0 import UNDEFINED, AMF0Error, AMFDate, ECMAArray
from sfstream.rtmp.errors import RemoteProtocolError

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def h(text: str) -> bytes:
    """Hex literal with free spacing/newlines."""
    return bytes.fromhex("".join(text.split()))


def s(text: str) -> bytes:
    """AMF0 string *body* (u16 length + UTF-8), as used for object keys."""
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


def same(a, b) -> bool:
    """Equality that also checks types (ECMAArray vs dict, float vs bool) and key order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def round_trip(value, wire: bytes) -> None:
    assert amf0.encode(value) == wire
    decoded = amf0.decode(wire)
    assert same(decoded, value), (decoded, value)


# ---------------------------------------------------------------------------
# scalar types (AMF0 2.2 - 2.8, 2.13, 2.14)
# ---------------------------------------------------------------------------


def test_number():  # 2.2: 0x00 + IEEE 754 double, big endian
    round_trip(1.5, h("00 3FF8000000000000"))
    round_trip(0.0, h("00 0000000000000000"))
    round_trip(-2.0, h("00 C000000000000000"))
    round_trip(math.inf, h("00 7FF0000000000000"))
    # ints are sent as numbers and come back as floats
    assert amf0.encode(1000) == h("00 408F400000000000")
    assert same(amf0.decode(h("00 408F400000000000")), 1000.0)


def test_number_nan_decodes():
    assert math.isnan(amf0.decode(h("00 7FF8000000000000")))


def test_boolean():  # 2.3: 0x01 + u8, any non-zero is true
    round_trip(True, h("01 01"))
    round_trip(False, h("01 00"))
    assert amf0.decode(h("01 7F")) is True
    # bool must not be sent as a number although it is an int subclass
    assert amf0.encode(True)[0] == 0x01


def test_string():  # 2.4: 0x02 + u16 length + UTF-8
    round_trip("connect", h("02 0007 636F6E6E656374"))
    round_trip("", h("02 0000"))
    round_trip("é€", h("02 0005 C3A9 E282AC"))


def test_string_at_65535_bytes_is_still_short():
    text = "a" * 0xFFFF
    round_trip(text, h("02 FFFF") + b"a" * 0xFFFF)


def test_long_string():  # 2.14: 0x0C + u32 length, used above 65535 bytes
    text = "b" * 70000  # 70000 = 0x00011170
    round_trip(text, h("0C 00011170") + b"b" * 70000)
    round_trip("c" * 0x10000, h("0C 00010000") + b"c" * 0x10000)


def test_long_string_marker_with_short_body_decodes():
    assert amf0.decode(h("0C 00000003 616263")) == "abc"


def test_null_and_undefined():  # 2.7, 2.8
    round_trip(None, h("05"))
    assert amf0.encode(UNDEFINED) == h("06")
    assert amf0.decode(h("06")) is UNDEFINED
    # 0x0D "unsupported" reads as undefined too
    assert amf0.decode(h("0D")) is UNDEFINED


def test_date():  # 2.13: 0x0B + double ms + s16 time zone
    round_trip(AMFDate(1234567890123.0), h("0B 4271F71FB04CB000 0000"))
    assert amf0.decode(h("0B 408F400000000000 FFC4")) == AMFDate(1000.0, -60)


# ---------------------------------------------------------------------------
# complex types (2.5, 2.10, 2.11, 2.12, 2.17, 2.18, 2.9)
# ---------------------------------------------------------------------------


def test_object_keeps_key_order():  # 2.5: 0x03, (key, value)*, 00 00 09
    wire = h(
        """03
        0001 62  02 0001 78
        0001 61  00 3FF0000000000000
        0000 09"""
    )
    round_trip({"b": "x", "a": 1.0}, wire)
    assert list(amf0.decode(wire)) == ["b", "a"]


def test_empty_object_is_just_the_end_marker():  # 2.11 object-end-type
    round_trip({}, h("03 0000 09"))


def test_nested_object():
    wire = h(
        """03
        0001 6F  03  0001 6E 05  0000 09
        0001 6C  0A 00000001 01 01
        0000 09"""
    )
    round_trip({"o": {"n": None}, "l": [True]}, wire)


def test_ecma_array():  # 2.10: 0x08 + u32 count + properties + end
    wire = h("08 00000001  0008 6475726174696F6E 00 4024000000000000  0000 09")
    round_trip(ECMAArray(duration=10.0), wire)
    assert type(amf0.decode(wire)) is ECMAArray


def test_ecma_array_count_is_only_a_hint():
    # encoders get the count wrong; the end marker is what ends the array
    assert same(amf0.decode(h("08 FFFFFFFF 0000 09")), ECMAArray())
    assert same(amf0.decode(h("08 00000000 0001 61 05 0000 09")), ECMAArray(a=None))


def test_strict_array():  # 2.12: 0x0A + u32 count + values
    round_trip([1.0, "a", None], h("0A 00000003  00 3FF0000000000000  02 0001 61  05"))
    round_trip([], h("0A 00000000"))
    assert amf0.encode((2.0,)) == h("0A 00000001 00 4000000000000000")


def test_empty_key_not_followed_by_end_marker_is_a_property():
    assert amf0.decode(h("03 0000 05 0000 09")) == {"": None}
    round_trip({"": 1.0}, h("03 0000 00 3FF0000000000000 0000 09"))


def test_typed_object_decodes_as_dict():  # 2.18: 0x10 + class name + properties
    wire = h("10 0005 506F696E74  0001 78 00 3FF0000000000000  0001 79 00 4000000000000000  0000 09")
    assert same(amf0.decode(wire), {"x": 1.0, "y": 2.0})


def test_xml_document_decodes_as_str():  # 2.17: 0x0F + u32 length + UTF-8
    assert amf0.decode(h("0F 00000008 3C613E623C2F613E")) == "<a>b</a>"


def test_reference_points_to_an_earlier_object():  # 2.9: 0x07 + u16 index
    # {"a": {"x": 1.0}, "b": ref 1}; ref 0 is the outer object itself
    wire = h(
        """03
        0001 61  03 0001 78 00 3FF0000000000000 0000 09
        0001 62  07 0001
        0000 09"""
    )
    value = amf0.decode(wire)
    assert value == {"a": {"x": 1.0}, "b": {"x": 1.0}}
    assert value["b"] is value["a"]


def test_reference_counts_strict_arrays_first():
    # [ {"k": null}, ref 1 ]: the strict array is index 0, the object index 1
    value = amf0.decode(h("0A 00000002  03 0001 6B 05 0000 09  07 0001"))
    assert value == [{"k": None}, {"k": None}]
    assert value[1] is value[0]
    # ref 0 is the array itself, which is under construction: a cycle, not a crash
    outer = amf0.decode(h("0A 00000001 07 0000"))
    assert outer[0] is outer


def test_reference_to_unknown_index_fails():
    with pytest.raises(AMF0Error):
        amf0.decode(h("07 0000"))
    with pytest.raises(AMF0Error):
        amf0.decode(h("0A 00000002 03 0000 09 07 0002"))


def test_decode_all_returns_a_sequence_and_decode_wants_exactly_one():
    wire = h("02 0001 61  05  01 01")
    assert amf0.decode_all(wire) == ["a", None, True]
    assert amf0.decode_all(b"") == []
    with pytest.raises(AMF0Error):
        amf0.decode(wire)
    with pytest.raises(AMF0Error):
        amf0.decode(b"")
    assert amf0.encode("a", None, True) == wire


def test_decode_accepts_memoryview():
    assert amf0.decode_all(memoryview(h("00 3FF0000000000000"))) == [1.0]


# ---------------------------------------------------------------------------
# real command and data messages
# ---------------------------------------------------------------------------

# ffmpeg's gen_connect() when publishing (libavformat/rtmpproto.c)
FFMPEG_CONNECT = (
    h("02 0007") + b"connect"
    + h("00 3FF0000000000000")  # transaction id 1
    + h("03")
    + s("app") + h("02 0004") + b"live"
    + s("type") + h("02 000A") + b"nonprivate"
    + s("flashVer") + h("02 0023") + b"FMLE/3.0 (compatible; Lavf61.7.100)"
    + s("tcUrl") + h("02 001A") + b"rtmp://127.0.0.1:1935/live"
    + h("0000 09")
)


def test_ffmpeg_connect_command():
    assert len(b"FMLE/3.0 (compatible; Lavf61.7.100)") == 0x23
    assert len(b"rtmp://127.0.0.1:1935/live") == 0x1A
    values = amf0.decode_all(FFMPEG_CONNECT)
    assert values == [
        "connect",
        1.0,
        {
            "app": "live",
            "type": "nonprivate",
            "flashVer": "FMLE/3.0 (compatible; Lavf61.7.100)",
            "tcUrl": "rtmp://127.0.0.1:1935/live",
        },
    ]
    assert list(values[2]) == ["app", "type", "flashVer", "tcUrl"]
    assert amf0.encode(*values) == FFMPEG_CONNECT


# ffmpeg's flv muxer metadata, with @setDataFrame prepended as its RTMP output does
SET_DATA_FRAME = (
    h("02 000D") + b"@setDataFrame"
    + h("02 000A") + b"onMetaData"
    + h("08 00000007")
    + s("duration") + h("00 0000000000000000")
    + s("width") + h("00 4084000000000000")
    + s("height") + h("00 4076800000000000")
    + s("framerate") + h("00 403E000000000000")
    + s("videocodecid") + h("00 401C000000000000")
    + s("stereo") + h("01 01")
    + s("encoder") + h("02 000C") + b"Lavf61.7.100"
    + h("0000 09")
)


def test_set_data_frame_on_metadata():
    values = amf0.decode_all(SET_DATA_FRAME)
    assert values[:2] == ["@setDataFrame", "onMetaData"]
    meta = values[2]
    assert type(meta) is ECMAArray
    assert same(
        meta,
        ECMAArray(
            duration=0.0, width=640.0, height=360.0, framerate=30.0, videocodecid=7.0, stereo=True,
            encoder="Lavf61.7.100",
        ),
    )
    assert len(values) == 3


# ---------------------------------------------------------------------------
# malformed input: only AMF0Error, never another exception
# ---------------------------------------------------------------------------

# One top-level value touching every decodable type, so every proper prefix is truncated.
EVERY_TYPE = (
    h("03")
    + s("n") + h("00 3FF8000000000000")
    + s("b") + h("01 01")
    + s("s") + h("02 0002 6869")
    + s("L") + h("0C 00000002 6869")
    + s("z") + h("05")
    + s("u") + h("06")
    + s("e") + h("08 00000001") + s("k") + h("02 0000") + h("0000 09")
    + s("a") + h("0A 00000002 05 07 0001")
    + s("d") + h("0B 408F400000000000 0000")
    + s("x") + h("0F 00000003 3C612F")
    + s("t") + h("10 0001 43") + s("p") + h("05") + h("0000 09")
    + h("0000 09")
)


def test_every_type_sample_decodes():
    value = amf0.decode(EVERY_TYPE)
    assert value["a"][1] is value["e"]  # ref 1: the ECMA array (the outer object is ref 0)
    assert value["L"] == "hi" and value["x"] == "<a/" and value["t"] == {"p": None}


@pytest.mark.parametrize(
    "wire",
    [EVERY_TYPE, FFMPEG_CONNECT[19:], SET_DATA_FRAME[29:]],  # one value each: the objects alone
    ids=["every-type", "connect-object", "metadata-array"],
)
def test_truncation_at_every_cut_point(wire):
    assert len(amf0.decode_all(wire)) == 1
    for cut in range(len(wire)):
        with pytest.raises(AMF0Error):
            amf0.decode(wire[:cut])
        if cut:
            with pytest.raises(AMF0Error):
                amf0.decode_all(wire[:cut])


def test_truncation_of_a_command_sequence_never_passes_silently():
    # A cut inside any value raises; a cut between values returns the whole values before it.
    boundaries = {0}
    pos = 0
    dec_values = amf0.decode_all(FFMPEG_CONNECT)
    for v in dec_values:
        pos += len(amf0.encode(v))
        boundaries.add(pos)
    assert pos == len(FFMPEG_CONNECT)
    for cut in range(len(FFMPEG_CONNECT)):
        if cut in boundaries:
            assert amf0.encode(*amf0.decode_all(FFMPEG_CONNECT[:cut])) == FFMPEG_CONNECT[:cut]
        else:
            with pytest.raises(AMF0Error):
                amf0.decode_all(FFMPEG_CONNECT[:cut])


@pytest.mark.parametrize("marker", [0x04, 0x0E, 0x11, 0x12, 0xFF])
def test_unknown_marker(marker):  # movieclip, recordset (reserved), AMF3 switch, beyond
    with pytest.raises(AMF0Error):
        amf0.decode(bytes([marker]))
    with pytest.raises(AMF0Error):
        amf0.decode(h("03 0001 61") + bytes([marker]) + h("0000 09"))


@pytest.mark.parametrize(
    "wire",
    [
        h("02 0002 FFFE"),  # invalid bytes
        h("02 0001 C3"),  # cut multi-byte sequence
        h("02 0003 EDA080"),  # UTF-16 surrogate encoded in UTF-8
        h("0C 00000001 80"),  # long string
        h("0F 00000001 C0"),  # XML
        h("03 0001 FF 05 0000 09"),  # object key
        h("10 0001 FF 0000 09"),  # typed object class name
    ],
)
def test_invalid_utf8(wire):
    with pytest.raises(AMF0Error):
        amf0.decode(wire)


def test_nesting_depth_limit():
    depth = amf0.MAX_DEPTH
    ok = h("0A 00000001") * depth + h("05")  # null at depth MAX_DEPTH
    value = amf0.decode(ok)
    for _ in range(depth):
        value = value[0]
    assert value is None
    with pytest.raises(AMF0Error):
        amf0.decode(h("0A 00000001") * (depth + 1) + h("05"))
    with pytest.raises(AMF0Error):  # objects count too
        amf0.decode((h("03") + s("a")) * (depth + 1) + h("05") + h("0000 09") * (depth + 1))
    # far deeper than Python's recursion limit: still AMF0Error, not RecursionError
    with pytest.raises(AMF0Error):
        amf0.decode((h("08 00000001") + s("a")) * 100_000)


def test_encoder_refuses_nesting_it_could_not_decode():
    value: list = [None]
    for _ in range(amf0.MAX_DEPTH):
        value = [value]
    with pytest.raises(ValueError):
        amf0.encode(value)


def test_huge_strict_array_count_fails_fast():
    start = time.perf_counter()
    with pytest.raises(AMF0Error):
        amf0.decode(h("0A FFFFFFFF 05 05 05"))
    with pytest.raises(AMF0Error):
        amf0.decode(h("03 0001 61 0A FFFFFFFF") + h("05") * 1000 + h("0000 09"))
    assert time.perf_counter() - start < 1.0


def test_huge_lengths_fail_fast():
    for wire in (h("02 FFFF 61"), h("0C FFFFFFFF 61"), h("0F FFFFFFFF"), h("10 FFFF 61")):
        with pytest.raises(AMF0Error):
            amf0.decode(wire)


def test_amf0_error_is_a_remote_protocol_error():
    assert issubclass(AMF0Error, RemoteProtocolError)


def test_encode_rejects_what_amf0_cannot_carry():
    with pytest.raises(TypeError):
        amf0.encode(object())
    with pytest.raises(TypeError):
        amf0.encode(b"bytes")
    with pytest.raises(ValueError):
        amf0.encode({"k" * 0x10000: None})


# ---------------------------------------------------------------------------
# hypothesis
# ---------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.just(UNDEFINED),
    st.booleans(),
    st.floats(allow_nan=False),
    st.integers(min_value=-(2**53), max_value=2**53).map(float),
    st.text(max_size=20),
    st.builds(AMFDate, st.floats(allow_nan=False), st.integers(-32768, 32767)),
)
_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=8), children, max_size=5),
        st.dictionaries(st.text(max_size=8), children, max_size=5).map(ECMAArray),
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_values, max_size=4))
def test_hypothesis_round_trip(values):
    wire = amf0.encode(*values)
    decoded = amf0.decode_all(wire)
    assert same(decoded, values), (decoded, values)
    # and the encoding is canonical
    assert amf0.encode(*decoded) == wire


def _mutations():
    valid = st.lists(_values, min_size=1, max_size=3).map(lambda vs: amf0.encode(*vs))
    return st.one_of(
        st.binary(max_size=300),
        st.tuples(valid, st.integers(0, 400), st.binary(min_size=1, max_size=4)).map(
            lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + len(t[2]) :]
        ),
        st.tuples(valid, st.integers(0, 400)).map(lambda t: t[0][: t[1]]),
        st.lists(st.sampled_from([EVERY_TYPE, FFMPEG_CONNECT, SET_DATA_FRAME, h("07 0000"), h("0A 00000001")]),
                 max_size=3).map(b"".join),
    )


@settings(max_examples=300, deadline=None)
@given(_mutations())
def test_hypothesis_any_bytes_only_amf0_error(data):
    try:
        values = amf0.decode_all(data)
    except AMF0Error:
        return
    assert isinstance(values, list)
