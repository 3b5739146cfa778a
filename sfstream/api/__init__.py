"""The REST API: mounted at /api/v1, with /api as an alias of the current version.

`setup_api(app, settings)` adds the routes, the middlewares and the OpenAPI
document (/api/docs/openapi.json, Swagger UI at /api/docs), and the cleanup
contexts that open the store (SQLite or PostgreSQL) and the bus (in-process or
Redis). Nothing outside api/ imports api/.
"""
from __future__ import annotations

import functools
import math

from aiohttp import web
from aiohttp_apigami import setup_aiohttp_apispec

from .. import __version__
from ..broadcasts import BROADCASTS
from ..bus import open_bus
from ..config import Settings
from ..logs import log_requests
from ..secret_key import load_secret_key
from ..store import open_store
from . import auth, categories, follows, streams, users
from .ws import VIEWER_SOCKETS, ViewerSockets, viewers_socket
from .context import API_SETTINGS, BUS, STORE, TOKENS, client_ip
from .errors import APIError, error_middleware
from .security import TokenService, dummy_hash

API_VERSION = "v1"
MOUNT = "/api"
PREFIXES = (f"/{API_VERSION}", "")  # under MOUNT: /api/v1 is documented, /api is its alias
DOCS_PATH = "/api/docs"

# (method, path, handler)
ROUTES = [
    ("POST", "/auth/register", auth.register),
    ("POST", "/auth/login", auth.login),
    ("POST", "/auth/logout", auth.logout),
    ("GET", "/auth/refresh-token", auth.refresh_get),
    ("POST", "/auth/refresh-token", auth.refresh),
    ("GET", "/users/profile", users.get_profile),
    ("PUT", "/users/profile", users.update_profile),
    ("POST", "/users/change-password", users.change_password),
    ("POST", "/users/avatar", users.upload_avatar),
    ("PUT", "/users/avatar", users.upload_avatar),
    ("GET", "/users/{username:[A-Za-z0-9_]{1,64}}", users.get_user),
    ("GET", "/users/{username:[A-Za-z0-9_]{1,64}}/follow", follows.follow_status),
    ("POST", "/users/{username:[A-Za-z0-9_]{1,64}}/follow", follows.follow),
    ("DELETE", "/users/{username:[A-Za-z0-9_]{1,64}}/follow", follows.unfollow),
    ("GET", "/users/{username:[A-Za-z0-9_]{1,64}}/followers", follows.followers),
    ("GET", "/users/{username:[A-Za-z0-9_]{1,64}}/following", follows.following),
    ("GET", "/categories", categories.list_categories),
    ("POST", "/categories", categories.create_category),
    ("GET", "/categories/{id:[0-9]{1,18}}", categories.get_category),
    ("PUT", "/categories/{id:[0-9]{1,18}}", categories.update_category),
    ("DELETE", "/categories/{id:[0-9]{1,18}}", categories.delete_category),
    ("GET", "/stream/key", streams.get_stream_key),
    ("POST", "/stream/key/reset", streams.reset_stream_key),
    ("GET", "/stream/settings", streams.get_stream_settings),
    ("PUT", "/stream/settings", streams.put_stream_settings),
    ("POST", "/streams", streams.create_stream),
    ("GET", "/streams", streams.list_streams),
    ("GET", "/streams/{id:[0-9]{1,18}}", streams.get_stream),
    ("PUT", "/streams/{id:[0-9]{1,18}}", streams.update_stream),
    ("DELETE", "/streams/{id:[0-9]{1,18}}", streams.delete_stream),
    ("POST", "/streams/{id:[0-9]{1,18}}/playback-token", streams.playback_token),
    ("GET", "/streams/{id:[0-9]{1,18}}/statistics", streams.stream_statistics),
    ("GET", "/users/{username:[A-Za-z0-9_]{1,64}}/streams", streams.user_streams),
    ("GET", "/users/{username:[A-Za-z0-9_]{1,64}}/statistics", streams.user_statistics),
    ("PUT", "/users/{username:[A-Za-z0-9_]{1,64}}/ladder", streams.set_user_ladder),
    ("GET", "/categories/{id:[0-9]{1,18}}/streams", streams.category_streams),
]


def _alias(handler):
    # A plain wrapper: same behaviour, but without the OpenAPI metadata of `handler`,
    # so the document lists each operation once, under /api/v1.
    @functools.wraps(handler, assigned=("__name__", "__doc__"), updated=())
    async def alias(request: web.Request) -> web.StreamResponse:
        return await handler(request)

    return alias


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# JSON never needs to run anything; Swagger UI needs its own scripts and inline styles.
CSP_STRICT = "default-src 'none'; frame-ancestors 'none'"
CSP_DOCS = ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'")


def add_security_headers(request: web.Request, resp: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        resp.headers.setdefault(name, value)
    resp.headers.setdefault("Content-Security-Policy", CSP_DOCS if request.path.startswith(DOCS_PATH) else CSP_STRICT)
    if request.config_dict[API_SETTINGS].production:
        resp.headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")


@web.middleware
async def security_headers(request: web.Request, handler):
    resp = await handler(request)
    add_security_headers(request, resp)
    return resp


@web.middleware
async def rate_limit(request: web.Request, handler):
    """A global per-client budget for the API (login and friends have tighter ones)."""
    if not request.path.startswith(DOCS_PATH):
        settings = request.config_dict[API_SETTINGS]
        count, retry = await request.config_dict[BUS].incr(f"api:ip:{client_ip(request)}", 60.0)
        if count > settings.api_rate_limit:
            raise APIError(429, "rate_limited", "too many requests; slow down",
                           headers={"Retry-After": str(max(1, math.ceil(retry)))})
    return await handler(request)


async def _warm_dummy_hash(app: web.Application) -> None:
    # Made before the first login, so even that one costs no more for an unknown user.
    await dummy_hash(app[API_SETTINGS].bcrypt_rounds)


def setup_api(app: web.Application, settings: Settings) -> None:
    """Mount the API as a sub-application at /api.

    A sub-application, so its middlewares (errors, security headers, rate limits)
    run for API requests only, never for the HLS requests of thousands of viewers.
    The store, the bus and the settings stay on the main application, where the
    media side can reach them too; handlers read them via request.config_dict.
    """
    app[API_SETTINGS] = settings
    app[TOKENS] = TokenService(load_secret_key(settings), settings.access_token_ttl)
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_bus_ctx)
    app.on_startup.append(_warm_dummy_hash)
    api = web.Application(middlewares=[log_requests, security_headers, error_middleware, rate_limit])
    for prefix in PREFIXES:
        for method, path, handler in ROUTES:
            api.router.add_route(method, prefix + path, handler if prefix == PREFIXES[0] else _alias(handler))
    docs = setup_aiohttp_apispec(
        api,
        title="sfstream API",
        version=__version__,
        url=DOCS_PATH.removeprefix(MOUNT) + "/openapi.json",
        swagger_path=DOCS_PATH.removeprefix(MOUNT),
        static_path=DOCS_PATH.removeprefix(MOUNT) + "/static",
        openapi_version="3.0.2",
        info={"description": "Live-streaming platform API. Errors: "
                             '{"error": {"code", "message", "fields"}}.'},
    )
    docs.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})
    app.add_subapp(MOUNT, api)
    app.router.add_get(users.AVATAR_URL + "{name:[0-9]+-[0-9a-f]{16}\\.jpg}", users.serve_avatar)
    hub = app[VIEWER_SOCKETS] = ViewerSockets(app)
    app[BROADCASTS].on_end.append(hub.broadcast_ended)
    app.router.add_get("/ws/streams/{id:[0-9]{1,18}}/viewers", viewers_socket)
    app.on_shutdown.append(_close_sockets)


async def _close_sockets(app: web.Application) -> None:
    await app[VIEWER_SOCKETS].close_all()  # code 1001 "going away": clients reconnect elsewhere


async def _store_ctx(app: web.Application):
    settings = app[API_SETTINGS]
    store = await open_store(settings.database_url, data_dir=settings.data_dir,
                             pool_min=settings.db_pool_min, pool_max=settings.db_pool_max)
    app[STORE] = store
    yield
    await store.close()


async def _bus_ctx(app: web.Application):
    settings = app[API_SETTINGS]
    bus = await open_bus(settings.redis_url, prefix=settings.redis_prefix)
    app[BUS] = bus
    yield
    await bus.close()
