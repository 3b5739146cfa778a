"""End to end: real encoders publish over RTMP, real parsers read our HLS."""
from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path

import aiohttp
import av
import m3u8
import pytest

from sfstream.rtmp.client import FLVTag, Publisher, read_flv

from .conftest import KEY, NAME, ffprobe, require, run, streams_by_type

pytestmark = pytest.mark.e2e


async def test_ffmpeg_publish_is_readable_by_ffprobe(server):
    """ffmpeg CLI publishes H.264 + AAC; ffprobe finds both, at the published size and length."""
    seconds = 5
    code, _, err = await run(
        require("ffmpeg"), "-v", "error", "-re",
        "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
        "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=44100",
        "-t", str(seconds),
        "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-g", "30", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-f", "flv", f"{server.rtmp_url}/{KEY}",
    )
    assert code == 0, err.decode(errors="replace")
    # The publisher is gone: the playlist is complete (ENDLIST) and holds everything sent.
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.http_url}/hls/{NAME}/source/media.m3u8") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/vnd.apple.mpegurl"
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
            text = await resp.text()
    pl = m3u8.loads(text)
    assert pl.is_endlist
    assert pl.target_duration >= 1
    assert all(seg.program_date_time is not None for seg in pl.segments)

    probe = await ffprobe(f"{server.http_url}/hls/{NAME}/index.m3u8")
    streams = streams_by_type(probe)
    video, audio = streams["video"], streams["audio"]
    assert video["codec_name"] == "h264"
    assert (video["width"], video["height"]) == (1280, 720)
    assert audio["codec_name"] == "aac"
    assert int(audio["sample_rate"]) == 44100
    assert int(video["nb_read_frames"]) == seconds * 30
    # "a duration within one segment of what was sent"
    assert abs(float(probe["format"]["duration"]) - seconds) <= 1.0


async def test_pyav_publisher(server):
    """PyAV (libav's own RTMP muxer, as an app embedding libav would publish)."""
    frames = 90
    script = Path(__file__).with_name("pyav_publish.py")
    code, _, err = await run(sys.executable, str(script), f"{server.rtmp_url}/{KEY}", str(frames), "320", "240")
    assert code == 0, err.decode(errors="replace")
    probe = await ffprobe(f"{server.http_url}/hls/{NAME}/index.m3u8")
    streams = streams_by_type(probe)
    assert "audio" not in streams  # a video-only publish gives a video-only rendition
    assert streams["video"]["codec_name"] == "h264"
    assert (streams["video"]["width"], streams["video"]["height"]) == (320, 240)
    assert int(streams["video"]["nb_read_frames"]) == frames


@pytest.mark.parametrize("chunk_size", [128, 4096])
async def test_publisher_chunk_sizes(server, test_flv, chunk_size):
    """Our replaying client with outgoing chunk size 128 (the RTMP default) and 4096."""
    tags = read_flv(test_flv.read_bytes())
    video_frames = sum(1 for t in tags if t.type_id == 9 and t.body[1] == 1)  # AVC NALU tags
    pub = Publisher(f"{server.rtmp_url}/{KEY}", chunk_size=chunk_size)
    await pub.connect()
    await pub.play(tags, realtime=False)
    await pub.close()
    r = await server.wait_for_stream(NAME)
    assert await r.wait_until(lambda: r.segmenter.ended, 10)

    probe = await ffprobe(f"{server.http_url}/hls/{NAME}/index.m3u8")
    streams = streams_by_type(probe)
    assert (streams["video"]["width"], streams["video"]["height"]) == (640, 360)
    assert int(streams["video"]["nb_read_frames"]) == video_frames
    assert int(streams["audio"]["sample_rate"]) == 48000
    assert abs(float(probe["format"]["duration"]) - 4.0) <= 1.0


async def test_segments_start_on_keyframes_and_parts_fit_target(server, test_flv):
    """Every segment begins with an IDR and decodes on its own (EXT-X-INDEPENDENT-SEGMENTS)."""
    pub = Publisher(f"{server.rtmp_url}/{KEY}")
    await pub.connect()
    await pub.play(read_flv(test_flv.read_bytes()), realtime=False)
    await pub.close()
    r = await server.wait_for_stream(NAME)
    assert await r.wait_until(lambda: r.segmenter.ended, 10)
    seg = r.segmenter
    init = seg.init.data
    assert len(seg.segments) >= 3
    for s in seg.segments:
        assert s.parts[0].independent
        for p in s.parts:
            assert p.duration <= seg.part_target_used + 1e-6
        # Decode the segment alone (init + segment): the first frame must be a keyframe.
        container = av.open(io.BytesIO(init + s.data), format="mp4")
        first = next(container.decode(video=0))
        assert first.key_frame
        container.close()


async def test_concurrent_streams_are_independent(server, test_flv):
    """Two publishers at once: two separate, complete renditions."""
    tags = read_flv(test_flv.read_bytes())

    async def publish(key: str) -> None:
        pub = Publisher(f"{server.rtmp_url}/{key}")
        await pub.connect()
        await pub.play(tags, realtime=False)
        await pub.close()

    await asyncio.gather(publish(KEY), publish("otherkey-0123456789"))
    for name in (NAME, "other"):
        r = await server.wait_for_stream(name) if server.rendition(name) is None else server.rendition(name)
        assert await r.wait_until(lambda: r.segmenter.ended, 10)
        probe = await ffprobe(f"{server.http_url}/hls/{name}/index.m3u8")
        assert int(streams_by_type(probe)["video"]["nb_read_frames"]) == 120


async def test_unknown_stream_is_404(server):
    async with aiohttp.ClientSession() as http:
        for path in ("/hls/nobody/index.m3u8", "/hls/nobody/source/media.m3u8", "/hls/nobody/source/seg-0-0.m4s"):
            async with http.get(server.http_url + path) as resp:
                assert resp.status == 404
                body = await resp.json()
                assert body["error"]["code"] == "not_found"
        async with http.options(server.http_url + "/hls/x/index.m3u8") as resp:
            assert resp.status == 204
            assert "GET" in resp.headers["Access-Control-Allow-Methods"]


async def test_playlist_requested_before_first_segment_waits(server, test_flv):
    """A player that opens the URL as the stream starts gets a playlist, not a 404."""
    pub = Publisher(f"{server.rtmp_url}/{KEY}")
    await pub.connect()  # live, but no media yet
    async with aiohttp.ClientSession() as http:
        request = asyncio.ensure_future(http.get(f"{server.http_url}/hls/{NAME}/index.m3u8"))
        play = asyncio.ensure_future(pub.play(read_flv(test_flv.read_bytes()), realtime=True))
        resp = await request
        assert resp.status == 200
        text = await resp.text()
        assert "#EXT-X-STREAM-INF" in text and 'CODECS="avc1.' in text and "RESOLUTION=640x360" in text
        await play
    await pub.close()


async def test_segment_and_init_headers(server, test_flv):
    pub = Publisher(f"{server.rtmp_url}/{KEY}")
    await pub.connect()
    await pub.play(read_flv(test_flv.read_bytes()), realtime=False)
    await pub.close()
    async with aiohttp.ClientSession() as http:
        base = f"{server.http_url}/hls/{NAME}/source/"
        async with http.get(base + "media.m3u8") as resp:
            pl = m3u8.loads(await resp.text())
        for uri in (pl.segments[0].init_section.uri, pl.segments[0].uri):
            async with http.get(base + uri) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "video/mp4"
                assert "immutable" in resp.headers["Cache-Control"]
        # A URI of another broadcast (other token) is not served as if it were this one.
        async with http.get(base + "seg-00000000-0.m4s") as resp:
            assert resp.status == 404


async def test_resolution_change_mid_stream(server, test_flv, tmp_path):
    """A new AVC sequence header mid-stream: new init section after EXT-X-DISCONTINUITY."""
    small = tmp_path / "small.flv"
    code, _, err = await run(
        require("ffmpeg"), "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30",
        "-f", "lavfi", "-i", "sine=sample_rate=48000", "-t", "3", "-c:v", "libx264", "-preset", "veryfast",
        "-g", "30", "-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "flv", str(small),
    )
    assert code == 0, err.decode()
    first = read_flv(test_flv.read_bytes())
    offset = max(t.timestamp for t in first) + 33
    second = [FLVTag(t.type_id, t.timestamp + offset, t.body) for t in read_flv(small.read_bytes())]
    pub = Publisher(f"{server.rtmp_url}/{KEY}")
    await pub.connect()
    await pub.play(first + second, realtime=False)
    await pub.close()
    r = await server.wait_for_stream(NAME)
    assert await r.wait_until(lambda: r.segmenter.ended, 10)

    async with aiohttp.ClientSession() as http:
        base = f"{server.http_url}/hls/{NAME}/source/"
        async with http.get(base + "media.m3u8") as resp:
            text = await resp.text()
        pl = m3u8.loads(text)
        assert text.count("#EXT-X-DISCONTINUITY\n") == 1
        maps = [seg.init_section.uri for seg in pl.segments]
        switch = next(i for i, uri in enumerate(maps) if uri != maps[0])
        assert [seg.discontinuity for seg in pl.segments] == [i == switch for i in range(len(maps))]
        assert len(set(maps)) == 2
        for i, seg in enumerate(pl.segments):
            async with http.get(base + seg.init_section.uri) as resp:
                init = await resp.read()
            async with http.get(base + seg.uri) as resp:
                data = await resp.read()
            with av.open(io.BytesIO(init + data), format="mp4") as c:
                frame = next(c.decode(video=0))
            assert (frame.width, frame.height) == ((640, 360) if i < switch else (320, 180))
