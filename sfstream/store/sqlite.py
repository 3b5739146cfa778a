"""SQLiteStore: the zero-setup default database, one file in the data directory."""
from __future__ import annotations

import asyncio
import re
import sqlite3
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import aiosqlite

from .base import Conflict, NotFound, Store, StoreError, load_migrations, now, utc
from .models import RefreshToken, User

_USER_COLUMNS = "id, username, email, password_hash, avatar, bio, followers_count, is_admin, created_at, updated_at"
_TOKEN_COLUMNS = "id, family_id, user_id, token_hash, expires_at, created_at, used_at, revoked_at, user_agent, ip"


def _ts(dt: datetime) -> str:
    # Fixed-width UTC text, the format of the schema's defaults: string order is time order.
    return utc(dt).strftime("%Y-%m-%d %H:%M:%S.%f")


def _dt(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


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


def _integrity_error(exc: sqlite3.IntegrityError) -> StoreError:
    # "UNIQUE constraint failed: users.email" -> Conflict("email"): the same field names that
    # PostgresStore derives from its constraint names.
    m = re.match(r"UNIQUE constraint failed: (.+)", str(exc))
    if m:
        return Conflict(",".join(col.split(".")[-1].strip() for col in m[1].split(",")))
    if str(exc).startswith("FOREIGN KEY"):
        return NotFound("a referenced row does not exist")
    return StoreError(str(exc))


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


class SQLiteStore(Store):
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
            store = cls(db)
            await store.migrate()
        except BaseException:
            await db.close()
            raise
        return store

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
    async def create_user(self, username: str, email: str, password_hash: str, *, is_admin: bool = False) -> User:
        ts = _ts(now())
        row, _ = await self._write(
            f"INSERT INTO users (username, email, password_hash, is_admin, created_at, updated_at) "
            f"VALUES (?, ?, ?, ?, ?, ?) RETURNING {_USER_COLUMNS}",
            (username, email, password_hash, int(is_admin), ts, ts),
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
