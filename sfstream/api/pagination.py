"""Offset pagination, the same for every list endpoint.

    GET /api/categories?limit=20&offset=40  ->  {"items": [...], "total": 57, "limit": 20, "offset": 40}

`total` counts every item, not just this page: the next page exists while offset + limit < total.
"""
from __future__ import annotations

from aiohttp import web
from marshmallow import Schema, ValidationError, fields, validate

from .errors import APIError
from .schemas import StrictSchema

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# Deep offsets make the database walk and discard every row before them; past this, filter instead.
MAX_OFFSET = 100_000


class PageQuerySchema(StrictSchema):
    limit = fields.Integer(load_default=DEFAULT_LIMIT, validate=validate.Range(min=1, max=MAX_LIMIT),
                           metadata={"description": f"items per page (default {DEFAULT_LIMIT})"})
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_OFFSET),
                            metadata={"description": "items to skip"})


class PageSchema(Schema):
    """Subclasses add `items = fields.List(fields.Nested(ItemSchema), required=True)`."""

    total = fields.Integer(required=True, metadata={"description": "items in the whole list"})
    limit = fields.Integer(required=True)
    offset = fields.Integer(required=True)


def load_query(request: web.Request, schema: Schema) -> dict:
    """Validate the query string: 422 naming each bad parameter (unknown ones included)."""
    try:
        return schema.load(request.query)
    except ValidationError as exc:
        fields_ = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise APIError(422, "validation_failed", "invalid query parameters", fields_) from None


def page_json(items: list, total: int, page: dict) -> dict:
    """`page` is what PageQuerySchema loaded."""
    return {"items": items, "total": total, "limit": page["limit"], "offset": page["offset"]}
