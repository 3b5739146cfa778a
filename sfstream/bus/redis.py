"""The bus on Redis (redis.asyncio), shared by every instance pointing at the same server.

Keys: PREFIX + "rate:" + key (a counter with a PX expiry), PREFIX + "revoked:" + token id
(a flag with a PX expiry), PREFIX + "presence:" + group (a sorted set: member -> expiry in ms)
and PREFIX + "distinct:" + group (a HyperLogLog), so no kind of key can collide with another.
Presence expiries are the instances' wall clocks: keep them in sync (NTP), as for any cluster.
"""
from __future__ import annotations

import asyncio
import math
import time
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .base import Bus, BusUnavailable, check_window

DEFAULT_PREFIX = "sfstream:"
# A broadcast's distinct viewers are kept this long after the last new one (longer than any broadcast).
GROUP_TTL_MS = 7 * 86400 * 1000

# INCR, and start the window only if the key has none: on the first hit, or if something left
# the key without an expiry (a counter that never expires would lock a client out for good).
# One script, so no other client runs between INCR and PEXPIRE: the window is set exactly once.
# Redis freezes its clock while a script runs, so the key cannot expire between the calls.
_INCR = """
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""


def describe_url(url: str) -> str:
    """The URL for messages: redis://host:port/db, without user, password or query (?password=...)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port or 6379
    except ValueError:  # a non-numeric port: show it as written, Redis will refuse it anyway
        port = parts.netloc.rpartition(":")[2]
    return f"{parts.scheme}://{host}:{port}{parts.path}"


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class RedisBus(Bus):
    def __init__(self, client: aioredis.Redis, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self._incr = client.register_script(_INCR)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        max_connections: int = 50,
        timeout: float = 5.0,
    ) -> RedisBus:
        """Connect and PING, so that a wrong URL fails at start. At most `max_connections` at
        once (more callers wait for a free one); `timeout` bounds connecting, each command and
        the wait for a connection."""
        where = describe_url(url)
        try:
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=timeout,
                socket_connect_timeout=timeout,
                socket_timeout=timeout,
            )
        except ValueError as exc:  # redis-py's URL parser (e.g. an unknown scheme or a bad db)
            raise ValueError(f"invalid Redis URL {where}: {exc}") from None
        client = aioredis.Redis.from_pool(pool)
        try:
            await asyncio.wait_for(client.ping(), timeout)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            await client.aclose()
            # The message names host and port only: the URL may carry a password.
            raise BusUnavailable(f"cannot use Redis at {where}: {type(exc).__name__}: {exc}") from exc
        return cls(client, prefix=prefix)

    def _rate(self, key: str) -> str:
        return f"{self.prefix}rate:{key}"

    def _revoked(self, token_id: str) -> str:
        return f"{self.prefix}revoked:{token_id}"

    async def incr(self, key: str, window: float) -> tuple[int, float]:
        check_window(window)
        count, ttl_ms = await self._incr(keys=[self._rate(key)], args=[_ms(window)])
        return int(count), max(int(ttl_ms), 0) / 1000

    async def peek(self, key: str) -> tuple[int, float]:
        async with self.client.pipeline(transaction=True) as pipe:
            value, ttl_ms = await pipe.get(self._rate(key)).pttl(self._rate(key)).execute()
        if value is None:
            return 0, 0.0
        return int(value), max(int(ttl_ms), 0) / 1000

    async def reset(self, key: str) -> None:
        await self.client.delete(self._rate(key))

    async def revoke(self, token_id: str, ttl: float) -> None:
        if not ttl > 0:
            return
        await self.client.set(self._revoked(token_id), b"1", px=_ms(ttl))

    async def is_revoked(self, token_id: str) -> bool:
        return bool(await self.client.exists(self._revoked(token_id)))

    def _presence(self, group: str) -> str:
        return f"{self.prefix}presence:{group}"

    def _distinct(self, group: str) -> str:
        return f"{self.prefix}distinct:{group}"

    async def touch(self, group: str, members, ttl: float) -> None:
        check_window(ttl)
        members = list(members)
        if not members:
            return
        until = int(time.time() * 1000) + _ms(ttl)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(self._presence(group), dict.fromkeys(members, until))
            # A group nobody touches goes away; a touch only ever lengthens its life (NX sets
            # the first expiry, GT extends it): a short ttl must not cut a longer one's.
            pipe.pexpire(self._presence(group), _ms(ttl), nx=True)
            pipe.pexpire(self._presence(group), _ms(ttl), gt=True)
            pipe.pfadd(self._distinct(group), *members)
            pipe.pexpire(self._distinct(group), GROUP_TTL_MS)
            await pipe.execute()

    async def alive(self, group: str, members) -> set[str]:
        members = list(members)
        if not members:
            return set()
        scores = await self.client.zmscore(self._presence(group), members)
        now = int(time.time() * 1000)
        return {m for m, score in zip(members, scores) if score is not None and score > now}

    async def leave(self, group: str, member: str) -> None:
        await self.client.zrem(self._presence(group), member)

    async def present(self, group: str) -> int:
        key = self._presence(group)
        async with self.client.pipeline(transaction=True) as pipe:
            _, count = await pipe.zremrangebyscore(key, "-inf", int(time.time() * 1000)).zcard(key).execute()
        return int(count)

    async def distinct(self, group: str) -> int:
        return int(await self.client.pfcount(self._distinct(group)))

    async def forget(self, group: str) -> None:
        await self.client.delete(self._presence(group), self._distinct(group))

    async def ping(self) -> None:
        await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()
