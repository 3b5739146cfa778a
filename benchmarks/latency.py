#!/usr/bin/env python3
"""Latency benchmark: one live stream, RTMP in -> LL-HLS out -> hls.js in headless Chromium.

One run: the sfstream server runs *in this process* (uvloop when available), so
the timings of the real server's parts can be read directly; ffmpeg publishes a
test pattern in real time (`-re`, libx264 zerolatency + AAC) for the whole run;
once the stream has two segments, tests/browser/play.mjs plays it with hls.js
(lowLatencyMode) in Debian's Chromium and samples the player once a second.
Samples and parts from the first `--warmup` seconds of playback are dropped;
the next `--seconds` (>= 60 by default) are measured.

What is measured (every figure is a median / p95 / max over the window):

Player (hls.js in Chromium), one sample a second:
  hls.latency      hls.js's own figure: the live edge of the playlist (end of the
                   newest part, in media time) minus video.currentTime. It does
                   not see the encoder, ingest, or the wait for a part to fill.
  wallLatency      Date.now() - hls.playingDate: the wall clock when the sample is
                   taken minus the EXT-X-PROGRAM-DATE-TIME of the frame on screen.
                   The server anchors PDT to the wall clock when the stream's first
                   segment opens and then advances it with media time.
  arrival->screen  wallLatency corrected by the PDT skew (below): from the arrival
                   of a frame's RTMP message at the server to that frame on screen.
  glass-to-glass   from the moment ffmpeg's -re clock releases a frame (our
                   "capture": the source is synthetic) to that frame on screen:
                   includes the encoder + RTMP leg. The -re clock origin T0 is not
                   observable directly; it is taken as min over frames of
                   (arrival - dts), so the encode time of the *fastest* frame
                   (a few ms) is left out: a slight underestimate.
  The arithmetic: PDT(dts) = C + dts/1000 (C from the segments' PDT and their
  first frame's dts); arrival->screen = wallLatency + C - arrival_origin, where the
  skew is arrival_wall - PDT per frame; glass-to-glass = wallLatency + C - T0.

Server (read from the real server's PartialSegment fields):
  part wait        published_at - first_arrival for every part: from the arrival
                   of the RTMP message holding the part's first packet to the
                   moment the part became servable (listed in the playlist,
                   blocked requests released). The first frame waits longest, so
                   this is the worst frame of each part. It includes waiting for
                   the part to fill (~ one part duration).
  part overhead    part wait - part duration: the delay beyond filling the part.
  frame wait       (instrumented) for *every* video frame: published_at of the
                   part holding it - arrival of its RTMP message. The benchmark
                   wraps the segmenter's `_add_video` on the one running instance
                   to learn which part each frame went into (the server code is
                   not changed). Its per-part max is the exact worst frame; the
                   server's `first_arrival` can be an audio message that arrived
                   just after the part's first video frame (video is held one
                   frame until the next one gives its duration), so "part wait"
                   may read up to one frame interval low; both are reported.
  encoder leg      arrival_wall - dts/1000 - T0 per video frame: how far behind
                   its -re schedule a frame reached the server (encoder + RTMP
                   send + waiting in the socket while the event loop was busy).

Goals (from the issue): glass-to-glass <= 1.5 s p50 on passthrough; server side
p95 <= part target + 50 ms (checked against the part wait).

Run by hand (never by CI), e.g.:

    python benchmarks/latency.py --seconds 60                         # 2 s segments, GOP 60
    python benchmarks/latency.py --seconds 60 --segment 1 --gop 30    # 1 s segments

The table is printed; everything (settings, machine, every sample and part) goes
to benchmarks/results/latency-<timestamp>.json. See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py)

from sfstream.app import Server  # noqa: E402
from sfstream.config import Settings, parse_stream_keys  # noqa: E402
from sfstream.hls.routes import HLS_OUTPUT  # noqa: E402

NAME = "bench"
KEY = "latencykey-0123456789"
BROWSER_DIR = common.REPO_DIR / "tests" / "browser"
PLAY = BROWSER_DIR / "play.mjs"
CHROMIUM = "/usr/bin/chromium"


# =========================================================================== child processes


class Child:
    """An asyncio subprocess in its own session that dies with us (PR_SET_PDEATHSIG) and is always reaped."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, stop_timeout: float) -> None:
        self.name = name
        self.proc = proc
        self.stop_timeout = stop_timeout

    @classmethod
    async def start(cls, name: str, cmd: list[str], *, stop_timeout: float = 10.0, **kw) -> "Child":
        kw.setdefault("stdin", asyncio.subprocess.DEVNULL)
        proc = await asyncio.create_subprocess_exec(
            *cmd, start_new_session=True, preexec_fn=common._die_with_parent, **kw
        )
        return cls(name, proc, stop_timeout)

    async def stop(self) -> int | None:
        """SIGTERM, wait, and only then SIGKILL. node closes Chromium itself on SIGTERM (play.mjs)."""
        p = self.proc
        if p.returncode is None:
            try:
                p.terminate()
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(p.wait(), self.stop_timeout)
            except asyncio.TimeoutError:
                print(f"  {self.name} (pid {p.pid}) did not stop in {self.stop_timeout:g} s: SIGKILL", file=sys.stderr)
                try:
                    p.kill()
                except ProcessLookupError:
                    pass
                await p.wait()
        return p.returncode


def ffmpeg_cmd(args, url: str, seconds: float) -> list[str]:
    return [
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "warning", "-re",
        "-f", "lavfi", "-i", f"testsrc2=size={args.size}:rate={args.fps}",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
        "-t", f"{seconds:.0f}",
        "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
        "-g", str(args.gop), "-keyint_min", str(args.gop), "-sc_threshold", "0", "-pix_fmt", "yuv420p",
        "-b:v", args.bitrate, "-maxrate", args.bitrate, "-bufsize", args.bitrate,
        "-c:a", "aac", "-b:a", "128k",
        "-f", "flv", url,
    ]


# =========================================================================== server-side recording


class PartRecorder:
    """Keeps every part (and which part each video frame went into) of one rendition for the whole run.

    The segmenter keeps only window + retain segments, so parts are collected as they appear,
    by reference: `published_at` is filled in by the server right after the part is made.
    """

    def __init__(self, segmenter) -> None:
        self.seg = segmenter
        self.parts: dict[tuple[int, int], object] = {}  # (msn, index) -> PartialSegment
        self.segments: dict[int, object] = {}  # msn -> Segment
        self.frames: list[tuple[int, float, tuple[int, int]]] = []  # (dts ms, arrival monotonic, part key)
        self.first_frame_dts: dict[int, int] = {}  # msn -> dts of the frame that opened the segment
        self._install()

    def _install(self) -> None:
        seg = self.seg
        original = seg._add_video  # bound method of this one instance; the class is untouched
        frames, first = self.frames, self.first_frame_dts

        def _add_video(pkt, duration):
            completed = original(pkt, duration)
            cur = seg.current
            if cur is not None:
                # Still in the part being filled, or that part was closed right after this frame.
                key = (cur.msn, len(cur.parts) if seg._v_samples else len(cur.parts) - 1)
                frames.append((pkt.dts, pkt.arrival, key))
                if key == (cur.msn, 0) and cur.msn not in first:
                    first[cur.msn] = pkt.dts
            return completed

        seg._add_video = _add_video

    def collect(self) -> None:
        seg = self.seg
        for s in list(seg.segments) + ([seg.current] if seg.current is not None else []):
            self.segments[s.msn] = s
            for p in s.parts:
                self.parts[(p.segment_msn, p.index)] = p


async def poll_parts(recorder: PartRecorder, stop: asyncio.Event) -> None:
    while not stop.is_set():
        recorder.collect()
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except asyncio.TimeoutError:
            pass
    recorder.collect()


class LogCounter(logging.Handler):
    """Counts the server's warnings and errors (and keeps the first few)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.first) < 20:
            self.first.append(f"{record.levelname} {record.name}: {record.getMessage()}"[:300])


# =========================================================================== statistics


def stats(values, scale: float = 1.0) -> dict:
    v = [x * scale for x in values if x is not None]
    if not v:
        return {"n": 0, "p50": None, "p95": None, "max": None, "min": None, "mean": None}
    return {
        "n": len(v),
        "p50": common.percentile(v, 50),
        "p95": common.percentile(v, 95),
        "max": max(v),
        "min": min(v),
        "mean": statistics.fmean(v),
    }


def analyse(args, recorder: PartRecorder, report: dict | None, window: tuple[float, float],
            wall_offset: float, part_target: float) -> dict:
    """All the numbers of one run. `window` is (start, end) in time.monotonic()."""
    w0, w1 = window
    out: dict = {"window_seconds": round(w1 - w0, 1)}

    # --- server: parts published inside the window
    parts = [p for p in recorder.parts.values() if p.published_at and w0 <= p.published_at <= w1]
    waits = [p.published_at - p.first_arrival for p in parts if p.first_arrival]
    overhead = [p.published_at - p.first_arrival - p.duration for p in parts if p.first_arrival]
    out["parts"] = {
        "count": len(parts),
        "duration": stats([p.duration for p in parts]),
        "wait": stats(waits),
        "overhead": stats(overhead),
        "part_target_used": part_target,
        "goal_p95_max": part_target + 0.050,
    }

    # --- server: every video frame, instrumented
    published = {k: p.published_at for k, p in recorder.parts.items() if p.published_at}
    frames = [(dts, arr, key) for dts, arr, key in recorder.frames if key in published]
    in_window = [(dts, arr, key) for dts, arr, key in frames if w0 <= published[key] <= w1]
    frame_waits = [published[key] - arr for _dts, arr, key in in_window]
    worst: dict[tuple[int, int], float] = {}
    for _dts, arr, key in in_window:
        worst[key] = max(worst.get(key, 0.0), published[key] - arr)
    # How much the server's first_arrival differs from the exact first video frame's arrival.
    first_gap = [
        recorder.parts[k].published_at - recorder.parts[k].first_arrival - worst[k]
        for k in worst if recorder.parts[k].first_arrival
    ]
    out["frames"] = {
        "count": len(in_window),
        "wait": stats(frame_waits),
        "worst_per_part": stats(list(worst.values())),
        "first_arrival_vs_first_video_frame": stats(first_gap),
    }

    # --- the clocks: PDT origin C, the -re schedule origin T0, encoder leg, PDT skew
    cs = []
    for msn, dts in recorder.first_frame_dts.items():
        s = recorder.segments.get(msn)
        if s is not None:
            cs.append(s.program_date_time - dts / 1000.0)
    c = statistics.median(cs) if cs else None
    # arrival_wall - dts/1000 for every frame; its minimum is the -re origin T0 (+ the fastest encode)
    offsets = [arr + wall_offset - dts / 1000.0 for dts, arr, _key in recorder.frames]
    t0 = min(offsets) if offsets else None
    win_offsets = [arr + wall_offset - dts / 1000.0 for dts, arr, _key in in_window]
    out["clock"] = {
        "pdt_origin_spread": (max(cs) - min(cs)) if cs else None,  # 0 unless PDT was re-anchored
        "encoder_leg": stats([o - t0 for o in win_offsets]) if t0 is not None else stats([]),
        # arrival_wall - PDT of the same frame; negative: frames arrive before the PDT they are labelled with
        "pdt_skew": stats([o - c for o in win_offsets]) if c is not None else stats([]),
        "pdt_minus_schedule": (c - t0) if c is not None and t0 is not None else None,
    }

    # --- player
    if report is None:
        out["player"] = None
        return out
    samples = [s for s in report.get("samples", []) if s["t"] > args.warmup]
    playing = [s for s in samples if s.get("currentTime", 0) > 0 and s.get("latency") is not None]
    skew_p50 = out["clock"]["pdt_skew"]["p50"]
    wall = [s["wallLatency"] for s in playing if s.get("wallLatency") is not None]
    player = {
        "samples": len(samples),
        "playing_samples": len(playing),
        "hls_latency": stats([s["latency"] for s in playing]),
        "target_latency": stats([s.get("targetLatency") for s in playing]),
        "wall_latency": stats(wall),
        "arrival_to_screen": stats([w - skew_p50 for w in wall]) if skew_p50 is not None else stats([]),
        "glass_to_glass": stats([w + (c - t0) for w in wall]) if c is not None and t0 is not None else stats([]),
        "buffer_ahead": stats([s.get("bufferAhead") for s in playing]),
        "playback_rate": stats([s.get("playbackRate") for s in playing]),
        "advanced": (playing[-1]["currentTime"] - playing[0]["currentTime"]) if playing else 0.0,
        "sampled_seconds": (playing[-1]["t"] - playing[0]["t"]) if playing else 0.0,
        "paused_samples": sum(1 for s in samples if s.get("paused")),
        "not_playing_samples": len(samples) - len(playing),
        "video": report.get("video"),
        "frags": report.get("frags"),
        "errors": len(report.get("errors") or []),
        "fatal_errors": report.get("fatalErrors"),
        "error_kinds": dict(Counter(f"{e['details']}{' (fatal)' if e['fatal'] else ''}"
                                    for e in report.get("errors") or [])),
        "page_errors": report.get("pageErrors"),
        "console": report.get("console"),
        "hls_version": report.get("hlsVersion"),
        "browser_version": report.get("browserVersion"),
        "level_details_last": (report.get("levelDetails") or {}).get("last"),
    }
    out["player"] = player
    return out


def player_window(report: dict, warmup: float, wall_offset: float, t_launch: float, t_end: float):
    """The measured window on our monotonic clock: play.mjs's samples from t > warmup to the last one.

    A sample's wall time is playingDate + wallLatency (both taken in the page at the same instant), which
    places play.mjs's t = 0 on our clock; without any playingDate, assume the last sample came ~2 s
    before node exited (browser.close()).
    """
    samples = report.get("samples") or []
    last_t = samples[-1]["t"] if samples else 0.0
    origins = [s["playingDate"] / 1000.0 + s["wallLatency"] - s["t"] for s in samples
               if s.get("playingDate") is not None and s.get("wallLatency") is not None]
    origin = statistics.median(origins) - wall_offset if origins else max(t_launch, t_end - last_t - 2.0)
    return origin + warmup, origin + last_t


# =========================================================================== output


def ms(x) -> str:
    return common.fmt(None if x is None else x * 1000, ".0f")


def sec(x) -> str:
    return common.fmt(x, ".2f")


def render(result: dict, markdown: bool = False) -> str:
    a = result["analysis"]
    rows = []
    p = a.get("player")
    if p:
        for key, label, covers in (
            ("hls_latency", "hls.latency (hls.js)", "live edge of the playlist -> screen"),
            ("wall_latency", "now - PDT of frame shown", "PDT -> screen"),
            ("arrival_to_screen", "arrival -> screen", "RTMP arrival at server -> screen (PDT skew corrected)"),
            ("glass_to_glass", "glass-to-glass (est.)", "ffmpeg -re clock -> encoder -> server -> screen"),
            ("target_latency", "hls.targetLatency", "what hls.js aims for"),
            ("buffer_ahead", "buffer ahead", "media buffered past currentTime"),
        ):
            s = p[key]
            rows.append([label, covers, "s", sec(s["p50"]), sec(s["p95"]), sec(s["max"]), str(s["n"])])
    for key, sub, label, covers in (
        ("parts", "wait", "part wait (server)", "first_arrival -> published_at, per part"),
        ("parts", "overhead", "part overhead (server)", "part wait - part duration"),
        ("frames", "wait", "frame wait (server)", "each video frame's arrival -> its part published"),
        ("frames", "worst_per_part", "worst frame per part", "max frame wait in each part (exact)"),
        ("clock", "encoder_leg", "encoder leg", "arrival - -re schedule (above the fastest frame)"),
        ("clock", "pdt_skew", "PDT skew", "arrival wall clock - PDT of the frame"),
    ):
        s = a[key][sub]
        rows.append([label, covers, "ms", ms(s["p50"]), ms(s["p95"]), ms(s["max"]), str(s["n"])])
    table = common.render_table(["metric", "covers", "unit", "p50", "p95", "max", "n"], rows, markdown=markdown)
    return table


def verdict(result: dict) -> list[str]:
    a = result["analysis"]
    lines = []
    pt = a["parts"]["part_target_used"]
    p95 = a["parts"]["wait"]["p95"]
    if p95 is not None:
        ok = p95 <= pt + 0.050
        lines.append(f"server: part wait p95 {p95 * 1000:.0f} ms vs goal <= part target {pt * 1000:.0f} ms + 50 ms "
                     f"= {(pt + 0.05) * 1000:.0f} ms: {'MET' if ok else 'NOT MET'}")
    w95 = a["frames"]["worst_per_part"]["p95"]
    if w95 is not None:
        ok = w95 <= pt + 0.050
        lines.append(f"server: worst frame per part p95 {w95 * 1000:.0f} ms (exact, instrumented) vs the same goal "
                     f"{(pt + 0.05) * 1000:.0f} ms: {'MET' if ok else 'NOT MET'}")
    p = a.get("player")
    if p and p["glass_to_glass"]["p50"] is not None:
        g = p["glass_to_glass"]["p50"]
        lines.append(f"player: glass-to-glass (est.) p50 {g:.2f} s vs goal <= 1.5 s: {'MET' if g <= 1.5 else 'NOT MET'}"
                     f"  (hls.latency p50 {p['hls_latency']['p50']:.2f} s, "
                     f"now - PDT p50 {p['wall_latency']['p50']:.2f} s)")
    return lines


# =========================================================================== the run


async def run(args) -> dict:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def on_signal(signame: str) -> None:
        if not getattr(on_signal, "fired", False):
            on_signal.fired = True
            print(f"\n{signame}: stopping (ffmpeg, browser, server) ...", file=sys.stderr, flush=True)
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, on_signal, sig.name)

    run_dir = Path(tempfile.mkdtemp(prefix="sfstream-latency-"))
    log_counter = LogCounter()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("sfstream").addHandler(log_counter)

    settings = Settings(
        host="127.0.0.1", rtmp_port=0, http_port=0, data_dir=run_dir / "data",
        stream_keys=parse_stream_keys([f"{NAME}={KEY}"]),
        hls_segment_duration=args.segment, hls_part_duration=args.part,
        ladder=args.ladder, thumbnail_interval=0.0 if args.ladder == "none" else 10.0,
    )
    result: dict = {
        "benchmark": "latency",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {k: getattr(args, k)
                     for k in ("seconds", "warmup", "size", "fps", "gop", "bitrate", "segment", "part", "hls_config",
                               "rendition", "ladder")},
        "event_loop": type(loop).__module__ + "." + type(loop).__name__,
        "machine": common.machine_info(),
        "sfstream_source": common.source_digest(),
        "loadavg_start": os.getloadavg(),
    }
    server = Server(settings)
    ffmpeg = node = None
    stop_polling = asyncio.Event()
    pollers = []
    recorder = None
    recorders: dict = {}
    report = None
    window = (0.0, 0.0)
    part_target = args.part
    psutil.cpu_percent(None)
    try:
        await server.start()
        http = f"http://127.0.0.1:{server.http_port}"
        url = f"{http}/hls/{NAME}/index.m3u8"
        publish_seconds = args.warmup + args.seconds + 120  # outlasts the playback; stopped by us
        ff_log = open(run_dir / "ffmpeg.log", "wb")
        cmd = ffmpeg_cmd(args, f"rtmp://127.0.0.1:{server.rtmp_port}/live/{KEY}", publish_seconds)
        result["ffmpeg_command"] = " ".join(cmd)
        ffmpeg = await Child.start("ffmpeg", cmd, stdout=asyncio.subprocess.DEVNULL, stderr=ff_log)
        ff_log.close()

        output = server.app[HLS_OUTPUT]
        stream = await output.wait_for_stream(NAME, 20)
        if stream is None:
            log_text = (run_dir / "ffmpeg.log").read_text(errors="replace")
            raise RuntimeError("ffmpeg's publish never started: " + log_text[-2000:])
        # --rendition: the first one is measured fully (the player should play it: --hls-config),
        # the others server-side only. Ladder rungs appear once the transcoder has the source's config.
        names = [n.strip() for n in args.rendition.split(",") if n.strip()] or ["source"]
        deadline = time.monotonic() + 20
        while missing := [n for n in names if n not in stream.renditions]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no rendition {', '.join(missing)} (there are {', '.join(stream.renditions)})")
            await asyncio.sleep(0.01)
        recorders = {n: PartRecorder(stream.renditions[n].segmenter) for n in names}
        rendition, recorder = stream.renditions[names[0]], recorders[names[0]]
        pollers = [asyncio.ensure_future(poll_parts(r, stop_polling)) for r in recorders.values()]
        seg = rendition.segmenter
        if not await rendition.wait_until(lambda: seg.next_msn >= 3, 30):
            raise RuntimeError("the stream did not reach two complete segments in 30 s")
        part_target = seg.part_target_used
        print(f"stream up: {url}  (part target in use {part_target * 1000:.1f} ms)", flush=True)

        wall_offset = time.time() - time.monotonic()
        if args.server_only:
            t_start = time.monotonic()
            print(f"server only: warm-up {args.warmup:g} s, then measuring {args.seconds:g} s ...", flush=True)
            await asyncio.sleep(args.warmup + args.seconds)
            window = (t_start + args.warmup, time.monotonic())
        else:
            play_seconds = int(args.warmup + args.seconds)
            cmd = ["node", str(PLAY), "--url", url, "--seconds", str(play_seconds)]
            if args.hls_config:
                cmd += ["--hls-config", args.hls_config]
            result["play_command"] = " ".join(cmd)
            print(f"hls.js in Chromium: warm-up {args.warmup:g} s, then measuring {args.seconds:g} s ...", flush=True)
            t_launch = time.monotonic()
            node = await Child.start("node play.mjs", cmd, cwd=str(BROWSER_DIR), stop_timeout=25.0,
                                     stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(node.proc.communicate(), play_seconds + 90)
            t_end = time.monotonic()
            if node.proc.returncode != 0 or not out.strip():
                raise RuntimeError(f"play.mjs failed ({node.proc.returncode}): {err.decode(errors='replace')[-3000:]}")
            report = json.loads(out.decode().strip().splitlines()[-1])
            if not report.get("harnessOk"):
                raise RuntimeError(f"play.mjs harness error: {report.get('harnessError')}")
            window = player_window(report, args.warmup, wall_offset, t_launch, t_end)
        if ffmpeg.proc.returncode is not None:
            result["ffmpeg_exited_early"] = ffmpeg.proc.returncode
        result["cpu_percent_system"] = psutil.cpu_percent(None)
        result["loadavg_end"] = os.getloadavg()
    finally:
        stop_polling.set()
        for child in (node, ffmpeg):
            if child is not None:
                try:
                    await child.stop()
                except BaseException as exc:  # keep cleaning up whatever happens
                    print(f"  stopping {child.name}: {exc!r}", file=sys.stderr)
        if pollers:
            await asyncio.gather(*pollers, return_exceptions=True)
        try:
            await server.stop()
        except BaseException as exc:
            print(f"  stopping the server: {exc!r}", file=sys.stderr)
        ff_text = (run_dir / "ffmpeg.log").read_text(errors="replace") if (run_dir / "ffmpeg.log").exists() else ""
        result["ffmpeg_log_tail"] = ff_text.splitlines()[-20:]
        shutil.rmtree(run_dir, ignore_errors=True)

    result["server_log"] = {"warnings_or_errors": log_counter.count, "first": log_counter.first}
    result["analysis"] = analyse(args, recorder, report, window, wall_offset, part_target)
    result["analysis_other_renditions"] = {n: analyse(args, r, None, window, wall_offset, part_target)
                                           for n, r in recorders.items() if r is not recorder}
    if report is not None:
        result["player_report"] = report  # every sample and error, as play.mjs gave them
    result["parts"] = [
        {"msn": k[0], "index": k[1], "duration": round(p.duration, 4),
         "wait": round(p.published_at - p.first_arrival, 4) if p.published_at and p.first_arrival else None,
         "in_window": bool(p.published_at and window[0] <= p.published_at <= window[1])}
        for k, p in sorted(recorder.parts.items())
    ]
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60, help="measured playback, after the warm-up (default 60)")
    ap.add_argument("--warmup", type=float, default=10, help="playback seconds dropped at the start (default 10)")
    ap.add_argument("--size", default="1280x720", help="test pattern size (default 1280x720)")
    ap.add_argument("--fps", type=int, default=30, help="frame rate (default 30)")
    ap.add_argument("--gop", type=int, default=60, help="keyframe interval in frames (default 60 = 2 s)")
    ap.add_argument("--bitrate", default="3M", help="video bitrate (default 3M)")
    ap.add_argument("--segment", type=float, default=2.0, help="hls_segment_duration, s (default 2)")
    ap.add_argument("--part", type=float, default=0.2, help="hls_part_duration, s (default 0.2)")
    ap.add_argument("--hls-config", default="", help="extra hls.js config as JSON (passed to play.mjs)")
    ap.add_argument("--server-only", action="store_true", help="no browser: server-side figures only")
    ap.add_argument("--ladder", default=None,
                    help="the server's --ladder (default: none, i.e. passthrough, unless --rendition names a "
                         "rung, then the server's default ladder)")
    ap.add_argument("--rendition", default="source",
                    help="rendition(s) to record, e.g. 720p,480p,source (the server's ladder applies to a taller "
                         "--size); the first gets the full analysis and should be the one played (default source)")
    ap.add_argument("--out", default="", help="JSON output path (default benchmarks/results/latency-<time>.json)")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = ap.parse_args()
    if args.ladder is None:
        wants_rungs = any(r != "source" for r in args.rendition.split(","))
        args.ladder = Settings.__dataclass_fields__["ladder"].default if wants_rungs else "none"

    if shutil.which("ffmpeg") is None:
        sys.exit("ffmpeg is missing: apt-get install ffmpeg")
    if not args.server_only:
        if shutil.which("node") is None or not Path(CHROMIUM).exists():
            sys.exit(f"node and {CHROMIUM} are needed (scripts/test.sh installs them), or use --server-only")
        for package in ("playwright-core", "hls.js"):
            if not (BROWSER_DIR / "node_modules" / package).is_dir():
                sys.exit(f"{package} is not installed in {BROWSER_DIR}: run npm ci there")

    try:
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    try:
        with runner:
            result = runner.run(run(args))
    except (asyncio.CancelledError, KeyboardInterrupt):
        print("interrupted: every process was stopped; no result written", file=sys.stderr)
        return 130

    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(args.out) if args.out else common.RESULTS_DIR / f"latency-{stamp}-seg{args.segment:g}.json"
    path.write_text(json.dumps(result, indent=1, default=str))

    a = result["analysis"]
    print()
    print(f"sfstream latency, {args.size}@{args.fps} GOP {args.gop}, segment {args.segment:g} s, part {args.part:g} s "
          f"(in use {a['parts']['part_target_used'] * 1000:.1f} ms), window {a['window_seconds']:g} s, "
          f"loop {result['event_loop']}")
    print(render(result, markdown=args.markdown))
    print()
    for line in verdict(result):
        print(line)
    p = a.get("player")
    if p:
        print(f"player: {p['playing_samples']}/{p['samples']} samples playing, advanced {p['advanced']:.1f} s in "
              f"{p['sampled_seconds']:.0f} s, rebuffers {p['video']['rebuffers'] if p['video'] else '?'}, "
              f"parts loaded {(p['frags'] or {}).get('parts', '?')}, "
              f"fragments {(p['frags'] or {}).get('fragments', '?')}, "
              f"hls.js errors {p['errors']} (fatal {p['fatal_errors']}) {p['error_kinds'] or ''}")
    gap = a["frames"]["first_arrival_vs_first_video_frame"]
    print(f"server: {a['parts']['count']} parts, {a['frames']['count']} video frames in the window; "
          f"first_arrival vs the part's first video frame: p50 {ms(gap['p50'])} ms, max {ms(gap['max'])} ms "
          f"(negative = first_arrival is later, the part wait reads low)")
    for name, other in result["analysis_other_renditions"].items():
        print(f"server, rendition {name}: part wait p50/p95 {ms(other['parts']['wait']['p50'])}/"
              f"{ms(other['parts']['wait']['p95'])} ms, worst frame per part p50/p95 "
              f"{ms(other['frames']['worst_per_part']['p50'])}/{ms(other['frames']['worst_per_part']['p95'])} ms")
    print(f"server log: {result['server_log']['warnings_or_errors']} warnings/errors; "
          f"system CPU during the run {result.get('cpu_percent_system', '?')} %, loadavg {result.get('loadavg_end')}")
    if result.get("ffmpeg_exited_early") is not None:
        print(f"WARNING: ffmpeg exited early ({result['ffmpeg_exited_early']})")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
