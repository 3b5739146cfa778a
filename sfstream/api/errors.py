"""API errors: one JSON shape for every failure.

    {"error": {"code": "validation_failed", "message": "...", "fields": {"email": ["Not a valid email address."]}}}
"""
from __future__ import annotations

import logging

from aiohttp import web

log = logging.getLogger("sfstream.api")


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, fields: dict | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, fields: dict | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, "fields": fields or {}}}, status=status)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


@web.middleware
async def error_middleware(request: web.Request, handler):
    """APIError and aiohttp's own HTTP errors become the JSON error shape; bugs become a bare 500."""
    try:
        return await handler(request)
    except APIError as exc:
        resp = error_response(exc.status, exc.code, exc.message, exc.fields)
        resp.headers.update(exc.headers)
        return resp
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        resp = error_response(exc.status, code, exc.reason)
        for name in ("Allow", "Retry-After"):
            if name in exc.headers:
                resp.headers[name] = exc.headers[name]
        return resp
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal server error")
