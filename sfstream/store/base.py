"""The repository interface both databases implement, and the errors it raises."""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources

from .models import RefreshToken, User


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

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # --- users ---
    @abstractmethod
    async def create_user(self, username: str, email: str, password_hash: str, *, is_admin: bool = False) -> User:
        """Raise Conflict("username") or Conflict("email"); both are unique case-insensitively."""

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
