"""The ladder for real: ffmpeg publishes, PyAV decodes, scales and encodes each rung in
threads, the LL-HLS packager serves every rendition; ffprobe and our fMP4 parser check it."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from urllib.parse import urljoin

import aiohttp
import av
import m3u8

from sfstream.broadcasts import BROADCASTS
from sfstream.hls.routes import HLS_OUTPUT
from sfstream.rtmp.client import FLVTag, Publisher, read_flv

from .conftest import KEY, NAME, require, run, streams_by_type
from .test_fmp4 import parse_fragment

# The server's encoders at ultrafast and no shedding, so a loaded test machine changes timing,
# not outcomes (shedding has its own test).
LADDER = dict(hls_segment_duration=1.0, transcode_preset="ultrafast", transcode_max_lag=1000.0,
              ladder="1080p,720p,480p", thumbnail_interval=10.0)


async def make_flv(tmp_path, size: str, seconds: float, name: str) -> bytes:
    path = tmp_path / f"{name}.flv"
    code, _, err = await run(
        require("ffmpeg"), "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
        "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "30", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-f", "flv", str(path),
    )
    assert code == 0, err.decode()
    return path.read_bytes()


async def publish(server, tags, *, realtime: bool = True) -> None:
    pub = Publisher(f"{server.rtmp_url}/{KEY}")
    await pub.connect()
    await pub.play(tags, realtime=realtime)
    await pub.close()


async def wait_ended(server, name: str = NAME) -> dict:
    stream = await server.server.app[HLS_OUTPUT].wait_for_stream(name, 30) or server.server.app[HLS_OUTPUT].get(name)
    for r in stream.renditions.values():
        assert await r.wait_until(lambda r=r: r.segmenter.ended, 60), r.name
    return stream.renditions


async def get(http, url: str) -> str:
    async with http.get(url) as resp:
        assert resp.status == 200, (url, resp.status)
        return await resp.text()


def video_starts(r, independent_only: bool) -> set[int]:
    """Decode times (90 kHz) at which a rendition's segments (or independent parts) start."""
    out = set()
    for seg in r.segmenter.segments:
        for part in seg.parts:
            if part.index == 0 or (independent_only and part.independent):
                _, trafs = parse_fragment(bytes(part.data))
                video = [t for t in trafs if t["track_id"] == 1]
                if video:
                    out.add(video[0]["base"])
    return out


async def test_1080p_source_gets_720p_and_480p_aligned(make_server, tmp_path):
    server = await make_server(**LADDER)
    tags = read_flv(await make_flv(tmp_path, "1920x1080", 5, "hd"))
    await publish(server, tags)
    renditions = await wait_ended(server)
    assert list(renditions) == ["source", "720p", "480p"]

    async with aiohttp.ClientSession() as http:
        url = f"{server.http_url}/hls/{NAME}/index.m3u8"
        master = m3u8.loads(await get(http, url))
        got = {(p.stream_info.resolution, p.stream_info.codecs.split(",")[0][:4]) for p in master.playlists}
        assert got == {((1920, 1080), "avc1"), ((1280, 720), "avc1"), ((854, 480), "avc1")}
        for p in master.playlists:
            assert "mp4a.40.2" in p.stream_info.codecs and p.stream_info.bandwidth > 0
            assert p.stream_info.average_bandwidth > 0
        bandwidth = {p.stream_info.resolution[1]: p.stream_info.bandwidth for p in master.playlists}
        assert bandwidth[480] < bandwidth[720]  # the rungs' VBV caps hold them apart
        for p in master.playlists:
            media = urljoin(url, p.uri)
            code, out, err = await run(require("ffprobe"), "-v", "error", "-show_streams", "-of", "json", media)
            assert code == 0, err.decode()
            streams = streams_by_type(json.loads(out))
            assert (streams["video"]["width"], streams["video"]["height"]) == p.stream_info.resolution
            assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "aac"
            assert "has_b_frames" not in streams["video"] or streams["video"]["has_b_frames"] == 0

    # segments and independent parts start at the same decode times in every rendition
    source = renditions["source"]
    for name in ("720p", "480p"):
        rung = renditions[name]
        assert [s.msn for s in rung.segmenter.segments] == [s.msn for s in source.segmenter.segments]
        assert video_starts(rung, False) == video_starts(source, False)
        assert video_starts(rung, True) == video_starts(source, True)


async def test_small_source_gets_no_rung_at_or_above_its_height(make_server, tmp_path):
    server = await make_server(**{**LADDER, "ladder": "720p,480p,360p"})
    await publish(server, read_flv(await make_flv(tmp_path, "854x480", 3, "sd")))
    renditions = await wait_ended(server)
    assert list(renditions) == ["source", "360p"]
    async with aiohttp.ClientSession() as http:
        master = m3u8.loads(await get(http, f"{server.http_url}/hls/{NAME}/index.m3u8"))
    assert sorted(p.stream_info.resolution for p in master.playlists) == [(640, 360), (854, 480)]


async def test_ladder_none_is_source_only(make_server, tmp_path):
    server = await make_server(**{**LADDER, "ladder": "none", "thumbnail_interval": 0})
    await publish(server, read_flv(await make_flv(tmp_path, "1280x720", 2, "hd")), realtime=False)
    assert list(await wait_ended(server)) == ["source"]


async def test_resolution_change_keeps_every_rendition_playing(make_server, tmp_path):
    server = await make_server(**{**LADDER, "ladder": "240p"})
    first = read_flv(await make_flv(tmp_path, "640x360", 3, "a"))
    offset = max(t.timestamp for t in first) + 33
    second = [FLVTag(t.type_id, t.timestamp + offset, t.body)
              for t in read_flv(await make_flv(tmp_path, "320x180", 3, "b"))]
    await publish(server, first + second)
    renditions = await wait_ended(server)
    assert list(renditions) == ["source", "240p"]
    rung = renditions["240p"].segmenter
    sizes = [(s.init.video.width, s.init.video.height) for s in rung.segments]
    assert sizes[0] == (426, 240) and sizes[-1] == (320, 180)  # never upscaled past the new source
    assert any(s.discontinuity for s in rung.segments)
    async with aiohttp.ClientSession() as http:
        url = f"{server.http_url}/hls/{NAME}/240p/media.m3u8"
        pl = m3u8.loads(await get(http, url))
        assert pl.is_endlist and len(pl.segments) == len(rung.segments)
    code, out, err = await run(require("ffprobe"), "-v", "error", "-count_frames", "-show_streams", "-of", "json", url)
    assert code == 0, err.decode()
    video = streams_by_type(json.loads(out))["video"]
    assert int(video["nb_read_frames"]) >= 170  # ~180 frames sent: the rung lost none to the change


async def test_thumbnails_are_jpegs_of_the_source_aspect_and_change(make_server, tmp_path):
    server = await make_server(**{**LADDER, "ladder": "none", "thumbnail_interval": 1.0})
    written: asyncio.Queue = asyncio.Queue()
    broadcasts = server.server.app[BROADCASTS]
    original = broadcasts.on_thumbnail

    def spy(name, path):
        written.put_nowait(path.read_bytes())
        original(name, path)

    broadcasts.on_thumbnail = spy
    publishing = asyncio.ensure_future(publish(server, read_flv(await make_flv(tmp_path, "1280x720", 4, "t"))))
    images = [await asyncio.wait_for(written.get(), 30) for _ in range(2)]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.http_url}/thumbnails/{NAME}.jpg") as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "image/jpeg"
            served = await resp.read()
    await publishing
    assert images[0] != images[1]  # the picture moves
    for data in (images[0], images[1], served):
        assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
        with av.open(__import__("io").BytesIO(data)) as container:
            frame = next(container.decode(video=0))
        assert (frame.width, frame.height) == (320, 180)  # 16:9 like the source


async def test_overload_sheds_the_tallest_rung(make_server, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sfstream")
    # Any lag is too much: the shedder must drop the rung, never the source.
    server = await make_server(**{**LADDER, "ladder": "360p", "transcode_max_lag": 0.000001})
    await publish(server, read_flv(await make_flv(tmp_path, "854x480", 3, "sd")))
    renditions = await wait_ended(server)
    assert renditions["360p"].shed
    assert "shedding rung 360p" in caplog.text
    assert len(renditions["source"].segmenter.segments) >= 2  # the source never waits for the ladder
    async with aiohttp.ClientSession() as http:
        master = m3u8.loads(await get(http, f"{server.http_url}/hls/{NAME}/index.m3u8"))
    assert [p.stream_info.resolution for p in master.playlists] == [(854, 480)]  # shed: not offered


async def test_admin_sets_a_users_ladder(api_factory, tmp_path):
    api = await api_factory(**{**LADDER, "thumbnail_interval": 0})
    admin = (await api.register("root_user"))["access_token"]  # the first account: an administrator
    bob = (await api.register("bob"))["access_token"]
    assert (await api.call("PUT", "/users/bob/ladder", token=bob, json={"ladder": "360p"}))[0] == 403
    status, err, _ = await api.call("PUT", "/users/bob/ladder", token=admin, json={"ladder": "999x"})
    assert status == 422 and "ladder" in err["error"]["fields"]
    assert (await api.call("PUT", "/users/nobody/ladder", token=admin, json={"ladder": None}))[0] == 404
    status, body, _ = await api.call("PUT", "/users/bob/ladder", token=admin, json={"ladder": "360p"})
    assert status == 200 and body == {"ladder": "360p"}

    status, key, _ = await api.call("GET", "/stream/key", token=bob)
    pub = Publisher(f"{key['rtmp_url']}/{key['stream_key']}")
    await pub.connect()
    playing = asyncio.ensure_future(pub.play(read_flv(await make_flv(tmp_path, "854x480", 4, "sd")), loops=10))
    hls = await api.server.app[HLS_OUTPUT].wait_for_stream("bob", 30)
    assert await hls.source.wait_until(lambda: len(hls.renditions) == 2 and hls.has_segments(), 30)
    stream_id = api.server.app[BROADCASTS].by_name["bob"].stream_id
    status, stream, _ = await api.call("GET", f"/streams/{stream_id}")
    assert status == 200
    # the server's default ladder (1080p,720p,480p) has nothing below a 480p source; bob's has 360p
    assert [(r["name"], r["width"], r["height"], r["active"]) for r in stream["renditions"]] == [
        ("source", 854, 480, True), ("360p", 640, 360, True)]
    playing.cancel()
    with contextlib.suppress(asyncio.CancelledError, ConnectionError):
        await playing
    await pub.close()
