"""Channels (stream keys, defaults), broadcasts and their statistics, on SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from sfstream.store import NotFound

from .test_store import raw_execute

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


async def _category(store, name="Gaming") -> int:
    return (await raw_execute(store, "SELECT id FROM categories WHERE name = ?", name))[0][0]


async def test_channel_key_create_keep_replace_and_lookup(store):
    alice = await store.create_user("alice", "alice@example.com", "h")
    ch = await store.set_channel_key(alice.id, b"sealed-1", "hmac-1")
    assert (ch.user_id, ch.stream_key_ciphertext, ch.stream_key_hmac) == (alice.id, b"sealed-1", "hmac-1")
    # replace=False: a racing second "first GET" keeps the key that won
    assert (await store.set_channel_key(alice.id, b"sealed-2", "hmac-2", replace=False)).stream_key_hmac == "hmac-1"
    assert (await store.set_channel_key(alice.id, b"sealed-3", "hmac-3")).stream_key_ciphertext == b"sealed-3"
    assert await store.get_channel_by_key_hmac("hmac-1") is None  # the old key is gone at once
    assert (await store.get_channel_by_key_hmac("hmac-3")).user_id == alice.id
    assert await store.get_channel(alice.id + 99) is None


async def test_channel_defaults_update(store):
    alice = await store.create_user("alice", "alice@example.com", "h")
    with pytest.raises(NotFound):
        await store.update_channel(alice.id, {"title": "x"})
    await store.set_channel_key(alice.id, b"s", "h1")
    gaming = await _category(store)
    ch = await store.update_channel(alice.id, {"title": "Speedruns", "category_id": gaming, "is_private": True})
    assert (ch.title, ch.category_id, ch.is_private, ch.description) == ("Speedruns", gaming, True, "")
    ch = await store.update_channel(alice.id, {"category_id": None})
    assert ch.category_id is None and ch.title == "Speedruns"
    with pytest.raises(NotFound):  # unknown category
        await store.update_channel(alice.id, {"category_id": gaming + 1000})


async def test_broadcast_lifecycle(store):
    alice = await store.create_user("alice", "alice@example.com", "h")
    await store.set_channel_key(alice.id, b"s", "h1")
    gaming = await _category(store)
    await store.update_channel(alice.id, {"title": "Default title", "category_id": gaming})

    # no prepared stream: a new one from the channel's defaults
    first = await store.start_stream(alice.id, T0)
    assert first.is_live and first.started_at == T0 and first.title == "Default title"
    assert (first.username, first.category_id, first.category_name) == ("alice", gaming, "Gaming")
    # a publisher that reconnects continues it
    assert (await store.start_stream(alice.id, T0 + timedelta(seconds=5))).id == first.id
    assert (await store.get_live_stream_of(alice.id)).id == first.id

    ended = await store.end_stream(first.id, T0 + timedelta(minutes=10), unique_viewers=7, watch_seconds=1234.5)
    assert not ended.is_live and ended.ended_at == T0 + timedelta(minutes=10)
    assert (ended.unique_viewers, ended.watch_seconds, ended.viewers_count) == (7, 1234.5, 0)
    assert await store.end_stream(first.id, T0, unique_viewers=0, watch_seconds=0) is None  # not live any more

    # a prepared stream is what the next publish starts; preparing again replaces it
    await store.prepare_stream(alice.id, title="old plan", description="", category_id=None, is_private=False)
    prepared = await store.prepare_stream(alice.id, title="Tonight", description="d", category_id=None, is_private=True)
    assert prepared.started_at is None and not prepared.is_live
    second = await store.start_stream(alice.id, T0 + timedelta(hours=1))
    assert second.id == prepared.id and second.title == "Tonight" and second.is_private
    streams, total = await store.list_streams(user_id=alice.id, include_private=True, sort="created")
    assert total == 2 and [s.id for s in streams] == [second.id, first.id]  # "old plan" was replaced


async def test_concurrent_starts_make_one_live_stream(store):
    alice = await store.create_user("alice", "alice@example.com", "h")
    started = await asyncio.gather(*(store.start_stream(alice.id, T0) for _ in range(5)))
    assert len({s.id for s in started}) == 1
    assert (await store.list_streams(live=True))[1] == 1


async def test_list_streams_filters_sort_and_pages(store):
    users = [await store.create_user(f"u{i}", f"u{i}@example.com", "h") for i in range(4)]
    gaming, music = await _category(store), await _category(store, "Music")
    titles = ["Speedrun 100%", "Chill music", "SPEEDRUN any", "secret"]
    cats = [gaming, music, gaming, gaming]
    ids = []
    for i, (user, title, cat) in enumerate(zip(users, titles, cats)):
        await store.prepare_stream(user.id, title=title, description="", category_id=cat, is_private=(i == 3))
        s = await store.start_stream(user.id, T0 + timedelta(minutes=i))
        await store.record_viewers(s.id, T0 + timedelta(minutes=i, seconds=10), [5, 50, 20, 99][i])
        ids.append(s.id)

    streams, total = await store.list_streams(live=True)
    assert total == 3 and [s.id for s in streams] == [ids[1], ids[2], ids[0]]  # most viewers first; private hidden
    streams, _ = await store.list_streams(live=True, sort="started")
    assert [s.id for s in streams] == [ids[2], ids[1], ids[0]]
    streams, total = await store.list_streams(live=True, category_id=gaming, search="speedrun")
    assert total == 2 and {s.id for s in streams} == {ids[0], ids[2]}
    assert (await store.list_streams(live=True, search="%"))[1] == 1  # "100%": a literal, not a wildcard
    assert (await store.list_streams(live=True, search="_"))[1] == 0
    streams, total = await store.list_streams(live=True, limit=1, offset=1)
    assert total == 3 and [s.id for s in streams] == [ids[2]]
    assert (await store.list_streams(live=True, include_private_of=users[3].id))[1] == 4
    assert (await store.list_streams(live=True, include_private=True))[1] == 4
    await store.end_stream(ids[0], T0 + timedelta(hours=1), unique_viewers=0, watch_seconds=0)
    assert (await store.list_streams(live=False))[1] == 1


async def test_update_and_delete_stream(store):
    alice = await store.create_user("alice", "alice@example.com", "h")
    s = await store.start_stream(alice.id, T0)
    music = await _category(store, "Music")
    s = await store.update_stream(s.id, {"title": "New", "category_id": music, "is_private": True})
    assert (s.title, s.category_name, s.is_private) == ("New", "Music", True)
    with pytest.raises(NotFound):
        await store.update_stream(s.id + 99, {"title": "x"})
    assert await store.delete_stream(s.id) and not await store.delete_stream(s.id)
    assert await store.get_stream(s.id) is None


async def test_viewer_samples_peak_and_totals(store):
    alice = await store.create_user("alice", "alice@example.com", "h")
    s = await store.start_stream(alice.id, T0)
    for i, viewers in enumerate([3, 10, 4]):
        await store.record_viewers(s.id, T0 + timedelta(seconds=10 * (i + 1)), viewers)
    live = await store.get_stream(s.id)
    assert (live.viewers_count, live.peak_viewers) == (4, 10)
    samples = await store.stream_samples(s.id)
    assert samples == [(T0 + timedelta(seconds=10), 3), (T0 + timedelta(seconds=20), 10),
                       (T0 + timedelta(seconds=30), 4)]
    await store.end_stream(s.id, T0 + timedelta(seconds=40), unique_viewers=12, watch_seconds=170.0)
    await store.record_viewers(s.id, T0 + timedelta(seconds=50), 99)  # after the end: not the live count
    assert (await store.get_stream(s.id)).viewers_count == 0
    second = await store.start_stream(alice.id, T0 + timedelta(hours=1))
    await store.end_stream(second.id, T0 + timedelta(hours=1, seconds=20), unique_viewers=1, watch_seconds=5.0)
    totals = await store.stream_totals(alice.id)
    assert totals.broadcasts == 2 and totals.live_seconds == pytest.approx(60.0)
    assert (totals.watch_seconds, totals.peak_viewers, totals.unique_viewers) == (175.0, 10, 13)


async def test_follower_counts_by_day(store):
    star = await store.create_user("star", "star@example.com", "h")
    fans = [await store.create_user(f"fan{i}", f"fan{i}@example.com", "h") for i in range(3)]
    for fan, day in zip(fans, ("2026-11-01 10:00:00", "2026-11-01 23:00:00", "2026-11-03 08:00:00")):
        await raw_execute(store, "INSERT INTO follows (follower_id, following_id, created_at) VALUES (?, ?, ?)",
                          fan.id, star.id, datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
                          if "Postgres" in type(store).__name__ else day + ".000000")
    assert await store.follower_counts_by_day(star.id) == [("2026-11-01", 2), ("2026-11-03", 1)]


async def test_title_search_folds_non_ascii_case_on_both_databases(store):
    alice = await store.create_user("alice", "alice@example.com", "h")
    await store.prepare_stream(alice.id, title="ÉCOLE live", description="", category_id=None, is_private=False)
    await store.start_stream(alice.id, T0)
    assert (await store.list_streams(live=True, search="école"))[1] == 1


async def test_concurrent_first_users_make_one_admin(store):
    users = await asyncio.gather(*(store.create_user(f"u{i}", f"u{i}@example.com", "h", is_admin=None)
                                   for i in range(6)))
    assert sum(u.is_admin for u in users) == 1
    assert not (await store.create_user("late", "late@example.com", "h", is_admin=None)).is_admin
