"""Shared fixtures: a real server on real sockets, and real generated media."""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from sfstream.app import Server
from sfstream.config import Settings, parse_stream_keys
from sfstream.hls.live import Rendition
from sfstream.hls.routes import HLS_OUTPUT

# Database fixtures (store, database_url, ...) for both SQLite and PostgreSQL.
pytest_plugins = ["tests.db", "tests.apiclient"]

KEY = "goodkey-0123456789"
NAME = "good"


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed; the test command (scripts/test.sh) installs it")
    return path


@pytest.fixture(scope="session")
def test_flv(tmp_path_factory) -> Path:
    """4 s of H.264 640x360 30 fps (1 s GOP) + AAC 48 kHz, generated, never downloaded."""
    path = tmp_path_factory.mktemp("media") / "pattern.flv"
    subprocess.run(
        [
            require("ffmpeg"), "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "4",
            "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-g", "30", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-b:a", "96k", "-f", "flv", str(path),
        ],
        check=True,
    )
    return path


def make_settings(tmp_path: Path, **overrides) -> Settings:
    values = dict(
        host="127.0.0.1",
        rtmp_port=0,
        http_port=0,
        data_dir=tmp_path / "data",
        stream_keys=parse_stream_keys([f"{NAME}={KEY}", "other=otherkey-0123456789"]),
        hls_segment_duration=1.0,
        # Source only unless a test is about the ladder: decoding and encoding every test
        # stream would only slow the suite (tests/test_transcode.py turns it on).
        ladder="none",
        thumbnail_interval=0.0,
    )
    values.update(overrides)
    return Settings(**values)


class RunningServer:
    def __init__(self, server: Server) -> None:
        self.server = server

    @property
    def rtmp_url(self) -> str:
        return f"rtmp://127.0.0.1:{self.server.rtmp_port}/live"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    def rendition(self, name: str, rendition: str = "source") -> Rendition | None:
        stream = self.server.app[HLS_OUTPUT].get(name)
        return stream.renditions[rendition] if stream else None

    async def wait_for_stream(self, name: str, timeout: float = 15.0) -> Rendition:
        """Wait for the HLS side of `name` to exist (the publish was accepted)."""
        stream = await self.server.app[HLS_OUTPUT].wait_for_stream(name, timeout)
        assert stream is not None, f"stream {name} never started"
        return stream.renditions["source"]

    async def wait_for_segments(self, name: str, count: int, timeout: float = 30.0) -> Rendition:
        r = await self.wait_for_stream(name)
        start = r.segmenter.next_msn
        ok = await r.wait_until(lambda: r.segmenter.next_msn - start >= count, timeout)
        assert ok, f"stream {name}: fewer than {count} new segments within {timeout} s"
        return r


@pytest.fixture
async def server(tmp_path):
    srv = Server(make_settings(tmp_path))
    await srv.start()
    yield RunningServer(srv)
    await srv.stop()


@pytest.fixture
async def make_server(tmp_path):
    """Start a server with custom settings; stopped at the end of the test."""
    started = []

    async def start(**overrides) -> RunningServer:
        srv = Server(make_settings(tmp_path, **overrides))
        await srv.start()
        started.append(srv)
        return RunningServer(srv)

    yield start
    for srv in started:
        await srv.stop()


async def run(*cmd: str, timeout: float = 60.0) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out, err


async def ffprobe(url: str) -> dict:
    code, out, err = await run(
        require("ffprobe"), "-v", "error", "-show_streams", "-show_format", "-count_frames", "-of", "json", url
    )
    assert code == 0, err.decode(errors="replace")
    return json.loads(out)


def streams_by_type(probe: dict) -> dict[str, dict]:
    return {s["codec_type"]: s for s in probe["streams"]}
