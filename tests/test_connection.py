"""sfstream.rtmp.connection.ServerConnection driven as ffmpeg drives a server.

The client side is built from sfstream.rtmp pieces (ChunkWriter, handshake,
amf0); everything the server sends is parsed back with a ChunkReader + amf0 and
checked message by message. RTMP spec 1.0 (2012): 5.2 handshake, 5.4 protocol
control, 7.1.7 User Control, 7.2 commands.
"""
from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfstream.rtmp import amf0, handshake
from sfstream.rtmp.amf0 import ECMAArray
from sfstream.rtmp.chunk import ChunkReader, ChunkWriter, Message
from sfstream.rtmp.connection import (
    ConnectRequested,
    MediaData,
    MetadataReceived,
    PublishRequested,
    PublishStopped,
    ServerConnection,
    State,
)
from sfstream.rtmp.errors import LocalProtocolError, RemoteProtocolError

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

# message type ids, spelled out (spec 5.4, 7.1)
SET_CHUNK_SIZE, ACK, USER_CONTROL, WINDOW_ACK_SIZE, SET_PEER_BANDWIDTH = 1, 3, 4, 5, 6
AUDIO, VIDEO, AMF3_DATA, AMF3_COMMAND, AMF0_DATA, AMF0_COMMAND, AGGREGATE = 8, 9, 15, 17, 18, 20, 22

TC_URL = "rtmp://127.0.0.1:1935/live"
CONNECT_OBJECT = {  # ffmpeg's gen_connect() when publishing
    "app": "live",
    "type": "nonprivate",
    "flashVer": "FMLE/3.0 (compatible; Lavf61.7.100)",
    "tcUrl": TC_URL,
}
METADATA = ECMAArray(
    duration=0.0, width=640.0, height=360.0, videocodecid=7.0, audiocodecid=10.0, encoder="Lavf61.7.100"
)

# media as (csid, timestamp, type, payload); ffmpeg: audio on csid 4, video on csid 6
AVC_SEQ = bytes.fromhex("17 00 000000  01 64 00 1F FF E1 0004 6764001F 01 0004 68EE3CB0")
KEYFRAME = bytes.fromhex("17 01 000000") + bytes(range(256)) * 39  # 9989 bytes: 3 chunks at 4096
AAC_SEQ = bytes.fromhex("AF 00 1190")
MEDIA = [
    (6, 0, VIDEO, AVC_SEQ),
    (4, 0, AUDIO, AAC_SEQ),
    (6, 0, VIDEO, KEYFRAME),
    (4, 0, AUDIO, bytes.fromhex("AF 01") + b"\x21" * 300),
    (4, 21, AUDIO, bytes.fromhex("AF 01") + b"\x22" * 300),
    (6, 33, VIDEO, bytes.fromhex("27 01 000000") + b"\x33" * 1000),
    (4, 43, AUDIO, bytes.fromhex("AF 01") + b"\x23" * 300),
    (6, 67, VIDEO, bytes.fromhex("27 01 000000") + b"\x34" * 1000),
    (4, 64, AUDIO, bytes.fromhex("AF 01") + b"\x24" * 300),
]


def body(*values) -> bytes:
    return amf0.encode(*values)


def values_of(msg: Message) -> list:
    assert msg.type_id == AMF0_COMMAND
    return amf0.decode_all(msg.payload)


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def server_reader() -> ChunkReader:
    """The client's view of what the server sends."""
    return ChunkReader(max_message_size=1 << 24, max_chunk_size=1 << 24)


def ffmpeg_flights(c2: bytes) -> list[bytes]:
    """What an ffmpeg publisher sends after C0C1, grouped into the runs of bytes it sends
    before waiting for an answer: C2 + chunk size + connect; releaseStream + FCPublish +
    createStream; publish; then metadata, media, FCUnpublish, deleteStream."""
    w = ChunkWriter()
    f2 = c2 + w.write(2, 0, SET_CHUNK_SIZE, 0, u32(4096))
    w.chunk_size = 4096
    f2 += w.write(3, 0, AMF0_COMMAND, 0, body("connect", 1.0, CONNECT_OBJECT))
    f3 = w.write(3, 0, AMF0_COMMAND, 0, body("releaseStream", 2.0, None, "key?x=1"))
    f3 += w.write(3, 0, AMF0_COMMAND, 0, body("FCPublish", 3.0, None, "key?x=1"))
    f3 += w.write(3, 0, AMF0_COMMAND, 0, body("createStream", 4.0, None))
    f4 = w.write(8, 0, AMF0_COMMAND, 1, body("publish", 5.0, None, "key?x=1", "live"))
    f5 = w.write(4, 0, AMF0_DATA, 1, body("@setDataFrame", "onMetaData", METADATA))
    for csid, ts, type_id, payload in MEDIA:
        f5 += w.write(csid, ts, type_id, 1, payload)
    f5 += w.write(3, 0, AMF0_COMMAND, 0, body("FCUnpublish", 6.0, None, "key?x=1"))
    f5 += w.write(3, 0, AMF0_COMMAND, 0, body("deleteStream", 7.0, None, 1.0))
    return [f2, f3, f4, f5]


EXPECTED_EVENTS = [
    ConnectRequested("live", TC_URL, CONNECT_OBJECT),
    PublishRequested(stream_id=1, name="key", publish_type="live", query="x=1"),
    MetadataReceived(1, dict(METADATA)),
    *[MediaData(1, type_id == VIDEO, ts, payload) for _, ts, type_id, payload in MEDIA],
    PublishStopped(1, "FCUnpublish"),
]


def run_ffmpeg_session(cuts_for):
    """Play an ffmpeg publish against a ServerConnection.

    `cuts_for(flight_index, data)` says where to split each flight into receive_data()
    calls. Decisions are taken as soon as their event is seen, like server.py does.
    Returns (events, server messages after each flight, the connection)."""
    conn = ServerConnection()
    events: list = []
    reader = server_reader()

    def send(index: int, data: bytes) -> bytes:
        cuts = sorted({c for c in cuts_for(index, data) if 0 < c < len(data)})
        for a, b in zip([0, *cuts], [*cuts, len(data)]):
            for ev in conn.receive_data(data[a:b]):
                events.append(ev)
                if isinstance(ev, ConnectRequested):
                    conn.accept_connect()
                elif isinstance(ev, PublishRequested):
                    conn.accept_publish(ev.stream_id)
        return conn.data_to_send()

    s0s1s2 = send(0, handshake.client_hello(True))
    assert len(s0s1s2) == 1 + 2 * 1536 and s0s1s2[0] == 3
    s1 = s0s1s2[1:1537]
    replies = [reader.feed(send(i + 1, f)) for i, f in enumerate(ffmpeg_flights(handshake.client_ack(s1)))]
    return events, replies, conn


class Client:
    """A scripted publisher for the smaller tests."""

    def __init__(self, **limits) -> None:
        self.conn = ServerConnection(**limits)
        self.w = ChunkWriter()
        self.r = server_reader()
        self.sent = 0

    def send(self, data: bytes) -> list:
        self.sent += len(data)
        return self.conn.receive_data(data)

    def replies(self) -> list[Message]:
        return self.r.feed(self.conn.data_to_send())

    def msg(self, csid: int, ts: int, type_id: int, sid: int, payload: bytes) -> bytes:
        return self.w.write(csid, ts, type_id, sid, payload)

    def command(self, *values, sid: int = 0, csid: int = 3) -> bytes:
        return self.w.write(csid, 0, AMF0_COMMAND, sid, body(*values))

    def handshake(self) -> None:
        assert self.send(handshake.client_hello(True)) == []
        s1 = self.conn.data_to_send()[1:1537]
        assert self.send(handshake.client_ack(s1)) == []
        assert self.conn.state is State.AWAIT_CONNECT

    def connect(self, **extra) -> list[Message]:
        self.handshake()
        events = self.send(self.command("connect", 1.0, {**CONNECT_OBJECT, **extra}))
        assert [type(e) for e in events] == [ConnectRequested]
        self.conn.accept_connect()
        return self.replies()

    def create_and_publish(self, name: str = "key") -> PublishRequested:
        self.connect()
        self.send(self.command("createStream", 2.0, None))
        assert values_of(self.replies()[0]) == ["_result", 2.0, None, 1.0]
        (event,) = self.send(self.command("publish", 3.0, None, name, "live", sid=1, csid=8))
        assert isinstance(event, PublishRequested)
        return event

    def publishing(self) -> None:
        self.create_and_publish()
        self.conn.accept_publish(1)
        self.replies()


# ---------------------------------------------------------------------------
# the ffmpeg publish session
# ---------------------------------------------------------------------------


def check_replies(replies: list[list[Message]]) -> None:
    connect, create, publish, media = replies
    # After connect: 5.4.4 Window Ack Size, 5.4.5 Set Peer Bandwidth (dynamic), 5.4.1 Set
    # Chunk Size, all on csid 2 stream 0, before the _result (7.2.1.1).
    assert [(m.type_id, m.csid, m.stream_id, m.payload) for m in connect[:3]] == [
        (WINDOW_ACK_SIZE, 2, 0, u32(2_500_000)),
        (SET_PEER_BANDWIDTH, 2, 0, u32(2_500_000) + b"\x02"),
        (SET_CHUNK_SIZE, 2, 0, u32(4096)),
    ]
    assert len(connect) == 4 and connect[3].csid == 3 and connect[3].stream_id == 0
    assert values_of(connect[3]) == [
        "_result",
        1.0,
        {"fmsVer": "FMS/3,0,1,123", "capabilities": 31.0},
        {
            "level": "status",
            "code": "NetConnection.Connect.Success",
            "description": "Connection succeeded.",
            "objectEncoding": 0.0,
        },
    ]
    # releaseStream: no answer; FCPublish: onFCPublish; createStream: _result with stream id 1
    assert [values_of(m) for m in create] == [
        ["onFCPublish", 0.0, None, {"level": "status", "code": "NetStream.Publish.Start", "description": "FCPublish"}],
        ["_result", 4.0, None, 1.0],
    ]
    # accept_publish: 7.1.7 StreamBegin(1), then onStatus NetStream.Publish.Start on stream 1
    assert (publish[0].type_id, publish[0].csid, publish[0].stream_id) == (USER_CONTROL, 2, 0)
    assert publish[0].payload == bytes.fromhex("0000 00000001")
    assert publish[1].stream_id == 1
    assert values_of(publish[1]) == [
        "onStatus", 0.0, None,
        {"level": "status", "code": "NetStream.Publish.Start", "description": "Publishing."},
    ]
    assert len(publish) == 2
    assert media == []


def test_ffmpeg_session_flights_in_one_piece():
    events, replies, conn = run_ffmpeg_session(lambda i, data: [])
    assert events == EXPECTED_EVENTS
    check_replies(replies)
    assert conn.state is State.CONNECTED
    assert conn.publishing == {} and conn.pending == {}
    assert conn.dropped_messages == 0


def test_ffmpeg_session_byte_by_byte():
    events, replies, _ = run_ffmpeg_session(lambda i, data: range(1, len(data)))
    assert events == EXPECTED_EVENTS
    check_replies(replies)


@pytest.mark.parametrize("seed", range(5))
def test_ffmpeg_session_random_splits(seed):
    rng = random.Random(seed)
    events, replies, _ = run_ffmpeg_session(
        lambda i, data: [rng.randrange(len(data)) for _ in range(rng.randrange(0, 40))]
    )
    assert events == EXPECTED_EVENTS
    check_replies(replies)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.integers(0, 20000), max_size=15), min_size=5, max_size=5))
def test_ffmpeg_session_any_split(cuts):
    events, replies, _ = run_ffmpeg_session(lambda i, data: cuts[i])
    assert events == EXPECTED_EVENTS
    check_replies(replies)


def test_handshake_bytes_and_first_commands_in_one_read():
    # C2 and the commands behind it arrive in one read: the rest after C2 is not lost
    client = Client()
    assert client.send(handshake.client_hello(False)) == []
    assert len(client.conn.data_to_send()) == 3073
    events = client.send(bytes(1536) + client.command("connect", 1.0, CONNECT_OBJECT))
    assert events == [ConnectRequested("live", TC_URL, CONNECT_OBJECT)]
    assert client.conn.state is State.CONNECTING


def test_commands_pipelined_behind_connect_wait_for_the_answer():
    # A client that does not wait for connect's _result: its next commands are held
    # until the application accepts, then answered in order.
    client = Client()
    client.handshake()
    events = client.send(
        client.command("connect", 1.0, CONNECT_OBJECT)
        + client.command("createStream", 2.0, None)
        + client.command("publish", 3.0, None, "key", "live", sid=1, csid=8)
    )
    assert events == [ConnectRequested("live", TC_URL, CONNECT_OBJECT)]
    held = client.conn.accept_connect()
    assert held == [PublishRequested(1, "key", "live", "")]


def test_messages_held_before_connect_answer_are_bounded():
    client = Client()
    client.handshake()
    connect = client.command("connect", 1.0, CONNECT_OBJECT)  # written first: headers compress per csid
    flood = b"".join(client.command("releaseStream", float(i), None, "k") for i in range(2, 80))
    with pytest.raises(RemoteProtocolError, match="before connect was answered"):
        client.send(connect + flood)


# ---------------------------------------------------------------------------
# handshake and state errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("first", [b"GET / HTTP/1.1\r\n", b"G", b"\x06", b"\x16\x03\x01"])
def test_wrong_c0_version_fails_at_the_first_byte(first):  # 5.2.2: version 3
    conn = ServerConnection()
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(first)
    assert conn.data_to_send() == b""


def test_partial_c0c1_waits_without_answer():
    conn = ServerConnection()
    assert conn.receive_data(b"") == []
    hello = handshake.client_hello(True)
    assert conn.receive_data(hello[:1]) == []
    assert conn.receive_data(hello[1:1536]) == []
    assert conn.data_to_send() == b""
    assert conn.receive_data(hello[1536:]) == []
    assert len(conn.data_to_send()) == 3073
    assert conn.state is State.AWAIT_C2


def test_simple_c1_gets_its_echo_as_s2():
    conn = ServerConnection()
    c1 = bytes(8) + random.Random(1).randbytes(1528)  # zeros at bytes 4..7: simple handshake
    conn.receive_data(b"\x03" + c1)
    assert conn.data_to_send()[1537:] == c1


def test_commands_before_connect():
    client = Client()
    client.handshake()
    with pytest.raises(RemoteProtocolError):
        client.send(client.command("createStream", 2.0, None))


@pytest.mark.parametrize("name", ["publish", "releaseStream", "FCPublish", "fooBar"])
def test_any_command_before_connect(name):
    client = Client()
    client.handshake()
    with pytest.raises(RemoteProtocolError):
        client.send(client.command(name, 2.0, None, "key"))


def test_connect_twice():
    client = Client()
    client.connect()
    with pytest.raises(RemoteProtocolError):
        client.send(client.command("connect", 2.0, CONNECT_OBJECT))


def test_command_without_a_name():
    client = Client()
    client.handshake()
    with pytest.raises(RemoteProtocolError):
        client.send(client.msg(3, 0, AMF0_COMMAND, 0, body(1.0, None)))


def test_decisions_out_of_state_are_local_errors():
    client = Client()
    with pytest.raises(LocalProtocolError):
        client.conn.accept_connect()
    with pytest.raises(LocalProtocolError):
        client.conn.accept_publish(1)
    client.connect()
    with pytest.raises(LocalProtocolError):
        client.conn.accept_connect()
    with pytest.raises(LocalProtocolError):
        client.conn.reject_publish(1, "NetStream.Publish.BadName", "nope")


def test_reject_connect_closes():
    client = Client()
    client.handshake()
    client.send(client.command("connect", 1.0, {**CONNECT_OBJECT, "app": "other"}))
    client.conn.reject_connect("unknown application 'other'")
    (msg,) = client.replies()
    assert values_of(msg) == [
        "_error", 1.0, None,
        {"level": "error", "code": "NetConnection.Connect.Rejected", "description": "unknown application 'other'"},
    ]
    assert client.conn.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        client.conn.receive_data(b"\x00")


def test_connect_echoes_object_encoding():
    replies = Client().connect(objectEncoding=3.0)
    assert values_of(replies[-1])[3]["objectEncoding"] == 3.0


# ---------------------------------------------------------------------------
# publishing decisions
# ---------------------------------------------------------------------------


def test_publish_event_fields():
    client = Client()
    event = client.create_and_publish("abc?token=1&x=2")
    assert event == PublishRequested(stream_id=1, name="abc", publish_type="live", query="token=1&x=2")
    assert client.conn.pending == {1: "abc"}


@pytest.mark.parametrize("kind,expected", [("record", "record"), ("append", "append"), (None, "live")])
def test_publish_type(kind, expected):  # 7.2.2.6: "live", "record" or "append"; absent -> live
    client = Client()
    client.connect()
    client.send(client.command("createStream", 2.0, None))
    args = ("publish", 3.0, None, "k") + ((kind,) if kind else ())
    assert client.send(client.command(*args, sid=1, csid=8)) == [PublishRequested(1, "k", expected, "")]


def test_reject_publish_sends_error_status():
    client = Client()
    client.create_and_publish()
    client.conn.reject_publish(1, "NetStream.Publish.BadName", "Unknown stream key.")
    (msg,) = client.replies()
    assert (msg.stream_id, msg.csid) == (1, 5)
    assert values_of(msg) == [
        "onStatus", 0.0, None,
        {"level": "error", "code": "NetStream.Publish.BadName", "description": "Unknown stream key."},
    ]
    assert client.conn.pending == {} and client.conn.publishing == {}
    with pytest.raises(LocalProtocolError):
        client.conn.accept_publish(1)


def test_media_before_accept_is_dropped():
    client = Client()
    client.create_and_publish()
    early = client.msg(6, 0, VIDEO, 1, AVC_SEQ) + client.msg(4, 0, AUDIO, 1, AAC_SEQ)
    early += client.msg(4, 0, AMF0_DATA, 1, body("@setDataFrame", "onMetaData", METADATA))
    assert client.send(early) == []  # metadata before accept is not emitted either
    assert client.conn.dropped_messages == 2  # the count is of media messages
    client.conn.accept_publish(1)
    events = client.send(client.msg(6, 40, VIDEO, 1, KEYFRAME))
    assert events == [MediaData(1, True, 40, KEYFRAME)]
    assert client.conn.dropped_messages == 2


def test_media_on_a_stream_not_publishing_is_dropped():
    client = Client()
    client.publishing()
    assert client.send(client.msg(6, 0, VIDEO, 2, AVC_SEQ) + client.msg(4, 0, AUDIO, 0, AAC_SEQ)) == []
    assert client.conn.dropped_messages == 2


def test_publish_twice_and_publish_on_unknown_stream():
    client = Client()
    client.create_and_publish()
    with pytest.raises(RemoteProtocolError):
        client.send(client.command("publish", 4.0, None, "key", "live", sid=1, csid=8))
    client2 = Client()
    client2.connect()
    with pytest.raises(RemoteProtocolError):
        client2.send(client2.command("publish", 2.0, None, "key", "live", sid=1, csid=8))


def test_delete_stream_stops_publishing():
    client = Client()
    client.publishing()
    assert client.send(client.command("deleteStream", 9.0, None, 1.0)) == [PublishStopped(1, "deleteStream")]
    assert client.conn.publishing == {}
    assert client.send(client.msg(6, 0, VIDEO, 1, AVC_SEQ)) == []


def test_end_publish_tells_the_publisher():
    client = Client()
    client.publishing()
    client.conn.end_publish(1, "Key revoked.")
    (msg,) = client.replies()
    assert values_of(msg) == [
        "onStatus", 0.0, None, {"level": "status", "code": "NetStream.Unpublish.Success", "description": "Key revoked."}
    ]
    assert client.send(client.msg(6, 0, VIDEO, 1, AVC_SEQ)) == []


def test_metadata_without_set_data_frame_and_in_amf3_data():
    client = Client()
    client.publishing()
    events = client.send(
        client.msg(4, 0, AMF0_DATA, 1, body("onMetaData", {"width": 1.0}))
        + client.msg(4, 0, AMF3_DATA, 1, b"\x00" + body("@setDataFrame", "onMetaData", ECMAArray(height=2.0)))
        + client.msg(4, 0, AMF0_DATA, 1, body("onTextData", {"text": "x"}))
    )
    assert events == [MetadataReceived(1, {"width": 1.0}), MetadataReceived(1, {"height": 2.0})]
    assert type(events[1].metadata) is dict


# ---------------------------------------------------------------------------
# other commands and control messages
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [("fooBar", 5.0, None), ("releaseStream", 5.0, None, "key"), ("getStreamLength", 5.0, None, "key"), ("onBWDone",)],
)
def test_unknown_and_silent_commands_get_no_reply(values):
    client = Client()
    client.connect()
    assert client.send(client.command(*values)) == []
    assert client.conn.data_to_send() == b""


def test_play_is_refused_with_a_status():
    client = Client()
    client.connect()
    client.send(client.command("createStream", 2.0, None))
    client.replies()
    assert client.send(client.command("play", 3.0, None, "key", sid=1, csid=8)) == []
    (msg,) = client.replies()
    assert values_of(msg)[3]["code"] == "NetStream.Play.Failed"
    assert values_of(msg)[3]["level"] == "error"


def test_amf3_command_is_understood():  # 7.1.1: type 17, a leading format byte 0x00
    client = Client()
    client.connect()
    assert client.send(client.msg(3, 0, AMF3_COMMAND, 0, b"\x00" + body("createStream", 2.0, None))) == []
    (msg,) = client.replies()
    assert values_of(msg) == ["_result", 2.0, None, 1.0]
    (event,) = client.send(client.msg(8, 0, AMF3_COMMAND, 1, b"\x00" + body("publish", 3.0, None, "k", "live")))
    assert event == PublishRequested(1, "k", "live", "")


def test_ping_request_gets_a_ping_response():  # 7.1.7: event 6 -> event 7, same timestamp
    client = Client()
    client.connect()
    assert client.send(client.msg(2, 0, USER_CONTROL, 0, bytes.fromhex("0006 12345678"))) == []
    (msg,) = client.replies()
    assert (msg.type_id, msg.csid, msg.stream_id) == (USER_CONTROL, 2, 0)
    assert msg.payload == bytes.fromhex("0007 12345678")


def test_other_user_control_events_are_ignored():
    client = Client()
    client.connect()
    client.send(client.msg(2, 0, USER_CONTROL, 0, bytes.fromhex("0003 00000001 00000BB8")))  # SetBufferLength
    assert client.replies() == []
    with pytest.raises(RemoteProtocolError):
        client.send(client.msg(2, 0, USER_CONTROL, 0, b"\x00"))


def test_acknowledgement_after_the_peer_window():  # 5.4.3 / 5.4.4
    window = 8000
    client = Client()
    client.connect()
    client.send(client.msg(2, 0, WINDOW_ACK_SIZE, 0, u32(window)))
    assert client.replies() == []
    assert client.sent < window
    # Feed media (dropped: not publishing, but counted) one byte at a time and note
    # exactly when an Acknowledgement comes out.
    stream = b"".join(client.msg(6, 0, VIDEO, 1, bytes(999)) for _ in range(20))
    acks = []
    for i in range(len(stream)):
        client.send(stream[i : i + 1])
        for m in client.replies():
            assert m.type_id == ACK and (m.csid, m.stream_id) == (2, 0)
            acks.append((client.sent, struct.unpack(">I", m.payload)[0]))
    # the sequence number is every byte received so far, handshake included, and each
    # ack goes out on the very byte that completes a window
    assert acks == [(window, window), (2 * window, 2 * window)]


def test_no_acknowledgement_before_the_default_window():
    client = Client(window_ack_size=1_000_000)
    client.connect()
    for _ in range(50):
        client.send(client.msg(6, 0, VIDEO, 1, bytes(10_000)))
    assert client.sent < 1_000_000
    assert [m for m in client.replies() if m.type_id == ACK] == []


def test_short_window_ack_size_is_an_error():
    client = Client()
    client.connect()
    with pytest.raises(RemoteProtocolError):
        client.send(client.msg(2, 0, WINDOW_ACK_SIZE, 0, b"\x00\x01"))


def test_aggregate_message_yields_each_tag():  # 7.1.6
    client = Client()
    client.publishing()
    agg = (
        bytes.fromhex("09 000005 0003E8 00 000000") + b"VVVVV" + u32(16)  # video, ts 1000
        + bytes.fromhex("08 000003 0003FC 00 000000") + b"AAA" + u32(14)  # audio, ts 1020
    )
    events = client.send(client.msg(6, 5000, AGGREGATE, 1, agg))
    # sub-message timestamps are renormalised: aggregate ts + (tag ts - first tag ts)
    assert events == [MediaData(1, True, 5000, b"VVVVV"), MediaData(1, False, 5020, b"AAA")]


def test_aggregate_with_extended_tag_timestamp_and_metadata():
    client = Client()
    client.publishing()
    meta = body("onMetaData", {"a": 1.0})
    agg = (
        bytes([AMF0_DATA]) + len(meta).to_bytes(3, "big") + bytes.fromhex("FFFFFF 01 000000") + meta + u32(11 + len(meta))
        + bytes.fromhex("09 000001 000009 02 000000") + b"V" + u32(12)  # ts 0x02000009 via the extension byte
    )
    events = client.send(client.msg(6, 100, AGGREGATE, 1, agg))
    assert events == [MetadataReceived(1, {"a": 1.0}), MediaData(1, True, 100 + 0x02000009 - 0x01FFFFFF, b"V")]


def test_truncated_aggregate_is_an_error():
    client = Client()
    client.publishing()
    with pytest.raises(RemoteProtocolError):
        client.send(client.msg(6, 0, AGGREGATE, 1, bytes.fromhex("09 000010 000000 00 000000") + b"short"))


def test_peer_set_chunk_size_applies_to_its_next_messages():
    client = Client()
    client.publishing()
    client.send(client.msg(2, 0, SET_CHUNK_SIZE, 0, u32(10)))
    client.w.chunk_size = 10
    assert client.send(client.msg(6, 7, VIDEO, 1, KEYFRAME[:95])) == [MediaData(1, True, 7, KEYFRAME[:95])]


def test_limits_reach_the_connection():
    client = Client(max_message_size=1000, max_chunk_size=4096)
    client.handshake()
    with pytest.raises(RemoteProtocolError):
        client.send(client.msg(2, 0, SET_CHUNK_SIZE, 0, u32(8192)))
    client = Client(max_message_size=1000)
    client.handshake()
    with pytest.raises(RemoteProtocolError):
        client.send(client.msg(6, 0, VIDEO, 1, bytes(1001))[:12])


def test_bad_amf_in_a_command_is_a_protocol_error():
    client = Client()
    client.connect()
    with pytest.raises(RemoteProtocolError):
        client.send(client.msg(3, 0, AMF0_COMMAND, 0, b"\x02\x00\x10abc"))
