#!/usr/bin/env python3
"""Transcoding ladder benchmark: sfstream's PyAV ladder vs the ffmpeg CLI, real-time factor,
CPU per rung, and glass-to-glass latency through the ladder. Run by hand, never by CI.

One run, one input: a 1080p30 H.264 + AAC FLV (ffmpeg testsrc2 + sine, x264 veryfast, 6 Mbit/s,
GOP 60, encoded once and cached in benchmarks/results/), then, `--repeat` times, interleaved:

  pyav   sfstream's own `Transcoder` (sfstream/transcode/pipeline.py: a decode thread and one
         `RungEncoder` thread per rung, bounded queues), in a fresh child process on uvloop, fed the
         file's packets (parsed by sfstream.flv, as ingest does; onMetaData passed as the server
         does) as fast as it takes them, but never so fast that a rung queue overflows (a full rung
         queue drops the frame, by design): the feeder waits while decode queue + frames the
         decoder may hold + the fullest rung queue would reach a rung queue's capacity. A run that
         dropped anything is flagged and left out. A fake `LadderSink` counts what comes out.
         Shedding is off (max_lag huge: fed faster than real time every frame "lags") and so are
         thumbnails. Decode only = the same with its rungs inactive (with no rung at all the
         transcoder decodes only keyframes, for thumbnails).
  cli    the ffmpeg CLI doing the identical ladder: same decoder input, one split, libswscale
         bilinear (PyAV's `reformat` default) to the same sizes (`Rung.size_for`), libx264 with the
         same preset, tune zerolatency (no B-frames), bitrate = maxrate = bufsize = the rung's kbps,
         IDR forced on the source's keyframes (`-force_key_frames source -forced-idr 1`, x264
         scenecut=0:keyint=infinite), encoder threads auto, written as raw H.264 to tmpfs.
  cli-slicedec  the same with the decoder slice-threaded (`-thread_type slice`), as sfstream
         decodes; the source has one slice per frame, so that is a single-threaded decode.

for the default ladder (1080p source -> 720p + 480p) and, for the CPU per rung, decode only,
720p alone and 480p alone. Frames/s = source frames / wall time of the transcode (PyAV: from
`on_config` to `ladder_done`; CLI: ffmpeg's own `-benchmark` rtime, which also leaves out probing
the input); CPU = user + sys of the whole process over the same span (all threads). Medians over
the repeats. The x264 option string each side wrote into its stream (SEI) is compared, so
"identical" is checked, not assumed.

Then `--latency-repeat` runs of benchmarks/latency.py with a 1080p30 publisher (the server's
default ladder makes 720p + 480p), hls.js held on the 720p level, recording the 720p, 480p and
source renditions: glass-to-glass p50/p95 on 720p and server-side ingest -> part available per
rendition.

    python benchmarks/transcode.py                       # 3 repeats + 3 latency runs of 60 s
    python benchmarks/transcode.py --repeat 5 --latency-repeat 0
    python benchmarks/transcode.py --profile             # + py-spy of the PyAV ladder (2 more runs: raw, svg)
    # options: --preset veryfast --threads 0 --source-seconds 30 --source-bitrate 6M
    #          --latency-seconds 60 --latency-warmup 10 --modes ladder,decode,720p,480p

Tables on stdout, everything in benchmarks/results/transcode-<time>.json. Every process it starts
(ffmpeg, the PyAV child, latency.py with its ffmpeg and Chromium, py-spy) is stopped and reaped on
exit, Ctrl-C and SIGTERM, and dies with it (PR_SET_PDEATHSIG).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py)

from sfstream.transcode.ladder import DEFAULT_LADDER, Rung, parse_ladder, rungs_for_source  # noqa: E402

SRC_SIZE = (1920, 1080)
FPS = 30
HOLD = 6  # frames the decode thread may hold back (H.264 reorder delay, the first frame): feeder margin
GOALS = {"cli_ratio": 0.95, "realtime": 1.0, "glass_to_glass_s": 2.0}
LATENCY = common.BENCH_DIR / "latency.py"
# hls.js on the 720p level: levels sort by height (480p, 720p, source); start on index 1, never go
# below 2 Mbit/s (the 480p rung's BANDWIDTH is ~1.4 M, 720p's ~3 M), never switch up.
HLS_CONFIG_720P = {"startLevel": 1, "minAutoBitrate": 2_000_000, "abrBandWidthUpFactor": 0,
                   "capLevelToPlayerSize": False}


# =========================================================================== the PyAV child


def pyav_child(args) -> None:
    """One measurement of sfstream's Transcoder; prints one JSON object."""
    import asyncio
    import threading

    import inspect

    from sfstream import flv
    from sfstream.media.packet import AudioConfig, Packet, VideoConfig
    from sfstream.rtmp import amf0
    from sfstream.rtmp.client import read_flv
    from sfstream.transcode.pipeline import TranscodeSettings, Transcoder

    video_cfg = audio_cfg = None
    metadata: dict = {}
    packets = []
    for tag in read_flv(Path(args.flv).read_bytes()):
        if tag.type_id == 18:  # onMetaData, as the RTMP server hands it on (framerate)
            values = amf0.decode_all(tag.body)
            if len(values) >= 2 and values[0] == "onMetaData" and isinstance(values[1], dict):
                metadata = dict(values[1])
        elif tag.type_id == 9:
            item = flv.parse_video_message(tag.body, tag.timestamp)
            if isinstance(item, VideoConfig):
                video_cfg = video_cfg or item
            elif isinstance(item, Packet):
                packets.append(item)
        elif tag.type_id == 8:  # audio: the transcoder ignores its packets; its config goes along
            item = flv.parse_audio_message(tag.body, tag.timestamp)
            if isinstance(item, AudioConfig):
                audio_cfg = audio_cfg or item
    ladder = parse_ladder(args.ladder)
    settings = TranscodeSettings(ladder=ladder, preset=args.preset, threads=args.threads,
                                 max_lag=1e9, thumbnail_interval=0.0)

    class Sink:
        """A LadderSink that counts: packets, bytes, keyframes per rung; x264's option string."""

        def __init__(self, loop) -> None:
            self.done = loop.create_future()
            self.rungs: dict[str, dict] = {}
            self.shed_events: list = []

        def set_rungs(self, names):
            for n in names:
                self.rungs[n] = {"packets": 0, "bytes": 0, "keyframes": 0, "keyframe_dts": [], "size": None,
                                 "codec": None, "x264": None, "first_dts": None, "last_dts": None}
            return 1

        def rung_config(self, name, video, epoch):
            r = self.rungs[name]
            r["size"], r["codec"] = f"{video.width}x{video.height}", video.codec_string

        def rung_packet(self, name, packet, epoch):
            r = self.rungs[name]
            r["packets"] += 1
            r["bytes"] += len(packet.data)
            if packet.keyframe:
                r["keyframes"] += 1
                if len(r["keyframe_dts"]) < 40:
                    r["keyframe_dts"].append(packet.dts)
            if r["first_dts"] is None:
                r["first_dts"] = packet.dts
            r["last_dts"] = packet.dts
            if r["x264"] is None and r["packets"] <= 3:
                i = packet.data.find(b"x264 - core")
                if i >= 0:
                    r["x264"] = packet.data[i:i + 2000].split(b"\x00")[0].decode(errors="replace")

        def rung_shed(self, name, shed, epoch=None):
            self.shed_events.append((name, shed))

        def ladder_done(self, epoch):
            if not self.done.done():
                self.done.set_result(None)

    async def run() -> dict:
        loop = asyncio.get_running_loop()
        sink = Sink(loop)
        me = psutil.Process()
        thread_cpu: dict[int, float] = {}
        queue_samples: list = []
        kw = {"metadata": lambda: metadata} if "metadata" in inspect.signature(Transcoder).parameters else {}
        tr = Transcoder("bench", settings, sink, loop, **kw)

        def sample() -> None:
            try:
                for t in me.threads():
                    thread_cpu[t.id] = t.user_time + t.system_time
            except psutil.Error:
                pass
            names = {t.native_id: t.name for t in threading.enumerate()}
            sample.names.update(names)
            queue_samples.append([tr._queue.qsize()] + [e.queue.qsize() for e in tr.encoders.values()])
        sample.names = {}

        async def sampler(stop: asyncio.Event) -> None:
            while not stop.is_set():
                sample()
                try:
                    await asyncio.wait_for(stop.wait(), 0.1)
                except asyncio.TimeoutError:
                    pass

        stop = asyncio.Event()
        sampling = asyncio.ensure_future(sampler(stop))
        t_start, c_start = time.perf_counter(), os.times()
        tr.on_config(video_cfg, audio_cfg)
        if args.decode_only:
            # The decode thread with rungs that take nothing: every frame is decoded (with no rung
            # at all the transcoder would decode only keyframes, for thumbnails).
            for enc in tr.encoders.values():
                enc.active = False
        q = tr._queue
        encoders = list(tr.encoders.values())
        rung_cap = min((e.queue.maxsize for e in encoders), default=q.maxsize)

        def room() -> bool:
            # Backpressure without drops: a rung queue that is full drops the frame (by design, to
            # stay real time), so what is in flight -- the decode queue, frames the decoder holds
            # for reordering (HOLD), the fullest rung queue -- stays below a rung queue's capacity.
            dq = q.qsize()
            rq = max((e.queue.qsize() for e in encoders if e.active), default=0)
            return dq < q.maxsize - 1 and dq + rq + HOLD < rung_cap

        waits = 0
        for pkt in packets:
            while not room():
                waits += 1
                await asyncio.sleep(0.002)
            pkt.arrival = time.monotonic()
            tr.on_packet(pkt)
        t_fed = time.perf_counter()
        tr.on_end()
        await sink.done
        t_end, c_end = time.perf_counter(), os.times()
        stop.set()
        await sampling
        names = sample.names
        by_role: dict[str, float] = {}
        for tid, cpu in thread_cpu.items():
            name = names.get(tid, "")
            role = ("event loop (feed + delivery)" if name == "MainThread" else
                    "decode thread" if name.startswith("decode-") else
                    f"encoder thread {name[7:]}" if name.startswith("encode-") else
                    "libav / x264 worker threads")
            by_role[role] = by_role.get(role, 0.0) + cpu
        qs = list(zip(*queue_samples)) if queue_samples else []
        queues = {}
        labels = ["decode"] + list(tr.encoders)
        caps = [q.maxsize] + [e.queue.maxsize for e in tr.encoders.values()]
        for label, cap, series in zip(labels, caps, qs):
            series = list(series)
            queues[label] = {"capacity": cap, "mean": sum(series) / len(series),
                             "full_pct": 100.0 * sum(1 for v in series if v >= cap - 1) / len(series)}
        return {
            "frames": len(packets),
            "wall": t_end - t_start,
            "feed_wall": t_fed - t_start,
            "user": c_end.user - c_start.user,
            "sys": c_end.system - c_start.system,
            "rungs": sink.rungs,
            "shed_events": sink.shed_events,
            "dropped_packets": tr.dropped_packets,
            "decode_only": args.decode_only,
            "metadata_framerate": metadata.get("framerate"),
            "sfstream_source": common.source_digest(),
            "feeder_waits": waits,
            "thread_cpu_by_role": by_role,  # sampled every 0.1 s: a thread's last < 0.1 s may be missing
            "queues": queues,
            "source": {"width": video_cfg.width, "height": video_cfg.height, "codec": video_cfg.codec_string},
            "settings": {"ladder": [r.name + f"@{r.kbps}k" for r in ladder], "preset": settings.preset,
                         "threads": settings.threads, "decode_queue": settings.decode_queue,
                         "rung_queue": settings.rung_queue},
        }

    try:
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        out = runner.run(run())
    print(json.dumps(out))


# =========================================================================== parent: running children


def system_busy_seconds() -> float:
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    return sum(t) - idle


def wait_for_quiet(max_wait: float, threshold_pct: float) -> float:
    """Wait (up to `max_wait` s) until the rest of the machine used < `threshold_pct` % of one core
    over a 2 s sample (other sessions run tests and encoders here); returns that last sample."""
    deadline = time.monotonic() + max_wait
    while True:
        b0, t0 = system_busy_seconds(), time.monotonic()
        time.sleep(2.0)
        busy = (system_busy_seconds() - b0) / (time.monotonic() - t0) * 100
        if busy < threshold_pct or time.monotonic() >= deadline:
            return busy
        print(f"  waiting for a quieter machine (others use {busy:.0f} % of a core) ...", flush=True)


def run_child(procs: common.Procs, name: str, cmd: list[str], timeout: float, cwd: Path | None = None) -> dict:
    """Run one child to completion (they run one at a time): output, wall time, its CPU (rusage),
    and the CPU the rest of the machine used meanwhile."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, t0 = system_busy_seconds(), time.perf_counter()
    m = procs.start(name, cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(cwd) if cwd else None)
    try:
        out, err = m.popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        procs.stop(m)
        raise RuntimeError(f"{name} did not finish in {timeout:.0f} s") from None
    wall = time.perf_counter() - t0
    busy = system_busy_seconds() - busy0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if m in procs.items:
        procs.items.remove(m)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {"rc": m.popen.returncode, "stdout": out.decode(errors="replace"), "stderr": err.decode(errors="replace"),
            "outer_wall": wall, "outer_cpu": cpu, "other_cpu_pct": max(0.0, (busy - cpu) / wall * 100) if wall else None}


def cli_command(src: Path, rungs: tuple[Rung, ...], preset: str, threads: int, out_dir: Path,
                slice_decoder: bool) -> tuple[list[str], list[Path]]:
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-nostats", "-loglevel", "info", "-benchmark", "-y"]
    if slice_decoder:
        cmd += ["-thread_type", "slice"]  # input option: the decoder, as sfstream's decode thread
    cmd += ["-i", str(src)]
    outputs = []
    if not rungs:  # decode only
        return cmd + ["-map", "0:v", "-f", "null", "-"], outputs
    sizes = [r.size_for(*SRC_SIZE) for r in rungs]
    if len(rungs) == 1:
        graph = f"[0:v]scale={sizes[0][0]}:{sizes[0][1]}:flags=bilinear[v0]"
    else:
        graph = f"[0:v]split={len(rungs)}" + "".join(f"[s{i}]" for i in range(len(rungs))) + ";" + ";".join(
            f"[s{i}]scale={w}:{h}:flags=bilinear[v{i}]" for i, (w, h) in enumerate(sizes))
    cmd += ["-filter_complex", graph]
    for i, rung in enumerate(rungs):
        out = out_dir / f"cli-{rung.name}.h264"
        outputs.append(out)
        k = f"{rung.kbps}k"
        cmd += ["-map", f"[v{i}]", "-c:v", "libx264", "-preset", preset, "-tune", "zerolatency",
                "-pix_fmt", "yuv420p", "-b:v", k, "-maxrate", k, "-bufsize", k,
                "-g", "100000", "-x264-params", "scenecut=0:keyint=infinite",
                "-force_key_frames", "source", "-forced-idr", "1",
                "-threads", str(threads), "-fps_mode", "passthrough", "-f", "h264", str(out)]
    return cmd, outputs


def x264_options(data: bytes) -> str | None:
    i = data.find(b"x264 - core")
    return data[i:i + 2000].split(b"\x00")[0].decode(errors="replace") if i >= 0 else None


def annexb_stats(path: Path) -> dict:
    """Frames and IDR frames of a raw H.264 stream (first slice of each picture: first_mb == 0)."""
    data = path.read_bytes()
    frames = idr = 0
    pos = data.find(b"\x00\x00\x01")
    while pos >= 0:
        nal = pos + 3
        if nal + 1 < len(data):
            t = data[nal] & 0x1F
            if t in (1, 5) and data[nal + 1] & 0x80:  # ue(first_mb_in_slice) == 0: leading bit 1
                frames += 1
                idr += t == 5
        pos = data.find(b"\x00\x00\x01", nal)
    return {"frames": frames, "idr_frames": idr, "bytes": len(data), "x264": x264_options(data[:20000])}


def parse_bench(stderr: str) -> dict:
    m = re.search(r"bench: utime=([\d.]+)s stime=([\d.]+)s rtime=([\d.]+)s", stderr)
    if not m:
        return {}
    return {"user": float(m[1]), "sys": float(m[2]), "wall": float(m[3])}


def x264_diff(a: str | None, b: str | None) -> dict:
    """Options that differ between two x264 option strings (besides the version header)."""
    def opts(s):
        if not s or "options:" not in s:
            return {}
        return dict(kv.split("=", 1) for kv in s.split("options:", 1)[1].split() if "=" in kv)
    oa, ob = opts(a), opts(b)
    return {k: (oa.get(k), ob.get(k)) for k in sorted(set(oa) | set(ob)) if oa.get(k) != ob.get(k)}


# =========================================================================== parent: the benchmark


MODES = {  # mode -> rung names (filtered from the default ladder)
    "ladder": None,
    "decode": (),
    "720p": ("720p",),
    "480p": ("480p",),
}


def run_once(procs, args, src: Path, impl: str, mode: str, rungs: tuple[Rung, ...], scratch: Path,
             verify: bool) -> dict:
    seconds_of_video = args.frames / FPS
    if impl == "pyav":
        decode_only = not rungs
        ladder = ",".join(f"{r.name}@{r.kbps}k" for r in (rungs or args.ladder[-1:]))
        cmd = [sys.executable, str(Path(__file__).resolve()), "_pyav", "--flv", str(src), "--ladder", ladder,
               "--preset", args.preset, "--threads", str(args.threads)] + (["--decode-only"] if decode_only else [])
        r = run_child(procs, f"pyav-{mode}", cmd, timeout=600, cwd=common.REPO_DIR)
        if r["rc"] != 0:
            raise RuntimeError(f"PyAV child failed ({r['rc']}):\n{r['stderr'][-3000:]}")
        res = json.loads(r["stdout"].strip().splitlines()[-1])
        frames, wall, user, sys_ = res["frames"], res["wall"], res["user"], res["sys"]
        detail = res
        rung_out = {} if decode_only else {
            n: {"frames": v["packets"], "idr_frames": v["keyframes"], "bytes": v["bytes"], "x264": v["x264"],
                "size": v["size"]} for n, v in res["rungs"].items()}
        valid = not (res["dropped_packets"] or any(v["frames"] < frames - HOLD for v in rung_out.values()))
        if not valid:
            print(f"  WARNING: the PyAV pipeline dropped frames (dropped {res['dropped_packets']}, out "
                  f"{ {n: v['frames'] for n, v in rung_out.items()} } of {frames}): not a valid throughput run",
                  flush=True)
    else:
        for f in scratch.glob("cli-*.h264"):
            f.unlink()
        cmd, outputs = cli_command(src, rungs, args.preset, args.threads, scratch, slice_decoder=impl == "cli-slicedec")
        r = run_child(procs, f"ffmpeg-{mode}", cmd, timeout=600)
        if r["rc"] != 0:
            raise RuntimeError(f"ffmpeg failed ({r['rc']}): {' '.join(cmd)}\n{r['stderr'][-3000:]}")
        b = parse_bench(r["stderr"])
        frames, wall, user, sys_ = args.frames, b.get("wall", r["outer_wall"]), b.get("user"), b.get("sys")
        detail = {"command": " ".join(cmd), "bench": b}
        valid = bool(b)
        rung_out = {}
        for rung, path in zip(rungs, outputs):
            st = annexb_stats(path) if verify else {"bytes": path.stat().st_size}
            st["size"] = "x".join(map(str, rung.size_for(*SRC_SIZE)))
            rung_out[rung.name] = st
    cpu = (user or 0.0) + (sys_ or 0.0)
    for name, st in rung_out.items():
        st["kbps"] = st["bytes"] * 8 / seconds_of_video / 1000
    return {
        "impl": impl, "mode": mode, "valid": valid, "frames": frames, "wall": wall, "fps": frames / wall,
        "realtime": frames / wall / FPS, "user": user, "sys": sys_, "cpu": cpu,
        "cpu_per_video_second": cpu / seconds_of_video, "cores_busy": cpu / wall,
        "outer_wall": r["outer_wall"], "outer_cpu": r["outer_cpu"], "other_cpu_pct": r["other_cpu_pct"],
        "rungs": rung_out, "detail": detail,
    }


def profile_once(procs, args, src: Path, rungs: tuple[Rung, ...], stamp: str) -> dict:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        return {"error": "py-spy not found (pip install py-spy)"}
    ladder = ",".join(f"{r.name}@{r.kbps}k" for r in rungs)
    out = {}
    for fmt, ext, extra in (("raw", "txt", []), ("flamegraph", "svg", [])):
        path = common.RESULTS_DIR / f"transcode-profile-{stamp}.{ext}"
        cmd = [py_spy, "record", "--rate", "100", "--threads", "--nonblocking", "-f", fmt,
               "-o", str(path), *extra, "--", sys.executable, str(Path(__file__).resolve()), "_pyav",
               "--flv", str(src), "--ladder", ladder, "--preset", args.preset, "--threads", str(args.threads)]
        r = run_child(procs, "py-spy", cmd, timeout=900, cwd=common.REPO_DIR)
        out[fmt] = {"path": str(path), "rc": r["rc"], "stderr_tail": r["stderr"][-1500:]}
        if fmt == "raw" and r["rc"] == 0:
            out["summary"] = summarize_profile(path)
    return out


def summarize_profile(path: Path) -> dict:
    """Own time by function and time per thread from py-spy's raw (folded) output."""
    own: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        frames = stack.split(";")
        total += n
        threads[frames[0]] = threads.get(frames[0], 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    top = sorted(own.items(), key=lambda kv: -kv[1])[:20]
    return {"samples": total, "by_thread": dict(sorted(threads.items(), key=lambda kv: -kv[1])),
            "own_top": [(f, n, round(100 * n / total, 1)) for f, n in top] if total else []}


def run_latency(procs, args, stamp: str, i: int) -> dict:
    path = common.RESULTS_DIR / f"transcode-latency-{stamp}-{i}.json"
    cmd = [sys.executable, str(LATENCY), "--size", f"{SRC_SIZE[0]}x{SRC_SIZE[1]}", "--fps", str(FPS),
           "--bitrate", args.source_bitrate, "--seconds", str(args.latency_seconds),
           "--warmup", str(args.latency_warmup), "--rendition", "720p,480p,source",
           "--hls-config", json.dumps(HLS_CONFIG_720P), "--out", str(path)]
    print(f"  latency run {i + 1}/{args.latency_repeat}: {' '.join(cmd[1:])}", flush=True)
    m = procs.start("latency.py", cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stop_timeout=60,
                    cwd=str(common.REPO_DIR))
    try:
        out, _ = m.popen.communicate(timeout=args.latency_warmup + args.latency_seconds + 300)
    except subprocess.TimeoutExpired:
        procs.stop(m)
        return {"error": "latency.py timed out"}
    if m in procs.items:
        procs.items.remove(m)
    text = out.decode(errors="replace")
    if m.popen.returncode != 0 or not path.exists():
        return {"error": f"latency.py exited {m.popen.returncode}", "output_tail": text[-3000:]}
    res = json.loads(path.read_text())
    a = res["analysis"]
    p = a.get("player") or {}
    report = res.get("player_report") or {}
    levels = (report.get("manifest") or {}).get("levels") or []
    heights = [l.get("height") for l in levels]
    played = [s.get("currentLevel") for s in report.get("samples", []) if s["t"] > args.latency_warmup]
    played_heights = sorted({heights[l] if l is not None and 0 <= l < len(heights) else None for l in played},
                            key=lambda h: h or 0)
    per_rendition = {"720p": a}
    per_rendition.update(res.get("analysis_other_renditions") or {})
    return {
        "json": str(path),
        "glass_to_glass": p.get("glass_to_glass"),
        "hls_latency": p.get("hls_latency"),
        "arrival_to_screen": p.get("arrival_to_screen"),
        "played_heights": played_heights,
        "level_heights": heights,
        "rebuffers": (p.get("video") or {}).get("rebuffers"),
        "hls_errors": p.get("errors"),
        "fatal_errors": p.get("fatal_errors"),
        "server": {n: {"part_wait": v["parts"]["wait"], "worst_frame_per_part": v["frames"]["worst_per_part"],
                       "part_count": v["parts"]["count"]} for n, v in per_rendition.items()},
        "server_log": res.get("server_log"),
        "cpu_percent_system": res.get("cpu_percent_system"),
        "output_tail": text.splitlines()[-12:],
    }


# =========================================================================== reporting


def med(rows, key):
    return common.median([r.get(key) for r in rows])


def summarize(results: list[dict]) -> dict:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        if not r.get("valid", True):
            continue  # e.g. the PyAV pipeline dropped frames: its fps would flatter it
        groups.setdefault((r["impl"], r["mode"]), []).append(r)
    out = {}
    for (impl, mode), rows in groups.items():
        out[f"{impl}/{mode}"] = {
            "impl": impl, "mode": mode, "n": len(rows),
            "fps": med(rows, "fps"), "fps_all": [round(r["fps"], 1) for r in rows],
            "realtime": med(rows, "realtime"), "wall": med(rows, "wall"),
            "cpu": med(rows, "cpu"), "user": med(rows, "user"), "sys": med(rows, "sys"),
            "cpu_per_video_second": med(rows, "cpu_per_video_second"), "cores_busy": med(rows, "cores_busy"),
            "other_cpu_pct": med(rows, "other_cpu_pct"),
            "rung_kbps": {n: common.median([r["rungs"][n]["kbps"] for r in rows]) for n in rows[0]["rungs"]},
        }
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_pyav":
        ap = argparse.ArgumentParser()
        ap.add_argument("_pyav")
        ap.add_argument("--flv", required=True)
        ap.add_argument("--ladder", required=True)
        ap.add_argument("--preset", default="veryfast")
        ap.add_argument("--threads", type=int, default=0)
        ap.add_argument("--decode-only", action="store_true")
        pyav_child(ap.parse_args())
        return 0

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="repeats of every throughput run (default 3)")
    ap.add_argument("--modes", default="ladder,decode,720p,480p", help="ladder, decode, 720p, 480p")
    ap.add_argument("--impls", default="pyav,cli,cli-slicedec", help="pyav, cli, cli-slicedec")
    ap.add_argument("--preset", default="veryfast", help="x264 preset (default veryfast, sfstream's default)")
    ap.add_argument("--threads", type=int, default=0, help="encoder threads (default 0 = auto, sfstream's default)")
    ap.add_argument("--source-seconds", type=int, default=30, help="length of the 1080p30 test file (default 30)")
    ap.add_argument("--source-bitrate", default="6M", help="bitrate of the test file and publisher (default 6M)")
    ap.add_argument("--latency-repeat", type=int, default=3, help="latency.py runs (default 3; 0: none)")
    ap.add_argument("--latency-seconds", type=float, default=60)
    ap.add_argument("--latency-warmup", type=float, default=10)
    ap.add_argument("--quiet-wait", type=float, default=120,
                    help="before each throughput run wait up to this long for the machine to be quiet (default 120 s; 0: no)")
    ap.add_argument("--quiet-threshold", type=float, default=20,
                    help="quiet = other processes below this %% of one core over 2 s (default 20)")
    ap.add_argument("--max-other", type=float, default=25,
                    help="a run during which other processes took more than this %% of one core is repeated (default 25)")
    ap.add_argument("--retries", type=int, default=2, help="at most this many repeats of a noisy run; the quietest "
                    "attempt counts (default 2)")
    ap.add_argument("--profile", action="store_true", help="PyAV ladder under py-spy (2 more runs: folded text + flame graph in results/)")
    ap.add_argument("--markdown", action="store_true", help="tables as Markdown")
    args = ap.parse_args()
    common.check_tools(need_nginx=False, install=False)
    common.install_signal_handlers()

    others = [l for l in subprocess.run(["pgrep", "-af", "benchmarks/"], capture_output=True, text=True).stdout.splitlines()
              if str(os.getpid()) != l.split()[0] and "transcode.py" not in l]
    if others:
        print("WARNING: other benchmarks are running; the numbers will be noisy:\n  " + "\n  ".join(others), flush=True)

    src = common.ensure_test_flv(seconds=args.source_seconds, bitrate=args.source_bitrate,
                                 size=f"{SRC_SIZE[0]}x{SRC_SIZE[1]}", fps=FPS, gop_seconds=2)
    from sfstream import flv
    from sfstream.media.packet import Packet
    from sfstream.rtmp.client import read_flv
    args.frames = sum(1 for t in read_flv(src.read_bytes())
                      if t.type_id == 9 and isinstance(flv.parse_video_message(t.body, t.timestamp), Packet))
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                            "stream=codec_name,profile,width,height,r_frame_rate,has_b_frames,bit_rate",
                            "-of", "json", str(src)], capture_output=True, text=True)
    source_info = json.loads(probe.stdout or "{}").get("streams", [{}])[0]

    ladder = rungs_for_source(parse_ladder(DEFAULT_LADDER), SRC_SIZE[1])
    args.ladder = ladder
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    print(f"source: {src.name}, {args.frames} frames ({args.frames / FPS:.1f} s), {source_info}", flush=True)
    print(f"default ladder {DEFAULT_LADDER} for a {SRC_SIZE[1]}p source: "
          + ", ".join(f"{r.name} {'x'.join(map(str, r.size_for(*SRC_SIZE)))} @ {r.kbps} kbit/s" for r in ladder), flush=True)

    result: dict = {
        "benchmark": "transcode",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": common.machine_info(),
        "sfstream_source": common.source_digest(),
        "pyav": None, "loadavg_start": os.getloadavg(),
        "other_benchmarks_at_start": others,
        "source": {"file": src.name, "frames": args.frames, "seconds": args.frames / FPS, **source_info},
        "ladder": [{"name": r.name, "kbps": r.kbps, "size": r.size_for(*SRC_SIZE)} for r in ladder],
        "settings": {k: getattr(args, k) for k in ("repeat", "modes", "impls", "preset", "threads", "source_seconds",
                                                   "source_bitrate", "latency_repeat", "latency_seconds",
                                                   "latency_warmup", "quiet_wait", "quiet_threshold", "max_other",
                                                   "retries")},
        "hls_config_720p": HLS_CONFIG_720P,
        "runs": [], "discarded_attempts": [], "latency": [],
    }
    try:
        import av
        result["pyav"] = {"version": av.__version__, "libs": {k: ".".join(map(str, v)) for k, v in av.library_versions.items()}}
    except Exception as exc:  # noqa: BLE001
        result["pyav"] = {"error": repr(exc)}

    procs = common.Procs()
    scratch = common.make_run_dir("sfstream-transcode-")
    interrupted = False
    path = common.RESULTS_DIR / f"transcode-{stamp}.json"
    try:
        for rep in range(args.repeat):
            for mode in modes:
                rungs = ladder if MODES[mode] is None else tuple(r for r in ladder if r.name in MODES[mode])
                # alternate which side goes first, so drift in the machine's load hits both alike
                order = impls if rep % 2 == 0 else list(reversed(impls))
                for impl in order:
                    if impl == "cli-slicedec" and mode not in ("ladder", "decode"):
                        continue
                    attempts = []
                    for attempt in range(args.retries + 1):
                        before = wait_for_quiet(args.quiet_wait, args.quiet_threshold) if args.quiet_wait > 0 else None
                        r = run_once(procs, args, src, impl, mode, rungs, scratch, verify=rep == 0)
                        r["repeat"], r["attempt"], r["other_cpu_pct_before"] = rep, attempt, before
                        attempts.append(r)
                        if (r["other_cpu_pct"] or 0) <= args.max_other:
                            break
                        print(f"  ({impl} {mode}: other processes took {r['other_cpu_pct']:.0f} % of a core "
                              f"during the run: again)", flush=True)
                    r = min(attempts, key=lambda a: a["other_cpu_pct"] or 0)  # the quietest attempt
                    result["runs"].append(r)
                    result["discarded_attempts"] += [a for a in attempts if a is not r]
                    print(f"  [{rep + 1}/{args.repeat}] {impl:13s} {mode:7s} {r['fps']:7.1f} fps  "
                          f"{r['realtime']:5.2f}x rt  cpu {r['cpu']:6.2f} s ({r['cores_busy']:.2f} cores)  "
                          f"other procs {common.fmt(r['other_cpu_pct'], '.0f')} %", flush=True)
        if args.profile:
            print("  py-spy: one PyAV ladder run ...", flush=True)
            result["profile"] = profile_once(procs, args, src, ladder, stamp)
        for i in range(args.latency_repeat):
            result["latency"].append(run_latency(procs, args, stamp, i))
            lat = result["latency"][-1]
            if "error" in lat:
                print(f"  latency run {i + 1}: {lat['error']}\n" + "\n".join(lat.get("output_tail", "").splitlines()[-15:]))
            else:
                g = lat["glass_to_glass"] or {}
                print(f"  latency run {i + 1}: glass-to-glass p50 {common.fmt(g.get('p50'), '.2f')} s "
                      f"p95 {common.fmt(g.get('p95'), '.2f')} s, played heights {lat['played_heights']}", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping every process; what was measured is kept", file=sys.stderr)
    finally:
        procs.stop_all()
        shutil.rmtree(scratch, ignore_errors=True)

    result["loadavg_end"] = os.getloadavg()
    result["interrupted"] = interrupted
    result["summary"] = summarize(result["runs"])
    report(result, args)
    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str))
    print(f"written: {path}")
    return 130 if interrupted else 0


def report(result: dict, args) -> None:
    s = result["summary"]
    md = args.markdown
    label = {"pyav": "sfstream (PyAV)", "cli": "ffmpeg CLI", "cli-slicedec": "ffmpeg CLI, slice-threaded decoder"}
    mode_label = {"ladder": "720p + 480p", "decode": "decode only", "720p": "720p alone", "480p": "480p alone"}
    rows = []
    for key, v in s.items():
        kb = ", ".join(f"{n} {k:.0f}" for n, k in v["rung_kbps"].items()) or "-"
        rows.append([label.get(v["impl"], v["impl"]), mode_label.get(v["mode"], v["mode"]), str(v["n"]),
                     common.fmt(v["fps"], ".1f"), " / ".join(f"{x:g}" for x in v["fps_all"]),
                     common.fmt(v["realtime"], ".2f"), common.fmt(v["cpu"], ".1f"),
                     common.fmt(v["cpu_per_video_second"], ".3f"), common.fmt(v["cores_busy"], ".2f"),
                     kb, common.fmt(v["other_cpu_pct"], ".0f")])
    print()
    print(f"1080p30 source, {result['source']['frames']} frames; medians of {args.repeat}")
    print(common.render_table(["pipeline", "work", "n", "fps", "fps each run", "x real time", "CPU s",
                               "CPU s / video s", "cores busy", "kbit/s out", "other procs, % of a core"], rows, markdown=md))

    pl, cl = s.get("pyav/ladder"), s.get("cli/ladder")
    verdict = []
    if pl and cl:
        ratio = pl["fps"] / cl["fps"]
        cpu_ratio = pl["cpu"] / cl["cpu"] if cl["cpu"] else None
        result["verdict"] = {"fps_ratio": ratio, "cpu_ratio": cpu_ratio, "realtime": pl["realtime"]}
        verdict.append(f"PyAV ladder vs ffmpeg CLI: {pl['fps']:.1f} / {cl['fps']:.1f} fps = {ratio:.2f}x "
                       f"(goal >= {GOALS['cli_ratio']}x): {'MET' if ratio >= GOALS['cli_ratio'] else 'NOT MET'}; "
                       f"CPU {pl['cpu']:.1f} / {cl['cpu']:.1f} s = {common.fmt(cpu_ratio, '.2f')}x")
        verdict.append(f"real-time factor, 1080p30 -> 720p + 480p, {args.preset}: {pl['realtime']:.2f}x "
                       f"(goal >= {GOALS['realtime']}x): {'MET' if pl['realtime'] >= GOALS['realtime'] else 'NOT MET'}")
    # CPU per rung: CPU s per video second, rung alone minus decode alone
    rows = []
    for impl in ("pyav", "cli"):
        d, a, b, lad = (s.get(f"{impl}/{m}") for m in ("decode", "720p", "480p", "ladder"))
        if not d:
            continue
        dec = d["cpu_per_video_second"]
        rows.append([label[impl], common.fmt(dec, ".3f"),
                     common.fmt(a and a["cpu_per_video_second"] - dec, ".3f"),
                     common.fmt(b and b["cpu_per_video_second"] - dec, ".3f"),
                     common.fmt(lad and lad["cpu_per_video_second"], ".3f"),
                     common.fmt(lad and a and b and dec + (a["cpu_per_video_second"] - dec)
                                + (b["cpu_per_video_second"] - dec), ".3f")])
    if rows:
        print()
        print("CPU per second of 1080p30 video (CPU seconds / video second = cores at real time); rung = rung alone - decode alone")
        print(common.render_table(["pipeline", "decode", "720p rung", "480p rung", "whole ladder (measured)",
                                   "decode + 720p + 480p (sum)"], rows, markdown=md))
    # identical settings? x264's own option strings
    first = {(r["impl"], r["mode"]): r for r in reversed(result["runs"])}
    pr, cr = first.get(("pyav", "ladder")), first.get(("cli", "ladder"))
    if pr and cr:
        print()
        for name in pr["rungs"]:
            a, b = pr["rungs"][name], cr["rungs"].get(name, {})
            diff = x264_diff(a.get("x264"), b.get("x264"))
            result.setdefault("x264_option_diff", {})[name] = diff
            print(f"{name}: frames out PyAV {a.get('frames')} / CLI {b.get('frames')}, IDR {a.get('idr_frames')} / "
                  f"{b.get('idr_frames')}, size {a.get('size')} / {b.get('size')}; x264 options that differ "
                  f"(PyAV, CLI): {diff or 'none'}")
        print(f"x264: PyAV {(pr['rungs'][next(iter(pr['rungs']))].get('x264') or '?')[:40]} | "
              f"CLI {(cr['rungs'][next(iter(cr['rungs']))].get('x264') or '?')[:40]}")
        det = pr["detail"]
        print(f"PyAV pipeline (one run): queues {json.dumps({k: {'mean': round(v['mean'], 1), 'full %': round(v['full_pct'])} for k, v in det['queues'].items()})}; "
              f"thread CPU s {json.dumps({k: round(v, 1) for k, v in det['thread_cpu_by_role'].items()})}; "
              f"dropped {det['dropped_packets']}, shed {det['shed_events']}")
    prof = result.get("profile")
    if prof and prof.get("summary"):
        print()
        print(f"py-spy ({prof['summary']['samples']} samples, {prof['raw']['path']}): by thread "
              + ", ".join(f"{t} {n}" for t, n in list(prof["summary"]["by_thread"].items())[:8]))
        for f, n, pct in prof["summary"]["own_top"][:12]:
            print(f"  {pct:5.1f} %  {f}")
    lat = [l for l in result["latency"] if "error" not in l]
    if lat:
        print()
        rows = []
        for i, l in enumerate(lat):
            g, h = l["glass_to_glass"] or {}, l["hls_latency"] or {}
            sv = l["server"]
            rows.append([str(i + 1), common.fmt(g.get("p50"), ".2f"), common.fmt(g.get("p95"), ".2f"),
                         common.fmt(h.get("p50"), ".2f"),
                         *(f"{common.fmt(sv.get(n, {}).get('part_wait', {}).get('p50'), '.3f')} / "
                           f"{common.fmt(sv.get(n, {}).get('part_wait', {}).get('p95'), '.3f')}" for n in ("720p", "480p", "source")),
                         str(l["played_heights"]), str(l["rebuffers"]), str(l["hls_errors"]),
                         common.fmt(l.get("cpu_percent_system"), ".0f")])
        g50 = common.median([(l["glass_to_glass"] or {}).get("p50") for l in lat])
        g95 = common.median([(l["glass_to_glass"] or {}).get("p95") for l in lat])
        rows.append(["median", common.fmt(g50, ".2f"), common.fmt(g95, ".2f"),
                     common.fmt(common.median([(l["hls_latency"] or {}).get("p50") for l in lat]), ".2f"),
                     *(f"{common.fmt(common.median([l['server'].get(n, {}).get('part_wait', {}).get('p50') for l in lat]), '.3f')} / "
                       f"{common.fmt(common.median([l['server'].get(n, {}).get('part_wait', {}).get('p95') for l in lat]), '.3f')}"
                       for n in ("720p", "480p", "source")), "", "", "", ""])
        rows.append(["worst run", common.fmt(max((l["glass_to_glass"] or {}).get("p50") or 0 for l in lat), ".2f"),
                     common.fmt(max((l["glass_to_glass"] or {}).get("p95") or 0 for l in lat), ".2f"),
                     common.fmt(max((l["hls_latency"] or {}).get("p50") or 0 for l in lat), ".2f"),
                     *(f"{common.fmt(max(l['server'].get(n, {}).get('part_wait', {}).get('p50') or 0 for l in lat), '.3f')} / "
                       f"{common.fmt(max(l['server'].get(n, {}).get('part_wait', {}).get('p95') or 0 for l in lat), '.3f')}"
                       for n in ("720p", "480p", "source")), "", "", "", ""])
        print(f"latency through the ladder: 1080p30 publisher, hls.js on the 720p level, {args.latency_seconds:g} s "
              f"measured after {args.latency_warmup:g} s")
        print(common.render_table(["run", "glass-to-glass p50 s", "p95 s", "hls.latency p50 s",
                                   "part wait 720p p50/p95 s", "480p", "source", "heights played", "rebuffers",
                                   "hls.js errors", "machine CPU % (2 cores = 100)"], rows, markdown=md))
        result.setdefault("verdict", {})["glass_to_glass_p50"] = g50
        result["verdict"]["glass_to_glass_p95"] = g95
        if g50 is not None:
            worst = max((l["glass_to_glass"] or {}).get("p95") or 0 for l in lat)
            verdict.append(f"glass-to-glass on the 720p rung: p50 {g50:.2f} s, p95 {g95:.2f} s (medians of {len(lat)} "
                           f"runs; worst run's p95 {worst:.2f} s) (goal <= {GOALS['glass_to_glass_s']} s): "
                           f"{'MET' if g50 <= GOALS['glass_to_glass_s'] else 'NOT MET'}")
    print()
    for line in verdict:
        print(line)


if __name__ == "__main__":
    sys.exit(main())
