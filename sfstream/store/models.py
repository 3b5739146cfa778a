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
class Stream:
    id: int
    user_id: int
    title: str
    description: str
    thumbnail: str | None
    # The key itself is only ever stored encrypted; the HMAC is what RTMP publish looks up.
    stream_key_ciphertext: bytes | None
    stream_key_hmac: str | None
    category_id: int | None
    is_live: bool
    viewers_count: int
    is_private: bool
    started_at: datetime | None
    ended_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Follow:
    id: int
    follower_id: int
    following_id: int
    created_at: datetime
