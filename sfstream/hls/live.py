"""The HLS output of the live streams: per-stream renditions and their waiters.

This is the asyncio side of the packager. Each `HLSStream` is a consumer of a
`LiveStream`; each `Rendition` owns one `Segmenter` and one future that every
waiting request awaits, replaced on each change, so one new part wakes all
waiters once and nobody polls.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from ..media.live import LiveStream
from ..media.packet import AudioConfig, Packet, VideoConfig
from . import playlist
from .segmenter import InitSection, Segmenter

log = logging.getLogger("sfstream.hls")

# A rung's audio waits for the rung's video (see HLSStream._release_audio), at most this long.
MAX_AUDIO_HOLD_MS = 2000
# Seconds the rungs may take to end after the source did (the transcoder drains its queues).
LADDER_DRAIN_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class HLSSettings:
    segment_duration: float = 2.0
    part_duration: float = 0.2
    window: int = 10
    linger: float = 60.0  # seconds an ended stream's playlists stay served
    reconnect_grace: float = 10.0  # seconds a dropped publisher may come back and continue


class Rendition:
    def __init__(self, name: str, segmenter: Segmenter, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self.segmenter = segmenter
        self._loop = loop
        self._changed: asyncio.Future = loop.create_future()
        self._playlists: dict[bool, bytes] = {}  # rendered playlist by "is a delta update"
        self._inits: dict[int, InitSection] = {}
        self.reports: tuple[playlist.RenditionReport, ...] = ()  # of the other renditions
        self.shed = False  # a ladder rung the transcoder stopped for lack of CPU
        self.video: VideoConfig | None = None  # a rung's own encoder configuration
        self.held_audio: deque[Packet] = deque()  # a rung's audio, waiting for its video
        self.last_video_dts: int | None = None  # of a rung's encoded video so far

    def notify(self) -> None:
        self._playlists.clear()
        if not self._changed.done():
            self._changed.set_result(None)
        self._changed = self._loop.create_future()

    async def wait_until(self, ready, timeout: float) -> bool:
        """Wait until `ready()` holds, waking only when the rendition changes."""
        deadline = self._loop.time() + timeout
        while not ready():
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return False
            try:
                # shield: a timed-out waiter must not cancel the future everyone shares
                await asyncio.wait_for(asyncio.shield(self._changed), remaining)
            except asyncio.TimeoutError:
                return ready()
        return True

    def playlist_bytes(self, token: str, skip: bool = False) -> bytes:
        """The media playlist, rendered once per change and shared by every request."""
        body = self._playlists.get(skip)
        if body is None:
            text = playlist.media_playlist(self.segmenter, token, skip=skip, reports=self.reports)
            body = self._playlists[skip] = text.encode()
        return body

    def has_part(self, msn: int, part: int) -> bool:
        """Is part `part` of segment `msn`, or anything later, published?"""
        last = self.segmenter.last_part_position()
        return last is not None and last >= (msn, part)

    def has_segment(self, msn: int) -> bool:
        segs = self.segmenter.segments
        return bool(segs) and segs[-1].msn >= msn

    def remember_init(self) -> None:
        init = self.segmenter.init
        if init is not None:
            self._inits[init.id] = init

    def find_init(self, init_id: int) -> InitSection | None:
        return self._inits.get(init_id)

    def bandwidth(self) -> tuple[int, int]:
        """(peak, average) bits per second over the completed segments."""
        segs = [s for s in self.segmenter.segments if s.duration > 0]
        if not segs:
            return 0, 0
        rates = [len(s.data) * 8 / s.duration for s in segs]
        total = sum(len(s.data) for s in segs) * 8 / sum(s.duration for s in segs)
        return int(max(rates)), int(total)


class HLSStream:
    """The HLS side of one broadcast: a StreamConsumer of its LiveStream."""

    def __init__(self, live: LiveStream, settings: HLSSettings, loop: asyncio.AbstractEventLoop,
                 on_finish: Callable[[str], None] | None = None) -> None:
        self.name = live.name
        self._on_finish = on_finish
        self.live = live
        self.token = secrets.token_hex(4)
        self.settings = settings
        self.ended_at: float | None = None
        seg = Segmenter(
            target_duration=settings.segment_duration,
            part_target=settings.part_duration,
            window=settings.window,
        )
        self.renditions: dict[str, Rendition] = {"source": Rendition("source", seg, loop)}
        self.video: VideoConfig | None = None
        self.audio: AudioConfig | None = None
        self._loop = loop
        self._grace: asyncio.TimerHandle | None = None  # set while a dropped publisher may return
        self._ladder_epoch = 0  # which transcoder's output the rungs take (see set_rungs)
        self._ladder_draining = False  # the ladder still has frames to encode after the source ended

    # StreamConsumer
    def on_config(self, video: VideoConfig | None, audio: AudioConfig | None) -> None:
        self.video, self.audio = video, audio
        for r in self.renditions.values():
            self._frame_rate_hint(r)
            if r is self.source:
                r.segmenter.set_config(video, audio)
            elif r.video is not None:
                r.segmenter.set_config(r.video, audio)
            else:
                continue  # a rung before its encoder's first output
            r.remember_init()
        self._changed()

    def on_packet(self, packet: Packet) -> None:
        changed = [self.source] if self.source.segmenter.push(packet) else []
        if not packet.is_video and len(self.renditions) > 1:
            for r in self.renditions.values():
                if r is not self.source and not r.shed and r.video is not None:
                    r.held_audio.append(packet)
                    if self._release_audio(r):
                        changed.append(r)
        if changed:
            self._changed(changed)

    # LadderSink: the transcoder's renditions of this stream
    @property
    def source(self) -> Rendition:
        return self.renditions["source"]

    def set_rungs(self, names: list[str]) -> int:
        """A transcoder starts (this publisher's); returns its epoch: what an earlier
        transcoder (of a publisher that dropped and came back) still delivers is ignored."""
        self._ladder_epoch += 1
        self._ladder_draining = True
        for name in names:
            r = self.renditions.get(name)
            if r is None:
                seg = Segmenter(target_duration=self.settings.segment_duration,
                                part_target=self.settings.part_duration, window=self.settings.window)
                r = self.renditions[name] = Rendition(name, seg, self._loop)
                self._frame_rate_hint(r)
            else:  # a publisher that returned keeps its rungs, after a discontinuity
                r.segmenter.interrupt()
                r.held_audio.clear()
                r.last_video_dts = None
                r.shed, r.video = False, None  # the new transcoder decides afresh
        for r in self.renditions.values():
            if r is not self.source and r.name not in names and not r.segmenter.ended:
                # A publisher that came back smaller has fewer rungs: the others end.
                r.segmenter.finish()
        self._changed()
        return self._ladder_epoch

    def ladder_done(self, epoch: int) -> None:
        """The transcoder of `epoch` delivered its last packet."""
        if epoch == self._ladder_epoch:
            self._ladder_draining = False
            if self.ended_at is not None:
                self._finish_rungs()

    def rung_config(self, name: str, video: VideoConfig, epoch: int) -> None:
        r = self.renditions.get(name)
        if r is None or epoch != self._ladder_epoch or r.segmenter.ended:
            return
        r.video = video
        r.segmenter.set_config(video, self.audio)
        r.remember_init()
        self._changed()

    def rung_packet(self, name: str, packet: Packet, epoch: int) -> None:
        r = self.renditions.get(name)
        if r is None or r.shed or epoch != self._ladder_epoch:
            return
        changed = r.segmenter.push(packet)
        changed |= self._release_audio(r, packet.dts)
        if changed:
            self._changed([r])

    def rung_shed(self, name: str, shed: bool, epoch: int) -> None:
        r = self.renditions.get(name)
        if r is None or epoch != self._ladder_epoch:
            return
        r.shed = shed
        if shed:
            # Close what it has; when it comes back it continues after a discontinuity.
            r.segmenter.interrupt()
            r.held_audio.clear()
        self._changed()

    def _release_audio(self, r: Rendition, video_dts: int | None = None, flush: bool = False) -> bool:
        """Interleave a rung's audio with its video, which comes out of the encoder later
        than the source's: audio goes into the segmenter once video has reached its time
        (or once it has waited too long, so audio never stalls behind a stuck encoder)."""
        if video_dts is not None:
            r.last_video_dts = video_dts
        last = r.last_video_dts
        changed = False
        held = r.held_audio
        while held and (flush or (last is not None and held[0].dts <= last)
                        or held[-1].dts - held[0].dts > MAX_AUDIO_HOLD_MS):
            changed |= r.segmenter.push(held.popleft())
        return changed

    def _frame_rate_hint(self, r: Rendition) -> None:
        fps = self.live.metadata.get("framerate") or self.live.metadata.get("fps")
        if isinstance(fps, (int, float)) and 1 <= fps <= 240:
            r.segmenter.frame_rate_hint = float(fps)

    def on_end(self, interrupted: bool = False) -> None:
        if interrupted and self.settings.reconnect_grace > 0:
            # The publisher dropped, it did not stop: players keep the live playlist
            # (no ENDLIST) for the grace period, and a reconnect continues it.
            for r in self.renditions.values():
                r.segmenter.interrupt()
            self._grace = self._loop.call_later(self.settings.reconnect_grace, self._finish)
            self._changed()
            log.info("stream %r: publisher dropped; waiting %g s for it to return", self.name,
                     self.settings.reconnect_grace)
            return
        self._finish()

    def _finish(self) -> None:
        self._grace = None
        self.ended_at = time.monotonic()
        self.source.segmenter.finish()
        if self._ladder_draining:
            # The rungs are a little behind the source: they end when the transcoder has
            # encoded what it was given (or after a bound, should it never say so).
            self._loop.call_later(LADDER_DRAIN_TIMEOUT, self._finish_rungs)
        else:
            self._finish_rungs()
        if self._on_finish is not None:
            self._on_finish(self.name)

    def _finish_rungs(self) -> None:
        self._ladder_draining = False
        for r in self.renditions.values():
            if r is not self.source:
                self._release_audio(r, None, flush=True)
                r.segmenter.finish()
        self._changed()

    def end_now(self) -> None:
        """End the playlists now, without waiting out a reconnect grace period."""
        if self._grace is not None:
            self._grace.cancel()
            self._finish()

    def end_for_shutdown(self) -> None:
        """The server stops: end now, a stream in its grace period included, rungs too
        (the transcoder will not get to drain)."""
        self.end_now()
        if self._ladder_draining:
            self._finish_rungs()

    @property
    def waiting_for_publisher(self) -> bool:
        return self._grace is not None

    def resume(self, live: LiveStream) -> None:
        """The publisher came back within the grace period: same playlists, after
        EXT-X-DISCONTINUITY (the segmenter marked it when interrupted)."""
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        self.live = live
        log.info("stream %r: publisher returned; continuing after a discontinuity", self.name)

    def _changed(self, changed: list[Rendition] | None = None) -> None:
        """Stamp new parts, refresh rendition reports, then wake the waiters of the renditions
        that changed (all by default). Only those: with a ladder, a request blocked on one
        rendition's next part need not wake for every other rendition's parts; the others'
        cached playlists keep their rendition reports until their own next change (a part
        later at most)."""
        now = time.monotonic()
        changed = list(self.renditions.values()) if changed is None else changed
        for r in changed:
            seg = r.segmenter
            for s in (seg.current, seg.segments[-1] if seg.segments else None):
                if s is not None:
                    for p in reversed(s.parts):
                        if p.published_at:
                            break
                        p.published_at = now
        if len(self.renditions) > 1:
            for r in self.renditions.values():
                r.reports = tuple(
                    playlist.RenditionReport(f"../{o.name}/{playlist.MEDIA_PLAYLIST}", *pos)
                    for o in self.renditions.values()
                    if o is not r and not o.shed and not (o.segmenter.ended and self.ended_at is None)
                    and (pos := o.segmenter.last_part_position()) is not None
                )
        for r in changed:
            r.notify()

    # readers
    def has_segments(self) -> bool:
        """Every rendition that is producing has a segment (players may start on any)."""
        return all(r.segmenter.segments for r in self.renditions.values()
                   if not r.shed and not r.segmenter.ended)

    def variants(self) -> list[playlist.Variant]:
        """The renditions a player may choose now: with segments, not shed."""
        out = []
        for r in self.renditions.values():
            if r.shed or not r.segmenter.segments or (r.segmenter.ended and self.ended_at is None):
                continue  # shed, not started, or a rung this publisher no longer makes
            init = r.segmenter.init
            video, audio = (init.video, init.audio) if init else (self.video, self.audio)
            codecs = ",".join(c.codec_string for c in (video, audio) if c is not None)
            peak, avg = r.bandwidth()
            fps = self.live.metadata.get("framerate") or self.live.metadata.get("fps")
            out.append(
                playlist.Variant(
                    uri=f"{r.name}/{playlist.MEDIA_PLAYLIST}",
                    bandwidth=peak,
                    average_bandwidth=avg,
                    codecs=codecs,
                    resolution=(video.width, video.height) if video else None,
                    frame_rate=float(fps) if isinstance(fps, (int, float)) and fps > 0 else None,
                )
            )
        return out


class HLSOutput:
    """All HLS streams of this process, by public name."""

    def __init__(self, settings: HLSSettings) -> None:
        self.settings = settings
        self.streams: dict[str, HLSStream] = {}
        self._attached: asyncio.Future | None = None
        # Called with a stream's name when its playlists end for good (ENDLIST).
        self.on_finish: list[Callable[[str], None]] = []

    def _finished(self, name: str) -> None:
        for callback in self.on_finish:
            callback(name)

    def attach(self, live: LiveStream) -> HLSStream:
        """Called when a publish starts: package this LiveStream as HLS."""
        stream = self.streams.get(live.name)
        if stream is not None and stream.waiting_for_publisher:
            stream.resume(live)
        else:
            stream = HLSStream(live, self.settings, asyncio.get_running_loop(), self._finished)
            self.streams[live.name] = stream  # replaces an ended broadcast of the same name
        live.consumers.append(stream)
        if self._attached is not None and not self._attached.done():
            self._attached.set_result(None)
        self._attached = None
        return stream

    async def wait_for_stream(self, name: str, timeout: float) -> HLSStream | None:
        """Wait until a broadcast named `name` starts (or is already there)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (stream := self.streams.get(name)) is None or stream.ended_at is not None or stream.waiting_for_publisher:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            if self._attached is None:
                self._attached = loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._attached), remaining)
            except asyncio.TimeoutError:
                pass
        return stream

    def get(self, name: str) -> HLSStream | None:
        return self.streams.get(name)

    def expire(self, now: float | None = None) -> None:
        """Drop ended streams whose linger time is over."""
        now = time.monotonic() if now is None else now
        for name, s in list(self.streams.items()):
            if s.ended_at is not None and now - s.ended_at >= self.settings.linger:
                del self.streams[name]

    async def run_expiry(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.settings.linger))
            self.expire()
