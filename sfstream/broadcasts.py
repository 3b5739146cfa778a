"""Where ingest meets the platform: who may publish, the broadcast records, who is watching.

- `authorize(key)`: the RTMP publish authoriser. Static `--stream-key` keys first, then
  registered users' keys, found by their HMAC (the key itself is never stored or logged).
  A user's stream goes live under their username.
- A publish starts a broadcast (a `streams` row: the prepared one, or a new one from the
  channel's defaults); when its HLS output ends for good (unpublish, kick, or a dropped
  publisher that did not return within the grace period) the row is ended with its summary.
  A publisher that reconnects within the grace period continues the same broadcast.
- Viewers: every HLS player gets a session id in its media playlist URLs and every viewer
  websocket is a member too; a member counts while it was seen within `viewer_timeout`.
  Presence lives in the bus (in process, or Redis so that instances add up).
- Every `stats_interval` the viewer count of each live broadcast is sampled into the database.
- Private broadcasts: HLS needs a playback token for that broadcast.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from datetime import datetime, timezone
from typing import Callable

from aiohttp import web

from .bus import Bus
from .config import Settings
from .media.live import LiveStream
from .statistics import summarize
from .store import Store, Stream
from .streamkeys import InvalidPlaybackToken, PlaybackTokens, StreamKeys, derive

log = logging.getLogger("sfstream.broadcasts")

SESSION_LENGTH = 28  # 16 characters of nonce + 12 of MAC
SESSION_RE = re.compile(r"[A-Za-z0-9_-]{28}")
# How long an HLS request for a private stream may wait for its broadcast record.
START_WAIT = 5.0
# Local memory of recent presence touches is bounded: past this, touches are not throttled.
MAX_THROTTLE_ENTRIES = 200_000


# Each instance keeps the ids of the broadcasts it publishes present in this bus group; a
# broadcast the database says is live but that no instance keeps alive was left by a crash.
HEARTBEATS = "broadcasts:live"
ORPHAN_GRACE = 10.0  # seconds a broadcast may run before its first heartbeat


def viewer_group(name: str) -> str:
    return f"viewers:{name}"


@dataclass(eq=False)
class Broadcast:
    name: str
    user_id: int | None  # None: a static --stream-key stream (no database record)
    key_hmac: str | None = None  # of the key it was published with
    stream_id: int | None = None
    private: bool = False
    ended: bool = False
    started: asyncio.Event = field(default_factory=asyncio.Event)  # the record is known (or failed)
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # the end is recorded
    thumbnail_recorded: bool = False
    failed: bool = False  # its record could not be written: nobody may watch
    finished_at: float | None = None  # monotonic time its end was recorded
    viewers: int = 0  # at the last sample (metrics)


class Broadcasts:
    def __init__(self, settings: Settings, secret: str, disconnect: Callable[[str, str], int]) -> None:
        """`disconnect(name, reason)` ends stream `name` for good: closes its publisher (or ends
        the playlists of one in its reconnect grace period); returns how many it closed."""
        self.settings = settings
        self.rtmp_port = 0  # where publishers connect (set once the listener is up)
        self.thumbnail_dir: Path | None = None  # where the transcoder writes thumbnails
        self.keys = StreamKeys(secret)
        self.playback = PlaybackTokens(secret, settings.playback_token_ttl)
        self._session_key = derive(secret, "sfstream viewer sessions v1")
        self._disconnect = disconnect
        self.store: Store | None = None
        self.bus: Bus | None = None
        self.by_name: dict[str, Broadcast] = {}
        # name -> (user id, key HMAC) of the key just accepted for it, or None for a static key:
        # authorize() sets it and on_publish() takes it, with no await between the two.
        self._grants: dict[str, tuple[int, str] | None] = {}
        self._ladders: dict[str, str | None] = {}  # name -> the user's own ladder, same lifetime
        self.static_names = {n.lower() for n in settings.stream_keys.values()}
        self._lifecycle = asyncio.Lock()  # start/end records one at a time: an end never overtakes a start
        self._touched: dict[tuple[str, str], float] = {}
        self._live_by_id: dict[int, Broadcast] = {}
        self._tasks: set[asyncio.Task] = set()
        # Called with a Broadcast when it ends (the viewer websockets say goodbye).
        self.on_end: list[Callable[[Broadcast], None]] = []

    def bind(self, store: Store, bus: Bus) -> None:
        self.store, self.bus = store, bus

    # ------------------------------------------------------------- publishing

    async def authorize(self, key: str) -> str | None:
        name = self.settings.stream_keys.get(key)
        if name is not None:
            self._grants[name] = None
            self._ladders.pop(name, None)
            return name
        if self.store is None or not key:
            return None
        channel = await self.store.get_channel_by_key_hmac(self.keys.lookup_hash(key))
        if channel is None:
            return None
        user = await self.store.get_user(channel.user_id)
        if user is None or user.username.lower() in self.static_names:
            # A static stream's name is the operator's: a user registered under it before the
            # static key was configured cannot broadcast there.
            return None
        self._grants[user.username] = (user.id, channel.stream_key_hmac)
        self._ladders[user.username] = channel.ladder
        return user.username

    def ladder_for(self, name: str) -> str | None:
        """The ladder an administrator set for the user publishing `name` (None: the server's).
        Asked while the publish is being accepted, before on_publish."""
        return self._ladders.pop(name, None)

    def on_publish(self, live: LiveStream) -> None:
        """Registry hook: a publish was accepted (before any media)."""
        b = self.by_name.get(live.name)
        if b is not None and not b.ended:
            return  # the publisher came back within the grace period: the same broadcast
        owner = self._grants.pop(live.name, None)
        b = Broadcast(live.name, *owner) if owner else Broadcast(live.name, None)
        self.by_name[live.name] = b
        self._spawn(self._start(b))

    def on_hls_finished(self, name: str) -> None:
        """HLS hook: the stream's playlists ended for good."""
        b = self.by_name.get(name)
        if b is not None and not b.ended:
            b.ended = True
            self._spawn(self._end(b))

    def on_thumbnail(self, name: str, path) -> None:
        """Transcoder hook: a thumbnail of `name` was written (its URL never changes)."""
        b = self.by_name.get(name)
        if b is not None and not b.thumbnail_recorded and b.stream_id is not None and not b.ended:
            b.thumbnail_recorded = True
            self._spawn(self._record_thumbnail(b))

    async def _record_thumbnail(self, b: Broadcast) -> None:
        try:
            await self.store.update_stream(b.stream_id, {"thumbnail": f"/thumbnails/{b.name}.jpg"})
        except Exception:
            b.thumbnail_recorded = False
            log.exception("stream %r: could not record its thumbnail", b.name)

    def disconnect(self, name: str, reason: str) -> int:
        """Close this process's publisher of `name` (ends its broadcast); how many were closed."""
        return self._disconnect(name, reason)

    async def end_broadcast(self, stream_id: int, reason: str) -> None:
        """End live stream `stream_id` now and wait until its end is recorded."""
        b = self.live_broadcast(stream_id)
        if b is not None:
            self.disconnect(b.name, reason)  # -> HLS ends -> on_hls_finished -> _end
            if b.ended:
                await b.finished.wait()
                return
        # Not published through this process (another instance, or a record left live by a
        # crash): end the record itself.
        stream = await self.store.get_stream(stream_id)
        if stream is not None and stream.is_live:
            await self._record_end(stream, datetime.now(timezone.utc))

    async def _record_end(self, stream: Stream, now: datetime) -> Stream | None:
        """End a live record with its summary: watch time from its samples, unique viewers from
        the bus. None if it was not live (any more)."""
        if stream.started_at is None:
            return None
        summary = summarize(await self.store.stream_samples(stream.id), stream.started_at, now)
        return await self.store.end_stream(
            stream.id, now, unique_viewers=await self.bus.distinct(viewer_group(stream.username)),
            watch_seconds=summary.watch_seconds)

    async def _start(self, b: Broadcast) -> None:
        async with self._lifecycle:
            try:
                await self.bus.forget(viewer_group(b.name))
                if b.user_id is not None:
                    stream = await self.store.start_stream(b.user_id, datetime.now(timezone.utc))
                    b.stream_id, b.private = stream.id, stream.is_private
                    self._live_by_id[stream.id] = b
                    await self.bus.touch(HEARTBEATS, (str(stream.id),), self._heartbeat_ttl)
                    log.info("broadcast %d of %r started", stream.id, b.name)
                    # A key reset between authorize() and now found no publisher to disconnect:
                    # look again, now that this one is registered.
                    channel = await self.store.get_channel(b.user_id)
                    if channel is None or channel.stream_key_hmac != b.key_hmac:
                        self.disconnect(b.name, "stream key reset")
            except Exception:
                # Fail closed: without its record we cannot tell a private stream from a public one.
                log.exception("stream %r: could not record the broadcast start; disconnecting", b.name)
                b.failed = True
                self.disconnect(b.name, "broadcast could not be recorded")
            finally:
                b.started.set()

    async def _end(self, b: Broadcast) -> None:
        async with self._lifecycle:
            await b.started.wait()
            group = viewer_group(b.name)
            try:
                if b.stream_id is not None:
                    stream = await self.store.get_stream(b.stream_id)
                    if stream is not None and await self._record_end(stream, datetime.now(timezone.utc)):
                        log.info("broadcast %d of %r ended", b.stream_id, b.name)
                await self.bus.forget(group)
            except Exception:
                log.exception("stream %r: could not record the broadcast end", b.name)
            if b.private and self.thumbnail_dir is not None:
                # Its last picture must not outlive the access checks of its live time.
                (self.thumbnail_dir / f"{b.name}.jpg").unlink(missing_ok=True)
            if b.stream_id is not None and self._live_by_id.get(b.stream_id) is b:
                del self._live_by_id[b.stream_id]
            b.finished_at = time.monotonic()
            b.finished.set()
            for callback in self.on_end:
                callback(b)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for pending start/end records (shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ------------------------------------------------------------- watching

    def live_broadcast(self, stream_id: int) -> Broadcast | None:
        b = self._live_by_id.get(stream_id)
        return b if b is not None and not b.ended else None

    async def can_watch(self, name: str, token: str | None) -> bool:
        """May this HLS request be served? Public streams: yes. Private ones: with a valid
        playback token for this broadcast."""
        b = self.by_name.get(name)
        if b is None or b.user_id is None:
            return True
        if not b.started.is_set():
            try:
                await asyncio.wait_for(b.started.wait(), START_WAIT)
            except asyncio.TimeoutError:
                return False
        if b.failed:
            return False
        if not b.private:
            return True
        if not token:
            return False
        try:
            grant = self.playback.verify(token)
        except InvalidPlaybackToken:
            return False
        return grant.stream_id == b.stream_id

    def viewer_session(self, name: str, proposed: str | None) -> str:
        """A viewer session id for a player of `name`: `proposed` if we issued it, else a new
        one. Ids are signed (random part + HMAC), so a client cannot count as many viewers by
        making ids up; it has to fetch a playlist for each (and the API rate limits apply)."""
        if proposed and self.valid_session(name, proposed):
            return proposed
        nonce = secrets.token_urlsafe(12)
        return nonce + self._session_mac(name, nonce)

    def valid_session(self, name: str, session: str) -> bool:
        if len(session) != SESSION_LENGTH or not SESSION_RE.fullmatch(session):
            return False
        nonce, mac = session[:16], session[16:]
        return hmac.compare_digest(mac, self._session_mac(name, nonce))

    def _session_mac(self, name: str, nonce: str) -> str:
        digest = hmac.new(self._session_key, f"{name}\n{nonce}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:9]).decode()  # 72 bits, 12 characters

    async def hls_seen(self, name: str, session: str | None) -> None:
        """A media playlist request of viewer session `session`: it is watching."""
        if not session or name not in self.by_name:
            return
        now = time.monotonic()
        key = (name, session)
        ttl = self.settings.viewer_timeout
        # LL-HLS players ask for a playlist several times a second: tell the bus a few times
        # per timeout, not on every request (only valid sessions are ever remembered here, so
        # the signature is checked once per touch, not per request).
        if now - self._touched.get(key, -ttl) < ttl / 4 or not self.valid_session(name, session):
            return
        if len(self._touched) < MAX_THROTTLE_ENTRIES or key in self._touched:
            self._touched[key] = now
        await self.bus.touch(viewer_group(name), (session,), ttl)

    async def viewers(self, name: str) -> int:
        return await self.bus.present(viewer_group(name))

    # ------------------------------------------------------------- statistics

    @property
    def _heartbeat_ttl(self) -> float:
        # Three missed samples before others call a broadcast orphaned.
        return max(3.0, 3 * self.settings.stats_interval)

    async def end_orphans(self, grace: float = ORPHAN_GRACE) -> int:
        """End the broadcasts marked live that no instance keeps alive (the instance publishing
        them crashed): at start-up, and at every sample for other instances' crashes.

        Broadcasts younger than `grace` seconds are left alone: another instance may have
        started one and not yet written its first heartbeat (this instance's own starts cannot
        interleave: both hold the lifecycle lock)."""
        async with self._lifecycle:
            return await self._end_orphans(grace)

    async def _end_orphans(self, grace: float) -> int:
        now = datetime.now(timezone.utc)
        live, _ = await self.store.list_streams(live=True, include_private=True, limit=10_000)
        live = [s for s in live if s.started_at is not None and (now - s.started_at).total_seconds() >= grace]
        mine = {str(i) for i in self._live_by_id}
        candidates = [str(s.id) for s in live if str(s.id) not in mine]
        alive = await self.bus.alive(HEARTBEATS, candidates)
        ended = 0
        for s in live:
            if str(s.id) in mine or str(s.id) in alive:
                continue
            if await self._record_end(s, now) is not None:
                ended += 1
                log.warning("broadcast %d of %r ended: no instance keeps it alive (crashed?)", s.id, s.username)
        return ended

    async def sample_once(self) -> None:
        now = datetime.now(timezone.utc)
        if self._live_by_id:
            try:
                await self.bus.touch(HEARTBEATS, [str(i) for i in self._live_by_id], self._heartbeat_ttl)
            except Exception:
                log.exception("could not refresh the broadcast heartbeats")
        for b in list(self.by_name.values()):
            if b.stream_id is None or b.ended:
                continue
            try:
                b.viewers = await self.viewers(b.name)
                await self.store.record_viewers(b.stream_id, now, b.viewers)
                await self._check_still_allowed(b)
            except Exception:
                log.exception("stream %r: could not record its viewer count", b.name)
        self._forget_old()
        try:
            await self.end_orphans()
        except Exception:
            log.exception("could not check for orphaned broadcasts")

    async def _check_still_allowed(self, b: Broadcast) -> None:
        # What another instance did to this broadcast (DELETE, key reset, privacy) reaches
        # this one, which holds its publisher, here.
        stream = await self.store.get_stream(b.stream_id)
        channel = await self.store.get_channel(b.user_id)
        if stream is None or not stream.is_live:
            self.disconnect(b.name, "stream ended elsewhere")
        elif channel is None or channel.stream_key_hmac != b.key_hmac:
            self.disconnect(b.name, "stream key reset")
        else:
            b.private = stream.is_private

    def _forget_old(self) -> None:
        # Throttle entries old enough that the next request touches the bus anyway, and
        # ended broadcasts whose playlists have expired (their names are free again).
        horizon = time.monotonic() - self.settings.viewer_timeout
        self._touched = {k: t for k, t in self._touched.items() if t > horizon}
        gone = time.monotonic() - self.settings.hls_linger
        for name, b in list(self.by_name.items()):
            if b.finished_at is not None and b.finished_at < gone:
                del self.by_name[name]

    async def run_sampler(self) -> None:
        while True:
            await asyncio.sleep(self.settings.stats_interval)
            await self.sample_once()


BROADCASTS = web.AppKey("broadcasts", Broadcasts)
