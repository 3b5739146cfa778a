"""SQLiteStore: the zero-setup default database, one file in the data directory."""
from __future__ import annotations

import asyncio
import sqlite3
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, AsyncIterator

import aiosqlite

from .base import NotFound, Store, StoreError, load_migrations, now
from .models import Category, RefreshToken, User
from .sqlite_common import _dt, _integrity_error, _ts
from .sqlite_streams import SQLiteStreams

_USER_COLUMNS = "id, username, email, password_hash, avatar, bio, followers_count, is_admin, created_at, updated_at"
_TOKEN_COLUMNS = "id, family_id, user_id, token_hash, expires_at, created_at, used_at, revoked_at, user_agent, ip"


def _user(row: sqlite3.Row | None) -> User | None:
    if row is None:
        return None
    return User(
        id=row[0], username=row[1], email=row[2], password_hash=row[3], avatar=row[4], bio=row[5],
        followers_count=row[6], is_admin=bool(row[7]), created_at=_dt(row[8]), updated_at=_dt(row[9]),
    )


def _token(row: sqlite3.Row | None) -> RefreshToken | None:
    if row is None:
        return None
    return RefreshToken(
        id=row[0], family_id=row[1], user_id=row[2], token_hash=row[3], expires_at=_dt(row[4]),
        created_at=_dt(row[5]), used_at=_dt(row[6]), revoked_at=_dt(row[7]), user_agent=row[8], ip=row[9],
    )


_USER_COLUMNS_U = ", ".join(f"u.{column.strip()}" for column in _USER_COLUMNS.split(","))  # for joins
# A category's viewers are those of its public live streams now, summed at read time: the stored
# categories.viewers_count column would need updating on every viewer change. Without a
# thumbnail of its own, a category shows its most watched public live stream's.
# Written with the table's own name, not an alias: SQLite's RETURNING does not see aliases.
_CATEGORY_COLUMNS = (
    "categories.id, name, description, "
    "coalesce(thumbnail, (SELECT s.thumbnail FROM streams s WHERE s.category_id = categories.id AND s.is_live = 1 "
    "AND s.is_private = 0 AND s.thumbnail IS NOT NULL ORDER BY s.viewers_count DESC, s.id LIMIT 1)), "
    "(SELECT coalesce(sum(s.viewers_count), 0) FROM streams s "
    "WHERE s.category_id = categories.id AND s.is_live = 1 AND s.is_private = 0) AS live_viewers, created_at, updated_at"
)


def _category(row: sqlite3.Row | None) -> Category | None:
    if row is None:
        return None
    return Category(
        id=row[0], name=row[1], description=row[2], thumbnail=row[3], viewers_count=row[4],
        created_at=_dt(row[5]), updated_at=_dt(row[6]),
    )


def _split_statements(script: str) -> list[str]:
    # executescript() would COMMIT first, so a migration could not run inside our transaction;
    # sqlite3.complete_statement knows where each statement (even a trigger body) ends.
    statements, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            statements.append(buf.strip())
            buf = ""
    rest = " ".join(line for line in buf.splitlines() if not line.strip().startswith("--")).strip()
    if rest:
        raise StoreError(f"incomplete SQL statement at the end of a migration: {rest[:80]}")
    return statements


async def _enable_wal(db: aiosqlite.Connection, timeout: float) -> None:
    # Switching a new file to WAL needs an exclusive lock, and when another connection holds it
    # (two processes creating the database at once) SQLite answers "database is locked" at once,
    # without waiting on the busy timeout. The mode is stored in the file: later opens just see it.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or loop.time() > deadline:
                raise
            await asyncio.sleep(0.01)


def _unicode_lower(text):
    return text.lower() if isinstance(text, str) else text


class SQLiteStore(SQLiteStreams, Store):
    """One aiosqlite connection (its own thread). An asyncio.Lock serialises our use of it, so
    one coroutine's transaction never swallows another coroutine's statements."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path | str, *, busy_timeout: float = 10.0) -> SQLiteStore:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit BEGINs; single statements commit on their own and
        # transactions are explicit (BEGIN IMMEDIATE takes the write lock up front, so two
        # processes on one file queue on busy_timeout instead of failing mid-transaction).
        db = await aiosqlite.connect(str(path), isolation_level=None, timeout=busy_timeout)
        try:
            await db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            await _enable_wal(db, busy_timeout)  # readers do not block the writer
            await db.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; fsync per checkpoint, not per commit
            await db.execute("PRAGMA foreign_keys=ON")  # off by default in SQLite, per connection
            # SQLite's lower() folds ASCII only; searches must fold "École" like PostgreSQL does.
            await db.create_function("unicode_lower", 1, _unicode_lower, deterministic=True)
            store = cls(db)
            await store.migrate()
        except BaseException:
            await db.close()
            raise
        return store

    async def ping(self) -> None:
        await self._fetchone("SELECT 1")

    def pool_stats(self) -> tuple[int, int]:
        # One connection; "in use" while a coroutine holds it.
        return 1, int(self._lock.locked())

    async def close(self) -> None:
        await self._db.close()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    async def _fetchone(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Row | None:
        async with self._lock:
            async with self._db.execute(sql, params) as cur:
                return await cur.fetchone()

    async def _write(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[sqlite3.Row | None, int]:
        """Run one statement (it commits on its own); return its first row and rowcount."""
        async with self._lock:
            try:
                async with self._db.execute(sql, params) as cur:
                    row = await cur.fetchone()
                    # rowcount of an UPDATE ... RETURNING is final only once its rows are read
                    await cur.fetchall()
                    return row, cur.rowcount
            except sqlite3.IntegrityError as exc:
                raise _integrity_error(exc) from exc

    # --- lifecycle ---
    async def migrate(self) -> list[int]:
        # Each migration runs in one transaction. A later table rebuild must use
        # PRAGMA defer_foreign_keys=ON: PRAGMA foreign_keys cannot change inside a transaction.
        applied = []
        for mig in load_migrations("sqlite"):
            async with self._transaction() as db:
                await db.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version ("
                    "version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
                )
                async with db.execute("SELECT 1 FROM schema_version WHERE version = ?", (mig.version,)) as cur:
                    if await cur.fetchone():
                        continue
                for statement in _split_statements(mig.sql):
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (mig.version, _ts(now()))
                )
            applied.append(mig.version)
        return applied

    # --- users ---
    async def create_user(self, username: str, email: str, password_hash: str, *,
                          is_admin: bool | None = False) -> User:
        ts = _ts(now())
        # One statement: SQLite runs it under its write lock, so "no user yet" cannot change
        # between the check and the insert.
        row, _ = await self._write(
            f"INSERT INTO users (username, email, password_hash, is_admin, created_at, updated_at) "
            f"VALUES (?, ?, ?, coalesce(?, NOT EXISTS (SELECT 1 FROM users)), ?, ?) RETURNING {_USER_COLUMNS}",
            (username, email, password_hash, None if is_admin is None else int(is_admin), ts, ts),
        )
        return _user(row)

    async def get_user(self, id: int) -> User | None:
        return _user(await self._fetchone(f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?", (id,)))

    async def get_user_by_username(self, username: str) -> User | None:
        # The column is COLLATE NOCASE, so = compares case-insensitively and uses the unique index.
        return _user(await self._fetchone(f"SELECT {_USER_COLUMNS} FROM users WHERE username = ?", (username,)))

    async def get_user_by_login(self, login: str) -> User | None:
        return _user(await self._fetchone(
            f"SELECT {_USER_COLUMNS} FROM users WHERE username = ? OR email = ? "
            f"ORDER BY username = ? DESC LIMIT 1",
            (login, login, login),
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
        changes["updated_at"] = _ts(now())
        assignments = ", ".join(f"{column} = ?" for column in changes)  # column names are ours, not input
        row, _ = await self._write(
            f"UPDATE users SET {assignments} WHERE id = ? RETURNING {_USER_COLUMNS}", (*changes.values(), id)
        )
        if row is None:
            raise NotFound(f"user {id}")
        return _user(row)

    async def count_users(self) -> int:
        return (await self._fetchone("SELECT count(*) FROM users"))[0]

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
        row, _ = await self._write(
            f"INSERT INTO refresh_tokens (family_id, user_id, token_hash, expires_at, created_at, user_agent, ip) "
            f"VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING {_TOKEN_COLUMNS}",
            (family_id, user_id, token_hash, _ts(expires_at), _ts(now()), user_agent, ip),
        )
        return _token(row)

    async def get_refresh_token(self, token_hash: str) -> RefreshToken | None:
        return _token(await self._fetchone(
            f"SELECT {_TOKEN_COLUMNS} FROM refresh_tokens WHERE token_hash = ?", (token_hash,)
        ))

    async def use_refresh_token(self, token_hash: str) -> bool:
        # One conditional UPDATE is the whole check-and-set: SQLite runs it under its write lock,
        # so of any number of concurrent calls (any process) exactly one changes the row.
        _, count = await self._write(
            "UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL AND revoked_at IS NULL",
            (_ts(now()), token_hash),
        )
        return count == 1

    async def revoke_family(self, family_id: str) -> int:
        _, count = await self._write(
            "UPDATE refresh_tokens SET revoked_at = ? WHERE family_id = ? AND revoked_at IS NULL",
            (_ts(now()), family_id),
        )
        return count

    async def revoke_user_tokens(self, user_id: int, *, except_family: str | None = None) -> int:
        _, count = await self._write(
            "UPDATE refresh_tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL "
            "AND (? IS NULL OR family_id <> ?)",
            (_ts(now()), user_id, except_family, except_family),
        )
        return count

    async def delete_expired_tokens(self, now: datetime) -> int:
        _, count = await self._write("DELETE FROM refresh_tokens WHERE expires_at <= ?", (_ts(now),))
        return count

    # --- categories and follows ---
    async def list_categories(self, *, limit: int, offset: int) -> list[Category]:
        async with self._lock:
            async with self._db.execute(
                f"SELECT {_CATEGORY_COLUMNS} FROM categories "
                f"ORDER BY live_viewers DESC, name, id LIMIT ? OFFSET ?",  # name is COLLATE NOCASE
                (limit, offset),
            ) as cur:
                return [_category(row) for row in await cur.fetchall()]

    async def count_categories(self) -> int:
        return (await self._fetchone("SELECT count(*) FROM categories"))[0]

    async def get_category(self, id: int) -> Category | None:
        return _category(await self._fetchone(f"SELECT {_CATEGORY_COLUMNS} FROM categories WHERE id = ?", (id,)))

    async def create_category(self, name: str, description: str = "") -> Category:
        ts = _ts(now())
        row, _ = await self._write(
            f"INSERT INTO categories (name, description, created_at, updated_at) VALUES (?, ?, ?, ?) "
            f"RETURNING {_CATEGORY_COLUMNS}",
            (name, description, ts, ts),
        )
        return _category(row)

    async def update_category(self, id: int, *, name: str | None = None, description: str | None = None) -> Category:
        changes = {k: v for k, v in (("name", name), ("description", description)) if v is not None}
        changes["updated_at"] = _ts(now())
        assignments = ", ".join(f"{column} = ?" for column in changes)  # column names are ours, not input
        row, _ = await self._write(
            f"UPDATE categories SET {assignments} WHERE id = ? RETURNING {_CATEGORY_COLUMNS}",
            (*changes.values(), id),
        )
        if row is None:
            raise NotFound(f"category {id}")
        return _category(row)

    async def delete_category(self, id: int) -> bool:
        _, count = await self._write("DELETE FROM categories WHERE id = ?", (id,))
        return count == 1

    async def follow(self, follower_id: int, following_id: int) -> bool:
        if follower_id == following_id:
            raise ValueError("a user cannot follow themselves")
        # SQLite has no INSERT inside WITH: two statements in one write transaction instead.
        # BEGIN IMMEDIATE holds the write lock throughout, so no other connection (or process)
        # can slip a follow of the same pair between the INSERT and the count.
        try:
            async with self._transaction() as db:
                async with db.execute(
                    "INSERT INTO follows (follower_id, following_id, created_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (follower_id, following_id) DO NOTHING",
                    (follower_id, following_id, _ts(now())),
                ) as cur:
                    inserted = cur.rowcount == 1
                if inserted:
                    await db.execute(
                        "UPDATE users SET followers_count = followers_count + 1 WHERE id = ?", (following_id,)
                    )
        except sqlite3.IntegrityError as exc:
            raise _integrity_error(exc) from exc
        return inserted

    async def unfollow(self, follower_id: int, following_id: int) -> bool:
        async with self._transaction() as db:
            async with db.execute(
                "DELETE FROM follows WHERE follower_id = ? AND following_id = ?", (follower_id, following_id)
            ) as cur:
                deleted = cur.rowcount == 1
            if deleted:
                await db.execute(
                    "UPDATE users SET followers_count = followers_count - 1 WHERE id = ?", (following_id,)
                )
        return deleted

    async def is_following(self, follower_id: int, following_id: int) -> bool:
        return await self._fetchone(
            "SELECT 1 FROM follows WHERE follower_id = ? AND following_id = ?", (follower_id, following_id)
        ) is not None

    async def _follow_page(self, match: str, show: str, user_id: int, limit: int, offset: int):
        # Rows whose `match` column is user_id, as the users their `show` column names.
        async with self._lock:
            async with self._db.execute(
                f"SELECT {_USER_COLUMNS_U}, f.created_at FROM follows f JOIN users u ON u.id = f.{show} "
                f"WHERE f.{match} = ? ORDER BY f.created_at DESC, f.id DESC LIMIT ? OFFSET ?",
                (user_id, limit, offset),
            ) as cur:
                return [(_user(row), _dt(row[-1])) for row in await cur.fetchall()]

    async def list_followers(self, user_id: int, *, limit: int, offset: int) -> list[tuple[User, datetime]]:
        return await self._follow_page("following_id", "follower_id", user_id, limit, offset)

    async def list_following(self, user_id: int, *, limit: int, offset: int) -> list[tuple[User, datetime]]:
        return await self._follow_page("follower_id", "following_id", user_id, limit, offset)

    async def count_followers(self, user_id: int) -> int:
        return (await self._fetchone("SELECT count(*) FROM follows WHERE following_id = ?", (user_id,)))[0]

    async def count_following(self, user_id: int) -> int:
        return (await self._fetchone("SELECT count(*) FROM follows WHERE follower_id = ?", (user_id,)))[0]

    async def set_admin(self, user_id: int, is_admin: bool) -> User:
        row, _ = await self._write(
            f"UPDATE users SET is_admin = ?, updated_at = ? WHERE id = ? RETURNING {_USER_COLUMNS}",
            (int(is_admin), _ts(now()), user_id),
        )
        if row is None:
            raise NotFound(f"user {user_id}")
        return _user(row)
