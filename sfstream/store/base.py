"""The repository interface both databases implement, and the errors it raises."""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources

from .models import Category, Channel, RefreshToken, Stream, StreamTotals, User


class StoreError(Exception):
    """Any failure of the storage layer the caller is expected to handle."""


class Conflict(StoreError):
    """A unique constraint refused the write; `field` names what is taken ("username", "email", ...)."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} already exists")
        self.field = field


class NotFound(StoreError):
    """The row to change does not exist."""


def utc(dt: datetime) -> datetime:
    # A naive datetime would be read as local time by one driver and UTC by the other: refuse it.
    if dt.tzinfo is None:
        raise ValueError("naive datetime; pass a timezone-aware one")
    return dt.astimezone(timezone.utc)


def now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(dialect: str) -> list[Migration]:
    """The package's migrations/<dialect>/NNNN_name.sql files, in version order."""
    found = []
    for entry in resources.files(__package__).joinpath("migrations", dialect).iterdir():
        m = re.fullmatch(r"(\d+)_(\w+)\.sql", entry.name)
        if m:
            found.append(Migration(int(m[1]), m[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: mig.version)
    if len({mig.version for mig in found}) != len(found):
        raise StoreError(f"duplicate migration versions in migrations/{dialect}")
    return found


class Store(ABC):
    """Everything sfstream keeps in SQL. Implementations: SQLiteStore, PostgresStore."""

    # --- lifecycle ---
    @abstractmethod
    async def migrate(self) -> list[int]:
        """Apply pending migrations (idempotent); return the versions this call applied."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """A round trip to the database (readiness); raises if it does not answer."""

    def pool_stats(self) -> tuple[int, int]:
        """(connections open, connections in use) for monitoring."""
        return (1, 0)

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # --- users ---
    @abstractmethod
    async def create_user(self, username: str, email: str, password_hash: str, *,
                          is_admin: bool | None = False) -> User:
        """Raise Conflict("username") or Conflict("email"); both are unique case-insensitively.
        is_admin=None: an administrator if and only if no user exists yet, decided atomically
        (several first registrations at once make one administrator)."""

    @abstractmethod
    async def get_user(self, id: int) -> User | None: ...

    @abstractmethod
    async def get_user_by_username(self, username: str) -> User | None:
        """Case-insensitive."""

    @abstractmethod
    async def get_user_by_login(self, login: str) -> User | None:
        """`login` is a username or an email, case-insensitive; a username match wins."""

    @abstractmethod
    async def update_user(
        self,
        id: int,
        *,
        email: str | None = None,
        bio: str | None = None,
        avatar: str | None = None,
        password_hash: str | None = None,
    ) -> User:
        """Change the fields given (None = leave as is), bump updated_at. NotFound, Conflict("email")."""

    @abstractmethod
    async def count_users(self) -> int: ...

    # --- channels (stream keys and broadcast defaults) ---
    @abstractmethod
    async def get_channel(self, user_id: int) -> Channel | None: ...

    @abstractmethod
    async def get_channel_by_key_hmac(self, key_hmac: str) -> Channel | None: ...

    @abstractmethod
    async def set_channel_key(self, user_id: int, ciphertext: bytes, key_hmac: str, *, replace: bool = True) -> Channel:
        """Create the user's channel with this key, or give it the new key. With replace=False an
        existing channel is left as it is (two first GETs racing create one key, not two)."""

    @abstractmethod
    async def update_channel(self, user_id: int, changes: dict) -> Channel:
        """Change title / description / category_id / is_private / ladder (keys present in
        `changes`; category_id and ladder may be None). NotFound if the user has no channel or
        the category is unknown."""

    # --- streams (broadcasts) ---
    @abstractmethod
    async def prepare_stream(self, user_id: int, *, title: str, description: str,
                             category_id: int | None, is_private: bool) -> Stream:
        """Set up the user's next broadcast; a previous prepared (never started) one is replaced."""

    @abstractmethod
    async def start_stream(self, user_id: int, at: datetime) -> Stream:
        """The user went live: their live stream if one is (a publisher that reconnected), else
        the prepared one started, else a new one from the channel's defaults."""

    @abstractmethod
    async def end_stream(self, stream_id: int, at: datetime, *, unique_viewers: int,
                         watch_seconds: float) -> Stream | None:
        """A live stream ended: is_live off, ended_at, viewers_count 0, and its summary (the peak
        is kept by record_viewers). None if it was not live."""

    @abstractmethod
    async def get_stream(self, id: int) -> Stream | None: ...

    @abstractmethod
    async def get_live_stream_of(self, user_id: int) -> Stream | None: ...

    @abstractmethod
    async def update_stream(self, id: int, changes: dict) -> Stream:
        """Change title / description / category_id / is_private / thumbnail. NotFound."""

    @abstractmethod
    async def delete_stream(self, id: int) -> bool: ...

    @abstractmethod
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
        """Streams and the total matching. live: only live (True), only not live (False) or both;
        search: case-insensitive substring of the title; private streams only when
        include_private, or those of include_private_of; sort: "viewers" (most first), "started"
        (newest first) or "created" (newest first)."""

    # --- statistics ---
    @abstractmethod
    async def record_viewers(self, stream_id: int, at: datetime, viewers: int) -> None:
        """One sample of concurrent viewers of a live stream; also its viewers_count and peak."""

    @abstractmethod
    async def stream_samples(self, stream_id: int) -> list[tuple[datetime, int]]:
        """The samples of a stream, oldest first."""

    @abstractmethod
    async def stream_totals(self, user_id: int) -> StreamTotals:
        """The user's started broadcasts added up (live ones count up to now)."""

    @abstractmethod
    async def follower_counts_by_day(self, user_id: int) -> list[tuple[str, int]]:
        """("YYYY-MM-DD", new follows that day) for the user's current followers, oldest first."""

    # --- refresh tokens ---
    @abstractmethod
    async def add_refresh_token(
        self,
        *,
        family_id: str,
        user_id: int,
        token_hash: str,
        expires_at: datetime,
        user_agent: str = "",
        ip: str = "",
    ) -> RefreshToken: ...

    @abstractmethod
    async def get_refresh_token(self, token_hash: str) -> RefreshToken | None: ...

    @abstractmethod
    async def use_refresh_token(self, token_hash: str) -> bool:
        """Mark the token used. True exactly once per token; False if it was already used,
        revoked or does not exist (a second use is token reuse: revoke the family).
        Expiry is not checked here: the caller reads expires_at from get_refresh_token."""

    @abstractmethod
    async def revoke_family(self, family_id: str) -> int:
        """Revoke every not yet revoked token of the family; return how many."""

    @abstractmethod
    async def revoke_user_tokens(self, user_id: int, *, except_family: str | None = None) -> int:
        """Revoke all of a user's tokens (logout everywhere), optionally keeping one family
        (the current session, e.g. after a password change); return how many."""

    @abstractmethod
    async def delete_expired_tokens(self, now: datetime) -> int:
        """Delete tokens with expires_at <= now; return how many."""

    # --- categories and follows ---
    @abstractmethod
    async def list_categories(self, *, limit: int, offset: int) -> list[Category]:
        """Most live viewers first, then by name. viewers_count is the sum over the category's
        live streams, computed by the query (the stored column is not kept up to date)."""

    @abstractmethod
    async def count_categories(self) -> int: ...

    @abstractmethod
    async def get_category(self, id: int) -> Category | None: ...

    @abstractmethod
    async def create_category(self, name: str, description: str = "") -> Category:
        """Raise Conflict("name"); names are unique case-insensitively."""

    @abstractmethod
    async def update_category(self, id: int, *, name: str | None = None, description: str | None = None) -> Category:
        """Change the fields given (None = leave as is), bump updated_at. NotFound, Conflict("name")."""

    @abstractmethod
    async def delete_category(self, id: int) -> bool:
        """False if there was no such category. Its streams keep going, without a category."""

    @abstractmethod
    async def follow(self, follower_id: int, following_id: int) -> bool:
        """Idempotent: True if this call created the follow, False if it existed already.
        The followed user's followers_count grows by one exactly when a row is inserted, in the
        same transaction, so concurrent calls never make it drift. ValueError when both ids are
        the same; NotFound if either user does not exist."""

    @abstractmethod
    async def unfollow(self, follower_id: int, following_id: int) -> bool:
        """Idempotent: True if this call removed the follow (and decremented followers_count)."""

    @abstractmethod
    async def is_following(self, follower_id: int, following_id: int) -> bool: ...

    @abstractmethod
    async def list_followers(self, user_id: int, *, limit: int, offset: int) -> list[tuple[User, datetime]]:
        """Who follows `user_id`, newest follow first: (follower, followed_at)."""

    @abstractmethod
    async def list_following(self, user_id: int, *, limit: int, offset: int) -> list[tuple[User, datetime]]:
        """Whom `user_id` follows, newest follow first: (followed user, followed_at)."""

    @abstractmethod
    async def count_followers(self, user_id: int) -> int:
        """Counted from the follows rows (users.followers_count is the stored copy)."""

    @abstractmethod
    async def count_following(self, user_id: int) -> int: ...

    @abstractmethod
    async def set_admin(self, user_id: int, is_admin: bool) -> User:
        """Grant or take away the administrator role (`sfstream user set-admin`). NotFound."""
