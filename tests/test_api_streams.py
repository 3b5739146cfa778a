"""Stream keys, streams, viewers and statistics wired to real ingest: ffmpeg publishes to our RTMP
listener with a registered user's key; on SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from datetime import datetime, timedelta, timezone
from urllib.parse import urljoin

import aiohttp
import pytest

from sfstream.appkeys import BUS, STORE
from sfstream.app import REGISTRY, RTMP_SERVER
from sfstream.broadcasts import BROADCASTS, HEARTBEATS
from sfstream.hls.routes import HLS_OUTPUT
from sfstream.rtmp.client import Publisher, PublishRefused, read_flv

from .apiclient import API
from .conftest import require, run, streams_by_type
from .test_store import raw_execute

# Viewer sessions expire quickly so a test can watch the count fall; statistics are sampled when
# a test says so (sample_once), never by the clock.
FAST = dict(viewer_timeout=1.0, stats_interval=3600.0, hls_reconnect_grace=0.0)


class FFmpegPublisher:
    """The ffmpeg CLI publishing a generated test pattern in real time until stopped."""

    def __init__(self, url: str, tmp_path) -> None:
        self.url = url
        self.log = tmp_path / f"ffmpeg-{id(self)}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> "FFmpegPublisher":
        self.proc = await asyncio.create_subprocess_exec(
            require("ffmpeg"), "-v", "error", "-re",
            "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "300",
            "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "30", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-f", "flv", self.url,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=self.log.open("wb"),
        )
        return self

    async def exited(self, timeout: float = 15.0) -> int:
        """Wait for ffmpeg to stop by itself (the server closed the connection)."""
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def __aexit__(self, *exc) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def live_broadcast(api: API, name: str):
    """Wait until `name` is publishing and its broadcast record is written; return the Broadcast."""
    app = api.server.app
    assert await app[HLS_OUTPUT].wait_for_stream(name, 30) is not None, f"{name} never went live"
    b = app[BROADCASTS].by_name[name]
    await asyncio.wait_for(b.started.wait(), 10)
    return b


async def login(api: API, username: str) -> tuple[str, dict]:
    body = await api.register(username)
    return body["access_token"], body["user"]


async def stream_key(api: API, token: str) -> tuple[str, str]:
    status, body, resp = await api.call("GET", "/stream/key", token=token)
    assert status == 200, body
    assert resp.headers["Cache-Control"] == "no-store"
    return body["stream_key"], body["rtmp_url"]


async def category_id(api: API, name: str) -> int:
    return (await raw_execute(api.server.app[STORE], "SELECT id FROM categories WHERE name = ?", name))[0][0]


async def next_message(ws: aiohttp.ClientWebSocketResponse, timeout: float = 15.0) -> dict:
    msg = await ws.receive(timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def count_becomes(ws, expected: int, timeout: float = 15.0) -> dict:
    """Read count updates until one says `expected` viewers."""
    while True:
        message = await next_message(ws, timeout)
        assert message["type"] == "viewers", message
        if message["viewers"] == expected:
            return message


async def play_once(http: aiohttp.ClientSession, url: str) -> str:
    """What a player does first: the multivariant playlist, then one media playlist (with its
    viewer session id). Returns the media playlist URL it used."""
    async with http.get(url) as resp:
        assert resp.status == 200
        text = await resp.text()
    child = next(line for line in text.splitlines() if line and not line.startswith("#"))
    media_url = urljoin(url, child)
    async with http.get(media_url) as resp:
        assert resp.status == 200, await resp.text()
    return media_url


@pytest.mark.parametrize("bus", ["memory", "redis"])
async def test_full_flow_key_publish_list_viewers_delete_statistics(api_factory, tmp_path, bus):
    api = await api_factory(bus, **FAST)
    token, user = await login(api, "alice")
    key, rtmp_url = await stream_key(api, token)
    assert key.startswith("live_") and len(key) >= 32
    assert rtmp_url == f"rtmp://127.0.0.1:{api.server.rtmp_port}/live"
    assert (await stream_key(api, token))[0] == key  # the same key until reset
    gaming = await category_id(api, "Gaming")
    status, body, _ = await api.call("PUT", "/stream/settings", token=token,
                                      json={"title": "Speedrun night", "category_id": gaming})
    assert status == 200 and body == {"title": "Speedrun night", "description": "", "category_id": gaming,
                                      "is_private": False}

    async with FFmpegPublisher(f"{rtmp_url}/{key}", tmp_path) as ffmpeg, aiohttp.ClientSession() as http:
        b = await live_broadcast(api, "alice")
        status, page, _ = await api.call("GET", f"/streams?category={gaming}&q=speedrun")
        assert status == 200 and page["total"] == 1, page
        listed = page["items"][0]
        assert listed["id"] == b.stream_id and listed["is_live"] and listed["title"] == "Speedrun night"
        assert listed["user"]["username"] == "alice" and listed["category"] == {"id": gaming, "name": "Gaming"}
        assert listed["hls_url"] == "/hls/alice/index.m3u8"
        status, page, _ = await api.call("GET", f"/categories/{gaming}/streams")
        assert status == 200 and [s["id"] for s in page["items"]] == [b.stream_id]

        # the websocket is a viewer itself: 1; a player joins: 2; it stops and times out: 1
        ws = await http.ws_connect(f"http://127.0.0.1:{api.server.http_port}/ws/streams/{b.stream_id}/viewers")
        first = await next_message(ws)
        assert first == {"type": "viewers", "stream_id": b.stream_id, "viewers": 1}
        media_url = await play_once(http, f"http://127.0.0.1:{api.server.http_port}/hls/alice/index.m3u8")
        assert "vs=" in media_url
        await count_becomes(ws, 2)
        await api.server.app[BROADCASTS].sample_once()  # a statistics sample while two watch
        await count_becomes(ws, 1)  # the player stopped asking: its session expired

        # DELETE ends the broadcast: the publisher is disconnected, the websocket told
        status, _, _ = await api.call("DELETE", f"/streams/{b.stream_id}", token=token)
        assert status == 204
        assert api.server.app[REGISTRY].get("alice") is None  # already gone when DELETE answers
        assert await ffmpeg.exited() != 0
        assert (await next_message(ws))["type"] == "ended"
        assert (await ws.receive(10)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        await ws.close()

    status, stream, _ = await api.call("GET", f"/streams/{b.stream_id}")
    assert status == 200 and not stream["is_live"] and stream["ended_at"] and stream["hls_url"] is None
    assert (await api.call("GET", "/streams"))[1]["total"] == 0
    status, stats, _ = await api.call("GET", f"/streams/{b.stream_id}/statistics")
    assert status == 200, stats
    assert not stats["is_live"] and stats["peak_viewers"] == 2 and stats["unique_viewers"] == 2
    assert [s["viewers"] for s in stats["samples"]] == [2]
    assert stats["watch_seconds"] > 0 and stats["duration_seconds"] > 0 and stats["average_viewers"] > 0
    status, totals, _ = await api.call("GET", "/users/alice/statistics")
    assert status == 200 and totals["broadcasts"] == 1 and totals["peak_viewers"] == 2
    assert totals["unique_viewers"] == 2 and totals["followers_over_time"] == []
    status, page, _ = await api.call("GET", "/users/alice/streams")
    assert status == 200 and [s["id"] for s in page["items"]] == [b.stream_id]


async def test_key_reset_kicks_the_publisher_and_the_old_key_is_refused(api_factory, tmp_path, test_flv, caplog):
    caplog.set_level(logging.DEBUG)
    api = await api_factory(**FAST)
    token, user = await login(api, "alice")
    old_key, rtmp_url = await stream_key(api, token)
    async with FFmpegPublisher(f"{rtmp_url}/{old_key}", tmp_path) as ffmpeg:
        b = await live_broadcast(api, "alice")
        status, body, _ = await api.call("POST", "/stream/key/reset", token=token)
        assert status == 200 and body["stream_key"] != old_key and body["rtmp_url"] == rtmp_url
        # disconnected by the time the reset answers (well within the required 1 s)
        assert api.server.app[REGISTRY].get("alice") is None
        assert await ffmpeg.exited() != 0
    await asyncio.wait_for(b.finished.wait(), 10)
    assert not (await api.call("GET", f"/streams/{b.stream_id}"))[1]["is_live"]

    refused = Publisher(f"{rtmp_url}/{old_key}")
    with pytest.raises(PublishRefused, match="BadName"):
        await refused.connect()
    await refused.close()
    fresh = Publisher(f"{rtmp_url}/{body['stream_key']}")
    await fresh.connect()
    playing = asyncio.ensure_future(fresh.play(read_flv(test_flv.read_bytes()), realtime=True))
    await live_broadcast(api, "alice")
    playing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await playing
    await fresh.close()

    # the keys never reach the database in the clear, nor any log line
    rows = await raw_execute(api.server.app[STORE], "SELECT stream_key_ciphertext, stream_key_hmac FROM channels")
    assert len(rows) == 1
    for key in (old_key, body["stream_key"]):
        assert key.encode() not in bytes(rows[0][0]) and key not in rows[0][1]
        assert key not in caplog.text


async def test_private_stream_needs_a_playback_token(api_factory, tmp_path):
    api = await api_factory(**FAST)
    token, _ = await login(api, "alice")
    other_token, _ = await login(api, "bob")
    key, rtmp_url = await stream_key(api, token)
    status, prepared, _ = await api.call("POST", "/streams", token=token, json={"title": "secret", "is_private": True})
    assert status == 201 and prepared["is_private"] and prepared["started_at"] is None
    base = f"http://127.0.0.1:{api.server.http_port}"
    async with FFmpegPublisher(f"{rtmp_url}/{key}", tmp_path), aiohttp.ClientSession() as http:
        b = await live_broadcast(api, "alice")
        assert b.stream_id == prepared["id"] and b.private
        for path in ("/hls/alice/index.m3u8", "/hls/alice/source/media.m3u8", "/hls/alice/source/init-0-0.mp4"):
            async with http.get(base + path) as resp:
                assert resp.status == 403, path
                assert (await resp.json())["error"]["code"] == "forbidden"
        # not listed, not visible to others; the owner sees it
        assert (await api.call("GET", "/streams"))[1]["total"] == 0
        assert (await api.call("GET", f"/streams/{b.stream_id}"))[0] == 404
        assert (await api.call("GET", f"/streams/{b.stream_id}", token=other_token))[0] == 404
        assert (await api.call("GET", f"/streams/{b.stream_id}", token=token))[0] == 200
        assert (await api.call("POST", f"/streams/{b.stream_id}/playback-token", token=other_token))[0] == 404

        status, grant, _ = await api.call("POST", f"/streams/{b.stream_id}/playback-token", token=token)
        assert status == 200 and grant["hls_url"].endswith(f"/hls/alice/index.m3u8?token={grant['token']}")
        assert (await api.call("GET", f"/streams/{b.stream_id}?token={grant['token']}"))[0] == 200
        async with http.get(f"{base}/hls/alice/index.m3u8?token=not-a-token") as resp:
            assert resp.status == 403
        media_url = await play_once(http, grant["hls_url"])
        assert f"/hls/alice/~{grant['token']}/source/media.m3u8" in media_url
        async with http.get(media_url) as resp:
            assert resp.headers["Cache-Control"].startswith("private") or resp.headers["Cache-Control"] == "no-cache"
        # a real player follows every URI with the token in it (no -count_frames: live has no end)
        code, out, err = await run(require("ffprobe"), "-v", "error", "-show_streams", "-of", "json", grant["hls_url"])
        assert code == 0, err.decode(errors="replace")
        assert streams_by_type(json.loads(out))["video"]["codec_name"] == "h264"

        # made public while live: HLS opens at once
        status, body, _ = await api.call("PUT", f"/streams/{b.stream_id}", token=token, json={"is_private": False})
        assert status == 200 and not body["is_private"]
        async with http.get(base + "/hls/alice/index.m3u8") as resp:
            assert resp.status == 200


async def test_reconnect_within_grace_continues_the_same_broadcast(api_factory, test_flv):
    api = await api_factory(**{**FAST, "hls_reconnect_grace": 30.0})
    token, _ = await login(api, "alice")
    key, rtmp_url = await stream_key(api, token)
    tags = read_flv(test_flv.read_bytes())
    first = Publisher(f"{rtmp_url}/{key}")
    await first.connect()
    await first.play(tags, realtime=False)
    b = await live_broadcast(api, "alice")
    first._w.transport.abort()  # the encoder's connection drops: no FCUnpublish
    hls = api.server.app[HLS_OUTPUT].get("alice")
    assert await hls.renditions["source"].wait_until(lambda: hls.waiting_for_publisher, 10)
    second = Publisher(f"{rtmp_url}/{key}")
    await second.connect()
    await second.play(tags, realtime=False)
    assert api.server.app[BROADCASTS].by_name["alice"] is b  # the same broadcast continues
    await second.close()  # unpublish: now it ends
    await asyncio.wait_for(b.finished.wait(), 10)
    status, page, _ = await api.call("GET", "/users/alice/streams")
    assert page["total"] == 1 and page["items"][0]["id"] == b.stream_id and not page["items"][0]["is_live"]


async def test_stream_api_validation_and_permissions(api_factory, tmp_path):
    api = await api_factory(**FAST)
    token, _ = await login(api, "alice")
    other, _ = await login(api, "bob")
    for body, field in (({"category_id": 999999}, "category_id"), ({"title": "x" * 141}, "title"),
                        ({"is_private": "yes"}, "is_private"), ({"color": "red"}, "color")):
        status, err, _ = await api.call("PUT", "/stream/settings", token=token, json=body)
        assert status == 422 and field in err["error"]["fields"], (body, err)
    for query, field in (("limit=0", "limit"), ("limit=101", "limit"), ("offset=-1", "offset"),
                         ("sort=random", "sort"), ("category=abc", "category"), ("q=" + "x" * 101, "q")):
        status, err, _ = await api.call("GET", f"/streams?{query}")
        assert status == 422 and field in err["error"]["fields"], (query, err)
    assert (await api.call("GET", "/stream/key"))[0] == 401
    assert (await api.call("GET", "/streams/12345"))[0] == 404
    assert (await api.call("GET", "/users/nobody/streams"))[0] == 404
    assert (await api.call("GET", "/categories/999999/streams"))[0] == 404

    status, prepared, _ = await api.call("POST", "/streams", token=token, json={"title": "plan"})
    assert status == 201
    assert (await api.call("PUT", f"/streams/{prepared['id']}", token=other, json={"title": "mine"}))[0] == 403
    assert (await api.call("DELETE", f"/streams/{prepared['id']}", token=other))[0] == 403
    status, body, _ = await api.call("PUT", f"/streams/{prepared['id']}", token=token, json={"title": "better"})
    assert status == 200 and body["title"] == "better"

    key, rtmp_url = await stream_key(api, token)
    async with FFmpegPublisher(f"{rtmp_url}/{key}", tmp_path):
        b = await live_broadcast(api, "alice")
        assert b.stream_id == prepared["id"]
        status, err, _ = await api.call("POST", "/streams", token=token, json={"title": "another"})
        assert status == 409 and err["error"]["code"] == "already_live"
    # a prepared stream that never went live is deleted outright
    status, prepared, _ = await api.call("POST", "/streams", token=other, json={})
    assert (await api.call("DELETE", f"/streams/{prepared['id']}", token=other))[0] == 204
    assert (await api.call("GET", f"/streams/{prepared['id']}"))[0] == 404


async def test_viewer_websocket_limit_and_ended_stream(api_factory, tmp_path):
    api = await api_factory(**{**FAST, "ws_max_connections": 1})
    token, _ = await login(api, "alice")
    key, rtmp_url = await stream_key(api, token)
    base = f"http://127.0.0.1:{api.server.http_port}"
    async with aiohttp.ClientSession() as http:
        async with FFmpegPublisher(f"{rtmp_url}/{key}", tmp_path):
            b = await live_broadcast(api, "alice")
            url = f"{base}/ws/streams/{b.stream_id}/viewers"
            ws = await http.ws_connect(url)
            assert (await next_message(ws))["viewers"] == 1
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url)
            assert refused.value.status == 503
            await ws.close()
            await api.call("DELETE", f"/streams/{b.stream_id}", token=token)
        # an ended stream: one "ended" message, then the server closes
        ws = await http.ws_connect(f"{base}/ws/streams/{b.stream_id}/viewers")
        assert (await next_message(ws)) == {"type": "ended", "stream_id": b.stream_id, "viewers": 0}
        assert (await ws.receive(10)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        await ws.close()
        with pytest.raises(aiohttp.WSServerHandshakeError) as missing:
            await http.ws_connect(f"{base}/ws/streams/999999/viewers")
        assert missing.value.status == 404


@pytest.mark.parametrize("elsewhere", ["key reset", "stream ended"])
async def test_changes_made_by_another_instance_reach_the_publisher(api_factory, test_flv, elsewhere):
    """Another instance shares the database: what it did is seen at this one's next sample."""
    api = await api_factory(**FAST)
    token, user = await login(api, "alice")
    key, rtmp_url = await stream_key(api, token)
    pub = Publisher(f"{rtmp_url}/{key}")
    await pub.connect()
    playing = asyncio.ensure_future(pub.play(read_flv(test_flv.read_bytes()), realtime=True, loops=50))
    b = await live_broadcast(api, "alice")
    store, broadcasts = api.server.app[STORE], api.server.app[BROADCASTS]
    if elsewhere == "key reset":
        new = broadcasts.keys.generate()
        await store.set_channel_key(user["id"], broadcasts.keys.seal(new, user["id"]), broadcasts.keys.lookup_hash(new))
    else:
        await store.end_stream(b.stream_id, datetime.now(timezone.utc), unique_viewers=0, watch_seconds=0.0)
    assert api.server.app[REGISTRY].get("alice") is not None
    await broadcasts.sample_once()
    assert api.server.app[REGISTRY].get("alice") is None
    await asyncio.wait_for(b.finished.wait(), 10)
    playing.cancel()
    with contextlib.suppress(asyncio.CancelledError, ConnectionError):
        await playing
    await pub.close()


async def test_forged_viewer_sessions_do_not_count(api_factory, test_flv):
    api = await api_factory(**FAST)
    token, _ = await login(api, "alice")
    key, rtmp_url = await stream_key(api, token)
    pub = Publisher(f"{rtmp_url}/{key}")
    await pub.connect()
    playing = asyncio.ensure_future(pub.play(read_flv(test_flv.read_bytes()), realtime=True, loops=50))
    b = await live_broadcast(api, "alice")
    base = f"http://127.0.0.1:{api.server.http_port}"
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{base}/ws/streams/{b.stream_id}/viewers")
        assert (await next_message(ws))["viewers"] == 1
        for i in range(20):  # made-up session ids of the right shape
            async with http.get(f"{base}/hls/alice/source/media.m3u8?vs={'x' * 16}{i:012d}") as resp:
                assert resp.status == 200
        media_url = await play_once(http, f"{base}/hls/alice/index.m3u8")  # one real player
        while (message := await next_message(ws))["viewers"] == 1:
            pass
        assert message["viewers"] == 2  # not 22
        # the player's multivariant reload keeps its session
        async with http.get(f"{base}/hls/alice/index.m3u8?vs={media_url.split('vs=')[1]}") as resp:
            assert media_url.split("vs=")[1] in await resp.text()
        await ws.close()
    playing.cancel()
    with contextlib.suppress(asyncio.CancelledError, ConnectionError):
        await playing
    await pub.close()


async def test_per_client_websocket_limit(api_factory, tmp_path):
    api = await api_factory(**{**FAST, "ws_max_per_client": 2})
    token, _ = await login(api, "alice")
    key, rtmp_url = await stream_key(api, token)
    async with FFmpegPublisher(f"{rtmp_url}/{key}", tmp_path), aiohttp.ClientSession() as http:
        b = await live_broadcast(api, "alice")
        url = f"http://127.0.0.1:{api.server.http_port}/ws/streams/{b.stream_id}/viewers"
        sockets = [await http.ws_connect(url) for _ in range(2)]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url)
        assert refused.value.status == 429
        for ws in sockets:
            await ws.close()


async def test_broadcasts_left_live_by_a_crash_are_ended_at_start(api_factory, tmp_path):
    api = await api_factory(**FAST)
    _, user = await login(api, "alice")
    store = api.server.app[STORE]
    crashed = await store.start_stream(user["id"], datetime.now(timezone.utc))  # as if the server died here
    second = await api_factory(**FAST)  # a new start on the same database
    status, body, _ = await second.call("GET", f"/streams/{crashed.id}")
    assert status == 200 and not body["is_live"] and body["ended_at"]


async def test_key_reset_between_authorisation_and_publish_still_kicks(api_factory, test_flv):
    """authorize() accepted the old key, then the reset came before the publisher was registered
    (so the reset found nobody to disconnect): the broadcast start notices and disconnects."""
    api = await api_factory(**FAST)
    token, user = await login(api, "alice")
    key, rtmp_url = await stream_key(api, token)
    broadcasts = api.server.app[BROADCASTS]
    authorize = broadcasts.authorize

    async def reset_right_after(k):
        name = await authorize(k)
        status, _, _ = await api.call("POST", "/stream/key/reset", token=token)
        assert status == 200
        return name

    api.server.app[RTMP_SERVER].authorize = reset_right_after
    pub = Publisher(f"{rtmp_url}/{key}")
    await pub.connect()  # accepted: the key was valid when checked
    b = await live_broadcast(api, "alice")
    await asyncio.wait_for(b.finished.wait(), 10)  # ...and ended by the start's second look
    assert api.server.app[REGISTRY].get("alice") is None
    await pub.close()


async def test_with_redis_only_broadcasts_no_instance_keeps_alive_are_ended(api_factory):
    """Several instances share the database and Redis: a starting instance ends the broadcasts
    whose instance crashed (no heartbeat), not those another instance is publishing."""
    shared = dict(FAST, redis_prefix=f"sfstream-test-{secrets.token_hex(4)}:")
    first = await api_factory("redis", **shared)
    users = [(await first.register(name))["user"] for name in ("crashed", "running", "fresh")]
    store, bus = first.server.app[STORE], first.server.app[BUS]
    long_ago = datetime.now(timezone.utc) - timedelta(minutes=5)
    crashed = await store.start_stream(users[0]["id"], long_ago)
    running = await store.start_stream(users[1]["id"], long_ago)
    fresh = await store.start_stream(users[2]["id"], datetime.now(timezone.utc))  # no heartbeat yet
    await bus.touch(HEARTBEATS, [str(running.id)], 60.0)  # another instance keeps this one alive

    second = await api_factory("redis", **shared)  # a new instance starts
    live = {s["id"] for s in (await second.call("GET", "/streams"))[1]["items"]}
    assert live == {running.id, fresh.id}
    ended = (await second.call("GET", f"/streams/{crashed.id}"))[1]
    assert not ended["is_live"] and ended["ended_at"]
