"""Application state keys shared by the media side and the API (the store and the bus are
opened by the API's cleanup contexts but used by ingest too)."""
from __future__ import annotations

from aiohttp import web

from .bus import Bus
from .store import Store

STORE = web.AppKey("store", Store)
BUS = web.AppKey("bus", Bus)
