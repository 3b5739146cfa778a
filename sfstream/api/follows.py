"""Follows: follow and unfollow a user, and the public lists of followers and followed users.

Following is idempotent: POST twice and you follow once (200 both times, followers_count
counts you once); DELETE when not following is a 200 too. Following yourself is a 422.
"""
from __future__ import annotations

from aiohttp import web
from aiohttp_apigami import docs, querystring_schema
from marshmallow import Schema, fields

from ..store import NotFound, User
from .auth import public_user_json
from .context import STORE, authenticate
from .errors import APIError
from .pagination import PageQuerySchema, PageSchema, load_query, page_json
from .schemas import RATE_LIMITED, ErrorSchema, PublicUserSchema

USERNAME_ROUTE = "{username:[A-Za-z0-9_]{1,64}}"  # the pattern of GET /users/{username}


class FollowStatusSchema(Schema):
    following = fields.Boolean(required=True, metadata={"description": "whether you follow the user now"})
    user = fields.Nested(PublicUserSchema, required=True, metadata={"description": "with its followers_count now"})


class FollowEntrySchema(Schema):
    user = fields.Nested(PublicUserSchema, required=True)
    followed_at = fields.DateTime(required=True)


class FollowPageSchema(PageSchema):
    items = fields.List(fields.Nested(FollowEntrySchema), required=True, metadata={"description": "newest first"})


_no_user = {404: {"schema": ErrorSchema, "description": "no such user"}}
_follow_responses = {
    200: {"schema": FollowStatusSchema, "description": "your follow status and the user"},
    401: {"schema": ErrorSchema, "description": "missing or invalid access token"},
    **_no_user,
    422: {"schema": ErrorSchema, "description": "that is you"},
    **RATE_LIMITED,
}


async def _user(request: web.Request) -> User:
    user = await request.config_dict[STORE].get_user_by_username(request.match_info["username"])
    if user is None:
        raise APIError(404, "not_found", "no such user")
    return user


async def _me_and_them(request: web.Request) -> tuple[User, User]:
    me, _ = await authenticate(request)
    them = await _user(request)
    if me.id == them.id:
        raise APIError(422, "cannot_follow_self", "you cannot follow yourself", {"username": ["that is you"]})
    return me, them


async def _status(request: web.Request, following: bool, user: User) -> web.Response:
    # Read again: followers_count as it is after this request's change.
    fresh = await request.config_dict[STORE].get_user(user.id)
    if fresh is None:
        raise APIError(404, "not_found", "no such user")
    return web.json_response({"following": following, "user": public_user_json(fresh)})


@docs(tags=["follows"], summary="Follow a user", description="Idempotent: following twice counts once.",
      security=[{"bearerAuth": []}], responses=_follow_responses)
async def follow(request: web.Request) -> web.Response:
    me, them = await _me_and_them(request)
    try:
        await request.config_dict[STORE].follow(me.id, them.id)
    except NotFound:  # deleted since we looked it up
        raise APIError(404, "not_found", "no such user") from None
    return await _status(request, True, them)


@docs(tags=["follows"], summary="Unfollow a user", description="Idempotent: not following is fine.",
      security=[{"bearerAuth": []}], responses=_follow_responses)
async def unfollow(request: web.Request) -> web.Response:
    me, them = await _me_and_them(request)
    await request.config_dict[STORE].unfollow(me.id, them.id)
    return await _status(request, False, them)


@docs(tags=["follows"], summary="Whether you follow a user", security=[{"bearerAuth": []}],
      responses=_follow_responses)
async def follow_status(request: web.Request) -> web.Response:
    me, them = await _me_and_them(request)
    return await _status(request, await request.config_dict[STORE].is_following(me.id, them.id), them)


_list_responses = {
    200: {"schema": FollowPageSchema, "description": "one page, newest follow first"},
    **_no_user,
    422: {"schema": ErrorSchema, "description": "invalid limit or offset"},
    **RATE_LIMITED,
}


@docs(tags=["follows"], summary="Who follows a user", responses=_list_responses)
@querystring_schema(PageQuerySchema)
async def followers(request: web.Request) -> web.Response:
    page = load_query(request, PageQuerySchema())
    user = await _user(request)
    store = request.config_dict[STORE]
    rows = await store.list_followers(user.id, limit=page["limit"], offset=page["offset"])
    return web.json_response(page_json(_entries(rows), await store.count_followers(user.id), page))


@docs(tags=["follows"], summary="Whom a user follows", responses=_list_responses)
@querystring_schema(PageQuerySchema)
async def following(request: web.Request) -> web.Response:
    page = load_query(request, PageQuerySchema())
    user = await _user(request)
    store = request.config_dict[STORE]
    rows = await store.list_following(user.id, limit=page["limit"], offset=page["offset"])
    return web.json_response(page_json(_entries(rows), await store.count_following(user.id), page))


_entry_schema = FollowEntrySchema()


def _entries(rows) -> list[dict]:
    return [_entry_schema.dump({"user": user, "followed_at": followed_at}) for user, followed_at in rows]
