"""The server side of one RTMP connection, sans-IO.

Feed received bytes to `receive_data()`, which returns the events the
application must decide on or consume; send whatever `data_to_send()` returns.
Everything the protocol answers by itself (handshake, acknowledgements, pings,
createStream, FCPublish, ...) is answered here; what needs application policy
(which app to connect to, whether a stream key may publish) is an event the
application answers with `accept_*` / `reject_*`.

No sockets, no asyncio: the asyncio shell in `server.py` is a few dozen lines
and this module is tested byte by byte.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from . import amf0, handshake
from .chunk import (
    ABORT,
    ACKNOWLEDGEMENT,
    AGGREGATE,
    AMF0_COMMAND,
    AMF0_DATA,
    AMF3_COMMAND,
    AMF3_DATA,
    AUDIO,
    SET_CHUNK_SIZE,
    SET_PEER_BANDWIDTH,
    USER_CONTROL,
    VIDEO,
    WINDOW_ACK_SIZE,
    ChunkReader,
    ChunkWriter,
    Message,
)
from .errors import LocalProtocolError, RemoteProtocolError

# Chunk stream ids we send on, by convention (ffmpeg, nginx-rtmp use the same).
CSID_PROTOCOL = 2
CSID_COMMAND = 3
CSID_STREAM = 5

# User Control event types (spec 7.1.7)
UC_STREAM_BEGIN = 0
UC_STREAM_EOF = 1
UC_PING_REQUEST = 6
UC_PING_RESPONSE = 7

_U32 = struct.Struct(">I")
MAX_DEFERRED_MESSAGES = 64


# --------------------------------------------------------------------------- events


@dataclass(slots=True)
class ConnectRequested:
    app: str
    tc_url: str
    command_object: dict = field(default_factory=dict)


@dataclass(slots=True)
class PublishRequested:
    stream_id: int
    name: str  # the stream key, without query string
    publish_type: str  # "live", "record", "append"
    query: str = ""  # anything after '?' in the publish name


@dataclass(slots=True)
class MetadataReceived:
    stream_id: int
    metadata: dict


@dataclass(slots=True)
class MediaData:
    stream_id: int
    is_video: bool
    timestamp: int  # ms
    payload: bytes  # an FLV VIDEODATA / AUDIODATA tag body


@dataclass(slots=True)
class PublishStopped:
    stream_id: int
    reason: str  # the command that ended it


Event = ConnectRequested | PublishRequested | MetadataReceived | MediaData | PublishStopped


class State(enum.Enum):
    AWAIT_C0C1 = "awaiting C0+C1"
    AWAIT_C2 = "awaiting C2"
    AWAIT_CONNECT = "awaiting connect"
    CONNECTING = "connect pending"
    CONNECTED = "connected"
    CLOSED = "closed"


class ServerConnection:
    def __init__(
        self,
        *,
        max_message_size: int = 8 * 1024 * 1024,
        max_chunk_size: int = 65536,
        out_chunk_size: int = 4096,
        window_ack_size: int = 2_500_000,
    ) -> None:
        self.state = State.AWAIT_C0C1
        self.reader = ChunkReader(max_message_size=max_message_size, max_chunk_size=max_chunk_size)
        self.writer = ChunkWriter()
        self._out_chunk_size = out_chunk_size
        self._window_ack_size = window_ack_size
        self._hs_buf = bytearray()
        self._deferred: list[Message] = []  # received while connect awaits the app's answer
        self._out: list[bytes] = []
        self._bytes_received = 0
        self._last_ack = 0
        self._peer_window = window_ack_size  # until the peer tells us its own
        self._connect_tid = 0.0
        self._object_encoding = 0.0
        self._next_stream_id = 1
        self._streams: set[int] = set()  # created by createStream
        self.pending: dict[int, str] = {}  # stream id -> key awaiting a publish decision
        self.publishing: dict[int, str] = {}  # stream id -> key accepted for publishing
        self.app = ""
        self.dropped_messages = 0  # media for streams that are not publishing

    # ----------------------------------------------------------------- I/O side

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> list[Event]:
        if self.state is State.CLOSED:
            raise LocalProtocolError("receive_data on a closed connection")
        self._bytes_received += len(data)
        if self.state in (State.AWAIT_C0C1, State.AWAIT_C2):
            data = self._handshake(data)
            if not data:
                return []
        events: list[Event] = []
        for msg in self.reader.feed(data):
            if self.state is State.CONNECTING:
                # The application has not answered connect yet; a client that pipelines
                # its next commands must not lose them: hold them until the answer.
                if len(self._deferred) >= MAX_DEFERRED_MESSAGES:
                    raise RemoteProtocolError(f"more than {MAX_DEFERRED_MESSAGES} messages before connect was answered")
                self._deferred.append(msg)
            else:
                self._on_message(msg, events)
        if self._bytes_received - self._last_ack >= self._peer_window:
            # Spec 5.4.3: acknowledge once a window's worth of bytes has arrived.
            self._last_ack = self._bytes_received
            self._send_protocol(ACKNOWLEDGEMENT, _U32.pack(self._bytes_received & 0xFFFFFFFF))
        return events

    def _handshake(self, data: bytes) -> bytes:
        """Consume handshake bytes; return whatever follows the handshake."""
        buf = self._hs_buf
        buf += data
        if self.state is State.AWAIT_C0C1:
            if buf and buf[0] != handshake.VERSION:
                raise RemoteProtocolError(
                    f"not an RTMP handshake: C0 version byte 0x{buf[0]:02x}, expected 0x03"
                )
            if len(buf) < 1 + handshake.HANDSHAKE_SIZE:
                return b""
            c1 = bytes(buf[1 : 1 + handshake.HANDSHAKE_SIZE])
            del buf[: 1 + handshake.HANDSHAKE_SIZE]
            self._out.append(handshake.server_response(c1))
            self.state = State.AWAIT_C2
        if len(buf) < handshake.HANDSHAKE_SIZE:
            return b""
        rest = bytes(buf[handshake.HANDSHAKE_SIZE :])
        self._hs_buf = bytearray()
        self.state = State.AWAIT_CONNECT
        return rest

    # ----------------------------------------------------------------- application decisions

    def accept_connect(self) -> list[Event]:
        """Accept the pending connect; returns the events of messages held meanwhile."""
        if self.state is not State.CONNECTING:
            raise LocalProtocolError(f"accept_connect in state {self.state.value}")
        self.state = State.CONNECTED
        self._send_protocol(WINDOW_ACK_SIZE, _U32.pack(self._window_ack_size))
        self._send_protocol(SET_PEER_BANDWIDTH, _U32.pack(self._window_ack_size) + b"\x02")
        self._send_protocol(SET_CHUNK_SIZE, _U32.pack(self._out_chunk_size))
        self.writer.chunk_size = self._out_chunk_size
        self._send_command(
            0,
            "_result",
            self._connect_tid,
            {"fmsVer": "FMS/3,0,1,123", "capabilities": 31.0},
            {
                "level": "status",
                "code": "NetConnection.Connect.Success",
                "description": "Connection succeeded.",
                "objectEncoding": self._object_encoding,
            },
        )
        events: list[Event] = []
        deferred, self._deferred = self._deferred, []
        for msg in deferred:
            self._on_message(msg, events)
        return events

    def reject_connect(self, description: str) -> None:
        if self.state is not State.CONNECTING:
            raise LocalProtocolError(f"reject_connect in state {self.state.value}")
        self._send_command(
            0,
            "_error",
            self._connect_tid,
            None,
            {"level": "error", "code": "NetConnection.Connect.Rejected", "description": description},
        )
        self.state = State.CLOSED
        self._deferred.clear()

    def accept_publish(self, stream_id: int, description: str = "Publishing.") -> None:
        key = self.pending.pop(stream_id, None)
        if key is None:
            raise LocalProtocolError(f"no pending publish on stream {stream_id}")
        self.publishing[stream_id] = key
        self._send_protocol(USER_CONTROL, struct.pack(">HI", UC_STREAM_BEGIN, stream_id))
        self._on_status(stream_id, "status", "NetStream.Publish.Start", description)

    def reject_publish(self, stream_id: int, code: str, description: str) -> None:
        """Refuse a publish; the caller closes the connection after sending."""
        if self.pending.pop(stream_id, None) is None:
            raise LocalProtocolError(f"no pending publish on stream {stream_id}")
        self._on_status(stream_id, "error", code, description)

    def end_publish(self, stream_id: int, description: str) -> None:
        """Tell a publisher we stopped its stream (e.g. the key was revoked)."""
        if self.publishing.pop(stream_id, None) is not None:
            self._on_status(stream_id, "status", "NetStream.Unpublish.Success", description)

    # ----------------------------------------------------------------- messages

    def _on_message(self, msg: Message, events: list[Event]) -> None:
        t = msg.type_id
        if t == VIDEO or t == AUDIO:
            if msg.stream_id in self.publishing:
                events.append(MediaData(msg.stream_id, t == VIDEO, msg.timestamp, msg.payload))
            else:
                self.dropped_messages += 1
        elif t == AMF0_COMMAND:
            self._on_command(msg, amf0.decode_all(msg.payload), events)
        elif t == AMF3_COMMAND:
            # AMF3 command messages carry a format byte, then AMF0 values in practice.
            self._on_command(msg, amf0.decode_all(msg.payload[1:]), events)
        elif t == AMF0_DATA or t == AMF3_DATA:
            body = msg.payload if t == AMF0_DATA else msg.payload[1:]
            self._on_data(msg.stream_id, amf0.decode_all(body), events)
        elif t == WINDOW_ACK_SIZE:
            if len(msg.payload) < 4:
                raise RemoteProtocolError("Window Acknowledgement Size message shorter than 4 bytes")
            self._peer_window = max(1, _U32.unpack_from(msg.payload)[0])
        elif t == USER_CONTROL:
            self._on_user_control(msg.payload)
        elif t == AGGREGATE:
            self._on_aggregate(msg, events)
        elif t in (SET_CHUNK_SIZE, ABORT, ACKNOWLEDGEMENT, SET_PEER_BANDWIDTH):
            pass  # chunk-level ones are applied by the reader; acks need no answer
        # Shared objects and unknown types are ignored: they cannot affect ingest.

    def _on_user_control(self, payload: bytes) -> None:
        if len(payload) < 2:
            raise RemoteProtocolError("User Control message shorter than 2 bytes")
        event = struct.unpack_from(">H", payload)[0]
        if event == UC_PING_REQUEST and len(payload) >= 6:
            self._send_protocol(USER_CONTROL, struct.pack(">H", UC_PING_RESPONSE) + payload[2:6])

    def _on_aggregate(self, msg: Message, events: list[Event]) -> None:
        """An aggregate message is a run of FLV tags (spec 7.1.6)."""
        data = msg.payload
        pos = 0
        base: int | None = None
        while pos + 11 <= len(data):
            tag_type = data[pos]
            size = int.from_bytes(data[pos + 1 : pos + 4], "big")
            ts = int.from_bytes(data[pos + 4 : pos + 7], "big") | (data[pos + 7] << 24)
            body = data[pos + 11 : pos + 11 + size]
            if len(body) != size:
                raise RemoteProtocolError("truncated tag inside an aggregate message")
            if base is None:
                base = ts
            sub = Message(tag_type, msg.stream_id, (msg.timestamp + ts - base) & 0xFFFFFFFF, body, msg.csid)
            if tag_type in (AUDIO, VIDEO, AMF0_DATA):
                self._on_message(sub, events)
            pos += 11 + size + 4  # tag, then its back-pointer

    def _on_data(self, stream_id: int, values: list, events: list[Event]) -> None:
        if values and values[0] == "@setDataFrame":
            values = values[1:]
        if len(values) >= 2 and values[0] == "onMetaData" and isinstance(values[1], dict):
            if stream_id in self.publishing:
                events.append(MetadataReceived(stream_id, dict(values[1])))

    def _on_command(self, msg: Message, values: list, events: list[Event]) -> None:
        if not values or not isinstance(values[0], str):
            raise RemoteProtocolError("command message without a command name")
        name = values[0]
        tid = values[1] if len(values) > 1 and isinstance(values[1], float) else 0.0
        args = values[2:]
        if name == "connect":
            if self.state is not State.AWAIT_CONNECT:
                raise RemoteProtocolError("connect sent twice")
            cmd = args[0] if args and isinstance(args[0], dict) else {}
            self._connect_tid = tid
            enc = cmd.get("objectEncoding", 0.0)
            self._object_encoding = enc if isinstance(enc, float) else 0.0
            self.app = str(cmd.get("app", "")) if not isinstance(cmd.get("app"), dict) else ""
            self.state = State.CONNECTING
            events.append(ConnectRequested(self.app, str(cmd.get("tcUrl", "")), cmd))
            return
        if self.state is not State.CONNECTED:
            raise RemoteProtocolError(f"command {name!r} before connect succeeded")
        if name == "createStream":
            if len(self._streams) >= 16:
                raise RemoteProtocolError("too many createStream calls on one connection")
            sid = self._next_stream_id
            self._next_stream_id += 1
            self._streams.add(sid)
            self._send_command(0, "_result", tid, None, float(sid))
        elif name == "publish":
            sid = msg.stream_id
            if sid not in self._streams:
                raise RemoteProtocolError(f"publish on stream {sid} that createStream did not create")
            if sid in self.pending or sid in self.publishing:
                raise RemoteProtocolError(f"publish twice on stream {sid}")
            raw = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
            key, _, query = raw.partition("?")
            kind = args[2] if len(args) > 2 and isinstance(args[2], str) else "live"
            self.pending[sid] = key
            events.append(PublishRequested(sid, key, kind, query))
        elif name in ("FCUnpublish", "deleteStream", "closeStream"):
            sid = msg.stream_id
            if name == "deleteStream" and len(args) > 1 and isinstance(args[1], float):
                sid = int(args[1])
            if sid in self.publishing or (name == "FCUnpublish" and self.publishing):
                if sid not in self.publishing:  # FCUnpublish arrives on stream 0
                    sid = next(iter(self.publishing))
                del self.publishing[sid]
                events.append(PublishStopped(sid, name))
            self.pending.pop(sid, None)
            if name == "deleteStream":
                self._streams.discard(sid)
        elif name == "FCPublish":
            # librtmp (OBS) waits for onFCPublish before it sends publish.
            self._send_command(
                0, "onFCPublish", 0.0, None,
                {"level": "status", "code": "NetStream.Publish.Start", "description": "FCPublish"},
            )
        elif name == "play":
            self._on_status(msg.stream_id, "error", "NetStream.Play.Failed", "This server only accepts publishing.")
        elif name == "_checkbw":
            self._send_command(0, "onBWDone", 0.0, None)
        # releaseStream, getStreamLength, and anything unknown: nothing to answer.
        # Answering _error to unknown calls makes some encoders give up.

    # ----------------------------------------------------------------- sending

    def _send_protocol(self, type_id: int, payload: bytes) -> None:
        self._out.append(self.writer.write(CSID_PROTOCOL, 0, type_id, 0, payload))

    def _send_command(self, stream_id: int, *values: object) -> None:
        csid = CSID_COMMAND if stream_id == 0 else CSID_STREAM
        self._out.append(self.writer.write(csid, 0, AMF0_COMMAND, stream_id, amf0.encode(*values)))

    def _on_status(self, stream_id: int, level: str, code: str, description: str) -> None:
        self._send_command(
            stream_id, "onStatus", 0.0, None, {"level": level, "code": code, "description": description}
        )
