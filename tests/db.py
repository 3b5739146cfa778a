"""Database fixtures: every `store` test runs against SQLite and PostgreSQL.

Loaded as a plugin: `pytest_plugins = ["tests.db"]` (in tests/conftest.py for every module;
tests/test_store.py also says it, which pytest ignores once the plugin is loaded).

PostgreSQL: one throwaway database per test session (CREATE DATABASE sfstream_test_<hex>
on the server of SFSTREAM_TEST_DATABASE_URL, dropped at the end); before each test every
table is emptied and the rows the migrations seeded are put back. If the server does not
answer, the postgres cases are skipped, or fail when CI=true.
SQLite: a new file in tmp_path per test.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from sfstream.store import Store, open_store

__all__ = [
    "pg_admin_url", "pg_session_database", "store_backend", "database_url", "store", "empty_database_url",
]

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
HOW_TO_ENABLE = "start PostgreSQL on 127.0.0.1:5432 or set SFSTREAM_TEST_DATABASE_URL"


def _run(coro):
    # Session fixtures are synchronous (pytest-asyncio gives each test its own loop), so their
    # async set-up runs on a private loop in a worker thread, away from the test loops.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """A PostgreSQL URL that may CREATE/DROP DATABASE, after checking the server answers."""
    url = os.environ.get("SFSTREAM_TEST_DATABASE_URL") or DEFAULT_PG_URL
    try:
        _run(_admin(url, "SELECT 1"))
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as exc:
        message = f"PostgreSQL does not answer on {url} ({exc!r}); {HOW_TO_ENABLE}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return url


def _create_database(admin_url: str) -> tuple[str, str]:
    name = f"sfstream_test_{secrets.token_hex(6)}"
    _run(_admin(admin_url, f'CREATE DATABASE "{name}"'))
    return name, _with_database(admin_url, name)


def _drop_database(admin_url: str, name: str) -> None:
    _run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _snapshot(url: str) -> list[tuple[str, list[str], list[asyncpg.Record]]]:
    """Every table (but schema_version) and its rows right after migrating: the seed data."""
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_version'"
        )
        out = []
        for (table,) in tables:
            query = await conn.prepare(f'SELECT * FROM "{table}"')
            out.append((table, [a.name for a in query.get_attributes()], await query.fetch()))
        return out
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_session_database(pg_admin_url, tmp_path_factory):
    """URL of a migrated throwaway database, and its seed rows (for resetting between tests)."""
    name, url = _create_database(pg_admin_url)
    try:
        async def migrate_and_snapshot():
            store = await open_store(url, data_dir=tmp_path_factory.getbasetemp(), pool_max=1)
            await store.close()
            return await _snapshot(url)

        seed = _run(migrate_and_snapshot())
        yield url, seed
    finally:
        _drop_database(pg_admin_url, name)


async def _reset(url: str, seed) -> None:
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            tables = ", ".join(f'"{table}"' for table, _, _ in seed)
            await conn.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
            for table, columns, rows in seed:
                if rows:
                    await conn.copy_records_to_table(table, records=rows, columns=columns)
                    # the seed rows carry explicit ids: move the identity past them
                    await conn.execute(
                        f"SELECT setval(pg_get_serial_sequence('\"{table}\"', 'id'), max(id)) FROM \"{table}\""
                    )
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
def store_backend(request) -> str:
    return request.param


@pytest.fixture
def database_url(store_backend, request, tmp_path) -> str:
    """A migrated database with only the seed rows in it, as a URL for open_store."""
    if store_backend == "sqlite":
        return f"sqlite:///{tmp_path / 'sfstream.db'}"
    url, seed = request.getfixturevalue("pg_session_database")
    _run(_reset(url, seed))
    return url


@pytest.fixture
async def store(database_url, tmp_path) -> Store:
    store = await open_store(database_url, data_dir=tmp_path)
    yield store
    await store.close()


@pytest.fixture
def empty_database_url(store_backend, request, tmp_path):
    """A database nobody has migrated yet (for migration tests)."""
    if store_backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    admin_url = request.getfixturevalue("pg_admin_url")
    name, url = _create_database(admin_url)
    try:
        yield url
    finally:
        _drop_database(admin_url, name)
