"""The bus inside one process: dicts with expiry times on time.monotonic().

Good for a single instance (the default: no Redis needed). Use it from its event loop only:
no method awaits, so each call is atomic with respect to other tasks.

Bounded: each of the two tables (counters, revocations) holds at most `max_keys` entries.
When one is full, expired entries are dropped first; if it is still full, the entries closest
to expiry are evicted (they would have been gone soonest anyway). The tables are separate so
that a flood of rate-limit keys (one per client IP) can never evict a revocation.
"""
from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass

from .base import Bus, check_window

DEFAULT_MAX_KEYS = 100_000


@dataclass(slots=True)
class _Entry:
    count: int
    expires_at: float
    seq: int  # which heap item is this entry's (older items for the same key are stale)


class _ExpiringTable:
    """key -> _Entry, with a min-heap on expiry so that purging and eviction cost O(log n)."""

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= now:
            del self._entries[key]
            return None
        return entry

    def put(self, key: str, expires_at: float, now: float) -> _Entry:
        self._entries.pop(key, None)
        self._purge_expired(now)
        while len(self._entries) >= self.max_keys:
            self._pop_heap()
        entry = _Entry(0, expires_at, next(self._seq))
        self._entries[key] = entry
        heapq.heappush(self._heap, (expires_at, entry.seq, key))
        # Stale heap items (from pop/replace) would otherwise pile up: rebuild now and then,
        # after as many pushes as there are live entries, so it costs O(1) per put on average.
        if len(self._heap) > 2 * max(len(self._entries), 1024):
            self._heap = [(e.expires_at, e.seq, k) for k, e in self._entries.items()]
            heapq.heapify(self._heap)
        return entry

    def pop(self, key: str) -> None:
        self._entries.pop(key, None)

    def purge(self, now: float) -> None:
        self._purge_expired(now)

    def _purge_expired(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            self._pop_heap()

    def _pop_heap(self) -> None:
        _, seq, key = heapq.heappop(self._heap)
        entry = self._entries.get(key)
        if entry is not None and entry.seq == seq:
            del self._entries[key]


class _Group:
    """Presence of one group (member -> expiry, heap-ordered so that a touch costs O(log n)
    however many members there are), and the members ever seen (bounded)."""

    __slots__ = ("present", "seen", "overflow")

    def __init__(self, max_keys: int) -> None:
        self.present = _ExpiringTable(max_keys)
        self.seen: set[str] = set()
        self.overflow = 0  # distinct members not kept once `seen` is full (still counted)


class InProcessBus(Bus):
    def __init__(self, *, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys!r}")
        self.max_keys = max_keys
        self._counters = _ExpiringTable(max_keys)
        self._revoked = _ExpiringTable(max_keys)
        self._groups: dict[str, _Group] = {}

    def __len__(self) -> int:
        """Entries held (counters + revocations), expired ones not yet purged included."""
        return len(self._counters) + len(self._revoked)

    async def incr(self, key: str, window: float) -> tuple[int, float]:
        check_window(window)
        now = time.monotonic()
        entry = self._counters.get(key, now) or self._counters.put(key, now + window, now)
        entry.count += 1
        # (now + window) - now can come out a hair above window in floating point.
        return entry.count, min(entry.expires_at - now, window)

    async def peek(self, key: str) -> tuple[int, float]:
        now = time.monotonic()
        entry = self._counters.get(key, now)
        if entry is None:
            return 0, 0.0
        return entry.count, entry.expires_at - now

    async def reset(self, key: str) -> None:
        self._counters.pop(key)

    async def revoke(self, token_id: str, ttl: float) -> None:
        if not ttl > 0:
            return
        now = time.monotonic()
        self._revoked.put(token_id, now + ttl, now)

    async def is_revoked(self, token_id: str) -> bool:
        return self._revoked.get(token_id, time.monotonic()) is not None

    async def touch(self, group: str, members, ttl: float) -> None:
        check_window(ttl)
        now = time.monotonic()
        g = self._groups.get(group)
        if g is None:
            g = self._groups[group] = _Group(self.max_keys)
        until = now + ttl
        for m in members:
            # Bounded: past max_keys members the ones closest to expiry are dropped, so a flood
            # of made-up session ids cannot grow memory without end.
            g.present.put(m, until, now)
            if m not in g.seen:
                if len(g.seen) < self.max_keys:
                    g.seen.add(m)
                else:
                    g.overflow += 1

    async def alive(self, group: str, members) -> set[str]:
        g = self._groups.get(group)
        if g is None:
            return set()
        now = time.monotonic()
        return {m for m in members if g.present.get(m, now) is not None}

    async def leave(self, group: str, member: str) -> None:
        g = self._groups.get(group)
        if g is not None:
            g.present.pop(member)

    async def present(self, group: str) -> int:
        g = self._groups.get(group)
        if g is None:
            return 0
        g.present.purge(time.monotonic())
        return len(g.present)

    async def distinct(self, group: str) -> int:
        g = self._groups.get(group)
        return 0 if g is None else len(g.seen) + g.overflow

    async def forget(self, group: str) -> None:
        self._groups.pop(group, None)

    async def close(self) -> None:
        self._counters = _ExpiringTable(self.max_keys)
        self._revoked = _ExpiringTable(self.max_keys)
        self._groups = {}
