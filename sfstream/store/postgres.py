"""PostgresStore: the production database, through an asyncpg connection pool."""
from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from .base import NotFound, Store, load_migrations, utc
from .models import Category, RefreshToken, User
from .postgres_common import _count, _integrity_error
from .postgres_streams import PostgresStreams

_USER_COLUMNS = "id, username, email, password_hash, avatar, bio, followers_count, is_admin, created_at, updated_at"
_TOKEN_COLUMNS = "id, family_id, user_id, token_hash, expires_at, created_at, used_at, revoked_at, user_agent, ip"

# pg_advisory_xact_lock key that serialises migrations of every sfstream process sharing
# the database (any constant; this one is b"sfstream" read as a signed 64-bit integer).
_MIGRATION_LOCK = int.from_bytes(b"sfstream", "big", signed=True)
_FIRST_USER_LOCK = _MIGRATION_LOCK + 1  # serialises "is this the first user?" decisions


def _user(row: asyncpg.Record | None) -> User | None:
    return None if row is None else User(**row)


def _token(row: asyncpg.Record | None) -> RefreshToken | None:
    return None if row is None else RefreshToken(**row)


_USER_COLUMNS_U = ", ".join(f"u.{column.strip()}" for column in _USER_COLUMNS.split(","))  # for joins
# A category's viewers are those of its public live streams now, summed at read time: the stored
# categories.viewers_count column would need updating on every viewer change. Without a
# thumbnail of its own, a category shows its most watched public live stream's.
_CATEGORY_COLUMNS = (
    "categories.id, name, description, "
    "coalesce(thumbnail, (SELECT s.thumbnail FROM streams s WHERE s.category_id = categories.id AND s.is_live "
    "AND NOT s.is_private AND s.thumbnail IS NOT NULL ORDER BY s.viewers_count DESC, s.id LIMIT 1)) AS thumbnail, "
    "(SELECT coalesce(sum(s.viewers_count), 0) FROM streams s "
    "WHERE s.category_id = categories.id AND s.is_live AND NOT s.is_private) AS viewers_count, created_at, updated_at"
)


def _category(row: asyncpg.Record | None) -> Category | None:
    return None if row is None else Category(**row)


class PostgresStore(PostgresStreams, Store):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")

    def pool_stats(self) -> tuple[int, int]:
        size = self._pool.get_size()
        return size, size - self._pool.get_idle_size()

    @classmethod
    async def open(cls, dsn: str, *, pool_min: int = 1, pool_max: int = 10) -> PostgresStore:
        pool = await asyncpg.create_pool(dsn, min_size=pool_min, max_size=pool_max)
        try:
            store = cls(pool)
            await store.migrate()
        except BaseException:
            await pool.close()
            raise
        return store

    async def close(self) -> None:
        await self._pool.close()

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        try:
            return await self._pool.fetchrow(sql, *args)
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise _integrity_error(exc) from exc

    async def _execute(self, sql: str, *args: Any) -> int:
        try:
            return _count(await self._pool.execute(sql, *args))
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise _integrity_error(exc) from exc

    # --- lifecycle ---
    async def migrate(self) -> list[int]:
        applied = []
        async with self._pool.acquire() as conn:
            for mig in load_migrations("postgres"):
                async with conn.transaction():
                    # Held until this transaction ends: a second process starting at the same
                    # time waits here, then sees the version recorded and skips it. Creating
                    # schema_version under the lock too avoids racing CREATE TABLE IF NOT EXISTS.
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                    await conn.execute(
                        "CREATE TABLE IF NOT EXISTS schema_version ("
                        "version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                    )
                    if await conn.fetchval("SELECT 1 FROM schema_version WHERE version = $1", mig.version):
                        continue
                    await conn.execute(mig.sql)  # no arguments: simple protocol, many statements
                    await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", mig.version)
                applied.append(mig.version)
        return applied

    # --- users ---
    async def create_user(self, username: str, email: str, password_hash: str, *,
                          is_admin: bool | None = False) -> User:
        sql = (f"INSERT INTO users (username, email, password_hash, is_admin) "
               f"VALUES ($1, $2, $3, coalesce($4, NOT EXISTS (SELECT 1 FROM users))) RETURNING {_USER_COLUMNS}")
        if is_admin is not None:
            return _user(await self._fetchrow(sql, username, email, password_hash, is_admin))
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                # Concurrent first registrations queue here; each INSERT then sees the rows
                # committed before it (READ COMMITTED takes a snapshot per statement).
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _FIRST_USER_LOCK)
                return _user(await conn.fetchrow(sql, username, email, password_hash, None))
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise _integrity_error(exc) from exc

    async def get_user(self, id: int) -> User | None:
        return _user(await self._fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1", id))

    async def get_user_by_username(self, username: str) -> User | None:
        return _user(await self._fetchrow(
            f"SELECT {_USER_COLUMNS} FROM users WHERE lower(username) = lower($1)", username
        ))

    async def get_user_by_login(self, login: str) -> User | None:
        return _user(await self._fetchrow(
            f"SELECT {_USER_COLUMNS} FROM users WHERE lower(username) = lower($1) OR lower(email) = lower($1) "
            f"ORDER BY lower(username) = lower($1) DESC LIMIT 1",
            login,
        ))

    async def update_user(
        self,
        id: int,
        *,
        email: str | None = None,
        bio: str | None = None,
        avatar: str | None = None,
        password_hash: str | None = None,
    ) -> User:
        changes = {k: v for k, v in
                   (("email", email), ("bio", bio), ("avatar", avatar), ("password_hash", password_hash))
                   if v is not None}
        assignments = "".join(f"{column} = ${i}, " for i, column in enumerate(changes, 2))  # our names, not input
        row = await self._fetchrow(
            f"UPDATE users SET {assignments}updated_at = now() WHERE id = $1 RETURNING {_USER_COLUMNS}",
            id, *changes.values(),
        )
        if row is None:
            raise NotFound(f"user {id}")
        return _user(row)

    async def count_users(self) -> int:
        return await self._pool.fetchval("SELECT count(*) FROM users")

    # --- refresh tokens ---
    async def add_refresh_token(
        self,
        *,
        family_id: str,
        user_id: int,
        token_hash: str,
        expires_at: datetime,
        user_agent: str = "",
        ip: str = "",
    ) -> RefreshToken:
        return _token(await self._fetchrow(
            f"INSERT INTO refresh_tokens (family_id, user_id, token_hash, expires_at, user_agent, ip) "
            f"VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_TOKEN_COLUMNS}",
            family_id, user_id, token_hash, utc(expires_at), user_agent, ip,
        ))

    async def get_refresh_token(self, token_hash: str) -> RefreshToken | None:
        return _token(await self._fetchrow(
            f"SELECT {_TOKEN_COLUMNS} FROM refresh_tokens WHERE token_hash = $1", token_hash
        ))

    async def use_refresh_token(self, token_hash: str) -> bool:
        # Race-free in one statement: a concurrent UPDATE of the same row waits for the first
        # to commit, then re-checks the WHERE clause on the new row version (READ COMMITTED),
        # finds used_at set and changes nothing.
        return await self._execute(
            "UPDATE refresh_tokens SET used_at = now() "
            "WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL",
            token_hash,
        ) == 1

    async def revoke_family(self, family_id: str) -> int:
        return await self._execute(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL", family_id
        )

    async def revoke_user_tokens(self, user_id: int, *, except_family: str | None = None) -> int:
        return await self._execute(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL "
            "AND family_id IS DISTINCT FROM $2",
            user_id, except_family,
        )

    async def delete_expired_tokens(self, now: datetime) -> int:
        return await self._execute("DELETE FROM refresh_tokens WHERE expires_at <= $1", utc(now))

    # --- categories and follows ---
    async def list_categories(self, *, limit: int, offset: int) -> list[Category]:
        rows = await self._pool.fetch(
            f"SELECT {_CATEGORY_COLUMNS} FROM categories "
            f"ORDER BY viewers_count DESC, lower(name), id LIMIT $1 OFFSET $2",
            limit, offset,
        )
        return [_category(row) for row in rows]

    async def count_categories(self) -> int:
        return await self._pool.fetchval("SELECT count(*) FROM categories")

    async def get_category(self, id: int) -> Category | None:
        return _category(await self._fetchrow(f"SELECT {_CATEGORY_COLUMNS} FROM categories WHERE id = $1", id))

    async def create_category(self, name: str, description: str = "") -> Category:
        return _category(await self._fetchrow(
            f"INSERT INTO categories (name, description) VALUES ($1, $2) RETURNING {_CATEGORY_COLUMNS}",
            name, description,
        ))

    async def update_category(self, id: int, *, name: str | None = None, description: str | None = None) -> Category:
        changes = {k: v for k, v in (("name", name), ("description", description)) if v is not None}
        assignments = "".join(f"{column} = ${i}, " for i, column in enumerate(changes, 2))  # our names, not input
        row = await self._fetchrow(
            f"UPDATE categories SET {assignments}updated_at = now() WHERE id = $1 RETURNING {_CATEGORY_COLUMNS}",
            id, *changes.values(),
        )
        if row is None:
            raise NotFound(f"category {id}")
        return _category(row)

    async def delete_category(self, id: int) -> bool:
        return await self._execute("DELETE FROM categories WHERE id = $1", id) == 1

    async def follow(self, follower_id: int, following_id: int) -> bool:
        if follower_id == following_id:
            raise ValueError("a user cannot follow themselves")
        # One statement: the counter moves only if the INSERT inserted. A concurrent follow of the
        # same pair waits on the unique index until this commits, then inserts nothing; the
        # UPDATE's row lock makes concurrent increments of one user add up.
        row = await self._fetchrow(
            "WITH inserted AS ("
            "  INSERT INTO follows (follower_id, following_id) VALUES ($1, $2)"
            "  ON CONFLICT (follower_id, following_id) DO NOTHING RETURNING following_id"
            ") UPDATE users SET followers_count = followers_count + 1 "
            "WHERE id = (SELECT following_id FROM inserted) RETURNING id",
            follower_id, following_id,
        )
        return row is not None

    async def unfollow(self, follower_id: int, following_id: int) -> bool:
        # A concurrent DELETE of the same row waits for this one, then finds nothing to delete.
        row = await self._fetchrow(
            "WITH deleted AS ("
            "  DELETE FROM follows WHERE follower_id = $1 AND following_id = $2 RETURNING following_id"
            ") UPDATE users SET followers_count = followers_count - 1 "
            "WHERE id = (SELECT following_id FROM deleted) RETURNING id",
            follower_id, following_id,
        )
        return row is not None

    async def is_following(self, follower_id: int, following_id: int) -> bool:
        return bool(await self._pool.fetchval(
            "SELECT 1 FROM follows WHERE follower_id = $1 AND following_id = $2", follower_id, following_id
        ))

    async def _follow_page(self, match: str, show: str, user_id: int, limit: int, offset: int):
        # Rows whose `match` column is user_id, as the users their `show` column names.
        rows = await self._pool.fetch(
            f"SELECT {_USER_COLUMNS_U}, f.created_at AS followed_at FROM follows f JOIN users u ON u.id = f.{show} "
            f"WHERE f.{match} = $1 ORDER BY f.created_at DESC, f.id DESC LIMIT $2 OFFSET $3",
            user_id, limit, offset,
        )
        return [(User(*tuple(row)[:-1]), row["followed_at"]) for row in rows]

    async def list_followers(self, user_id: int, *, limit: int, offset: int) -> list[tuple[User, datetime]]:
        return await self._follow_page("following_id", "follower_id", user_id, limit, offset)

    async def list_following(self, user_id: int, *, limit: int, offset: int) -> list[tuple[User, datetime]]:
        return await self._follow_page("follower_id", "following_id", user_id, limit, offset)

    async def count_followers(self, user_id: int) -> int:
        return await self._pool.fetchval("SELECT count(*) FROM follows WHERE following_id = $1", user_id)

    async def count_following(self, user_id: int) -> int:
        return await self._pool.fetchval("SELECT count(*) FROM follows WHERE follower_id = $1", user_id)

    async def set_admin(self, user_id: int, is_admin: bool) -> User:
        row = await self._fetchrow(
            f"UPDATE users SET is_admin = $2, updated_at = now() WHERE id = $1 RETURNING {_USER_COLUMNS}",
            user_id, is_admin,
        )
        if row is None:
            raise NotFound(f"user {user_id}")
        return _user(row)
