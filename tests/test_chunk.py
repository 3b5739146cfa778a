"""sfstream.rtmp.chunk: RTMP chunk stream (Adobe RTMP spec 1.0, 2012, sections 5.3 and 5.4).

The reader is fed chunks written out byte by byte in this file (never produced
by ChunkWriter), and every input is also fed in one piece, byte by byte and in
random splits, which must all yield the same messages.
"""
from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfstream.rtmp.chunk import (
    MAX_PARTIAL_MESSAGES,
    ChunkReader,
    ChunkWriter,
    Message,
)
from sfstream.rtmp.errors import LimitExceeded, RemoteProtocolError

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

LIMITS = dict(max_message_size=1 << 20, max_chunk_size=1 << 17)


def h(text: str) -> bytes:
    """Hex literal with free spacing."""
    return bytes.fromhex("".join(text.split()))


def M(type_id: int, stream_id: int, timestamp: int, payload: bytes, csid: int) -> Message:
    return Message(type_id, stream_id, timestamp, payload, csid)


def pattern(n: int, seed: int = 0) -> bytes:
    """n distinct-looking payload bytes (never starting like a timestamp we use)."""
    return bytes((i * 7 + seed * 13 + 0xA5) & 0xFF for i in range(n))


def feed_pieces(pieces, **limits) -> list[Message]:
    reader = ChunkReader(**{**LIMITS, **limits})
    out: list[Message] = []
    for piece in pieces:
        out += reader.feed(piece)
    assert reader.buffered == 0
    return out


def split_at(data: bytes, cuts) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def assert_reads(data: bytes, expected: list[Message], **limits) -> None:
    """The same messages whether `data` arrives whole, byte by byte or in random splits."""
    assert feed_pieces([data], **limits) == expected
    assert feed_pieces([data[i : i + 1] for i in range(len(data))], **limits) == expected
    rng = random.Random(len(data))
    for _ in range(20):
        cuts = [rng.randrange(len(data) + 1) for _ in range(rng.randrange(1, 12))]
        assert feed_pieces(split_at(data, cuts), **limits) == expected


def set_chunk_size(size: int) -> bytes:
    """Set Chunk Size (5.4.1), by hand: csid 2, fmt 0, ts 0, len 4, type 1, stream 0."""
    return h("02 000000 000004 01 00000000") + struct.pack(">I", size)


# ---------------------------------------------------------------------------
# hand-built inputs (shared with the split-invariance property at the bottom)
# ---------------------------------------------------------------------------

CASES: dict[str, tuple[bytes, list[Message]]] = {}


def case(name: str, data: bytes, expected: list[Message]) -> tuple[bytes, list[Message]]:
    CASES[name] = (data, expected)
    return data, expected


# 5.3.1.2.1 fmt 0: ts 1000, length 5, type 20 (AMF0 command), stream id 1 (little endian)
FMT0 = case("fmt0", h("03 0003E8 000005 14 01000000") + b"hello", [M(20, 1, 1000, b"hello", 3)])

# 5.3.1.2.2-4: fmt 1 (delta, length, type), fmt 2 (delta), fmt 3 (delta repeated)
HEADER_COMPRESSION = case(
    "fmt0-1-2-3",
    h("03 0003E8 000005 14 01000000") + b"hello"  # fmt 0: ts 1000
    + h("43 000010 000003 09") + b"abc"  # fmt 1: delta 16, length 3, video; stream id kept
    + h("83 000020") + b"def"  # fmt 2: delta 32; length and type kept
    + h("C3") + b"ghi"  # fmt 3 new message: delta 32 again
    + h("C3") + b"jkl",
    [
        M(20, 1, 1000, b"hello", 3),
        M(9, 1, 1016, b"abc", 3),
        M(9, 1, 1048, b"def", 3),
        M(9, 1, 1080, b"ghi", 3),
        M(9, 1, 1112, b"jkl", 3),
    ],
)

# 5.3.1.2.4: "If a Type 3 chunk follows a Type 0 chunk, then the timestamp delta for
# this Type 3 chunk is the same as the timestamp of the Type 0 chunk."
FMT3_AFTER_FMT0 = case(
    "fmt3-after-fmt0",
    h("04 000064 000002 08 01000000") + b"ab" + h("C4") + b"cd" + h("C4") + b"ef",
    [M(8, 1, 100, b"ab", 4), M(8, 1, 200, b"cd", 4), M(8, 1, 300, b"ef", 4)],
)

P300 = pattern(300)
# 5.3.1: 128-byte default chunk size; fmt 3 continuation chunks carry no message header
CONTINUATION = case(
    "continuation-128",
    h("04 000000 00012C 09 01000000") + P300[:128] + h("C4") + P300[128:256] + h("C4") + P300[256:]
    # then a new message by fmt 3 alone: same length/type, delta 0 (the fmt-0 timestamp)
    + h("C4") + P300[:128] + h("C4") + P300[128:256] + h("C4") + P300[256:],
    [M(9, 1, 0, P300, 4), M(9, 1, 0, P300, 4)],
)

P200 = pattern(200, 1)
# 5.3.1.3 extended timestamp: 0xFFFFFF in the field, 4 bytes after the header, and
# repeated after the basic header of every fmt 3 chunk of the message.
EXTENDED_FMT0 = case(
    "extended-fmt0",
    h("05 FFFFFF 0000C8 09 01000000 01020304") + P200[:128] + h("C5 01020304") + P200[128:],
    [M(9, 1, 0x01020304, P200, 5)],
)
# Some encoders omit it on continuation chunks; the reader accepts both.
EXTENDED_OMITTED = case(
    "extended-omitted-on-continuation",
    h("05 FFFFFF 0000C8 09 01000000 01020304") + P200[:128] + h("C5") + P200[128:],
    [M(9, 1, 0x01020304, P200, 5)],
)
# An extended delta (fmt 1), repeated by a fmt 3 new message that carries it again.
EXTENDED_DELTA = case(
    "extended-delta",
    h("05 000000 000002 08 01000000") + b"ab"
    + h("45 FFFFFF 000002 08 01000000") + b"cd"  # fmt 1, extended delta 0x01000000
    + h("C5 01000000") + b"ef",  # fmt 3: delta repeated, extended field repeated
    [M(8, 1, 0, b"ab", 5), M(8, 1, 0x01000000, b"cd", 5), M(8, 1, 0x02000000, b"ef", 5)],
)
# 0xFFFFFF itself must be sent extended; timestamps wrap modulo 2**32 (5.3.1.2.1, 5.3.1.2.2)
EXTENDED_EDGE = case(
    "extended-edge-and-wrap",
    h("06 FFFFFF 000001 09 01000000 00FFFFFF") + b"a"
    + h("06 FFFFFF 000001 09 01000000 FFFFFFF0") + b"b"
    + h("86 000020") + b"c",
    [M(9, 1, 0xFFFFFF, b"a", 6), M(9, 1, 0xFFFFFFF0, b"b", 6), M(9, 1, 0x10, b"c", 6)],
)

# 5.4.1 Set Chunk Size applies to the very next chunk, in the same read
SET_CHUNK_SIZE_UP = case(
    "set-chunk-size-4096",
    set_chunk_size(4096) + h("04 000000 00012C 09 01000000") + P300,
    [M(1, 0, 0, h("00001000"), 2), M(9, 1, 0, P300, 4)],
)
SET_CHUNK_SIZE_DOWN = case(
    "set-chunk-size-1",
    set_chunk_size(1) + h("04 000000 000003 09 01000000") + b"x" + h("C4") + b"y" + h("C4") + b"z",
    [M(1, 0, 0, h("00000001"), 2), M(9, 1, 0, b"xyz", 4)],
)
# Set Chunk Size between two chunks of one message on another csid
SET_CHUNK_SIZE_MID_MESSAGE = case(
    "set-chunk-size-mid-message",
    h("04 000000 00012C 09 01000000") + P300[:128]
    + set_chunk_size(200)
    + h("C4") + P300[128:],
    [M(1, 0, 0, h("000000C8"), 2), M(9, 1, 0, P300, 4)],
)

# 5.4.2 Abort: the partial message on the named csid is discarded
ABORT = case(
    "abort",
    h("04 000000 0000C8 09 01000000") + P200[:128]
    + h("02 000000 000004 02 00000000 00000004")
    + h("04 00000A 000002 09 01000000") + b"ok",  # a fmt 0 start is legal again on csid 4
    [M(2, 0, 0, h("00000004"), 2), M(9, 1, 10, b"ok", 4)],
)

A200, B150 = pattern(200, 2), pattern(150, 3)
# 5.3.1: chunks of messages on different csids interleave
INTERLEAVED = case(
    "interleaved",
    h("04 000000 0000C8 09 01000000") + A200[:128]
    + h("06 000005 000096 08 01000000") + B150[:128]
    + h("C4") + A200[128:]
    + h("C6") + B150[128:],
    [M(9, 1, 0, A200, 4), M(8, 1, 5, B150, 6)],
)

ZERO_LENGTH = case(
    "zero-length",
    h("03 000005 000000 12 01000000") + h("C3") + h("03 000007 000001 12 01000000") + b"z",
    [M(18, 1, 5, b"", 3), M(18, 1, 10, b"", 3), M(18, 1, 7, b"z", 3)],
)

# 5.3.1.1 basic header: csid 2-63 in 1 byte, 64-319 in 2 bytes (csid - 64),
# 64-65599 in 3 bytes (csid - 64, little endian)
BASIC_HEADERS = [
    (3, "03", "C3"),
    (63, "3F", "FF"),
    (64, "00 00", "C0 00"),
    (319, "00 FF", "C0 FF"),
    (320, "01 00 01", "C1 00 01"),
    (65599, "01 FF FF", "C1 FF FF"),
    (64, "01 00 00", "C1 00 00"),  # 3-byte form of a 2-byte csid
    (300, "01 EC 00", "C1 EC 00"),
]
for _csid, _b0, _b3 in BASIC_HEADERS:
    case(
        f"basic-header-{_csid}-{len(h(_b0))}",
        h(_b0) + h("000000 0000C8 09 01000000") + P200[:128] + h(_b3) + P200[128:],
        [M(9, 1, 0, P200, _csid)],
    )


# ---------------------------------------------------------------------------
# reading hand-built chunks
# ---------------------------------------------------------------------------


def test_fmt0():
    assert_reads(*FMT0)


def test_fmt1_fmt2_fmt3_inherit_and_add_deltas():
    assert_reads(*HEADER_COMPRESSION)


def test_fmt3_after_fmt0_reuses_the_timestamp_as_delta():
    assert_reads(*FMT3_AFTER_FMT0)


def test_continuation_chunks_at_128():
    assert_reads(*CONTINUATION)


@pytest.mark.parametrize("csid,fmt0,fmt3", BASIC_HEADERS)
def test_basic_header_forms(csid, fmt0, fmt3):
    data, expected = CASES[f"basic-header-{csid}-{len(h(fmt0))}"]
    assert expected[0].csid == csid
    assert_reads(data, expected)


def test_extended_timestamp_on_fmt0_and_continuations():
    assert_reads(*EXTENDED_FMT0)


def test_extended_timestamp_omitted_on_continuations():
    assert_reads(*EXTENDED_OMITTED)


def test_extended_delta_repeated_by_fmt3():
    assert_reads(*EXTENDED_DELTA)


def test_extended_timestamp_edge_and_wraparound():
    assert_reads(*EXTENDED_EDGE)


def test_set_chunk_size_applies_to_the_next_chunk():
    assert_reads(*SET_CHUNK_SIZE_UP)
    assert_reads(*SET_CHUNK_SIZE_DOWN)
    assert_reads(*SET_CHUNK_SIZE_MID_MESSAGE)
    reader = ChunkReader(**LIMITS)
    reader.feed(set_chunk_size(4096))
    assert reader.chunk_size == 4096


def test_set_chunk_size_header_read_the_old_way():
    # Without the Set Chunk Size, the same 300-byte single chunk is misread at 128:
    # payload byte 128 is taken for the next chunk's basic header.
    data = h("04 000000 00012C 09 01000000") + P300
    with pytest.raises(RemoteProtocolError):
        ChunkReader(**LIMITS).feed(data)


def test_abort_discards_the_partial_message():
    assert_reads(*ABORT)


def test_abort_of_an_idle_or_unknown_csid_is_harmless():
    data = (
        h("02 000000 000004 02 00000000 00000009")  # csid 9 never used
        + h("02 000000 000004 02 00000000 00000002")  # csid 2 itself, no partial message
        + FMT0[0]
    )
    assert_reads(data, [M(2, 0, 0, h("00000009"), 2), M(2, 0, 0, h("00000002"), 2), *FMT0[1]])


def test_interleaved_messages_on_two_csids():
    assert_reads(*INTERLEAVED)


def test_zero_length_message():
    assert_reads(*ZERO_LENGTH)


def test_buffered_counts_the_incomplete_chunk():
    reader = ChunkReader(**LIMITS)
    assert reader.feed(FMT0[0][:7]) == []
    assert reader.buffered == 7
    assert reader.feed(FMT0[0][7:]) == FMT0[1]
    assert reader.buffered == 0


# ---------------------------------------------------------------------------
# limits and protocol violations
# ---------------------------------------------------------------------------


def test_message_too_long_is_refused_at_its_header():
    reader = ChunkReader(max_message_size=1000, max_chunk_size=65536)
    with pytest.raises(LimitExceeded):
        reader.feed(h("03 000000 0003E9 09 01000000"))  # 1001 bytes announced, no body sent
    # exactly the limit is fine
    body = pattern(1000)
    chunks = h("03 000000 0003E8 09 01000000") + b"".join(
        (h("C3") if i else b"") + body[i : i + 128] for i in range(0, 1000, 128)
    )
    assert_reads(chunks, [M(9, 1, 0, body, 3)], max_message_size=1000, max_chunk_size=65536)


def test_message_too_long_by_fmt1_header():
    reader = ChunkReader(max_message_size=1000, max_chunk_size=65536)
    reader.feed(h("03 000000 000001 09 01000000") + b"x")
    with pytest.raises(LimitExceeded):
        reader.feed(h("43 000000 FFFFFF 09"))


def test_set_chunk_size_above_the_limit():
    reader = ChunkReader(max_message_size=1 << 20, max_chunk_size=4096)
    reader.feed(set_chunk_size(4096))
    with pytest.raises(LimitExceeded):
        reader.feed(set_chunk_size(4097))


@pytest.mark.parametrize("size", [0, 0x80000000, 0xFFFFFFFF])
def test_invalid_chunk_size(size):  # 5.4.1: the top bit MUST be zero; 0 is meaningless
    reader = ChunkReader(max_message_size=1 << 20, max_chunk_size=1 << 40)
    with pytest.raises(RemoteProtocolError) as info:
        reader.feed(set_chunk_size(size))
    assert not isinstance(info.value, LimitExceeded)


def test_short_control_messages():
    with pytest.raises(RemoteProtocolError):
        ChunkReader(**LIMITS).feed(h("02 000000 000003 01 00000000 000010"))
    with pytest.raises(RemoteProtocolError):
        ChunkReader(**LIMITS).feed(h("02 000000 000002 02 00000000 0004"))


@pytest.mark.parametrize("first", ["43 000000 000001 09 78", "83 000000 78", "C3 78", "40 00 000000 000001 09 78"])
def test_first_chunk_on_a_csid_must_be_fmt0(first):  # 5.3.1.2.1
    with pytest.raises(RemoteProtocolError):
        ChunkReader(**LIMITS).feed(h(first))


@pytest.mark.parametrize("second", ["04 000000 000001 09 01000000", "44 000000 000001 09", "84 000000"])
def test_new_header_while_a_message_is_incomplete(second):
    reader = ChunkReader(**LIMITS)
    reader.feed(h("04 000000 0000C8 09 01000000") + P200[:128])
    with pytest.raises(RemoteProtocolError):
        reader.feed(h(second) + b"x")


def _start_partials(count: int) -> bytes:
    """`count` 200-byte messages on csids 4, 5, ... each with only its first chunk sent."""
    return b"".join(bytes([4 + i]) + h("000000 0000C8 09 01000000") + P200[:128] for i in range(count))


def test_interleaved_partial_messages_are_capped():
    reader = ChunkReader(**LIMITS)
    assert reader.feed(_start_partials(MAX_PARTIAL_MESSAGES)) == []
    with pytest.raises(LimitExceeded):
        reader.feed(bytes([4 + MAX_PARTIAL_MESSAGES]) + h("000000 0000C8 09 01000000") + P200[:128])


def test_complete_messages_pass_while_partials_are_at_the_cap():
    # The cap is on *incomplete* messages: a one-chunk message (here an Abort that frees
    # one of them) must still be read, and then one more partial fits.
    reader = ChunkReader(**LIMITS)
    reader.feed(_start_partials(MAX_PARTIAL_MESSAGES))
    out = reader.feed(FMT0[0].replace(b"\x03", b"\x30", 1) + h("02 000000 000004 02 00000000 00000004"))
    assert out == [M(20, 1, 1000, b"hello", 0x30), M(2, 0, 0, h("00000004"), 2)]
    assert reader.feed(h("3F 000000 0000C8 09 01000000") + P200[:128]) == []
    with pytest.raises(LimitExceeded):
        reader.feed(h("3E 000000 0000C8 09 01000000") + P200[:128])


# ---------------------------------------------------------------------------
# ChunkWriter
# ---------------------------------------------------------------------------


def test_writer_header_compression_bytes():
    w = ChunkWriter()
    assert w.write(3, 1000, 20, 1, b"hello") == h("03 0003E8 000005 14 01000000") + b"hello"
    assert w.write(3, 1016, 9, 1, b"abc") == h("43 000010 000003 09") + b"abc"
    assert w.write(3, 1048, 9, 1, b"def") == h("83 000020") + b"def"
    assert w.write(3, 1080, 9, 1, b"ghi") == h("C3") + b"ghi"
    # a decreasing timestamp or another stream id needs fmt 0
    assert w.write(3, 1000, 9, 1, b"jkl") == h("03 0003E8 000003 09 01000000") + b"jkl"
    # never fmt 3 right after fmt 0 (it would mean "delta = 1000"): fmt 2 with delta 0
    assert w.write(3, 1000, 9, 1, b"mno") == h("83 000000") + b"mno"
    w2 = ChunkWriter()
    w2.write(3, 1000, 9, 1, b"abc")
    assert w2.write(3, 2000, 9, 1, b"def") == h("83 0003E8") + b"def"  # not "C3", though equivalent
    assert w.write(3, 1000, 9, 2, b"pqr") == h("03 0003E8 000003 09 02000000") + b"pqr"


def test_writer_extended_timestamp_and_continuations():
    w = ChunkWriter()
    assert w.write(4, 0x01000000, 9, 1, P200) == (
        h("04 FFFFFF 0000C8 09 01000000 01000000") + P200[:128] + h("C4 01000000") + P200[128:]
    )


def test_writer_basic_headers_and_bounds():
    w = ChunkWriter()
    for csid, fmt0, fmt3 in BASIC_HEADERS[:6]:
        out = w.write(csid, 0, 9, 1, P200)
        assert out.startswith(h(fmt0) + h("000000 0000C8 09 01000000"))
        assert h(fmt3) + P200[128:] in out
    for csid in (0, 1, 65600):
        with pytest.raises(ValueError):
            w.write(csid, 0, 9, 1, b"")
    with pytest.raises(ValueError):
        w.write(3, 0, 9, 1, bytes(0x1000000))


@st.composite
def message_runs(draw):
    """Messages whose shapes repeat often enough for fmt 1, 2 and 3 headers to appear."""
    msgs = []
    last: dict[int, tuple[int, int, int, int, bytes]] = {}
    for _ in range(draw(st.integers(1, 12))):
        csid = draw(st.sampled_from([2, 3, 4, 63, 64, 319, 320, 65599]))
        prev = last.get(csid)
        how = draw(st.sampled_from(["new", "same-shape", "same-delta", "same-everything"]))
        if prev is None or how == "new":
            ts = draw(
                st.one_of(
                    st.integers(0, 200),
                    st.integers(0xFFFFF0, 0x1000010),
                    st.integers(0, 0xFFFFFFFF),
                )
            )
            type_id = draw(st.sampled_from([8, 9, 18, 20]))
            sid = draw(st.integers(0, 2))
            payload = draw(st.binary(max_size=400))
            delta = 0
        else:
            p_ts, delta, type_id, sid, payload = prev
            delta = max(delta, 0)
            if how == "same-shape":  # fmt 1 or 2 (new delta)
                delta = draw(st.one_of(st.integers(0, 100), st.integers(0xFFFFF0, 0x1000010)))
            if how != "same-everything":
                payload = draw(st.binary(min_size=len(payload), max_size=len(payload)))
            ts = p_ts + delta
            if ts > 0xFFFFFFFF:
                ts = draw(st.integers(0, 0xFFFFFFFF))  # decreasing: fmt 0
        last[csid] = (ts, ts - prev[0] if prev else 0, type_id, sid, payload)
        msgs.append(M(type_id, sid, ts, payload, csid))
    return msgs


@settings(max_examples=250, deadline=None)
@given(
    message_runs(),
    st.one_of(st.integers(1, 300), st.integers(1, 70000)),
    st.lists(st.integers(0, 200_000), max_size=10),
)
def test_writer_reader_round_trip(msgs, chunk_size, cuts):
    w = ChunkWriter()
    stream = w.write(2, 0, 1, 0, struct.pack(">I", chunk_size))  # Set Chunk Size at 128
    w.chunk_size = chunk_size
    for m in msgs:
        stream += w.write(m.csid, m.timestamp, m.type_id, m.stream_id, m.payload)
    expected = [M(1, 0, 0, struct.pack(">I", chunk_size), 2), *msgs]
    limits = dict(max_message_size=1 << 20, max_chunk_size=70000)
    assert feed_pieces([stream], **limits) == expected
    assert feed_pieces(split_at(stream, [c % (len(stream) + 1) for c in cuts]), **limits) == expected


# ---------------------------------------------------------------------------
# properties over arbitrary input
# ---------------------------------------------------------------------------


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(sorted(CASES)), st.lists(st.integers(0, 2000), max_size=30))
def test_hand_built_cases_in_any_split(name, cuts):
    data, expected = CASES[name]
    assert feed_pieces(split_at(data, cuts)) == expected


def _basic(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes([fmt << 6 | csid])
    if csid < 320:
        return bytes([fmt << 6, csid - 64])
    return bytes([fmt << 6 | 1, (csid - 64) & 0xFF, (csid - 64) >> 8])


@st.composite
def chunkish(draw):
    """Byte strings that look enough like chunks to reach deep reader states: mostly
    well-formed (fmt 0 first, body sizes that fit), with mistakes mixed in."""
    out = b""
    lengths: dict[int, int] = {}  # csid -> message length announced last
    for _ in range(draw(st.integers(0, 25))):
        kind = draw(st.sampled_from(["chunk"] * 6 + ["raw", "control"]))
        if kind == "raw":
            out += draw(st.binary(max_size=16))
        elif kind == "control":
            type_id = draw(st.sampled_from([1, 2]))
            value = draw(st.sampled_from([0, 1, 2, 5, 64, 128, 4096, 70000, 0x80000000, 3, 4, 5, 6, 64, 320]))
            out += h("02 000000 000004") + bytes([type_id]) + h("00000000") + struct.pack(">I", value)
        else:
            csid = draw(st.sampled_from([3, 4, 5, 6, 64, 320, 65599]))
            fmt = draw(st.integers(0, 3)) if csid in lengths or draw(st.integers(0, 9)) == 0 else 0
            out += _basic(fmt, csid)
            ts = draw(st.sampled_from([0, 5, 0xFFFFFF]))
            if fmt <= 2:
                out += ts.to_bytes(3, "big")
            if fmt <= 1:
                lengths[csid] = draw(st.sampled_from([0, 1, 4, 100, 128, 129, 300, 70000, 0xFFFFFF]))
                out += lengths[csid].to_bytes(3, "big") + bytes([draw(st.integers(0, 25))])
            if fmt == 0:
                out += draw(st.integers(0, 2)).to_bytes(4, "little")
            if draw(st.booleans()):
                out += draw(st.sampled_from([h("01020304"), h("00000005"), h("00FFFFFF")]))
            fit = min(lengths.get(csid, 0), 128)
            out += draw(st.one_of(st.binary(min_size=fit, max_size=fit), st.binary(max_size=140)))
    return out


def _run(reader: ChunkReader, pieces):
    """Feed pieces, checking the memory bound after each; return (messages, error type)."""
    msgs: list[Message] = []
    fed = 0
    for piece in pieces:
        fed += len(piece)
        try:
            msgs += reader.feed(piece)
        except RemoteProtocolError as exc:  # LimitExceeded and AMF-free: nothing else allowed
            return msgs, type(exc)
        partial = [b"".join(s.parts) for s in reader._streams.values() if s.parts is not None]
        held = reader.buffered + sum(map(len, partial))
        assert held + sum(len(m.payload) for m in msgs) <= fed
        assert len(partial) == reader._partials <= MAX_PARTIAL_MESSAGES
        assert all(len(p) <= reader.max_message_size for p in partial)
        assert held <= MAX_PARTIAL_MESSAGES * reader.max_message_size + reader.chunk_size + 18
    return msgs, None


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=600), chunkish()), st.lists(st.integers(0, 5000), max_size=20))
def test_any_bytes_in_any_split_yield_messages_or_remote_protocol_error(data, cuts):
    limits = dict(max_message_size=64 * 1024, max_chunk_size=64 * 1024)
    # Byte by byte returns every message completed before an error; a feed() that raises
    # loses those it completed in the same call, so other splits give a prefix of it.
    ref_msgs, ref_err = _run(ChunkReader(**limits), [data[i : i + 1] for i in range(len(data))])
    for pieces in ([data], split_at(data, cuts)):
        msgs, err = _run(ChunkReader(**limits), pieces)
        assert err is ref_err
        if err is None:
            assert msgs == ref_msgs
        else:
            assert msgs == ref_msgs[: len(msgs)]
