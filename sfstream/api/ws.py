"""Websocket /ws/streams/{id}/viewers: the live viewer count of a stream.

On connect the socket gets {"type": "viewers", "stream_id", "viewers"}; then the same
whenever the count changes, at most twice a second (one check per room every
UPDATE_INTERVAL, not one per socket); and {"type": "ended", ...} when the broadcast ends,
after which the server closes the socket (code 1000).

Each socket is itself a viewer while it is open. A page that also plays the HLS can pass
the player's session id (`?session=`, the `vs` of its playlist URLs) so that the two count
once. Sockets of one stream share a room: one task per room refreshes their presence in
the bus (one call for all of them), reads the count and fans it out.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets

from aiohttp import WSMsgType, web

from ..broadcasts import BROADCASTS, Broadcast, viewer_group
from .context import API_SETTINGS, BUS, STORE, client_ip
from .errors import APIError, error_response
from .streams import _visible_stream

log = logging.getLogger("sfstream.ws")

UPDATE_INTERVAL = 0.5  # seconds: at most ~2 count messages per second per socket
LIVENESS_CHECK = 2.0  # seconds between database checks that a stream published elsewhere is still live
MAX_CLIENT_MESSAGE = 4096


class Room:
    def __init__(self, stream_id: int, name: str) -> None:
        self.stream_id = stream_id
        self.name = name
        self.group = viewer_group(name)
        self.sockets: dict[web.WebSocketResponse, str] = {}  # socket -> viewer member id
        self.last_count: int | None = None
        self.task: asyncio.Task | None = None
        self.ended = False


class ViewerSockets:
    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.rooms: dict[int, Room] = {}
        self.connections = 0
        self.per_client: dict[str, int] = {}  # open sockets by client address
        self._ending: set[asyncio.Task] = set()

    # -- messages
    @staticmethod
    def _message(kind: str, room: Room, viewers: int) -> str:
        return json.dumps({"type": kind, "stream_id": room.stream_id, "viewers": viewers})

    async def _send_all(self, room: Room, text: str) -> None:
        # Sequential sends: each only queues the frame unless that client's buffer is full.
        for ws in list(room.sockets):
            if not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_str(text)

    # -- lifecycle of a room
    def join(self, stream_id: int, name: str, ws: web.WebSocketResponse, member: str) -> Room:
        room = self.rooms.get(stream_id)
        if room is None:
            room = self.rooms[stream_id] = Room(stream_id, name)
            room.task = asyncio.get_running_loop().create_task(self._run(room))
        room.sockets[ws] = member
        self.connections += 1
        return room

    def leave(self, room: Room, ws: web.WebSocketResponse) -> None:
        if room.sockets.pop(ws, None) is not None:
            self.connections -= 1
        if not room.sockets and self.rooms.get(room.stream_id) is room:
            del self.rooms[room.stream_id]
            if room.task is not None:
                room.task.cancel()

    async def _run(self, room: Room) -> None:
        bus = self.app[BUS]
        settings = self.app[API_SETTINGS]
        ttl = settings.viewer_timeout
        loop = asyncio.get_running_loop()
        next_touch = next_check = loop.time()
        failures = 0
        while room.sockets and not room.ended:
            try:
                now = loop.time()
                if now >= next_touch:
                    await bus.touch(room.group, list(room.sockets.values()), ttl)
                    next_touch = now + ttl / 3
                if now >= next_check:
                    next_check = now + LIVENESS_CHECK
                    if self.app[BROADCASTS].live_broadcast(room.stream_id) is None:
                        stream = await self.app[STORE].get_stream(room.stream_id)
                        if stream is None or not stream.is_live:
                            await self._end(room)
                            return
                count = await bus.present(room.group)
                if count != room.last_count:
                    room.last_count = count
                    await self._send_all(room, self._message("viewers", room, count))
                failures = 0
            except Exception:
                # The bus or the database failing for a while must not silence the room for good.
                failures += 1
                if failures == 1:
                    log.exception("viewer count updates of stream %d failed; retrying", room.stream_id)
            await asyncio.sleep(UPDATE_INTERVAL * min(2 ** failures, 20))

    async def _end(self, room: Room) -> None:
        if room.ended:
            return
        room.ended = True
        await self._send_all(room, self._message("ended", room, 0))
        for ws in list(room.sockets):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.close(code=1000, message=b"stream ended")

    def broadcast_ended(self, b: Broadcast) -> None:
        """Broadcasts hook: say goodbye at once when a local broadcast ends."""
        room = self.rooms.get(b.stream_id) if b.stream_id is not None else None
        if room is not None:
            task = asyncio.get_running_loop().create_task(self._end(room))
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)

    async def close_all(self) -> None:
        """Shutdown: rooms of ended broadcasts finish saying so; the others are told the
        server is going away (1001), so clients reconnect elsewhere."""
        if self._ending:
            await asyncio.gather(*list(self._ending), return_exceptions=True)
        for room in list(self.rooms.values()):
            if room.task is not None:
                room.task.cancel()
            for ws in list(room.sockets):
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.close(code=1001, message=b"server shutting down")


VIEWER_SOCKETS = web.AppKey("viewer_sockets", ViewerSockets)


async def viewers_socket(request: web.Request) -> web.StreamResponse:
    hub = request.app[VIEWER_SOCKETS]
    settings = request.app[API_SETTINGS]
    try:
        stream = await _visible_stream(request, request.query.get("token"))
    except APIError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.fields)
    if hub.connections >= settings.ws_max_connections:
        resp = error_response(503, "too_many_connections", "viewer websocket limit reached; retry later")
        resp.headers["Retry-After"] = "5"
        return resp
    client = client_ip(request)
    if hub.per_client.get(client, 0) >= settings.ws_max_per_client:
        resp = error_response(429, "too_many_connections", "too many viewer websockets from this address")
        resp.headers["Retry-After"] = "5"
        return resp
    # compress=False: per-socket deflate state costs ~90 KiB a socket (ws_viewers benchmark)
    # to save nothing on 60-byte messages.
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=MAX_CLIENT_MESSAGE, compress=False)
    await ws.prepare(request)
    if not stream.is_live:
        await ws.send_str(json.dumps({"type": "ended", "stream_id": stream.id, "viewers": 0}))
        await ws.close(code=1000, message=b"stream ended")
        return ws
    bus = request.app[BUS]
    session = request.query.get("session", "")
    # The player's own (signed) session id counts a page once; anything else is a new member.
    valid = request.app[BROADCASTS].valid_session(stream.username, session)
    member = session if valid else "ws-" + secrets.token_urlsafe(12)
    room = hub.join(stream.id, stream.username, ws, member)
    hub.per_client[client] = hub.per_client.get(client, 0) + 1
    try:
        await bus.touch(room.group, (member,), settings.viewer_timeout)
        count = await bus.present(room.group)
        if room.last_count is None:
            room.last_count = count  # the room's first update is a change, not this count again
        await ws.send_str(hub._message("viewers", room, count))
        async for msg in ws:  # clients have nothing to say; read to notice close and pings
            if msg.type == WSMsgType.ERROR:
                break
    finally:
        hub.leave(room, ws)
        if (left := hub.per_client.pop(client, 1) - 1) > 0:
            hub.per_client[client] = left
        with contextlib.suppress(Exception):  # the bus may be closing at shutdown
            await bus.leave(room.group, member)
    return ws
