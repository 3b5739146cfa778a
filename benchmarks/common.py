"""Shared helpers for the benchmarks in this directory (run by hand, never by CI).

- `Procs`: every process a benchmark starts, stopped in order on exit, on
  Ctrl-C and on SIGTERM; children also get PR_SET_PDEATHSIG so that even a
  `kill -9` of the benchmark leaves no orphans behind.
- `SfstreamServer`, `NginxRtmpServer`: start a server, wait until it listens,
  and measure the CPU seconds and memory of its process tree.
- `check_tools`: ffmpeg / nginx / libnginx-mod-rtmp present, or say how to get them.
- `ensure_test_flv`: a pre-encoded test stream, cached in benchmarks/results/.
- small formatting and statistics helpers.
"""
from __future__ import annotations

import asyncio
import ctypes
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"  # git-ignored
NGINX_RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")
APT_PACKAGES = ("ffmpeg", "nginx", "libnginx-mod-rtmp")
MiB = 1024 * 1024


# --------------------------------------------------------------------------- tools


def missing_tools(need_nginx: bool) -> list[str]:
    missing = []
    if shutil.which("ffmpeg") is None:
        missing.append("ffmpeg")
    if need_nginx:
        if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
            missing.append("nginx")
        if not NGINX_RTMP_MODULE.exists():
            missing.append("libnginx-mod-rtmp")
    return missing


def check_tools(need_nginx: bool, install: bool) -> None:
    """Exit with instructions if a tool is missing; with `install`, apt-get it first."""
    missing = missing_tools(need_nginx)
    if missing and install:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        print(f"installing {' '.join(APT_PACKAGES)} with apt-get ...", flush=True)
        subprocess.run(sudo + ["apt-get", "update"], check=False)
        subprocess.run(sudo + ["apt-get", "install", "-y", *APT_PACKAGES], check=False)
        missing = missing_tools(need_nginx)
    if missing:
        sys.exit(
            f"missing: {', '.join(missing)}\n"
            f"install with:  apt-get install {' '.join(APT_PACKAGES)}\n"
            "(or run this benchmark with --install to let it do that)"
        )


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


def machine_info() -> dict:
    cpu_model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    git_rev = tool_version(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO_DIR), "status", "--porcelain"], capture_output=True, text=True)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_mib": round(psutil.virtual_memory().total / MiB),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "git": git_rev + ("+dirty" if dirty.stdout.strip() else ""),
        "nginx": tool_version([nginx_binary(), "-v"]),
        "ffmpeg": tool_version(["ffmpeg", "-version"]),
    }


def source_digest(package: str = "sfstream") -> str:
    """Short hash of the package's .py files: other people edit the tree while benchmarks run."""
    h = hashlib.sha1()
    for path in sorted((REPO_DIR / package).rglob("*.py")):
        h.update(str(path.relative_to(REPO_DIR)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:10]


# --------------------------------------------------------------------------- processes

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the benchmark process dies, however it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:  # not Linux: the atexit/signal cleanup still runs
        pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s") from None
            time.sleep(0.05)


@dataclass
class Managed:
    name: str
    popen: subprocess.Popen
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 10.0


class Procs:
    """Every process started by a benchmark; `stop_all()` ends them newest first.

    Children run in their own session, so a Ctrl-C in the terminal reaches only
    the benchmark, which then stops them in order (load first, server last).
    """

    def __init__(self) -> None:
        self.items: list[Managed] = []
        self._stopping = False

    def start(self, name: str, cmd: list[str], *, stop_signal=signal.SIGTERM, stop_timeout=10.0, **kw) -> Managed:
        kw.setdefault("stdin", subprocess.DEVNULL)
        popen = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent, **kw)
        m = Managed(name, popen, stop_signal, stop_timeout)
        self.items.append(m)
        return m

    def stop(self, m: Managed, sig: int | None = None, timeout: float | None = None) -> int | None:
        """Signal one process, wait, then SIGKILL it and anything it left behind."""
        p = m.popen
        try:
            tree = [psutil.Process(p.pid)] + psutil.Process(p.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        if p.poll() is None:
            try:
                p.send_signal(m.stop_signal if sig is None else sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(m.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                print(f"  {m.name} (pid {p.pid}) did not stop in time: SIGKILL", file=sys.stderr)
        for proc in tree:  # nginx workers, anything else still there
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    proc.kill()
            except psutil.Error:
                pass
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if m in self.items:
            self.items.remove(m)
        return p.returncode

    def stop_all(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        try:
            for m in reversed(list(self.items)):
                self.stop(m)
        finally:
            self._stopping = False


def install_signal_handlers() -> None:
    """SIGINT, SIGTERM and SIGHUP all raise KeyboardInterrupt, so cleanup runs and partial results are kept.

    SIGINT is set explicitly: a shell starting us in the background (`... &`)
    leaves it ignored, and then Python would not raise KeyboardInterrupt.
    """

    def handler(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


# --------------------------------------------------------------------------- process-tree measurement


class TreeMeter:
    """CPU seconds and memory of a process and its descendants (nginx master + workers)."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self._procs: dict[int, psutil.Process] = {}

    def processes(self) -> list[psutil.Process]:
        try:
            found = [self.root] + self.root.children(recursive=True)
        except psutil.Error:
            found = []
        for p in found:
            self._procs.setdefault(p.pid, p)  # keep the same object: psutil caches per object
        return found

    def cpu_seconds(self) -> dict[int, float]:
        out = {}
        for p in self.processes():
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return out

    def rss(self) -> int:
        total = 0
        for p in self.processes():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def pss(self) -> int:
        """Proportional set size: pages shared by master and worker are counted once."""
        total = 0
        for p in self.processes():
            try:
                total += p.memory_full_info().pss
            except (psutil.Error, AttributeError):
                return 0
        return total

    def alive(self) -> bool:
        try:
            return self.root.is_running() and self.root.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two `cpu_seconds()` snapshots; a process new since `before` counts whole."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


# --------------------------------------------------------------------------- servers


@dataclass
class ServerHandle:
    kind: str
    managed: Managed
    rtmp_port: int
    http_port: int
    run_dir: Path
    log_files: list[Path] = field(default_factory=list)
    meter: TreeMeter | None = None

    @property
    def pid(self) -> int:
        return self.managed.popen.pid

    def rtmp_url(self, key: str) -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/live/{key}"

    def log_tail(self, lines: int = 30) -> list[str]:
        out = []
        for path in self.log_files:
            try:
                text = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            out += [f"{path.name}: {line}" for line in text[-lines:]]
        return out

    def log_sizes(self) -> dict[str, int]:
        return {str(p): (p.stat().st_size if p.exists() else 0) for p in self.log_files}

    def log_problems(self, limit: int = 40, until: dict[str, int] | None = None) -> tuple[int, list[str]]:
        """Count and first lines of errors/warnings/tracebacks in the server's logs.

        `until` (from `log_sizes()`) limits this to what was logged up to then,
        e.g. leaving out the "closed: server shutting down" lines of the shutdown.
        """
        count, first = 0, []
        for path in self.log_files:
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if until is not None:
                data = data[: until.get(str(path), len(data))]
            text = data.decode(errors="replace").splitlines()
            for line in text:
                if "failed (2: No such file or directory)" in line:
                    continue  # nginx: a playlist polled before its stream started (HTTP 404)
                if any(w in line for w in ("ERROR", "CRITICAL", "Traceback", "[error]", "[crit]", "[alert]", "[emerg]", "WARNING", "[warn]")):
                    count += 1
                    if len(first) < limit:
                        first.append(f"{path.name}: {line[:300]}")
        return count, first


def start_sfstream(procs: Procs, run_dir: Path, keys: dict[str, str], *, python: str = sys.executable,
                   extra_args: list[str] | None = None, env: dict[str, str] | None = None,
                   timeout: float = 30.0, cpu_list: str | None = None) -> ServerHandle:
    """`python -m sfstream serve` on 127.0.0.1 with free ports; `keys` maps NAME -> KEY."""
    data = run_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    out_path, err_path = run_dir / "sfstream.stdout", run_dir / "sfstream.stderr"
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["SFSTREAM_STREAM_KEYS"] = ",".join(f"{name}={key}" for name, key in keys.items())
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [python, "-m", "sfstream", "serve", "--host", "127.0.0.1", "--rtmp-port", "0", "--http-port", "0",
           "--data-dir", str(data), *(extra_args or [])]
    if cpu_list:
        cmd = ["taskset", "-c", cpu_list] + cmd
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        m = procs.start("sfstream", cmd, stdout=out, stderr=err, env=full_env, cwd=str(REPO_DIR))
    deadline = time.monotonic() + timeout
    while True:
        text = out_path.read_text(errors="replace") if out_path.exists() else ""
        for line in text.splitlines():
            if line.startswith("sfstream listening:"):
                # sfstream listening: RTMP 127.0.0.1:P, HTTP 127.0.0.1:H
                rtmp = int(line.split("RTMP", 1)[1].split(",")[0].rsplit(":", 1)[1])
                http = int(line.split("HTTP", 1)[1].strip().rsplit(":", 1)[1])
                h = ServerHandle("sfstream", m, rtmp, http, run_dir, [err_path, out_path])
                h.meter = TreeMeter(m.popen.pid)
                return h
        if m.popen.poll() is not None:
            raise RuntimeError(f"sfstream exited ({m.popen.returncode}):\n" + err_path.read_text(errors="replace")[-3000:])
        if time.monotonic() > deadline:
            raise TimeoutError("sfstream did not print its 'listening' line in time")
        time.sleep(0.05)


NGINX_CONF = """\
load_module {module};
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log {log_level};
events {{ worker_connections 4096; }}
rtmp {{
    server {{
        listen 127.0.0.1:{rtmp_port};
        chunk_size 4096;
        application live {{
            live on;
            hls on;
            hls_path {hls_dir};
            hls_fragment {fragment};
            hls_nested on;
        }}
    }}
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{
        listen 127.0.0.1:{http_port};
        location /hls {{
            alias {hls_dir};
            types {{ application/vnd.apple.mpegurl m3u8; video/mp2t ts; }}
            add_header Cache-Control no-cache;
        }}
    }}
}}
"""


def start_nginx_rtmp(procs: Procs, run_dir: Path, *, fragment: str = "2s", log_level: str = "warn",
                     hls_dir: Path | None = None, timeout: float = 20.0, cpu_list: str | None = None) -> ServerHandle:
    """nginx + Debian's libnginx-mod-rtmp with HLS on: master + 1 worker, in the foreground.

    The stream name is the key itself: rtmp://HOST/live/KEY -> /hls/KEY/index.m3u8.
    """
    prefix = run_dir / "nginx"
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    hls_dir = hls_dir or (run_dir / "hls")
    hls_dir.mkdir(parents=True, exist_ok=True)
    # Started as root, nginx runs its worker as an unprivileged user (www-data on
    # Debian), which must reach and write the HLS directory.
    os.chmod(run_dir, 0o755)
    os.chmod(hls_dir, 0o777)
    rtmp_port, http_port = free_port(), free_port()
    while http_port == rtmp_port:
        http_port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(module=NGINX_RTMP_MODULE, prefix=prefix, log_level=log_level,
                                      rtmp_port=rtmp_port, http_port=http_port, hls_dir=hls_dir, fragment=fragment))
    out_path = prefix / "nginx.stderr"
    cmd = [nginx_binary(), "-c", str(conf), "-p", str(prefix)]
    if cpu_list:
        cmd = ["taskset", "-c", cpu_list] + cmd
    with open(out_path, "wb") as out:
        # SIGQUIT = graceful shutdown (SIGHUP would not reload the rtmp block anyway)
        m = procs.start("nginx", cmd, stdout=out, stderr=subprocess.STDOUT, stop_signal=signal.SIGQUIT, stop_timeout=10)
    try:
        wait_for_port("127.0.0.1", rtmp_port, timeout, m.popen)
        wait_for_port("127.0.0.1", http_port, timeout, m.popen)
    except Exception as exc:
        text = out_path.read_text(errors="replace") + (prefix / "error.log").read_text(errors="replace") \
            if (prefix / "error.log").exists() else out_path.read_text(errors="replace")
        raise RuntimeError(f"nginx did not start: {exc}\n{text[-3000:]}") from None
    h = ServerHandle("nginx", m, rtmp_port, http_port, run_dir, [prefix / "error.log", out_path])
    h.meter = TreeMeter(m.popen.pid)
    # wait for the worker to exist, so the CPU baseline includes it
    deadline = time.monotonic() + 5
    while len(h.meter.processes()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return h


# --------------------------------------------------------------------------- test media


def ensure_test_flv(seconds: int = 24, bitrate: str = "3M", size: str = "1280x720", fps: int = 30,
                    gop_seconds: int = 2) -> Path:
    """A pre-encoded H.264 + AAC FLV, cached in benchmarks/results/ (encoded once).

    testsrc2 + a sine tone, x264 veryfast, constant GOP (no scene cuts), so
    segments are exactly `gop_seconds` long. `seconds` should be a multiple of
    the GOP, so that looping the file keeps the keyframe cadence.
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    params = dict(seconds=seconds, bitrate=bitrate, size=size, fps=fps, gop=gop_seconds, v=1)
    tag = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    path = RESULTS_DIR / f"testsrc-{size}-{fps}fps-{bitrate}-{seconds}s-{tag}.flv"
    if path.exists() and path.stat().st_size > 0:
        return path
    gop = fps * gop_seconds
    bufsize = f"{2 * float(bitrate[:-1]):g}{bitrate[-1]}" if bitrate[-1:] in "kKM" else str(2 * int(bitrate))
    tmp = path.with_suffix(".tmp.flv")
    cmd = [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
        "-t", str(seconds),
        "-c:v", "libx264", "-preset", "veryfast", "-b:v", bitrate, "-maxrate", bitrate,
        "-bufsize", bufsize,
        "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "128k", "-ac", "2",
        "-f", "flv", str(tmp),
    ]
    print(f"encoding the test stream once: {path.name} ...", flush=True)
    subprocess.run(cmd, check=True)
    tmp.rename(path)
    return path


# --------------------------------------------------------------------------- stats and formatting


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def percentile(values, q: float):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def fmt(value, spec: str = ".1f", none: str = "-") -> str:
    if value is None:
        return none
    return format(value, spec)


def render_table(headers: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    if markdown:
        lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
                 "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    else:
        lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths)),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def make_run_dir(prefix: str, base: str | None = None) -> Path:
    """A scratch directory for one run; on tmpfs (/dev/shm) when there is one, like a tuned HLS origin."""
    if base is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


# ---- shared by viewers.py and ws_viewers.py

def run_uvloop(coro):
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def pinned(cmd: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] + cmd if cpus and shutil.which("taskset") else cmd


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def profile_table(summary: dict, n: int = 15, markdown: bool = False) -> str:
    rows = [[f"{pct:.1f}", f"{cnt}", f[:110]] for f, cnt, pct in summary["own"][:n]]
    return render_table(["own %", "samples", "function (file)"], rows, markdown)
