"""Conversions PostgresStore and its mixins share."""
from __future__ import annotations

import asyncpg

from .base import Conflict, NotFound, StoreError

# Unique constraints/indexes (named in the migrations) -> the field Conflict reports; the
# same names SQLiteStore reads from its error messages.
_CONFLICT_FIELDS = {
    "users_username_key": "username",
    "users_email_key": "email",
    "categories_name_key": "name",
    "refresh_tokens_token_hash_key": "token_hash",
    "channels_stream_key_hmac_key": "stream_key_hmac",
    "follows_follower_id_following_id_key": "follower_id,following_id",
}


def _integrity_error(exc: asyncpg.IntegrityConstraintViolationError) -> StoreError:
    if isinstance(exc, asyncpg.UniqueViolationError):
        return Conflict(_CONFLICT_FIELDS.get(exc.constraint_name or "", exc.constraint_name or "unknown"))
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        return NotFound("a referenced row does not exist")
    return StoreError(str(exc))


def _count(status: str) -> int:
    # asyncpg's execute() answers the command tag, e.g. "UPDATE 3" or "DELETE 0".
    return int(status.rsplit(" ", 1)[-1])
