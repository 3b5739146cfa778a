"""Logging set-up (text or JSON lines) and the API request log.

Never log secrets: request lines carry the route template (not the raw path or query,
which may hold a playback token), never headers or bodies; stream keys, passwords and
tokens are not passed to any logger anywhere (tests/test_logs.py checks a full flow).
"""
from __future__ import annotations

import json
import logging
import time

from aiohttp import web

# LogRecord attributes that are not "extra" fields
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
access_log = logging.getLogger("sfstream.access")
USER_ID = web.RequestKey("user_id", int)  # set by authentication, read by the request log


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


JSONFormatter.converter = time.gmtime


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def route_template(request: web.Request) -> str:
    """The matched route's template ("/api/streams/{id}"): never the raw path, which may hold a
    token and would make one line kind (or metric series) per URL."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def log_requests(request: web.Request, handler):
    """One line per API request: method, route, status, duration, user id (when authenticated)."""
    start = time.perf_counter()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = route_template(request)
        ms = round((time.perf_counter() - start) * 1000, 1)
        user = request.get(USER_ID)
        access_log.info("%s %s %d %.1fms user=%s", request.method, route, status, ms, user if user else "-",
                        extra={"method": request.method, "route": route, "status": status, "duration_ms": ms,
                               "user_id": user})
