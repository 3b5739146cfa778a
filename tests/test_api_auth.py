"""Accounts and auth over real HTTP, on SQLite and PostgreSQL, with the in-process and Redis bus."""
from __future__ import annotations

import io
import secrets
from fractions import Fraction

import aiohttp
import av
import pytest

from sfstream.api.security import TokenService, dummy_hash
from sfstream.config import ConfigError, Settings
from sfstream.secret_key import load_secret_key

from .apiclient import API


# ---------------------------------------------------------------- register / login


async def test_register_login_profile_flow(api):
    first = await api.register("alice")
    assert first["token_type"] == "Bearer" and first["expires_in"] > 0
    assert first["user"]["username"] == "alice" and first["user"]["is_admin"] is True  # the first account
    second = await api.register("bob")
    assert second["user"]["is_admin"] is False
    assert "password" not in first["user"] and "password_hash" not in first["user"]

    for login in ("alice", "ALICE", "alice@example.org"):
        status, body, _ = await api.call("POST", "/v1/auth/login", json={"login": login, "password": "correct horse"})
        assert status == 200 and body["user"]["id"] == first["user"]["id"]
    status, body, resp = await api.call("GET", "/users/profile", token=body["access_token"])
    assert status == 200 and body["email"] == "alice@example.org"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"username": "a", "email": "x@example.org", "password": "long enough"}, "username"),
        ({"username": "has space", "email": "x@example.org", "password": "long enough"}, "username"),
        ({"username": "ünïcode", "email": "x@example.org", "password": "long enough"}, "username"),
        ({"username": "Profile", "email": "x@example.org", "password": "long enough"}, "username"),  # a route
        ({"username": "carol", "email": "not-an-email", "password": "long enough"}, "email"),
        ({"username": "carol", "email": "x@example.org", "password": "short"}, "password"),
        ({"username": "carol", "email": "x@example.org"}, "password"),
        ({"username": "carol", "email": "x@example.org", "password": "long enough", "admin": True}, "admin"),
    ],
)
async def test_register_validation_names_the_field(api, payload, field):
    status, body, _ = await api.call("POST", "/auth/register", json=payload)
    assert status == 422
    assert body["error"]["code"] == "validation_failed" and field in body["error"]["fields"]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"'])
async def test_malformed_json_is_400(api, raw):
    status, body, _ = await api.call("POST", "/auth/login", data=raw, headers={"Content-Type": "application/json"})
    assert status == 400 and body["error"]["code"] == "invalid_json"


async def test_oversize_body_is_413(api):
    status, body, _ = await api.call("POST", "/auth/login", data=b"{" + b" " * 70_000 + b"}",
                                     headers={"Content-Type": "application/json"})
    assert status == 413 and body["error"]["code"] == "payload_too_large"


async def test_duplicates_are_409_case_insensitive(api):
    await api.register("alice")
    status, body, _ = await api.call("POST", "/auth/register", json={"username": "ALICE", "email": "new@example.org", "password": "long enough"})
    assert status == 409 and "username" in body["error"]["fields"]
    status, body, _ = await api.call("POST", "/auth/register", json={"username": "someone", "email": "Alice@Example.org", "password": "long enough"})
    assert status == 409 and "email" in body["error"]["fields"]
    # the public name of a --stream-key stream ("good" here) belongs to the operator
    status, body, _ = await api.call("POST", "/auth/register", json={"username": "GOOD", "email": "g@example.org", "password": "long enough"})
    assert status == 409 and "username" in body["error"]["fields"]


async def test_wrong_credentials_are_401(api):
    await api.register("alice")
    for login, password in (("alice", "wrong password"), ("nobody", "correct horse")):
        status, body, _ = await api.call("POST", "/auth/login", json={"login": login, "password": password})
        assert status == 401 and body["error"]["code"] == "invalid_credentials"


async def test_bad_tokens_are_401(api):
    other = TokenService("another-secret-that-is-long-enough-123456", 900).issue(1).token
    for header in ({}, {"Authorization": "Bearer garbage"}, {"Authorization": f"Bearer {other}"}, {"Authorization": "Basic abc"}):
        status, body, resp = await api.call("GET", "/users/profile", headers=header)
        assert status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")


# ---------------------------------------------------------------- profile and public users


async def test_profile_update_and_public_profile(api):
    alice = await api.register("alice")
    await api.register("bob")
    token = alice["access_token"]
    status, body, _ = await api.call("PUT", "/users/profile", token=token, json={"bio": "<script>alert(1)</script>", "email": "A2@example.org"})
    assert status == 200 and body["email"] == "a2@example.org"
    status, body, _ = await api.call("PUT", "/users/profile", token=token, json={"email": "bob@example.org"})
    assert status == 409 and "email" in body["error"]["fields"]
    status, body, _ = await api.call("PUT", "/users/profile", token=token, json={"bio": "x" * 501})
    assert status == 422 and "bio" in body["error"]["fields"]

    status, body, resp = await api.call("GET", "/users/alice")
    assert status == 200 and body["username"] == "alice"
    assert "email" not in body and "is_admin" not in body
    # User text is returned as JSON data, never rendered: the content type says so.
    assert body["bio"] == "<script>alert(1)</script>" and resp.content_type == "application/json"
    status, body, _ = await api.call("GET", "/users/nobody")
    assert status == 404 and body["error"]["code"] == "not_found"


# ---------------------------------------------------------------- refresh tokens, CSRF, logout


async def test_refresh_rotates_and_reuse_revokes_the_family(api):
    alice = await api.register("alice")
    old = alice["refresh_token"]
    status, fresh, _ = await api.call("POST", "/auth/refresh-token", json={"refresh_token": old})
    assert status == 200 and fresh["refresh_token"] != old
    # GET, with the token in a header, also works (and rotates).
    status, fresher, _ = await api.call("GET", "/auth/refresh-token", headers={"X-Refresh-Token": fresh["refresh_token"]})
    assert status == 200
    # The first token again: it leaked. The whole session dies, including the newest token.
    status, body, _ = await api.call("POST", "/auth/refresh-token", json={"refresh_token": old})
    assert status == 401 and body["error"]["code"] == "token_reused"
    status, body, _ = await api.call("POST", "/auth/refresh-token", json={"refresh_token": fresher["refresh_token"]})
    assert status == 401
    # Other sessions of the same user are untouched.
    status, other, _ = await api.call("POST", "/auth/login", json={"login": "alice", "password": "correct horse"})
    status, _, _ = await api.call("POST", "/auth/refresh-token", json={"refresh_token": other["refresh_token"]})
    assert status == 200


async def test_cookie_refresh_needs_csrf_token_bearer_does_not(api):
    alice = await api.register("alice")  # sets sf_refresh (HttpOnly) and sf_csrf cookies
    cookies = {c.key: c for c in api.http.cookie_jar}
    assert cookies["sf_refresh"]["httponly"] and cookies["sf_refresh"]["samesite"] == "Strict"
    assert not cookies["sf_csrf"]["httponly"]
    status, body, _ = await api.call("POST", "/auth/refresh-token")
    assert status == 403 and body["error"]["code"] == "csrf_failed"
    status, body, _ = await api.call("POST", "/auth/refresh-token", headers={"X-CSRF-Token": "guess"})
    assert status == 403
    csrf = cookies["sf_csrf"].value
    status, body, _ = await api.call("POST", "/auth/refresh-token", headers={"X-CSRF-Token": csrf})
    assert status == 200 and body["refresh_token"] != alice["refresh_token"]
    # Bearer-authenticated state changes need no CSRF token: another site cannot set that header.
    status, _, _ = await api.call("PUT", "/users/profile", token=body["access_token"], json={"bio": "hi"})
    assert status == 200


async def test_logout_revokes_access_and_refresh_tokens(api_factory, store_backend):
    for bus in ("memory", "redis"):
        api = await api_factory(bus=bus)
        alice = await api.register(f"alice{bus}")
        status, _, _ = await api.call("POST", "/auth/logout", token=alice["access_token"],
                                      json={"refresh_token": alice["refresh_token"]})
        assert status == 200
        status, body, _ = await api.call("GET", "/users/profile", token=alice["access_token"])
        assert status == 401 and "revoked" in body["error"]["message"]
        status, _, _ = await api.call("POST", "/auth/refresh-token", json={"refresh_token": alice["refresh_token"]})
        assert status == 401
    status, body, _ = await api.call("POST", "/auth/logout")
    assert status == 401


async def test_change_password_revokes_other_sessions(api):
    alice = await api.register("alice")
    status, other, _ = await api.call("POST", "/auth/login", json={"login": "alice", "password": "correct horse"})
    status, body, _ = await api.call("POST", "/users/change-password", token=alice["access_token"],
                                     json={"current_password": "wrong one", "new_password": "new password 1"})
    assert status == 403 and "current_password" in body["error"]["fields"]
    status, _, _ = await api.call("POST", "/users/change-password", token=alice["access_token"],
                                  headers={"X-Refresh-Token": alice["refresh_token"]},
                                  json={"current_password": "correct horse", "new_password": "new password 1"})
    assert status == 200
    status, _, _ = await api.call("POST", "/auth/refresh-token", json={"refresh_token": other["refresh_token"]})
    assert status == 401  # the other session ended
    status, _, _ = await api.call("POST", "/auth/refresh-token", json={"refresh_token": alice["refresh_token"]})
    assert status == 200  # this one goes on
    status, _, _ = await api.call("POST", "/auth/login", json={"login": "alice", "password": "correct horse"})
    assert status == 401
    status, _, _ = await api.call("POST", "/auth/login", json={"login": "alice", "password": "new password 1"})
    assert status == 200


# ---------------------------------------------------------------- rate limits


async def test_failed_logins_are_limited_per_account_and_ip(api_factory, store_backend):
    for bus in ("memory", "redis"):
        api = await api_factory(bus=bus, login_attempts=3, login_window=60.0)
        await api.register(f"alice{bus}")
        for _ in range(3):
            status, _, _ = await api.call("POST", "/auth/login", json={"login": f"alice{bus}", "password": "wrong password"})
            assert status == 401
        status, body, resp = await api.call("POST", "/auth/login", json={"login": f"alice{bus}", "password": "correct horse"})
        assert status == 429 and body["error"]["code"] == "rate_limited"
        assert 1 <= int(resp.headers["Retry-After"]) <= 60


async def test_trusted_proxy_forwarded_for(api_factory):
    # Behind a trusted proxy each client address has its own budget; without trust, the header is ignored.
    api = await api_factory(login_attempts=2, trusted_proxies="127.0.0.1")
    await api.register("alice")
    for ip in ("203.0.113.1", "203.0.113.1"):
        status, _, _ = await api.call("POST", "/auth/login", json={"login": "nobody", "password": "x"}, headers={"X-Forwarded-For": ip})
        assert status == 401
    status, _, _ = await api.call("POST", "/auth/login", json={"login": "nobody2", "password": "x"}, headers={"X-Forwarded-For": "203.0.113.1"})
    assert status == 429
    status, _, _ = await api.call("POST", "/auth/login", json={"login": "alice", "password": "correct horse"}, headers={"X-Forwarded-For": "198.51.100.7"})
    assert status == 200
    # Not an address: the header is ignored, the client is the proxy's peer (127.0.0.1 here).
    status, _, _ = await api.call("POST", "/auth/login", json={"login": "nobody4", "password": "x"},
                                  headers={"X-Forwarded-For": "not-an-ip"})
    assert status == 401
    # A client cannot escape by forging the left part of the header: the proxy appends the real one.
    status, _, _ = await api.call("POST", "/auth/login", json={"login": "nobody3", "password": "x"},
                                  headers={"X-Forwarded-For": "1.2.3.4, 203.0.113.1"})
    assert status == 429


async def test_global_per_ip_limit(api_factory):
    api = await api_factory(api_rate_limit=10)
    statuses = [(await api.call("GET", "/users/nobody"))[0] for _ in range(12)]
    assert statuses[:10] == [404] * 10 and statuses[10:] == [429, 429]


# ---------------------------------------------------------------- avatars


def image_bytes(codec: str, width: int, height: int, fmt: str = "image2pipe") -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=1)
        stream.width, stream.height = width, height
        stream.pix_fmt = "rgb24" if codec == "png" else "yuvj420p"
        src = av.open(f"testsrc2=size={width}x{height}:rate=1", format="lavfi")
        frame = next(src.decode(video=0)).reformat(format=stream.pix_fmt)
        frame.pts, frame.time_base = 0, Fraction(1, 1)
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
        src.close()
    return buf.getvalue()


async def upload(api: API, token: str, data: bytes, field: str = "avatar"):
    form = aiohttp.FormData()
    form.add_field(field, data, filename="me.png", content_type="image/png")
    return await api.call("POST", "/users/avatar", token=token, data=form)


async def test_avatar_upload_is_reencoded(api):
    alice = await api.register("alice")
    status, body, _ = await upload(api, alice["access_token"], image_bytes("png", 640, 360))
    assert status == 200 and body["avatar"].startswith("/media/avatars/")
    async with api.http.get(f"http://127.0.0.1:{api.server.http_port}{body['avatar']}") as resp:
        assert resp.status == 200 and resp.content_type == "image/jpeg"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        jpeg = await resp.read()
    with av.open(io.BytesIO(jpeg)) as c:
        frame = next(c.decode(video=0))
        assert (frame.width, frame.height) == (256, 256)
    first = body["avatar"]
    status, body, _ = await upload(api, alice["access_token"], image_bytes("mjpeg", 320, 480))
    assert status == 200 and body["avatar"] != first
    async with api.http.get(f"http://127.0.0.1:{api.server.http_port}{first}") as resp:
        assert resp.status == 404  # the replaced file is gone


async def test_avatar_limits(api_factory):
    small_png = image_bytes("png", 160, 120)
    api = await api_factory(avatar_max_bytes=len(small_png) - 1)
    token = (await api.register("alice"))["access_token"]
    status, body, _ = await upload(api, token, b"this is not an image\n" * 10)
    assert status == 415 and "avatar" in body["error"]["fields"]
    status, body, _ = await upload(api, token, small_png)  # one byte over the size limit
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    status, body, _ = await upload(api, token, image_bytes("png", 16, 16), field="picture")
    assert status == 422 and "avatar" in body["error"]["fields"]
    status, body, _ = await api.call("POST", "/users/avatar", token=token, json={"avatar": "x"})
    assert status == 415
    pixels = await api_factory(avatar_max_pixels=100 * 100)
    token = (await pixels.register("bob"))["access_token"]
    status, body, _ = await upload(pixels, token, image_bytes("png", 120, 90))  # small file, too many pixels
    assert status == 413 and body["error"]["code"] == "image_too_large"


# ---------------------------------------------------------------- docs and secrets


async def test_openapi_document_and_swagger_ui(api):
    async with api.http.get(api.base + "/docs/openapi.json") as resp:
        spec = await resp.json()
    assert spec["openapi"].startswith("3.")
    assert "/api/v1/auth/login" in spec["paths"] and "/api/auth/login" not in spec["paths"]
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert "requestBody" in spec["paths"]["/api/v1/auth/register"]["post"]
    async with api.http.get(api.base + "/docs") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]


def test_secret_key_rules(tmp_path):
    with pytest.raises(ConfigError, match="production mode needs"):
        load_secret_key(Settings(production=True, data_dir=tmp_path))
    with pytest.raises(ConfigError, match="at least 32"):
        load_secret_key(Settings(secret_key="short", data_dir=tmp_path))
    with pytest.raises(ConfigError, match="at least 32"):
        load_secret_key(Settings(secret_key="a" * 40, data_dir=tmp_path))  # long but not random
    strong = secrets.token_hex(32)
    assert load_secret_key(Settings(production=True, secret_key=strong, data_dir=tmp_path)) == strong
    generated = load_secret_key(Settings(data_dir=tmp_path))
    assert len(generated) >= 32 and load_secret_key(Settings(data_dir=tmp_path)) == generated
    assert (tmp_path / "secret-key").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("rounds", [4, 6])
async def test_unknown_user_is_checked_against_a_hash_of_the_configured_cost(rounds):
    # A cheaper dummy hash would answer "no such user" faster than "wrong password".
    hashed = await dummy_hash(rounds)
    assert hashed.startswith(f"$2b${rounds:02d}$")
    assert await dummy_hash(rounds) == hashed
