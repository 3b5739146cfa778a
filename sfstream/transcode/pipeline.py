"""One live stream's ladder: a decode thread and one encoder thread per rung.

    LiveStream --packets--> Transcoder.on_packet --queue--> decode thread (PyAV h264)
        --frames--> RungEncoder threads (scale with libswscale, encode with libx264)
        --packets--> loop.call_soon_threadsafe(sink.rung_packet) --> the rung's Segmenter

PyAV releases the GIL inside libav (decode, scale, encode), so the threads run in
parallel with each other and with the event loop. Every queue is bounded; nothing here
ever blocks the loop: when a queue is full, frames are dropped (and the load shedder hears
of it) rather than waited for.

Keyframes line up across renditions because each rung forces an IDR frame exactly where
the source has a keyframe, and x264 makes no keyframes of its own (scenecut=0, a keyint
longer than any GOP): the segmenters, which cut at keyframes, cut every rendition at the
same timestamps. No B-frames (zerolatency), so decode order is presentation order.
"""
from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Protocol

import av
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter

from ..media.packet import AudioConfig, Packet, VideoConfig
from .h264 import annexb_to_avcc, config_from_annexb
from .ladder import Rung, rungs_for_source
from .shedding import LoadShedder

log = logging.getLogger("sfstream.transcode")

MS = Fraction(1, 1000)  # RTMP timestamps are milliseconds; so are all our pts
THUMBNAIL_WIDTH = 320
SUBMIT_WAIT = 0.5  # seconds the decode thread waits for room in a rung's queue
RATE_WINDOW = 5.0  # seconds over which a rung's real-time factor is measured


@dataclass(frozen=True, slots=True)
class TranscodeSettings:
    ladder: tuple[Rung, ...]
    preset: str = "veryfast"
    threads: int = 0  # per encoder; 0 lets x264 choose
    decode_queue: int = 120  # source packets waiting for the decoder (~4 s at 30 fps)
    rung_queue: int = 30  # decoded frames waiting for one rung's encoder (~1 s)
    max_lag: float = 1.5  # seconds from a frame's arrival to its encoded packet before shedding
    restore_after: float = 30.0  # seconds of comfortable load before a shed rung comes back
    thumbnail_interval: float = 10.0  # seconds between thumbnails (0: none)
    thumbnail_dir: Path | None = None


class LadderSink(Protocol):
    """Where a stream's ladder goes (HLSStream implements it); called on the event loop."""

    def set_rungs(self, names: list[str]) -> int:
        """The rungs this transcoder makes; returns its epoch, passed back with its output."""

    def rung_config(self, name: str, video: VideoConfig, epoch: int) -> None: ...

    def rung_packet(self, name: str, packet: Packet, epoch: int) -> None: ...

    def rung_shed(self, name: str, shed: bool, epoch: int) -> None: ...

    def ladder_done(self, epoch: int) -> None:
        """Everything this transcoder was given is encoded and delivered."""


class RungEncoder:
    """Scales and encodes one rung in its own thread."""

    def __init__(self, rung: Rung, settings: TranscodeSettings, emit: Callable[[str, object], None]) -> None:
        self.rung = rung
        self.settings = settings
        self._emit = emit  # (kind, value) back to the loop, thread-safe
        self.queue: queue.Queue = queue.Queue(settings.rung_queue)
        self.active = True  # read by the decode thread: False while shed
        # After a restore the rung starts again at a source keyframe (never mid-GOP: its
        # segments must keep starting where the source's do).
        self.wait_for_keyframe = False
        self.fps = Fraction(30)  # for x264's rate control; set from the stream before the first frame
        self._thread = threading.Thread(target=self._run, name=f"encode-{rung.name}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, frame: av.VideoFrame, keyframe: bool, arrival: float) -> bool:
        """Called by the decode thread. A frame that finds no room is dropped for this rung
        (the other rungs must not wait for it) -- except a keyframe, which is waited for a
        little: dropping it would move this rung's next segment boundary off the source's."""
        if not self._thread.is_alive():
            return False  # a failed encoder: nobody would take it
        if self.wait_for_keyframe:
            if not keyframe:
                return True
            self.wait_for_keyframe = False
        try:
            if keyframe:
                self.queue.put((frame, keyframe, arrival), timeout=SUBMIT_WAIT)
            else:
                self.queue.put_nowait((frame, keyframe, arrival))
            return True
        except queue.Full:
            return False

    def close(self) -> None:
        """The end: the thread encodes what is queued and exits (a dead thread: nothing to do)."""
        while self._thread.is_alive():
            try:
                self.queue.put(None, timeout=1.0)
                return
            except queue.Full:
                continue

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _open(self, width: int, height: int, fps: Fraction) -> av.VideoCodecContext:
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.time_base = MS
        ctx.framerate = fps
        kbps = self.rung.kbps
        ctx.bit_rate = kbps * 1000
        ctx.gop_size = 100_000  # keyframes only where we force them
        ctx.thread_count = self.settings.threads
        ctx.options = {
            "preset": self.settings.preset,
            "tune": "zerolatency",  # no B-frames, no lookahead: a frame in, a packet out
            "maxrate": f"{kbps}k",
            "bufsize": f"{kbps}k",  # VBV of 1 s: bounded peaks for players on tight links
            "forced-idr": "1",
            "x264-params": "scenecut=0:keyint=infinite",
        }
        ctx.flags |= av.codec.context.Flags.global_header  # SPS/PPS once, for the init section
        ctx.open()
        return ctx

    def _run(self) -> None:
        ctx: av.VideoCodecContext | None = None
        size = None
        scaler = VideoReformatter()
        try:
            while (item := self.queue.get()) is not None:
                frame, keyframe, arrival = item
                if not self.active:
                    continue  # shed: what was queued is no longer wanted
                want = self.rung.size_for(frame.width, frame.height)
                if ctx is None or want != size:
                    if ctx is not None:
                        self._drain(ctx, ctx.encode(None), arrival)
                    ctx, size = self._open(*want, self.fps), want
                    self._emit("config", config_from_annexb(bytes(ctx.extradata)))
                    keyframe = True
                # Our own scaler: frame.reformat() would share one SwsContext cached on the
                # frame between every rung's thread (they all scale the same decoded frame).
                out = scaler.reformat(frame, width=size[0], height=size[1], format="yuv420p")
                out.pts, out.time_base = frame.pts, MS
                out.pict_type = PictureType.I if keyframe else PictureType.NONE
                self._drain(ctx, ctx.encode(out), arrival)
            if ctx is not None:
                self._drain(ctx, ctx.encode(None), time.monotonic())
        except Exception:
            log.exception("rung %s: encoder failed", self.rung.name)
            self.active = False
            self._emit("failed", None)
            # Let nobody wait on a queue no one reads: empty it and stop.
            while True:
                try:
                    self.queue.get_nowait()
                except queue.Empty:
                    break

    def _drain(self, ctx, packets, arrival: float) -> None:
        for p in packets:
            data = annexb_to_avcc(bytes(p))
            if not data:
                continue
            self._emit("packet", Packet(True, int(p.dts), data, keyframe=p.is_keyframe,
                                        cts=int(p.pts - p.dts), arrival=arrival))


class Transcoder:
    """A StreamConsumer: decodes the source once and feeds every rung's encoder."""

    def __init__(self, name: str, settings: TranscodeSettings, sink: LadderSink,
                 loop: asyncio.AbstractEventLoop, on_thumbnail: Callable[[str, Path], None] | None = None,
                 metadata: Callable[[], dict] = dict) -> None:
        self.name = name
        self._metadata = metadata  # the publisher's onMetaData (framerate), read when the video starts
        self._fps: Fraction | None = None
        self.settings = settings
        self.sink = sink
        self.loop = loop
        self.on_thumbnail = on_thumbnail
        self.encoders: dict[str, RungEncoder] = {}
        self.shedder: LoadShedder | None = None
        self._queue: queue.Queue = queue.Queue(settings.decode_queue)
        self._thread: threading.Thread | None = None
        self._video: VideoConfig | None = None
        self._dropping = False  # after a full decode queue: skip to the next keyframe
        self._pending_config: VideoConfig | None = None  # a new configuration the queue had no room for
        self.dropped_packets = 0  # source packets skipped, and frames a rung had no room for
        self._rate: dict[str, tuple[float, int, float]] = {}  # rung -> (window start, its pts, rtf)
        self._lag: dict[str, float] = {}
        self.finished = asyncio.Event()
        self.epoch = 0
        self.failed = False  # the decode thread died: nothing more goes to it
        self._shed: set[str] = set()

    # ---------------------------------------------------------------- StreamConsumer (loop)

    def on_config(self, video: VideoConfig | None, audio: AudioConfig | None) -> None:
        if video is None or video == self._video:
            return
        first = self._video is None
        self._video = video
        if first:
            fps = self._metadata().get("framerate") or self._metadata().get("fps")
            if isinstance(fps, (int, float)) and 1 <= fps <= 240:
                self._fps = Fraction(fps).limit_denominator(1001)
            rungs = rungs_for_source(self.settings.ladder, video.height)
            self.epoch = self.sink.set_rungs([r.name for r in rungs])
            self.encoders = {r.name: RungEncoder(r, self.settings, self._emitter(r.name)) for r in rungs}
            self.shedder = LoadShedder([r.name for r in rungs], self.settings.max_lag, self.settings.restore_after)
            self._thread = threading.Thread(target=self._decode_loop, name=f"decode-{self.name}", daemon=True)
            self._thread.start()
            log.info("stream %r: transcoding %dx%d to %s", self.name, video.width, video.height,
                     ", ".join(r.name for r in rungs) or "nothing (source only)")
        if not self._put(video):
            # No room: it goes in before the next keyframe (what it describes starts there).
            self._pending_config = video
            self._dropping = True

    def on_packet(self, packet: Packet) -> None:
        if not packet.is_video or self._thread is None or self.failed:
            return
        if self.shedder is not None and not self.shedder.active:
            for rung, shed in self.shedder.tick(time.monotonic()):
                self._set_shed(rung, shed)
        if not self.encoders and not packet.keyframe:
            return  # thumbnails only: keyframes are all the decoder needs
        if self._dropping and not packet.keyframe:
            self.dropped_packets += 1
            return
        if self._pending_config is not None:
            if not self._put(self._pending_config):
                self.dropped_packets += 1
                return
            self._pending_config = None
        self._dropping = False
        if not self._put(packet):
            # The decoder is behind by a whole queue: skip to the next keyframe (decoding
            # needs every frame of a GOP) rather than fall further behind real time.
            self._dropping = True
            self.dropped_packets += 1
            log.warning("stream %r: decoder %d packets behind; dropping to the next keyframe",
                        self.name, self.settings.decode_queue)

    def on_end(self, interrupted: bool = False) -> None:
        if self._thread is None:
            self.finished.set()
            self.sink.ladder_done(self.epoch)
            return
        threading.Thread(target=self._stop, name=f"stop-{self.name}", daemon=True).start()

    def _put(self, item) -> bool:
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            return False

    def _stop(self) -> None:
        while True:
            try:
                self._queue.put(None, timeout=1.0)
                break
            except queue.Full:
                continue
        self._thread.join()
        for enc in self.encoders.values():
            enc.close()
        for enc in self.encoders.values():
            enc.join()
        try:
            self.loop.call_soon_threadsafe(self._done)
        except RuntimeError:  # the loop is closed: the server is gone
            pass

    def _done(self) -> None:
        self.finished.set()
        self.sink.ladder_done(self.epoch)

    # ---------------------------------------------------------------- results (loop)

    def _emitter(self, name: str) -> Callable[[str, object], None]:
        def emit(kind: str, value) -> None:
            try:
                self.loop.call_soon_threadsafe(self._deliver, name, kind, value)
            except RuntimeError:  # the loop is closed: the server is gone
                pass
        return emit

    def _deliver(self, name: str, kind: str, value) -> None:
        if kind == "packet":
            self.sink.rung_packet(name, value, self.epoch)
            now = time.monotonic()
            self._lag[name] = now - value.arrival
            self._measure_rate(name, now, value.pts)
            self._observe(name, self._lag[name])
        elif kind == "config":
            self.sink.rung_config(name, value, self.epoch)
        elif kind == "failed":
            if self.shedder is not None:
                self.shedder.fail(name)
            self._set_shed(name, True)
        elif kind == "overloaded":
            self.dropped_packets += 1
            # A full queue is a rung that cannot keep up, whatever its last lag said.
            self._observe(name, self.settings.max_lag * 2)

    def _measure_rate(self, name: str, now: float, pts: int) -> None:
        start, start_pts, rtf = self._rate.get(name, (now, pts, 0.0))
        elapsed = now - start
        if elapsed >= 1.0:
            rtf = (pts - start_pts) / 1000 / elapsed
            if elapsed >= RATE_WINDOW:  # a new window, so the figure stays recent
                start, start_pts = now, pts
        self._rate[name] = (start, start_pts, rtf)

    def rung_stats(self) -> dict[str, dict]:
        """Per rung: recent real-time factor, lag, and whether it is encoded (metrics)."""
        return {name: {"realtime_factor": self._rate.get(name, (0, 0, 0.0))[2],
                       "lag": self._lag.get(name, 0.0), "active": enc.active}
                for name, enc in self.encoders.items()}

    def _observe(self, name: str, lag: float) -> None:
        if self.shedder is None:
            return
        for rung, shed in self.shedder.observe(name, lag, time.monotonic()):
            self._set_shed(rung, shed)

    def _set_shed(self, name: str, shed: bool) -> None:
        enc = self.encoders.get(name)
        if enc is None or (not shed and not enc.alive):
            return
        if shed:
            if name not in self._shed:
                log.warning("stream %r: shedding rung %s (cannot keep up with real time)", self.name, name)
        else:
            enc.wait_for_keyframe = True
            log.info("stream %r: restoring rung %s", self.name, name)
        enc.active = not shed
        if shed != (name in self._shed):
            self._shed.symmetric_difference_update({name})
            self.sink.rung_shed(name, shed, self.epoch)

    # ---------------------------------------------------------------- decode thread

    def _decode_loop(self) -> None:
        decoder = None
        arrivals: dict[int, float] = {}
        held = None  # the first frame, until the frame rate is known
        fps_known = self._fps is not None
        for enc in self.encoders.values():
            enc.fps = self._fps or enc.fps
        thumbnails = [0.0]  # when the next thumbnail is due (stream seconds)
        try:
            while True:
                item = self._queue.get()
                if item is None or isinstance(item, VideoConfig):
                    # Frames a source with B-frames still holds for reordering come out only
                    # on a flush: at the end, and before a new configuration replaces it.
                    if decoder is not None:
                        for frame in self._flush(decoder):
                            self._frame(frame, arrivals.pop(frame.pts, None) or time.monotonic(), thumbnails)
                    if held is not None:
                        self._frame(*held, thumbnails)
                        held = None
                    if item is None:
                        break
                    decoder = av.CodecContext.create("h264", "r")
                    decoder.extradata = item.avcc
                    decoder.thread_type = "SLICE"  # frame threads would delay every frame
                    continue
                if decoder is None:
                    continue
                pkt = av.Packet(item.data)
                pkt.pts, pkt.dts, pkt.time_base = item.pts, item.dts, MS
                arrivals[item.pts] = item.arrival
                try:
                    frames = decoder.decode(pkt)
                except av.error.FFmpegError as exc:
                    log.warning("stream %r: undecodable video packet: %s", self.name, exc)
                    continue
                for frame in frames:
                    arrival = arrivals.pop(frame.pts, None) or time.monotonic()
                    if not fps_known:
                        # The encoders' rate control needs the frame rate before their first
                        # frame: without metadata, hold the first frame until the second one
                        # tells the interval (RTMP's ms timestamps round it; close enough).
                        if held is None:
                            held = (frame, arrival)
                            continue
                        interval = frame.pts - held[0].pts
                        fps = Fraction(1000, interval).limit_denominator(1001) if 0 < interval < 1000 else Fraction(30)
                        for enc in self.encoders.values():
                            enc.fps = fps
                        fps_known = True
                        self._frame(*held, thumbnails)
                        held = None
                    self._frame(frame, arrival, thumbnails)
                if len(arrivals) > 1000:  # packets the decoder never returned a frame for
                    arrivals.clear()
        except Exception:
            log.exception("stream %r: decoder failed; the ladder stops", self.name)
            self.failed = True
            for name in self.encoders:
                self._emitter(name)("failed", None)

    def _flush(self, decoder) -> list:
        try:
            return decoder.decode(None)
        except av.error.FFmpegError:
            return []

    def _frame(self, frame: av.VideoFrame, arrival: float, thumbnails: list[float]) -> None:
        """One decoded frame (decode thread): to every active rung, and maybe a thumbnail."""
        keyframe = frame.key_frame
        for name, enc in self.encoders.items():
            if enc.active and not enc.submit(frame, keyframe, arrival):
                self._emitter(name)("overloaded", None)
        seconds = frame.pts / 1000
        if self.settings.thumbnail_interval > 0 and seconds >= thumbnails[0]:
            thumbnails[0] = seconds + self.settings.thumbnail_interval
            self._thumbnail(frame)

    def _thumbnail(self, frame: av.VideoFrame) -> None:
        if self.settings.thumbnail_dir is None:
            return
        try:
            width = min(THUMBNAIL_WIDTH, frame.width) // 2 * 2
            height = max(2, round(frame.height * width / frame.width / 2) * 2)
            enc = av.CodecContext.create("mjpeg", "w")
            enc.width, enc.height, enc.pix_fmt, enc.time_base = width, height, "yuvj420p", Fraction(1, 25)
            enc.options = {"qscale": "4"}
            image = VideoReformatter().reformat(frame, width=width, height=height, format="yuvj420p")
            image.pts = None
            data = b"".join(bytes(p) for p in [*enc.encode(image), *enc.encode(None)])
            path = self.settings.thumbnail_dir / f"{self.name}.jpg"
            tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
            self.settings.thumbnail_dir.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, path)  # readers see the old or the new image, never half of one
            if self.on_thumbnail is not None:
                self.loop.call_soon_threadsafe(self.on_thumbnail, self.name, path)
        except Exception:
            log.exception("stream %r: thumbnail failed", self.name)
