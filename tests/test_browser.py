"""A real browser watches the stream: headless Chromium (Debian's) playing our HLS with hls.js.

tests/browser/play.mjs drives the browser (playwright-core) and reports one JSON object: a sample
per second (currentTime, hls.latency, playingDate, ...), every hls.js error, how many fragments and
parts hls.js loaded, and the playlist details hls.js parsed. scripts/test.sh installs Chromium,
Node.js and the npm packages (npm ci in tests/browser).
"""
from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from sfstream.hls.routes import HLS_OUTPUT

from .conftest import KEY, NAME, require

pytestmark = pytest.mark.e2e

BROWSER_DIR = Path(__file__).with_name("browser")
PLAY = BROWSER_DIR / "play.mjs"
CHROMIUM = "/usr/bin/chromium"
PLAY_SECONDS = 30


def require_browser() -> str:
    node = require("node")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing; the test command (scripts/test.sh) installs Debian's chromium")
    for package in ("playwright-core", "hls.js"):
        if not (BROWSER_DIR / "node_modules" / package).is_dir():
            pytest.fail(f"{package} is not installed in {BROWSER_DIR}; scripts/test.sh runs npm ci there")
    return node


@asynccontextmanager
async def publishing(server, seconds: float, size: str = "640x360", preset: str = "veryfast"):
    """ffmpeg publishes a test pattern in real time for `seconds`; always stopped and reaped on exit."""
    proc = await asyncio.create_subprocess_exec(
        require("ffmpeg"), "-nostdin", "-v", "error", "-re",
        "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
        "-t", str(seconds),
        "-c:v", "libx264", "-preset", preset, "-tune", "zerolatency", "-g", "30", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "96k", "-f", "flv", f"{server.rtmp_url}/{KEY}",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def play(url: str, seconds: int = PLAY_SECONDS, *args: str) -> dict:
    """Run play.mjs and return its report.

    play.mjs has its own hard timeout (seconds + 45) and closes Chromium itself; should ours fire first we
    send SIGTERM, which makes it close the browser gracefully (a SIGKILLed node would orphan Chromium,
    and PID 1 here does not reap orphans).
    """
    proc = await asyncio.create_subprocess_exec(
        require_browser(), str(PLAY), "--url", url, "--seconds", str(seconds), *args,
        cwd=BROWSER_DIR, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    communicate = asyncio.ensure_future(proc.communicate())
    try:
        out, err = await asyncio.wait_for(asyncio.shield(communicate), seconds + 60)
    except asyncio.TimeoutError:
        proc.terminate()
        try:
            await asyncio.wait_for(asyncio.shield(communicate), 20)
        except asyncio.TimeoutError:
            proc.kill()
        await communicate
        pytest.fail(f"play.mjs did not finish within {seconds + 60} s")
    finally:
        if proc.returncode is None:  # cancelled: stop it the gentle way, and reap it
            proc.terminate()
            await proc.wait()
    stderr = err.decode(errors="replace")
    assert proc.returncode == 0, f"play.mjs failed ({proc.returncode}): {stderr}\n{out.decode(errors='replace')}"
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["harnessOk"], f"harness error: {report['harnessError']}\n{stderr}"
    return report


async def watch(server, seconds: int = PLAY_SECONDS, *args: str) -> dict:
    """Publish with ffmpeg (outlasting the playback), then let hls.js in Chromium play it for `seconds`."""
    require_browser()
    async with publishing(server, seconds + 30) as ffmpeg:
        wait = asyncio.ensure_future(server.wait_for_segments(NAME, 2, timeout=15))
        exited = asyncio.ensure_future(ffmpeg.wait())
        await asyncio.wait({wait, exited}, return_when=asyncio.FIRST_COMPLETED)
        exited.cancel()
        if not wait.done():
            wait.cancel()
            pytest.fail(f"ffmpeg exited ({ffmpeg.returncode}) before the stream had segments")
        wait.result()
        report = await play(f"{server.http_url}/hls/{NAME}/index.m3u8", seconds, *args)
        assert ffmpeg.returncode is None, "the publisher ended during playback"
    return report


def playback_summary(report: dict, *more: str) -> str:
    """What to print when an assertion fails: the summary, the errors and a few samples (and `more` keys)."""
    keys = ("summary", "errors", "frags", "levelDetails", "video", "console", "pageErrors", *more)
    return json.dumps(
        {k: report.get(k) for k in keys} | {"samples": report["samples"][:3] + report["samples"][-3:]},
        indent=1,
    )


def assert_plays_live(report: dict, seconds: int = PLAY_SECONDS) -> None:
    info = playback_summary(report)
    assert report["hlsSupported"], "hls.js says MSE is not supported: " + info
    assert not report["pageCrashed"], info
    fatal = [e for e in report["errors"] if e["fatal"]]
    assert not fatal, f"fatal hls.js errors: {fatal}\n{info}"

    # The multivariant playlist's variant, as hls.js parsed it.
    levels = report["manifest"]["levels"]
    assert [(lv["width"], lv["height"]) for lv in levels] == [(640, 360)], info
    assert levels[0]["videoCodec"].startswith("avc1.") and levels[0]["audioCodec"].startswith("mp4a."), info

    # The video element really played: currentTime advanced (nearly) in real time, and still does.
    samples = report["samples"]
    assert len(samples) == seconds, info
    playing = [s for s in samples if s["currentTime"] > 0]
    assert playing, "currentTime never moved: " + info
    advanced = playing[-1]["currentTime"] - playing[0]["currentTime"]
    assert advanced >= seconds - 10, f"currentTime advanced only {advanced:.1f} s in {seconds} s: {info}"
    last = samples[-1]
    assert not last["paused"] and last["readyState"] >= 3, info  # HAVE_FUTURE_DATA: playing at the end

    # Live all along: no EXT-X-ENDLIST in any playlist load, and hls.js measures a latency from the edge.
    assert report["levelDetails"]["first"]["live"] is True, info
    assert report["endlist"] is False, info
    assert report["levelDetails"]["loaded"] >= seconds // 2, "the live playlist was not reloaded: " + info
    assert all(s["latency"] is not None for s in playing), info
    # EXT-X-PROGRAM-DATE-TIME is on every segment, so hls.js knows the wall-clock time of what it plays.
    assert report["levelDetails"]["first"]["hasProgramDateTime"] is True, info
    assert playing[-1]["playingDate"] is not None, info
    # Loose: a regression to "far behind the live edge" shows here; the tight LL bound is in the LL test.
    assert report["summary"]["latencyMedian"] < 10, info


async def test_hlsjs_plays_live_stream_in_chromium(server):
    """hls.js (low-latency mode on) plays the live fMP4 HLS in Chromium for 30 s without a fatal error."""
    report = await watch(server)
    assert_plays_live(report)
    loaded = report["frags"]["fragments"] + report["frags"]["parts"]  # LL mode loads parts
    assert loaded >= PLAY_SECONDS // 2, playback_summary(report)


async def test_hlsjs_plays_in_low_latency_mode(server):
    """With LL-HLS advertised, hls.js blocks on playlist reloads, loads parts and plays close to the edge."""
    report = await watch(server)
    assert_plays_live(report)
    info = playback_summary(report)
    first, last = report["levelDetails"]["first"], report["levelDetails"]["last"]
    for details in (first, last):
        assert details["canBlockReload"] is True, info  # EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES
        assert 0 < details["partTarget"] <= 1.0, info  # EXT-X-PART-INF:PART-TARGET (0.2 s by default)
        assert details["partListLength"] > 0, info  # EXT-X-PART lines at the live edge
    assert report["frags"]["parts"] > 0, "hls.js loaded no parts (FRAG_LOADED with data.part): " + info
    # hls.js aims at PART-HOLD-BACK from the edge (not 3 target durations): it stays in LL mode.
    # (How close it really gets is measured by benchmarks/latency.py, not asserted here.)
    targets = [s["targetLatency"] for s in report["samples"] if s["targetLatency"] is not None]
    assert targets and max(targets) < 3 * first["targetduration"], info


async def test_hlsjs_keeps_playing_across_publisher_reconnect(server):
    """The encoder's connection drops and it reconnects: EXT-X-DISCONTINUITY, and playback goes on."""
    require_browser()
    url = f"{server.http_url}/hls/{NAME}/index.m3u8"
    stream_output = server.server.app[HLS_OUTPUT]
    async with publishing(server, 90) as first:
        await server.wait_for_segments(NAME, 2, timeout=15)
        player = asyncio.ensure_future(play(url, PLAY_SECONDS))
        try:
            await server.wait_for_segments(NAME, 8, timeout=30)  # hls.js has been playing a while
            first.kill()  # no FCUnpublish: the connection just drops
            await first.wait()
            r = server.rendition(NAME)
            stream = stream_output.get(NAME)
            assert await r.wait_until(lambda: stream.waiting_for_publisher, 10)
            async with publishing(server, 90):
                report = await player
        finally:
            if not player.done():
                player.cancel()
    assert_plays_live(report)
    # One discontinuity in the stream's history: the reconnect (it may have left the window by now).
    seg = stream.renditions["source"].segmenter
    assert seg.discontinuities_before(seg.next_msn) == 1


# The ladder on (tests default to source only): a 1280x720 source gives source (720), 480p and 360p.
# ultrafast and no shedding, as in tests/test_transcode.py: a loaded machine changes timing, not outcomes.
LADDER = dict(ladder="480p,360p", transcode_preset="ultrafast", transcode_max_lag=1000.0,
              thumbnail_interval=0, hls_segment_duration=1.0)
LADDER_HEIGHTS = [720, 480, 360]
SWITCH_PLAY_SECONDS = 20
SWITCH_AT = 6


async def test_hlsjs_switches_rendition_when_told(make_server):
    """hls.js plays the ladder, and `hls.currentLevel = lowest` makes it load and play the 360p rendition."""
    require_browser()
    server = await make_server(**LADDER)
    async with publishing(server, SWITCH_PLAY_SECONDS + 45, size="1280x720", preset="ultrafast") as ffmpeg:
        # Every rendition has segments before the player starts, so the multivariant lists them all.
        source = await server.wait_for_segments(NAME, 2, timeout=30)
        stream = server.server.app[HLS_OUTPUT].get(NAME)
        expected = {"source", "480p", "360p"}
        ready = await source.wait_until(
            lambda: expected <= set(stream.renditions)
            and all(len(stream.renditions[n].segmenter.segments) >= 2 for n in expected),
            30,
        )
        assert ready, {n: len(r.segmenter.segments) for n, r in stream.renditions.items()}
        report = await play(
            f"{server.http_url}/hls/{NAME}/index.m3u8", SWITCH_PLAY_SECONDS,
            "--switch-to", "lowest", "--switch-at", str(SWITCH_AT),
            # Start on the top level: the switch to the lowest is then a real switch, whatever ABR does.
            "--hls-config", json.dumps({"startLevel": len(LADDER_HEIGHTS) - 1}),
        )
        assert ffmpeg.returncode is None, "the publisher ended during playback"

    info = playback_summary(report, "levels", "levelsUpdated", "levelSwitchRequests", "levelSwitches")
    assert report["hlsSupported"], info
    assert not report["pageCrashed"], info
    fatal = [e for e in report["errors"] if e["fatal"]]
    assert not fatal, f"fatal hls.js errors: {fatal}\n{info}"

    # hls.js parsed the whole ladder (hls.levels is sorted by bitrate: lowest first).
    levels = report["levels"]
    assert sorted((lv["height"] for lv in levels), reverse=True) == LADDER_HEIGHTS, info
    assert not report["levelsUpdated"], "hls.js dropped a level: " + info
    lowest = min(range(len(levels)), key=lambda i: levels[i]["height"])
    assert levels[lowest]["height"] == 360, info
    assert f"/hls/{NAME}/360p/" in levels[lowest]["url"], info  # our rendition names

    # The request went in while hls.js was on another level.
    [request] = report["levelSwitchRequests"]
    assert request["done"] and request["level"] == lowest and request["height"] == 360, info
    assert request["before"]["currentLevel"] != lowest, "nothing to switch: already on the lowest level: " + info
    assert request["after"]["autoLevelEnabled"] is False, info  # a manual level: ABR is off

    # hls.js switched to it (LEVEL_SWITCHED) and stayed there.
    switches = [s for s in report["levelSwitches"] if s["afterRequests"] >= 1]
    assert switches and switches[0]["level"] == lowest and switches[0]["height"] == 360, info
    assert all(s["level"] == lowest for s in switches), info

    # The main (muxed) fragments and parts: before the switch from other levels, after it from 360p,
    # and the player loaded parts (still low-latency mode) after the switch.
    assert report["fragLoadsDropped"] == 0, info
    main = [f for f in report["fragLoads"] if f["type"] == "main"]
    before = [f for f in main if f["afterRequests"] == 0]
    after = [f for f in main if f["afterRequests"] >= 1]
    loads = json.dumps([(f["afterRequests"], f["level"], f["sn"], f["part"]) for f in main])
    assert before and any(f["level"] != lowest for f in before), f"{loads}\n{info}"
    assert after, "nothing loaded after the switch: " + loads + "\n" + info
    on_lowest = [f for f in after if f["level"] == lowest]
    assert len(on_lowest) >= 5, f"{loads}\n{info}"
    # Once the first 360p load came in, every later load was 360p (an in-flight load of the old
    # level may still land right after the request).
    first = after.index(on_lowest[0])
    assert all(f["level"] == lowest for f in after[first:]), f"{loads}\n{info}"
    assert any(f["part"] is not None for f in on_lowest), "no parts of 360p loaded: " + loads + "\n" + info
    assert report["frags"]["parts"] > 0, info

    # The video element plays on after the switch, showing the 360p picture.
    samples = report["samples"]
    assert len(samples) == SWITCH_PLAY_SECONDS, info
    later = [s for s in samples if s["t"] > request["t"]]
    assert len(later) >= 2, info
    times = [s["currentTime"] for s in later]
    assert times[-1] > times[0] and times[-1] > request["currentTime"], f"currentTime stopped: {times}\n{info}"
    assert later[-1]["currentLevel"] == lowest, info
    assert not later[-1]["paused"] and later[-1]["readyState"] >= 3, info
    assert (later[-1]["videoWidth"], later[-1]["videoHeight"]) == (640, 360), info
    assert report["endlist"] is False, info
