#!/usr/bin/env python3
"""Viewer benchmark: K simulated LL-HLS viewers of one live stream, plus an nginx anchor.

One sfstream server (its own process, uvloop, pinned to CPU 0) packages one
real-time stream (a pre-encoded 720p30 ~3 Mbps FLV replayed by `ffmpeg -re
-stream_loop -1 -c copy`). A separate load process (pinned to the other CPU)
runs K viewers on uvloop. Each viewer does what an LL-HLS player with preload
hints does (hls.js in low-latency mode, Safari):

  1. GET index.m3u8, then source/media.m3u8; start at the live edge;
  2. loop: read EXT-X-PRELOAD-HINT (msn, part) from the last playlist and issue,
     concurrently on its two keep-alive connections,
       - GET part-TOKEN-MSN.PART.m4s          (held by the server until complete)
       - GET media.m3u8?_HLS_msn=MSN&_HLS_part=PART  (blocking playlist reload)
     then, if the new playlist lists parts the viewer does not have (the hinted
     part 404s when the segment was cut before it), fetch those first.

The server process is a small wrapper around `sfstream.app.Server` (this file,
`_server` mode) that records, for every part, `published_at` (the
CLOCK_MONOTONIC time it became servable). Viewers record CLOCK_MONOTONIC when
each response's last byte was processed, so

    delay = response done (viewer) - published_at (server)

is exact across processes. A server too busy to read its publisher publishes
parts late, which that delay cannot see, so each response is also measured end
to end: from the part's completion on the real-time clock (its media end time,
plus the publish lag measured before the viewers started) - "e2e".

For each K: requests/s (client side: responses completed in the window),
delay p50/p95/p99 and e2e p95, server CPU (process, and the whole pinned core)
and RSS, the server's and the client's event-loop lag, ingest lag, join time
(viewer start -> first media playlist), errors (non-200, timeouts, connection
failures; the legitimate 404 of a hinted part that never came because the
segment was cut first is counted apart, and checked against the parts the
server really published), and the CPU other processes took meanwhile (this is
a shared machine: a step is repeated, up to --retries, when they took more
than --retry-above %; every attempt is kept in the JSON).

Goal (the platform requirement): 10,000 concurrent viewers of one stream on
one node with p95 <= part target + 100 ms; a step holds when both the delay
and the e2e p95 are within it, errors <= 1 % and >= 95 % of the (viewer, part)
pairs were delivered. Steps stop at the first K that misses it (unless
--keep-going).

The server runs from the working tree, or with --sfstream-rev REV from a
`git archive` of REV (others edit the tree while benchmarks run); each step
records the digest of the code its server imported.

Anchor: nginx serving the same playlist and part files from a directory,
against sfstream's non-blocking URLs (plain media.m3u8 + existing parts), at
fixed request rates (this file's client, `_poll` mode) and at saturation (wrk,
if installed): CPU per 1000 requests for both.

Profile: with --profile, one more step at the profiled K with
`py-spy record` (100 Hz) attached to the server; the top functions by own time
of the event-loop thread, and inclusive shares of the HLS, aiohttp and ingest
functions (raw stacks in benchmarks/results/viewers-profile-*.txt, collapsed
format: speedscope and flamegraph.pl read it).

Run by hand (never by CI), e.g.:

    python benchmarks/viewers.py                       # K = 100,500,1000,2000,5000,10000 (stops when it breaks)
    python benchmarks/viewers.py --viewers 100,500 --duration 10 --no-anchor
    python benchmarks/viewers.py --profile --profile-k 500 --viewers '' --no-anchor   # profile only
    python benchmarks/viewers.py --viewers 100,250,375,500,625,750,875,1000 --profile --sfstream-rev HEAD

Results: benchmarks/results/viewers-<timestamp>.json (git-ignored) and a table.
See benchmarks/README.md ("Viewers") for measured numbers.
"""
from __future__ import annotations

import argparse
import array
import asyncio
import bisect
import json
import os
import pickle
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py)

NAME = "bench"
KEY = "viewerbench-key-0001"
DEFAULT_STEPS = "100,500,1000,2000,5000,10000"
GOAL_MARGIN = 0.100  # p95 <= part target + 100 ms
SRC_IPS = 16  # viewers connect from 127.0.0.2..17: spreads ephemeral ports

# request kinds (load process)
K_MV, K_PL, K_PART, K_FETCH, K_BLOCK, K_POLL = range(6)
KIND_NAMES = {K_MV: "multivariant", K_PL: "playlist", K_PART: "hinted part", K_FETCH: "listed part",
              K_BLOCK: "blocking playlist", K_POLL: "poll"}

_PART_URI_RE = re.compile(rb'#EXT-X-PART:[^\n]*URI="(part-[0-9a-f]+-(\d+)\.(\d+)\.m4s)"')
_HINT_RE = re.compile(rb'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="(part-[0-9a-f]+-(\d+)\.(\d+)\.m4s)"')


def raise_nofile(want: int = 1 << 17) -> int:
    """Soft (and, as root, hard) RLIMIT_NOFILE as high as allowed; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if os.geteuid() == 0:
        try:
            nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            nr_open = hard
        target = max(hard, min(want, nr_open))
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            return target
        except (ValueError, OSError):
            pass
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    except (ValueError, OSError):
        return soft


# =========================================================================== server wrapper (`_server`)


def package_info(app) -> dict:
    """Which sfstream this process runs (others edit the tree while benchmarks run) and what its app does
    per request (middlewares, routes)."""
    import hashlib

    import sfstream

    root = Path(sfstream.__file__).resolve().parent
    h = hashlib.sha1()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root.parent)).encode())
        h.update(path.read_bytes())
    return {"path": str(root), "digest": h.hexdigest()[:10],
            "middlewares": [getattr(m, "__name__", repr(m)) for m in app.middlewares],
            "routes": len(app.router.routes()), "threads": [t.name for t in __import__("threading").enumerate()]}


def server_main(args) -> int:
    """sfstream.app.Server on uvloop; records every part's published_at, and the loop's lag."""
    import logging

    from sfstream.app import Server, announce
    from sfstream.config import Settings
    from sfstream.hls.routes import HLS_OUTPUT

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(
        host="127.0.0.1", rtmp_port=0, http_port=0, data_dir=Path(args.data_dir), log_level="warning",
        stream_keys={args.key: args.name}, hls_segment_duration=args.segment_duration,
        hls_part_duration=args.part_duration, hls_window=args.window,
    )
    out = Path(args.parts_out)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        server = Server(settings)
        await server.start()
        announce(server)
        parts: dict[str, list] = {}  # "token msn idx" -> [published_at, first_arrival, duration, media_end_unix, size, independent]
        meta = {"part_target": None, "tokens": [], "wall_minus_mono": time.time() - time.monotonic(),
                "sfstream": package_info(server.app)}
        lag: list[tuple[float, float]] = []

        def snapshot() -> None:
            stream = server.app[HLS_OUTPUT].get(args.name)
            if stream is None:
                return
            seg = stream.renditions["source"].segmenter
            if stream.token not in meta["tokens"]:
                meta["tokens"].append(stream.token)
            meta["part_target"] = seg.part_target_used
            for s in list(seg.segments) + ([seg.current] if seg.current is not None else []):
                end = s.program_date_time
                for p in list(s.parts):
                    end += p.duration
                    if not p.published_at:
                        continue
                    key = f"{stream.token} {s.msn} {p.index}"
                    if key not in parts:
                        parts[key] = [p.published_at, p.first_arrival, p.duration, end, len(p.data), p.independent]

        def dump() -> None:
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps({"meta": meta, "parts": parts, "lag": lag}))
            tmp.replace(out)

        async def collect() -> None:
            n = 0
            while True:
                snapshot()
                n += 1
                if n % 10 == 0:
                    dump()
                await asyncio.sleep(0.5)

        async def lag_monitor() -> None:  # how late a 50 ms timer fires = how busy the loop is
            while True:
                t = time.monotonic()
                await asyncio.sleep(0.05)
                now = time.monotonic()
                lag.append((now, now - t - 0.05))

        tasks = [loop.create_task(collect()), loop.create_task(lag_monitor())]
        await stop.wait()
        snapshot()
        dump()
        for t in tasks:
            t.cancel()
        await server.stop()
        return 0

    return common.run_uvloop(main())


# =========================================================================== load process: HTTP client


class ResponseError(Exception):
    pass


class HTTPConn(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive client connection: one request at a time.

    aiohttp's client costs several times more CPU per request; on a 2-core box
    the load generator must stay cheaper than the server it measures.
    Responses must carry Content-Length (sfstream and nginx both send it).
    """

    __slots__ = ("transport", "waiter", "keep_body", "head", "body", "clen", "got", "status", "started",
                 "closed", "will_close", "host", "path")

    def __init__(self, host: bytes) -> None:
        self.host = host
        self.transport = None
        self.waiter: asyncio.Future | None = None
        self.keep_body = False
        self.head = bytearray()
        self.body = bytearray()
        self.clen = -1
        self.got = 0
        self.status = 0
        self.started = 0.0
        self.closed = False
        self.will_close = False
        self.path = b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._fail(ConnectionResetError("connection lost"))

    def _fail(self, exc: Exception) -> None:
        w, self.waiter = self.waiter, None
        if w is not None and not w.done():
            w.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def request(self, path: bytes, keep_body: bool) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        if self.closed or self.will_close:
            fut.set_exception(ConnectionResetError("connection closed"))
            return fut
        self.waiter = fut
        self.keep_body = keep_body
        self.head = bytearray()
        self.body = bytearray()
        self.clen = -1
        self.got = 0
        self.started = time.monotonic()
        self.path = path
        self.transport.write(b"GET " + path + b" HTTP/1.1\r\nHost: " + self.host +
                             b"\r\nUser-Agent: sfstream-viewers\r\nAccept: */*\r\n\r\n")
        return fut

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            self.close()  # bytes nobody asked for
            return
        if self.clen < 0:
            if self.head:
                self.head += data
                buf = self.head
            else:
                buf = data  # usual case: the whole head is in the first chunk, no copy
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                if buf is data:
                    self.head += data
                return
            head = bytes(buf[:i]).lower()
            try:
                self.status = int(head[9:12])
                j = head.find(b"\r\ncontent-length:")
                if j < 0:
                    raise ValueError("no content-length")
                k = head.find(b"\r\n", j + 2)
                self.clen = int(head[j + 17: k if k > 0 else len(head)])
            except ValueError as exc:
                self._fail(ResponseError(f"bad response head: {exc}"))
                self.close()
                return
            self.will_close = b"\r\nconnection: close" in head
            self.got = len(buf) - i - 4
            if self.keep_body:
                self.body += buf[i + 4:]
        else:
            self.got += len(data)
            if self.keep_body:
                self.body += data
        if self.got >= self.clen:
            if self.got > self.clen:
                self._fail(ResponseError("more bytes than content-length"))
                self.close()
                return
            w, self.waiter = self.waiter, None
            if not w.done():
                w.set_result((self.status, bytes(self.body) if self.keep_body else None, time.monotonic()))


def _settle(*futs) -> None:
    """After a failure: consume or cancel the other pending futures (no 'never retrieved' noise)."""
    for f in futs:
        if f is None:
            continue
        if f.done():
            if not f.cancelled():
                f.exception()
        else:
            f.cancel()


class Playlist:
    __slots__ = ("hint", "parts", "ended")

    def __init__(self, hint, parts, ended) -> None:
        self.hint = hint  # (msn, idx, uri bytes) or None
        self.parts = parts  # [(msn, idx, uri bytes)] in order
        self.ended = ended


class LoadContext:
    def __init__(self, args) -> None:
        self.args = args
        self.host = b"127.0.0.1:%d" % args.port
        self.port = args.port
        self.base = f"/hls/{args.name}/source/".encode()
        self.mv_path = f"/hls/{args.name}/index.m3u8".encode()
        self.pl_path = self.base + b"media.m3u8"
        self.t0 = args.measure_from
        self.t1 = args.measure_to
        self.stopping = False
        self.conns: set[HTTPConn] = set()
        self._cache: dict[bytes, Playlist] = {}
        # in the measurement window
        self.status = Counter()  # (kind, status) -> n
        self.failures = Counter()  # timeouts, connect failures, ...
        self.part_vid = array.array("i")
        self.part_msn = array.array("i")
        self.part_idx = array.array("i")
        self.part_t = array.array("d")
        self.part_kind = array.array("b")
        self.block_msn = array.array("i")
        self.block_idx = array.array("i")
        self.block_t = array.array("d")
        self.h404 = []  # (msn, idx) of hinted parts answered 404
        self.poll_lat = array.array("d")
        # outside the window (ramp-up, warm-up, tail)
        self.status_outside = Counter()
        self.failures_outside = Counter()
        self.lag: list[tuple[float, float]] = []
        self.timeouts: list[tuple[float, str, str]] = []  # (started, path, state) of the first ones
        self.join: list[float] = []  # per viewer: start -> first media playlist, s

    def in_window(self, t: float) -> bool:
        return self.t0 <= t < self.t1

    def count(self, kind: int, status: int, t: float) -> None:
        (self.status if self.t0 <= t < self.t1 else self.status_outside)[(kind, status)] += 1

    def fail(self, what: str) -> None:
        (self.failures if self.in_window(time.monotonic()) else self.failures_outside)[what] += 1

    def parse(self, body: bytes) -> Playlist:
        pl = self._cache.get(body)
        if pl is None:
            parts = [(int(m.group(2)), int(m.group(3)), m.group(1)) for m in _PART_URI_RE.finditer(body)]
            h = _HINT_RE.search(body)
            hint = (int(h.group(2)), int(h.group(3)), h.group(1)) if h else None
            pl = Playlist(hint, parts, b"#EXT-X-ENDLIST" in body)
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[body] = pl
        return pl

    async def connect(self, src: str) -> HTTPConn:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: HTTPConn(self.host), "127.0.0.1", self.port, local_addr=(src, 0)),
                self.args.timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            self.fail("connect failed")
            raise ConnectionRefusedError(str(exc)) from None
        self.conns.add(conn)
        return conn

    def drop(self, *conns) -> None:
        for c in conns:
            if c is not None:
                c.close()
                self.conns.discard(c)

    async def get(self, conn: HTTPConn, path: bytes, kind: int, keep_body: bool):
        status, body, t = await conn.request(path, keep_body)
        self.count(kind, status, t)
        return status, body, t

    def record_part(self, vid: int, msn: int, idx: int, t: float, kind: int) -> None:
        if self.t0 <= t < self.t1:
            self.part_vid.append(vid)
            self.part_msn.append(msn)
            self.part_idx.append(idx)
            self.part_t.append(t)
            self.part_kind.append(kind)

    async def watchdog(self) -> None:
        """Requests older than --timeout fail as timeouts (one sweep instead of a timer per request)."""
        while True:
            await asyncio.sleep(0.5)
            limit = time.monotonic() - self.args.timeout
            for c in list(self.conns):
                if c.waiter is not None and c.started < limit:
                    c._fail(asyncio.TimeoutError())
                    kind = ("blocking playlist" if b"_HLS_msn" in c.path else "part" if b"/part-" in c.path
                            else "playlist")
                    # nothing back at all, or the head and part of the body?
                    state = "no response" if c.clen < 0 and not c.head else f"{c.got}/{c.clen} body bytes"
                    self.fail(f"timeout ({kind}, {'no response' if state == 'no response' else 'partial body'})")
                    if len(self.timeouts) < 200:
                        self.timeouts.append((c.started, c.path.decode(errors="replace"), state))
                    self.drop(c)

    async def lag_monitor(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.05)
            now = time.monotonic()
            self.lag.append((now, now - t - 0.05))


async def viewer(ctx: LoadContext, vid: int, start_at: float) -> None:
    """One LL-HLS player: preload-hinted part + blocking playlist reload, concurrently."""
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    joined_from = time.monotonic()  # join time: until the first media playlist arrives
    src = f"127.0.0.{2 + vid % SRC_IPS}"
    two = ctx.args.conns == 2
    a = b = None
    pl: Playlist | None = None
    have: tuple[int, int] | None = None
    while not ctx.stopping:
        fa = fb = None
        try:
            if a is None or a.closed or a.will_close:
                ctx.drop(a)
                a = await ctx.connect(src)
            if two and (b is None or b.closed or b.will_close):
                ctx.drop(b)
                b = await ctx.connect(src)
            if pl is None:
                status, _, _ = await ctx.get(a, ctx.mv_path, K_MV, False)
                status, body, _ = await ctx.get(a, ctx.pl_path, K_PL, True)
                if status != 200:
                    await asyncio.sleep(0.5)
                    continue
                if joined_from:
                    ctx.join.append(time.monotonic() - joined_from)
                    joined_from = 0.0
                pl = ctx.parse(body)
                have = pl.parts[-1][:2] if pl.parts else None
            if pl.ended or pl.hint is None:
                await asyncio.sleep(0.5)
                pl = None
                continue
            # Parts listed that we do not have (the hinted one 404'd at a segment cut): fetch them.
            for msn, idx, uri in pl.parts:
                if have is None or (msn, idx) > have:
                    status, _, t = await ctx.get(a, ctx.base + uri, K_FETCH, False)
                    if status == 200:
                        ctx.record_part(vid, msn, idx, t, 1)
                    have = (msn, idx)
            hm, hi, huri = pl.hint
            part_path = ctx.base + huri
            block_path = ctx.pl_path + b"?_HLS_msn=%d&_HLS_part=%d" % (hm, hi)
            if two:
                fa = a.request(part_path, False)
                fb = b.request(block_path, True)
                sa, _, ta = await fa
                sb, body, tb = await fb
            else:  # one connection: the part, then the (by then immediate) playlist
                fa = a.request(part_path, False)
                sa, _, ta = await fa
                fb = a.request(block_path, True)
                sb, body, tb = await fb
            ctx.count(K_PART, sa, ta)
            ctx.count(K_BLOCK, sb, tb)
            if sa == 200:
                ctx.record_part(vid, hm, hi, ta, 0)
                have = (hm, hi)
            elif sa == 404 and ctx.in_window(ta):
                ctx.h404.append((hm, hi))
            if sb == 200:
                if ctx.t0 <= tb < ctx.t1:
                    ctx.block_msn.append(hm)
                    ctx.block_idx.append(hi)
                    ctx.block_t.append(tb)
                pl = ctx.parse(body)
            else:
                await asyncio.sleep(0.2)
                pl = None
        except asyncio.CancelledError:
            _settle(fa, fb)
            raise
        except ConnectionRefusedError:  # connect failed (counted)
            _settle(fa, fb)
            await asyncio.sleep(0.5)
        except (ConnectionError, asyncio.TimeoutError, ResponseError, OSError) as exc:
            _settle(fa, fb)
            if not isinstance(exc, asyncio.TimeoutError):  # timeouts are counted by the watchdog
                ctx.fail("connection lost" if isinstance(exc, ConnectionError) else f"{type(exc).__name__}")
            ctx.drop(a, b)
            a = b = None
            pl = None
            await asyncio.sleep(0.2)
    ctx.drop(a, b)


async def poller(ctx: LoadContext, cid: int, paths: list[bytes], interval: float, start_at: float) -> None:
    """Anchor mode: non-blocking GETs at a fixed rate per connection (playlist and parts alternate)."""
    src = f"127.0.0.{2 + cid % SRC_IPS}"
    conn = None
    n = cid
    next_t = start_at + (cid % 997) / 997 * interval
    while not ctx.stopping:
        try:
            if conn is None or conn.closed or conn.will_close:
                ctx.drop(conn)
                conn = await ctx.connect(src)
            delay = next_t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            next_t += interval
            path = paths[n % len(paths)]
            n += 1
            t_start = time.monotonic()
            status, _, t = await ctx.get(conn, path, K_POLL, False)
            if ctx.in_window(t):
                ctx.poll_lat.append(t - t_start)
        except asyncio.CancelledError:
            raise
        except ConnectionRefusedError:
            await asyncio.sleep(0.5)
        except (ConnectionError, asyncio.TimeoutError, ResponseError, OSError) as exc:
            if not isinstance(exc, asyncio.TimeoutError):
                ctx.fail("connection lost" if isinstance(exc, ConnectionError) else f"{type(exc).__name__}")
            ctx.drop(conn)
            conn = None
            await asyncio.sleep(0.2)
    ctx.drop(conn)


def load_main(args) -> int:
    raise_nofile()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ctx = LoadContext(args)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        aux = [loop.create_task(ctx.watchdog()), loop.create_task(ctx.lag_monitor())]
        tasks = []
        if args.mode == "viewers":
            for i in range(args.count):
                vid = args.first + i
                start = args.start_at + args.ramp * i / max(1, args.count)
                tasks.append(loop.create_task(viewer(ctx, vid, start)))
        else:
            paths = [p.encode() for p in json.loads(Path(args.paths).read_text())]
            interval = args.count / args.rate
            for i in range(args.count):
                tasks.append(loop.create_task(poller(ctx, args.first + i, paths, interval, args.start_at)))
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, args.measure_to + 0.3 - time.monotonic()))
        except asyncio.TimeoutError:
            pass
        ctx.stopping = True
        for t in tasks + aux:
            t.cancel()
        await asyncio.gather(*tasks, *aux, return_exceptions=True)
        ctx.drop(*list(ctx.conns))
        result = {
            "first": args.first, "count": args.count,
            "status": dict(ctx.status), "status_outside": dict(ctx.status_outside),
            "failures": dict(ctx.failures), "failures_outside": dict(ctx.failures_outside),
            "part_vid": ctx.part_vid, "part_msn": ctx.part_msn, "part_idx": ctx.part_idx,
            "part_t": ctx.part_t, "part_kind": ctx.part_kind,
            "block_msn": ctx.block_msn, "block_idx": ctx.block_idx, "block_t": ctx.block_t,
            "h404": ctx.h404, "poll_lat": ctx.poll_lat, "lag": ctx.lag, "timeouts": ctx.timeouts, "join": ctx.join,
        }
        tmp = Path(args.out + ".tmp")
        with open(tmp, "wb") as f:
            pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(args.out)

    common.run_uvloop(main())
    return 0


# =========================================================================== orchestrator


class Stack:
    """One sfstream wrapper process + one real-time publisher."""

    def __init__(self, procs: common.Procs, args, flv: Path, tag: str) -> None:
        self.procs = procs
        self.run_dir = common.make_run_dir(f"sfviewers-{tag}-")
        self.parts_file = self.run_dir / "parts.json"
        out, err = self.run_dir / "server.stdout", self.run_dir / "server.stderr"
        cmd = [sys.executable, str(Path(__file__).resolve()), "_server", "--name", NAME, "--key", KEY,
               "--data-dir", str(self.run_dir / "data"), "--parts-out", str(self.parts_file),
               "--segment-duration", str(args.segment_duration), "--part-duration", str(args.part_duration),
               "--window", str(args.window)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if args.snapshot_dir:  # a `git archive` of --sfstream-rev, ahead of the editable install
            env["PYTHONPATH"] = args.snapshot_dir + os.pathsep + env.get("PYTHONPATH", "")
        with open(out, "wb") as o, open(err, "wb") as e:
            self.server = procs.start("sfstream", common.pinned(cmd, args.server_cpus), stdout=o, stderr=e, env=env,
                                      cwd=str(self.run_dir), stop_timeout=20)
        self.stderr_path = err
        deadline = time.monotonic() + 30
        self.http_port = self.rtmp_port = 0
        while not self.http_port:
            for line in out.read_text(errors="replace").splitlines():
                if line.startswith("sfstream listening:"):
                    self.rtmp_port = int(line.split("RTMP", 1)[1].split(",")[0].rsplit(":", 1)[1])
                    self.http_port = int(line.split("HTTP", 1)[1].strip().rsplit(":", 1)[1])
            if self.server.popen.poll() is not None:
                raise RuntimeError("sfstream wrapper exited:\n" + err.read_text(errors="replace")[-3000:])
            if time.monotonic() > deadline:
                raise TimeoutError("sfstream wrapper did not start")
            time.sleep(0.05)
        self.meter = common.TreeMeter(self.server.popen.pid)
        pub_cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(flv),
                   "-c", "copy", "-f", "flv", f"rtmp://127.0.0.1:{self.rtmp_port}/live/{KEY}"]
        with open(self.run_dir / "ffmpeg.log", "wb") as log:
            self.publisher = procs.start("ffmpeg", common.pinned(pub_cmd, args.load_cpus), stdout=log, stderr=log,
                                         stop_timeout=5)
        self.base = f"http://127.0.0.1:{self.http_port}/hls/{NAME}/"

    def wait_segments(self, n: int = 2, timeout: float = 30.0) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = common.http_get(self.base + "source/media.m3u8", timeout=2)
            if status == 200 and body.count(b"#EXTINF:") >= n:
                return body
            if self.server.popen.poll() is not None or self.publisher.popen.poll() is not None:
                break
            time.sleep(0.25)
        raise RuntimeError("the stream did not come up: " + self.stderr_path.read_text(errors="replace")[-2000:]
                           + (self.run_dir / "ffmpeg.log").read_text(errors="replace")[-2000:])

    def stop(self) -> dict:
        """Stop the publisher, then the server (which writes the parts file); return that file."""
        if self.publisher in self.procs.items:
            self.procs.stop(self.publisher)
        if self.server in self.procs.items:
            self.procs.stop(self.server)
        try:
            return json.loads(self.parts_file.read_text())
        except (OSError, ValueError):
            return {"meta": {}, "parts": {}, "lag": []}

    def cleanup(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)


def stats_ms(values) -> dict:
    values = sorted(values)
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None}

    def q(p):
        return values[min(len(values) - 1, int(p / 100 * len(values)))] * 1000

    return {"n": len(values), "p50": q(50), "p95": q(95), "p99": q(99), "max": values[-1] * 1000,
            "mean": sum(values) / len(values) * 1000}


class WindowMeter:
    """Server CPU (process tree), RSS samples and load-process CPU over the measurement window."""

    def __init__(self, server_meter: common.TreeMeter, load_pids: list[int], core: int | None = None) -> None:
        self.server = server_meter
        self.loads = [common.TreeMeter(p) for p in load_pids]
        self.rss: list[int] = []
        self.core = core  # the server's pinned CPU: how busy is the whole core (softirq, steal, others)?

    def _core_times(self):
        if self.core is None:
            return None
        try:
            return psutil.cpu_times(percpu=True)[self.core]
        except (IndexError, psutil.Error):
            return None

    @staticmethod
    def _all_cpu() -> dict[int, tuple[str, float]]:
        out = {}
        for proc in psutil.process_iter(["name", "cpu_times"]):
            t = proc.info["cpu_times"]
            if t is not None:
                out[proc.pid] = (proc.info["name"], t.user + t.system)
        return out

    def begin(self) -> None:
        self.t0 = time.monotonic()
        self.c0 = self.server.cpu_seconds()
        self.l0 = [m.cpu_seconds() for m in self.loads]
        self.k0 = self._core_times()
        self.a0 = self._all_cpu()

    def foreign(self, wall: float) -> tuple[float, list]:
        """CPU used during the window by processes that are not this benchmark's (a noisy machine)."""
        me = psutil.Process()
        ours = {me.pid} | {c.pid for c in me.children(recursive=True)}
        by_name = Counter()
        for pid, (name, t) in self._all_cpu().items():
            if pid in ours:
                continue
            before = self.a0.get(pid)
            by_name[name] += t - (before[1] if before else 0.0)
        total = sum(by_name.values())
        return 100 * total / wall, [(n, round(100 * v / wall, 1)) for n, v in by_name.most_common(3) if v > 0.05 * wall]

    def sample(self) -> None:
        self.rss.append(self.server.rss())

    def end(self) -> dict:
        wall = time.monotonic() - self.t0
        cpu = common.cpu_delta(self.c0, self.server.cpu_seconds())
        load = sum(common.cpu_delta(b, m.cpu_seconds()) for b, m in zip(self.l0, self.loads))
        self.sample()
        foreign_pct, foreign_top = self.foreign(wall)
        out = {"wall_s": wall, "foreign_cpu_pct": foreign_pct, "foreign_top": foreign_top, "server_cpu_s": cpu, "server_cpu_pct": 100 * cpu / wall,
               "load_cpu_pct": 100 * load / wall, "rss_mib_peak": max(self.rss) / common.MiB,
               "rss_mib_end": self.rss[-1] / common.MiB}
        k1 = self._core_times()
        if self.k0 is not None and k1 is not None:
            d = {f: getattr(k1, f) - getattr(self.k0, f) for f in k1._fields}
            span = sum(d.values()) or 1.0
            out["core"] = self.core
            out["core_busy_pct"] = 100 * (1 - (d.get("idle", 0) + d.get("iowait", 0)) / span)
            out["core_pct"] = {f: 100 * v / span for f, v in d.items() if v > 0}
        return out


def server_core(args) -> int | None:
    return int(args.server_cpus) if args.server_cpus.isdigit() else None


def tcp_counters() -> dict[str, int]:
    """TcpExt ListenOverflows / ListenDrops (accept queue full: the handshake's last ACK is dropped and the
    client, which believes it is connected, waits for SYN-ACK retransmits, 1 s, 3 s, 7 s ...)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for head, vals in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            for k, v in zip(head.split()[1:], vals.split()[1:]):
                if k in ("ListenOverflows", "ListenDrops", "TCPTimeouts", "TCPSynRetrans"):
                    out[k] = int(v)
    return out


def foreign_cpu(seconds: float = 3.0) -> tuple[float, list]:
    m = WindowMeter(common.TreeMeter(os.getpid()), [])
    m.begin()
    time.sleep(seconds)
    return m.foreign(time.monotonic() - m.t0)


def wait_for_quiet(args) -> dict:
    """Other sessions share this machine: wait (bounded) until they use less than --quiet-pct CPU."""
    deadline = time.monotonic() + args.quiet_wait
    waited = 0.0
    while True:
        pct, top = foreign_cpu()
        if pct <= args.quiet_pct or time.monotonic() >= deadline:
            return {"foreign_cpu_pct_before": pct, "foreign_top_before": top, "waited_s": waited}
        print(f"  other processes use {pct:.0f}% CPU {top}: waiting for a quieter moment ...", flush=True)
        time.sleep(5)
        waited += 8


def sleep_until(t: float, meter: WindowMeter | None = None, alive=None) -> None:
    while True:
        now = time.monotonic()
        if now >= t:
            return
        if alive is not None and not alive():
            raise RuntimeError("a benchmark process died during the run")
        time.sleep(min(1.0, t - now))
        if meter is not None:
            meter.sample()


def load_cmd(port: int, mode: str, first: int, count: int, start_at: float, t0: float, t1: float, out: Path,
             args, **extra) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "_load", "--mode", mode, "--port", str(port),
           "--name", NAME, "--first", str(first), "--count", str(count), "--start-at", repr(start_at),
           "--measure-from", repr(t0), "--measure-to", repr(t1), "--out", str(out), "--timeout", str(args.timeout),
           "--conns", str(args.conns)]
    for k, v in extra.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    return common.pinned(cmd, args.load_cpus)


def merge_loads(files: list[Path]) -> dict:
    merged: dict = {"status": Counter(), "status_outside": Counter(), "failures": Counter(),
                    "failures_outside": Counter(), "h404": [], "lag": [], "timeouts": [], "join": []}
    arrays = ("part_vid", "part_msn", "part_idx", "part_t", "part_kind", "block_msn", "block_idx", "block_t",
              "poll_lat")
    for name in arrays:
        merged[name] = None
    for f in files:
        with open(f, "rb") as fh:
            r = pickle.load(fh)
        for k in ("status", "status_outside", "failures", "failures_outside"):
            merged[k].update(r[k])
        merged["h404"] += r["h404"]
        merged["lag"] += r["lag"]
        merged["timeouts"] += r.get("timeouts", [])
        merged["join"] += r.get("join", [])
        for name in arrays:
            merged[name] = r[name] if merged[name] is None else merged[name] + r[name]
    return merged


def analyse_step(K: int, load: dict, server: dict, meter: dict, t0: float, t1: float, start_at: float,
                 part_target_cfg: float) -> dict:
    meta = server.get("meta", {})
    tokens = meta.get("tokens", [])
    token = tokens[-1] if tokens else None
    published: dict[tuple[int, int], list] = {}
    for key, v in server.get("parts", {}).items():
        tok, msn, idx = key.split()
        if tok == token:
            published[(int(msn), int(idx))] = v
    order = sorted(published)
    part_target = meta.get("part_target") or part_target_cfg
    goal_ms = (part_target + GOAL_MARGIN) * 1000

    # delay of every part response: done (viewer) - published_at (server)
    delays, delays_hinted, delays_listed, unmatched = [], [], [], 0
    got_by_viewer = Counter()
    cover_to = t1 - 1.0  # coverage: parts published in [t0, t1 - 1 s), answered within the window
    covered = 0
    # ingest lag: how late parts are published relative to the real-time media clock, above the
    # idle baseline (parts published before the viewers started)
    off = meta.get("wall_minus_mono", 0.0)
    lag_all = [(published[k][0], published[k][0] + off - published[k][3]) for k in order]
    base = [x for t, x in lag_all if t < start_at]
    baseline = sorted(base)[len(base) // 2] if base else (min((x for _, x in lag_all), default=0.0))
    # end to end: from when the part was complete on the real-time clock (its media end + the idle
    # publish lag), so a server too busy to read the publisher cannot hide its lateness
    e2e = []
    for vid, msn, idx, t, kind in zip(load["part_vid"] or [], load["part_msn"] or [], load["part_idx"] or [],
                                      load["part_t"] or [], load["part_kind"] or []):
        p = published.get((msn, idx))
        if p is None:
            unmatched += 1
            continue
        d = t - p[0]
        delays.append(d)
        e2e.append(t + off - p[3] - baseline)
        (delays_listed if kind else delays_hinted).append(d)
        got_by_viewer[vid] += 1
        covered += t0 <= p[0] < cover_to
    # blocking playlist: done - published_at of the part it waited for (or of the next one, at a cut)
    block_delays = []
    for msn, idx, t in zip(load["block_msn"] or [], load["block_idx"] or [], load["block_t"] or []):
        i = bisect.bisect_left(order, (msn, idx))
        if i < len(order):
            block_delays.append(t - published[order[i]][0])
    # hinted 404s are legitimate only if that part was never published
    h404_legit = sum(1 for m in load["h404"] if tuple(m) not in published)
    h404_bad = len(load["h404"]) - h404_legit

    status = load["status"]
    total_resp = sum(status.values())
    n404_hint = sum(n for (kind, st), n in status.items() if kind == K_PART and st == 404)
    errors_status = Counter()
    for (kind, st), n in status.items():
        if st != 200 and not (kind == K_PART and st == 404):
            errors_status[f"{KIND_NAMES[kind]} {st}"] += n
    if h404_bad:
        errors_status["hinted part 404 for a part that was published"] += h404_bad
    failures = load["failures"]
    n_errors = sum(errors_status.values()) + sum(failures.values())
    wall = t1 - t0
    parts_in_window = [k for k in order if t0 <= published[k][0] < t1]
    expected = K * sum(1 for k in parts_in_window if published[k][0] < cover_to)
    coverage = covered / expected * 100 if expected else None
    ingest = [x - baseline for t, x in lag_all if t0 <= t < t1]
    srv_lag = [x for t, x in server.get("lag", []) if t0 <= t < t1]
    cli_lag = [x for t, x in load["lag"] if t0 <= t < t1]
    d = stats_ms(delays)
    d_e2e = stats_ms(e2e)
    holds = (d["p95"] is not None and d["p95"] <= goal_ms and d_e2e["p95"] <= goal_ms
             and n_errors <= 0.01 * max(1, total_resp) and coverage is not None and coverage >= 95.0)
    return {
        "viewers": K,
        "window_s": wall,
        "requests": total_resp,
        "requests_per_s": total_resp / wall,
        "requests_per_s_by_kind": {KIND_NAMES[k]: sum(n for (kk, _), n in status.items() if kk == k) / wall
                                   for k in sorted({k for k, _ in status})},
        "part_target_s": part_target,
        "goal_ms": goal_ms,
        "delay_ms": d,
        "delay_e2e_ms": d_e2e,
        "ingest_baseline_ms": baseline * 1000,
        "delay_hinted_ms": stats_ms(delays_hinted),
        "delay_listed_ms": stats_ms(delays_listed),
        "blocking_playlist_delay_ms": stats_ms(block_delays),
        "unmatched_parts": unmatched,
        "parts_published_in_window": len(parts_in_window),
        "viewers_with_parts": len(got_by_viewer),
        "coverage_pct": coverage,
        "hinted_404": n404_hint,
        "hinted_404_legit": h404_legit,
        "errors": n_errors,
        "errors_by_status": dict(errors_status),
        "failures": dict(failures),
        "join_ms": stats_ms(load["join"]),  # every viewer, ramp included: start -> first media playlist
        "viewers_joined": len(load["join"]),
        "timeouts_first": [(round(st - t0, 3), path, state) for st, path, state in sorted(load["timeouts"])[:20]],
        "outside_window": {"status": {f"{KIND_NAMES[k]} {s}": n for (k, s), n in load["status_outside"].items()
                                      if s != 200 and not (k == K_PART and s == 404)},
                           "failures": dict(load["failures_outside"])},
        "ingest_lag_ms": stats_ms(ingest),
        "server_loop_lag_ms": stats_ms(srv_lag),
        "client_loop_lag_ms": stats_ms(cli_lag),
        **meter,
        "server_cpu_ms_per_1k_req": meter["server_cpu_s"] / total_resp * 1e6 if total_resp else None,
        "holds_goal": holds,
    }


def run_viewer_step(procs: common.Procs, args, flv: Path, K: int, profile_out: Path | None = None) -> dict:
    """One step; repeated (up to --retries) when other processes took much CPU during the window:
    the attempt with the least foreign CPU is the result, every attempt is kept."""
    attempts = []
    for attempt in range(1 + max(0, args.retries)):
        r = _viewer_step_once(procs, args, flv, K, profile_out)
        attempts.append(r)
        if r.get("foreign_cpu_pct", 0) <= args.retry_above:
            break
        print(f"  other processes used {r['foreign_cpu_pct']:.0f}% CPU during the window {r.get('foreign_top')}: "
              f"p95 {common.fmt(r['delay_ms']['p95'], '.0f')} ms; running K = {K} again", flush=True)
    best = min(attempts, key=lambda r: r.get("foreign_cpu_pct", 0))
    best = dict(best)
    best["attempts"] = [{k: a[k] for k in ("foreign_cpu_pct", "foreign_top", "requests_per_s", "delay_ms",
                                           "server_cpu_pct", "core_busy_pct", "errors", "holds_goal") if k in a}
                        for a in attempts]
    return best


def _viewer_step_once(procs: common.Procs, args, flv: Path, K: int, profile_out: Path | None = None) -> dict:
    quiet = wait_for_quiet(args)
    stack = Stack(procs, args, flv, f"k{K}")
    loads: list[common.Managed] = []
    spy = None
    try:
        stack.wait_segments(2)
        ramp = args.ramp if args.ramp is not None else min(30.0, max(2.0, K / 200))
        tcp0 = tcp_counters()
        start_at = time.monotonic() + 1.0
        t0 = start_at + ramp + args.warmup
        t1 = t0 + args.duration
        n_procs = max(1, min(args.load_procs, K))
        outs = []
        for i in range(n_procs):
            first = K * i // n_procs
            count = K * (i + 1) // n_procs - first
            out = stack.run_dir / f"load-{i}.pickle"
            outs.append(out)
            with open(stack.run_dir / f"load-{i}.log", "wb") as log:
                loads.append(procs.start(f"load-{i}", load_cmd(stack.http_port, "viewers", first, count, start_at,
                                                               t0, t1, out, args, ramp=ramp),
                                         stdout=log, stderr=log, stop_timeout=30))
        meter = WindowMeter(stack.meter, [m.popen.pid for m in loads], server_core(args))
        alive = lambda: all(m.popen.poll() is None for m in loads) and stack.server.popen.poll() is None  # noqa
        sleep_until(t0, None, alive)
        meter.begin()
        if profile_out is not None:
            spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            spy_log = open(stack.run_dir / "py-spy.log", "wb")
            spy = procs.start("py-spy", common.pinned([spy_bin, "record", "--pid", str(stack.server.popen.pid),
                                                "--duration", str(int(args.duration) - 1), "--rate", "100",
                                                "--nolineno", "--format", "raw",
                                                "-o", str(profile_out)],
                                               args.load_cpus), stdout=spy_log, stderr=spy_log, stop_timeout=30)
        sleep_until(t1, meter, alive)
        window = meter.end()
        for m in loads:
            try:
                m.popen.wait(timeout=60 + K / 200)
            except subprocess.TimeoutExpired:
                print(f"  {m.name} did not finish in time", file=sys.stderr)
            procs.stop(m)
        if spy is not None:
            try:
                spy.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            procs.stop(spy, sig=signal.SIGINT)
        server = stack.stop()
        missing = [o for o in outs if not o.exists()]
        if missing:
            logs = "".join((stack.run_dir / f"load-{i}.log").read_text(errors="replace")[-2000:]
                           for i in range(n_procs))
            raise RuntimeError(f"load process wrote no results: {missing}\n{logs}")
        load = merge_loads(outs)
        result = analyse_step(K, load, server, window, t0, t1, start_at, args.part_duration)
        result["ramp_s"] = ramp
        tcp1 = tcp_counters()
        result["tcp_counters"] = {k: tcp1[k] - tcp0.get(k, 0) for k in tcp1}  # whole step, machine-wide
        result["server_info"] = server.get("meta", {}).get("sfstream")
        result.update(quiet)
        result["load_procs"] = n_procs
        problems, first_lines = 0, []
        for line in stack.stderr_path.read_text(errors="replace").splitlines():
            if any(w in line for w in ("ERROR", "CRITICAL", "Traceback", "WARNING")):
                problems += 1
                if len(first_lines) < 10:
                    first_lines.append(line[:300])
        result["server_log_problems"] = problems
        result["server_log_first"] = first_lines
        return result
    finally:
        for m in loads + ([spy] if spy else []):
            if m in procs.items:
                procs.stop(m)
        stack.stop()
        stack.cleanup()


# --------------------------------------------------------------------------- profile summary


PROFILE_INCLUSIVE = (
    "RequestHandler.data_received",  # aiohttp: read + parse requests (C parser), create handler tasks
    "RequestHandler.start",  # aiohttp: per-connection loop, request objects, keep-alive
    "RequestHandler._handle_request",
    "UrlDispatcher.resolve",  # routing
    "security_headers", "error_middleware", "rate_limit",  # API middlewares (run for /hls too)
    "media_playlist", "_part", "media_file",  # sfstream HLS handlers
    "Rendition.wait_until", "wait_for", "shield",  # blocking: waiting for a part
    "Rendition.playlist_bytes",
    "_response", "Response.__init__",  # building responses
    "StreamResponse.prepare", "StreamWriter.write_headers", "StreamWriter._writelines", "StreamWriter.write_eof",
    "PublishSession.data_received", "HLSStream.on_packet", "HLSStream._changed", "Rendition.notify",  # ingest
)


def summarise_profile(raw: Path, top: int = 25) -> dict:
    """py-spy raw (collapsed) stacks -> top functions by own and by total samples."""
    own, total, others = Counter(), Counter(), Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        n = int(n)
        frames = stack.split(";")
        frames = [f for f in frames if not f.startswith(("process ", "thread "))] or frames
        if "(threading.py)" in frames[0]:  # not the event-loop thread (aiosqlite's worker, ...)
            others[frames[-1]] += n
            continue
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    pct = lambda c: [(f, n, 100 * n / max(1, samples)) for f, n in c.most_common(top)]  # noqa: E731
    inclusive = {}
    for name in PROFILE_INCLUSIVE:
        n = sum(c for f, c in total.items() if f.startswith(name + " ("))
        inclusive[name] = round(100 * n / max(1, samples), 1)
    return {"samples": samples, "own": pct(own), "total": pct(total), "inclusive_pct": inclusive,
            "other_threads": [(f, n) for f, n in others.most_common(5)]}


# --------------------------------------------------------------------------- nginx anchor

NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    types {{ application/vnd.apple.mpegurl m3u8; video/mp4 m4s mp4; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ root {root}; add_header Cache-Control no-cache; }}
    }}
}}
"""


def snapshot_files(stack: Stack, root: Path) -> list[str]:
    """The current plain playlist and the parts of the last complete segment, copied under `root`;
    returns the request paths, alternating playlist and part (the viewers' 1:1 mix)."""
    status, body = common.http_get(stack.base + "source/media.m3u8")
    if status != 200:
        raise RuntimeError(f"anchor: playlist {status}")
    text = body.decode()
    segs = re.findall(r"#EXTINF:[^\n]*\n(seg-[0-9a-f]+-(\d+)\.m4s)", text)
    last_msn = int(segs[-1][1])
    parts = [m for m in re.findall(r'URI="(part-[0-9a-f]+-(\d+)\.\d+\.m4s)"', text) if int(m[1]) == last_msn]
    d = root / "hls" / NAME / "source"
    d.mkdir(parents=True, exist_ok=True)
    (d / "media.m3u8").write_bytes(body)
    paths = []
    for uri, _ in parts:
        st, data = common.http_get(stack.base + "source/" + uri)
        if st != 200:
            raise RuntimeError(f"anchor: {uri} {st}")
        (d / uri).write_bytes(data)
        paths += [f"/hls/{NAME}/source/media.m3u8", f"/hls/{NAME}/source/{uri}"]
    for p in [root, root / "hls", root / "hls" / NAME, d]:
        os.chmod(p, 0o755)
    for f in d.iterdir():
        os.chmod(f, 0o644)
    return paths


def poll_run(procs, args, port: int, meter_tree: common.TreeMeter, paths_file: Path, rate: float, conns: int,
             run_dir: Path, tag: str) -> dict:
    start_at = time.monotonic() + 0.5
    t0 = start_at + args.anchor_warmup
    t1 = t0 + args.anchor_duration
    out = run_dir / f"poll-{tag}.pickle"
    with open(run_dir / f"poll-{tag}.log", "wb") as log:
        m = procs.start(f"poll-{tag}", load_cmd(port, "poll", 0, conns, start_at, t0, t1, out, args,
                                                rate=rate, paths=paths_file), stdout=log, stderr=log)
    meter = WindowMeter(meter_tree, [m.popen.pid], server_core(args))
    sleep_until(t0, None, lambda: m.popen.poll() is None)
    meter.begin()
    sleep_until(t1, meter, lambda: m.popen.poll() is None)
    window = meter.end()
    m.popen.wait(timeout=60)
    procs.stop(m)
    load = merge_loads([out])
    n = sum(load["status"].values())
    ok = sum(c for (k, s), c in load["status"].items() if s == 200)
    errors = n - ok + sum(load["failures"].values())
    return {"target_rate": rate, "conns": conns, "requests": n, "requests_per_s": n / (t1 - t0), "errors": errors,
            "latency_ms": stats_ms(load["poll_lat"]),
            "client_loop_lag_ms": stats_ms([x for t, x in load["lag"] if t0 <= t < t1]),
            "server_cpu_ms_per_1k_req": window["server_cpu_s"] / n * 1e6 if n else None, **window}


WRK_LUA = """\
local paths = {{{paths}}}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1])
end
"""


def wrk_run(procs, args, port: int, meter_tree: common.TreeMeter, paths: list[str], run_dir: Path, tag: str) -> dict:
    script = run_dir / "rotate.lua"
    script.write_text(WRK_LUA.format(paths=", ".join(json.dumps(p) for p in paths)))
    out = run_dir / f"wrk-{tag}.txt"
    cmd = ["wrk", "-t1", f"-c{args.wrk_conns}", f"-d{int(args.anchor_duration)}s", "-s", str(script),
           f"http://127.0.0.1:{port}/"]
    meter = WindowMeter(meter_tree, [], server_core(args))
    with open(out, "wb") as o:
        m = procs.start(f"wrk-{tag}", common.pinned(cmd, args.load_cpus), stdout=o, stderr=subprocess.STDOUT)
        meter.begin()
        while m.popen.poll() is None:
            time.sleep(0.5)
            meter.sample()
        window = meter.end()
    procs.stop(m)
    text = out.read_text(errors="replace")
    reqs = re.search(r"(\d+) requests in ([\d.]+)(m?s)", text)
    n = int(reqs.group(1)) if reqs else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: (.*)", text)
    return {"conns": args.wrk_conns, "requests": n, "requests_per_s": n / window["wall_s"],
            "non_2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": sock.group(1) if sock else "",
            "server_cpu_ms_per_1k_req": window["server_cpu_s"] / n * 1e6 if n else None, **window,
            "raw": text[-1500:]}


def run_anchor(procs: common.Procs, args, flv: Path) -> dict:
    result: dict = {"sfstream": {"poll": [], "wrk": None}, "nginx": {"poll": [], "wrk": None}}
    rates = [float(r) for r in args.anchor_rates.split(",") if r]
    result["quiet"] = wait_for_quiet(args)
    stack = Stack(procs, args, flv, "anchor")
    root = stack.run_dir / "www"
    nginx_m = None
    try:
        stack.wait_segments(3)
        paths = []
        for i, rate in enumerate(rates):
            paths = snapshot_files(stack, root)  # fresh URLs: parts stay in sfstream's window ~20 s
            pf = stack.run_dir / "paths.json"
            pf.write_text(json.dumps(paths))
            r = poll_run(procs, args, stack.http_port, stack.meter, pf, rate, args.anchor_conns, stack.run_dir,
                         f"sf-{i}")
            result["sfstream"]["poll"].append(r)
            print(f"  anchor sfstream {rate:>6.0f} req/s: {fmt_anchor(r)}", flush=True)
        if shutil.which("wrk"):
            paths = snapshot_files(stack, root)
            r = wrk_run(procs, args, stack.http_port, stack.meter, paths, stack.run_dir, "sf")
            result["sfstream"]["wrk"] = r
            print(f"  anchor sfstream wrk: {fmt_anchor(r)}", flush=True)
        result["files"] = {"paths": len(paths), "playlist_bytes": (root / "hls" / NAME / "source" / "media.m3u8").stat().st_size,
                           "part_bytes_mean": sum((root / p.lstrip("/")).stat().st_size for p in paths[1::2])
                           / max(1, len(paths[1::2]))}
        stack.stop()  # free CPU 0 for nginx
        prefix = stack.run_dir / "nginx"
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        os.chmod(stack.run_dir, 0o755)
        port = common.free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, root=root))
        with open(prefix / "nginx.stderr", "wb") as o:
            nginx_m = procs.start("nginx", common.pinned([common.nginx_binary(), "-c", str(conf), "-p", str(prefix)],
                                                  args.server_cpus),
                                  stdout=o, stderr=subprocess.STDOUT, stop_signal=signal.SIGQUIT)
        common.wait_for_port("127.0.0.1", port, 15, nginx_m.popen)
        tree = common.TreeMeter(nginx_m.popen.pid)
        deadline = time.monotonic() + 5
        while len(tree.processes()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        pf = stack.run_dir / "paths.json"
        pf.write_text(json.dumps(paths))
        for i, rate in enumerate(rates):
            r = poll_run(procs, args, port, tree, pf, rate, args.anchor_conns, stack.run_dir, f"ng-{i}")
            result["nginx"]["poll"].append(r)
            print(f"  anchor nginx    {rate:>6.0f} req/s: {fmt_anchor(r)}", flush=True)
        if shutil.which("wrk"):
            r = wrk_run(procs, args, port, tree, paths, stack.run_dir, "ng")
            result["nginx"]["wrk"] = r
            print(f"  anchor nginx wrk: {fmt_anchor(r)}", flush=True)
        return result
    finally:
        if nginx_m is not None and nginx_m in procs.items:
            procs.stop(nginx_m)
        stack.stop()
        stack.cleanup()


def fmt_anchor(r: dict) -> str:
    return (f"{r['requests_per_s']:.0f} req/s, CPU {r['server_cpu_pct']:.0f}% (core {common.fmt(r.get('core_busy_pct'), '.0f')}%), "
            f"{common.fmt(r['server_cpu_ms_per_1k_req'], '.1f')} CPU-ms/1k req, errors {r.get('errors', r.get('non_2xx'))}, "
            f"other processes {common.fmt(r.get('foreign_cpu_pct'), '.0f')}% {r.get('foreign_top')}")


# --------------------------------------------------------------------------- tables


def viewers_table(steps: list[dict], markdown: bool = False) -> str:
    headers = ["K", "req/s", "p50 ms", "p95 ms", "p99 ms", "e2e p95", "pl p95", "CPU %", "core %", "CPU ms/1k", "RSS MiB", "errors",
               "hint 404", "cover %", "join p95 s", "srv lag p95", "ingest lag p95", "load CPU %", "cli lag p95", "other CPU %", "goal"]
    rows = []
    for s in steps:
        d = s["delay_ms"]
        rows.append([
            f"{s['viewers']}" + ("*" if s.get("profiled") else ""),
            f"{s['requests_per_s']:.0f}",
            common.fmt(d["p50"], ".0f"), common.fmt(d["p95"], ".0f"), common.fmt(d["p99"], ".0f"),
            common.fmt(s.get("delay_e2e_ms", {}).get("p95"), ".0f"),
            common.fmt(s["blocking_playlist_delay_ms"]["p95"], ".0f"),
            f"{s['server_cpu_pct']:.0f}", common.fmt(s.get("core_busy_pct"), ".0f"),
            common.fmt(s["server_cpu_ms_per_1k_req"], ".0f"),
            f"{s['rss_mib_peak']:.0f}",
            f"{s['errors']}", f"{s['hinted_404']}", common.fmt(s["coverage_pct"], ".1f"),
            common.fmt((s.get("join_ms") or {}).get("p95") and s["join_ms"]["p95"] / 1000, ".2f"),
            common.fmt(s["server_loop_lag_ms"]["p95"], ".0f"), common.fmt(s["ingest_lag_ms"]["p95"], ".0f"),
            f"{s['load_cpu_pct']:.0f}", common.fmt(s["client_loop_lag_ms"]["p95"], ".0f"),
            common.fmt(s.get("foreign_cpu_pct"), ".0f"),
            ("holds" if s["holds_goal"] else "MISSES") + f" ({s['goal_ms']:.0f})",
        ])
    return common.render_table(headers, rows, markdown)


def anchor_table(anchor: dict, markdown: bool = False) -> str:
    headers = ["server", "load", "req/s", "CPU %", "core %", "CPU ms/1k req", "RSS MiB", "latency p50 ms", "p99 ms", "errors"]
    rows = []
    for server in ("sfstream", "nginx"):
        for r in anchor[server]["poll"]:
            lat = r["latency_ms"]
            rows.append([server, f"fixed {r['target_rate']:.0f}/s, {r['conns']} conns", f"{r['requests_per_s']:.0f}",
                         f"{r['server_cpu_pct']:.0f}", common.fmt(r.get("core_busy_pct"), ".0f"),
                         common.fmt(r["server_cpu_ms_per_1k_req"], ".1f"),
                         f"{r['rss_mib_peak']:.0f}", common.fmt(lat["p50"], ".1f"), common.fmt(lat["p99"], ".1f"),
                         f"{r['errors']}"])
        w = anchor[server]["wrk"]
        if w:
            rows.append([server, f"wrk saturation, {w['conns']} conns", f"{w['requests_per_s']:.0f}",
                         f"{w['server_cpu_pct']:.0f}", common.fmt(w.get("core_busy_pct"), ".0f"),
                         common.fmt(w["server_cpu_ms_per_1k_req"], ".1f"),
                         f"{w['rss_mib_peak']:.0f}", "-", "-", f"{w['non_2xx']} non-2xx {w['socket_errors']}"])
    return common.render_table(headers, rows, markdown)


# --------------------------------------------------------------------------- main


def orchestrate(args) -> int:
    common.install_signal_handlers()
    nofile = raise_nofile()
    if shutil.which("ffmpeg") is None:
        sys.exit("ffmpeg is needed (apt-get install ffmpeg)")
    steps_k = [int(k) for k in args.viewers.split(",") if k]
    need = max(steps_k, default=0) * args.conns + 1000
    if nofile < need:
        print(f"warning: RLIMIT_NOFILE {nofile} < {need} needed for {max(steps_k)} viewers", file=sys.stderr)
    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_path = common.RESULTS_DIR / f"viewers-{stamp}.json"
    flv = common.ensure_test_flv()
    args.snapshot_dir = None
    snapshot = None
    if args.sfstream_rev:
        rev = subprocess.run(["git", "-C", str(common.REPO_DIR), "rev-parse", "--short", args.sfstream_rev],
                             capture_output=True, text=True, check=True).stdout.strip()
        snapshot = Path(common.make_run_dir("sfviewers-src-"))
        archive = subprocess.run(["git", "-C", str(common.REPO_DIR), "archive", rev, "sfstream"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(snapshot)], input=archive, check=True)
        args.snapshot_dir = str(snapshot)
        args.sfstream_rev = rev
    result = {"benchmark": "viewers", "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
              "command": " ".join([Path(sys.executable).name] + sys.argv),
              "machine": common.machine_info(), "sfstream_source": common.source_digest(),
              "nofile": nofile, "args": vars(args), "flv": flv.name, "steps": [], "anchor": None, "profile": None,
              "stopped_at": None}

    def save():
        out_path.write_text(json.dumps(result, indent=1, default=str))

    procs = common.Procs()
    try:
        broke = None
        for K in steps_k:
            print(f"K = {K} viewers ...", flush=True)
            step = run_viewer_step(procs, args, flv, K)
            result["steps"].append(step)
            save()
            d = step["delay_ms"]
            print(f"  {step['requests_per_s']:.0f} req/s, delay p50/p95/p99 {common.fmt(d['p50'], '.0f')}/"
                  f"{common.fmt(d['p95'], '.0f')}/{common.fmt(d['p99'], '.0f')} ms, e2e p95 "
                  f"{common.fmt(step['delay_e2e_ms']['p95'], '.0f')} ms (goal {step['goal_ms']:.0f}), "
                  f"server CPU {step['server_cpu_pct']:.0f}% (core {common.fmt(step.get('core_busy_pct'), '.0f')}%), RSS {step['rss_mib_peak']:.0f} MiB, "
                  f"errors {step['errors']}, coverage {common.fmt(step['coverage_pct'], '.1f')}%, "
                  f"load CPU {step['load_cpu_pct']:.0f}%, other processes {common.fmt(step.get('foreign_cpu_pct'), '.0f')}% {step.get('foreign_top')} -> {'holds' if step['holds_goal'] else 'MISSES'}",
                  flush=True)
            if not step["holds_goal"] and not args.keep_going:
                broke = K
                break
        result["stopped_at"] = broke
        held = [s["viewers"] for s in result["steps"] if s["holds_goal"]]
        result["largest_k_holding"] = max(held) if held else None
        if args.profile:
            pk = args.profile_k or (broke or (result["steps"][-1]["viewers"] if result["steps"] else steps_k[0]))
            raw = common.RESULTS_DIR / f"viewers-profile-k{pk}-{stamp}.txt"
            print(f"profiling the server at K = {pk} (py-spy) ...", flush=True)
            step = run_viewer_step(procs, args, flv, pk, profile_out=raw)
            step["profiled"] = True
            summary = summarise_profile(raw) if raw.exists() else None
            result["profile"] = {"viewers": pk, "raw": str(raw.relative_to(common.REPO_DIR)), "step": step,
                                 "summary": summary}
            save()
        if args.anchor:
            print("nginx anchor ...", flush=True)
            result["anchor"] = run_anchor(procs, args, flv)
            save()
    except KeyboardInterrupt:
        print("interrupted: stopping everything, keeping partial results", file=sys.stderr)
    finally:
        procs.stop_all()
        save()
        if snapshot is not None:
            shutil.rmtree(snapshot, ignore_errors=True)
    md = args.markdown
    print()
    print(f"sfstream: {'git ' + args.sfstream_rev if args.sfstream_rev else 'working tree'}")
    print(f"viewers of one stream ({result['machine']['cpus']} CPUs, server on CPU {args.server_cpus}, load on "
          f"CPU {args.load_cpus}; {args.duration:.0f} s windows; req/s counted by the client):")
    if result["steps"]:
        print(viewers_table(result["steps"], md))
    print(f"largest K holding p95 <= part target + 100 ms: {result.get('largest_k_holding')}")
    if result["profile"]:
        p = result["profile"]
        print(f"\nprofiled step (py-spy attached, K = {p['viewers']}):")
        print(viewers_table([p["step"]], md))
        if p["summary"]:
            print(f"\ntop functions by own time ({p['summary']['samples']} samples, non-idle):")
            print(common.profile_table(p["summary"], markdown=md))
            print(f"other threads (not in the table): {p['summary']['other_threads']}")
            print("inclusive % of event-loop samples: " + ", ".join(
                f"{k} {v}" for k, v in p["summary"]["inclusive_pct"].items()))
    if result["anchor"]:
        print("\nanchor: non-blocking requests (playlist and parts 1:1), sfstream vs nginx:")
        print(anchor_table(result["anchor"], md))
    print(f"\nresults: {out_path}")
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_server":
        p = argparse.ArgumentParser()
        p.add_argument("_cmd")
        for a in ("--name", "--key", "--data-dir", "--parts-out"):
            p.add_argument(a, required=True)
        p.add_argument("--segment-duration", type=float, default=2.0)
        p.add_argument("--part-duration", type=float, default=0.2)
        p.add_argument("--window", type=int, default=10)
        return server_main(p.parse_args())
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        p = argparse.ArgumentParser()
        p.add_argument("_cmd")
        p.add_argument("--mode", choices=("viewers", "poll"), required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--name", required=True)
        p.add_argument("--first", type=int, required=True)
        p.add_argument("--count", type=int, required=True)
        p.add_argument("--start-at", type=float, required=True)
        p.add_argument("--ramp", type=float, default=0.0)
        p.add_argument("--measure-from", type=float, required=True)
        p.add_argument("--measure-to", type=float, required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--timeout", type=float, default=10.0)
        p.add_argument("--conns", type=int, default=2)
        p.add_argument("--rate", type=float, default=1000.0)
        p.add_argument("--paths")
        return load_main(p.parse_args())

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--viewers", default=DEFAULT_STEPS, help=f"K steps, comma-separated (default {DEFAULT_STEPS})")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per step (default 20)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds after the ramp before measuring (default 5)")
    p.add_argument("--ramp", type=float, default=None, help="seconds over which viewers start (default K/200, 2..30)")
    p.add_argument("--conns", type=int, choices=(1, 2), default=2,
                   help="connections per viewer: 2 = part and blocking playlist concurrently (default); "
                        "1 = part, then playlist, on one connection")
    p.add_argument("--load-procs", type=int, default=1, help="load processes (default 1: the box has 2 cores)")
    p.add_argument("--timeout", type=float, default=10.0, help="client request timeout, s (server's own: 3 x target)")
    p.add_argument("--keep-going", action="store_true", help="run every K even after one misses the goal")
    p.add_argument("--segment-duration", type=float, default=2.0)
    p.add_argument("--part-duration", type=float, default=0.2)
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--server-cpus", default="0", help="taskset CPU list for the server (default 0; '' = no pinning)")
    p.add_argument("--load-cpus", default="1", help="taskset CPU list for load, publisher, wrk, py-spy (default 1)")
    p.add_argument("--profile", action="store_true", help="one more step with py-spy attached to the server")
    p.add_argument("--profile-k", type=int, default=None,
                   help="K of the profiled step (default: the first K that missed the goal, else the largest run)")
    p.add_argument("--no-anchor", dest="anchor", action="store_false", help="skip the nginx anchor")
    p.add_argument("--anchor-rates", default="1000,3000", help="fixed request rates of the anchor (default 1000,3000)")
    p.add_argument("--anchor-conns", type=int, default=100, help="connections of the anchor's fixed-rate client")
    p.add_argument("--anchor-duration", type=float, default=12.0)
    p.add_argument("--anchor-warmup", type=float, default=2.0)
    p.add_argument("--wrk-conns", type=int, default=64)
    p.add_argument("--quiet-pct", type=float, default=15.0,
                   help="before each step, wait while other processes use more CPU than this (%% of one core)")
    p.add_argument("--quiet-wait", type=float, default=120.0, help="... for at most this many seconds (default 120)")
    p.add_argument("--retries", type=int, default=2,
                   help="run a step again (at most this many times) if other processes used more than "
                        "--retry-above %% CPU during its window (default 2)")
    p.add_argument("--retry-above", type=float, default=25.0)
    p.add_argument("--sfstream-rev", default=None,
                   help="run the server from `git archive REV sfstream` instead of the working tree "
                        "(others edit the tree while benchmarks run)")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    return orchestrate(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
