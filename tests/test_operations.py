"""Operating it: Prometheus metrics moving under a real publish, one request-log line per API
call with no secret in any log line, JSON logs, readiness checks."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from sfstream.appkeys import STORE
from sfstream.hls.routes import HLS_OUTPUT
from sfstream.logs import JSONFormatter
from sfstream.rtmp.client import Publisher, read_flv

from .conftest import KEY, NAME


async def scrape(http, base: str) -> dict[tuple[str, tuple], float]:
    async with http.get(base + "/metrics") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def test_metrics_are_present_and_move_under_a_real_publish(make_server, test_flv):
    server = await make_server(ladder="240p", transcode_preset="ultrafast", transcode_max_lag=1000.0)
    pub = Publisher(f"{server.rtmp_url}/{KEY}")
    await pub.connect()
    playing = asyncio.ensure_future(pub.play(read_flv(test_flv.read_bytes()), realtime=True, loops=20))
    stream = await server.server.app[HLS_OUTPUT].wait_for_stream(NAME, 30)
    rung = stream.renditions
    async with aiohttp.ClientSession() as http:
        await server.wait_for_segments(NAME, 1)
        assert await stream.source.wait_until(lambda: "240p" in rung and rung["240p"].segmenter.segments, 30)
        first = await scrape(http, server.http_url)
        # a blocking playlist request: one observation of the wait histogram
        seg = stream.source.segmenter
        async with http.get(f"{server.http_url}/hls/{NAME}/source/media.m3u8?_HLS_msn={seg.next_msn}") as resp:
            assert resp.status == 200
        await server.wait_for_segments(NAME, 2)  # over a second of encoding: a real-time factor exists
        second = await scrape(http, server.http_url)
    playing.cancel()
    with contextlib.suppress(asyncio.CancelledError, ConnectionError):
        await playing
    await pub.close()

    assert value(second, "sfstream_live_streams") == 1
    assert value(second, "sfstream_publishers") == 1
    assert value(second, "sfstream_rtmp_connections") == 1
    assert 0 < value(first, "sfstream_ingest_bytes_total", stream=NAME) < value(
        second, "sfstream_ingest_bytes_total", stream=NAME)
    for rendition in ("source", "240p"):
        assert 0 < value(first, "sfstream_hls_parts_total", stream=NAME, rendition=rendition) < value(
            second, "sfstream_hls_parts_total", stream=NAME, rendition=rendition)
    assert value(second, "sfstream_transcode_rung_active", stream=NAME, rung="240p") == 1
    assert value(second, "sfstream_transcode_realtime_factor", stream=NAME, rung="240p") > 0
    assert value(second, "sfstream_transcode_lag_seconds", stream=NAME, rung="240p") >= 0
    assert value(second, "sfstream_frames_dropped_total", stream=NAME) == 0
    assert value(second, "sfstream_hls_blocking_wait_seconds_count", kind="playlist") >= 1
    playlist = value(second, "sfstream_http_requests_total",
                     route="/hls/{name}/{rendition}/media.m3u8", method="GET", status="200")
    assert playlist is not None and playlist >= 1
    assert value(second, "sfstream_http_request_duration_seconds_count",
                 route="/hls/{name}/{rendition}/media.m3u8", method="GET") >= 1
    assert value(second, "sfstream_websocket_connections") == 0
    assert value(second, "sfstream_db_pool_connections") >= 1


async def test_one_request_log_line_per_api_call_and_no_secret_in_any_log_line(api_factory, test_flv, caplog):
    caplog.set_level(logging.DEBUG)
    api = await api_factory(ladder="none")
    password = "correct horse battery"
    calls = 0

    async def call(*args, **kwargs):
        nonlocal calls
        calls += 1
        return await api.call(*args, **kwargs)

    status, body, _ = await call("POST", "/auth/register",
                                 json={"username": "alice", "email": "alice@example.org", "password": password})
    assert status == 201
    secrets_seen = [password, body["access_token"], body["refresh_token"]]
    status, body, _ = await call("POST", "/auth/login", json={"login": "alice", "password": password})
    secrets_seen += [body["access_token"], body["refresh_token"]]
    token = body["access_token"]
    assert (await call("POST", "/auth/login", json={"login": "alice", "password": "wrong password!"}))[0] == 401
    status, key, _ = await call("GET", "/stream/key", token=token)
    secrets_seen.append(key["stream_key"])
    pub = Publisher(f"{key['rtmp_url']}/{key['stream_key']}")
    await pub.connect()
    await pub.play(read_flv(test_flv.read_bytes()), realtime=False)
    stream = (await call("GET", "/users/alice/streams"))[1]["items"][0]
    status, grant, _ = await call("POST", f"/streams/{stream['id']}/playback-token", token=token)
    secrets_seen.append(grant["token"])
    status, key2, _ = await call("POST", "/stream/key/reset", token=token)
    secrets_seen.append(key2["stream_key"])
    await call("POST", "/auth/refresh-token", json={"refresh_token": body["refresh_token"]})
    await call("POST", "/auth/logout", token=token)
    await pub.close()

    lines = [r for r in caplog.records if r.name == "sfstream.access"]
    assert len(lines) == calls
    assert [(r.method, r.route) for r in lines][:2] == [("POST", "/api/auth/register"), ("POST", "/api/auth/login")]
    assert lines[0].status == 201 and lines[2].status == 401 and lines[3].user_id is not None
    formatted = [JSONFormatter().format(r) for r in caplog.records] + [caplog.text]
    for secret in secrets_seen:
        assert not any(secret in line for line in formatted), "a secret reached the logs"


def test_json_log_lines_carry_the_extra_fields():
    record = logging.LogRecord("sfstream.access", logging.INFO, __file__, 1, "GET %s", ("/api/x",), None)
    record.status, record.duration_ms = 200, 1.5
    line = json.loads(JSONFormatter().format(record))
    assert line["message"] == "GET /api/x" and line["status"] == 200 and line["duration_ms"] == 1.5
    assert line["level"] == "info" and line["logger"] == "sfstream.access" and line["ts"].endswith("Z")


async def test_readiness_checks_the_database_and_the_bus(api_factory):
    api = await api_factory("redis")
    base = f"http://127.0.0.1:{api.server.http_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/readyz") as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ready",
                                         "checks": {"rtmp": "ok", "database": "ok", "bus": "ok"}}
        async with http.get(base + "/healthz") as resp:
            assert resp.status == 200

        async def down():
            raise ConnectionError("database is down")

        api.server.app[STORE].ping = down
        async with http.get(base + "/readyz") as resp:
            assert resp.status == 503
            body = await resp.json()
        assert body["checks"]["database"] == "unavailable: ConnectionError" and body["checks"]["bus"] == "ok"


async def test_rtmp_session_events_are_structured(make_server, test_flv, caplog):
    caplog.set_level(logging.INFO, logger="sfstream")
    server = await make_server()
    pub = Publisher(f"{server.rtmp_url}/{KEY}")
    await pub.connect()
    await pub.play(read_flv(test_flv.read_bytes()), realtime=False)
    await pub.close()
    r = await server.wait_for_stream(NAME)
    assert await r.wait_until(lambda: r.segmenter.ended, 10)  # the unpublish was handled
    events = [json.loads(JSONFormatter().format(r)) for r in caplog.records if getattr(r, "event", "")[:5] == "rtmp."]
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["rtmp.connect", "rtmp.publish"] and "rtmp.unpublish" in kinds
    published = next(e for e in events if e["event"] == "rtmp.publish")
    assert published["stream"] == NAME and published["peer"].startswith("127.0.0.1:")
    assert all(KEY not in json.dumps(e) for e in events)
