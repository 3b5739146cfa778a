"""The app factory and the one-process server: RTMP listener + aiohttp app.

`create_app(settings)` wires every part (DESIGN.md: app factory and cleanup
contexts); tests build the app the same way. `Server` runs it on real sockets
and `serve()` adds signal handling for the CLI.
"""
from __future__ import annotations

import asyncio
import dataclasses
import contextlib
import gc
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from .api import setup_api
from .api.ws import VIEWER_SOCKETS
from .appkeys import BUS, STORE
from .broadcasts import BROADCASTS, ORPHAN_GRACE, Broadcasts
from .config import Settings, with_default_stream_key
from .hls.live import HLSOutput, HLSSettings
from .hls.routes import HLS_AUDIENCE, HLS_OUTPUT, add_routes as add_hls_routes
from .media.live import LiveStream, StreamRegistry
from .metrics import METRICS, Metrics, app_state, measure, metrics_endpoint
from .rtmp.server import RTMPLimits, RTMPServer
from .secret_key import load_secret_key
from .transcode.ladder import parse_ladder
from .transcode.pipeline import TranscodeSettings, Transcoder

log = logging.getLogger("sfstream")

THUMBNAIL_DIR = "thumbnails"  # under the data dir
READY_TIMEOUT = 2.0  # seconds /readyz waits for the database and Redis
SHUTDOWN_RECORD_TIMEOUT = 10.0  # seconds shutdown waits to record the ends of broadcasts

SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", StreamRegistry)
RTMP_SERVER = web.AppKey("rtmp_server", RTMPServer)


class _RTMPListener:
    """Holds where the RTMP listener ended up (port 0 means "any free port")."""

    port: int = 0


RTMP_LISTENER = web.AppKey("rtmp_listener", _RTMPListener)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024, middlewares=[measure])
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    registry = StreamRegistry()
    app[REGISTRY] = registry
    hls = HLSOutput(
        HLSSettings(
            segment_duration=settings.hls_segment_duration,
            part_duration=settings.hls_part_duration,
            window=settings.hls_window,
            linger=settings.hls_linger,
            reconnect_grace=settings.hls_reconnect_grace,
        )
    )
    app[HLS_OUTPUT] = hls
    # Who may publish and watch, the broadcast records and viewer counts (store and bus are
    # bound once the API's cleanup contexts opened them).

    def end_publishing(name: str, reason: str) -> int:
        closed = app[RTMP_SERVER].disconnect(name, reason)
        stream = hls.get(name)
        if stream is not None and stream.waiting_for_publisher:
            stream.end_now()  # in its reconnect grace period: no publisher to close, end the playlists
            closed += 1
        return closed

    broadcasts = Broadcasts(settings, load_secret_key(settings), end_publishing)
    broadcasts.thumbnail_dir = Path(settings.data_dir) / THUMBNAIL_DIR
    app[BROADCASTS] = broadcasts
    app[HLS_AUDIENCE] = broadcasts
    transcode = TranscodeSettings(
        ladder=parse_ladder(settings.ladder),
        preset=settings.transcode_preset,
        threads=settings.transcode_threads,
        max_lag=settings.transcode_max_lag,
        thumbnail_interval=settings.thumbnail_interval,
        thumbnail_dir=Path(settings.data_dir) / THUMBNAIL_DIR,
    )

    def package(live: LiveStream) -> None:
        stream = hls.attach(live)
        own = broadcasts.ladder_for(live.name)
        chosen = transcode if own is None else dataclasses.replace(transcode, ladder=parse_ladder(own))
        if chosen.ladder or chosen.thumbnail_interval > 0:
            # After the packager among the consumers: the source is never held up by the ladder.
            live.consumers.append(Transcoder(live.name, chosen, stream, asyncio.get_running_loop(),
                                             on_thumbnail=broadcasts.on_thumbnail,
                                             metadata=lambda: live.metadata))

    registry.on_publish.append(package)
    registry.on_publish.append(broadcasts.on_publish)
    hls.on_finish.append(broadcasts.on_hls_finished)

    app[RTMP_SERVER] = RTMPServer(
        RTMPLimits(
            app=settings.rtmp_app,
            max_connections=settings.rtmp_max_connections,
            max_message_size=settings.rtmp_max_message_size,
            max_chunk_size=settings.rtmp_max_chunk_size,
            handshake_timeout=settings.rtmp_handshake_timeout,
            idle_timeout=settings.rtmp_idle_timeout,
        ),
        broadcasts.authorize,
        registry,
    )
    app[RTMP_LISTENER] = _RTMPListener()
    add_hls_routes(app)
    setup_api(app, settings)  # its cleanup contexts open the store and the bus
    # In this order: publishers are accepted only once the database is there, and at
    # shutdown the broadcasts are recorded as ended before the database closes.
    app.cleanup_ctx.append(_broadcasts)
    app.cleanup_ctx.append(_rtmp_listener)
    app.cleanup_ctx.append(_hls_expiry)
    app.router.add_get("/thumbnails/{name:[A-Za-z0-9_.\\-]{1,64}}.jpg", thumbnail)
    app.router.add_get("/metrics", metrics_endpoint)
    app[METRICS].add_state(app_state(app, registry_key=REGISTRY, rtmp_key=RTMP_SERVER, hls_key=HLS_OUTPUT,
                                     broadcasts_key=BROADCASTS, sockets_key=VIEWER_SOCKETS, store_key=STORE))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def _broadcasts(app: web.Application):
    broadcasts = app[BROADCASTS]
    broadcasts.bind(app[STORE], app[BUS])
    # Broadcasts still marked live that no instance keeps alive were left by a crash. Alone (no
    # Redis), every one of them is, however young; with other instances, young ones may be
    # theirs, not yet heartbeating.
    await broadcasts.end_orphans(grace=0.0 if not app[SETTINGS].redis_url else ORPHAN_GRACE)
    sampler = asyncio.get_running_loop().create_task(broadcasts.run_sampler())
    yield
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    await broadcasts.drain()


async def _rtmp_listener(app: web.Application):
    settings = app[SETTINGS]
    server = app[RTMP_SERVER]
    app[RTMP_LISTENER].port = app[BROADCASTS].rtmp_port = await server.start(settings.host, settings.rtmp_port)
    yield
    await server.close()


async def _hls_expiry(app: web.Application):
    task = asyncio.get_running_loop().create_task(app[HLS_OUTPUT].run_expiry())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def thumbnail(request: web.Request) -> web.StreamResponse:
    """The latest thumbnail of a stream (private ones: with a playback token)."""
    name = request.match_info["name"]
    if not await request.app[BROADCASTS].can_watch(name, request.query.get("token")):
        return web.json_response({"error": {"code": "forbidden", "message": "private stream", "fields": {}}},
                                 status=403)
    path = Path(request.app[SETTINGS].data_dir) / THUMBNAIL_DIR / f"{name}.jpg"
    if not path.is_file():
        return web.json_response({"error": {"code": "not_found", "message": "no thumbnail", "fields": {}}},
                                 status=404)
    cache = "private, max-age=5" if request.query.get("token") else "public, max-age=5"
    resp = web.FileResponse(path, headers={
        "Content-Type": "image/jpeg", "Cache-Control": cache,
        "X-Content-Type-Options": "nosniff", "Access-Control-Allow-Origin": "*",
    })
    return resp


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready to serve: the listeners are up and the database and the bus (Redis) answer."""
    checks = {"rtmp": "ok" if request.app[RTMP_LISTENER].port != 0 else "starting"}
    for name, key in (("database", STORE), ("bus", BUS)):
        try:
            await asyncio.wait_for(request.app[key].ping(), READY_TIMEOUT)
            checks[name] = "ok"
        except Exception as exc:  # the reason, not the URL: it may hold a password
            checks[name] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return web.json_response({"status": "ready" if ready else "not ready", "checks": checks},
                             status=200 if ready else 503)


class Server:
    """The whole process: the aiohttp app on its site plus the RTMP listener."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5.0)
        self.http_port = 0

    @property
    def rtmp_port(self) -> int:
        return self.app[RTMP_LISTENER].port

    async def start(self) -> None:
        await self.runner.setup()  # runs the cleanup contexts: RTMP listener up
        site = web.TCPSite(self.runner, self.settings.host, self.settings.http_port, backlog=1024)
        await site.start()
        self.http_port = site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked

    async def stop(self) -> None:
        # End the publishers first, so playlists get ENDLIST while HTTP still serves
        # them; then the HTTP site stops and the cleanup contexts run.
        await self.app[RTMP_SERVER].close()
        for stream in list(self.app[HLS_OUTPUT].streams.values()):
            stream.end_for_shutdown()  # also those waiting for a dropped publisher
        # Broadcast ends recorded (and their websockets told) before the sockets and the
        # database close; bounded, so an unreachable database cannot hold the exit.
        try:
            await asyncio.wait_for(self.app[BROADCASTS].drain(), SHUTDOWN_RECORD_TIMEOUT)
        except asyncio.TimeoutError:
            log.error("shutdown: broadcast ends not recorded within %g s", SHUTDOWN_RECORD_TIMEOUT)
        await self.runner.cleanup()


def _display_host(settings: Settings) -> str:
    return "localhost" if settings.host in ("0.0.0.0", "::", "") else settings.host


def announce(server: Server, key_file=None, out=sys.stdout) -> None:
    s = server.settings
    host = _display_host(s)
    base = s.public_url.rstrip("/") or f"http://{host}:{server.http_port}"
    print(f"sfstream listening: RTMP {s.host}:{server.rtmp_port}, HTTP {s.host}:{server.http_port}", file=out)
    print(f"  publish: rtmp://{host}:{server.rtmp_port}/{s.rtmp_app}/<stream key>", file=out)
    names = sorted(set(s.stream_keys.values()))
    for name in names:
        print(f"  watch:   {base}/hls/{name}/index.m3u8", file=out)
    if key_file is not None:
        print(f"  stream key: in {key_file} (or set your own with --stream-key NAME=KEY)", file=out)
    out.flush()


async def serve(settings: Settings) -> int:
    settings, key_file = with_default_stream_key(settings)
    # Handlers first: a signal that arrives while we start must still shut down cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = Server(settings)
    await server.start()
    # What start-up made lives as long as the process: keep it out of the garbage collector's
    # full passes, whose pauses grow with the objects they walk (ws_viewers benchmark).
    gc.freeze()
    announce(server, key_file)
    await stop.wait()
    log.info("shutting down: ending live streams")
    await server.stop()
    return 0
