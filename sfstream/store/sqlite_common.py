"""Conversions SQLiteStore and its mixins share."""
from __future__ import annotations

import re
import sqlite3
from datetime import datetime, timezone

from .base import Conflict, NotFound, StoreError, utc


def _ts(dt: datetime) -> str:
    # Fixed-width UTC text, the format of the schema's defaults: string order is time order.
    return utc(dt).strftime("%Y-%m-%d %H:%M:%S.%f")


def _dt(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def _integrity_error(exc: sqlite3.IntegrityError) -> StoreError:
    # "UNIQUE constraint failed: users.email" -> Conflict("email"): the same field names that
    # PostgresStore derives from its constraint names.
    m = re.match(r"UNIQUE constraint failed: (.+)", str(exc))
    if m:
        return Conflict(",".join(col.split(".")[-1].strip() for col in m[1].split(",")))
    if str(exc).startswith("FOREIGN KEY"):
        return NotFound("a referenced row does not exist")
    return StoreError(str(exc))
