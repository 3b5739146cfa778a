"""Profiles: own profile, password change, public profiles, avatars."""
from __future__ import annotations

import asyncio
import io
import logging
import secrets
from fractions import Fraction
from pathlib import Path

import av
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp_apigami import docs, request_schema

from ..store import Conflict
from .auth import REFRESH_COOKIE, REFRESH_HEADER, REFRESH_HEADER_PARAM, public_user_json, user_json
from .context import API_SETTINGS, STORE, authenticate, load_json
from .errors import APIError, error_response
from .schemas import (
    JSON_BODY_ERRORS,
    RATE_LIMITED,
    ChangePasswordSchema,
    ErrorSchema,
    ProfileUpdateSchema,
    PublicUserSchema,
    StatusSchema,
    UserSchema,
)
from .security import hash_password, hash_refresh_token, verify_password

log = logging.getLogger("sfstream.api")

AVATAR_SIZE = 256  # avatars are stored as 256x256 JPEG, whatever was uploaded
AVATAR_FORMATS = {"mjpeg", "png", "webp", "gif", "bmp"}  # decoders we accept input from
AVATAR_DIR = "avatars"
AVATAR_URL = "/media/avatars/"

_auth_responses = {401: {"schema": ErrorSchema, "description": "missing or invalid access token"}, **RATE_LIMITED}


@docs(tags=["users"], summary="Your profile", security=[{"bearerAuth": []}],
      responses={200: {"schema": UserSchema, "description": "the profile"}, **_auth_responses})
async def get_profile(request: web.Request) -> web.Response:
    user, _ = await authenticate(request)
    return web.json_response(user_json(user))


@docs(tags=["users"], summary="Update your email or bio", security=[{"bearerAuth": []}],
      responses={200: {"schema": UserSchema, "description": "the updated profile"},
                 409: {"schema": ErrorSchema, "description": "email taken"},
                 **JSON_BODY_ERRORS, **_auth_responses})
@request_schema(ProfileUpdateSchema, required=True)
async def update_profile(request: web.Request) -> web.Response:
    user, _ = await authenticate(request)
    body = await load_json(request, ProfileUpdateSchema())
    try:
        user = await request.config_dict[STORE].update_user(
            user.id, email=body["email"].lower() if "email" in body else None, bio=body.get("bio")
        )
    except Conflict as exc:
        raise APIError(409, "conflict", f"this {exc.field} is already registered", {exc.field: ["already registered"]})
    return web.json_response(user_json(user))


@docs(tags=["users"], summary="Change your password",
      description="Ends every other login session of the account (their refresh tokens stop working).",
      security=[{"bearerAuth": []}],
      parameters=[{**REFRESH_HEADER_PARAM, "description": "the refresh token of the session to keep"}],
      responses={200: {"schema": StatusSchema, "description": "changed"},
                 403: {"schema": ErrorSchema, "description": "wrong current password"},
                 **JSON_BODY_ERRORS, **_auth_responses})
@request_schema(ChangePasswordSchema, required=True)
async def change_password(request: web.Request) -> web.Response:
    user, _ = await authenticate(request)
    body = await load_json(request, ChangePasswordSchema())
    if not await verify_password(body["current_password"], user.password_hash):
        raise APIError(403, "wrong_password", "the current password is wrong", {"current_password": ["wrong"]})
    settings = request.config_dict[API_SETTINGS]
    store = request.config_dict[STORE]
    await store.update_user(user.id, password_hash=await hash_password(body["new_password"], settings.bcrypt_rounds))
    # Keep the session this request belongs to, if it names one; end all others.
    keep = None
    token = request.headers.get(REFRESH_HEADER) or request.cookies.get(REFRESH_COOKIE)
    if token:
        record = await store.get_refresh_token(hash_refresh_token(token))
        if record is not None and record.user_id == user.id:
            keep = record.family_id
    await store.revoke_user_tokens(user.id, except_family=keep)
    log.info("user %d changed password; other sessions revoked", user.id)
    return web.json_response({"status": "password changed"})


@docs(tags=["users"], summary="A user's public profile",
      responses={200: {"schema": PublicUserSchema, "description": "public fields only"},
                 404: {"schema": ErrorSchema, "description": "no such user"}, **RATE_LIMITED})
async def get_user(request: web.Request) -> web.Response:
    user = await request.config_dict[STORE].get_user_by_username(request.match_info["username"])
    if user is None:
        raise APIError(404, "not_found", "no such user")
    return web.json_response(public_user_json(user))


def reencode_avatar(data: bytes, max_pixels: int) -> bytes:
    """Decode the upload and encode a fresh 256x256 JPEG (runs in a worker thread).

    Re-encoding, not storing the upload, means what we serve is a plain image we
    made: no polyglot files, no metadata (location, camera), no decoder tricks
    passed on to viewers. The pixel limit is checked from the header, before decoding.
    """
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise APIError(415, "unsupported_media_type", "not an image", {"avatar": ["not an image"]})
            stream = container.streams.video[0]
            codec = stream.codec_context.name
            if codec not in AVATAR_FORMATS:
                raise APIError(415, "unsupported_media_type", "use JPEG, PNG, WebP or GIF",
                               {"avatar": [f"unsupported image format {codec}"]})
            width, height = stream.codec_context.width, stream.codec_context.height
            if not width or not height or width * height > max_pixels:
                raise APIError(413, "image_too_large", f"images up to {max_pixels} pixels",
                               {"avatar": [f"{width}x{height} is too large"]})
            frame = next(container.decode(stream))
        # Centre square crop, then scale, in libav's filter graph.
        side = min(frame.width, frame.height)
        graph = av.filter.Graph()
        chain = [
            graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                             time_base=Fraction(1, 1)),
            graph.add("crop", f"{side}:{side}"),
            graph.add("scale", f"{AVATAR_SIZE}:{AVATAR_SIZE}"),
            graph.add("format", "yuvj420p"),
            graph.add("buffersink"),
        ]
        for a, b in zip(chain, chain[1:]):
            a.link_to(b)
        graph.configure()
        frame.pts = 0
        graph.push(frame)
        square = graph.pull()
        encoder = av.CodecContext.create("mjpeg", "w")
        encoder.width = encoder.height = AVATAR_SIZE
        encoder.pix_fmt = "yuvj420p"
        encoder.time_base = Fraction(1, 1)
        packets = encoder.encode(square) + encoder.encode(None)
        return bytes(packets[0])
    except APIError:
        raise
    except (av.error.FFmpegError, StopIteration, ValueError, OSError, IndexError):
        raise APIError(415, "unsupported_media_type", "the image could not be decoded",
                       {"avatar": ["not a valid image"]}) from None


@docs(tags=["users"], summary="Upload an avatar",
      description="multipart/form-data with one file field `avatar` (JPEG, PNG, WebP or GIF). "
                  "It is re-encoded server-side as a 256x256 JPEG.",
      security=[{"bearerAuth": []}],
      requestBody={"required": True, "content": {"multipart/form-data": {"schema": {
          "type": "object", "required": ["avatar"],
          "properties": {"avatar": {"type": "string", "format": "binary"}}}}}},
      responses={200: {"schema": UserSchema, "description": "the profile with its new avatar URL"},
                 400: {"schema": ErrorSchema, "description": "malformed multipart body"},
                 413: {"schema": ErrorSchema, "description": "file or image too large"},
                 415: {"schema": ErrorSchema, "description": "not a supported image"},
                 422: {"schema": ErrorSchema, "description": "no avatar field"}, **_auth_responses})
async def upload_avatar(request: web.Request) -> web.Response:
    user, _ = await authenticate(request)
    settings = request.config_dict[API_SETTINGS]
    if not request.content_type.startswith("multipart/"):
        raise APIError(415, "unsupported_media_type", "send multipart/form-data with an `avatar` file field")
    try:
        data = await _read_avatar_field(request, settings.avatar_max_bytes)
    except (ValueError, HttpProcessingError):
        # No boundary, a broken boundary or part headers: aiohttp's parser says ValueError/BadHttpMessage.
        raise APIError(400, "invalid_multipart", "the multipart body is malformed") from None
    if not data:
        raise APIError(422, "validation_failed", "invalid fields", {"avatar": ["Missing data for required field."]})
    jpeg = await asyncio.get_running_loop().run_in_executor(None, reencode_avatar, data, settings.avatar_max_pixels)
    directory = Path(settings.data_dir) / AVATAR_DIR
    directory.mkdir(parents=True, exist_ok=True)
    # A new name per upload: the file can be cached forever, and the old one goes.
    name = f"{user.id}-{secrets.token_hex(8)}.jpg"
    await asyncio.get_running_loop().run_in_executor(None, (directory / name).write_bytes, jpeg)
    old = user.avatar
    user = await request.config_dict[STORE].update_user(user.id, avatar=AVATAR_URL + name)
    if old and old.startswith(AVATAR_URL):
        (directory / old[len(AVATAR_URL):]).unlink(missing_ok=True)
    return web.json_response(user_json(user))


async def _read_avatar_field(request: web.Request, max_bytes: int) -> bytes | None:
    reader = await request.multipart()
    async for part in reader:
        # A nested multipart (a MultipartReader, no name) is never the file.
        if not isinstance(part, BodyPartReader) or part.name != "avatar":
            continue
        chunks, size = [], 0
        while chunk := await part.read_chunk(65536):
            size += len(chunk)
            if size > max_bytes:
                raise APIError(413, "payload_too_large", f"avatars up to {max_bytes} bytes",
                               {"avatar": ["file too large"]})
            chunks.append(chunk)
        return b"".join(chunks)
    return None


async def serve_avatar(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    path = Path(request.config_dict[API_SETTINGS].data_dir) / AVATAR_DIR / name
    if not path.is_file():
        # Served by the main app (outside the API's error middleware): answer directly.
        return error_response(404, "not_found", "no such avatar")
    data = await asyncio.get_running_loop().run_in_executor(None, path.read_bytes)
    resp = web.Response(body=data, content_type="image/jpeg")
    resp.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    resp.headers["Content-Disposition"] = "inline"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return resp
