"""SQLiteStore's channels, streams and statistics (a mixin of SQLiteStore)."""
from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

from .base import NotFound, now
from .models import Channel, Stream, StreamTotals
from .sqlite_common import _dt, _integrity_error, _ts

_CHANNEL_COLUMNS = (
    "user_id, stream_key_ciphertext, stream_key_hmac, title, description, category_id, is_private, "
    "created_at, updated_at, ladder"
)
_STREAM_SELECT = (
    "SELECT s.id, s.user_id, s.title, s.description, s.thumbnail, s.category_id, s.is_live, s.viewers_count, "
    "s.is_private, s.started_at, s.ended_at, s.created_at, s.updated_at, s.peak_viewers, s.unique_viewers, "
    "s.watch_seconds, u.username, u.avatar, c.name "
    "FROM streams s JOIN users u ON u.id = s.user_id LEFT JOIN categories c ON c.id = s.category_id"
)
_SORTS = {
    "viewers": "s.viewers_count DESC, s.started_at DESC, s.id DESC",
    "started": "s.started_at DESC, s.id DESC",
    "created": "s.created_at DESC, s.id DESC",
}
_CHANNEL_FIELDS = ("title", "description", "category_id", "is_private", "ladder")
_STREAM_FIELDS = ("title", "description", "category_id", "is_private", "thumbnail")


def _channel(row: sqlite3.Row | None) -> Channel | None:
    if row is None:
        return None
    return Channel(
        user_id=row[0], stream_key_ciphertext=bytes(row[1]), stream_key_hmac=row[2], title=row[3],
        description=row[4], category_id=row[5], is_private=bool(row[6]), created_at=_dt(row[7]),
        updated_at=_dt(row[8]), ladder=row[9],
    )


def _stream(row: sqlite3.Row | None) -> Stream | None:
    if row is None:
        return None
    return Stream(
        id=row[0], user_id=row[1], title=row[2], description=row[3], thumbnail=row[4], category_id=row[5],
        is_live=bool(row[6]), viewers_count=row[7], is_private=bool(row[8]), started_at=_dt(row[9]),
        ended_at=_dt(row[10]), created_at=_dt(row[11]), updated_at=_dt(row[12]), peak_viewers=row[13],
        unique_viewers=row[14], watch_seconds=float(row[15]), username=row[16], user_avatar=row[17],
        category_name=row[18],
    )


def _sql_value(column: str, value: Any) -> Any:
    return int(value) if column == "is_private" else value


class SQLiteStreams:
    async def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        async with self._lock:
            async with self._db.execute(sql, params) as cur:
                return await cur.fetchall()

    # --- channels ---
    async def get_channel(self, user_id: int) -> Channel | None:
        return _channel(await self._fetchone(f"SELECT {_CHANNEL_COLUMNS} FROM channels WHERE user_id = ?", (user_id,)))

    async def get_channel_by_key_hmac(self, key_hmac: str) -> Channel | None:
        return _channel(await self._fetchone(
            f"SELECT {_CHANNEL_COLUMNS} FROM channels WHERE stream_key_hmac = ?", (key_hmac,)
        ))

    async def set_channel_key(self, user_id: int, ciphertext: bytes, key_hmac: str, *, replace: bool = True) -> Channel:
        ts = _ts(now())
        on_conflict = (
            "DO UPDATE SET stream_key_ciphertext = excluded.stream_key_ciphertext, "
            "stream_key_hmac = excluded.stream_key_hmac, updated_at = excluded.updated_at"
            if replace else "DO NOTHING"
        )
        await self._write(
            f"INSERT INTO channels (user_id, stream_key_ciphertext, stream_key_hmac, created_at, updated_at) "
            f"VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id) {on_conflict}",
            (user_id, ciphertext, key_hmac, ts, ts),
        )
        return await self.get_channel(user_id)

    async def update_channel(self, user_id: int, changes: dict) -> Channel:
        values = {k: _sql_value(k, changes[k]) for k in _CHANNEL_FIELDS if k in changes}
        values["updated_at"] = _ts(now())
        assignments = ", ".join(f"{column} = ?" for column in values)  # our column names, not input
        row, _ = await self._write(
            f"UPDATE channels SET {assignments} WHERE user_id = ? RETURNING {_CHANNEL_COLUMNS}",
            (*values.values(), user_id),
        )
        if row is None:
            raise NotFound(f"channel of user {user_id}")
        return _channel(row)

    # --- streams ---
    async def prepare_stream(self, user_id: int, *, title: str, description: str,
                             category_id: int | None, is_private: bool) -> Stream:
        ts = _ts(now())
        async with self._transaction() as db:
            await db.execute(
                "DELETE FROM streams WHERE user_id = ? AND started_at IS NULL AND is_live = 0", (user_id,)
            )
            try:
                cur = await db.execute(
                    "INSERT INTO streams (user_id, title, description, category_id, is_private, created_at, "
                    "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (user_id, title, description, category_id, int(is_private), ts, ts),
                )
            except sqlite3.IntegrityError as exc:
                raise _integrity_error(exc) from exc
            stream_id = cur.lastrowid
        return await self.get_stream(stream_id)

    async def start_stream(self, user_id: int, at: datetime) -> Stream:
        ts = _ts(at)
        async with self._transaction() as db:
            async with db.execute("SELECT id FROM streams WHERE user_id = ? AND is_live = 1", (user_id,)) as cur:
                live = await cur.fetchone()
            if live is not None:
                stream_id = live[0]
            else:
                async with db.execute(
                    "SELECT id FROM streams WHERE user_id = ? AND started_at IS NULL AND is_live = 0 "
                    "ORDER BY id DESC LIMIT 1", (user_id,)
                ) as cur:
                    prepared = await cur.fetchone()
                if prepared is not None:
                    stream_id = prepared[0]
                    await db.execute(
                        "UPDATE streams SET is_live = 1, started_at = ?, updated_at = ? WHERE id = ?",
                        (ts, ts, stream_id),
                    )
                else:
                    # A new broadcast from the channel's defaults (empty ones without a channel).
                    cur = await db.execute(
                        "INSERT INTO streams (user_id, title, description, category_id, is_private, is_live, "
                        "started_at, created_at, updated_at) "
                        "SELECT u.id, coalesce(ch.title, ''), coalesce(ch.description, ''), ch.category_id, "
                        "coalesce(ch.is_private, 0), 1, ?, ?, ? "
                        "FROM users u LEFT JOIN channels ch ON ch.user_id = u.id WHERE u.id = ?",
                        (ts, ts, ts, user_id),
                    )
                    if cur.rowcount != 1:
                        raise NotFound(f"user {user_id}")
                    stream_id = cur.lastrowid
        return await self.get_stream(stream_id)

    async def end_stream(self, stream_id: int, at: datetime, *, unique_viewers: int,
                         watch_seconds: float) -> Stream | None:
        ts = _ts(at)
        _, count = await self._write(
            "UPDATE streams SET is_live = 0, ended_at = ?, updated_at = ?, viewers_count = 0, unique_viewers = ?, "
            "watch_seconds = ? WHERE id = ? AND is_live = 1",
            (ts, ts, unique_viewers, watch_seconds, stream_id),
        )
        return await self.get_stream(stream_id) if count == 1 else None

    async def get_stream(self, id: int) -> Stream | None:
        return _stream(await self._fetchone(f"{_STREAM_SELECT} WHERE s.id = ?", (id,)))

    async def get_live_stream_of(self, user_id: int) -> Stream | None:
        return _stream(await self._fetchone(f"{_STREAM_SELECT} WHERE s.user_id = ? AND s.is_live = 1", (user_id,)))

    async def update_stream(self, id: int, changes: dict) -> Stream:
        values = {k: _sql_value(k, changes[k]) for k in _STREAM_FIELDS if k in changes}
        values["updated_at"] = _ts(now())
        assignments = ", ".join(f"{column} = ?" for column in values)  # our column names, not input
        _, count = await self._write(f"UPDATE streams SET {assignments} WHERE id = ?", (*values.values(), id))
        if count != 1:
            raise NotFound(f"stream {id}")
        return await self.get_stream(id)

    async def delete_stream(self, id: int) -> bool:
        _, count = await self._write("DELETE FROM streams WHERE id = ?", (id,))
        return count == 1

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
        where, params = [], []
        if live is not None:
            where.append("s.is_live = ?")
            params.append(int(live))
        if user_id is not None:
            where.append("s.user_id = ?")
            params.append(user_id)
        if category_id is not None:
            where.append("s.category_id = ?")
            params.append(category_id)
        if search:
            # instr, not LIKE: no wildcard characters to escape in what the user typed
            where.append("instr(unicode_lower(s.title), unicode_lower(?)) > 0")
            params.append(search)
        if not include_private:
            where.append("(s.is_private = 0 OR s.user_id = ?)")
            params.append(include_private_of if include_private_of is not None else -1)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._rows(
            f"{_STREAM_SELECT}{clause} ORDER BY {_SORTS[sort]} LIMIT ? OFFSET ?", (*params, limit, offset)
        )
        total = (await self._fetchone(f"SELECT count(*) FROM streams s{clause}", tuple(params)))[0]
        return [_stream(r) for r in rows], total

    # --- statistics ---
    async def record_viewers(self, stream_id: int, at: datetime, viewers: int) -> None:
        ts = _ts(at)
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO stream_samples (stream_id, sampled_at, viewers) VALUES (?, ?, ?) "
                "ON CONFLICT (stream_id, sampled_at) DO UPDATE SET viewers = excluded.viewers",
                (stream_id, ts, viewers),
            )
            await db.execute(
                "UPDATE streams SET viewers_count = ?, peak_viewers = max(peak_viewers, ?) WHERE id = ? AND is_live = 1",
                (viewers, viewers, stream_id),
            )

    async def stream_samples(self, stream_id: int) -> list[tuple[datetime, int]]:
        rows = await self._rows(
            "SELECT sampled_at, viewers FROM stream_samples WHERE stream_id = ? ORDER BY sampled_at", (stream_id,)
        )
        return [(_dt(r[0]), r[1]) for r in rows]

    async def stream_totals(self, user_id: int) -> StreamTotals:
        row = await self._fetchone(
            "SELECT count(*), "
            "coalesce(sum((julianday(coalesce(ended_at, ?)) - julianday(started_at)) * 86400.0), 0), "
            "coalesce(sum(watch_seconds), 0), coalesce(max(peak_viewers), 0), coalesce(sum(unique_viewers), 0) "
            "FROM streams WHERE user_id = ? AND started_at IS NOT NULL",
            (_ts(now()), user_id),
        )
        return StreamTotals(broadcasts=row[0], live_seconds=float(row[1]), watch_seconds=float(row[2]),
                            peak_viewers=row[3], unique_viewers=row[4])

    async def follower_counts_by_day(self, user_id: int) -> list[tuple[str, int]]:
        rows = await self._rows(
            "SELECT substr(created_at, 1, 10) AS day, count(*) FROM follows WHERE following_id = ? "
            "GROUP BY day ORDER BY day", (user_id,)
        )
        return [(r[0], r[1]) for r in rows]
