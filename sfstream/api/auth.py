"""Registration, login, token refresh, logout.

Sessions: a login starts a refresh-token *family*; every refresh rotates the
token within the family. Presenting an already-rotated token means it was
copied: the whole family is revoked (RFC 6819 5.2.2.3, OAuth 2.0 Security BCP
4.14). The refresh token travels in the JSON body and in an HttpOnly SameSite
cookie; a request that authenticates with that cookie must also echo the
sf_csrf cookie in X-CSRF-Token (double submit), one with a token in the body
or a header need not, since another site cannot make a browser send those.
"""
from __future__ import annotations

import hmac
import logging
import secrets
import time
from datetime import datetime, timedelta, timezone

from aiohttp import web
from aiohttp_apigami import docs, request_schema

from ..broadcasts import BROADCASTS
from ..logs import USER_ID
from ..store import Conflict, User
from .context import API_SETTINGS, BUS, STORE, TOKENS, authenticate, check_limit, client_ip, count_attempt, is_secure, load_json
from .errors import APIError
from .schemas import (
    JSON_BODY_ERRORS,
    RATE_LIMITED,
    ErrorSchema,
    LoginSchema,
    PublicUserSchema,
    RefreshSchema,
    RegisterSchema,
    StatusSchema,
    TokenResponseSchema,
    UserSchema,
)
from .security import dummy_hash, hash_password, hash_refresh_token, new_family_id, new_refresh_token, verify_password

log = logging.getLogger("sfstream.api")

REFRESH_COOKIE = "sf_refresh"
CSRF_COOKIE = "sf_csrf"
CSRF_HEADER = "X-CSRF-Token"
REFRESH_HEADER = "X-Refresh-Token"
COOKIE_PATH = "/api"

# The optional header that carries a refresh token (documented where it is read).
REFRESH_HEADER_PARAM = {"in": "header", "name": REFRESH_HEADER, "required": False, "schema": {"type": "string"},
                        "description": "a refresh token (instead of the body or the sf_refresh cookie)"}

_user_schema = UserSchema()
_public_schema = PublicUserSchema()


def user_json(user: User) -> dict:
    return _user_schema.dump(user)


def public_user_json(user: User) -> dict:
    return _public_schema.dump(user)


async def _start_session(request: web.Request, user: User, status: int = 200, family: str | None = None) -> web.Response:
    """Issue an access token and a new refresh token (in `family`, or a new family)."""
    request[USER_ID] = user.id  # for the request log line
    settings = request.config_dict[API_SETTINGS]
    access = request.config_dict[TOKENS].issue(user.id)
    refresh, refresh_hash = new_refresh_token()
    await request.config_dict[STORE].add_refresh_token(
        family_id=family or new_family_id(),
        user_id=user.id,
        token_hash=refresh_hash,
        expires_at=datetime.now(timezone.utc) + timedelta(seconds=settings.refresh_token_ttl),
        # Header bytes that are not UTF-8 arrive as surrogate escapes: no database column takes those.
        user_agent=request.headers.get("User-Agent", "")[:200].encode("utf-8", "replace").decode("utf-8"),
        ip=client_ip(request),
    )
    resp = web.json_response(
        {
            "access_token": access.token,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": int(access.expires_at - time.time()),
            "user": user_json(user),
        },
        status=status,
    )
    secure = settings.production or is_secure(request)
    resp.set_cookie(REFRESH_COOKIE, refresh, max_age=int(settings.refresh_token_ttl), path=COOKIE_PATH,
                    httponly=True, samesite="Strict", secure=secure)
    # Readable by the page's own script (not HttpOnly): it echoes it in X-CSRF-Token.
    resp.set_cookie(CSRF_COOKIE, secrets.token_urlsafe(24), max_age=int(settings.refresh_token_ttl), path="/",
                    samesite="Strict", secure=secure)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _clear_session_cookies(resp: web.StreamResponse) -> None:
    resp.del_cookie(REFRESH_COOKIE, path=COOKIE_PATH)
    resp.del_cookie(CSRF_COOKIE, path="/")


def _require_csrf(request: web.Request) -> None:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    header = request.headers.get(CSRF_HEADER, "")
    if not cookie or not header or not hmac.compare_digest(cookie, header):
        raise APIError(403, "csrf_failed", f"cookie-authenticated requests must send {CSRF_HEADER}")


async def _refresh_token_from(request: web.Request, use_cookie: bool = True) -> str | None:
    """The refresh token from the body, the X-Refresh-Token header, or (with CSRF) the cookie."""
    if request.method == "POST" and request.can_read_body:
        body = await load_json(request, RefreshSchema())
        if body.get("refresh_token"):
            return body["refresh_token"]
    if request.headers.get(REFRESH_HEADER):
        return request.headers[REFRESH_HEADER]
    if use_cookie and request.cookies.get(REFRESH_COOKIE):
        _require_csrf(request)
        return request.cookies[REFRESH_COOKIE]
    return None


@docs(tags=["auth"], summary="Create an account",
      description="The first account created becomes an administrator. Answers like login.",
      responses={201: {"schema": TokenResponseSchema, "description": "registered and logged in"},
                 409: {"schema": ErrorSchema, "description": "username or email taken"},
                 **JSON_BODY_ERRORS,
                 429: {"schema": ErrorSchema, "description": "too many attempts"}})
@request_schema(RegisterSchema, required=True)
async def register(request: web.Request) -> web.Response:
    settings = request.config_dict[API_SETTINGS]
    ip_key = f"register:ip:{client_ip(request)}"
    await check_limit(request, ip_key, settings.login_attempts, settings.login_window)
    body = await load_json(request, RegisterSchema())
    await count_attempt(request, ip_key, settings.login_window)
    store = request.config_dict[STORE]
    if body["username"].lower() in request.config_dict[BROADCASTS].static_names:
        # The public name of a --stream-key stream: the operator's, not for an account.
        raise APIError(409, "conflict", "this username is already registered", {"username": ["already registered"]})
    password_hash = await hash_password(body["password"], settings.bcrypt_rounds)
    try:
        # The first account is the administrator (decided by the database, atomically).
        user = await store.create_user(body["username"], body["email"].lower(), password_hash, is_admin=None)
    except Conflict as exc:
        raise APIError(409, "conflict", f"this {exc.field} is already registered", {exc.field: ["already registered"]})
    log.info("user %d registered (%s)", user.id, user.username)
    return await _start_session(request, user, status=201)


@docs(tags=["auth"], summary="Log in with a username or email",
      responses={200: {"schema": TokenResponseSchema, "description": "logged in"},
                 401: {"schema": ErrorSchema, "description": "wrong login or password"},
                 **JSON_BODY_ERRORS,
                 429: {"schema": ErrorSchema, "description": "too many failed attempts"}})
@request_schema(LoginSchema, required=True)
async def login(request: web.Request) -> web.Response:
    settings = request.config_dict[API_SETTINGS]
    body = await load_json(request, LoginSchema())
    ip_key = f"login:ip:{client_ip(request)}"
    account_key = f"login:account:{body['login'].lower()}"
    for key in (ip_key, account_key):
        await check_limit(request, key, settings.login_attempts, settings.login_window)
    user = await request.config_dict[STORE].get_user_by_login(body["login"])
    # Check a password even without a user, so both failures take the same time.
    hashed = user.password_hash if user else await dummy_hash(settings.bcrypt_rounds)
    ok = await verify_password(body["password"], hashed)
    if user is None or not ok:
        for key in (ip_key, account_key):
            await count_attempt(request, key, settings.login_window)
        raise APIError(401, "invalid_credentials", "wrong login or password")
    await request.config_dict[BUS].reset(account_key)
    return await _start_session(request, user)


_REFRESH_DOCS = dict(
    tags=["auth"], summary="Rotate the refresh token and get a new access token",
    description=f"The refresh token comes in the JSON body (POST), the {REFRESH_HEADER} header, or the "
                f"{REFRESH_COOKIE} cookie (then {CSRF_HEADER} must equal the {CSRF_COOKIE} cookie). "
                "Reusing a rotated token revokes every token of its login session.",
    parameters=[REFRESH_HEADER_PARAM],
    responses={200: {"schema": TokenResponseSchema, "description": "new tokens"},
               401: {"schema": ErrorSchema, "description": "invalid, expired, reused or revoked refresh token"},
               403: {"schema": ErrorSchema, "description": "cookie without CSRF token"},
               429: {"schema": ErrorSchema, "description": "too many failed attempts"}},
)


# GET reads no body: documented apart from POST, which takes an optional JSON body.
@docs(**_REFRESH_DOCS)
async def refresh_get(request: web.Request) -> web.Response:
    return await refresh(request)


@docs(**{**_REFRESH_DOCS, "responses": {**JSON_BODY_ERRORS, **_REFRESH_DOCS["responses"]}})
@request_schema(RefreshSchema, required=False)
async def refresh(request: web.Request) -> web.Response:
    settings = request.config_dict[API_SETTINGS]
    ip_key = f"refresh:ip:{client_ip(request)}"
    await check_limit(request, ip_key, settings.login_attempts, settings.login_window)
    token = await _refresh_token_from(request)
    if token is None:
        raise APIError(401, "unauthorized", "no refresh token")
    store = request.config_dict[STORE]
    record = await store.get_refresh_token(hash_refresh_token(token))
    now = datetime.now(timezone.utc)
    if record is None or record.revoked_at is not None or record.expires_at <= now:
        await count_attempt(request, ip_key, settings.login_window)
        raise APIError(401, "invalid_token", "invalid, expired or revoked refresh token")
    if not await store.use_refresh_token(record.token_hash):
        # Rotated already: someone else has this token. End the whole session.
        await store.revoke_family(record.family_id)
        log.warning("refresh token reuse for user %d: session revoked", record.user_id)
        raise APIError(401, "token_reused", "this refresh token was already used; the session is revoked")
    user = await store.get_user(record.user_id)
    if user is None:
        raise APIError(401, "invalid_token", "the user of this token no longer exists")
    return await _start_session(request, user, family=record.family_id)


@docs(tags=["auth"], summary="Log out",
      description="Revokes the presented access token (Bearer) and the login session of the refresh token "
                  "(body, header or cookie), and clears the session cookies.",
      security=[{"bearerAuth": []}, {}],  # the access token is optional
      parameters=[REFRESH_HEADER_PARAM],
      responses={200: {"schema": StatusSchema, "description": "logged out"},
                 401: {"schema": ErrorSchema, "description": "nothing to log out, or an invalid access token"},
                 403: {"schema": ErrorSchema, "description": "cookie without CSRF token"},
                 **JSON_BODY_ERRORS, **RATE_LIMITED})
@request_schema(RefreshSchema, required=False)
async def logout(request: web.Request) -> web.Response:
    revoked = False
    if request.headers.get("Authorization"):
        _, access = await authenticate(request)
        await request.config_dict[BUS].revoke(access.jti, max(1.0, access.expires_at - time.time()))
        revoked = True
    # Logged out by bearer token: the session cookie is ended too, but only with proof (CSRF)
    # that this page, not another site, asks for it.
    token = await _refresh_token_from(request, use_cookie=not revoked or CSRF_HEADER in request.headers)
    if token is not None:
        record = await request.config_dict[STORE].get_refresh_token(hash_refresh_token(token))
        if record is not None:
            await request.config_dict[STORE].revoke_family(record.family_id)
            revoked = True
    if not revoked:
        raise APIError(401, "unauthorized", "no access or refresh token to log out")
    resp = web.json_response({"status": "logged out"})
    _clear_session_cookies(resp)
    return resp
