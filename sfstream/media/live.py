"""Who is live, and the fan-out of each live stream's media to its consumers.

A `LiveStream` is fed FLV tag bodies by whatever ingests them (the RTMP
shell), demuxes them into codec configs and `Packet`s, and hands those to its
consumers (the HLS packager today, the transcoder later). It does not know who
its producer or consumers are beyond the small `StreamConsumer` contract.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Protocol

from .. import flv
from .packet import AudioConfig, Packet, VideoConfig

log = logging.getLogger("sfstream.media")

# How much media we hold while finding out which tracks a stream has (see _gate).
TRACK_PROBE_MS = 1000
TRACK_PROBE_MAX_PACKETS = 500


class StreamConsumer(Protocol):
    def on_config(self, video: VideoConfig | None, audio: AudioConfig | None) -> None:
        """The set of tracks or a codec configuration changed (first call starts the stream)."""

    def on_packet(self, packet: Packet) -> None:
        """One access unit, in decode order per track and roughly interleaved across tracks."""

    def on_end(self, interrupted: bool = False) -> None:
        """The publisher stopped (`interrupted`: it dropped rather than ended the stream)."""


class AlreadyPublishing(Exception):
    pass


class LiveStream:
    def __init__(self, name: str) -> None:
        self.name = name
        self.started_at = time.time()
        self.metadata: dict = {}
        self.video: VideoConfig | None = None
        self.audio: AudioConfig | None = None
        self.consumers: list[StreamConsumer] = []
        self.ended = False
        self.bytes_in = 0
        self.packets_in = 0
        self._started = False  # configs announced to consumers
        self._held: list[Packet] = []  # packets waiting for the track set to be known
        self._warned: set[str] = set()

    # ------------------------------------------------------------- producer side

    def feed_metadata(self, metadata: dict) -> None:
        self.metadata = metadata

    def feed_video(self, timestamp: int, payload: bytes, arrival: float) -> None:
        self.bytes_in += len(payload)
        try:
            item = flv.parse_video_message(payload, timestamp, arrival)
        except flv.UnsupportedCodec as exc:
            self._warn_once("video", f"stream {self.name}: video dropped: {exc}")
            return
        if item is None:
            return
        if isinstance(item, VideoConfig):
            if item != self.video:
                self.video = item
                if self._started:
                    self._announce()
            return
        self._on_packet(item)

    def feed_audio(self, timestamp: int, payload: bytes, arrival: float) -> None:
        self.bytes_in += len(payload)
        try:
            item = flv.parse_audio_message(payload, timestamp, arrival)
        except flv.UnsupportedCodec as exc:
            self._warn_once("audio", f"stream {self.name}: audio dropped: {exc}")
            return
        if item is None:
            return
        if isinstance(item, AudioConfig):
            if self._started and self.audio is None:
                # The tracks were fixed without audio; a player cannot add a track mid-stream.
                self._warn_once("late-audio", f"stream {self.name}: audio started late, ignored")
                return
            if item != self.audio:
                self.audio = item
                if self._started:
                    self._announce()
            return
        self._on_packet(item)

    def end(self, interrupted: bool = False) -> None:
        """The publisher is gone. `interrupted`: it dropped (connection lost, timeout,
        error) rather than ended the broadcast (unpublish, shutdown, key revoked)."""
        if self.ended:
            return
        self.ended = True
        if not self._started and (self.video or self.audio):
            self._start()
        for consumer in self.consumers:
            consumer.on_end(interrupted)

    # ------------------------------------------------------------- internals

    def _on_packet(self, packet: Packet) -> None:
        self.packets_in += 1
        if self._started:
            if (self.video if packet.is_video else self.audio) is not None:
                for consumer in self.consumers:
                    consumer.on_packet(packet)
            return
        self._held.append(packet)
        if self._tracks_known():
            self._start()

    def _tracks_known(self) -> bool:
        """Decide when the track set is final.

        Encoders announce tracks in onMetaData (videocodecid / audiocodecid) and
        send both sequence headers before media; when they do not, we wait up to
        TRACK_PROBE_MS of media for the missing header, then go with what we have.
        """
        md = self.metadata
        want_video = "videocodecid" in md if md else True
        want_audio = "audiocodecid" in md if md else True
        if (self.video is not None or not want_video) and (self.audio is not None or not want_audio):
            return self.video is not None or self.audio is not None
        held = self._held
        span = held[-1].dts - held[0].dts
        return (span >= TRACK_PROBE_MS or len(held) >= TRACK_PROBE_MAX_PACKETS) and (
            self.video is not None or self.audio is not None
        )

    def _start(self) -> None:
        self._started = True
        self._announce()
        held, self._held = self._held, []
        for packet in held:
            if (self.video if packet.is_video else self.audio) is not None:
                for consumer in self.consumers:
                    consumer.on_packet(packet)

    def _announce(self) -> None:
        for consumer in self.consumers:
            consumer.on_config(self.video, self.audio)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)


class StreamRegistry:
    """The live streams of this process, by public name; one publisher per name."""

    def __init__(self) -> None:
        self.streams: dict[str, LiveStream] = {}
        # Called with each new LiveStream before any media reaches it; the app
        # wires the HLS packager (and later the transcoder) here.
        self.on_publish: list[Callable[[LiveStream], None]] = []

    def start(self, name: str) -> LiveStream:
        if name in self.streams:
            raise AlreadyPublishing(name)
        stream = LiveStream(name)
        self.streams[name] = stream
        for hook in self.on_publish:
            hook(stream)
        return stream

    def stop(self, stream: LiveStream, interrupted: bool = False) -> None:
        if self.streams.get(stream.name) is stream:
            del self.streams[stream.name]
        stream.end(interrupted)

    def get(self, name: str) -> LiveStream | None:
        return self.streams.get(name)
