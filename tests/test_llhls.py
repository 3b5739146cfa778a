"""LL-HLS conformance during a live run (draft-pantos-hls-rfc8216bis).

A simulated player does what hls.js does in low-latency mode (blocking playlist
reloads following the preload hint, part fetches); every playlist it is served
is parsed with the independent `m3u8` parser and checked against the rules.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import re

import aiohttp
import m3u8
import pytest

from sfstream.hls.routes import HLS_OUTPUT
from sfstream.rtmp.client import Publisher, read_flv

from .conftest import KEY, NAME, require, run, streams_by_type

pytestmark = pytest.mark.e2e
PART_URI = re.compile(r"part-([0-9a-f]+)-(\d+)\.(\d+)\.m4s")
SEG_URI = re.compile(r"seg-([0-9a-f]+)-(\d+)\.m4s")


def attrs(text: str, tag: str) -> dict[str, str]:
    line = next(l for l in text.splitlines() if l.startswith(tag + ":"))
    return dict(re.findall(r'([A-Z-]+)=("[^"]*"|[^,]*)', line.split(":", 1)[1]))


def check_playlist(text: str, *, skipped_expected: bool = False) -> m3u8.M3U8:
    """Every rule of the issue that a single playlist can show."""
    pl = m3u8.loads(text)
    assert pl.version == 9
    td = pl.target_duration
    sc = attrs(text, "#EXT-X-SERVER-CONTROL")
    part_target = float(attrs(text, "#EXT-X-PART-INF")["PART-TARGET"])
    assert sc["CAN-BLOCK-RELOAD"] == "YES"
    assert float(sc["PART-HOLD-BACK"]) >= 3 * part_target - 1e-6
    assert float(sc["HOLD-BACK"]) >= 3 * td
    assert float(sc["CAN-SKIP-UNTIL"]) >= 6 * td
    assert 0.2 * 0.85 <= part_target <= 0.25  # configured 0.2 s, rounded to whole frames

    msn = pl.media_sequence + (pl.skip.skipped_segments if pl.skip else 0)
    total = sum(s.duration or sum(p.duration for p in s.parts) for s in pl.segments)
    elapsed = 0.0
    last_position = None
    # Every segment, the in-progress one too, carries EXT-X-PROGRAM-DATE-TIME (the m3u8
    # parser attaches it to complete segments only, so count the tags as well).
    assert text.count("#EXT-X-PROGRAM-DATE-TIME:") == len(pl.segments)
    for i, seg in enumerate(pl.segments):
        assert seg.program_date_time is not None or not seg.uri
        seg_duration = seg.duration if seg.uri else sum(p.duration for p in seg.parts)
        if seg.uri:  # a complete segment
            assert SEG_URI.fullmatch(seg.uri).group(2) == str(msn)
            assert round(seg.duration) <= td
        else:
            assert i == len(pl.segments) - 1, "only the last segment may be in progress"
        if seg.parts:
            # Parts only for the newest segments: within 3 target durations of the end.
            assert total - elapsed - seg_duration < 3 * td + 1e-6
            indexes = [int(PART_URI.fullmatch(p.uri).group(3)) for p in seg.parts]
            assert indexes == list(range(len(seg.parts)))  # continuity within the segment
            assert all(int(PART_URI.fullmatch(p.uri).group(2)) == msn for p in seg.parts)
            assert seg.parts[0].independent  # segments start with a keyframe
            for j, p in enumerate(seg.parts):
                assert p.duration <= part_target + 1e-9
                is_last = j == len(seg.parts) - 1
                if not p.independent and not (is_last and seg.uri):
                    assert p.duration >= 0.85 * part_target - 1e-6
            if seg.uri:
                assert math.isclose(sum(p.duration for p in seg.parts), seg.duration, abs_tol=1e-4)
            last_position = (msn, len(seg.parts) - 1, bool(seg.uri))
        elapsed += seg_duration
        msn += 1
    if not pl.is_endlist:
        hint = attrs(text, "#EXT-X-PRELOAD-HINT")
        assert hint["TYPE"] == "PART"
        m = PART_URI.fullmatch(hint["URI"].strip('"'))
        hinted = (int(m.group(2)), int(m.group(3)))
        if last_position is not None:
            last_msn, last_part, complete = last_position
            assert hinted == ((last_msn + 1, 0) if complete else (last_msn, last_part + 1))
    if skipped_expected:
        assert pl.skip is not None and pl.skip.skipped_segments > 0
    return pl


@pytest.fixture
async def live(make_server, test_flv):
    """A server with 1 s segments and a publisher playing in real time."""
    server = await make_server(hls_segment_duration=1.0, hls_window=10)
    pub = Publisher(f"{server.rtmp_url}/{KEY}")
    await pub.connect()
    playing = asyncio.ensure_future(pub.play(read_flv(test_flv.read_bytes()), realtime=True, loops=30))
    r = await server.wait_for_stream(NAME)
    assert await r.wait_until(lambda: len(r.segmenter.segments) >= 2, 20)
    yield server, pub
    playing.cancel()
    await pub.close()


async def test_player_loop_conformance(live):
    server, _ = live
    base = f"{server.http_url}/hls/{NAME}/source/"
    seen_parts = 0
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "media.m3u8") as resp:
            assert resp.headers["Cache-Control"] == "no-cache"
            text = await resp.text()
        pl = check_playlist(text)
        # Follow the preload hint like hls.js: ask for the hinted part, block on the playlist.
        for _ in range(25):
            hint = PART_URI.fullmatch(attrs(text, "#EXT-X-PRELOAD-HINT")["URI"].strip('"'))
            msn, part = int(hint.group(2)), int(hint.group(3))
            part_req = asyncio.ensure_future(http.get(base + hint.group(0)))
            async with http.get(base + f"media.m3u8?_HLS_msn={msn}&_HLS_part={part}") as resp:
                assert resp.status == 200
                assert "max-age" in resp.headers["Cache-Control"]
                text = await resp.text()
            pl = check_playlist(text)
            # The blocking answer holds the requested part (or a later one).
            uris = [p.uri for s in pl.segments for p in s.parts]
            later = [u for u in uris if tuple(map(int, PART_URI.fullmatch(u).groups()[1:])) >= (msn, part)]
            assert later, f"blocking reload for {msn}.{part} answered without it"
            async with await part_req as resp:
                if resp.status == 404:
                    # The hinted part never came: a keyframe ended segment `msn` first and
                    # the next part is part 0 of the next segment (hls.js ignores such 404s).
                    ended_at = next(s for s in pl.segments if s.uri and SEG_URI.fullmatch(s.uri).group(2) == str(msn))
                    assert len(ended_at.parts) == part
                    continue
                assert resp.status == 200  # the hinted part, held until complete
                assert resp.headers["Content-Type"] == "video/mp4"
                assert "immutable" in resp.headers["Cache-Control"]
                assert (await resp.read())[4:8] == b"moof"
            seen_parts += 1
        # The parts of a complete segment are exactly its bytes.
        seg = next(s for s in pl.segments if s.uri and s.parts)
        async with http.get(base + seg.uri) as resp:
            whole = await resp.read()
        pieces = []
        for p in seg.parts:
            async with http.get(base + p.uri) as resp:
                pieces.append(await resp.read())
        assert b"".join(pieces) == whole
    assert seen_parts >= 15  # most hints name a part that does come


async def test_delta_updates(live):
    server, _ = live
    base = f"{server.http_url}/hls/{NAME}/source/media.m3u8"
    r = server.rendition(NAME)
    # Skipping needs a playlist longer than CAN-SKIP-UNTIL (6 target durations).
    assert await r.wait_until(lambda: len(r.segmenter.segments) >= 8, 30)
    async with aiohttp.ClientSession() as http:
        for value in ("YES", "v2"):
            async with http.get(base + f"?_HLS_skip={value}") as resp:
                delta_text = await resp.text()
            async with http.get(base) as resp:
                full_text = await resp.text()
            delta = check_playlist(delta_text, skipped_expected=True)
            full = check_playlist(full_text)
            if full.segments[-1].uri != delta.segments[-1].uri or len(full.segments[-1].parts) != len(
                delta.segments[-1].parts
            ):
                continue  # a part landed between the two requests; the next value checks again
            skipped = delta.skip.skipped_segments
            assert delta.media_sequence == full.media_sequence
            assert len(delta.segments) + skipped == len(full.segments)
            assert [s.uri for s in delta.segments] == [s.uri for s in full.segments[skipped:]]
            # Exactly the segments wholly before the skip boundary are skipped.
            can_skip = float(attrs(full_text, "#EXT-X-SERVER-CONTROL")["CAN-SKIP-UNTIL"])
            durations = [s.duration or sum(p.duration for p in s.parts) for s in full.segments]
            boundary = sum(durations) - can_skip
            expected = 0
            while sum(durations[: expected + 1]) <= boundary + 1e-9:
                expected += 1
            assert skipped == expected
            assert delta.segments[0].init_section is not None  # EXT-X-MAP repeated after the skip


@pytest.mark.parametrize(
    "query, code",
    [
        ("_HLS_part=1", "invalid_directive"),  # _HLS_part without _HLS_msn
        ("_HLS_msn=abc", "invalid_directive"),
        ("_HLS_msn=-1", "invalid_directive"),
        ("_HLS_msn=%C2%B2", "invalid_directive"),  # "²" is a digit to str.isdigit(), not to int()
        ("_HLS_msn=99999999999999999999", "invalid_directive"),
        ("_HLS_skip=NO", "invalid_directive"),
        ("_HLS_msn=100000", "msn_too_far"),  # beyond last + 2
    ],
)
async def test_bad_directives_are_400(live, query, code):
    server, _ = live
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.http_url}/hls/{NAME}/source/media.m3u8?{query}") as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == code


async def test_part_beyond_advance_limit_is_400(live):
    server, _ = live
    r = server.rendition(NAME)
    msn, part = r.segmenter.next_part_position()
    limit = int(3 / r.segmenter.part_target_used)
    async with aiohttp.ClientSession() as http:
        url = f"{server.http_url}/hls/{NAME}/source/media.m3u8?_HLS_msn={msn}&_HLS_part={part + limit + 1}"
        async with http.get(url) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "part_too_far"
        # A part that is not the next one cannot be waited for: 404 at once.
        token = server.server.app[HLS_OUTPUT].get(NAME).token
        async with http.get(f"{server.http_url}/hls/{NAME}/source/part-{token}-{msn + 5}.0.m4s") as resp:
            assert resp.status == 404


async def test_blocking_request_gives_503_after_three_target_durations(make_server, test_flv):
    server = await make_server(hls_segment_duration=1.0)
    pub = Publisher(f"{server.rtmp_url}/{KEY}")
    await pub.connect()
    tags = read_flv(test_flv.read_bytes())
    await pub.play(tags[: len(tags) // 2], realtime=False)  # then the encoder stalls
    r = await server.wait_for_stream(NAME)
    assert await r.wait_until(lambda: len(r.segmenter.segments) >= 1, 10)
    msn = r.segmenter.next_msn + 1
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        started = loop.time()
        async with http.get(f"{server.http_url}/hls/{NAME}/source/media.m3u8?_HLS_msn={msn}") as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["code"] == "not_yet_available"
        # Three target durations of 1 s (measured on the loop clock; not a timing benchmark).
        assert loop.time() - started >= 3 * 1 - 0.1
    await pub.close()


async def test_directives_ignored_after_endlist(server, test_flv):
    pub = Publisher(f"{server.rtmp_url}/{KEY}")
    await pub.connect()
    await pub.play(read_flv(test_flv.read_bytes()), realtime=False)
    await pub.close()
    r = await server.wait_for_stream(NAME)
    assert await r.wait_until(lambda: r.segmenter.ended, 10)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.http_url}/hls/{NAME}/source/media.m3u8?_HLS_msn=9999&_HLS_part=3") as resp:
            assert resp.status == 200
            text = await resp.text()
    pl = m3u8.loads(text)
    assert pl.is_endlist and "#EXT-X-PRELOAD-HINT" not in text


async def test_blocked_waiters_share_one_wakeup_and_one_render(live):
    """Many blocking requests for the next part: one render of the playlist serves them all."""
    server, _ = live
    r = server.rendition(NAME)
    stream = server.server.app[HLS_OUTPUT].get(NAME)
    msn, part = r.segmenter.next_part_position()
    renders = []
    original = r.playlist_bytes

    def counting(token, skip=False):
        fresh = skip not in r._playlists
        body = original(token, skip)
        if fresh:
            renders.append(body)
        return body

    r.playlist_bytes = counting
    url = f"{server.http_url}/hls/{NAME}/source/media.m3u8?_HLS_msn={msn}&_HLS_part={part}"
    async with aiohttp.ClientSession() as http:

        async def one() -> str:
            async with http.get(url) as resp:
                assert resp.status == 200
                return await resp.text()

        bodies = await asyncio.gather(*(one() for _ in range(50)))
    assert stream.token in bodies[0]
    # All 50 were answered after the part appeared; at most a part or two more landed
    # while they were being answered, so only that many renders happened, not 50.
    assert 1 <= len(renders) <= 3
    assert len(set(bodies)) == len(renders)


async def test_ffprobe_reads_the_live_ll_playlist(live):
    server, _ = live
    # No -count_frames: a live playlist has no end to count to.
    code, out, err = await run(
        require("ffprobe"), "-v", "error", "-show_streams", "-of", "json", f"{server.http_url}/hls/{NAME}/index.m3u8"
    )
    assert code == 0, err.decode(errors="replace")
    streams = streams_by_type(json.loads(out))
    assert streams["video"]["codec_name"] == "h264"
    assert (streams["video"]["width"], streams["video"]["height"]) == (640, 360)
    assert streams["audio"]["codec_name"] == "aac"


async def test_reconnect_within_grace_continues_with_discontinuity(make_server, test_flv, caplog):
    caplog.set_level(logging.INFO, logger="sfstream")
    server = await make_server(hls_segment_duration=1.0, hls_reconnect_grace=30.0)
    tags = read_flv(test_flv.read_bytes())
    first = Publisher(f"{server.rtmp_url}/{KEY}")
    await first.connect()
    await first.play(tags, realtime=False)
    first._w.transport.abort()  # the encoder's connection drops: no FCUnpublish
    r = await server.wait_for_stream(NAME)
    stream = server.server.app[HLS_OUTPUT].get(NAME)
    assert await r.wait_until(lambda: stream.waiting_for_publisher, 10)
    before = r.segmenter.next_msn
    url = f"{server.http_url}/hls/{NAME}/source/media.m3u8"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert "#EXT-X-ENDLIST" not in await resp.text()  # players keep waiting
        second = Publisher(f"{server.rtmp_url}/{KEY}")
        await second.connect()
        await second.play(tags, realtime=False)
        await second.close()
        assert await r.wait_until(lambda: r.segmenter.ended, 10)
        async with http.get(url) as resp:
            text = await resp.text()
    pl = m3u8.loads(text)
    check_playlist(text)
    msns = [int(SEG_URI.fullmatch(s.uri).group(2)) for s in pl.segments]
    assert msns == list(range(msns[0], msns[0] + len(msns)))  # one sequence across the reconnect
    resumed = [s for s in pl.segments if s.discontinuity]
    assert len(resumed) == 1 and int(SEG_URI.fullmatch(resumed[0].uri).group(2)) == before
    assert "publisher returned" in caplog.text


async def test_after_grace_the_playlist_ends(make_server, test_flv):
    server = await make_server(hls_segment_duration=1.0, hls_reconnect_grace=0.5)
    pub = Publisher(f"{server.rtmp_url}/{KEY}")
    await pub.connect()
    await pub.play(read_flv(test_flv.read_bytes()), realtime=False)
    pub._w.transport.abort()
    r = await server.wait_for_stream(NAME)
    assert await r.wait_until(lambda: r.segmenter.ended, 10)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.http_url}/hls/{NAME}/source/media.m3u8") as resp:
            assert "#EXT-X-ENDLIST" in await resp.text()
