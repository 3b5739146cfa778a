"""PostgresStore's channels, streams and statistics (a mixin of PostgresStore)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from .base import NotFound, utc
from .models import Channel, Stream, StreamTotals
from .postgres_common import _integrity_error

_CHANNEL_COLUMNS = (
    "user_id, stream_key_ciphertext, stream_key_hmac, title, description, category_id, is_private, "
    "created_at, updated_at, ladder"
)
_STREAM_SELECT = (
    "SELECT s.id, s.user_id, s.title, s.description, s.thumbnail, s.category_id, s.is_live, s.viewers_count, "
    "s.is_private, s.started_at, s.ended_at, s.created_at, s.updated_at, s.peak_viewers, s.unique_viewers, "
    "s.watch_seconds, u.username, u.avatar AS user_avatar, c.name AS category_name "
    "FROM streams s JOIN users u ON u.id = s.user_id LEFT JOIN categories c ON c.id = s.category_id"
)
_SORTS = {
    "viewers": "s.viewers_count DESC, s.started_at DESC NULLS LAST, s.id DESC",
    "started": "s.started_at DESC NULLS LAST, s.id DESC",
    "created": "s.created_at DESC, s.id DESC",
}
_CHANNEL_FIELDS = ("title", "description", "category_id", "is_private", "ladder")
_STREAM_FIELDS = ("title", "description", "category_id", "is_private", "thumbnail")


def _channel(row: asyncpg.Record | None) -> Channel | None:
    return None if row is None else Channel(**row)


def _stream(row: asyncpg.Record | None) -> Stream | None:
    return None if row is None else Stream(**row)


class PostgresStreams:
    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self._pool.fetch(sql, *args)

    # --- channels ---
    async def get_channel(self, user_id: int) -> Channel | None:
        return _channel(await self._fetchrow(f"SELECT {_CHANNEL_COLUMNS} FROM channels WHERE user_id = $1", user_id))

    async def get_channel_by_key_hmac(self, key_hmac: str) -> Channel | None:
        return _channel(await self._fetchrow(
            f"SELECT {_CHANNEL_COLUMNS} FROM channels WHERE stream_key_hmac = $1", key_hmac
        ))

    async def set_channel_key(self, user_id: int, ciphertext: bytes, key_hmac: str, *, replace: bool = True) -> Channel:
        on_conflict = (
            "DO UPDATE SET stream_key_ciphertext = excluded.stream_key_ciphertext, "
            "stream_key_hmac = excluded.stream_key_hmac, updated_at = now()"
            if replace else "DO NOTHING"
        )
        await self._execute(
            f"INSERT INTO channels (user_id, stream_key_ciphertext, stream_key_hmac) VALUES ($1, $2, $3) "
            f"ON CONFLICT (user_id) {on_conflict}",
            user_id, ciphertext, key_hmac,
        )
        return await self.get_channel(user_id)

    async def update_channel(self, user_id: int, changes: dict) -> Channel:
        values = {k: changes[k] for k in _CHANNEL_FIELDS if k in changes}
        assignments = "".join(f"{column} = ${i}, " for i, column in enumerate(values, 2))  # our names
        row = await self._fetchrow(
            f"UPDATE channels SET {assignments}updated_at = now() WHERE user_id = $1 RETURNING {_CHANNEL_COLUMNS}",
            user_id, *values.values(),
        )
        if row is None:
            raise NotFound(f"channel of user {user_id}")
        return _channel(row)

    # --- streams ---
    async def prepare_stream(self, user_id: int, *, title: str, description: str,
                             category_id: int | None, is_private: bool) -> Stream:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "DELETE FROM streams WHERE user_id = $1 AND started_at IS NULL AND NOT is_live", user_id
                )
                stream_id = await conn.fetchval(
                    "INSERT INTO streams (user_id, title, description, category_id, is_private) "
                    "VALUES ($1, $2, $3, $4, $5) RETURNING id",
                    user_id, title, description, category_id, is_private,
                )
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise _integrity_error(exc) from exc
        return await self.get_stream(stream_id)

    async def start_stream(self, user_id: int, at: datetime) -> Stream:
        at = utc(at)
        for _ in range(2):
            try:
                stream_id = await self._start_stream(user_id, at)
                break
            except asyncpg.UniqueViolationError:
                # Another process started this user's broadcast at the same moment
                # (streams_one_live_per_user): that one is the live stream.
                continue
        else:
            stream_id = (await self.get_live_stream_of(user_id)).id
        return await self.get_stream(stream_id)

    async def _start_stream(self, user_id: int, at: datetime) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            live = await conn.fetchval("SELECT id FROM streams WHERE user_id = $1 AND is_live", user_id)
            if live is not None:
                return live
            prepared = await conn.fetchval(
                "SELECT id FROM streams WHERE user_id = $1 AND started_at IS NULL AND NOT is_live "
                "ORDER BY id DESC LIMIT 1 FOR UPDATE", user_id
            )
            if prepared is not None:
                await conn.execute(
                    "UPDATE streams SET is_live = TRUE, started_at = $2, updated_at = $2 WHERE id = $1", prepared, at
                )
                return prepared
            # A new broadcast from the channel's defaults (empty ones without a channel).
            stream_id = await conn.fetchval(
                "INSERT INTO streams (user_id, title, description, category_id, is_private, is_live, started_at, "
                "created_at, updated_at) "
                "SELECT u.id, coalesce(ch.title, ''), coalesce(ch.description, ''), ch.category_id, "
                "coalesce(ch.is_private, FALSE), TRUE, $2, $2, $2 "
                "FROM users u LEFT JOIN channels ch ON ch.user_id = u.id WHERE u.id = $1 RETURNING id",
                user_id, at,
            )
            if stream_id is None:
                raise NotFound(f"user {user_id}")
            return stream_id

    async def end_stream(self, stream_id: int, at: datetime, *, unique_viewers: int,
                         watch_seconds: float) -> Stream | None:
        count = await self._execute(
            "UPDATE streams SET is_live = FALSE, ended_at = $2, updated_at = $2, viewers_count = 0, "
            "unique_viewers = $3, watch_seconds = $4 WHERE id = $1 AND is_live",
            stream_id, utc(at), unique_viewers, watch_seconds,
        )
        return await self.get_stream(stream_id) if count == 1 else None

    async def get_stream(self, id: int) -> Stream | None:
        return _stream(await self._fetchrow(f"{_STREAM_SELECT} WHERE s.id = $1", id))

    async def get_live_stream_of(self, user_id: int) -> Stream | None:
        return _stream(await self._fetchrow(f"{_STREAM_SELECT} WHERE s.user_id = $1 AND s.is_live", user_id))

    async def update_stream(self, id: int, changes: dict) -> Stream:
        values = {k: changes[k] for k in _STREAM_FIELDS if k in changes}
        assignments = "".join(f"{column} = ${i}, " for i, column in enumerate(values, 2))  # our names
        count = await self._execute(
            f"UPDATE streams SET {assignments}updated_at = now() WHERE id = $1", id, *values.values()
        )
        if count != 1:
            raise NotFound(f"stream {id}")
        return await self.get_stream(id)

    async def delete_stream(self, id: int) -> bool:
        return await self._execute("DELETE FROM streams WHERE id = $1", id) == 1

    async def list_streams(
        self,
        *,
        live: bool | None = None,
        user_id: int | None = None,
        category_id: int | None = None,
        search: str | None = None,
        include_private_of: int | None = None,
        include_private: bool = False,
        sort: str = "viewers",
        limit: int = 20,
        offset: int = 0,
    ) -> tuple[list[Stream], int]:
        where, args = [], []

        def arg(value) -> str:
            args.append(value)
            return f"${len(args)}"

        if live is not None:
            where.append(f"s.is_live = {arg(live)}")
        if user_id is not None:
            where.append(f"s.user_id = {arg(user_id)}")
        if category_id is not None:
            where.append(f"s.category_id = {arg(category_id)}")
        if search:
            # strpos, not LIKE: no wildcard characters to escape in what the user typed
            where.append(f"strpos(lower(s.title), lower({arg(search)})) > 0")
        if not include_private:
            owner = include_private_of if include_private_of is not None else -1
            where.append(f"(NOT s.is_private OR s.user_id = {arg(owner)})")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        total = await self._pool.fetchval(f"SELECT count(*) FROM streams s{clause}", *args)
        rows = await self._fetch(
            f"{_STREAM_SELECT}{clause} ORDER BY {_SORTS[sort]} LIMIT {arg(limit)} OFFSET {arg(offset)}", *args
        )
        return [_stream(r) for r in rows], total

    # --- statistics ---
    async def record_viewers(self, stream_id: int, at: datetime, viewers: int) -> None:
        at = utc(at)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO stream_samples (stream_id, sampled_at, viewers) VALUES ($1, $2, $3) "
                "ON CONFLICT (stream_id, sampled_at) DO UPDATE SET viewers = excluded.viewers",
                stream_id, at, viewers,
            )
            await conn.execute(
                "UPDATE streams SET viewers_count = $2, peak_viewers = greatest(peak_viewers, $2) "
                "WHERE id = $1 AND is_live", stream_id, viewers,
            )

    async def stream_samples(self, stream_id: int) -> list[tuple[datetime, int]]:
        rows = await self._fetch(
            "SELECT sampled_at, viewers FROM stream_samples WHERE stream_id = $1 ORDER BY sampled_at", stream_id
        )
        return [(r[0], r[1]) for r in rows]

    async def stream_totals(self, user_id: int) -> StreamTotals:
        row = await self._fetchrow(
            "SELECT count(*), "
            "coalesce(sum(extract(epoch FROM coalesce(ended_at, now()) - started_at)), 0)::float8, "
            "coalesce(sum(watch_seconds), 0)::float8, coalesce(max(peak_viewers), 0), "
            "coalesce(sum(unique_viewers), 0)::bigint "
            "FROM streams WHERE user_id = $1 AND started_at IS NOT NULL",
            user_id,
        )
        return StreamTotals(broadcasts=row[0], live_seconds=float(row[1]), watch_seconds=float(row[2]),
                            peak_viewers=row[3], unique_viewers=row[4])

    async def follower_counts_by_day(self, user_id: int) -> list[tuple[str, int]]:
        rows = await self._fetch(
            "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, count(*) FROM follows "
            "WHERE following_id = $1 GROUP BY day ORDER BY day", user_id,
        )
        return [(r[0], r[1]) for r in rows]
