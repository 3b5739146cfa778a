"""Storage: one repository interface (Store), SQLite and PostgreSQL implementations.

    store = await open_store(settings.database_url, data_dir=settings.data_dir)

"" or "sqlite:///relative/path.db" or "sqlite:////absolute/path.db" -> SQLiteStore
(default file DATA_DIR/sfstream.db); "postgresql://..." or "postgres://..." -> PostgresStore.
Migrations are applied on open.
"""
from __future__ import annotations

from pathlib import Path

from .base import Conflict, NotFound, Store, StoreError
from .models import Category, Channel, Follow, RefreshToken, Stream, StreamTotals, User

__all__ = [
    "open_store", "Store", "StoreError", "Conflict", "NotFound",
    "User", "RefreshToken", "Category", "Channel", "Stream", "StreamTotals", "Follow", "DEFAULT_SQLITE_FILE",
]

DEFAULT_SQLITE_FILE = "sfstream.db"


async def open_store(database_url: str, *, data_dir: Path, pool_min: int = 1, pool_max: int = 10) -> Store:
    if database_url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore  # imported on demand: SQLite users need no asyncpg

        return await PostgresStore.open(database_url, pool_min=pool_min, pool_max=pool_max)
    if database_url in ("", "sqlite://", "sqlite:///"):
        path: Path | str = Path(data_dir) / DEFAULT_SQLITE_FILE
    elif database_url.startswith("sqlite:///"):
        # SQLAlchemy's convention: three slashes then the path, so an absolute path has four.
        path = database_url.removeprefix("sqlite:///")
    else:
        scheme = database_url.split(":", 1)[0]
        raise ValueError(f"unsupported database URL scheme {scheme!r}: use sqlite:///PATH or postgresql://...")
    from .sqlite import SQLiteStore

    return await SQLiteStore.open(path)
