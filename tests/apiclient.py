"""An HTTP client for the API and the fixtures that start a server for it (SQLite and PostgreSQL,
in-process or Redis bus). Test modules import the fixtures by name."""
from __future__ import annotations

import os
import secrets

import aiohttp
import pytest

from sfstream.app import Server

from .conftest import make_settings

REDIS_URL = os.environ.get("SFSTREAM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class API:
    def __init__(self, server: Server, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = http
        self.base = f"http://127.0.0.1:{server.http_port}/api"

    async def call(self, method: str, path: str, *, token: str | None = None, **kwargs) -> tuple[int, dict, aiohttp.ClientResponse]:
        headers = kwargs.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with self.http.request(method, self.base + path, headers=headers, **kwargs) as resp:
            body = await resp.json() if resp.content_type == "application/json" else {}
            return resp.status, body, resp

    async def register(self, username="alice", email=None, password="correct horse") -> dict:
        status, body, _ = await self.call(
            "POST", "/auth/register", json={"username": username, "email": email or f"{username}@example.org", "password": password}
        )
        assert status == 201, body
        return body


@pytest.fixture
async def api_factory(tmp_path, database_url):
    servers, sessions = [], []

    async def start(bus: str = "memory", **overrides) -> API:
        settings = make_settings(
            tmp_path, database_url=database_url, bcrypt_rounds=4,
            redis_url=REDIS_URL if bus == "redis" else "",
            **{"redis_prefix": f"sfstream-test-{secrets.token_hex(4)}:", **overrides},
        )
        server = Server(settings)
        await server.start()
        servers.append(server)
        # A cookie jar that keeps cookies of 127.0.0.1 (aiohttp's default jar ignores IP hosts).
        http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        sessions.append(http)
        return API(server, http)

    yield start
    for http in sessions:
        await http.close()
    for server in servers:
        await server.stop()


@pytest.fixture
async def api(api_factory) -> API:
    return await api_factory()
