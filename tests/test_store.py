"""The storage layer: one suite, run against SQLite and PostgreSQL (fixtures in tests/db.py)."""
from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime, timedelta, timezone

import asyncpg
import pytest

from sfstream.store import Conflict, NotFound, Store, open_store
from sfstream.store.postgres import PostgresStore
from sfstream.store.sqlite import SQLiteStore

# The fixtures (store, database_url, ...); harmless once tests/conftest.py loads them too.


# What the databases raise when a constraint refuses a raw statement.
INTEGRITY_ERRORS = (sqlite3.IntegrityError, asyncpg.IntegrityConstraintViolationError)

SEEDED_CATEGORIES = {"Just Chatting", "Gaming", "Music", "Art", "Science & Technology"}


async def raw_execute(store: Store, sql: str, *args) -> list[tuple]:
    """Run one SQL statement with `?` placeholders on the store's own connection, bypassing the
    repository (to look at tables whose methods do not exist yet); return its rows."""
    if isinstance(store, PostgresStore):
        parts = sql.split("?")
        sql = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
        return [tuple(row) for row in await store._pool.fetch(sql, *args)]
    if isinstance(store, SQLiteStore):
        async with store._lock:
            return [tuple(row) for row in await store._db.execute_fetchall(sql, args)]
    raise TypeError(type(store))


def is_utc(dt: datetime) -> bool:
    return dt.tzinfo is not None and dt.utcoffset() == timedelta(0)


async def add_token(store: Store, user_id: int, token_hash: str, family_id: str = "fam", *, expires_in: float = 3600):
    return await store.add_refresh_token(
        family_id=family_id,
        user_id=user_id,
        token_hash=token_hash,
        expires_at=datetime.now(timezone.utc) + timedelta(seconds=expires_in),
        user_agent="pytest",
        ip="127.0.0.1",
    )


# --- users ---

async def test_create_and_get_user(store):
    user = await store.create_user("Alice", "Alice@Example.com", "hash-1")
    assert (user.username, user.email, user.password_hash) == ("Alice", "Alice@Example.com", "hash-1")
    assert (user.avatar, user.bio, user.followers_count, user.is_admin) == (None, "", 0, False)
    assert isinstance(user.id, int)
    assert is_utc(user.created_at) and is_utc(user.updated_at)
    assert abs(user.created_at - datetime.now(timezone.utc)) < timedelta(minutes=1)

    assert await store.get_user(user.id) == user
    assert await store.get_user_by_username("alice") == user
    assert await store.get_user_by_username("ALICE") == user
    assert await store.get_user(user.id + 1000) is None
    assert await store.get_user_by_username("bob") is None
    assert await store.count_users() == 1

    admin = await store.create_user("root", "root@example.com", "hash-2", is_admin=True)
    assert admin.is_admin is True and admin.id != user.id
    assert await store.count_users() == 2


async def test_username_and_email_unique_case_insensitively(store):
    await store.create_user("alice", "alice@example.com", "h")
    with pytest.raises(Conflict) as exc:
        await store.create_user("ALICE", "other@example.com", "h")
    assert exc.value.field == "username"
    with pytest.raises(Conflict) as exc:
        await store.create_user("bob", "ALICE@example.COM", "h")
    assert exc.value.field == "email"
    assert await store.count_users() == 1


async def test_login_by_username_or_email(store):
    alice = await store.create_user("alice", "alice@example.com", "h")
    bob = await store.create_user("bob", "bob@example.com", "h")
    assert await store.get_user_by_login("ALICE") == alice
    assert await store.get_user_by_login("Bob@Example.com") == bob
    assert await store.get_user_by_login("carol") is None
    assert await store.get_user_by_login("carol@example.com") is None


async def test_login_prefers_username_over_another_users_email(store):
    # Only possible if usernames may contain "@"; the rule is still deterministic.
    named = await store.create_user("x@example.com", "one@example.com", "h")
    await store.create_user("two", "X@example.com", "h")
    assert await store.get_user_by_login("x@EXAMPLE.com") == named


async def test_update_user(store):
    user = await store.create_user("alice", "alice@example.com", "h")
    updated = await store.update_user(user.id, bio="hello")
    assert updated.bio == "hello"
    assert (updated.email, updated.avatar, updated.password_hash) == (user.email, user.avatar, user.password_hash)
    assert updated.created_at == user.created_at
    assert updated.updated_at > user.updated_at

    updated = await store.update_user(user.id, avatar="avatars/1.png", password_hash="h2", email="ALICE@example.com")
    assert (updated.avatar, updated.password_hash, updated.email, updated.bio) == (
        "avatars/1.png", "h2", "ALICE@example.com", "hello"
    )
    assert await store.get_user(user.id) == updated

    await store.create_user("bob", "bob@example.com", "h")
    with pytest.raises(Conflict) as exc:
        await store.update_user(user.id, email="BOB@example.com")
    assert exc.value.field == "email"
    assert (await store.get_user(user.id)).email == "ALICE@example.com"

    with pytest.raises(NotFound):
        await store.update_user(user.id + 1000, bio="x")


# --- refresh tokens ---

async def test_refresh_token_lifecycle(store):
    user = await store.create_user("alice", "alice@example.com", "h")
    expires = datetime.now(timezone.utc) + timedelta(days=30)
    token = await store.add_refresh_token(
        family_id="fam-1", user_id=user.id, token_hash="hash-a", expires_at=expires, user_agent="UA", ip="10.0.0.1"
    )
    assert (token.family_id, token.user_id, token.token_hash, token.user_agent, token.ip) == (
        "fam-1", user.id, "hash-a", "UA", "10.0.0.1"
    )
    assert token.expires_at == expires and is_utc(token.expires_at) and is_utc(token.created_at)
    assert token.used_at is None and token.revoked_at is None
    assert await store.get_refresh_token("hash-a") == token
    assert await store.get_refresh_token("nope") is None

    assert await store.use_refresh_token("hash-a") is True
    used = await store.get_refresh_token("hash-a")
    assert used.used_at is not None and is_utc(used.used_at) and used.revoked_at is None
    assert await store.use_refresh_token("hash-a") is False  # reuse
    assert await store.use_refresh_token("nope") is False

    await add_token(store, user.id, "hash-b", "fam-2")
    await store.revoke_family("fam-2")
    assert await store.use_refresh_token("hash-b") is False  # revoked


async def test_refresh_token_expiry_keeps_timezone(store):
    user = await store.create_user("alice", "alice@example.com", "h")
    # an aware datetime in another zone is stored as the same instant
    expires = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=-5)))
    token = await store.add_refresh_token(family_id="f", user_id=user.id, token_hash="t", expires_at=expires)
    assert token.expires_at == expires and is_utc(token.expires_at)
    with pytest.raises(ValueError):
        await store.add_refresh_token(family_id="f", user_id=user.id, token_hash="t2", expires_at=datetime(2031, 1, 1))


async def test_refresh_token_constraints(store):
    user = await store.create_user("alice", "alice@example.com", "h")
    await add_token(store, user.id, "dup")
    with pytest.raises(Conflict) as exc:
        await add_token(store, user.id, "dup")
    assert exc.value.field == "token_hash"
    with pytest.raises(NotFound):
        await add_token(store, user.id + 1000, "orphan")


async def test_use_refresh_token_is_race_free(store, database_url, tmp_path):
    """20 concurrent uses of one token, over two stores (as two processes would) -> exactly one wins."""
    user = await store.create_user("alice", "alice@example.com", "h")
    await add_token(store, user.id, "contested")
    async with await open_store(database_url, data_dir=tmp_path) as other:
        results = await asyncio.gather(
            *((store if i % 2 else other).use_refresh_token("contested") for i in range(20))
        )
    assert sorted(results) == [False] * 19 + [True]


async def test_use_refresh_token_race_free_on_one_store(store):
    user = await store.create_user("alice", "alice@example.com", "h")
    await add_token(store, user.id, "contested")
    results = await asyncio.gather(*(store.use_refresh_token("contested") for _ in range(20)))
    assert results.count(True) == 1 and results.count(False) == 19


async def test_revoke_family(store):
    user = await store.create_user("alice", "alice@example.com", "h")
    for hash_, family in (("a1", "A"), ("a2", "A"), ("b1", "B")):
        await add_token(store, user.id, hash_, family)
    assert await store.revoke_family("A") == 2
    assert (await store.get_refresh_token("a1")).revoked_at is not None
    assert (await store.get_refresh_token("a2")).revoked_at is not None
    assert (await store.get_refresh_token("b1")).revoked_at is None
    assert await store.revoke_family("A") == 0  # already revoked: revoked_at is kept
    assert await store.use_refresh_token("b1") is True


async def test_revoke_user_tokens(store):
    alice = await store.create_user("alice", "alice@example.com", "h")
    bob = await store.create_user("bob", "bob@example.com", "h")
    for hash_, family in (("a", "A"), ("b", "B"), ("c", "C"), ("c2", "C")):
        await add_token(store, alice.id, hash_, family)
    await add_token(store, bob.id, "d", "D")

    assert await store.revoke_user_tokens(alice.id, except_family="B") == 3
    revoked = {h: (await store.get_refresh_token(h)).revoked_at is not None for h in ("a", "b", "c", "c2", "d")}
    assert revoked == {"a": True, "b": False, "c": True, "c2": True, "d": False}

    assert await store.revoke_user_tokens(alice.id) == 1
    assert (await store.get_refresh_token("b")).revoked_at is not None
    assert (await store.get_refresh_token("d")).revoked_at is None


async def test_delete_expired_tokens(store):
    user = await store.create_user("alice", "alice@example.com", "h")
    now = datetime.now(timezone.utc)
    for hash_, expires in (("old", now - timedelta(hours=1)), ("edge", now), ("fresh", now + timedelta(hours=1))):
        await store.add_refresh_token(family_id="f", user_id=user.id, token_hash=hash_, expires_at=expires)
    assert await store.delete_expired_tokens(now) == 2
    assert await store.get_refresh_token("old") is None
    assert await store.get_refresh_token("edge") is None
    assert await store.get_refresh_token("fresh") is not None
    assert await store.delete_expired_tokens(now) == 0


# --- schema and migrations ---

async def test_seeded_categories(store):
    rows = await raw_execute(store, "SELECT name, viewers_count FROM categories")
    assert {name for name, _ in rows} == SEEDED_CATEGORIES
    assert all(count == 0 for _, count in rows)


async def test_migrations_recorded_and_idempotent(store, database_url, tmp_path):
    versions = await raw_execute(store, "SELECT version, applied_at FROM schema_version")
    assert sorted(v for v, _ in versions) == [1, 2, 3]
    assert all(applied_at is not None for _, applied_at in versions)
    assert await store.migrate() == []
    async with await open_store(database_url, data_dir=tmp_path) as again:  # a second start-up
        assert await again.migrate() == []
    assert sorted(await raw_execute(store, "SELECT version FROM schema_version")) == [(1,), (2,), (3,)]
    assert len(await raw_execute(store, "SELECT id FROM categories")) == len(SEEDED_CATEGORIES)


async def test_concurrent_first_start_applies_migrations_once(empty_database_url, tmp_path):
    stores = await asyncio.gather(*(open_store(empty_database_url, data_dir=tmp_path) for _ in range(3)))
    try:
        assert sorted(await raw_execute(stores[0], "SELECT version FROM schema_version")) == [(1,), (2,), (3,)]
        assert len(await raw_execute(stores[0], "SELECT id FROM categories")) == len(SEEDED_CATEGORIES)
    finally:
        for s in stores:
            await s.close()


async def test_follow_constraints(store):
    alice = await store.create_user("alice", "alice@example.com", "h")
    bob = await store.create_user("bob", "bob@example.com", "h")
    insert = "INSERT INTO follows (follower_id, following_id) VALUES (?, ?)"
    await raw_execute(store, insert, alice.id, bob.id)
    await raw_execute(store, insert, bob.id, alice.id)
    with pytest.raises(INTEGRITY_ERRORS):  # unique pair
        await raw_execute(store, insert, alice.id, bob.id)
    with pytest.raises(INTEGRITY_ERRORS):  # no self-follow
        await raw_execute(store, insert, alice.id, alice.id)
    with pytest.raises(INTEGRITY_ERRORS):  # foreign key (SQLite: proves PRAGMA foreign_keys is on)
        await raw_execute(store, insert, alice.id, bob.id + 1000)
    assert len(await raw_execute(store, "SELECT id FROM follows")) == 2


async def test_deleting_a_user_cascades(store):
    alice = await store.create_user("alice", "alice@example.com", "h")
    bob = await store.create_user("bob", "bob@example.com", "h")
    await raw_execute(store, "INSERT INTO follows (follower_id, following_id) VALUES (?, ?)", alice.id, bob.id)
    await add_token(store, bob.id, "bob-token")
    await raw_execute(store, "DELETE FROM users WHERE id = ?", bob.id)
    assert await raw_execute(store, "SELECT id FROM follows") == []
    assert await store.get_refresh_token("bob-token") is None


async def test_channel_constraints(store):
    alice = await store.create_user("alice", "alice@example.com", "h")
    bob = await store.create_user("bob", "bob@example.com", "h")
    insert = "INSERT INTO channels (user_id, stream_key_hmac, stream_key_ciphertext) VALUES (?, ?, ?)"
    await raw_execute(store, insert, alice.id, "hmac-1", b"\x00secret")
    with pytest.raises(INTEGRITY_ERRORS):  # a key belongs to one channel
        await raw_execute(store, insert, bob.id, "hmac-1", b"other")
    with pytest.raises(INTEGRITY_ERRORS):  # one channel per user
        await raw_execute(store, insert, alice.id, "hmac-2", b"other")
    rows = await raw_execute(store, "SELECT stream_key_ciphertext FROM channels WHERE stream_key_hmac = ?", "hmac-1")
    assert rows == [(b"\x00secret",)]


# --- open_store ---

async def test_open_store_default_sqlite_file(tmp_path):
    async with await open_store("", data_dir=tmp_path / "data") as store:
        await store.create_user("alice", "alice@example.com", "h")
    assert (tmp_path / "data" / "sfstream.db").is_file()
    async with await open_store(f"sqlite:///{tmp_path / 'data' / 'sfstream.db'}", data_dir=tmp_path) as store:
        assert await store.count_users() == 1


async def test_open_store_rejects_unknown_scheme(tmp_path):
    with pytest.raises(ValueError, match="mysql"):
        await open_store("mysql://localhost/db", data_dir=tmp_path)


# --- categories and follows ---

async def test_categories_crud(store):
    seeded = await store.list_categories(limit=100, offset=0)
    assert {c.name for c in seeded} == SEEDED_CATEGORIES and await store.count_categories() == 5
    cooking = await store.create_category("Cooking", "Food, live.")
    assert (cooking.name, cooking.description, cooking.thumbnail) == ("Cooking", "Food, live.", None)
    assert cooking.viewers_count == 0
    assert is_utc(cooking.created_at) and await store.get_category(cooking.id) == cooking
    assert await store.get_category(cooking.id + 1000) is None
    with pytest.raises(Conflict) as exc:
        await store.create_category("COOKING")
    assert exc.value.field == "name"

    renamed = await store.update_category(cooking.id, name="Cooking & Baking")
    assert (renamed.name, renamed.description) == ("Cooking & Baking", "Food, live.")
    assert renamed.updated_at >= cooking.updated_at and renamed.created_at == cooking.created_at
    assert (await store.update_category(cooking.id, description="")).description == ""
    with pytest.raises(Conflict) as exc:
        await store.update_category(cooking.id, name="gaming")
    assert exc.value.field == "name"
    with pytest.raises(NotFound):
        await store.update_category(cooking.id + 1000, name="x")

    assert await store.delete_category(cooking.id) is True
    assert await store.delete_category(cooking.id) is False
    assert await store.get_category(cooking.id) is None and await store.count_categories() == 5


async def test_category_viewers_are_summed_from_live_streams(store):
    ids = {c.name: c.id for c in await store.list_categories(limit=100, offset=0)}
    users = [await store.create_user(f"u{i}", f"u{i}@example.com", "h") for i in range(4)]
    insert = "INSERT INTO streams (user_id, category_id, is_live, viewers_count) VALUES (?, ?, ?, ?)"
    await raw_execute(store, insert, users[0].id, ids["Music"], True, 10)
    await raw_execute(store, insert, users[1].id, ids["Music"], True, 5)
    await raw_execute(store, insert, users[2].id, ids["Music"], False, 1000)  # ended: not counted
    await raw_execute(store, insert, users[3].id, ids["Art"], True, 7)
    await raw_execute(store, insert, users[2].id, None, True, 50)  # no category

    page = await store.list_categories(limit=100, offset=0)
    assert [(c.name, c.viewers_count) for c in page] == [
        ("Music", 15), ("Art", 7), ("Gaming", 0), ("Just Chatting", 0), ("Science & Technology", 0),
    ]
    assert (await store.get_category(ids["Music"])).viewers_count == 15
    assert [c.name for c in await store.list_categories(limit=2, offset=1)] == ["Art", "Gaming"]
    assert await store.list_categories(limit=10, offset=5) == []
    # Deleting a category leaves its streams, uncategorised.
    assert await store.delete_category(ids["Music"])
    assert await raw_execute(store, "SELECT count(*) FROM streams WHERE category_id IS NULL") == [(4,)]


async def test_follow_unfollow_and_lists(store):
    alice, bob, carol = [await store.create_user(n, f"{n}@example.com", "h") for n in ("alice", "bob", "carol")]
    assert await store.follow(alice.id, bob.id) is True
    assert await store.follow(alice.id, bob.id) is False  # idempotent: counted once
    assert await store.follow(carol.id, bob.id) is True
    assert await store.follow(bob.id, alice.id) is True
    assert (await store.get_user(bob.id)).followers_count == 2
    assert await store.is_following(alice.id, bob.id) and not await store.is_following(alice.id, carol.id)

    followers = await store.list_followers(bob.id, limit=10, offset=0)
    assert [u.username for u, _ in followers] == ["carol", "alice"]  # newest first
    assert all(is_utc(at) for _, at in followers) and followers[0][1] >= followers[1][1]
    assert [u.username for u, _ in await store.list_followers(bob.id, limit=1, offset=1)] == ["alice"]
    following = await store.list_following(alice.id, limit=10, offset=0)
    assert [(u.username, u.followers_count) for u, _ in following] == [("bob", 2)]
    assert (await store.count_followers(bob.id), await store.count_following(bob.id)) == (2, 1)

    assert await store.unfollow(alice.id, bob.id) is True
    assert await store.unfollow(alice.id, bob.id) is False  # idempotent: never below the truth
    assert (await store.get_user(bob.id)).followers_count == 1 == await store.count_followers(bob.id)
    assert not await store.is_following(alice.id, bob.id)

    with pytest.raises(ValueError):
        await store.follow(alice.id, alice.id)
    with pytest.raises(NotFound):
        await store.follow(alice.id, carol.id + 1000)
    assert await store.unfollow(alice.id, carol.id + 1000) is False


async def test_concurrent_follows_keep_followers_count_exact(store, database_url, tmp_path):
    # Two stores on one database (two processes' worth of connections), every follow sent twice.
    async with await open_store(database_url, data_dir=tmp_path) as other:
        star = await store.create_user("star", "star@example.com", "h")
        fans = [await store.create_user(f"fan{i}", f"fan{i}@example.com", "h") for i in range(20)]
        results = await asyncio.gather(*(s.follow(fan.id, star.id) for fan in fans for s in (store, other)))
        assert sum(results) == 20
        assert (await store.get_user(star.id)).followers_count == 20 == await store.count_followers(star.id)

        results = await asyncio.gather(*(s.unfollow(fan.id, star.id) for fan in fans[:15] for s in (other, store)))
        assert sum(results) == 15
        assert (await store.get_user(star.id)).followers_count == 5 == await store.count_followers(star.id)


async def test_set_admin(store):
    alice = await store.create_user("alice", "alice@example.com", "h")
    promoted = await store.set_admin(alice.id, True)
    assert promoted.is_admin and promoted.updated_at >= alice.updated_at
    assert (await store.set_admin(alice.id, False)).is_admin is False
    with pytest.raises(NotFound):
        await store.set_admin(alice.id + 1000, True)
