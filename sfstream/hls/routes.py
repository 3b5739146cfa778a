"""HTTP handlers serving HLS from memory."""
from __future__ import annotations

import dataclasses
import re
import secrets
import time
from typing import Protocol

from aiohttp import web

from ..metrics import METRICS
from . import playlist
from .live import HLSOutput, HLSStream, Rendition



class Audience(Protocol):
    """Who may watch, and who is watching (the app wires sfstream.broadcasts.Broadcasts)."""

    async def can_watch(self, name: str, token: str | None) -> bool: ...

    async def hls_seen(self, name: str, session: str | None) -> None: ...

    def viewer_session(self, name: str, proposed: str | None) -> str: ...


HLS_OUTPUT = web.AppKey("hls_output", HLSOutput)
HLS_AUDIENCE = web.AppKey("hls_audience", Audience)

M3U8 = "application/vnd.apple.mpegurl"
MP4 = "video/mp4"
CACHE_IMMUTABLE = "public, max-age=31536000, immutable"
CACHE_PLAYLIST = "no-cache"
# Players on other origins (a watch page elsewhere, hls.js demo) must be able to read us.
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Range, Origin, Accept",
    "Access-Control-Expose-Headers": "Content-Length, Age, Date",
    "Access-Control-Max-Age": "86400",
}
NAME_RE = r"[A-Za-z0-9_.\-]{1,64}"
_INIT_RE = re.compile(r"init-([0-9a-f]+)-(\d+)\.mp4")
_SEG_RE = re.compile(r"seg-([0-9a-f]+)-(\d+)\.m4s")
_PART_RE = re.compile(r"part-([0-9a-f]+)-(\d+)\.(\d+)\.m4s")
MAX_DIRECTIVE = 2**63 - 1  # _HLS_msn / _HLS_part are decimal-integers (spec 4.2)
# A playback token travels as a path segment "~TOKEN" between the stream name and the
# rendition, so that every relative URI of the playlists (segments, parts, init sections,
# rendition reports) carries it without rewriting them per viewer.
GRANT_RE = r"~[A-Za-z0-9_.\-]{1,2048}"
SESSION_PARAM = "vs"


def _response(body: bytes, content_type: str, cache: str) -> web.Response:
    resp = web.Response(body=body, content_type=content_type)
    resp.headers["Cache-Control"] = cache
    resp.headers.update(CORS)
    return resp


def _error(status: int, code: str, message: str, fields: dict | None = None) -> web.Response:
    resp = web.json_response({"error": {"code": code, "message": message, "fields": fields or {}}}, status=status)
    resp.headers.update(CORS)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _not_found(what: str) -> web.Response:
    return _error(404, "not_found", f"{what} not found")


def _token(request: web.Request) -> str | None:
    grant = request.match_info.get("grant")
    return grant[1:] if grant else request.query.get("token")


async def _refused(request: web.Request) -> web.Response | None:
    """403 unless the audience lets this request watch the stream."""
    audience = request.app.get(HLS_AUDIENCE)
    if audience is None or await audience.can_watch(request.match_info["name"], _token(request)):
        return None
    return _error(403, "forbidden", "this stream is private: a valid playback token is needed")


def _privately(resp: web.Response, request: web.Request) -> web.Response:
    # What a playback token opened is not for shared caches.
    if "grant" in request.match_info:
        resp.headers["Cache-Control"] = resp.headers["Cache-Control"].replace("public", "private")
    return resp


def _blocking_timeout(stream: HLSStream, r: Rendition) -> float:
    # Spec 6.2.5.2: a server SHOULD answer 503 if a blocking request is not
    # satisfied within three times the target duration.
    return 3 * playlist.target_duration(r.segmenter)


def _first_segment_wait(stream: HLSStream) -> float:
    # A player that opens the URL right after the publisher starts should get a
    # playlist, not a 404: wait for the first segment for up to a few targets.
    return max(10.0, 3 * stream.settings.segment_duration)


async def _stream_with_segments(request: web.Request) -> HLSStream | None:
    stream = request.app[HLS_OUTPUT].get(request.match_info["name"])
    if stream is None:
        return None
    source = stream.source
    await source.wait_until(lambda: stream.has_segments() or source.segmenter.ended, _first_segment_wait(stream))
    # A rung that has nothing yet (its encoder failed, say) must not keep players from the rest.
    return stream if source.segmenter.segments else None


async def multivariant(request: web.Request) -> web.Response:
    if (refused := await _refused(request)) is not None:
        return refused
    stream = await _stream_with_segments(request)
    if stream is None:
        return _not_found("stream")
    # Each player gets a viewer session id in its media playlist URLs (players keep the query
    # when they reload), so its playlist requests say who is watching; a reload of this
    # playlist that already has one keeps it.
    audience = request.app.get(HLS_AUDIENCE)
    proposed = request.query.get(SESSION_PARAM)
    session = audience.viewer_session(stream.name, proposed) if audience else secrets.token_urlsafe(12)
    token = _token(request)
    prefix = f"~{token}/" if token else ""
    variants = [dataclasses.replace(v, uri=f"{prefix}{v.uri}?{SESSION_PARAM}={session}") for v in stream.variants()]
    body = playlist.multivariant_playlist(variants).encode()
    return _response(body, M3U8, CACHE_PLAYLIST)


def _rendition(request: web.Request) -> tuple[HLSStream, Rendition] | None:
    stream = request.app[HLS_OUTPUT].get(request.match_info["name"])
    if stream is None:
        return None
    rendition = stream.renditions.get(request.match_info["rendition"])
    return (stream, rendition) if rendition is not None else None


def _directive(query, name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    # isascii: str.isdigit() also accepts digits such as "²" that int() refuses.
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_DIRECTIVE:
        raise ValueError(name)
    return int(raw)


async def media_playlist(request: web.Request) -> web.Response:
    if (refused := await _refused(request)) is not None:
        return refused
    found = _rendition(request)
    if found is None:
        return _not_found("rendition")
    stream, r = found
    audience = request.app.get(HLS_AUDIENCE)
    if audience is not None:
        await audience.hls_seen(stream.name, request.query.get(SESSION_PARAM))
    seg = r.segmenter
    try:
        msn = _directive(request.query, "_HLS_msn")
        part = _directive(request.query, "_HLS_part")
    except ValueError as exc:
        return _error(400, "invalid_directive", f"{exc} must be a decimal integer", {str(exc): "not an integer"})
    skip_value = request.query.get("_HLS_skip")
    if skip_value is not None and skip_value not in ("YES", "v2"):
        return _error(400, "invalid_directive", "_HLS_skip must be YES or v2", {"_HLS_skip": "not YES or v2"})
    skip = skip_value is not None
    if part is not None and msn is None:
        # Spec 6.2.5.2: _HLS_part without _HLS_msn is a Bad Request.
        return _error(400, "invalid_directive", "_HLS_part requires _HLS_msn", {"_HLS_part": "without _HLS_msn"})

    await r.wait_until(lambda: bool(seg.segments) or seg.ended, _first_segment_wait(stream))
    if not seg.segments:
        return _not_found("segment")
    blocking = msn is not None and not seg.ended  # directives are ignored once ENDLIST is there
    if blocking:
        last = seg.last_part_position()
        last_msn, last_part = last if last is not None else (seg.next_msn - 1, 0)
        if msn > last_msn + 2:
            return _error(400, "msn_too_far", f"_HLS_msn {msn} is beyond the next two segments ({last_msn} is the last)")
        if part is not None:
            # Advance Part Limit (6.2.5.2): 3 / PART-TARGET parts for targets under 1 s.
            target = seg.part_target_used
            limit = int(3 / target) if target < 1 else 3
            ahead = part - last_part if msn == last_msn else part + 1
            if msn >= last_msn and ahead > limit:
                return _error(400, "part_too_far", f"_HLS_part {part} is more than {limit} parts ahead")
            ready = lambda: r.has_part(msn, part) or seg.ended  # noqa: E731
        else:
            ready = lambda: r.has_segment(msn) or seg.ended  # noqa: E731
        started = time.monotonic()
        answered = await r.wait_until(ready, _blocking_timeout(stream, r))
        _observe_wait(request, "playlist", started)
        if not answered:
            return _error(503, "not_yet_available", "the requested segment or part did not appear in time")
    resp = _response(r.playlist_bytes(stream.token, skip), M3U8, CACHE_PLAYLIST)
    if blocking:
        # A blocking request's URL names the playlist state it asked for: caches and CDNs
        # may keep the answer and collapse identical requests of many viewers (spec 6.2.5.2).
        resp.headers["Cache-Control"] = f"public, max-age={3 * playlist.target_duration(seg)}"
    return _privately(resp, request)


def _observe_wait(request: web.Request, kind: str, started: float) -> None:
    metrics = request.app.get(METRICS)
    if metrics is not None:
        metrics.blocking_wait.labels(kind).observe(time.monotonic() - started)


async def _part(request: web.Request, stream: HLSStream, r: Rendition, msn: int, index: int) -> web.Response:
    seg = r.segmenter
    segment = seg.find_segment(msn)
    if segment is None or len(segment.parts) <= index:
        # The hinted next part (EXT-X-PRELOAD-HINT) is requested before it exists: hold the
        # request until it is complete, or until it can no longer appear.
        next_msn, next_index = seg.next_part_position()
        if (msn, index) > (next_msn, next_index) or seg.ended:
            return _not_found("part")

        def settled() -> bool:
            s = seg.find_segment(msn)
            return seg.ended or (s is not None and (len(s.parts) > index or s.complete)) or seg.next_msn > msn + 1

        started = time.monotonic()
        settled_in_time = await r.wait_until(settled, _blocking_timeout(stream, r))
        _observe_wait(request, "part", started)
        if not settled_in_time:
            return _error(503, "not_yet_available", "the part did not appear in time")
        segment = seg.find_segment(msn)
        if segment is None or len(segment.parts) <= index:
            return _not_found("part")
    return _response(segment.parts[index].data, MP4, CACHE_IMMUTABLE)


async def media_file(request: web.Request) -> web.Response:
    if (refused := await _refused(request)) is not None:
        return refused
    return _privately(await _media_file(request), request)


async def _media_file(request: web.Request) -> web.Response:
    found = _rendition(request)
    if found is None:
        return _not_found("rendition")
    stream, r = found
    filename = request.match_info["file"]
    m = _PART_RE.fullmatch(filename)
    if m and m.group(1) == stream.token:
        return await _part(request, stream, r, int(m.group(2)), int(m.group(3)))
    m = _SEG_RE.fullmatch(filename)
    if m and m.group(1) == stream.token:
        seg = r.segmenter.find_segment(int(m.group(2)))
        if seg is not None and seg.complete:
            return _response(seg.data, MP4, CACHE_IMMUTABLE)
        return _not_found("segment")
    m = _INIT_RE.fullmatch(filename)
    if m and m.group(1) == stream.token:
        init = r.find_init(int(m.group(2)))
        if init is not None:
            return _response(init.data, MP4, CACHE_IMMUTABLE)
    return _not_found("file")


async def preflight(request: web.Request) -> web.Response:
    resp = web.Response(status=204)
    resp.headers.update(CORS)
    return resp


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"/hls/{{name:{NAME_RE}}}/index.m3u8", multivariant)
    for base in (f"/hls/{{name:{NAME_RE}}}", f"/hls/{{name:{NAME_RE}}}/{{grant:{GRANT_RE}}}"):
        app.router.add_get(f"{base}/{{rendition:[a-z0-9]+}}/{playlist.MEDIA_PLAYLIST}", media_playlist)
        app.router.add_get(f"{base}/{{rendition:[a-z0-9]+}}/{{file}}", media_file)
    app.router.add_route("OPTIONS", "/hls/{tail:.*}", preflight)
