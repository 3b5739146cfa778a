#!/usr/bin/env python3
"""Websocket viewers benchmark: N viewer-count websockets of one live stream (issue 5).

`GET /ws/streams/{id}/viewers` sends {"type": "viewers", "stream_id", "viewers"} on
connect and whenever the count changes (one check per room every 0.5 s); each open
socket is itself a viewer. For each N (default 1000,2500,5000,10000) this measures:

- connect rate: sockets/s opened by a separate load process with at most
  --concurrency handshakes in flight (below the server's listen backlog, so no
  SYN retransmits), the time from connect start to the first message (p50/p95),
  errors; and the server CPU per connect;
- server memory per socket: RSS and PSS of the server before the load process
  starts and once all N are open and the count is stable, divided by N
  (plus the kernel's TCP memory, machine-wide, both ends);
- server CPU while idle-connected (aiohttp heartbeat pings every 30 s per socket,
  the room's presence refresh and count check), minus the same window with no
  socket open (the live stream's ingest and packaging);
- fan-out of one update: once all N are connected and the count is stable, one
  count change is caused (default: this process opens one extra websocket, and
  the next trigger closes it again; `--trigger hls`: one HLS viewer session, the
  multivariant playlist then the media playlist it lists with ?vs=). From that
  moment (CLOCK_MONOTONIC, system-wide, so timestamps of the load process
  compare) to the arrival of the new count at each socket: p50/p95/max across
  sockets, the first arrival (which includes waiting for the room's 0.5 s
  tick) and the spread first -> last arrival (the fan-out itself); the server
  CPU it took (minus the idle rate) per fan-out and per socket. Repeated
  --triggers times; medians reported.

The server is `python -m sfstream serve` (working tree, uvloop, SQLite, its own
process pinned to --server-cpus), fresh for every N: a registered user, its stream
key, `ffmpeg -re` publishing a 320x180 test pattern in real time (pinned to
--load-cpus), the live stream's id from GET /api/users/{name}/streams. The load
process (`_load` mode, uvloop, pinned to --load-cpus) is a minimal websocket
client on asyncio protocols (handshake, frame parser, pongs; no aiohttp), so the
client side costs a few microseconds per message and a few KiB per socket: the
arrival time is taken on entry of `data_received`. It is driven over its
stdin/stdout (JSON lines) by this process.

Profile (--profile): one more step at --profile-n (default the largest N) with
`py-spy record --nonblocking` attached to the server during the connect ramp and
during --profile-triggers fan-outs; top functions by own time; raw stacks in
benchmarks/results/ws_viewers-profile-*.txt. That step's figures are kept in the
JSON, not in the main table (py-spy takes CPU from the same machine).

Every process started (server, ffmpeg, load processes, py-spy) is stopped and
reaped on exit, Ctrl-C and SIGTERM (benchmarks/common.py: own sessions +
PR_SET_PDEATHSIG). Other sessions share this machine: the CPU taken by other
processes is recorded for every window ("others").

Run by hand (never by CI), e.g.:

    python benchmarks/ws_viewers.py                          # N = 1000,2500,5000,10000
    python benchmarks/ws_viewers.py --viewers 10000 --profile
    python benchmarks/ws_viewers.py --viewers 2000 --trigger hls --triggers 3

Results: benchmarks/results/ws_viewers-<timestamp>.json (git-ignored) and a table.
See benchmarks/README.md ("Websocket viewers") for measured numbers.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import queue
import random
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections import Counter
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py)

DEFAULT_STEPS = "1000,2500,5000,10000"
USERNAME = "wsbench"
PASSWORD = "wsbench-password-1"
# RFC 6455's example key: the accept value is fixed, so checking it costs nothing
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
WS_ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
KiB = 1024


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    except (ValueError, OSError):
        return soft


def mask_frame(opcode_byte: int, payload: bytes) -> bytes:
    """A client frame (clients must mask): FIN + opcode, payload < 126 bytes."""
    key = os.urandom(4)
    masked = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    return bytes((opcode_byte, 0x80 | len(payload))) + key + masked


def handshake(port: int, stream_id: int, deflate: bool = False) -> bytes:
    # deflate: offer permessage-deflate as Chrome and Firefox do (RFC 7692)
    ext = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if deflate else ""
    return (f"GET /ws/streams/{stream_id}/viewers HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{ext}\r\n").encode()


# =========================================================================== load process (`_load`)


class Client(asyncio.Protocol):
    """One viewer websocket: handshake, then unmasked server frames (text, ping, close)."""

    __slots__ = ("ctx", "idx", "transport", "buf", "upgraded", "t_start", "t_open", "t_first", "count",
                 "t_got", "alive", "fut", "close_code", "inflater")

    def __init__(self, ctx: "LoadContext", idx: int, t_start: float, fut: asyncio.Future) -> None:
        self.ctx = ctx
        self.idx = idx
        self.t_start = t_start
        self.fut = fut
        self.transport = None
        self.buf = b""
        self.upgraded = False
        self.t_open = self.t_first = self.t_got = None
        self.count = None
        self.alive = False
        self.close_code = None
        self.inflater = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.alive = True
        transport.write(self.ctx.request)

    def _fail(self, why: str) -> None:
        if not self.fut.done():
            self.fut.set_exception(RuntimeError(why))
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        t = time.monotonic()
        buf = self.buf + data if self.buf else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 16384:
                    self._fail("huge response head")
                self.buf = buf
                return
            head = buf[:end]
            if head[9:12] != b"101":
                self.buf = b""
                self._fail(f"HTTP {head[9:12].decode(errors='replace')}")
                return
            if WS_ACCEPT not in head:
                self._fail("bad Sec-WebSocket-Accept")
                return
            if b"permessage-deflate" in head.lower():
                self.inflater = zlib.decompressobj(-15)
                self.ctx.deflated += 1
            buf = buf[end + 4:]
            self.upgraded = True
            self.t_open = t
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            ln, hdr = b1 & 0x7F, 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln, hdr = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln, hdr = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if b1 & 0x80:
                self._fail("masked server frame")
                return
            if n - pos < hdr + ln:
                break
            payload = buf[pos + hdr:pos + hdr + ln]
            pos += hdr + ln
            op = b0 & 0x0F
            if b0 & 0x40 and self.inflater is not None:  # RSV1: a compressed message (context takeover)
                payload = self.inflater.decompress(payload + b"\x00\x00\xff\xff")
            if op == 1:
                self._text(payload, t)
            elif op == 9:  # ping (aiohttp heartbeat): answer, or the server closes us
                self.ctx.pings += 1
                self.transport.write(mask_frame(0x8A, payload))
            elif op == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                self.ctx.server_closes[str(self.close_code)] += 1
                self.ctx.close_t.append(t)
                if not self.ctx.stopping:
                    self.transport.write(mask_frame(0x88, payload[:2]))
                self.transport.close()
                self.buf = b""
                return
            elif op != 10:
                self.ctx.odd_frames[op] += 1
        self.buf = buf[pos:] if pos < n else b""

    def _text(self, payload: bytes, t: float) -> None:
        ctx = self.ctx
        ctx.msgs += 1
        ctx.last_msg_t = t
        # fast path for the server's exact format ({"type": "viewers", "stream_id": 1, "viewers": 10000}):
        # the client must stay cheaper per message than the server, or it would stretch the fan-out it times
        v = None
        if payload.startswith(b'{"type": "viewers"') and payload.endswith(b"}"):
            try:
                v = int(payload[payload.rindex(b":") + 1:-1])
                kind = "viewers"
            except ValueError:
                v = None
        if v is None:
            try:
                msg = json.loads(payload)
            except ValueError:
                ctx.bad_msgs += 1
                return
            kind = msg.get("type")
            v = msg.get("viewers")
        if kind == "viewers":
            self.count = v
            if self.t_first is None:
                self.t_first = t
                if not self.fut.done():
                    self.fut.set_result(None)
            if ctx.expect is not None and v == ctx.expect and self.t_got is None:
                self.t_got = t
                ctx.pending -= 1
                if ctx.pending <= 0:
                    ctx.all_got()
        elif kind == "ended":
            ctx.ended += 1
            ctx.ended_t.append(t)
        else:
            ctx.bad_msgs += 1

    def connection_lost(self, exc) -> None:
        self.alive = False
        if not self.fut.done():
            self.fut.set_exception(RuntimeError("closed before the first message"))
        if self.upgraded and not self.ctx.stopping and self.close_code is None:
            self.ctx.lost += 1  # gone without a close frame


class LoadContext:
    def __init__(self, args) -> None:
        self.args = args
        self.request = handshake(args.port, args.stream_id, args.deflate)
        self.deflated = 0  # sockets on which the server accepted permessage-deflate
        self.clients: list[Client] = []
        self.errors: Counter = Counter()
        self.server_closes: Counter = Counter()
        self.odd_frames: Counter = Counter()
        self.msgs = self.pings = self.bad_msgs = self.lost = self.ended = 0
        self.last_msg_t = 0.0
        self.stopping = False
        self.expect = None
        self.pending = 0
        self.got_event: asyncio.Event | None = None
        self.lag: list[float] = []
        self.ended_t: list[float] = []
        self.close_t: list[float] = []

    def emit(self, obj: dict) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def open_clients(self) -> list[Client]:
        return [c for c in self.clients if c.alive and c.upgraded]

    def all_got(self) -> None:
        if self.got_event is not None:
            self.got_event.set()

    async def open_one(self, idx: int) -> None:
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        fut = loop.create_future()
        holder: list[Client] = []

        def factory():
            c = Client(self, idx, t0, fut)
            holder.append(c)
            return c

        async def go():
            await loop.create_connection(factory, "127.0.0.1", self.args.port)
            await fut

        try:
            await asyncio.wait_for(go(), self.args.timeout)
        except asyncio.TimeoutError:
            self.errors["timeout"] += 1
            if holder and holder[0].transport is not None:
                holder[0].transport.abort()
            return
        except OSError as exc:
            self.errors[f"{type(exc).__name__} {exc.errno}"] += 1
            return
        except Exception as exc:  # noqa: BLE001  (HTTP 503, closed, ...)
            self.errors[str(exc)[:60]] += 1
            return
        self.clients.append(holder[0])

    async def connect_all(self) -> None:
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(self.args.concurrency)
        tasks = []
        t_begin = time.monotonic()
        for i in range(self.args.count):
            await sem.acquire()
            task = loop.create_task(self.open_one(i))
            task.add_done_callback(lambda _t: sem.release())
            tasks.append(task)
        await asyncio.gather(*tasks, return_exceptions=True)
        t_end = time.monotonic()
        self.emit({"event": "connected", "opened": len(self.clients), "errors": dict(self.errors),
                   "t_begin": t_begin, "t_end": t_end})

    def status(self) -> dict:
        open_ = self.open_clients()
        counts = Counter(c.count for c in open_)
        return {"event": "status", "open": len(open_), "counts": {str(k): v for k, v in counts.items()},
                "last_msg_t": self.last_msg_t, "msgs": self.msgs, "pings": self.pings, "lost": self.lost,
                "ended": self.ended, "bad_msgs": self.bad_msgs, "deflated": self.deflated, "server_closes": dict(self.server_closes),
                "errors": dict(self.errors), "now": time.monotonic()}

    async def expect_count(self, value: int, timeout: float) -> None:
        open_ = self.open_clients()
        for c in self.clients:
            c.t_got = None
        self.got_event = asyncio.Event()
        self.pending = len(open_)
        self.expect = value
        self.emit({"event": "armed", "open": len(open_)})
        if self.pending > 0:
            try:
                await asyncio.wait_for(self.got_event.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        t_done = time.monotonic()
        self.expect = None
        times = [c.t_got for c in open_]
        got = [t for t in times if t is not None]
        self.emit({"event": "got", "n": len(open_), "missing": len(open_) - len(got), "t_done": t_done,
                   "times": got, "counts": {str(k): v for k, v in Counter(c.count for c in open_).items()}})

    async def lag_monitor(self) -> None:
        interval = 0.02
        while True:
            t = time.monotonic()
            await asyncio.sleep(interval)
            self.lag.append(time.monotonic() - t - interval)
            if len(self.lag) > 200_000:
                del self.lag[:100_000]

    def dump(self, path: str) -> None:
        data = {"t_start": [c.t_start for c in self.clients], "t_open": [c.t_open for c in self.clients],
                "t_first": [c.t_first for c in self.clients], "lag": self.lag}
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)


def load_main(args) -> int:
    raise_nofile()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ctx = LoadContext(args)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        aux = [loop.create_task(ctx.lag_monitor())]
        ctx.emit({"event": "ready"})

        async def commands() -> None:
            while True:
                line = await reader.readline()
                if not line:  # the orchestrator is gone
                    stop.set()
                    return
                cmd, *rest = line.decode().split()
                if cmd == "connect":
                    aux.append(loop.create_task(ctx.connect_all()))
                elif cmd == "status":
                    ctx.emit(ctx.status())
                elif cmd == "expect":
                    aux.append(loop.create_task(ctx.expect_count(int(rest[0]), float(rest[1]))))
                elif cmd == "endstats":
                    ctx.emit({"event": "endstats", "ended_t": ctx.ended_t, "close_t": ctx.close_t,
                              "open": len(ctx.open_clients()), "lost": ctx.lost})
                elif cmd == "dump":
                    ctx.dump(rest[0])
                    ctx.emit({"event": "dumped"})
                elif cmd == "quit":
                    stop.set()
                    return

        aux.append(loop.create_task(commands()))
        await stop.wait()
        ctx.stopping = True
        for t in aux:
            t.cancel()
        await asyncio.gather(*aux, return_exceptions=True)
        for c in ctx.clients:
            if c.transport is not None:
                c.transport.abort()

    common.run_uvloop(main())
    return 0


# =========================================================================== orchestrator helpers


def http_json(method: str, url: str, body: dict | None = None, token: str | None = None,
              timeout: float = 10.0) -> tuple[int, dict | bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def stats_ms(values) -> dict:
    values = sorted(v for v in values if v is not None)
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None, "min": None}

    def q(p):
        return values[min(len(values) - 1, int(p / 100 * len(values)))] * 1000

    return {"n": len(values), "min": values[0] * 1000, "p50": q(50), "p95": q(95), "p99": q(99),
            "max": values[-1] * 1000}


def all_cpu() -> dict[int, tuple[str, float]]:
    out = {}
    for proc in psutil.process_iter(["name", "cpu_times"]):
        t = proc.info["cpu_times"]
        if t is not None:
            out[proc.pid] = (proc.info["name"], t.user + t.system)
    return out


class Others:
    """CPU taken by processes that are not this benchmark's (other sessions share the machine)."""

    def begin(self) -> None:
        self.t0 = time.monotonic()
        self.a0 = all_cpu()

    def end(self) -> tuple[float, list]:
        wall = max(1e-6, time.monotonic() - self.t0)
        me = psutil.Process()
        ours = {me.pid} | {c.pid for c in me.children(recursive=True)}
        by_name: Counter = Counter()
        for pid, (name, t) in all_cpu().items():
            if pid in ours:
                continue
            before = self.a0.get(pid)
            by_name[name] += t - (before[1] if before else 0.0)
        return (round(100 * sum(by_name.values()) / wall, 1),
                [(n, round(100 * v / wall, 1)) for n, v in by_name.most_common(3) if v > 0.05 * wall])


def foreign_cpu(seconds: float = 3.0) -> tuple[float, list]:
    o = Others()
    o.begin()
    time.sleep(seconds)
    return o.end()


def wait_for_quiet(args) -> dict:
    deadline = time.monotonic() + args.quiet_wait
    t0 = time.monotonic()
    while True:
        pct, top = foreign_cpu()
        if pct <= args.quiet_pct or time.monotonic() >= deadline:
            return {"others_cpu_pct_before": pct, "others_top_before": top,
                    "waited_s": round(time.monotonic() - t0, 1)}
        print(f"  other processes use {pct:.0f}% CPU {top}: waiting for a quieter moment ...", flush=True)
        time.sleep(5)


def sockstat() -> dict[str, int]:
    """/proc/net/sockstat TCP line: inuse, orphan, tw, alloc, mem (pages, machine-wide)."""
    try:
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("TCP:"):
                parts = line.split()[1:]
                return {k: int(v) for k, v in zip(parts[::2], parts[1::2])}
    except OSError:
        pass
    return {}


def tcp_counters() -> dict[str, int]:
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for head, vals in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            for k, v in zip(head.split()[1:], vals.split()[1:]):
                if k in ("ListenOverflows", "ListenDrops", "TCPSynRetrans"):
                    out[k] = int(v)
    return out


class ServerMeter:
    def __init__(self, pid: int) -> None:
        self.tree = common.TreeMeter(pid)
        self.rss_peak = 0

    def cpu(self) -> float:
        return sum(self.tree.cpu_seconds().values())

    def rss(self) -> int:
        r = self.tree.rss()
        self.rss_peak = max(self.rss_peak, r)
        return r

    def pss(self) -> int:
        return self.tree.pss()

    def threads(self) -> int:
        try:
            return self.tree.root.num_threads()
        except psutil.Error:
            return 0


class LoadProc:
    """A `_load` process driven over stdin/stdout JSON lines; a thread reads its events into a queue."""

    def __init__(self, procs: common.Procs, idx: int, cmd: list[str], log: Path) -> None:
        self.idx = idx
        self.events: queue.Queue = queue.Queue()
        self.log_path = log
        with open(log, "wb") as errf:
            self.m = procs.start(f"load-{idx}", cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=errf, text=True, bufsize=1, stop_timeout=20)
        self.meter = common.TreeMeter(self.m.popen.pid)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self.m.popen.stdout:
                try:
                    self.events.put(json.loads(line))
                except ValueError:
                    pass
        except (OSError, ValueError):
            pass
        self.events.put({"event": "eof"})

    def send(self, line: str) -> None:
        try:
            self.m.popen.stdin.write(line + "\n")
            self.m.popen.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def wait(self, event: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"load-{self.idx}: no '{event}' event in {timeout:.0f} s")
            try:
                e = self.events.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if e.get("event") == event:
                return e
            if e.get("event") == "eof":
                tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
                raise RuntimeError(f"load-{self.idx} exited (waiting for '{event}'):\n{tail}")

    def cpu(self) -> float:
        return sum(self.meter.cpu_seconds().values())

    def rss(self) -> int:
        return self.meter.rss()


class Trigger:
    """One count change, caused from this process: an extra websocket opened / closed, or an HLS session."""

    def __init__(self, port: int, stream_id: int, username: str) -> None:
        self.port = port
        self.stream_id = stream_id
        self.username = username
        self.sock: socket.socket | None = None

    def open_ws(self) -> float:
        t = time.monotonic()
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        s.sendall(handshake(self.port, self.stream_id))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError("trigger websocket: closed during the handshake")
            head += chunk
        if head[9:12] != b"101":
            raise RuntimeError(f"trigger websocket: {head[:200]!r}")
        self.sock = s
        return t

    def close_ws(self) -> float:
        s, self.sock = self.sock, None
        t = time.monotonic()
        s.sendall(mask_frame(0x88, struct.pack("!H", 1000)))
        s.settimeout(5)
        try:  # read until the server's close frame and FIN (an unread buffer would make our close an RST)
            while s.recv(65536):
                pass
        except OSError:
            pass
        s.close()
        return t

    def hls_session(self) -> tuple[float, str]:
        t = time.monotonic()
        base = f"http://127.0.0.1:{self.port}/hls/{self.username}/"
        status, body = common.http_get(base + "index.m3u8")
        if status != 200:
            raise RuntimeError(f"multivariant playlist: HTTP {status}")
        uri = next((ln for ln in body.decode().splitlines() if ln and not ln.startswith("#")), None)
        if uri is None:
            raise RuntimeError("no media playlist in the multivariant playlist")
        status, _ = common.http_get(base + uri)
        if status != 200:
            raise RuntimeError(f"media playlist {uri}: HTTP {status}")
        return t, uri

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


# =========================================================================== one step


GC_PROBE = '''\
import gc, os, time
_path = os.environ.get("WSBENCH_GC_LOG")
if _path:
    _f = open(_path, "a", buffering=1)
    _start = [0.0]

    def _cb(phase, info):
        if info["generation"] < 1:
            return
        if phase == "start":
            _start[0] = time.monotonic()
        else:
            _f.write(f"{_start[0]:.6f} {time.monotonic() - _start[0]:.6f} {info['generation']} {info['collected']}\\n")

    gc.callbacks.append(_cb)
'''


def read_gc_log(path: Path | None) -> list[tuple[float, float, int, int]]:
    """[(start monotonic, seconds, generation, collected)] from the probe's log."""
    if path is None or not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            t, d, g, c = line.split()
            out.append((float(t), float(d), int(g), int(c)))
        except ValueError:
            pass
    return out


def gc_in(log: list, t0: float, t1: float, gen: int = 2) -> list[float]:
    """Durations (ms) of collections of generation >= gen that started in [t0, t1]."""
    return [round(d * 1000, 1) for t, d, g, _ in log if g >= gen and t0 <= t < t1]


class Stack:
    """A fresh sfstream server, a registered user and an ffmpeg publisher on its key."""

    def __init__(self, procs: common.Procs, args, max_sockets: int, tag: str) -> None:
        self.procs = procs
        self.run_dir = common.make_run_dir(f"sfwsview-{tag}-")
        # all sockets come from 127.0.0.1: lift the per-address websocket limit (default 20) and the API budget
        env = {"SFSTREAM_BCRYPT_ROUNDS": "4", "SFSTREAM_WS_MAX_CONNECTIONS": str(max_sockets + 1000),
               "SFSTREAM_WS_MAX_PER_CLIENT": str(max_sockets + 1000),
               "SFSTREAM_API_RATE_LIMIT": "100000", "SFSTREAM_LOG_LEVEL": "warning",
               "PYTHONUNBUFFERED": "1"}
        self.gc_log = None
        if args.gc_log:  # probe: a sitecustomize in the server only, logging the collector's gen-1/2 passes
            probe = self.run_dir / "gcprobe"
            probe.mkdir()
            (probe / "sitecustomize.py").write_text(GC_PROBE)
            self.gc_log = self.run_dir / "gc.log"
            env["WSBENCH_GC_LOG"] = str(self.gc_log)
            env["PYTHONPATH"] = str(probe) + os.pathsep + os.environ.get("PYTHONPATH", "")
        self.server = common.start_sfstream(procs, self.run_dir, {}, env=env, cpu_list=args.server_cpus or None)
        self.meter = ServerMeter(self.server.pid)
        self.api = f"http://127.0.0.1:{self.server.http_port}/api"
        st, body = http_json("POST", self.api + "/auth/register",
                             {"username": USERNAME, "email": f"{USERNAME}@example.com", "password": PASSWORD})
        if st not in (200, 201):
            raise RuntimeError(f"register: HTTP {st} {body}")
        token = body["access_token"]
        st, body = http_json("GET", self.api + "/stream/key", token=token)
        if st != 200:
            raise RuntimeError(f"stream key: HTTP {st} {body}")
        url = body["rtmp_url"].rstrip("/") + "/" + body["stream_key"]
        pub = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re",
               "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30",
               "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
               "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "30", "-pix_fmt", "yuv420p",
               "-c:a", "aac", "-b:a", "64k", "-f", "flv", url]
        with open(self.run_dir / "ffmpeg.log", "wb") as log:
            self.publisher = procs.start("ffmpeg", common.pinned(pub, args.load_cpus), stdout=log, stderr=log, stop_timeout=5)
        deadline = time.monotonic() + 30
        self.stream_id = None
        while time.monotonic() < deadline:
            st, body = http_json("GET", f"{self.api}/users/{USERNAME}/streams")
            items = body.get("items") if isinstance(body, dict) else None
            if st == 200 and items and items[0].get("is_live"):
                self.stream_id = int(items[0]["id"])
                break
            if self.publisher.popen.poll() is not None or self.server.managed.popen.poll() is not None:
                break
            time.sleep(0.25)
        if self.stream_id is None:
            raise RuntimeError("the stream did not go live:\n" + "\n".join(self.server.log_tail())
                               + (self.run_dir / "ffmpeg.log").read_text(errors="replace")[-2000:])
        # the HLS side is up too (the multivariant playlist lists a rendition)
        while time.monotonic() < deadline:
            st, _ = common.http_get(f"http://127.0.0.1:{self.server.http_port}/hls/{USERNAME}/index.m3u8")
            if st == 200:
                break
            time.sleep(0.25)

    def alive(self) -> bool:
        return self.server.managed.popen.poll() is None and self.publisher.popen.poll() is None

    def stop(self) -> None:
        for m in (self.publisher, self.server.managed):
            if m in self.procs.items:
                self.procs.stop(m)

    def cleanup(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)


def first_tracebacks(path: Path, limit: int = 3, lines: int = 30) -> list[str]:
    """The first tracebacks in the server's stderr, whole (log_problems keeps only the matching lines)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    out = []
    for i, line in enumerate(text):
        if line.startswith("Traceback"):
            out.append("\n".join(text[max(0, i - 1):i + lines]))
            if len(out) >= limit:
                break
    return out


def sample_for(seconds: float, meter: ServerMeter, alive) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(0.5, max(0.0, end - time.monotonic())))
        meter.rss()
        if not alive():
            raise RuntimeError("the server or the publisher died")


def cpu_slices(seconds: float, meter: ServerMeter, alive, step: float = 0.1) -> list[tuple[float, float]]:
    """Server CPU ms in consecutive `step` slices: [(seconds since start, CPU ms)]."""
    out = []
    t_begin = time.monotonic()
    prev_t, prev_c = t_begin, meter.cpu()
    next_rss = t_begin + 0.5
    while prev_t - t_begin < seconds:
        time.sleep(max(0.0, prev_t + step - time.monotonic()))
        t, c = time.monotonic(), meter.cpu()
        out.append((round(prev_t - t_begin, 2), round((c - prev_c) * 1000, 1)))
        prev_t, prev_c = t, c
        if t >= next_rss:
            meter.rss()
            next_rss = t + 0.5
            if not alive():
                raise RuntimeError("the server or the publisher died")
    return out


def statuses(loads: list[LoadProc]) -> list[dict]:
    for lp in loads:
        lp.send("status")
    return [lp.wait("status", 30) for lp in loads]


def wait_stable(loads: list[LoadProc], quiet_s: float, timeout: float) -> dict:
    """Until every open socket shows the count = sockets open, and no message came for `quiet_s`."""
    deadline = time.monotonic() + timeout
    while True:
        st = statuses(loads)
        open_ = sum(s["open"] for s in st)
        counts: Counter = Counter()
        for s in st:
            counts.update({int(k) if k != "None" else None: v for k, v in s["counts"].items()})
        last = max(s["last_msg_t"] for s in st)
        agreed = counts.get(open_, 0) == open_
        if agreed and time.monotonic() - last >= quiet_s:
            return {"stable": True, "open": open_, "count": open_}
        if time.monotonic() > deadline:
            return {"stable": False, "open": open_, "counts": {str(k): v for k, v in counts.most_common(5)}}
        time.sleep(0.25)


def run_step(procs: common.Procs, args, N: int, profile_tag: str | None = None) -> dict:
    quiet = wait_for_quiet(args)
    stack = Stack(procs, args, N, f"n{N}")
    loads: list[LoadProc] = []
    trig: Trigger | None = None
    spy = None
    result: dict = {"viewers": N, **quiet, "sfstream_source": common.source_digest(), "started": time.strftime("%H:%M:%S")}
    try:
        meter = stack.meter
        alive = lambda: stack.alive() and all(lp.m.popen.poll() is None for lp in loads)  # noqa: E731
        # ---- baseline: live stream, no socket
        sample_for(2.0, meter, alive)
        others = Others()
        others.begin()
        c0, t0 = meter.cpu(), time.monotonic()
        sample_for(args.baseline_seconds, meter, alive)
        base_cpu_pct = 100 * (meter.cpu() - c0) / (time.monotonic() - t0)
        rss0, pss0 = meter.rss(), meter.pss()
        sock0 = sockstat()
        result.update({"stream_id": stack.stream_id, "server_port": stack.server.http_port,
                       "baseline_cpu_pct": round(base_cpu_pct, 2), "baseline_others": others.end(),
                       "rss_before_mib": rss0 / common.MiB, "pss_before_mib": pss0 / common.MiB,
                       "server_threads_before": meter.threads()})
        # ---- load processes
        n_procs = max(1, min(args.load_procs, N))
        tcp0 = tcp_counters()
        for i in range(n_procs):
            count = N * (i + 1) // n_procs - N * i // n_procs
            cmd = [sys.executable, str(Path(__file__).resolve()), "_load", "--port", str(stack.server.http_port),
                   "--stream-id", str(stack.stream_id), "--count", str(count),
                   "--concurrency", str(max(1, args.concurrency // n_procs)), "--timeout", str(args.connect_timeout)]
            if args.deflate:
                cmd.append("--deflate")
            loads.append(LoadProc(procs, i, common.pinned(cmd, args.load_cpus), stack.run_dir / f"load-{i}.log"))
        for lp in loads:
            lp.wait("ready", 30)
        load_rss0 = sum(lp.rss() for lp in loads)
        if profile_tag:
            spy = start_spy(procs, args, stack, f"{profile_tag}-connect")
        # ---- connect ramp
        print(f"  connecting {N} websockets ...", flush=True)
        others.begin()
        c0, l0, t0 = meter.cpu(), sum(lp.cpu() for lp in loads), time.monotonic()
        for lp in loads:
            lp.send("connect")
        connected = []
        for lp in loads:
            while True:
                try:
                    connected.append(lp.wait("connected", 2.0))
                    break
                except TimeoutError:
                    meter.rss()
                    if not alive():
                        raise RuntimeError("a process died while connecting") from None
                    if time.monotonic() - t0 > args.connect_timeout + N / 50:
                        raise
        t1 = time.monotonic()
        t_connect0, t_connect1 = t0, t1
        connect_cpu = meter.cpu() - c0
        connect_load_cpu = sum(lp.cpu() for lp in loads) - l0
        connect_others = others.end()
        if spy is not None:
            result["profile_connect"] = stop_spy(procs, spy)
            spy = None
        opened = sum(c["opened"] for c in connected)
        errors: Counter = Counter()
        for c in connected:
            errors.update(c["errors"])
        tb = min(c["t_begin"] for c in connected)
        te = max(c["t_end"] for c in connected)
        # per-socket times (dumped by the load processes)
        t_start, t_first = [], []
        for lp in loads:
            path = stack.run_dir / f"load-{lp.idx}.pickle"
            lp.send(f"dump {path}")
            lp.wait("dumped", 60)
            with open(path, "rb") as f:
                d = pickle.load(f)
            t_start += d["t_start"]
            t_first += d["t_first"]
        first_msg = [b - a for a, b in zip(t_start, t_first) if b is not None]
        firsts = sorted(t for t in t_first if t is not None)
        tenths = []
        if len(firsts) >= 10:  # connect rate over each tenth of the sockets: does it fall as N grows?
            k = len(firsts) // 10
            for j in range(10):
                a, b = firsts[j * k], firsts[min(len(firsts) - 1, (j + 1) * k)]
                tenths.append(round(k / (b - a), 0) if b > a else None)
        wall = (firsts[-1] - tb) if firsts else (te - tb)
        result["connect"] = {
            "opened": opened, "errors": dict(errors), "error_count": sum(errors.values()),
            "wall_s": round(wall, 3), "rate_per_s": round(opened / wall, 1) if wall > 0 else None,
            "rate_by_tenth_per_s": tenths, "first_msg_ms": stats_ms(first_msg),
            "server_cpu_s": round(connect_cpu, 3), "server_cpu_pct": round(100 * connect_cpu / (t1 - t0), 1),
            "server_cpu_ms_per_socket": round(1000 * connect_cpu / opened, 3) if opened else None,
            "load_cpu_pct": round(100 * connect_load_cpu / (t1 - t0), 1), "others": connect_others,
            "concurrency": args.concurrency, "load_procs": n_procs,
        }
        rc = result["connect"]
        print(f"  opened {opened} in {rc['wall_s']:.1f} s: {common.fmt(rc['rate_per_s'], '.0f')}/s, first message "
              f"p50/p95 {common.fmt(rc['first_msg_ms']['p50'], '.0f')}/{common.fmt(rc['first_msg_ms']['p95'], '.0f')} ms, "
              f"errors {dict(errors) or 0}, server CPU {rc['server_cpu_ms_per_socket']} ms/socket", flush=True)
        # ---- stable count, memory with all N open
        stable = wait_stable(loads, quiet_s=args.quiet_s, timeout=60)
        result["stable"] = stable
        if not stable["stable"]:
            print(f"  count not stable after 60 s: {stable}", flush=True)
        sample_for(1.0, meter, alive)
        rss1, pss1 = meter.rss(), meter.pss()
        sock1 = sockstat()
        load_rss1 = sum(lp.rss() for lp in loads)
        n_open = stable["open"]
        result["memory"] = {
            "open": n_open,
            "rss_after_mib": rss1 / common.MiB, "pss_after_mib": pss1 / common.MiB,
            "rss_kib_per_socket": round((rss1 - rss0) / KiB / n_open, 2) if n_open else None,
            "pss_kib_per_socket": round((pss1 - pss0) / KiB / n_open, 2) if n_open and pss0 and pss1 else None,
            "rss_peak_mib": meter.rss_peak / common.MiB,
            "kernel_tcp_mem_kib_per_socket_pair": (round((sock1.get("mem", 0) - sock0.get("mem", 0)) * 4 / n_open, 2)
                                                   if n_open and sock1 else None),
            "sockstat_before": sock0, "sockstat_after": sock1,
            "load_rss_kib_per_socket": round((load_rss1 - load_rss0) / KiB / n_open, 2) if n_open else None,
            "server_threads": meter.threads(),
        }
        # ---- idle-connected CPU
        st0 = statuses(loads)
        others.begin()
        c0, l0, t0 = meter.cpu(), sum(lp.cpu() for lp in loads), time.monotonic()
        t_idle0 = t0
        slices = cpu_slices(args.idle_seconds, meter, alive)
        idle_wall = time.monotonic() - t0
        idle_cpu = meter.cpu() - c0
        idle_load = sum(lp.cpu() for lp in loads) - l0
        st1 = statuses(loads)
        idle_pct = 100 * idle_cpu / idle_wall
        result["idle"] = {
            "seconds": round(idle_wall, 1), "server_cpu_pct": round(idle_pct, 2),
            "server_cpu_pct_over_baseline": round(idle_pct - base_cpu_pct, 2),
            "server_cpu_us_per_socket_s": round(1e6 * (idle_cpu / idle_wall - base_cpu_pct / 100) / n_open, 2) if n_open else None,
            "load_cpu_pct": round(100 * idle_load / idle_wall, 2),
            "pings": sum(b["pings"] for b in st1) - sum(a["pings"] for a in st0),
            "messages": sum(b["msgs"] for b in st1) - sum(a["msgs"] for a in st0),
            "lost": sum(b["lost"] for b in st1), "others": others.end(),
            # the periodic room work (presence refresh every viewer_timeout/3, count check every 0.5 s),
            # heartbeat pings, GC: server CPU in 100 ms slices, the largest bursts and when they came
            "bursts_ms": sorted(slices, key=lambda x: -x[1])[:8],
            "slices_over_20ms": sum(1 for _, c in slices if c > 20),
        }
        ri = result["idle"]
        print(f"  idle {ri['seconds']:.0f} s: server CPU {ri['server_cpu_pct']:.1f}% (stream alone "
              f"{base_cpu_pct:.1f}%), pings {ri['pings']}, messages {ri['messages']}, lost {ri['lost']}; largest 100 ms "
              f"CPU bursts (s: ms) {ri['bursts_ms'][:4]}", flush=True)
        # ---- fan-out triggers
        trig = Trigger(stack.server.http_port, stack.stream_id, USERNAME)
        n_trig = args.profile_triggers if profile_tag else args.triggers
        if profile_tag:
            spy = start_spy(procs, args, stack, f"{profile_tag}-fanout")
        result["fanouts"] = run_triggers(args, loads, meter, trig, n_open, n_trig, idle_cpu / idle_wall, alive)
        if spy is not None:
            result["profile_fanout"] = stop_spy(procs, spy)
            spy = None
        result["fanout"] = summarise_fanouts(result["fanouts"], n_open)
        rf = result["fanout"]
        print(f"  fan-out (median of {rf['n']}): first {common.fmt(rf['first_ms'], '.0f')} ms, p50 "
              f"{common.fmt(rf['p50_ms'], '.0f')}, p95 {common.fmt(rf['p95_ms'], '.0f')}, max "
              f"{common.fmt(rf['max_ms'], '.0f')} ms; spread {common.fmt(rf['spread_ms'], '.0f')} ms; server CPU "
              f"{common.fmt(rf['server_cpu_ms'], '.0f')} ms ({common.fmt(rf['server_cpu_us_per_socket'], '.1f')} us/socket); "
              f"missing {rf['missing_total']}", flush=True)
        # ---- end of the stream: every socket gets {"type": "ended"}, then the server closes it
        if args.end_test:
            result["end"] = end_of_stream(procs, stack, loads, n_open)
            re_ = result["end"]
            print(f"  stream ended (publisher stopped): 'ended' at {re_['ended']}/{n_open} sockets, p50/p95/max "
                  f"{common.fmt(re_['ended_ms']['p50'], '.0f')}/{common.fmt(re_['ended_ms']['p95'], '.0f')}/"
                  f"{common.fmt(re_['ended_ms']['max'], '.0f')} ms after SIGTERM to the publisher; closed by the server "
                  f"{re_['closed']}, last close {common.fmt(re_['close_ms']['max'], '.0f')} ms", flush=True)
        st_end = statuses(loads)
        result["client"] = {"lost": sum(s["lost"] for s in st_end), "ended": sum(s["ended"] for s in st_end),
                            "deflate_negotiated": sum(s["deflated"] for s in st_end),
                            "bad_msgs": sum(s["bad_msgs"] for s in st_end),
                            "server_closes": sum((Counter(s["server_closes"]) for s in st_end), Counter())}
        lags = []
        for lp in loads:
            path = stack.run_dir / f"load-{lp.idx}.pickle"
            lp.send(f"dump {path}")
            lp.wait("dumped", 60)
            with open(path, "rb") as f:
                lags += pickle.load(f)["lag"]
        result["client"]["loop_lag_ms"] = stats_ms(lags)
        if stack.gc_log is not None:
            log = read_gc_log(stack.gc_log)
            for f in result["fanouts"]:
                f["gc2_ms"] = gc_in(log, f["t_trigger"] - 0.5, f["t_done"])
            result["gc"] = {"connect_gen2_ms": gc_in(log, t_connect0, t_connect1),
                            "idle_gen2_ms": gc_in(log, t_idle0, t_idle0 + idle_wall),
                            "idle_gen1_count": len(gc_in(log, t_idle0, t_idle0 + idle_wall, gen=1)),
                            "fanout_gen2_ms": [f["gc2_ms"] for f in result["fanouts"]], "log": log[-200:]}
            print(f"  full collections (gen 2, ms): connect {result['gc']['connect_gen2_ms'][:12]}, idle "
                  f"{result['gc']['idle_gen2_ms']}, per fan-out {result['gc']['fanout_gen2_ms']}", flush=True)
        tcp1 = tcp_counters()
        result["tcp_counters"] = {k: tcp1[k] - tcp0.get(k, 0) for k in tcp1}
        result["rss_peak_mib"] = meter.rss_peak / common.MiB
        sizes = stack.server.log_sizes()
        problems, first = stack.server.log_problems(until=sizes)
        result["server_log_problems"] = problems
        result["server_log_first"] = first
        result["server_tracebacks"] = first_tracebacks(stack.server.log_files[0])
        return result
    finally:
        if trig is not None:
            trig.close()
        if spy is not None and spy in procs.items:
            procs.stop(spy, sig=signal.SIGINT)
        for lp in loads:
            lp.send("quit")
        for lp in loads:
            try:
                lp.m.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            if lp.m in procs.items:
                procs.stop(lp.m)
        stack.stop()
        stack.cleanup()


def run_triggers(args, loads: list[LoadProc], meter: ServerMeter, trig: Trigger, n_open: int, n_trig: int,
                 idle_rate: float, alive) -> list[dict]:
    out = []
    current = n_open
    rng = random.Random(1)
    for k in range(n_trig):
        # a random phase against the room's 0.5 s tick (a fixed gap would lock onto it)
        time.sleep(args.gap + rng.uniform(0, 0.5))
        if args.trigger == "ws":
            kind = "open" if trig.sock is None else "close"
            target = current + (1 if kind == "open" else -1)
        else:
            kind, target = "hls", current + 1
        for lp in loads:
            lp.send(f"expect {target} {args.fanout_timeout}")
        for lp in loads:
            lp.wait("armed", 30)
        time.sleep(0.05)
        l0 = sum(lp.cpu() for lp in loads)
        c0 = meter.cpu()
        if kind == "open":
            t_trig = trig.open_ws()
        elif kind == "close":
            t_trig = trig.close_ws()
        else:
            t_trig, _ = trig.hls_session()
        got = [lp.wait("got", args.fanout_timeout + 30) for lp in loads]
        t_done = max(g["t_done"] for g in got)
        c1 = meter.cpu()
        l1 = sum(lp.cpu() for lp in loads)
        times = sorted(t for g in got for t in g["times"])
        missing = sum(g["missing"] for g in got)
        lat = [t - t_trig for t in times]
        wall = t_done - t_trig
        cpu = c1 - c0
        r = {"kind": kind, "from": current, "to": target, "n": len(times), "missing": missing,
             "t_trigger": t_trig, "t_done": t_done,
             "latency_ms": stats_ms(lat),
             "spread_ms": (times[-1] - times[0]) * 1000 if times else None,
             "p95_minus_first_ms": (stats_ms(lat)["p95"] - stats_ms(lat)["min"]) if times else None,
             "wall_ms": wall * 1000, "server_cpu_ms": cpu * 1000,
             "server_cpu_ms_over_idle": (cpu - idle_rate * wall) * 1000,
             "load_cpu_ms": (l1 - l0) * 1000}
        if missing:
            r["counts_seen"] = [g["counts"] for g in got]
        out.append(r)
        lm = r["latency_ms"]
        print(f"    trigger {k + 1}/{n_trig} ({kind} {current}->{target}): first {common.fmt(lm['min'], '.0f')} ms, "
              f"p50 {common.fmt(lm['p50'], '.0f')}, p95 {common.fmt(lm['p95'], '.0f')}, max {common.fmt(lm['max'], '.0f')} ms, "
              f"spread {common.fmt(r['spread_ms'], '.0f')} ms, server CPU {r['server_cpu_ms_over_idle']:.0f} ms over idle, "
              f"load CPU {r['load_cpu_ms']:.0f} ms, missing {missing}", flush=True)
        if not alive():
            raise RuntimeError("a process died during the fan-out triggers")
        if kind == "hls":
            # the session expires after --viewer-timeout (10 s): wait until every socket is back at n_open
            for lp in loads:
                lp.send(f"expect {current} 30")
            for lp in loads:
                lp.wait("armed", 30)
            back = [lp.wait("got", 60) for lp in loads]
            if any(g["missing"] for g in back):
                print("    the HLS session did not expire in 30 s", flush=True)
                break
        else:
            current = target
    if trig.sock is not None:  # leave the count as it was (not measured)
        trig.close_ws()
    return out


def end_of_stream(procs: common.Procs, stack: Stack, loads: list[LoadProc], n_open: int,
                  timeout: float = 60.0) -> dict:
    """Stop the publisher (SIGTERM: ffmpeg closes its RTMP stream properly) and time the 'ended' messages
    and the server's closes from that signal (ffmpeg's own exit can come after the server saw the end)."""
    t_sig = time.monotonic()
    procs.stop(stack.publisher)
    t_exit = time.monotonic()
    deadline = t_exit + timeout
    while True:
        for lp in loads:
            lp.send("endstats")
        st = [lp.wait("endstats", 30) for lp in loads]
        ended = [t for s in st for t in s["ended_t"]]
        closed = [t for s in st for t in s["close_t"]]
        if (len(ended) >= n_open and len(closed) >= n_open) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return {"publisher_stop_s": round(t_exit - t_sig, 3), "ended": len(ended), "closed": len(closed),
            "ended_ms": stats_ms([t - t_sig for t in ended]), "close_ms": stats_ms([t - t_sig for t in closed]),
            "ended_spread_ms": (max(ended) - min(ended)) * 1000 if ended else None,
            "close_spread_ms": (max(closed) - min(closed)) * 1000 if closed else None,
            "timed_out": len(ended) < n_open or len(closed) < n_open}


def summarise_fanouts(fanouts: list[dict], n_open: int) -> dict:
    def med(key, sub=None):
        vals = [(f[key][sub] if sub else f[key]) for f in fanouts]
        return common.median([v for v in vals if v is not None])

    cpu = med("server_cpu_ms_over_idle")
    spread = med("spread_ms")
    return {"n": len(fanouts), "first_ms": med("latency_ms", "min"), "p50_ms": med("latency_ms", "p50"),
            "p95_ms": med("latency_ms", "p95"), "max_ms": med("latency_ms", "max"), "spread_ms": spread,
            "p95_minus_first_ms": med("p95_minus_first_ms"),
            "server_cpu_ms": cpu, "server_cpu_us_per_socket": (1000 * cpu / n_open) if cpu is not None and n_open else None,
            "sockets_per_s": (n_open / (spread / 1000)) if spread else None,
            "load_cpu_ms": med("load_cpu_ms"),
            # server CPU of the fan-out / its spread: ~100 = one core busy sending for the whole spread
            "core_pct_during_spread": (100 * cpu / spread) if cpu is not None and spread else None,
            "missing_total": sum(f["missing"] for f in fanouts),
            "max_of_max_ms": max((f["latency_ms"]["max"] for f in fanouts if f["latency_ms"]["max"] is not None),
                                 default=None)}


# --------------------------------------------------------------------------- py-spy


def spy_binary() -> str | None:
    cand = Path(sys.executable).parent / "py-spy"
    return str(cand) if cand.exists() else shutil.which("py-spy")


def start_spy(procs: common.Procs, args, stack: Stack, tag: str):
    spy_bin = spy_binary()
    if spy_bin is None:
        print("  py-spy not found (pip install py-spy): no profile", flush=True)
        return None
    raw = common.RESULTS_DIR / f"ws_viewers-profile-{args.stamp}-{tag}.txt"
    log = open(stack.run_dir / f"py-spy-{tag}.log", "wb")
    m = procs.start("py-spy", common.pinned([spy_bin, "record", "--pid", str(stack.server.pid), "--rate", str(args.spy_rate),
                                      "--nonblocking", "--nolineno", "--format", "raw", "-o", str(raw)],
                                     args.load_cpus), stdout=log, stderr=log, stop_timeout=30)
    m.raw = raw  # type: ignore[attr-defined]
    time.sleep(1.0)  # let it attach
    return m


def stop_spy(procs: common.Procs, m) -> dict:
    procs.stop(m, sig=signal.SIGINT, timeout=30)  # py-spy writes its output on SIGINT
    raw: Path = m.raw
    if not raw.exists():
        return {"raw": None}
    return {"raw": str(raw.relative_to(common.REPO_DIR)), "summary": summarise_profile(raw)}


PROFILE_INCLUSIVE = (
    "ViewerSockets._run", "ViewerSockets._send_all", "WebSocketResponse.send_str", "WebSocketWriter.send_frame",
    "WebSocketWriter._send_compressed_frame_sync", "json.dumps",
    "InProcessBus.touch", "InProcessBus.present", "_Group.purge",
    "viewers_socket", "_visible_stream", "SQLiteStore.get_stream", "WebSocketResponse.prepare",
    "WebSocketResponse._pre_start", "RequestHandler.data_received", "RequestHandler.start",
    "RequestHandler._handle_request", "WebSocketResponse.receive", "WebSocketResponse._send_heartbeat",
    "PublishSession.data_received",
)


def summarise_profile(raw: Path, top: int = 25) -> dict:
    """py-spy raw (collapsed) stacks -> top functions by own and by total samples (event-loop thread)."""
    own, total, others = Counter(), Counter(), Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        n = int(n)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))] or stack.split(";")
        if "(threading.py)" in frames[0]:  # aiosqlite's worker, the executor
            others[frames[-1]] += n
            continue
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    pct = lambda c: [(f, n, round(100 * n / max(1, samples), 1)) for f, n in c.most_common(top)]  # noqa: E731
    inclusive = {}
    for name in PROFILE_INCLUSIVE:
        cnt = sum(c for f, c in total.items() if f.startswith(name + " ("))
        inclusive[name] = round(100 * cnt / max(1, samples), 1)
    return {"samples": samples, "own": pct(own), "total": pct(total), "inclusive_pct": inclusive,
            "other_threads": [(f, n) for f, n in others.most_common(5)]}


# --------------------------------------------------------------------------- tables


def main_table(steps: list[dict], markdown: bool = False) -> str:
    headers = ["N", "opened", "errors", "connect/s", "1st msg p50/p95 ms", "CPU ms/connect", "RSS MiB before→after",
               "RSS KiB/socket", "PSS KiB/socket", "idle CPU % (stream alone)", "fan-out p50/p95/max ms",
               "first ms", "spread ms", "fan-out CPU ms", "µs/socket", "full GC ms", "end: ended / closed ms",
               "missing", "others %"]
    rows = []
    for s in steps:
        c, m, i, f = s["connect"], s["memory"], s["idle"], s["fanout"]
        others = max(c["others"][0], i["others"][0])
        rows.append([
            f"{s['viewers']}", f"{c['opened']}", f"{c['error_count'] + i['lost']}",
            common.fmt(c["rate_per_s"], ".0f"),
            f"{common.fmt(c['first_msg_ms']['p50'], '.0f')} / {common.fmt(c['first_msg_ms']['p95'], '.0f')}",
            common.fmt(c["server_cpu_ms_per_socket"], ".2f"),
            f"{s['rss_before_mib']:.0f} → {m['rss_after_mib']:.0f}",
            common.fmt(m["rss_kib_per_socket"], ".1f"), common.fmt(m["pss_kib_per_socket"], ".1f"),
            f"{i['server_cpu_pct']:.1f} ({s['baseline_cpu_pct']:.1f})",
            f"{common.fmt(f['p50_ms'], '.0f')} / {common.fmt(f['p95_ms'], '.0f')} / {common.fmt(f['max_ms'], '.0f')}",
            common.fmt(f["first_ms"], ".0f"), common.fmt(f["spread_ms"], ".0f"),
            common.fmt(f["server_cpu_ms"], ".0f"), common.fmt(f["server_cpu_us_per_socket"], ".1f"),
            gc_cell(s), end_cell(s),
            f"{f['missing_total']}", f"{others:.0f}",
        ])
    return common.render_table(headers, rows, markdown)


def gc_cell(s: dict) -> str:
    g = s.get("gc")
    if not g:
        return "-"
    idle = g["idle_gen2_ms"]
    return f"{len(idle)}× idle, max {max(idle):.0f}" if idle else "0 idle"


def end_cell(s: dict) -> str:
    e = s.get("end")
    if not e:
        return "-"
    return (f"{common.fmt(e['ended_ms']['max'], '.0f')} / {common.fmt(e['close_ms']['max'], '.0f')}"
            + (" (timed out)" if e["timed_out"] else ""))


# --------------------------------------------------------------------------- main


def orchestrate(args) -> int:
    common.install_signal_handlers()
    nofile = raise_nofile()
    if shutil.which("ffmpeg") is None:
        sys.exit("ffmpeg is needed (apt-get install ffmpeg)")
    steps_n = [int(n) for n in args.viewers.split(",") if n]
    biggest = max(steps_n + ([args.profile_n] if args.profile_n else []), default=0)
    if args.load_procs == 0:  # auto: one process holds what its descriptor limit allows
        args.load_procs = max(1, -(-biggest // max(1, nofile - 1000)))
    if biggest + 1000 > nofile:
        print(f"warning: RLIMIT_NOFILE {nofile} is tight for {biggest} sockets in the server", file=sys.stderr)
    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    args.stamp = time.strftime("%Y%m%d-%H%M%S")
    out_path = common.RESULTS_DIR / f"ws_viewers-{args.stamp}.json"
    result = {"benchmark": "ws_viewers", "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
              "command": " ".join([Path(sys.executable).name] + sys.argv),
              "machine": common.machine_info(), "sfstream_source": common.source_digest(),
              "aiohttp": __import__("aiohttp").__version__, "nofile": nofile,
              "loadavg_start": os.getloadavg(), "args": vars(args), "steps": [], "profile": None}

    def save():
        result["loadavg_end"] = os.getloadavg()
        out_path.write_text(json.dumps(result, indent=1, default=str))

    procs = common.Procs()
    try:
        for N in steps_n:
            print(f"N = {N} websocket viewers ...", flush=True)
            try:
                result["steps"].append(run_step(procs, args, N))
            except (RuntimeError, TimeoutError, OSError, KeyError, ValueError) as exc:
                # kept in the JSON; the next N still runs (on a fresh server)
                print(f"  N = {N} failed: {exc!r}"[:2000], flush=True)
                result.setdefault("failed", []).append({"viewers": N, "error": repr(exc)[:4000]})
            save()
        if args.profile:
            pn = args.profile_n or (max(steps_n) if steps_n else 10000)
            print(f"profiling the server at N = {pn} (py-spy, connect ramp and {args.profile_triggers} fan-outs) ...",
                  flush=True)
            step = run_step(procs, args, pn, profile_tag=f"n{pn}")
            result["profile"] = step
            save()
    except KeyboardInterrupt:
        print("interrupted: stopping everything, keeping partial results", file=sys.stderr)
    finally:
        procs.stop_all()
        save()
    md = args.markdown
    print()
    print(f"websocket viewers of one stream ({result['machine']['cpus']} CPUs; server on CPU {args.server_cpus or 'any'}, "
          f"load on CPU {args.load_cpus or 'any'}; trigger {args.trigger}, {args.triggers} fan-outs per N, medians; "
          f"clients {'offer permessage-deflate' if args.deflate else 'without compression'}):")
    if result["steps"]:
        print(main_table(result["steps"], md))
    for f in result.get("failed", []):
        print(f"N = {f['viewers']} FAILED: {f['error'][:300]}")
    p = result["profile"]
    if p:
        print(f"\nprofiled step (py-spy --nonblocking attached, N = {p['viewers']}):")
        print(main_table([p], md))
        for key, what in (("profile_connect", "connect ramp"), ("profile_fanout", "fan-outs")):
            prof = p.get(key) or {}
            if prof.get("summary"):
                s = prof["summary"]
                print(f"\n{what}: top functions by own time ({s['samples']} samples of the event-loop thread, non-idle):")
                print(common.profile_table(s, markdown=md))
                print("inclusive %: " + ", ".join(f"{k} {v}" for k, v in s["inclusive_pct"].items() if v))
                print(f"other threads: {s['other_threads']}")
    print(f"\nresults: {out_path}")
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        p = argparse.ArgumentParser()
        p.add_argument("_cmd")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--stream-id", type=int, required=True)
        p.add_argument("--count", type=int, required=True)
        p.add_argument("--concurrency", type=int, default=100)
        p.add_argument("--timeout", type=float, default=30.0)
        p.add_argument("--deflate", action="store_true")
        return load_main(p.parse_args())

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--viewers", default=DEFAULT_STEPS, help=f"N steps, comma-separated (default {DEFAULT_STEPS})")
    p.add_argument("--concurrency", type=int, default=100,
                   help="websocket handshakes in flight at once (default 100; the server's listen backlog is 1024)")
    p.add_argument("--connect-timeout", type=float, default=30.0, help="per socket: connect to first message, s")
    p.add_argument("--load-procs", type=int, default=0,
                   help="load processes (default 0 = as few as the descriptor limit allows: 1 up to ~19,000)")
    p.add_argument("--trigger", choices=("ws", "hls"), default="ws",
                   help="ws: open / close one extra websocket (default); hls: one HLS viewer session")
    p.add_argument("--triggers", type=int, default=6, help="fan-outs measured per N (default 6: 3 up, 3 down)")
    p.add_argument("--gap", type=float, default=1.0, help="seconds between fan-outs (default 1)")
    p.add_argument("--fanout-timeout", type=float, default=15.0, help="wait at most this for every socket, s")
    p.add_argument("--baseline-seconds", type=float, default=10.0, help="server CPU with the stream and no socket")
    p.add_argument("--idle-seconds", type=float, default=31.0,
                   help="idle-connected window (default 31: one heartbeat ping round of aiohttp, 30 s)")
    p.add_argument("--quiet-s", type=float, default=1.5, help="stable = no count message for this long")
    p.add_argument("--server-cpus", default="0", help="taskset CPU list for the server (default 0; '' = no pinning)")
    p.add_argument("--load-cpus", default="1", help="taskset CPU list for load, publisher, py-spy (default 1)")
    p.add_argument("--profile", action="store_true", help="one more step with py-spy attached to the server")
    p.add_argument("--profile-n", type=int, default=None, help="N of the profiled step (default the largest)")
    p.add_argument("--profile-triggers", type=int, default=10)
    p.add_argument("--spy-rate", type=int, default=250, help="py-spy samples/s (default 250)")
    p.add_argument("--quiet-pct", type=float, default=25.0,
                   help="before each step, wait while other processes use more CPU than this (%% of one core)")
    p.add_argument("--quiet-wait", type=float, default=60.0, help="... for at most this many seconds")
    p.add_argument("--deflate", action="store_true",
                   help="clients offer permessage-deflate like browsers (Chrome, Firefox); default: plain frames")
    p.add_argument("--no-end-test", dest="end_test", action="store_false",
                   help="skip the end of the stream (publisher stopped: 'ended' to every socket, then closed)")
    p.add_argument("--gc-log", action="store_true",
                   help="probe: log the server's gen-1/2 garbage collections (a sitecustomize on its PYTHONPATH; "
                        "no change to sfstream) and report those that overlap each phase and fan-out")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    return orchestrate(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
