"""A small RTMP publishing client, built on the same sans-IO pieces as the server.

Used by the tests and the ingest benchmark to replay FLV files with a chosen
outgoing chunk size (ffmpeg always uses 4096), and to misbehave on purpose.
It speaks the command sequence ffmpeg uses: connect, releaseStream, FCPublish,
createStream, publish, then media; FCUnpublish + deleteStream at the end.
"""
from __future__ import annotations

import asyncio
import struct
import time
from dataclasses import dataclass
from typing import Iterable, Iterator
from urllib.parse import urlsplit

from . import amf0, handshake
from .chunk import AMF0_COMMAND, AMF0_DATA, AUDIO, SET_CHUNK_SIZE, VIDEO, ChunkReader, ChunkWriter

FLV_HEADER_SIZE = 9


@dataclass(slots=True)
class FLVTag:
    type_id: int  # 8 audio, 9 video, 18 script data
    timestamp: int  # ms
    body: bytes


def read_flv(data: bytes) -> list[FLVTag]:
    """Tags of an FLV file (Adobe FLV spec, annex E): header, then tag + back-pointer."""
    if data[:3] != b"FLV":
        raise ValueError("not an FLV file")
    pos = struct.unpack_from(">I", data, 5)[0] + 4  # header size, then PreviousTagSize0
    tags = []
    while pos + 11 <= len(data):
        tag_type = data[pos] & 0x1F
        size = int.from_bytes(data[pos + 1 : pos + 4], "big")
        ts = int.from_bytes(data[pos + 4 : pos + 7], "big") | (data[pos + 7] << 24)
        body = data[pos + 11 : pos + 11 + size]
        if len(body) < size:
            break  # a file cut short by a killed encoder: keep what is whole
        tags.append(FLVTag(tag_type, ts, body))
        pos += 11 + size + 4
    return tags


class PublishRefused(Exception):
    pass


class Publisher:
    def __init__(self, url: str, *, chunk_size: int = 4096, digest_handshake: bool = True) -> None:
        parts = urlsplit(url)
        if parts.scheme != "rtmp" or not parts.hostname:
            raise ValueError("expected rtmp://HOST[:PORT]/APP/KEY")
        self.host = parts.hostname
        self.port = parts.port or 1935
        app, _, self.key = parts.path.lstrip("/").partition("/")
        self.app = app
        self.tc_url = f"rtmp://{self.host}:{self.port}/{app}"
        self.chunk_size = chunk_size
        self.digest = digest_handshake
        self.writer = ChunkWriter()
        self.reader = ChunkReader(max_message_size=1 << 20, max_chunk_size=1 << 24)
        self.stream_id = 0
        self._r: asyncio.StreamReader | None = None
        self._w: asyncio.StreamWriter | None = None
        self._tid = 0.0

    async def connect(self) -> None:
        self._r, self._w = await asyncio.open_connection(self.host, self.port)
        self._w.write(handshake.client_hello(self.digest))
        s0s1s2 = await self._r.readexactly(1 + 2 * handshake.HANDSHAKE_SIZE)
        self._w.write(handshake.client_ack(s0s1s2[1 : 1 + handshake.HANDSHAKE_SIZE]))
        self._send(2, 0, SET_CHUNK_SIZE, 0, struct.pack(">I", self.chunk_size))
        self.writer.chunk_size = self.chunk_size
        await self._call("connect", {"app": self.app, "type": "nonprivate", "flashVer": "FMLE/3.0", "tcUrl": self.tc_url})
        self._command("releaseStream", None, self.key)
        self._command("FCPublish", None, self.key)
        result = await self._call("createStream", None)
        self.stream_id = int(result[3])
        self._send(8, 0, AMF0_COMMAND, self.stream_id, amf0.encode("publish", 0.0, None, self.key, "live"))
        status = await self._wait_for(lambda v: v[0] == "onStatus")
        info = status[3] if len(status) > 3 and isinstance(status[3], dict) else {}
        if info.get("code") != "NetStream.Publish.Start":
            raise PublishRefused(f"{info.get('code')}: {info.get('description')}")

    def send_tag(self, tag: FLVTag) -> None:
        if tag.type_id == AMF0_DATA:
            body = tag.body
            values = amf0.decode_all(body)
            if values and values[0] == "onMetaData":
                body = amf0.encode("@setDataFrame") + body
            self._send(4, tag.timestamp, AMF0_DATA, self.stream_id, body)
        elif tag.type_id in (AUDIO, VIDEO):
            self._send(4 if tag.type_id == AUDIO else 6, tag.timestamp, tag.type_id, self.stream_id, tag.body)

    def send_raw(self, data: bytes) -> None:
        self._w.write(data)

    async def drain(self) -> None:
        await self._w.drain()

    async def play(self, tags: Iterable[FLVTag], *, realtime: bool = True, loops: int = 1) -> None:
        """Send the tags, paced by their timestamps when `realtime` (like ffmpeg -re)."""
        tags = list(tags)
        # Each loop continues the timeline seamlessly: it starts one video frame after the
        # previous loop's last video frame, as if the encoder had kept going.
        frames = [t.timestamp for t in tags if t.type_id == VIDEO and t.body[1:2] == b"\x01"]  # coded frames
        if len(frames) > 1:
            interval = (frames[-1] - frames[0]) / (len(frames) - 1)
            span = round(frames[-1] - frames[0] + interval)
        else:
            span = max(t.timestamp for t in tags) + 23
        start = time.monotonic()
        for n in range(loops):
            for tag in _media_tags(tags, n * span):
                if realtime:
                    delay = start + tag.timestamp / 1000 - time.monotonic()
                    if delay > 0:
                        await self.drain()
                        await asyncio.sleep(delay)
                self.send_tag(tag)
        await self.drain()

    async def close(self) -> None:
        if self._w is None:
            return
        try:
            self._command("FCUnpublish", None, self.key)
            self._send(3, 0, AMF0_COMMAND, 0, amf0.encode("deleteStream", 0.0, None, float(self.stream_id)))
            await self._w.drain()
        except ConnectionError:
            pass
        self._w.close()
        try:
            await self._w.wait_closed()
        except ConnectionError:
            pass
        self._w = None

    async def wait_closed_by_peer(self) -> bytes:
        """Read until the server closes the connection; return what it sent."""
        return await self._r.read()

    # ---------------------------------------------------------------- internals

    def _send(self, csid: int, ts: int, type_id: int, stream_id: int, payload: bytes) -> None:
        self._w.write(self.writer.write(csid, ts, type_id, stream_id, payload))

    def _command(self, name: str, *args) -> float:
        self._tid += 1
        self._send(3, 0, AMF0_COMMAND, 0, amf0.encode(name, self._tid, *args))
        return self._tid

    async def _call(self, name: str, *args) -> list:
        tid = self._command(name, *args)
        reply = await self._wait_for(lambda v: v[0] in ("_result", "_error") and v[1] == tid)
        if reply[0] == "_error":
            info = reply[3] if len(reply) > 3 and isinstance(reply[3], dict) else {}
            raise PublishRefused(f"{name}: {info.get('code')}: {info.get('description')}")
        return reply

    async def _wait_for(self, match) -> list:
        while True:
            data = await self._r.read(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            for msg in self.reader.feed(data):
                if msg.type_id == AMF0_COMMAND:
                    values = amf0.decode_all(msg.payload)
                    if values and match(values):
                        return values


def _media_tags(tags: Iterable[FLVTag], offset: int) -> Iterator[FLVTag]:
    for tag in tags:
        yield FLVTag(tag.type_id, tag.timestamp + offset, tag.body) if offset else tag
