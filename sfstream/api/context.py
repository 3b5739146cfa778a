"""What API handlers share: app state keys and per-request helpers (client address,
authentication, body validation, rate limits)."""
from __future__ import annotations

import ipaddress
import json
import math

from aiohttp import web
from marshmallow import Schema, ValidationError

from ..appkeys import BUS, STORE
from ..logs import USER_ID
from ..config import Settings
from ..store import User
from .errors import APIError
from .security import InvalidToken, TokenService

TOKENS = web.AppKey("tokens", TokenService)
API_SETTINGS = web.AppKey("api_settings", Settings)

MAX_JSON_BODY = 64 * 1024


def client_ip(request: web.Request) -> str:
    """The client's address; X-Forwarded-For is believed only from configured proxies.

    Walk X-Forwarded-For from the right (nearest hop) and stop at the first address
    that is not one of our proxies: everything left of it could be forged by the client.
    """
    peer = request.remote or ""
    networks = request.config_dict[API_SETTINGS].proxy_networks()
    if not networks or not _in(peer, networks):
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _is_ip(hop):
            return peer  # garbage where an address should be: trust nothing in this header
        if not _in(hop, networks):
            return hop
    return hops[0] if hops else peer


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_secure(request: web.Request) -> bool:
    """HTTPS as the client sees it: our own TLS, or X-Forwarded-Proto from a trusted proxy."""
    if request.secure:
        return True
    networks = request.config_dict[API_SETTINGS].proxy_networks()
    return bool(networks) and _in(request.remote or "", networks) and (
        request.headers.get("X-Forwarded-Proto", "").lower() == "https"
    )


def _in(address: str, networks) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


async def load_json(request: web.Request, schema: Schema) -> dict:
    """Parse and validate a JSON body: 400 if it is not JSON, 422 naming each bad field."""
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise APIError(413, "payload_too_large", f"request body over {MAX_JSON_BODY} bytes")
    # read(n) returns what has arrived so far (up to n): a body in several TCP segments needs a loop.
    raw = b""
    while len(raw) <= MAX_JSON_BODY and (chunk := await request.content.read(MAX_JSON_BODY + 1 - len(raw))):
        raw += chunk
    if len(raw) > MAX_JSON_BODY:
        raise APIError(413, "payload_too_large", f"request body over {MAX_JSON_BODY} bytes")
    try:
        data = json.loads(raw or b"null")
        # "\ud800" (a lone surrogate) is valid JSON but no text: it cannot be encoded, hashed or stored.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError, RecursionError):  # RecursionError: nested too deep
        raise APIError(400, "invalid_json", "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise APIError(400, "invalid_json", "the request body must be a JSON object")
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise APIError(422, "validation_failed", "invalid fields", _flatten(exc.messages)) from None


def _flatten(messages) -> dict:
    return messages if isinstance(messages, dict) else {"_schema": messages}


async def authenticate(request: web.Request) -> tuple[User, object]:
    """The user of a Bearer access token, or 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise APIError(401, "unauthorized", "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    try:
        access = request.config_dict[TOKENS].verify(token.strip())
    except InvalidToken:
        raise APIError(401, "invalid_token", "invalid or expired access token",
                       headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
    if await request.config_dict[BUS].is_revoked(access.jti):
        raise APIError(401, "invalid_token", "this access token was revoked",
                       headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    user = await request.config_dict[STORE].get_user(access.user_id)
    if user is None:
        raise APIError(401, "invalid_token", "the user of this token no longer exists")
    request[USER_ID] = user.id  # for the request log line
    return user, access


async def check_limit(request: web.Request, key: str, limit: int, window: float) -> None:
    """429 with Retry-After if `key` already used up its `limit` in this window."""
    count, retry = await request.config_dict[BUS].peek(key)
    if count >= limit:
        raise APIError(429, "rate_limited", "too many attempts; try again later",
                       headers={"Retry-After": str(max(1, math.ceil(retry)))})


async def count_attempt(request: web.Request, key: str, window: float) -> None:
    await request.config_dict[BUS].incr(key, window)
