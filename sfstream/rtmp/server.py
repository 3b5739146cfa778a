"""The asyncio shell around the sans-IO RTMP core: sockets, timeouts, policy.

One `PublishSession` per TCP connection. It feeds bytes to a
`ServerConnection`, writes what the core answers, asks the app's authoriser
whether a stream key may publish, and passes media to the `LiveStream` the
registry hands out. A protocol error closes only this connection, with the
reason logged; stream keys are never logged.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from ..flv import FLVError
from ..media.live import AlreadyPublishing, LiveStream, StreamRegistry
from .connection import (
    ConnectRequested,
    MediaData,
    MetadataReceived,
    PublishRequested,
    PublishStopped,
    ServerConnection,
    State,
)
from .errors import RemoteProtocolError

log = logging.getLogger("sfstream.rtmp")

# key -> public stream name, or None to refuse
Authorizer = Callable[[str], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class RTMPLimits:
    app: str = "live"
    max_connections: int = 1000
    max_message_size: int = 8 * 1024 * 1024
    max_chunk_size: int = 65536
    handshake_timeout: float = 10.0
    idle_timeout: float = 30.0
    out_chunk_size: int = 4096


def _event(event: str, peer: str, stream: str | None = None, reason: str | None = None) -> dict:
    """Fields of an RTMP session event for structured (JSON) logs; never a stream key."""
    return {"event": f"rtmp.{event}", "peer": peer, "stream": stream, "reason": reason}


class PublishSession(asyncio.Protocol):
    def __init__(self, server: "RTMPServer") -> None:
        self.server = server
        self.limits = server.limits
        self.core = ServerConnection(
            max_message_size=self.limits.max_message_size,
            max_chunk_size=self.limits.max_chunk_size,
            out_chunk_size=self.limits.out_chunk_size,
        )
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.live: LiveStream | None = None
        self.live_stream_id = 0
        self.connected_at = self.last_data = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False

    # ------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        if len(self.server.sessions) >= self.limits.max_connections:
            log.warning("rtmp %s refused: connection limit of %d reached", self.peer, self.limits.max_connections,
                        extra=_event("refused", self.peer))
            transport.abort()
            return
        self.server.sessions.add(self)
        self.connected_at = self.last_data = time.monotonic()
        self._check_timeouts()
        log.info("rtmp %s connected", self.peer, extra=_event("connect", self.peer))

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self.last_data = time.monotonic()
        try:
            events = self.core.receive_data(data)
            for event in events:
                self._handle(event)
        except RemoteProtocolError as exc:
            self.close(f"protocol error: {exc}")
            return
        except FLVError as exc:
            self.close(f"invalid media: {exc}")
            return
        except Exception:  # a bug must cost this connection only, never the process
            log.exception("rtmp %s: unexpected error", self.peer)
            self.close("internal error")
            return
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.sessions.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        self._end_publish("connection closed")
        if not self._closing:
            log.info("rtmp %s disconnected%s", self.peer, f": {exc}" if exc else "",
                     extra=_event("disconnect", self.peer))

    # ------------------------------------------------------------- events

    def _handle(self, event) -> None:
        if isinstance(event, MediaData):  # first: by far the most frequent
            live = self.live
            if live is not None and event.stream_id == self.live_stream_id:
                if event.is_video:
                    live.feed_video(event.timestamp, event.payload, self.last_data)
                else:
                    live.feed_audio(event.timestamp, event.payload, self.last_data)
        elif isinstance(event, MetadataReceived):
            if self.live is not None:
                self.live.feed_metadata(event.metadata)
        elif isinstance(event, ConnectRequested):
            if event.app.strip("/") == self.limits.app:
                for held in self.core.accept_connect():
                    self._handle(held)
            else:
                self.core.reject_connect(f"unknown application {event.app!r}")
                self._flush()
                self.close(f"connect to unknown application {event.app!r}")
        elif isinstance(event, PublishRequested):
            if self.live is not None or len(self.core.pending) > 1:
                raise RemoteProtocolError("a second publish on one connection")
            asyncio.get_running_loop().create_task(self._authorize(event))
        elif isinstance(event, PublishStopped):
            if event.stream_id == self.live_stream_id:
                self._end_publish(f"{event.reason} received", interrupted=False)

    async def _authorize(self, event: PublishRequested) -> None:
        try:
            name = await self.server.authorize(event.name)
        except Exception:  # the authoriser's failure refuses this publish, nothing else
            log.exception("rtmp %s: publish authorisation failed", self.peer)
            name = None
        if self._closing or self.core.state is State.CLOSED:
            return
        if name is None:
            self.core.reject_publish(event.stream_id, "NetStream.Publish.BadName", "Unknown stream key.")
            self._flush()
            self.close("publish refused: unknown stream key")
            return
        try:
            live = self.server.registry.start(name)
        except AlreadyPublishing:
            self.core.reject_publish(event.stream_id, "NetStream.Publish.BadName", "Stream is already publishing.")
            self._flush()
            self.close(f"publish refused: stream {name!r} is already live")
            return
        self.live = live
        self.live_stream_id = event.stream_id
        self.core.accept_publish(event.stream_id, f"{name} is now published.")
        self._flush()
        log.info("rtmp %s publishing stream %r", self.peer, name, extra=_event("publish", self.peer, name))

    def _end_publish(self, why: str, interrupted: bool = True) -> None:
        live, self.live = self.live, None
        if live is not None:
            self.server.registry.stop(live, interrupted)
            log.info("rtmp %s stopped publishing %r: %s", self.peer, live.name, why,
                     extra=_event("unpublish", self.peer, live.name, why))

    # ------------------------------------------------------------- helpers

    def _flush(self) -> None:
        out = self.core.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        next_check = self.limits.idle_timeout
        if self.core.state in (State.AWAIT_C0C1, State.AWAIT_C2):
            left = self.connected_at + self.limits.handshake_timeout - now
            if left <= 0:
                self.close(f"handshake not completed within {self.limits.handshake_timeout:g} s")
                return
            next_check = left
        idle = now - self.last_data
        if idle >= self.limits.idle_timeout:
            self.close(f"no data for {self.limits.idle_timeout:g} s")
            return
        next_check = min(next_check, self.limits.idle_timeout - idle)
        self._timer = asyncio.get_running_loop().call_later(next_check, self._check_timeouts)

    def close(self, reason: str, interrupted: bool = True) -> None:
        """Close this connection only, saying why (the reason never holds a key).

        `interrupted`: the publisher may come back and continue (a timeout, an error);
        False ends the broadcast for good (shutdown)."""
        if self._closing:
            return
        self._closing = True
        log.warning("rtmp %s closed: %s", self.peer, reason, extra=_event("close", self.peer, None, reason))
        self._end_publish(reason, interrupted)
        if self.transport is not None:
            self.transport.close()  # close, not abort: let a queued refusal status reach the client


class RTMPServer:
    def __init__(self, limits: RTMPLimits, authorize: Authorizer, registry: StreamRegistry) -> None:
        self.limits = limits
        self.authorize = authorize
        self.registry = registry
        self.sessions: set[PublishSession] = set()
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: PublishSession(self), host, port, backlog=1024)
        return self._server.sockets[0].getsockname()[1]

    def disconnect(self, name: str, reason: str) -> int:
        """End the publish of stream `name` for good (no reconnect grace): key reset, stream
        deleted by its owner. Returns how many connections were closed."""
        closed = 0
        for session in list(self.sessions):
            if session.live is not None and session.live.name == name:
                session.close(reason, interrupted=False)
                closed += 1
        return closed

    async def close(self) -> None:
        """Stop listening and end every publish (their playlists get ENDLIST)."""
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.close("server shutting down", interrupted=False)
        if self._server is not None:
            await self._server.wait_closed()
