"""Categories: anyone may list and read them; administrators create, rename and delete them.

viewers_count is the sum of the viewers of the category's live streams right now.
(The streams in a category are listed with the streams: GET /categories/{id}/streams.)
"""
from __future__ import annotations

import logging

from aiohttp import web
from aiohttp_apigami import docs, querystring_schema, request_schema
from marshmallow import Schema, fields, validate

from ..store import Category, Conflict, NotFound, User
from .context import STORE, authenticate, load_json
from .errors import APIError
from .pagination import PageQuerySchema, PageSchema, load_query, page_json
from .schemas import JSON_BODY_ERRORS, NO_NUL, RATE_LIMITED, ErrorSchema, StatusSchema, StrictSchema

log = logging.getLogger("sfstream.api")

# Ids are 64-bit in both databases; 18 digits always fit, and the route refuses longer ones
# (a 404) before they reach a driver that would overflow on them.
ID_ROUTE = "{id:[0-9]{1,18}}"
ID_PARAM = {"in": "path", "name": "id", "required": True,
            "schema": {"type": "integer", "minimum": 0, "maximum": 10**18 - 1}}

# No control characters, no spaces at either end (" Gaming" would look like a duplicate of "Gaming").
CATEGORY_NAME = [
    validate.Length(min=1, max=64),
    validate.Regexp(r"^[^\x00-\x1f\x7f\s](?:[^\x00-\x1f\x7f]*[^\x00-\x1f\x7f\s])?$",
                    error="no control characters, no spaces at the start or end"),
]
DESCRIPTION = [validate.Length(max=1000), NO_NUL]


class CategorySchema(Schema):
    id = fields.Integer(required=True)
    name = fields.String(required=True)
    description = fields.String(required=True)
    thumbnail = fields.String(required=True, allow_none=True)
    viewers_count = fields.Integer(required=True, metadata={"description": "viewers of its live streams now"})
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)


class CategoryCreateSchema(StrictSchema):
    name = fields.String(required=True, validate=CATEGORY_NAME,
                         metadata={"description": "unique, case-insensitively"})
    description = fields.String(load_default="", validate=DESCRIPTION)


class CategoryUpdateSchema(StrictSchema):
    name = fields.String(validate=CATEGORY_NAME, metadata={"description": "unique, case-insensitively"})
    description = fields.String(validate=DESCRIPTION)


class CategoryPageSchema(PageSchema):
    items = fields.List(fields.Nested(CategorySchema), required=True)


_category_schema = CategorySchema()


def category_json(category: Category) -> dict:
    return _category_schema.dump(category)


async def _admin(request: web.Request) -> User:
    user, _ = await authenticate(request)
    if not user.is_admin:
        raise APIError(403, "forbidden", "only administrators may change categories")
    return user


def _conflict(exc: Conflict) -> APIError:
    return APIError(409, "conflict", f"a category with this {exc.field} exists", {exc.field: ["already exists"]})


_not_found = {404: {"schema": ErrorSchema, "description": "no such category"}}
_admin_responses = {
    401: {"schema": ErrorSchema, "description": "missing or invalid access token"},
    403: {"schema": ErrorSchema, "description": "not an administrator"},
    **RATE_LIMITED,
}


@docs(tags=["categories"], summary="List categories",
      description="Most viewers (of live streams) first, then by name.",
      responses={200: {"schema": CategoryPageSchema, "description": "one page of categories"},
                 422: {"schema": ErrorSchema, "description": "invalid limit or offset"}, **RATE_LIMITED})
@querystring_schema(PageQuerySchema)
async def list_categories(request: web.Request) -> web.Response:
    page = load_query(request, PageQuerySchema())
    store = request.config_dict[STORE]
    categories = await store.list_categories(limit=page["limit"], offset=page["offset"])
    total = await store.count_categories()
    return web.json_response(page_json([category_json(c) for c in categories], total, page))


@docs(tags=["categories"], summary="A category", parameters=[ID_PARAM],
      responses={200: {"schema": CategorySchema, "description": "the category"}, **_not_found, **RATE_LIMITED})
async def get_category(request: web.Request) -> web.Response:
    category = await request.config_dict[STORE].get_category(int(request.match_info["id"]))
    if category is None:
        raise APIError(404, "not_found", "no such category")
    return web.json_response(category_json(category))


@docs(tags=["categories"], summary="Create a category (administrators)", security=[{"bearerAuth": []}],
      responses={201: {"schema": CategorySchema, "description": "created"},
                 409: {"schema": ErrorSchema, "description": "name taken"},
                 **JSON_BODY_ERRORS, **_admin_responses})
@request_schema(CategoryCreateSchema, required=True)
async def create_category(request: web.Request) -> web.Response:
    user = await _admin(request)
    body = await load_json(request, CategoryCreateSchema())
    try:
        category = await request.config_dict[STORE].create_category(body["name"], body["description"])
    except Conflict as exc:
        raise _conflict(exc) from None
    log.info("user %d created category %d", user.id, category.id)
    return web.json_response(category_json(category), status=201)


@docs(tags=["categories"], summary="Rename or describe a category (administrators)",
      security=[{"bearerAuth": []}], parameters=[ID_PARAM],
      responses={200: {"schema": CategorySchema, "description": "the updated category"},
                 409: {"schema": ErrorSchema, "description": "name taken"},
                 **_not_found, **JSON_BODY_ERRORS, **_admin_responses})
@request_schema(CategoryUpdateSchema, required=True)
async def update_category(request: web.Request) -> web.Response:
    await _admin(request)
    body = await load_json(request, CategoryUpdateSchema())
    try:
        category = await request.config_dict[STORE].update_category(
            int(request.match_info["id"]), name=body.get("name"), description=body.get("description")
        )
    except NotFound:
        raise APIError(404, "not_found", "no such category") from None
    except Conflict as exc:
        raise _conflict(exc) from None
    return web.json_response(category_json(category))


@docs(tags=["categories"], summary="Delete a category (administrators)",
      description="Its streams stay, without a category.",
      security=[{"bearerAuth": []}], parameters=[ID_PARAM],
      responses={200: {"schema": StatusSchema, "description": "deleted"}, **_not_found, **_admin_responses})
async def delete_category(request: web.Request) -> web.Response:
    user = await _admin(request)
    category_id = int(request.match_info["id"])
    if not await request.config_dict[STORE].delete_category(category_id):
        raise APIError(404, "not_found", "no such category")
    log.info("user %d deleted category %d", user.id, category_id)
    return web.json_response({"status": "deleted"})
