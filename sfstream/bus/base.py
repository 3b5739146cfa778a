"""The interface both buses implement: state several sfstream instances must share.

Fixed-window counters (rate limits), revoked access-token ids, and viewer presence: who is
watching a stream now (members with an expiry) and how many distinct viewers it had. Times are
seconds (float).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection


class BusUnavailable(ConnectionError):
    """Redis does not answer or refuses us (wrong password, no such database). A ConnectionError,
    hence an OSError: `serve` reports it as "cannot start", like a taken port."""


def check_window(window: float) -> None:
    if not window > 0:  # also refuses NaN
        raise ValueError(f"window must be > 0 seconds, got {window!r}")


class Bus(ABC):
    @abstractmethod
    async def incr(self, key: str, window: float) -> tuple[int, float]:
        """Count one hit on `key` in a fixed window: the window starts at the first hit and lasts
        `window` seconds (later hits do not extend it). Returns the count after this hit and the
        seconds until the window resets (a Retry-After). Atomic: concurrent hits get distinct counts."""

    @abstractmethod
    async def peek(self, key: str) -> tuple[int, float]:
        """The current count and seconds until reset, without counting; (0, 0.0) if none or expired."""

    @abstractmethod
    async def reset(self, key: str) -> None:
        """Forget `key`'s counter (e.g. after a successful login)."""

    @abstractmethod
    async def revoke(self, token_id: str, ttl: float) -> None:
        """Remember `token_id` (a JWT `jti`) as revoked for `ttl` seconds: until the token would
        have expired anyway. ttl <= 0 remembers nothing (the token is already dead)."""

    @abstractmethod
    async def is_revoked(self, token_id: str) -> bool:
        """Whether `token_id` was revoked and its ttl has not run out."""

    @abstractmethod
    async def touch(self, group: str, members: Collection[str], ttl: float) -> None:
        """Mark each member present in `group` for `ttl` seconds from now (a later touch extends
        it), and count it among the group's distinct members."""

    @abstractmethod
    async def alive(self, group: str, members: Collection[str]) -> set[str]:
        """Which of `members` are present in `group` now."""

    @abstractmethod
    async def leave(self, group: str, member: str) -> None:
        """The member is gone now (a closed websocket), whatever its ttl."""

    @abstractmethod
    async def present(self, group: str) -> int:
        """How many members of `group` are present (ttl not run out)."""

    @abstractmethod
    async def distinct(self, group: str) -> int:
        """How many distinct members `group` has had since it was last forgotten (Redis: a
        HyperLogLog estimate, within ~1 %)."""

    @abstractmethod
    async def forget(self, group: str) -> None:
        """Drop the group's presence and distinct members (a broadcast starts or ended)."""

    async def ping(self) -> None:
        """A round trip to the shared state (readiness); raises if it does not answer."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections. The bus is not usable afterwards."""
