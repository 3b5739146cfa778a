"""Cutting one rendition's packets into fMP4 partial segments and segments.

Every segment is a run of partial segments (each one moof + mdat, i.e. a CMAF
chunk); the segment's bytes are its parts concatenated, and once a segment is
complete its parts become zero-copy views into those bytes.

Rules, from the HLS spec (draft-pantos-hls-rfc8216bis):
- a segment starts at a video keyframe (EXT-X-INDEPENDENT-SEGMENTS), cut at the
  first keyframe once the segment is at least ~`target_duration` long;
- a part never exceeds the Part Target Duration (4.4.4.9), is closed as soon
  as it is full, and is at least 85 % of it unless it is INDEPENDENT or the
  last of its segment. With whole frames that is only possible if the part
  target is a whole number of frames, so the target actually used (and
  advertised in EXT-X-PART-INF) is the configured one rounded to whole
  frames, plus 2 ms because FLV's millisecond timestamps make k frames span up
  to 1 ms more than k exact frame durations;
- a new codec configuration, or a publisher reconnecting, starts a new
  segment after EXT-X-DISCONTINUITY.

Pure: no asyncio. The caller learns of new parts from `push()`'s return value.
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

from ..media.packet import AudioConfig, Packet, VideoConfig
from .fmp4 import AUDIO_TRACK_ID, VIDEO_TIMESCALE, VIDEO_TRACK_ID, Sample, TrackFragment, init_segment, media_fragment

# A keyframe at >= 90 % of the target closes the segment: a 2 s GOP at 29.97 fps
# measures 1.998 s and must still give 2 s segments, not 4 s ones.
CUT_FRACTION = 0.9
TIMESTAMP_SLACK = 180  # 2 ms at 90 kHz, see the module docstring
MIN_PART_FRACTION = 0.85  # 4.4.4.9: parts other than INDEPENDENT and last ones


@dataclass(slots=True)
class InitSection:
    id: int
    data: bytes
    video: VideoConfig | None
    audio: AudioConfig | None


@dataclass(slots=True)
class PartialSegment:
    segment_msn: int
    index: int  # position within its segment
    duration: float  # seconds
    independent: bool  # starts with a keyframe
    data: bytes | memoryview
    first_arrival: float = 0.0  # monotonic arrival time of its first packet (latency metric)
    published_at: float = 0.0  # monotonic time it became servable (set by the HLS output)


@dataclass(slots=True)
class Segment:
    msn: int  # media sequence number
    init: InitSection
    program_date_time: float  # Unix time of the first sample
    discontinuity: bool = False
    parts: list[PartialSegment] = field(default_factory=list)
    duration: float = 0.0
    complete: bool = False
    data: bytes = b""  # set when complete

    def seal(self) -> None:
        """Join the parts once; the parts then view the joined bytes (no second copy)."""
        self.data = data = b"".join(p.data for p in self.parts)
        view = memoryview(data)
        offset = 0
        for p in self.parts:
            size = len(p.data)
            p.data = view[offset : offset + size]
            offset += size
        self.complete = True


class Segmenter:
    def __init__(
        self,
        *,
        target_duration: float = 2.0,
        part_target: float = 0.2,
        window: int = 6,
        retain: int = 2,
        max_segment_duration: float = 10.0,
        clock=time.time,
    ) -> None:
        self.target_duration = target_duration
        self.part_target = part_target  # as configured; see part_target_used
        self.window = window  # segments listed in the playlist
        self.max_segment_duration = max(max_segment_duration, target_duration)
        self.clock = clock
        self.segments: deque[Segment] = deque(maxlen=window + retain)  # completed segments
        self.current: Segment | None = None
        self.init: InitSection | None = None
        self.ended = False
        self.max_segment_seen = 0.0
        self.frame_rate_hint: float | None = None  # from the publisher's metadata, if any
        self._part_limit: int | None = None  # ticks of the leading track's timescale
        self._part_timescale = VIDEO_TIMESCALE
        self._next_msn = 0
        self._next_init = 0
        self._fragment_seq = 1
        self.parts_produced = 0  # monitoring
        self._discontinuity = False
        self._discontinuities = 0  # completed segments that start a discontinuity
        self._video: VideoConfig | None = None
        self._audio: AudioConfig | None = None
        self._pending_video: Packet | None = None
        self._last_video_duration = 3000
        self._audio_next: int | None = None  # next audio dts, in samples
        self._wall_anchor: tuple[float, int] | None = None  # (unix time, dts ms) of the first sample
        # The part being filled
        self._v_samples: list[Sample] = []
        self._v_data: list[bytes] = []
        self._v_base = 0
        self._a_samples: list[Sample] = []
        self._a_data: list[bytes] = []
        self._a_base = 0
        self._part_ticks = 0  # duration so far, leading track's timescale
        self._part_first_arrival = 0.0
        self._part_independent = False
        self._seg_ticks = 0  # duration of the current segment, leading track's timescale

    # ------------------------------------------------------------------ input

    def set_config(self, video: VideoConfig | None, audio: AudioConfig | None) -> bool:
        """Start, or continue with new codec parameters. Returns True if a part completed."""
        if video == self._video and audio == self._audio and self.init is not None:
            return False
        completed = False
        if self.init is not None:
            # New parameters: finish what we have with the old init, start the next
            # segment on a new init section after a discontinuity.
            completed = self._flush_pending_video() | self._close_segment()
            self._discontinuity = True
            self._wall_anchor = None
        if (video is None) != (self._video is None) or self.init is None:
            self._part_limit = None  # the leading track changed: choose the part size again
        self._video, self._audio = video, audio
        self.init = InitSection(self._next_init, init_segment(video, audio), video, audio)
        self._next_init += 1
        self._audio_next = None
        return completed

    def push(self, packet: Packet) -> bool:
        """Add one packet. Returns True if the playlist changed: a part completed or a segment
        was sealed (then waiters must be woken)."""
        if self.ended or self.init is None:
            return False
        if packet.is_video:
            if self._video is None:
                return False
            if self.current is None and self._pending_video is None and not packet.keyframe:
                return False  # a stream starts at a keyframe
            pending = self._pending_video
            self._pending_video = packet
            if pending is None:
                return False
            # A sample's duration is only known when the next one arrives.
            duration = (packet.dts - pending.dts) * 90
            if duration <= 0:  # non-increasing DTS from a broken encoder: keep time moving
                duration = self._last_video_duration
            self._last_video_duration = duration
            return self._add_video(pending, duration)
        if self._audio is None:
            return False
        if self._video is not None and self.current is None:
            return False  # audio waits for the next video keyframe, so segments align
        return self._add_audio(packet)

    def interrupt(self) -> bool:
        """The publisher dropped: close what we have, and continue after a
        discontinuity if it comes back (`resume`). Returns True if a part completed."""
        completed = self._flush_pending_video() | self._close_segment(final=True)
        self._discontinuity = True
        self._wall_anchor = None
        self._audio_next = None
        return completed

    def finish(self) -> bool:
        """The broadcast is over: close everything. Returns True if a part completed."""
        if self.ended:
            return False
        completed = self._flush_pending_video() | self._close_segment(final=True)
        self.ended = True
        return completed

    # ------------------------------------------------------------------ helpers for readers

    @property
    def next_msn(self) -> int:
        return self._next_msn

    @property
    def part_target_used(self) -> float:
        """The Part Target Duration in force (EXT-X-PART-INF), in seconds."""
        if self._part_limit is None:
            return self.part_target
        return self._part_limit / self._part_timescale

    def last_part_position(self) -> tuple[int, int] | None:
        """(msn, part index) of the newest part, or None before the first one."""
        cur = self.current
        if cur is not None and cur.parts:
            return cur.msn, len(cur.parts) - 1
        if self.segments:
            last = self.segments[-1]
            return last.msn, len(last.parts) - 1
        return None

    def next_part_position(self) -> tuple[int, int]:
        """(msn, part index) of the part that will be written next (EXT-X-PRELOAD-HINT)."""
        cur = self.current
        if cur is not None:
            return cur.msn, len(cur.parts)
        return self._next_msn, 0

    def find_segment(self, msn: int) -> Segment | None:
        cur = self.current
        if cur is not None and cur.msn == msn:
            return cur
        for seg in self.segments:
            if seg.msn == msn:
                return seg
        return None

    def discontinuities_before(self, msn: int) -> int:
        """EXT-X-DISCONTINUITY-SEQUENCE for a playlist whose first segment is `msn`."""
        return self._discontinuities - sum(1 for s in self.segments if s.msn >= msn and s.discontinuity)

    def playlist_segments(self) -> list[Segment]:
        """Completed segments in the playlist window, oldest first."""
        segs = list(self.segments)
        return segs[-self.window :]

    # ------------------------------------------------------------------ internals

    def _flush_pending_video(self) -> bool:
        pending, self._pending_video = self._pending_video, None
        if pending is None:
            return False
        return self._add_video(pending, self._last_video_duration)

    def _choose_part_limit(self, frame_ticks: int, timescale: int, slack: int) -> None:
        """Round the configured part target to whole frames (see the module docstring)."""
        if timescale == VIDEO_TIMESCALE:
            if self.frame_rate_hint:
                frame_ticks = round(VIDEO_TIMESCALE / self.frame_rate_hint)
            else:
                # One measured duration is whole milliseconds: 33 ms may be 33.37 ms
                # (29.97 fps). Assume the longer, or 6 frames would not fit 6 x 33 ms.
                frame_ticks += 90
        frames = max(1, round(self.part_target * timescale / frame_ticks))
        self._part_limit = frames * frame_ticks + slack
        self._part_timescale = timescale

    def _add_video(self, pkt: Packet, duration: int) -> bool:
        if self._part_limit is None:
            self._choose_part_limit(duration, VIDEO_TIMESCALE, TIMESTAMP_SLACK)
        limit = self._part_limit
        completed = False
        if self.current is None or (
            pkt.keyframe and self._seg_ticks >= self.target_duration * CUT_FRACTION * VIDEO_TIMESCALE
        ) or self._seg_ticks + duration > self.max_segment_duration * VIDEO_TIMESCALE:
            completed = self._close_segment()
            self._open_segment(pkt)
        elif self._part_ticks + duration > limit or (
            pkt.keyframe and self._v_samples and self._part_ticks >= MIN_PART_FRACTION * limit
        ):
            # Full; or a keyframe mid-segment, which starts its own (INDEPENDENT) part when
            # the part it ends is long enough not to break the 85 % rule.
            completed = self._close_part()
        if not self._v_samples:
            # Audio may already sit in this part (video is finalised one frame late);
            # the part's independence is still decided by its first video frame.
            self._v_base = pkt.dts * 90
            self._part_independent = pkt.keyframe
            # The video frame was held back one frame for its duration, so audio that came
            # after it may already be here: the part's first arrival is the earlier one.
            self._part_first_arrival = (
                min(self._part_first_arrival, pkt.arrival) if self._a_samples else pkt.arrival
            )
        self._v_samples.append(Sample(duration, len(pkt.data), pkt.keyframe, pkt.cts * 90))
        self._v_data.append(pkt.data)
        self._part_ticks += duration
        self._seg_ticks += duration
        if self._part_ticks + self._last_video_duration > limit:
            completed |= self._close_part()  # the next frame would not fit: publish now, not a frame later
        return completed

    def _add_audio(self, pkt: Packet) -> bool:
        rate = self._audio.sample_rate
        frame = self._audio.samples_per_frame
        dts = pkt.dts * rate // 1000
        expected = self._audio_next
        # AAC frames have a fixed sample count; FLV's ms timestamps jitter around it.
        # Follow the sample count and resync only on a real gap or jump.
        if expected is None or abs(dts - expected) > 2 * frame:
            expected = dts
        self._audio_next = expected + frame
        completed = False
        audio_leads = self._video is None
        if audio_leads:  # audio-only: audio frames drive the cuts
            if self._part_limit is None:
                self._choose_part_limit(frame, rate, 0)  # sample counts are exact: no slack
            if self.current is None or self._seg_ticks >= self.target_duration * rate:
                completed = self._close_segment()
                self._open_segment(pkt)
            elif self._part_ticks + frame > self._part_limit:
                completed = self._close_part()
        if not self._a_samples:
            self._a_base = expected
            if not self._v_samples:
                self._part_first_arrival = pkt.arrival
                self._part_independent = audio_leads
        self._a_samples.append(Sample(frame, len(pkt.data), True, 0))
        self._a_data.append(pkt.data)
        if audio_leads:
            self._part_ticks += frame
            self._seg_ticks += frame
            if self._part_ticks + frame > self._part_limit:
                completed |= self._close_part()
        return completed

    def _open_segment(self, pkt: Packet) -> None:
        if self._wall_anchor is None:
            now = self.clock()
            if pkt.arrival:
                # Anchor at the packet's arrival, not now: video is finalised a frame late.
                now -= max(0.0, time.monotonic() - pkt.arrival)
            self._wall_anchor = (now, pkt.dts)
        wall, dts0 = self._wall_anchor
        self.current = Segment(
            msn=self._next_msn,
            init=self.init,
            program_date_time=wall + (pkt.dts - dts0) / 1000.0,
            discontinuity=self._discontinuity,
        )
        self._next_msn += 1
        self._discontinuity = False
        self._seg_ticks = 0

    def _close_part(self, final: bool = False) -> bool:
        seg = self.current
        if seg is None or (not self._v_samples and not self._a_samples):
            return False
        if self._video is not None and not self._v_samples and not final:
            # Only audio since the last video frame: a part's duration is its video
            # time, so this would be a zero-length part. The audio joins the next part.
            return False
        tracks = []
        if self._v_samples:
            tracks.append(TrackFragment(VIDEO_TRACK_ID, self._v_base, self._v_samples, self._v_data))
        if self._a_samples:
            tracks.append(TrackFragment(AUDIO_TRACK_ID, self._a_base, self._a_samples, self._a_data))
        if self._video is not None:
            duration = self._part_ticks / VIDEO_TIMESCALE
        else:
            duration = self._part_ticks / self._audio.sample_rate
        if duration <= 0:  # audio left over at the very end of a video stream
            duration = sum(s.duration for s in self._a_samples) / self._audio.sample_rate
        data = media_fragment(self._fragment_seq, tracks)
        self._fragment_seq += 1
        self.parts_produced += 1
        seg.parts.append(
            PartialSegment(seg.msn, len(seg.parts), duration, self._part_independent, data, self._part_first_arrival)
        )
        seg.duration += duration
        self._v_samples, self._v_data = [], []
        self._a_samples, self._a_data = [], []
        self._part_ticks = 0
        return True

    def _close_segment(self, final: bool = False) -> bool:
        completed = self._close_part(final)
        seg = self.current
        if seg is None:
            return completed
        self.current = None
        if not seg.parts:
            # Nothing was written into it: reuse its number, keep its discontinuity.
            self._next_msn -= 1
            self._discontinuity = seg.discontinuity
            return completed
        seg.seal()
        self._discontinuities += seg.discontinuity
        self.max_segment_seen = max(self.max_segment_seen, seg.duration)
        self.segments.append(seg)
        # Sealing changes the playlist even when the last part was already out: the preload
        # hint for a part of this segment is now void, and its waiters must hear so now
        # (404 at once), not when the next segment's first part completes.
        return True


def part_target_attr(seconds: float) -> str:
    """PART-TARGET rounded *up*, so no part duration ever exceeds what we advertise."""
    return f"{math.ceil(seconds * 100000) / 100000:.5f}"
