"""Request and response schemas (marshmallow 3). Unknown fields are rejected."""
from __future__ import annotations

from marshmallow import RAISE, Schema, ValidationError, fields, validate

# Names that are also paths under /api/users/ (they would shadow the user's public profile),
# or that would read as the platform speaking. Compared case-insensitively, like usernames.
RESERVED_USERNAMES = frozenset({"profile", "avatar", "admin", "root", "api", "system", "support", "sfstream"})


def _not_reserved(name: str) -> None:
    if name.lower() in RESERVED_USERNAMES:
        raise ValidationError("this name is reserved")


# ASCII only: SQLite's NOCASE folds ASCII alone, so non-ASCII names could be
# "unique" on one database and duplicates on the other.
USERNAME = [validate.Regexp(r"^[A-Za-z0-9_]{3,32}$", error="3-32 letters, digits or underscores"), _not_reserved]
PASSWORD = validate.Length(min=8, max=256)
NO_NUL = validate.Regexp(r"^[^\x00]*$", error="must not contain NUL characters")


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


class RegisterSchema(StrictSchema):
    username = fields.String(required=True, validate=USERNAME)
    email = fields.Email(required=True, validate=validate.Length(max=254))
    password = fields.String(required=True, validate=PASSWORD, load_only=True)


class LoginSchema(StrictSchema):
    login = fields.String(required=True, validate=[validate.Length(min=1, max=254), NO_NUL],
                          metadata={"description": "username or email"})
    password = fields.String(required=True, validate=validate.Length(min=1, max=256), load_only=True)


class RefreshSchema(StrictSchema):
    refresh_token = fields.String(validate=validate.Length(min=1, max=256),
                                  metadata={"description": "omit to use the sf_refresh cookie"})


class ProfileUpdateSchema(StrictSchema):
    email = fields.Email(validate=validate.Length(max=254))
    bio = fields.String(validate=[validate.Length(max=500), NO_NUL])


class ChangePasswordSchema(StrictSchema):
    current_password = fields.String(required=True, validate=validate.Length(min=1, max=256), load_only=True)
    new_password = fields.String(required=True, validate=PASSWORD, load_only=True)


class PublicUserSchema(Schema):
    id = fields.Integer(required=True)
    username = fields.String(required=True)
    avatar = fields.String(allow_none=True, required=True)
    bio = fields.String(required=True)
    followers_count = fields.Integer(required=True)
    created_at = fields.DateTime(required=True)


class UserSchema(PublicUserSchema):
    email = fields.String(required=True)
    is_admin = fields.Boolean(required=True)
    updated_at = fields.DateTime(required=True)


class TokenResponseSchema(Schema):
    access_token = fields.String(required=True)
    refresh_token = fields.String(required=True)
    token_type = fields.String(required=True, metadata={"enum": ["Bearer"]})
    expires_in = fields.Integer(required=True, metadata={"description": "seconds until the access token expires"})
    user = fields.Nested(UserSchema, required=True)


class ErrorBodySchema(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    fields = fields.Dict(required=True)


class ErrorSchema(Schema):
    error = fields.Nested(ErrorBodySchema, required=True)


class StatusSchema(Schema):
    status = fields.String(required=True)


# Documented error responses shared by several operations (OpenAPI `responses` entries).
# Every /api operation can answer 429: the global per-client budget (rate_limit in api/__init__.py).
RATE_LIMITED = {429: {"schema": ErrorSchema, "description": "too many requests (see Retry-After)"}}
# Every operation with a JSON body: what load_json (api/context.py) answers.
JSON_BODY_ERRORS = {
    400: {"schema": ErrorSchema, "description": "the body is not a JSON object"},
    413: {"schema": ErrorSchema, "description": "the body is over 64 KiB"},
    422: {"schema": ErrorSchema, "description": "invalid fields"},
}
