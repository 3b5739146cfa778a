"""PostgresStore: the production database, through an asyncpg connection pool."""
from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from .base import Conflict, NotFound, Store, StoreError, load_migrations, utc
from .models import RefreshToken, User

_USER_COLUMNS = "id, username, email, password_hash, avatar, bio, followers_count, is_admin, created_at, updated_at"
_TOKEN_COLUMNS = "id, family_id, user_id, token_hash, expires_at, created_at, used_at, revoked_at, user_agent, ip"

# pg_advisory_xact_lock key that serialises migrations of every sfstream process sharing
# the database (any constant; this one is b"sfstream" read as a signed 64-bit integer).
_MIGRATION_LOCK = int.from_bytes(b"sfstream", "big", signed=True)

# Unique constraints/indexes (named in the migrations) -> the field Conflict reports; the
# same names SQLiteStore reads from its error messages.
_CONFLICT_FIELDS = {
    "users_username_key": "username",
    "users_email_key": "email",
    "categories_name_key": "name",
    "refresh_tokens_token_hash_key": "token_hash",
    "streams_stream_key_hmac_key": "stream_key_hmac",
    "follows_follower_id_following_id_key": "follower_id,following_id",
}


def _user(row: asyncpg.Record | None) -> User | None:
    return None if row is None else User(**row)


def _token(row: asyncpg.Record | None) -> RefreshToken | None:
    return None if row is None else RefreshToken(**row)


def _integrity_error(exc: asyncpg.IntegrityConstraintViolationError) -> StoreError:
    if isinstance(exc, asyncpg.UniqueViolationError):
        return Conflict(_CONFLICT_FIELDS.get(exc.constraint_name or "", exc.constraint_name or "unknown"))
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        return NotFound("a referenced row does not exist")
    return StoreError(str(exc))


def _count(status: str) -> int:
    # asyncpg's execute() answers the command tag, e.g. "UPDATE 3" or "DELETE 0".
    return int(status.rsplit(" ", 1)[-1])


class PostgresStore(Store):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

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
    async def create_user(self, username: str, email: str, password_hash: str, *, is_admin: bool = False) -> User:
        return _user(await self._fetchrow(
            f"INSERT INTO users (username, email, password_hash, is_admin) VALUES ($1, $2, $3, $4) "
            f"RETURNING {_USER_COLUMNS}",
            username, email, password_hash, is_admin,
        ))

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
