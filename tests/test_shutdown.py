"""Graceful shutdown and crash recovery of a real `sfstream serve` process."""
from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from sfstream.rtmp.client import Publisher, read_flv

from .test_cli import start_cli

pytestmark = pytest.mark.e2e
PASSWORD = "correct horse battery"


async def register_and_key(http, base: str, username: str) -> tuple[str, dict]:
    async with http.post(f"{base}/api/auth/register", json={"username": username, "email": f"{username}@example.org",
                                                             "password": PASSWORD}) as resp:
        assert resp.status == 201
        token = (await resp.json())["access_token"]
    async with http.get(f"{base}/api/stream/key", headers={"Authorization": f"Bearer {token}"}) as resp:
        return token, await resp.json()


async def test_sigterm_ends_streams_closes_websockets_going_away_and_exits_0(tmp_path, test_flv):
    proc, _, http_port, _ = await start_cli(tmp_path, env={"SFSTREAM_BCRYPT_ROUNDS": "4"})
    base = f"http://127.0.0.1:{http_port}"
    async with aiohttp.ClientSession() as http:
        token, key = await register_and_key(http, base, "alice")
        pub = Publisher(f"{key['rtmp_url']}/{key['stream_key']}")
        await pub.connect()
        playing = asyncio.ensure_future(pub.play(read_flv(test_flv.read_bytes()), realtime=True, loops=20))
        async with http.get(f"{base}/hls/alice/index.m3u8") as resp:  # a player: answered once live
            assert resp.status == 200
        async with http.get(f"{base}/api/users/alice/streams") as resp:
            stream_id = (await resp.json())["items"][0]["id"]
        ws = await http.ws_connect(f"{base}/ws/streams/{stream_id}/viewers")
        assert (await ws.receive_json(timeout=10))["type"] == "viewers"
        # a player blocked on the next part while the server stops
        async with http.get(f"{base}/hls/alice/source/media.m3u8") as resp:
            text = await resp.text()
        hint = next(line for line in text.splitlines() if line.startswith("#EXT-X-PRELOAD-HINT"))
        part_uri = hint.split('URI="')[1].split('"')[0]
        waiting = asyncio.ensure_future(http.get(f"{base}/hls/alice/source/{part_uri}"))

        proc.send_signal(signal.SIGTERM)
        messages = []
        while (msg := await ws.receive(timeout=30)).type == aiohttp.WSMsgType.TEXT:
            messages.append(msg.json())
        assert messages[-1]["type"] == "ended"  # the broadcast ended first, then the socket closed
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        with pytest.raises((ConnectionError, OSError)):
            await asyncio.wait_for(playing, 30)  # the publisher was disconnected
        with pytest.raises(Exception):  # the blocked request got an answer or a closed connection, not a hang
            resp = await asyncio.wait_for(waiting, 30)
            assert resp.status in (200, 404, 503)
            resp.release()
            raise ConnectionError("answered")
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert key["stream_key"].encode() not in out + err


async def test_kill_9_then_start_ends_the_broadcast_left_live(tmp_path, test_flv, database_url):
    """On SQLite and PostgreSQL (the database_url fixture runs both)."""
    env = {"SFSTREAM_BCRYPT_ROUNDS": "4", "SFSTREAM_DATABASE_URL": database_url}
    proc, _, http_port, _ = await start_cli(tmp_path, env=env)
    base = f"http://127.0.0.1:{http_port}"
    async with aiohttp.ClientSession() as http:
        _, key = await register_and_key(http, base, "alice")
        pub = Publisher(f"{key['rtmp_url']}/{key['stream_key']}")
        await pub.connect()
        playing = asyncio.ensure_future(pub.play(read_flv(test_flv.read_bytes()), realtime=True, loops=20))
        async with http.get(f"{base}/hls/alice/index.m3u8") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/api/users/alice/streams") as resp:
            stream = (await resp.json())["items"][0]
        assert stream["is_live"]
    proc.kill()  # SIGKILL: nothing is cleaned up
    await proc.wait()
    with pytest.raises((ConnectionError, OSError)):
        await asyncio.wait_for(playing, 30)

    proc, _, http_port, _ = await start_cli(tmp_path, env=env)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{http_port}/api/streams/{stream['id']}") as resp:
                after = await resp.json()
            async with http.get(f"http://127.0.0.1:{http_port}/api/streams") as resp:
                assert (await resp.json())["total"] == 0
        assert not after["is_live"] and after["ended_at"]
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
