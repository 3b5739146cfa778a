"""Cross-instance state: rate-limit counters and revoked access tokens. One interface (Bus),
in-process and Redis implementations.

    bus = await open_bus(settings.redis_url)

"" -> InProcessBus (one instance, nothing to run); "redis://...", "rediss://..." or
"unix://..." -> RedisBus, PINGed at open: a server that does not answer or refuses (wrong
password, no such database) raises BusUnavailable (an OSError) naming host and port, never the password.
"""
from __future__ import annotations

from .base import Bus, BusUnavailable
from .memory import DEFAULT_MAX_KEYS, InProcessBus

__all__ = ["open_bus", "Bus", "BusUnavailable", "InProcessBus", "DEFAULT_MAX_KEYS"]


async def open_bus(redis_url: str = "", *, prefix: str = "sfstream:", max_keys: int = DEFAULT_MAX_KEYS) -> Bus:
    """`max_keys` bounds the in-process tables; `prefix` namespaces the Redis keys."""
    if not redis_url:
        return InProcessBus(max_keys=max_keys)
    if redis_url.startswith(("redis://", "rediss://", "unix://")):
        from .redis import RedisBus  # imported on demand: a single instance needs no redis package

        return await RedisBus.open(redis_url, prefix=prefix)
    scheme = redis_url.split(":", 1)[0]
    raise ValueError(f"unsupported bus URL scheme {scheme!r}: use redis://HOST:PORT/DB, rediss://... or unix://PATH")
