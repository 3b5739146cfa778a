"""Rows of the database as plain dataclasses. Every datetime is timezone-aware UTC."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    email: str
    password_hash: str
    avatar: str | None
    bio: str
    followers_count: int
    is_admin: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RefreshToken:
    id: int
    family_id: str
    user_id: int
    token_hash: str
    expires_at: datetime
    created_at: datetime
    used_at: datetime | None
    revoked_at: datetime | None
    user_agent: str
    ip: str


@dataclass(frozen=True, slots=True)
class Category:
    id: int
    name: str
    description: str
    thumbnail: str | None
    viewers_count: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Channel:
    """A user's stream key (only ever stored encrypted; the HMAC is what a publish looks up)
    and the defaults of their next broadcast."""
    user_id: int
    stream_key_ciphertext: bytes
    stream_key_hmac: str
    title: str
    description: str
    category_id: int | None
    is_private: bool
    created_at: datetime
    updated_at: datetime
    ladder: str | None = None  # an administrator's per-user ladder (None: the server's)


@dataclass(frozen=True, slots=True)
class Stream:
    """One broadcast: prepared (started_at None), live, or ended (ended_at set)."""
    id: int
    user_id: int
    title: str
    description: str
    thumbnail: str | None
    category_id: int | None
    is_live: bool
    viewers_count: int
    is_private: bool
    started_at: datetime | None
    ended_at: datetime | None
    created_at: datetime
    updated_at: datetime
    peak_viewers: int
    unique_viewers: int
    watch_seconds: float
    # joined from users and categories
    username: str
    user_avatar: str | None
    category_name: str | None


@dataclass(frozen=True, slots=True)
class StreamTotals:
    """A streamer's broadcasts added up."""
    broadcasts: int
    live_seconds: float
    watch_seconds: float
    peak_viewers: int
    unique_viewers: int


@dataclass(frozen=True, slots=True)
class Follow:
    id: int
    follower_id: int
    following_id: int
    created_at: datetime
