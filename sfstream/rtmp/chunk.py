"""RTMP chunk stream: reassembling messages from chunks, and chunking messages.

RTMP spec (Adobe, 2012) section 5.3. A message travels as chunks of at most
`chunk_size` bytes on a chunk stream id (csid). Each chunk starts with a basic
header (fmt + csid in 1, 2 or 3 bytes) and a message header whose size
depends on fmt:

    fmt 0: timestamp(3) length(3) type(1) stream id(4, little endian)  absolute
    fmt 1: delta(3) length(3) type(1)                                    same stream
    fmt 2: delta(3)                                                      same stream, length, type
    fmt 3: nothing                                                       continuation or repeat

A 3-byte timestamp field of 0xFFFFFF means a 4-byte extended timestamp follows
the message header, and also follows every fmt 3 chunk of that chunk stream.

`ChunkReader` is sans-IO: feed bytes, get complete messages. It applies Set
Chunk Size and Abort itself, because they change how the very next chunk must
be read, and it enforces the size limits before buffering anything.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import LimitExceeded, RemoteProtocolError

# Message type ids (spec 5.4, 6.2, 7.1)
SET_CHUNK_SIZE = 1
ABORT = 2
ACKNOWLEDGEMENT = 3
USER_CONTROL = 4
WINDOW_ACK_SIZE = 5
SET_PEER_BANDWIDTH = 6
AUDIO = 8
VIDEO = 9
AMF3_DATA = 15
AMF3_SHARED_OBJECT = 16
AMF3_COMMAND = 17
AMF0_DATA = 18
AMF0_SHARED_OBJECT = 19
AMF0_COMMAND = 20
AGGREGATE = 22

DEFAULT_CHUNK_SIZE = 128
MAX_PROTOCOL_CHUNK_SIZE = 0x7FFFFFFF  # the top bit of Set Chunk Size must be 0
EXTENDED = 0xFFFFFF
_HEADER_SIZES = (11, 7, 3, 0)
_U32 = struct.Struct(">I")
# Partially received messages we hold at once; each is capped by max_message_size,
# so this bounds what a peer can make us buffer by interleaving chunk streams.
MAX_PARTIAL_MESSAGES = 16


@dataclass(slots=True)
class Message:
    type_id: int
    stream_id: int
    timestamp: int
    payload: bytes
    csid: int = 0


class _ChunkStreamState:
    """What the previous chunk on one csid told us (fmt 1-3 inherit from it)."""

    __slots__ = ("timestamp", "ts_field", "length", "type_id", "stream_id", "extended", "parts", "remaining")

    def __init__(self) -> None:
        self.timestamp = 0
        self.ts_field = 0  # last timestamp field: absolute after fmt 0, delta after fmt 1/2
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.extended = False
        self.parts: list[bytes] | None = None  # not None while a message is in progress
        self.remaining = 0


class ChunkReader:
    def __init__(self, *, max_message_size: int, max_chunk_size: int) -> None:
        self.max_message_size = max_message_size
        self.max_chunk_size = max_chunk_size
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self._buf = bytearray()
        self._streams: dict[int, _ChunkStreamState] = {}
        self._partials = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete chunk."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Message]:
        """Add received bytes; return the messages they complete, in order."""
        buf = self._buf
        buf += data
        n = len(buf)
        pos = 0
        out: list[Message] = []
        streams = self._streams
        while pos < n:
            start = pos
            b0 = buf[pos]
            fmt = b0 >> 6
            csid = b0 & 0x3F
            pos += 1
            if csid == 0:  # 2-byte basic header: csid 64-319
                if pos >= n:
                    pos = start
                    break
                csid = 64 + buf[pos]
                pos += 1
            elif csid == 1:  # 3-byte basic header: csid 64-65599
                if pos + 1 >= n:
                    pos = start
                    break
                csid = 64 + buf[pos] + (buf[pos + 1] << 8)
                pos += 2
            hsize = _HEADER_SIZES[fmt]
            if pos + hsize > n:
                pos = start
                break
            st = streams.get(csid)
            if st is None:
                if fmt != 0:
                    raise RemoteProtocolError(f"chunk stream {csid} starts with fmt {fmt}, not fmt 0")
                st = streams[csid] = _ChunkStreamState()
            in_progress = st.parts is not None
            if in_progress and fmt != 3:
                raise RemoteProtocolError(
                    f"fmt {fmt} chunk on chunk stream {csid} while a message is incomplete"
                )
            if fmt == 3:
                ts_field = st.ts_field
                extended = st.extended
                length, type_id, stream_id = st.length, st.type_id, st.stream_id
            else:
                ts_field = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                if fmt <= 1:
                    length = (buf[pos + 3] << 16) | (buf[pos + 4] << 8) | buf[pos + 5]
                    type_id = buf[pos + 6]
                    stream_id = (
                        int.from_bytes(buf[pos + 7 : pos + 11], "little") if fmt == 0 else st.stream_id
                    )
                else:
                    length, type_id, stream_id = st.length, st.type_id, st.stream_id
                extended = ts_field == EXTENDED
            pos += hsize
            if extended:
                if pos + 4 > n:
                    pos = start
                    break
                ext = _U32.unpack_from(buf, pos)[0]
                if fmt == 3 and in_progress:
                    # Continuation chunks repeat the extended timestamp (spec 5.3.1.3),
                    # but some encoders omit it there: consume it only if it matches.
                    if ext == st.ts_field:
                        pos += 4
                else:
                    ts_field = ext
                    pos += 4
            if not in_progress and length > self.max_message_size:
                raise LimitExceeded(
                    f"message of {length} bytes exceeds the limit of {self.max_message_size} bytes"
                )
            remaining = st.remaining if in_progress else length
            take = remaining if remaining < self.chunk_size else self.chunk_size
            if pos + take > n:
                pos = start
                break
            # The whole chunk is here: commit its header to the chunk stream state.
            if not in_progress:
                if take < remaining:  # the message stays incomplete after this chunk
                    if self._partials >= MAX_PARTIAL_MESSAGES:
                        raise LimitExceeded(f"more than {MAX_PARTIAL_MESSAGES} interleaved incomplete messages")
                    self._partials += 1
                if fmt == 0:
                    st.timestamp = ts_field
                else:  # fmt 1/2 carry a delta; fmt 3 repeats the previous one (spec 5.3.1.2.4)
                    st.timestamp = (st.timestamp + ts_field) & 0xFFFFFFFF
                st.ts_field = ts_field
                st.extended = extended
                st.length, st.type_id, st.stream_id = length, type_id, stream_id
                st.parts = []
            chunk = bytes(buf[pos : pos + take])
            pos += take
            remaining -= take
            st.remaining = remaining
            if remaining:
                st.parts.append(chunk)
                continue
            parts = st.parts
            payload = chunk if not parts else b"".join(parts) + chunk
            st.parts = None
            if in_progress:  # only messages spanning chunks were counted
                self._partials -= 1
            msg = Message(type_id, stream_id, st.timestamp, payload, csid)
            if type_id == SET_CHUNK_SIZE:
                self._set_chunk_size(payload)
            elif type_id == ABORT:
                self._abort(payload)
            out.append(msg)
        if pos:
            del buf[:pos]
        return out

    def _set_chunk_size(self, payload: bytes) -> None:
        if len(payload) < 4:
            raise RemoteProtocolError("Set Chunk Size message shorter than 4 bytes")
        size = _U32.unpack_from(payload)[0]
        if size == 0 or size > MAX_PROTOCOL_CHUNK_SIZE:
            raise RemoteProtocolError(f"invalid chunk size {size}")
        if size > self.max_chunk_size:
            raise LimitExceeded(f"chunk size {size} exceeds the limit of {self.max_chunk_size}")
        self.chunk_size = size

    def _abort(self, payload: bytes) -> None:
        if len(payload) < 4:
            raise RemoteProtocolError("Abort message shorter than 4 bytes")
        st = self._streams.get(_U32.unpack_from(payload)[0])
        if st is not None and st.parts is not None:
            st.parts = None
            st.remaining = 0
            self._partials -= 1


class ChunkWriter:
    """Splits messages into chunks, compressing headers as real encoders do."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.chunk_size = chunk_size
        self._last: dict[int, tuple[int, int, int, int, int]] = {}  # csid -> (ts, delta, len, type, sid)

    def write(self, csid: int, timestamp: int, type_id: int, stream_id: int, payload: bytes) -> bytes:
        length = len(payload)
        if length > 0xFFFFFF:
            raise ValueError("RTMP messages are limited to 16 MiB")
        last = self._last.get(csid)
        if last is None or last[4] != stream_id or timestamp < last[0]:
            fmt, field = 0, timestamp
        else:
            delta = timestamp - last[0]
            if last[2] != length or last[3] != type_id:
                fmt = 1
            elif delta != last[1]:
                fmt = 2
            else:
                fmt = 3
            field = delta
        self._last[csid] = (timestamp, field if fmt else -1, length, type_id, stream_id)
        extended = field >= EXTENDED
        ts3 = EXTENDED if extended else field
        header = self._basic_header(fmt, csid)
        if fmt == 0:
            header += ts3.to_bytes(3, "big") + length.to_bytes(3, "big") + bytes([type_id])
            header += stream_id.to_bytes(4, "little")
        elif fmt == 1:
            header += ts3.to_bytes(3, "big") + length.to_bytes(3, "big") + bytes([type_id])
        elif fmt == 2:
            header += ts3.to_bytes(3, "big")
        ext = _U32.pack(field) if extended else b""
        cont = self._basic_header(3, csid) + ext
        out = [header, ext]
        size = self.chunk_size
        out.append(payload[:size])
        for off in range(size, length, size):
            out.append(cont)
            out.append(payload[off : off + size])
        return b"".join(out)

    @staticmethod
    def _basic_header(fmt: int, csid: int) -> bytes:
        if csid < 2 or csid > 65599:
            raise ValueError(f"invalid chunk stream id {csid}")
        if csid < 64:
            return bytes([(fmt << 6) | csid])
        if csid < 320:
            return bytes([fmt << 6, csid - 64])
        return bytes([(fmt << 6) | 1, (csid - 64) & 0xFF, (csid - 64) >> 8])
