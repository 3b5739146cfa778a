"""Bad input closes only its own connection, with a logged reason; good streams go on.

Each configurable RTMP limit has a test here that exceeds it.
"""
from __future__ import annotations

import asyncio
import logging

import pytest

from sfstream.app import REGISTRY, RTMP_SERVER
from sfstream.hls.routes import HLS_OUTPUT
from sfstream.rtmp import handshake
from sfstream.rtmp.chunk import VIDEO
from sfstream.rtmp.client import FLVTag, Publisher, PublishRefused, read_flv

from .conftest import KEY, NAME

pytestmark = pytest.mark.e2e
OTHER_KEY = "otherkey-0123456789"


async def _closed_by_server(reader: asyncio.StreamReader) -> None:
    """Read until the server closes the connection (EOF or reset)."""
    try:
        while await asyncio.wait_for(reader.read(65536), 10):
            pass
    except ConnectionResetError:
        pass


async def test_refusals_close_only_their_own_connection(make_server, test_flv, caplog):
    caplog.set_level(logging.INFO, logger="sfstream")
    server = await make_server(rtmp_max_message_size=256 * 1024)
    good = Publisher(f"{server.rtmp_url}/{KEY}")
    await good.connect()
    playing = asyncio.ensure_future(good.play(read_flv(test_flv.read_bytes()), realtime=True, loops=20))
    await server.wait_for_segments(NAME, 1)

    # 1. unknown stream key: refused before any media is kept
    wrong_key = "wrong-key-abcdef123"
    bad = Publisher(f"{server.rtmp_url}/{wrong_key}")
    with pytest.raises(PublishRefused, match="BadName"):
        await bad.connect()
    await _closed_by_server(bad._r)
    assert server.rendition("wrong") is None

    # 2. a second publisher with a key that is live
    dup = Publisher(f"{server.rtmp_url}/{KEY}")
    with pytest.raises(PublishRefused, match="already publishing"):
        await dup.connect()
    await _closed_by_server(dup._r)

    # 3. a message larger than the limit (300 KB video frame > 256 KiB)
    big = Publisher(f"{server.rtmp_url}/{OTHER_KEY}")
    await big.connect()
    big.send_tag(FLVTag(VIDEO, 0, b"\x17\x01\x00\x00\x00" + bytes(300_000)))
    await _closed_by_server(big._r)

    # 4. garbage instead of a handshake
    reader, writer = await asyncio.open_connection("127.0.0.1", server.server.rtmp_port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await _closed_by_server(reader)
    writer.close()

    # The good stream never noticed: it keeps producing segments.
    await server.wait_for_segments(NAME, 2)
    assert not playing.done()
    playing.cancel()
    await good.close()

    log = caplog.text
    assert "publish refused: unknown stream key" in log
    assert "publish refused: stream 'good' is already live" in log
    assert "exceeds the limit of 262144 bytes" in log
    assert "not an RTMP handshake" in log
    # Stream keys are secrets: never in a log line, not even a wrong one.
    assert wrong_key not in log and KEY not in log and OTHER_KEY not in log


async def test_limit_handshake_timeout(make_server, caplog):
    caplog.set_level(logging.INFO, logger="sfstream")
    server = await make_server(rtmp_handshake_timeout=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.server.rtmp_port)
    writer.write(b"\x03" + bytes(100))  # C0 and a fraction of C1, then silence
    await _closed_by_server(reader)
    writer.close()
    assert "handshake not completed within 0.3 s" in caplog.text


async def test_limit_idle_timeout(make_server, caplog):
    caplog.set_level(logging.INFO, logger="sfstream")
    server = await make_server(rtmp_idle_timeout=0.5)
    pub = Publisher(f"{server.rtmp_url}/{KEY}")
    await pub.connect()  # publishing, then no data at all
    await _closed_by_server(pub._r)
    assert "no data for 0.5 s" in caplog.text
    # The idle publish is off the registry (the key may publish again) and its playlist
    # waits out the reconnect grace period rather than staying live forever.
    assert server.server.app[REGISTRY].get(NAME) is None
    assert server.server.app[HLS_OUTPUT].get(NAME).waiting_for_publisher


async def test_limit_max_connections(make_server, caplog):
    caplog.set_level(logging.INFO, logger="sfstream")
    server = await make_server(rtmp_max_connections=2)
    first = Publisher(f"{server.rtmp_url}/{KEY}")
    second = Publisher(f"{server.rtmp_url}/{OTHER_KEY}")
    await first.connect()
    await second.connect()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.server.rtmp_port)
    writer.write(handshake.client_hello())
    await _closed_by_server(reader)
    writer.close()
    assert "connection limit of 2 reached" in caplog.text
    # The two accepted connections are unaffected.
    assert {s.live.name for s in server.server.app[RTMP_SERVER].sessions if s.live} == {"good", "other"}
    await first.close()
    await second.close()


async def test_limit_max_chunk_size(make_server, caplog):
    caplog.set_level(logging.INFO, logger="sfstream")
    server = await make_server(rtmp_max_chunk_size=4096)
    pub = Publisher(f"{server.rtmp_url}/{KEY}", chunk_size=8192)
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await pub.connect()
    assert "chunk size 8192 exceeds the limit of 4096" in caplog.text


async def test_limit_max_message_size_before_body(make_server, caplog):
    """The limit applies at the chunk header: the body is never buffered."""
    caplog.set_level(logging.INFO, logger="sfstream")
    server = await make_server(rtmp_max_message_size=1000)
    pub = Publisher(f"{server.rtmp_url}/{KEY}")
    await pub.connect()
    # Only the first chunk of a 5000-byte message: the header already says 5000.
    pub.send_raw(pub.writer.write(6, 0, VIDEO, pub.stream_id, b"\x17\x01" + bytes(4998))[:200])
    await _closed_by_server(pub._r)
    assert "message of 5000 bytes exceeds the limit of 1000 bytes" in caplog.text


async def test_wrong_application_is_rejected(server, caplog):
    caplog.set_level(logging.INFO, logger="sfstream")
    pub = Publisher(f"rtmp://127.0.0.1:{server.server.rtmp_port}/other/{KEY}")
    with pytest.raises(PublishRefused, match="Connect.Rejected"):
        await pub.connect()
    assert "connect to unknown application 'other'" in caplog.text


async def test_malformed_media_closes_only_that_publisher(server, test_flv, caplog):
    caplog.set_level(logging.INFO, logger="sfstream")
    good = Publisher(f"{server.rtmp_url}/{KEY}")
    await good.connect()
    playing = asyncio.ensure_future(good.play(read_flv(test_flv.read_bytes()), realtime=True, loops=20))
    await server.wait_for_segments(NAME, 1)

    bad = Publisher(f"{server.rtmp_url}/{OTHER_KEY}")
    await bad.connect()
    # An AVC sequence header whose AVCDecoderConfigurationRecord is garbage.
    bad.send_tag(FLVTag(VIDEO, 0, b"\x17\x00\x00\x00\x00" + b"\xff" * 12))
    await _closed_by_server(bad._r)
    assert "closed: invalid media:" in caplog.text

    await server.wait_for_segments(NAME, 1)
    assert not playing.done()
    playing.cancel()
    await good.close()
