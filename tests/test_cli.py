"""`sfstream serve` as a user runs it: a real process, real signals."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import stat
import sys

import aiohttp
import pytest

from sfstream.rtmp.client import Publisher, read_flv

from .conftest import KEY, NAME

pytestmark = pytest.mark.e2e
LISTENING = re.compile(rb"sfstream listening: RTMP 127\.0\.0\.1:(\d+), HTTP 127\.0\.0\.1:(\d+)")


async def start_cli(tmp_path, *args: str, env: dict | None = None):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sfstream", "serve", "--host", "127.0.0.1", "--rtmp-port", "0",
        "--http-port", "0", "--data-dir", str(tmp_path / "data"), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    first = await asyncio.wait_for(proc.stdout.readline(), 30)
    m = LISTENING.match(first)
    assert m, first + await proc.stderr.read()
    return proc, int(m.group(1)), int(m.group(2)), first


async def test_sigterm_with_live_publisher_ends_stream_and_exits_0(tmp_path, test_flv):
    proc, rtmp_port, http_port, _ = await start_cli(tmp_path, "--stream-key", f"{NAME}={KEY}")
    pub = Publisher(f"rtmp://127.0.0.1:{rtmp_port}/live/{KEY}")
    await pub.connect()
    playing = asyncio.ensure_future(pub.play(read_flv(test_flv.read_bytes()), realtime=True, loops=20))
    async with aiohttp.ClientSession() as http:
        # Answered once the first segment exists: the stream is live and packaged.
        async with http.get(f"http://127.0.0.1:{http_port}/hls/{NAME}/index.m3u8") as resp:
            assert resp.status == 200
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    # The publisher was disconnected by the shutdown.
    with pytest.raises((ConnectionError, OSError)):
        await asyncio.wait_for(playing, 30)
    assert KEY.encode() not in out + err
    assert b"stopped publishing 'good': server shutting down" in err


async def test_sigint_exits_0_and_env_configures(tmp_path):
    proc, _, _, first = await start_cli(tmp_path, env={"SFSTREAM_STREAM_KEYS": "a=aaaaaaaa1,b=bbbbbbbb2"})
    rest = await asyncio.wait_for(proc.stdout.readline(), 10) + await asyncio.wait_for(proc.stdout.readline(), 10)
    rest += await asyncio.wait_for(proc.stdout.readline(), 10)
    assert b"/hls/a/index.m3u8" in rest and b"/hls/b/index.m3u8" in rest
    proc.send_signal(signal.SIGINT)
    await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0


async def test_default_stream_key_is_generated_once_and_kept_secret(tmp_path):
    keys = []
    for _ in range(2):
        proc, _, _, _ = await start_cli(tmp_path)
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0
        key_file = tmp_path / "data" / "stream-key"
        assert f"stream key: in {key_file}".encode() in out
        assert b"/hls/live/index.m3u8" in out
        key = key_file.read_text().strip()
        assert len(key) >= 24 and key.encode() not in out + err
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        keys.append(key)
    assert keys[0] == keys[1]  # kept across restarts


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rtmp-port", "70000"], b"rtmp_port: must be between 0 and 65535"),
        (["--hls-window", "x"], b"hls_window: --hls-window expects a int"),
        (["--stream-key", "no-equals-sign"], b"stream_key: expected NAME=KEY"),
        (["--stream-key", "ok=short"], b"the key for 'ok' must be 8-256 characters"),
        (["--production", "true"], b"production mode needs SFSTREAM_SECRET_KEY"),
        (["--production", "true", "--secret-key", "short"], b"secret_key: use at least 32"),
    ],
)
async def test_bad_configuration_is_a_clear_error(tmp_path, args, message):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sfstream", "serve", "--data-dir", str(tmp_path), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert message in err
    assert b"short" not in err  # an invalid key is still not echoed


async def test_migrate_command_is_idempotent(tmp_path, database_url, store_backend):
    for _ in range(2):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sfstream", "migrate", "--data-dir", str(tmp_path), "--database-url", database_url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert b"database is up to date" in out
    if store_backend == "sqlite" and not database_url:
        assert (tmp_path / "sfstream.db").exists()
