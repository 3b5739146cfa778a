"""Stream keys, broadcast settings, streams (broadcasts), playback tokens and statistics."""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp_apigami import docs, querystring_schema, request_schema
from marshmallow import Schema, fields, validate

from ..broadcasts import BROADCASTS, Broadcasts, viewer_group
from ..hls.routes import HLS_OUTPUT
from ..statistics import summarize
from ..store import NotFound, Stream, User
from ..streamkeys import InvalidPlaybackToken, UnreadableKey
from ..transcode.ladder import parse_ladder
from .context import API_SETTINGS, BUS, STORE, authenticate, load_json
from .errors import APIError
from .pagination import PageQuerySchema, load_query, page_json
from .schemas import JSON_BODY_ERRORS, NO_NUL, RATE_LIMITED, ErrorSchema, StrictSchema

log = logging.getLogger("sfstream.api")

SORTS = ("viewers", "started")

# ---------------------------------------------------------------- schemas

TITLE = [validate.Length(max=140), NO_NUL]
DESCRIPTION = [validate.Length(max=2000), NO_NUL]


class StreamKeySchema(Schema):
    stream_key = fields.String(required=True, metadata={"description": "secret: whoever has it can broadcast as you"})
    rtmp_url = fields.String(required=True, metadata={"description": "the encoder's server URL (OBS: Server)"})


class BroadcastFieldsSchema(StrictSchema):
    title = fields.String(validate=TITLE)
    description = fields.String(validate=DESCRIPTION)
    category_id = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=1, max=2**53))
    is_private = fields.Boolean(truthy={True}, falsy={False})  # JSON true/false only, not "yes"


class LadderSchema(StrictSchema):
    ladder = fields.String(required=True, allow_none=True, validate=validate.Length(max=200),
                           metadata={"description": 'e.g. "720p,480p" or "720p@2500k,360p"; "none": source only; '
                                                    "null: the server's --ladder"})


class StreamSettingsSchema(Schema):
    title = fields.String(required=True)
    description = fields.String(required=True)
    category_id = fields.Integer(required=True, allow_none=True)
    is_private = fields.Boolean(required=True)


class StreamUserSchema(Schema):
    id = fields.Integer(required=True)
    username = fields.String(required=True)
    avatar = fields.String(required=True, allow_none=True)


class StreamCategorySchema(Schema):
    id = fields.Integer(required=True)
    name = fields.String(required=True)


class RenditionSchema(Schema):
    name = fields.String(required=True, metadata={"description": "source, or a ladder rung like 720p"})
    width = fields.Integer(required=True, allow_none=True)
    height = fields.Integer(required=True, allow_none=True)
    bandwidth = fields.Integer(required=True, metadata={"description": "peak bits/s of its segments"})
    active = fields.Boolean(required=True, metadata={"description": "false: shed for lack of CPU"})


class StreamSchema(Schema):
    id = fields.Integer(required=True)
    user = fields.Nested(StreamUserSchema, required=True)
    title = fields.String(required=True)
    description = fields.String(required=True)
    thumbnail = fields.String(required=True, allow_none=True)
    category = fields.Nested(StreamCategorySchema, required=True, allow_none=True)
    is_live = fields.Boolean(required=True)
    is_private = fields.Boolean(required=True)
    viewers_count = fields.Integer(required=True)
    started_at = fields.DateTime(required=True, allow_none=True)
    ended_at = fields.DateTime(required=True, allow_none=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)
    hls_url = fields.String(required=True, allow_none=True,
                            metadata={"description": "multivariant playlist while live (private: add ?token=)"})
    renditions = fields.List(fields.Nested(RenditionSchema),
                             metadata={"description": "GET /streams/{id} of a live stream served by this instance"})


class StreamPageSchema(Schema):
    items = fields.List(fields.Nested(StreamSchema), required=True)
    total = fields.Integer(required=True)
    limit = fields.Integer(required=True)
    offset = fields.Integer(required=True)


class StreamQuerySchema(PageQuerySchema):
    category = fields.Integer(validate=validate.Range(min=1, max=10**18 - 1),
                              metadata={"description": "category id"})
    q = fields.String(validate=[validate.Length(max=100), NO_NUL], metadata={"description": "text in the title"})
    sort = fields.String(load_default="viewers", validate=validate.OneOf(SORTS),
                         metadata={"description": "viewers (most first) or started (newest first)"})


class TokenQuerySchema(StrictSchema):
    # A JWT: URL-safe ASCII; bounded so that a URL carrying it stays under HTTP's line limit.
    token = fields.String(validate=validate.Regexp(r"^[A-Za-z0-9_.\-]{1,2048}$", error="not a playback token"),
                          metadata={"description": "playback token of a private stream"})


class PlaybackTokenSchema(Schema):
    token = fields.String(required=True)
    expires_at = fields.DateTime(required=True)
    hls_url = fields.String(required=True)


class SampleSchema(Schema):
    at = fields.DateTime(required=True)
    viewers = fields.Integer(required=True)


class StreamStatisticsSchema(Schema):
    stream_id = fields.Integer(required=True)
    is_live = fields.Boolean(required=True)
    started_at = fields.DateTime(required=True, allow_none=True)
    ended_at = fields.DateTime(required=True, allow_none=True)
    duration_seconds = fields.Float(required=True)
    current_viewers = fields.Integer(required=True)
    peak_viewers = fields.Integer(required=True)
    average_viewers = fields.Float(required=True)
    unique_viewers = fields.Integer(required=True)
    watch_seconds = fields.Float(required=True, metadata={"description": "total watch time of all viewers"})
    sample_interval_seconds = fields.Float(required=True)
    samples = fields.List(fields.Nested(SampleSchema), required=True)


class FollowersOnDaySchema(Schema):
    date = fields.String(required=True)
    followers = fields.Integer(required=True)


class UserStatisticsSchema(Schema):
    username = fields.String(required=True)
    broadcasts = fields.Integer(required=True)
    live_seconds = fields.Float(required=True)
    watch_seconds = fields.Float(required=True)
    peak_viewers = fields.Integer(required=True)
    unique_viewers = fields.Integer(required=True, metadata={"description": "summed over broadcasts"})
    followers_count = fields.Integer(required=True)
    followers_over_time = fields.List(fields.Nested(FollowersOnDaySchema), required=True,
                                      metadata={"description": "current followers by the day they followed"})


_AUTH = {401: {"schema": ErrorSchema, "description": "missing or invalid access token"}, **RATE_LIMITED}
_BEARER = [{"bearerAuth": []}]
_NOT_FOUND = {404: {"schema": ErrorSchema, "description": "no such stream (or private)"}}
_FORBIDDEN = {403: {"schema": ErrorSchema, "description": "not your stream"}}
_BAD_QUERY = {422: {"schema": ErrorSchema, "description": "invalid query parameters"}}

# ---------------------------------------------------------------- helpers


def _broadcasts(request: web.Request) -> Broadcasts:
    return request.config_dict[BROADCASTS]


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.isoformat()


def stream_json(stream: Stream) -> dict:
    return {
        "id": stream.id,
        "user": {"id": stream.user_id, "username": stream.username, "avatar": stream.user_avatar},
        "title": stream.title,
        "description": stream.description,
        "thumbnail": stream.thumbnail,
        "category": None if stream.category_id is None else {"id": stream.category_id, "name": stream.category_name},
        "is_live": stream.is_live,
        "is_private": stream.is_private,
        "viewers_count": stream.viewers_count,
        "started_at": _iso(stream.started_at),
        "ended_at": _iso(stream.ended_at),
        "created_at": _iso(stream.created_at),
        "updated_at": _iso(stream.updated_at),
        "hls_url": f"/hls/{stream.username}/index.m3u8" if stream.is_live else None,
    }


def _page(streams: list[Stream], total: int, page: dict) -> web.Response:
    return web.json_response(page_json([stream_json(s) for s in streams], total, page))


async def optional_user(request: web.Request) -> User | None:
    """The caller if it sent a bearer token (then it must be valid), else None."""
    if "Authorization" not in request.headers:
        return None
    user, _ = await authenticate(request)
    return user


def _stream_id(request: web.Request) -> int:
    return int(request.match_info["id"])  # the route allows 1-18 digits: fits every driver


async def _visible_stream(request: web.Request, token: str | None) -> Stream:
    """The stream of the path, if the caller may see it: public, or private and the caller is its
    owner or an admin, or holds a playback token for it. 404 otherwise (a private stream's
    existence is not revealed)."""
    stream = await request.config_dict[STORE].get_stream(_stream_id(request))
    if stream is None:
        raise APIError(404, "not_found", "no such stream")
    if stream.is_private:
        user = await optional_user(request)
        if user is None or (user.id != stream.user_id and not user.is_admin):
            try:
                if not token or _broadcasts(request).playback.verify(token).stream_id != stream.id:
                    raise InvalidPlaybackToken("not for this stream")
            except InvalidPlaybackToken:
                raise APIError(404, "not_found", "no such stream") from None
    return stream


async def _owned_stream(request: web.Request) -> tuple[User, Stream]:
    user, _ = await authenticate(request)
    stream = await request.config_dict[STORE].get_stream(_stream_id(request))
    if stream is None or (stream.is_private and stream.user_id != user.id and not user.is_admin):
        raise APIError(404, "not_found", "no such stream")
    if stream.user_id != user.id and not user.is_admin:
        raise APIError(403, "forbidden", "only the streamer (or an admin) may do this")
    return user, stream


def _rtmp_url(request: web.Request) -> str:
    settings = request.config_dict[API_SETTINGS]
    if settings.public_rtmp_url:
        return settings.public_rtmp_url
    host = urlsplit(settings.public_url).hostname if settings.public_url else request.url.host
    if host and ":" in host:
        host = f"[{host}]"  # IPv6
    return f"rtmp://{host or 'localhost'}:{_broadcasts(request).rtmp_port}/{settings.rtmp_app}"


def _public_base(request: web.Request) -> str:
    settings = request.config_dict[API_SETTINGS]
    return settings.public_url.rstrip("/") if settings.public_url else f"{request.scheme}://{request.host}"


def _no_such_category() -> APIError:
    return APIError(422, "validation_failed", "invalid fields", {"category_id": ["no such category"]})


async def _category_exists(request: web.Request, category_id: int | None) -> None:
    if category_id is not None and await request.config_dict[STORE].get_category(category_id) is None:
        raise _no_such_category()


# ---------------------------------------------------------------- stream key and settings


async def _new_key(request: web.Request, user: User, *, replace: bool):
    """Store a fresh stream key for `user` (replace=False: only if they have none yet, so two
    racing first requests make one key). Returns the channel as stored."""
    keys = _broadcasts(request).keys
    key = keys.generate()
    return await request.config_dict[STORE].set_channel_key(user.id, keys.seal(key, user.id), keys.lookup_hash(key),
                                                            replace=replace)


async def _channel(request: web.Request, user: User):
    """The user's channel, made (with its key) on first use."""
    channel = await request.config_dict[STORE].get_channel(user.id)
    return channel if channel is not None else await _new_key(request, user, replace=False)


async def _key_response(request: web.Request, user: User, *, reset: bool) -> web.Response:
    b = _broadcasts(request)
    channel = await (_new_key(request, user, replace=True) if reset else _channel(request, user))
    try:
        key = b.keys.open(channel.stream_key_ciphertext, user.id)
    except UnreadableKey:
        # The secret key changed since this key was stored: it cannot work on publish either.
        log.warning("user %d: stored stream key unreadable (secret key changed?); issuing a new one", user.id)
        channel = await _new_key(request, user, replace=True)
        key = b.keys.open(channel.stream_key_ciphertext, user.id)
    if reset:
        closed = b.disconnect(user.username, "stream key reset")
        log.info("user %d reset their stream key%s", user.id, "; live publisher disconnected" if closed else "")
    return web.json_response({"stream_key": key, "rtmp_url": _rtmp_url(request)},
                             headers={"Cache-Control": "no-store"})


@docs(tags=["stream"], summary="Your stream key and the RTMP server URL",
      description="Made on first use. Publish to `{rtmp_url}/{stream_key}` (OBS: Server = rtmp_url, "
                  "Stream Key = stream_key). Stored encrypted; never logged.",
      security=_BEARER, responses={200: {"schema": StreamKeySchema, "description": "the key"}, **_AUTH})
async def get_stream_key(request: web.Request) -> web.Response:
    user, _ = await authenticate(request)
    return await _key_response(request, user, reset=False)


@docs(tags=["stream"], summary="Replace your stream key",
      description="The old key stops working at once; a live broadcast using it is disconnected.",
      security=_BEARER, responses={200: {"schema": StreamKeySchema, "description": "the new key"}, **_AUTH})
async def reset_stream_key(request: web.Request) -> web.Response:
    user, _ = await authenticate(request)
    return await _key_response(request, user, reset=True)


def _settings_json(channel) -> dict:
    return {"title": channel.title, "description": channel.description, "category_id": channel.category_id,
            "is_private": channel.is_private}


@docs(tags=["stream"], summary="Defaults of your next broadcasts", security=_BEARER,
      responses={200: {"schema": StreamSettingsSchema, "description": "the defaults"}, **_AUTH})
async def get_stream_settings(request: web.Request) -> web.Response:
    user, _ = await authenticate(request)
    return web.json_response(_settings_json(await _channel(request, user)))


@docs(tags=["stream"], summary="Set the defaults of your next broadcasts",
      description="Title, description, category and privacy a broadcast starts with when none was "
                  "prepared with POST /streams.", security=_BEARER,
      responses={200: {"schema": StreamSettingsSchema, "description": "the defaults"}, **JSON_BODY_ERRORS, **_AUTH})
@request_schema(BroadcastFieldsSchema, required=True)
async def put_stream_settings(request: web.Request) -> web.Response:
    user, _ = await authenticate(request)
    body = await load_json(request, BroadcastFieldsSchema())
    await _category_exists(request, body.get("category_id"))
    await _channel(request, user)
    try:
        channel = await request.config_dict[STORE].update_channel(user.id, body)
    except NotFound:  # the category went away meanwhile
        raise _no_such_category() from None
    return web.json_response(_settings_json(channel))


# ---------------------------------------------------------------- streams


@docs(tags=["streams"], summary="Prepare your next broadcast",
      description="Your next publish goes live with these title, description, category and privacy "
                  "(a previous prepared one is replaced). 409 while you are live: change the live "
                  "stream with PUT /streams/{id}.", security=_BEARER,
      responses={201: {"schema": StreamSchema, "description": "the prepared stream"},
                 409: {"schema": ErrorSchema, "description": "you are live"}, **JSON_BODY_ERRORS, **_AUTH})
@request_schema(BroadcastFieldsSchema, required=True)
async def create_stream(request: web.Request) -> web.Response:
    user, _ = await authenticate(request)
    body = await load_json(request, BroadcastFieldsSchema())
    await _category_exists(request, body.get("category_id"))
    store = request.config_dict[STORE]
    if await store.get_live_stream_of(user.id) is not None:
        raise APIError(409, "already_live", "you are live: update the live stream instead")
    defaults = await _channel(request, user)
    try:
        stream = await store.prepare_stream(
            user.id, title=body.get("title", defaults.title), description=body.get("description", defaults.description),
            category_id=body.get("category_id", defaults.category_id),
            is_private=body.get("is_private", defaults.is_private),
        )
    except NotFound:
        raise _no_such_category() from None
    return web.json_response(stream_json(stream), status=201)


@docs(tags=["streams"], summary="Live streams",
      description="Public live streams; filter by category and by text in the title; sort by viewers "
                  "(default) or by start time (newest first).",
      responses={200: {"schema": StreamPageSchema, "description": "a page of live streams"}, **_BAD_QUERY,
                 **RATE_LIMITED})
@querystring_schema(StreamQuerySchema)
async def list_streams(request: web.Request) -> web.Response:
    query = load_query(request, StreamQuerySchema())
    streams, total = await request.config_dict[STORE].list_streams(
        live=True, category_id=query.get("category"), search=query.get("q") or None, sort=query["sort"],
        limit=query["limit"], offset=query["offset"],
    )
    return _page(streams, total, query)


@docs(tags=["streams"], summary="One stream",
      description="Private streams: for their owner, admins, and holders of a playback token.",
      responses={200: {"schema": StreamSchema, "description": "the stream"}, **_NOT_FOUND, **_BAD_QUERY, **_AUTH})
@querystring_schema(TokenQuerySchema)
async def get_stream(request: web.Request) -> web.Response:
    token = load_query(request, TokenQuerySchema()).get("token")
    stream = await _visible_stream(request, token)
    body = stream_json(stream)
    hls = request.config_dict[HLS_OUTPUT].get(stream.username) if stream.is_live else None
    if hls is not None:
        body["renditions"] = [
            {"name": r.name, "width": v.width if v else None, "height": v.height if v else None,
             "bandwidth": r.bandwidth()[0], "active": not r.shed}
            for r in hls.renditions.values()
            for v in [(r.segmenter.init.video if r.segmenter.init else None)]
        ]
    return web.json_response(body)


@docs(tags=["streams"], summary="Change a stream (title, description, category, privacy)", security=_BEARER,
      responses={200: {"schema": StreamSchema, "description": "the stream"}, **_FORBIDDEN, **_NOT_FOUND,
                 **JSON_BODY_ERRORS, **_AUTH})
@request_schema(BroadcastFieldsSchema, required=True)
async def update_stream(request: web.Request) -> web.Response:
    _, stream = await _owned_stream(request)
    body = await load_json(request, BroadcastFieldsSchema())
    await _category_exists(request, body.get("category_id"))
    store = request.config_dict[STORE]
    try:
        stream = await store.update_stream(stream.id, body)
    except NotFound:
        if await store.get_stream(stream.id) is not None:  # the category went away meanwhile
            raise _no_such_category() from None
        raise APIError(404, "not_found", "no such stream") from None
    live = _broadcasts(request).live_broadcast(stream.id)
    if live is not None:
        live.private = stream.is_private  # HLS access changes at once
    return web.json_response(stream_json(stream))


@docs(tags=["streams"], summary="End a live stream, or delete a stream that is not live",
      description="A live stream is ended (its publisher is disconnected; the record and statistics stay). "
                  "A prepared or past stream is deleted with its statistics.", security=_BEARER,
      responses={204: {"description": "ended or deleted"}, **_FORBIDDEN, **_NOT_FOUND, **_AUTH})
async def delete_stream(request: web.Request) -> web.Response:
    _, stream = await _owned_stream(request)
    if stream.is_live:
        await _broadcasts(request).end_broadcast(stream.id, "stream ended through the API")
        log.info("stream %d ended through the API", stream.id)
    else:
        await request.config_dict[STORE].delete_stream(stream.id)
    return web.Response(status=204)


@docs(tags=["streams"], summary="A playback token for a private stream",
      description="Signed and expiring; give it to viewers: "
                  "`/hls/{username}/index.m3u8?token=...` plays the stream.", security=_BEARER,
      responses={200: {"schema": PlaybackTokenSchema, "description": "the token"}, **_FORBIDDEN, **_NOT_FOUND,
                 **_AUTH})
async def playback_token(request: web.Request) -> web.Response:
    _, stream = await _owned_stream(request)
    token, expires = _broadcasts(request).playback.issue(stream.id, stream.username)
    return web.json_response({
        "token": token,
        "expires_at": datetime.fromtimestamp(expires, timezone.utc).isoformat(),
        "hls_url": f"{_public_base(request)}/hls/{stream.username}/index.m3u8?token={token}",
    }, headers={"Cache-Control": "no-store"})


@docs(tags=["streams"], summary="A user's streams, live and past (newest first)",
      description="Private ones only for their owner.",
      responses={200: {"schema": StreamPageSchema, "description": "a page of streams"},
                 404: {"schema": ErrorSchema, "description": "no such user"}, **_BAD_QUERY, **_AUTH})
@querystring_schema(PageQuerySchema)
async def user_streams(request: web.Request) -> web.Response:
    page = load_query(request, PageQuerySchema())
    store = request.config_dict[STORE]
    owner = await store.get_user_by_username(request.match_info["username"])
    if owner is None:
        raise APIError(404, "not_found", "no such user")
    viewer = await optional_user(request)
    streams, total = await store.list_streams(
        user_id=owner.id, include_private_of=viewer.id if viewer else None,
        include_private=bool(viewer and viewer.is_admin), sort="created", limit=page["limit"], offset=page["offset"],
    )
    return _page(streams, total, page)


@docs(tags=["categories"], summary="Live streams in a category (most viewers first)",
      responses={200: {"schema": StreamPageSchema, "description": "a page of live streams"},
                 404: {"schema": ErrorSchema, "description": "no such category"}, **_BAD_QUERY, **RATE_LIMITED})
@querystring_schema(PageQuerySchema)
async def category_streams(request: web.Request) -> web.Response:
    page = load_query(request, PageQuerySchema())
    store = request.config_dict[STORE]
    category = await store.get_category(int(request.match_info["id"]))
    if category is None:
        raise APIError(404, "not_found", "no such category")
    streams, total = await store.list_streams(live=True, category_id=category.id, limit=page["limit"],
                                              offset=page["offset"])
    return _page(streams, total, page)


# ---------------------------------------------------------------- statistics


@docs(tags=["statistics"], summary="Viewers of one broadcast",
      description="Peak, time-weighted average and unique viewers, total watch time, duration, and the "
                  "viewer count sampled every stats_interval seconds.",
      responses={200: {"schema": StreamStatisticsSchema, "description": "the statistics"}, **_NOT_FOUND,
                 **_BAD_QUERY, **_AUTH})
@querystring_schema(TokenQuerySchema)
async def stream_statistics(request: web.Request) -> web.Response:
    stream = await _visible_stream(request, load_query(request, TokenQuerySchema()).get("token"))
    store, bus = request.config_dict[STORE], request.config_dict[BUS]
    samples = await store.stream_samples(stream.id)
    until = stream.ended_at or datetime.now(timezone.utc)
    summary = summarize(samples, stream.started_at or until, until)
    if stream.is_live:
        group = viewer_group(stream.username)
        current, unique = await bus.present(group), await bus.distinct(group)
    else:
        current, unique = 0, stream.unique_viewers
    return web.json_response({
        "stream_id": stream.id,
        "is_live": stream.is_live,
        "started_at": _iso(stream.started_at),
        "ended_at": _iso(stream.ended_at),
        "duration_seconds": summary.duration_seconds if stream.started_at else 0.0,
        "current_viewers": current,
        "peak_viewers": max(summary.peak_viewers, stream.peak_viewers, current),
        "average_viewers": summary.average_viewers,
        "unique_viewers": unique,
        "watch_seconds": summary.watch_seconds,
        "sample_interval_seconds": request.config_dict[API_SETTINGS].stats_interval,
        "samples": [{"at": at.isoformat(), "viewers": viewers} for at, viewers in samples],
    })


@docs(tags=["statistics"], summary="A streamer's totals",
      description="Broadcasts, time live, watch time, peak and unique viewers over all broadcasts; "
                  "followers now and by the day they followed.",
      responses={200: {"schema": UserStatisticsSchema, "description": "the statistics"},
                 404: {"schema": ErrorSchema, "description": "no such user"}, **RATE_LIMITED})
async def user_statistics(request: web.Request) -> web.Response:
    store = request.config_dict[STORE]
    user = await store.get_user_by_username(request.match_info["username"])
    if user is None:
        raise APIError(404, "not_found", "no such user")
    totals = await store.stream_totals(user.id)
    running, series = 0, []
    for day, count in await store.follower_counts_by_day(user.id):
        running += count
        series.append({"date": day, "followers": running})
    return web.json_response({
        "username": user.username,
        "broadcasts": totals.broadcasts,
        "live_seconds": totals.live_seconds,
        "watch_seconds": totals.watch_seconds,
        "peak_viewers": totals.peak_viewers,
        "unique_viewers": totals.unique_viewers,
        "followers_count": user.followers_count,
        "followers_over_time": series,
    })


# ---------------------------------------------------------------- administration


@docs(tags=["stream"], summary="Set a user's own transcoding ladder (administrators)",
      description="Applies from the user's next publish.", security=_BEARER,
      responses={200: {"schema": LadderSchema, "description": "the ladder now"},
                 403: {"schema": ErrorSchema, "description": "not an administrator"},
                 404: {"schema": ErrorSchema, "description": "no such user"}, **JSON_BODY_ERRORS, **_AUTH})
@request_schema(LadderSchema, required=True)
async def set_user_ladder(request: web.Request) -> web.Response:
    admin, _ = await authenticate(request)
    if not admin.is_admin:
        raise APIError(403, "forbidden", "administrators only")
    body = await load_json(request, LadderSchema())
    ladder = body["ladder"]
    if ladder is not None:
        try:
            parse_ladder(ladder)
        except ValueError as exc:
            raise APIError(422, "validation_failed", "invalid fields", {"ladder": [str(exc)]}) from None
    store = request.config_dict[STORE]
    user = await store.get_user_by_username(request.match_info["username"])
    if user is None:
        raise APIError(404, "not_found", "no such user")
    await _channel(request, user)
    channel = await store.update_channel(user.id, {"ladder": ladder})
    log.info("admin %d set the ladder of user %d", admin.id, user.id)
    return web.json_response({"ladder": channel.ladder})
