#!/usr/bin/env python3
"""API benchmark: latency of login, GET profile and GET public user at fixed request rates.

For each database (SQLite, PostgreSQL) the real server (`python -m sfstream serve`,
uvloop) is started fresh on a database seeded with users, and a separate load
process offers each endpoint at fixed rates (default 200, 500, 1000 req/s):

  - open loop, wrk2-style: request i is *scheduled* at start + i / rate, whether
    or not earlier ones have answered, and its latency runs from that scheduled
    time to the last byte of the response. Time spent waiting for a free
    connection, or behind a late generator, is latency too, so a server that
    falls behind shows it (no coordinated omission). Debian's wrk is closed loop
    (it sends the next request when the previous one answers), hence our own
    generator: one uvloop process, a fixed set of keep-alive HTTP/1.1
    connections (default 64), a minimal asyncio.Protocol HTTP/1.1 client (about
    0.2 ms of CPU per request, a fifth of a core at 1,000 req/s: lighter than
    aiohttp's client on a machine the server shares);
  - a warm-up (default 3 s) at the same rate, then the measured window (default
    12 s): the requests *scheduled* in the window are counted, whenever they end;
    a request not answered 5 s after its scheduled time is an error (timeout);
  - reads spread over the seeded users (1,000 by default): GET /api/users/profile
    with 1,000 different access tokens, GET /api/users/{username} over 1,000 names;
  - login (POST /api/auth/login, username + password) is bcrypt-bound by design.
    The work of a check is set by the cost stored in the user's hash, not by the
    server's --bcrypt-rounds (that one applies to new hashes): users are seeded
    with cost-4 and with cost-12 (the default) hashes. Cost 4 is offered at the
    same rates as the reads; cost 12 (~0.25-0.5 s of CPU per login) at a ladder of
    low rates (default 1, 2, 4, 6, 8, 10, 12 req/s), to find the highest rate the
    machine sustains. Every login also writes a refresh-token row.

Per run: achieved rate, p50/p95/p99/max latency, errors, the server's CPU (% of
one core), the generator's CPU, and the whole machine's CPU (other benchmarks
may be running: the report says how busy the machine was; before each run the
benchmark waits, up to --quiet-wait s, for them to calm down). With --profile,
more runs (by default GET profile at 1,000 req/s on SQLite and on PostgreSQL,
cost-4 login at 400 req/s on SQLite) are recorded with py-spy: the first half of
the window with Python frames, only the thread holding the GIL (--gil,
--nonblocking: the server is not paused); with --profile-native the second half
with C frames too (uvloop, sqlite3, the GIL waits), which pauses the server at
every sample, so that half's latency is not representative.

Users are seeded through the project's own Store (the rows `register` writes),
before the server starts: registering them through the API would cost a bcrypt
hash each. One registration, logins, profile and public reads are checked
through the API before measuring.

    python benchmarks/api.py --profile --profile-native        # everything, ~20 min on a quiet machine
    python benchmarks/api.py --databases sqlite --endpoints profile --rates 1000 \
        --profile --profile-targets sqlite:profile:1000
    # options: --users 1000 --connections 64 --warmup 3 --duration 12 --timeout 5
    #          --slow-login-rates 1,2,4,6,8,10,12 --pg-url postgresql://postgres@127.0.0.1:5432 --pin

Needs PostgreSQL for --databases postgres (a throwaway database sfstream_bench_<hex>
is created and dropped) and py-spy for --profile (pip install py-spy).
Results: a table on stdout, JSON in benchmarks/results/api-<timestamp>.json.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py)

PASSWORD = "bench-password-123"
ENDPOINTS = ("profile", "public", "login")
READS = ("profile", "public")
TIMEOUT_STATUS = -2
CONN_LOST_STATUS = -1
BAD_BODY_STATUS = -3
REQUIREMENT_P95_MS = 200.0
GOAL_P95_MS = 10.0
GOAL_RATE = 1000


# =========================================================================== load process


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time (no pipelining)."""

    def __init__(self, gen: "_Generator") -> None:
        self.gen = gen
        self.transport = None
        self.buf = bytearray()
        self.req: int | None = None  # index of the request in flight
        self.head_len: int | None = None
        self.body_len = 0
        self.status = 0
        self.dead = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, i: int, data: bytes) -> None:
        self.req = i
        self.gen.sent[i] = self.gen.clock()
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.head_len is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buf[:end + 2])
                m = _CONTENT_LENGTH.search(head)
                if m is None:  # aiohttp's json responses always have one; anything else is a failure here
                    self.dead = True
                    i, self.req = self.req, None
                    self.gen.finish(self, i, BAD_BODY_STATUS, head[:200])
                    self.transport.abort()  # connection_lost opens another connection
                    return
                self.status = int(head[9:12])
                self.head_len = end + 4
                self.body_len = int(m[1])
            total = self.head_len + self.body_len
            if len(self.buf) < total:
                return
            body = bytes(self.buf[self.head_len:total])
            del self.buf[:total]
            self.head_len = None
            i, self.req = self.req, None
            self.gen.finish(self, i, self.status, body)

    def connection_lost(self, exc) -> None:
        self.dead = True
        self.gen.lost(self)


class _Generator:
    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.loop = asyncio.get_running_loop()
        # CLOCK_MONOTONIC, the same clock in every process (the main process times the window with it).
        # Not loop.time(): uvloop's is libuv's millisecond clock, cached per loop iteration.
        self.clock = time.monotonic
        self.templates = [t.encode("latin-1") for t in spec["requests"]]
        self.expect = spec["expect"].encode()
        self.ok_status = spec["ok_status"]
        self.rate = spec["rate"]
        self.timeout = spec["timeout"]
        self.total = int(round((spec["warmup"] + spec["duration"]) * self.rate))
        self.sched: list[float] = []
        self.dispatched = [0.0] * self.total
        self.sent = [0.0] * self.total
        self.done = [0.0] * self.total
        self.status = [0] * self.total
        self.idle: list[_Conn] = []
        self.busy: set[_Conn] = set()
        self.waiting: collections.deque[int] = collections.deque()
        self.errors_sample: list[str] = []
        self.reconnects = 0
        self.closing = False
        self.outstanding = 0

    async def connect(self, n: int) -> None:
        for _ in range(n):
            await self._open()

    async def _open(self) -> None:
        _, conn = await self.loop.create_connection(lambda: _Conn(self), self.spec["host"], self.spec["port"])
        self._free(conn)

    def _reopen(self) -> None:
        if self.closing:
            return
        self.reconnects += 1

        async def reopen():
            try:
                await self._open()
            except OSError as exc:
                self._note(f"reconnect failed: {exc}")
                await asyncio.sleep(0.1)
                self._reopen()

        self.loop.create_task(reopen())

    def _note(self, text: str) -> None:
        if len(self.errors_sample) < 20:
            self.errors_sample.append(text)

    def _free(self, conn: _Conn) -> None:
        """A connection is free: give it the oldest waiting request that has not expired."""
        now = self.clock()
        while self.waiting:
            j = self.waiting.popleft()
            if now - self.sched[j] > self.timeout:
                self._end(j, TIMEOUT_STATUS, now)
                continue
            self.busy.add(conn)
            conn.send(j, self.templates[j % len(self.templates)])
            return
        self.busy.discard(conn)
        self.idle.append(conn)

    def _end(self, i: int, status: int, now: float) -> None:
        if self.status[i] == 0:
            self.status[i] = status
            self.done[i] = now
            self.outstanding -= 1

    def dispatch(self, i: int, now: float) -> None:
        self.dispatched[i] = now
        self.outstanding += 1
        if self.idle:
            conn = self.idle.pop()
            self.busy.add(conn)
            conn.send(i, self.templates[i % len(self.templates)])
        else:
            self.waiting.append(i)

    def finish(self, conn: _Conn, i: int | None, status: int, body: bytes) -> None:
        now = self.clock()
        if i is not None:
            if status == self.ok_status and self.expect not in body:
                self._note(f"status {status} without {self.expect!r}: {body[:200]!r}")
                status = BAD_BODY_STATUS
            elif status != self.ok_status:
                self._note(f"status {status}: {body[:200]!r}")
            self._end(i, status, now)
        if not conn.dead and not self.closing:
            self._free(conn)

    def lost(self, conn: _Conn) -> None:
        self.busy.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.req is not None:
            if self.status[conn.req] == 0:
                self._note("connection lost with a request in flight")
            self._end(conn.req, CONN_LOST_STATUS, self.clock())
            conn.req = None
        self._reopen()

    async def watchdog(self) -> None:
        """Requests in flight longer than the timeout: give up on them (and their connection)."""
        while not self.closing:
            await asyncio.sleep(0.05)
            now = self.clock()
            for conn in list(self.busy):
                if conn.req is not None and now - self.sched[conn.req] > self.timeout:
                    self._end(conn.req, TIMEOUT_STATUS, now)
                    conn.req = None
                    conn.dead = True
                    self.busy.discard(conn)
                    conn.transport.abort()  # connection_lost reopens one
            while self.waiting and now - self.sched[self.waiting[0]] > self.timeout:
                self._end(self.waiting.popleft(), TIMEOUT_STATUS, now)

    async def run(self, start_at: float) -> None:
        interval = 1.0 / self.rate
        self.sched = [start_at + i * interval for i in range(self.total)]
        dog = self.loop.create_task(self.watchdog())
        i = 0
        while i < self.total:
            now = self.clock()
            t = self.sched[i]
            if t > now:
                await asyncio.sleep(t - now)
                now = self.clock()
            while i < self.total and self.sched[i] <= now:
                self.dispatch(i, now)
                i += 1
        deadline = self.sched[-1] + self.timeout + 0.5
        while self.outstanding > 0 and self.clock() < deadline:
            await asyncio.sleep(0.02)
        now = self.clock()
        for j in range(self.total):
            if self.status[j] == 0:
                self._end(j, TIMEOUT_STATUS, now)
        self.closing = True
        dog.cancel()
        for conn in list(self.idle) + list(self.busy):
            if conn.transport is not None:
                conn.transport.close()

    def result(self, start_at: float) -> dict:
        t0 = start_at + self.spec["warmup"]
        t1 = t0 + self.spec["duration"]
        idx = [i for i in range(self.total) if t0 <= self.sched[i] < t1]
        ok = [i for i in idx if self.status[i] == self.ok_status]
        statuses = collections.Counter(self.status[i] for i in idx)
        lat = sorted((self.done[i] - self.sched[i]) * 1000 for i in ok)
        # Also per second, to see a queue building up (latency growing through the window).
        per_second = []
        for s in range(int(self.spec["duration"])):
            a, b = t0 + s, t0 + s + 1
            sec = [i for i in idx if a <= self.sched[i] < b]
            sec_lat = sorted((self.done[i] - self.sched[i]) * 1000 for i in sec if self.status[i] == self.ok_status)
            per_second.append({
                "offered": len(sec),
                "completed_ok": sum(1 for i in ok if a <= self.done[i] < b),
                "p50_ms": _pct(sec_lat, 50), "p95_ms": _pct(sec_lat, 95), "max_ms": sec_lat[-1] if sec_lat else None,
            })
        dispatch_lag = sorted((self.dispatched[i] - self.sched[i]) * 1000 for i in idx)
        send_lag = sorted((self.sent[i] - self.sched[i]) * 1000 for i in idx if self.sent[i])
        completed_in_window = sum(1 for i in range(self.total) if self.status[i] == self.ok_status and t0 <= self.done[i] < t1)
        return {
            "window": [t0, t1],
            "offered": len(idx),
            "offered_rate": len(idx) / self.spec["duration"],
            "ok": len(ok),
            "errors": len(idx) - len(ok),
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "achieved_rate": completed_in_window / self.spec["duration"],
            "latency_ms": _summary(lat),
            "latency_ms_halves": [_summary(sorted((self.done[i] - self.sched[i]) * 1000 for i in ok
                                                  if (self.sched[i] < t0 + self.spec["duration"] / 2) == first))
                                  for first in (True, False)],
            "dispatch_lag_ms": _summary(dispatch_lag),
            "send_lag_ms": _summary(send_lag),
            "per_second": per_second,
            "reconnects": self.reconnects,
            "connections": self.spec["connections"],
            "error_samples": self.errors_sample,
        }


def _pct(sorted_values: list[float], q: float):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(q / 100 * (len(sorted_values) - 1)))))
    return sorted_values[k]


def _summary(sorted_values: list[float]) -> dict:
    if not sorted_values:
        return {"n": 0}
    return {"n": len(sorted_values), "mean": sum(sorted_values) / len(sorted_values),
            **{f"p{q:g}".replace(".", "_"): _pct(sorted_values, q) for q in (50, 90, 95, 99, 99.9)},
            "max": sorted_values[-1]}


async def load_worker(spec: dict, ready_path: Path) -> dict:
    gen = _Generator(spec)
    await gen.connect(spec["connections"])
    start_at = gen.clock() + spec["lead"]
    tmp = ready_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"start_at": start_at}))
    tmp.rename(ready_path)
    await gen.run(start_at)
    return gen.result(start_at)


def run_worker(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    ready = Path(out_path).with_suffix(".ready")
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(load_worker(spec, ready))
    except ImportError:
        result = asyncio.run(load_worker(spec, ready))
    tmp = Path(out_path).with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.rename(out_path)
    return 0


# =========================================================================== requests


def http_request(method: str, path: str, headers: dict | None = None, body: bytes | None = None) -> str:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "User-Agent: sfstream-apibench"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return "\r\n".join(lines) + "\r\n\r\n" + (body.decode() if body else "")


def username(cost: int, k: int) -> str:
    return f"b{cost}u{k:05d}"


def build_requests(endpoint: str, users: int, cost: int, tokens: list[str]) -> tuple[list[str], str, int]:
    """(raw requests to rotate through, a substring every good body has, the good status)."""
    order = list(range(users))
    random.Random(1).shuffle(order)
    if endpoint == "profile":
        return ([http_request("GET", "/api/users/profile", {"Authorization": f"Bearer {tokens[k % len(tokens)]}"})
                 for k in order], '"email"', 200)
    if endpoint == "public":
        return [http_request("GET", f"/api/users/{username(4, k)}") for k in order], '"username"', 200
    if endpoint == "login":
        return ([http_request("POST", "/api/auth/login", body=json.dumps(
                    {"login": username(cost, k), "password": PASSWORD}).encode()) for k in order],
                '"access_token"', 200)
    if endpoint == "healthz":
        return [http_request("GET", "/healthz")], '"ok"', 200
    raise ValueError(endpoint)


# =========================================================================== setup: databases, users, server


async def _pg_admin(base_url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(base_url.rstrip("/") + "/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_pg_database(base_url: str) -> tuple[str, str]:
    name = f"sfstream_bench_{secrets.token_hex(4)}"
    asyncio.run(_pg_admin(base_url, f'CREATE DATABASE "{name}"'))
    return name, base_url.rstrip("/") + "/" + name


def drop_pg_database(base_url: str, name: str) -> None:
    try:
        asyncio.run(_pg_admin(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        print(f"  dropped PostgreSQL database {name}")
    except Exception as exc:  # noqa: BLE001 - report, never hide
        print(f"  could not drop PostgreSQL database {name}: {exc}", file=sys.stderr)


async def _seed(database_url: str, data_dir: Path, users: int, costs: list[int]) -> dict:
    import bcrypt

    from sfstream.store import open_store

    t = time.perf_counter()
    hashes = {}
    for c in costs:  # one hash per cost; all users of a cost share it (same work per check)
        h0 = time.perf_counter()
        hashes[c] = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(c)).decode()
        hashes[f"hash_seconds_{c}"] = time.perf_counter() - h0
    store = await open_store(database_url, data_dir=data_dir)
    try:
        for c in costs:
            for k in range(users):
                await store.create_user(username(c, k), f"{username(c, k)}@bench.example", hashes[c])
        count = await store.count_users()
    finally:
        await store.close()
    return {"users": count, "seconds": time.perf_counter() - t,
            "bcrypt_hash_seconds": {c: hashes[f"hash_seconds_{c}"] for c in costs}}


async def _api_checks_and_tokens(port: int, users: int) -> tuple[list[str], dict]:
    """Register one user, check the four endpoints answer as they should, log in every cost-4 user."""
    import aiohttp

    base = f"http://127.0.0.1:{port}"
    checks = {}
    async with aiohttp.ClientSession() as s:
        name = f"breg{secrets.token_hex(4)}"
        t = time.perf_counter()
        async with s.post(f"{base}/api/auth/register",
                          json={"username": name, "email": f"{name}@bench.example", "password": PASSWORD}) as r:
            body = await r.json()
            assert r.status == 201 and "access_token" in body, (r.status, body)
        checks["register_seconds"] = time.perf_counter() - t
        async with s.get(f"{base}/api/users/profile", headers={"Authorization": f"Bearer {body['access_token']}"}) as r:
            prof = await r.json()
            assert r.status == 200 and prof["username"] == name and "email" in prof, (r.status, prof)
        async with s.get(f"{base}/api/users/{username(4, 0)}") as r:
            pub = await r.json()
            assert r.status == 200 and pub["username"] == username(4, 0) and "email" not in pub, (r.status, pub)
        async with s.post(f"{base}/api/auth/login", json={"login": username(4, 1), "password": "wrong-password"}) as r:
            assert r.status == 401, r.status
        checks["ok"] = True

        tokens: list[str | None] = [None] * users
        sem = asyncio.Semaphore(8)

        async def login(k: int) -> None:
            async with sem:
                async with s.post(f"{base}/api/auth/login", json={"login": username(4, k), "password": PASSWORD}) as r:
                    data = await r.json()
                    if r.status != 200:
                        raise RuntimeError(f"login of {username(4, k)}: {r.status} {data}")
                    tokens[k] = data["access_token"]

        t = time.perf_counter()
        await asyncio.gather(*(login(k) for k in range(users)))
        checks["token_logins_seconds"] = time.perf_counter() - t
    return [t for t in tokens if t], checks


# =========================================================================== one run


def _others_cpu(before: dict, after: dict, exclude: set[int], seconds: float, top: int = 4) -> list[list]:
    out = []
    for pid, (name, t1) in after.items():
        if pid in exclude or pid not in before:
            continue
        d = t1 - before[pid][1]
        if d > 0.02 * seconds:
            out.append([name[:70], round(100 * d / seconds, 1)])
    return sorted(out, key=lambda x: -x[1])[:top]


def _proc_times() -> dict:
    """pid -> (command line, CPU seconds) of every process on the machine."""
    out = {}
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            t = p.cpu_times()
            cmd = " ".join(p.info["cmdline"] or []) or p.info["name"]
            out[p.pid] = (cmd.replace("/tmp/venvprobe/bin/", ""), t.user + t.system)
        except psutil.Error:
            pass
    return out


def _ours(server: common.ServerHandle | None, pg_name: str | None, procs: dict) -> set[int]:
    """This benchmark's processes: itself, the server and its children, the PostgreSQL backends of its database."""
    pids = {os.getpid()}
    if server is not None:
        pids |= {p.pid for p in server.meter.processes()}
    if pg_name:
        pids |= {pid for pid, (cmd, _) in procs.items() if cmd.startswith("postgres:") and pg_name in cmd}
    return pids


def _db_cpu(before: dict, after: dict, pg_name: str | None) -> float | None:
    """CPU seconds of the PostgreSQL backends serving our database (they are not the server's children)."""
    if not pg_name:
        return None
    return sum(t - before.get(pid, (None, t))[1] for pid, (cmd, t) in after.items()
               if cmd.startswith("postgres:") and pg_name in cmd)


def wait_for_quiet(args, server: common.ServerHandle | None, pg_name: str | None) -> dict:
    """Other sessions share this machine: wait (bounded) while they use more than --quiet-pct of a core."""
    deadline = time.monotonic() + args.quiet_wait
    t_start = time.monotonic()
    while True:
        c0, o0 = psutil.cpu_times(), _proc_times()
        time.sleep(2.0)
        c1, o1 = psutil.cpu_times(), _proc_times()
        ours = _ours(server, pg_name, o1)
        our_cpu = sum(t - o0[pid][1] for pid, (_, t) in o1.items() if pid in ours and pid in o0)
        pct = max(0.0, 100 * (_busy(c0, c1) - our_cpu) / 2.0)
        top = _others_cpu(o0, o1, ours, 2.0, 3)
        if pct <= args.quiet_pct or time.monotonic() >= deadline:
            return {"foreign_cpu_pct_before": round(pct, 1), "foreign_top_before": top,
                    "quiet_waited_s": round(time.monotonic() - t_start, 1)}
        print(f"  other processes use {pct:.0f}% of a core ({', '.join(f'{n[:40]} {c:.0f}%' for n, c in top)}): "
              "waiting for a quieter moment ...", flush=True)
        time.sleep(3.0)


def _thread_times(pid: int) -> dict[int, float]:
    try:
        return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}
    except psutil.Error:
        return {}


def _busy(a, b) -> float:
    """CPU seconds the whole machine was busy (all cores) between two psutil.cpu_times()."""
    return sum(getattr(b, f) - getattr(a, f) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


def wait_idle(server: common.ServerHandle, limit_pct: float = 5.0, timeout: float = 60.0) -> float:
    """Wait until the server's CPU falls under limit_pct of a core (its backlog drained); return the wait."""
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        a = sum(server.meter.cpu_seconds().values())
        time.sleep(0.5)
        b = sum(server.meter.cpu_seconds().values())
        if (b - a) / 0.5 * 100 < limit_pct:
            break
    return time.monotonic() - t


def run_load(args, procs: common.Procs, server: common.ServerHandle, run_dir: Path, tag: str, requests: list[str],
             expect: str, ok_status: int, rate: float, *, warmup: float | None = None, duration: float | None = None,
             profile_base: Path | None = None, pg_name: str | None = None) -> dict:
    warmup = args.warmup if warmup is None else warmup
    duration = args.duration if duration is None else duration
    spec = {"host": "127.0.0.1", "port": server.http_port, "rate": rate, "warmup": warmup, "duration": duration,
            "timeout": args.timeout, "connections": args.connections, "lead": 0.5,
            "requests": requests, "expect": expect, "ok_status": ok_status}
    spec_path, out_path = run_dir / f"load-{tag}.json", run_dir / f"load-{tag}.out.json"
    ready_path = out_path.with_suffix(".ready")
    for stale in (out_path, ready_path):  # a repeated run reuses the tag
        stale.unlink(missing_ok=True)
    spec_path.write_text(json.dumps(spec))
    spy = spy_native = None
    cmd = [args.python, str(Path(__file__).resolve()), "--worker", "--spec", str(spec_path), "--out", str(out_path)]
    if args.pin:
        cmd = ["taskset", "-c", "0"] + cmd
    with open(run_dir / f"load-{tag}.stderr", "wb") as err:
        load = procs.start("load", cmd, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while not ready_path.exists():
            if load.popen.poll() is not None:
                raise RuntimeError(f"load process exited ({load.popen.returncode}): "
                                   + (run_dir / f"load-{tag}.stderr").read_text()[-2000:])
            if time.monotonic() > deadline:
                raise TimeoutError("load process did not connect in time")
            time.sleep(0.02)
        start_at = json.loads(ready_path.read_text())["start_at"]
        t0, t1 = start_at + warmup, start_at + warmup + duration
        load_meter = common.TreeMeter(load.popen.pid)
        time.sleep(max(0.0, t0 - time.monotonic()))
        if profile_base is not None:
            # The first half: Python frames, not pausing the server. The second half (--profile-native):
            # C frames too (uvloop, sqlite3, the GIL), which py-spy can only do by pausing it at each sample.
            half = duration / 2 if args.profile_native else duration
            spy = start_py_spy(server.pid, half, profile_base)
        s0, l0, th0 = server.meter.cpu_seconds(), load_meter.cpu_seconds(), _thread_times(server.pid)
        c0 = psutil.cpu_times()
        o0 = _proc_times()
        la0 = os.getloadavg()[0]
        if profile_base is not None and args.profile_native:
            time.sleep(max(0.0, t0 + duration / 2 - time.monotonic()))
            spy_native = start_py_spy(server.pid, duration / 2 - 0.5, profile_base.with_name(profile_base.name + "-native"),
                                      native=True)
        time.sleep(max(0.0, t1 - time.monotonic()))
        s1, l1, th1 = server.meter.cpu_seconds(), load_meter.cpu_seconds(), _thread_times(server.pid)
        c1 = psutil.cpu_times()
        o1 = _proc_times()
        rss = server.meter.rss()
        load.popen.wait(timeout=args.timeout + warmup + duration + 60)
        if load.popen.returncode != 0:
            raise RuntimeError(f"load process failed ({load.popen.returncode}): "
                               + (run_dir / f"load-{tag}.stderr").read_text()[-2000:])
        result = json.loads(out_path.read_text())
    finally:
        procs.stop(load, timeout=5)
    profile = finish_py_spy(spy, profile_base, server.pid) if spy is not None else None
    if spy_native is not None:
        profile = dict(profile or {})
        profile["native"] = finish_py_spy(spy_native, profile_base.with_name(profile_base.name + "-native"), server.pid)
    exclude = _ours(server, pg_name, o1) | {load.popen.pid}
    db_cpu = _db_cpu(o0, o1, pg_name)
    result.update({
        "db_cpu_pct": None if db_cpu is None else 100 * db_cpu / duration,
        "server_cpu_pct": 100 * common.cpu_delta(s0, s1) / duration,
        "load_cpu_pct": 100 * common.cpu_delta(l0, l1) / duration,
        "system_cpu_pct": 100 * _busy(c0, c1) / duration,  # % of one core, like the others (200 = 2 cores busy)
        "others_cpu_pct": _others_cpu(o0, o1, exclude, duration),
        "loadavg_1m": [la0, os.getloadavg()[0]],
        "server_rss_mib": rss / common.MiB,
        # Per OS thread (tid -> % of one core): the event loop runs on the main thread (tid = pid);
        # on SQLite the aiosqlite thread runs the queries; bcrypt runs in the default executor's threads.
        "server_threads_cpu_pct": {str(tid): round(100 * (t - th0.get(tid, 0.0)) / duration, 1)
                                   for tid, t in sorted(th1.items(), key=lambda kv: -(kv[1] - th0.get(kv[0], 0.0)))
                                   if t - th0.get(tid, 0.0) > 0.001 * duration},
    })
    result["event_loop_cpu_pct"] = result["server_threads_cpu_pct"].get(str(server.pid), 0.0)
    # Everything else on the machine (other sessions' benchmarks and tests), % of one core.
    result["foreign_cpu_pct"] = max(0.0, result["system_cpu_pct"] - result["server_cpu_pct"] - result["load_cpu_pct"]
                                    - (result["db_cpu_pct"] or 0.0))
    result["server_cpu_ms_per_request"] = (result["server_cpu_pct"] * 10 / result["achieved_rate"]
                                           if result["achieved_rate"] else None)
    result["sustained"] = sustained(result, rate)
    if profile is not None:
        result["profile"] = profile
    return result


def sustained(r: dict, rate: float) -> bool:
    """The rate is carried: nearly all of it answered, no errors, and no queue building up in the window."""
    if r["errors"] or r["achieved_rate"] < 0.97 * rate:
        return False
    secs = [s["p50_ms"] for s in r["per_second"] if s["p50_ms"] is not None]
    if len(secs) >= 4:
        q = max(1, len(secs) // 4)
        first, last = sorted(secs[:q])[q // 2], sorted(secs[-q:])[q // 2]
        if last > 2 * first + 50:
            return False
    return True


# =========================================================================== profiling


def _py_spy_bin() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


def start_py_spy(pid: int, seconds: float, base: Path, native: bool = False) -> subprocess.Popen | None:
    py_spy = _py_spy_bin()
    if py_spy is None:
        print("  py-spy not found (pip install py-spy): no profile", file=sys.stderr)
        return None
    raw = base.with_suffix(".txt")
    cmd = [py_spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
           "--threads", "--format", "raw", "-o", str(raw)]
    # Python frames: only samples of the thread holding the GIL, i.e. the interpreter's time, which all the
    # server's Python code shares (a waiting thread is not always recognised as idle). Native: every thread,
    # idle ones filtered out in analyze_profile (py-spy can take C stacks only while pausing the process).
    cmd += ["--native", "--rate", "100"] if native else ["--nonblocking", "--gil", "--rate", "200"]
    return subprocess.Popen(cmd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=common._die_with_parent)


def finish_py_spy(spy: subprocess.Popen, base: Path, main_tid: int) -> dict:
    try:
        _, err = spy.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        _, err = spy.communicate()
    raw = base.with_suffix(".txt")
    if not raw.exists():
        return {"error": (err or b"").decode(errors="replace")[-500:]}
    return analyze_profile(raw, main_tid)


# Native frames of a thread waiting for work (py-spy --native pauses the process, and then reports
# waiting threads as busy): leave these samples out.
IDLE_NATIVE = ("epoll_wait", "epoll_pwait", "_queue_SimpleQueue_get", "PyThread_acquire_lock_timed",
               "pthread_cond_timedwait", "pthread_cond_wait", "select (", "poll (")


def analyze_profile(raw: Path, main_tid: int | None = None, top: int = 20) -> dict:
    """Own and inclusive time per function from py-spy's raw (collapsed) stacks, overall and per thread."""
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    by_thread: collections.Counter = collections.Counter()
    own_by_thread: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    tids: dict[str, str] = {}
    total = 0
    idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        frames = stack.split(";")
        if any(f.startswith("take_gil") for f in frames[-8:]):
            frames = frames[:1] + ["(waiting for the GIL)"]
        elif any(f.startswith(IDLE_NATIVE) for f in frames[-6:]):
            idle += c  # waiting for work: epoll, an empty queue (aiosqlite, the executor)
            continue
        total += c
        thread = "?"
        m = re.match(r"thread \((\w+)\)", frames[0])
        if m:
            frames = frames[1:]
            # name the threads by what they run: the event loop, the aiosqlite connection, the executor (bcrypt)
            if main_tid is not None and m[1] == str(main_tid):
                thread = "event loop (main thread)"
            elif any("aiosqlite" in f for f in frames):
                thread = "aiosqlite thread"
            elif any("concurrent/futures/thread.py" in f for f in frames):
                thread = "executor threads"
            else:
                thread = "other threads"
            tids[m[1]] = thread
        # "func (path/file.py:LINE)" -> "func (file.py)": a function's lines added up, the path shortened
        frames = [re.sub(r"\((?:.*/)?([^/]+?):\d+\)$", r"(\1)", f) for f in frames]
        by_thread[thread] += c
        if frames:
            own[frames[-1]] += c
            own_by_thread[thread][frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    pct = (lambda c: round(100 * c / total, 1)) if total else (lambda c: 0.0)
    return {
        "raw": str(raw),
        "samples": total,
        "idle_samples_dropped": idle,
        "note": "% of the samples kept: with --gil (Python frames) the samples of the thread holding the GIL; "
                "with --native every thread's, waiting-for-work stacks left out",
        "threads": [[t, c, pct(c)] for t, c in by_thread.most_common()],
        "thread_ids": tids,
        "top_own": [[f, c, pct(c)] for f, c in own.most_common(top)],
        "top_inclusive": [[f, c, pct(c)] for f, c in incl.most_common(top + 30)],
        "top_own_by_thread": {t: [[f, n, pct(n)] for f, n in cnt.most_common(10)] for t, cnt in own_by_thread.items()},
    }


# =========================================================================== orchestration


def row_for(r: dict) -> list[str]:
    lat = r["latency_ms"]
    f = common.fmt
    verdict = []
    p95 = lat.get("p95")
    if p95 is not None:
        verdict.append("req ok" if p95 < REQUIREMENT_P95_MS and r["sustained"] else "REQ FAIL")
        if r["endpoint"] in READS and r["rate"] >= GOAL_RATE:
            verdict.append("goal ok" if p95 <= GOAL_P95_MS and r["sustained"] else "goal miss")
    else:
        verdict.append("REQ FAIL")
    endpoint = r["endpoint"] + (f" (cost {r['cost']})" if r["endpoint"] == "login" else "")
    return [r["db"], endpoint, f(r["rate"], "g"), f(r["achieved_rate"], ".0f"), str(r["errors"]),
            f(lat.get("p50"), ".1f"), f(lat.get("p95"), ".1f"), f(lat.get("p99"), ".1f"), f(lat.get("max"), ".0f"),
            f(r["server_cpu_pct"], ".0f"), f(r["event_loop_cpu_pct"], ".0f"), f(r.get("db_cpu_pct"), ".0f"), f(r["server_cpu_ms_per_request"], ".2f"),
            f(r["load_cpu_pct"], ".0f"),
            f(r["foreign_cpu_pct"], ".0f"), "yes" if r["sustained"] else "no", ", ".join(verdict)]


HEADERS = ["db", "endpoint", "offered/s", "achieved/s", "errors", "p50 ms", "p95 ms", "p99 ms", "max ms",
           "server CPU %", "loop CPU %", "PG CPU %", "CPU ms/req", "load CPU %", "others CPU %", "sustained", "verdict"]


def print_progress(r: dict) -> None:
    print("  " + " | ".join(row_for(r)), flush=True)
    others = ", ".join(f"{n} {p:.0f}%" for n, p in r["others_cpu_pct"])
    lag = r["dispatch_lag_ms"]
    threads = ", ".join(f"{tid} {pc:.0f}%" for tid, pc in list(r["server_threads_cpu_pct"].items())[:4])
    db = f"PostgreSQL backends {r['db_cpu_pct']:.0f}%; " if r.get("db_cpu_pct") is not None else ""
    print(f"    {db}server threads CPU (tid: % of a core; main = event loop): {threads}; "
          f"generator dispatch lag p99 {common.fmt(lag.get('p99'), '.2f')} ms; other processes: {others or '-'}",
          flush=True)
    if r["error_samples"]:
        print(f"    errors: {r['statuses']} e.g. {r['error_samples'][:2]}", flush=True)


def run_database(db: str, args, procs: common.Procs, results: dict, pg_base: str) -> None:
    run_dir = common.make_run_dir(f"sfapibench-{db}-", args.tmp_dir)
    data_dir = run_dir / "data"
    pg_name = None
    server = None
    try:
        if db == "postgres":
            pg_name, database_url = create_pg_database(pg_base)
            print(f"[{db}] created PostgreSQL database {pg_name}", flush=True)
        else:
            database_url = ""
        costs = sorted({4, *args.login_costs})
        seed = asyncio.run(_seed(database_url, data_dir, args.users, costs))
        print(f"[{db}] seeded {seed['users']} users ({args.users} per bcrypt cost {costs}) in {seed['seconds']:.1f} s; "
              f"one bcrypt hash took " + ", ".join(f"{v:.3f} s at cost {c}" for c, v in seed["bcrypt_hash_seconds"].items()),
              flush=True)
        extra = ["--bcrypt-rounds", str(args.server_bcrypt_rounds), "--api-rate-limit", "100000000",
                 "--login-attempts", "100000000", "--log-level", "warning"]
        if database_url:
            extra += ["--database-url", database_url]
        server = common.start_sfstream(procs, run_dir, {}, python=args.python, extra_args=extra,
                                       cpu_list="1" if args.pin else None)
        print(f"[{db}] server pid {server.pid} on 127.0.0.1:{server.http_port}", flush=True)
        tokens, checks = asyncio.run(_api_checks_and_tokens(server.http_port, args.users))
        print(f"[{db}] API checks passed; {len(tokens)} access tokens from {len(tokens)} logins "
              f"in {checks['token_logins_seconds']:.1f} s", flush=True)
        results["setup"][db] = {"seed": seed, "checks": checks, "server_args": extra,
                                "database": pg_name or "SQLite file in a tmpfs run dir"}

        plan: list[tuple[str, int, float]] = []
        if args.floor and not results.get("floor_done"):
            plan.append(("healthz", 0, max(args.rates)))
            results["floor_done"] = True
        for ep in args.endpoints:
            if ep == "login":
                for cost in args.login_costs:
                    rates = args.slow_login_rates if cost >= args.slow_cost else args.rates
                    plan += [("login", cost, r) for r in rates]
            else:
                plan += [(ep, 0, r) for r in args.rates]
        # --repeat: the fixed-rate runs again (not the slow-login ladder), in a second pass
        plan = plan + [x for x in plan if not (x[0] == "login" and x[1] >= args.slow_cost) and x[0] != "healthz"] \
            * (args.repeat - 1)
        failed_in_a_row: dict[int, int] = collections.defaultdict(int)
        for ep, cost, rate in plan:
            if ep == "login" and cost >= args.slow_cost and failed_in_a_row[cost] >= 2:
                continue  # two rates in a row not sustained: the ladder has found its top
            requests, expect, ok_status = build_requests(ep, args.users, cost, tokens)
            waited = wait_idle(server)
            quiet = wait_for_quiet(args, server, pg_name)
            tag = f"{ep}{cost or ''}-{rate:g}-{len(results['runs'])}"
            r = run_load(args, procs, server, run_dir, tag, requests, expect, ok_status, rate, pg_name=pg_name)
            r.update({"db": db, "endpoint": ep, "cost": cost or None, "rate": rate, "idle_wait_s": waited, **quiet})
            results["runs"].append(r)
            print_progress(r)
            if ep == "login" and cost >= args.slow_cost:
                failed_in_a_row[cost] = 0 if r["sustained"] else failed_in_a_row[cost] + 1
            if not server.meter.alive():
                raise RuntimeError("the server died: " + "\n".join(server.log_tail()))

        for t_db, t_ep, t_rate in (args.profile_targets if args.profile else []):
            if t_db != db:
                continue
            wait_idle(server)
            requests, expect, ok_status = build_requests(t_ep, args.users, 4, tokens)
            base = common.RESULTS_DIR / f"api-profile-{t_ep}-{db}-{t_rate:g}-{results['stamp']}"
            print(f"[{db}] profiling {t_ep} at {t_rate:g} req/s with py-spy ...", flush=True)
            quiet = wait_for_quiet(args, server, pg_name)
            r = run_load(args, procs, server, run_dir, f"profile-{t_ep}", requests, expect, ok_status, t_rate,
                         duration=args.profile_seconds, profile_base=base, pg_name=pg_name)
            r.update(quiet)
            r.update({"db": db, "endpoint": t_ep, "cost": 4 if t_ep == "login" else None, "rate": t_rate,
                      "profiled": True})
            results["profile_runs"].append(r)
            print_progress(r)

        count, lines = server.log_problems(until=server.log_sizes())
        results["setup"][db]["server_log_problems"] = {"count": count, "first": lines[:10]}
        if count:
            print(f"[{db}] server logged {count} warnings/errors, e.g. {lines[:3]}", flush=True)
    finally:
        if server is not None:
            procs.stop(server.managed)
        if pg_name:
            drop_pg_database(pg_base, pg_name)
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            print(f"[{db}] kept {run_dir}")


def print_profile(p: dict | None) -> None:
    if not p:
        return
    if "error" in p:
        print(f"  py-spy failed: {p['error']}")
        return
    print(f"  py-spy ({Path(p['raw']).name}): {p['samples']} busy samples; by thread: "
          + ", ".join(f"{t} {pc:.0f}%" for t, _, pc in p["threads"]))
    print("  top functions by own time (% of busy samples):")
    for f, _, pc in p["top_own"][:15]:
        print(f"    {pc:5.1f}%  {f}")
    print("  top functions by inclusive time (below 90 %: the entry points every stack shares are left out):")
    for f, _, pc in [x for x in p["top_inclusive"] if x[2] < 90][:20]:
        print(f"    {pc:5.1f}%  {f}")
    for t, top in p["top_own_by_thread"].items():
        print(f"  own time in the {t}: " + "; ".join(f"{f} {pc:.1f}%" for f, _, pc in top[:6]))
    print(f"  raw stacks: {p['raw']}")
    if p.get("native"):
        print("  --- with native frames (py-spy --native, pausing the server at each sample):")
        print_profile(p["native"])


def summarize(results: dict) -> str:
    rows = [row_for(r) for r in results["runs"]]
    out = [common.render_table(HEADERS, rows, markdown=True)] if rows else []
    lines = []
    for cost in sorted({r["cost"] for r in results["runs"] if r["endpoint"] == "login"}):
        for db in sorted({r["db"] for r in results["runs"]}):
            runs = [r for r in results["runs"] if r["endpoint"] == "login" and r["cost"] == cost and r["db"] == db]
            if not runs:
                continue
            ok = [r["rate"] for r in runs if r["sustained"]]
            cpu = [r["server_cpu_ms_per_request"] for r in runs if r["server_cpu_ms_per_request"]]
            cpu_ms = common.median(cpu)
            bound = (1000 * (os.cpu_count() or 1) / cpu_ms) if cpu_ms else None
            lines.append(f"login cost {cost} on {db}: highest sustained rate tried {max(ok) if ok else 'none'} req/s; "
                         f"server CPU per login {common.fmt(cpu_ms, '.1f')} ms -> at most "
                         f"{common.fmt(bound, '.0f')} logins/s with all {os.cpu_count()} cores on bcrypt")
    groups: dict[tuple, list[dict]] = collections.defaultdict(list)
    for r in results["runs"]:
        if r["endpoint"] in READS or (r["endpoint"] == "login" and r["rate"] in results["settings"]["rates"]):
            groups[(r["db"], r["endpoint"], r["cost"], r["rate"])].append(r)
    for (db, ep, cost, rate), runs in groups.items():
        p95s = [r["latency_ms"].get("p95") for r in runs]
        met = all(p is not None and p < REQUIREMENT_P95_MS and r["sustained"] for p, r in zip(p95s, runs))
        goal = ""
        if ep in READS and rate >= GOAL_RATE:
            goal = "; goal p95 <= 10 ms " + ("met" if all(p is not None and p <= GOAL_P95_MS for p in p95s) else "MISSED")
        lines.append(f"{db} {ep}{f' (cost {cost})' if cost else ''} at {rate:g}/s: p95 "
                     + " / ".join(common.fmt(p, ".1f") for p in p95s) + " ms; requirement p95 < 200 ms "
                     + ("met" if met else "NOT met") + goal)
    if lines:
        out.append("\n".join(lines))
    return "\n\n".join(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--databases", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    p.add_argument("--endpoints", default="profile,public,login", help="comma-separated: profile, public, login")
    p.add_argument("--rates", default="200,500,1000", help="offered request rates (req/s)")
    p.add_argument("--login-costs", default="4,12", help="bcrypt costs of the users who log in")
    p.add_argument("--slow-cost", type=int, default=10, help="login costs from this one up use --slow-login-rates")
    p.add_argument("--slow-login-rates", default="1,2,4,6,8,10,12",
                   help="rates for slow logins; the ladder stops after two rates in a row are not sustained")
    p.add_argument("--users", type=int, default=1000, help="users seeded per bcrypt cost")
    p.add_argument("--repeat", type=int, default=1, help="do the fixed-rate runs this many times (noisy machines)")
    p.add_argument("--connections", type=int, default=64, help="keep-alive connections of the load process")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds at the rate before the window")
    p.add_argument("--duration", type=float, default=12.0, help="measured window per run, seconds")
    p.add_argument("--timeout", type=float, default=5.0, help="a request unanswered this long after its scheduled time is an error")
    p.add_argument("--server-bcrypt-rounds", type=int, default=12,
                   help="the server's --bcrypt-rounds (new hashes only: the one registration check)")
    p.add_argument("--no-floor", dest="floor", action="store_false",
                   help="skip the GET /healthz run at the highest rate (the HTTP stack without the API)")
    p.add_argument("--profile", action="store_true", help="more runs, recorded with py-spy (see --profile-targets)")
    p.add_argument("--profile-targets", default="sqlite:profile:1000,postgres:profile:1000,sqlite:login:400",
                   help="with --profile: DB:ENDPOINT:RATE runs to record (login: the cost-4 users)")
    p.add_argument("--profile-seconds", type=float, default=20.0)
    p.add_argument("--profile-native", action="store_true", help="py-spy --native: C frames too (uvloop, sqlite3, the GIL)")
    p.add_argument("--quiet-pct", type=float, default=30.0,
                   help="before each run, wait while other processes use more CPU than this (%% of one core)")
    p.add_argument("--quiet-wait", type=float, default=60.0, help="... for at most this many seconds per run")
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432",
                   help="PostgreSQL server (no database): a throwaway database is created there and dropped")
    p.add_argument("--python", default=sys.executable, help="interpreter for the server and the load process")
    p.add_argument("--pin", action="store_true", help="taskset: server on CPU 1, load process on CPU 0")
    p.add_argument("--tmp-dir", help="where scratch directories go (default /dev/shm, else the system temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directories (server logs, SQLite file)")
    p.add_argument("--json", type=Path, help="write results here (default benchmarks/results/api-<timestamp>.json)")
    args = p.parse_args(argv)
    if args.worker:
        return args
    args.databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    args.endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    args.rates = [float(x) for x in args.rates.split(",")]
    args.slow_login_rates = [float(x) for x in args.slow_login_rates.split(",")]
    args.login_costs = [int(x) for x in args.login_costs.split(",")]
    args.profile_targets = [(t.split(":")[0], t.split(":")[1], float(t.split(":")[2]))
                            for t in args.profile_targets.split(",") if t.strip()]
    for d in args.databases:
        if d not in ("sqlite", "postgres"):
            p.error(f"unknown database {d}")
    for e in args.endpoints:
        if e not in ENDPOINTS:
            p.error(f"unknown endpoint {e}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args.spec, args.out)
    common.install_signal_handlers()
    procs = common.Procs()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = {
        "benchmark": "api", "stamp": stamp, "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": common.machine_info(), "source_digest": common.source_digest(),
        "loadavg_at_start": os.getloadavg(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "setup": {}, "runs": [], "profile_runs": [],
    }
    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = args.json or common.RESULTS_DIR / f"api-{stamp}.json"
    print(f"API benchmark, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
          f"open-loop load at fixed rates, {args.connections} connections, "
          f"{args.warmup:g} s warm-up + {args.duration:g} s measured per run", flush=True)
    print("  columns: " + " | ".join(HEADERS), flush=True)
    interrupted = False
    try:
        for db in args.databases:
            run_database(db, args, procs, results, args.pg_url)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: stopping, keeping partial results", file=sys.stderr)
    finally:
        procs.stop_all()
        results.pop("floor_done", None)
        results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
        results["interrupted"] = interrupted
        out.write_text(json.dumps(results, indent=1, default=str))
    print()
    print(summarize(results))
    for r in results["profile_runs"]:
        if r.get("profile"):
            halves = r.get("latency_ms_halves") or [{}, {}]
            print(f"\n=== py-spy: {r['db']} {r['endpoint']} at {r['rate']:g} req/s; latency p50/p95 ms with the "
                  f"non-pausing Python profiler {common.fmt(halves[0].get('p50'))}/{common.fmt(halves[0].get('p95'))}, "
                  f"with the pausing native one {common.fmt(halves[1].get('p50'))}/{common.fmt(halves[1].get('p95'))}")
            print_profile(r["profile"])
    print(f"\nresults: {out}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
