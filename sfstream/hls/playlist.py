"""Rendering HLS playlists (RFC 8216 / draft-pantos-hls-rfc8216bis). Pure text.

URIs are relative to the playlist that carries them:

    /hls/{name}/index.m3u8                              multivariant playlist
    /hls/{name}/{rendition}/media.m3u8                  media playlist (LL-HLS)
    /hls/{name}/{rendition}/init-{token}-{id}.mp4       init section
    /hls/{name}/{rendition}/seg-{token}-{msn}.m4s       media segment
    /hls/{name}/{rendition}/part-{token}-{msn}.{i}.m4s  partial segment

`token` names one broadcast, so a URI never means two different byte strings
and segments and parts can be cached as immutable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

from .segmenter import Segmenter, part_target_attr

MEDIA_PLAYLIST = "media.m3u8"
# Version 9: EXT-X-SKIP (delta updates) needs it (spec 4.4.5.2); the LL-HLS tags
# need no more, and version 6 already brought EXT-X-MAP without I-frames-only.
PLAYLIST_VERSION = 9
# Parts are listed for the segments in the last PART_HORIZON target durations
# (spec 4.4.4.9: older ones SHOULD be removed from the playlist).
PART_HORIZON = 3
HOLD_BACK_TARGETS = 3  # HOLD-BACK >= 3 target durations (4.4.3.8)
PART_HOLD_BACK_PARTS = 3  # PART-HOLD-BACK >= 2 part targets, 3 recommended (4.4.3.8)
SKIP_TARGETS = 6  # CAN-SKIP-UNTIL >= 6 target durations (4.4.3.8)


def init_uri(token: str, init_id: int) -> str:
    return f"init-{token}-{init_id}.mp4"


def segment_uri(token: str, msn: int) -> str:
    return f"seg-{token}-{msn}.m4s"


def part_uri(token: str, msn: int, index: int) -> str:
    return f"part-{token}-{msn}.{index}.m4s"


def format_pdt(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def target_duration(seg: Segmenter) -> int:
    # Spec 4.4.3.1: every EXTINF rounded to the nearest integer must be <= TARGETDURATION.
    # Never lower it once raised: players read it to size their buffers.
    return max(1, round(seg.target_duration), math.floor(seg.max_segment_seen + 0.5))


def can_skip_until(seg: Segmenter) -> float:
    return float(SKIP_TARGETS * target_duration(seg))


@dataclass(frozen=True, slots=True)
class RenditionReport:
    uri: str  # relative to the playlist carrying the report, e.g. ../720p/media.m3u8
    last_msn: int
    last_part: int


def media_playlist(
    seg: Segmenter, token: str, *, skip: bool = False, reports: tuple[RenditionReport, ...] = ()
) -> str:
    """The LL-HLS media playlist; `skip` renders a delta update (EXT-X-SKIP)."""
    segments = seg.playlist_segments()
    td = target_duration(seg)
    part_target = seg.part_target_used
    lines = [
        "#EXTM3U",
        f"#EXT-X-VERSION:{PLAYLIST_VERSION}",
        f"#EXT-X-TARGETDURATION:{td}",
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES"
        f",CAN-SKIP-UNTIL={can_skip_until(seg):.1f}"
        f",PART-HOLD-BACK={PART_HOLD_BACK_PARTS * part_target:.3f}"
        f",HOLD-BACK={HOLD_BACK_TARGETS * td:.1f}",
        f"#EXT-X-PART-INF:PART-TARGET={part_target_attr(part_target)}",
        f"#EXT-X-MEDIA-SEQUENCE:{segments[0].msn if segments else seg.next_msn}",
    ]
    discontinuities_before = seg.discontinuities_before(segments[0].msn) if segments else 0
    if discontinuities_before:
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuities_before}")
    lines.append("#EXT-X-INDEPENDENT-SEGMENTS")

    current = seg.current if seg.current is not None and seg.current.parts else None
    total = sum(s.duration for s in segments) + (current.duration if current else 0.0)
    skipped = 0
    if skip:
        # Skip the segments that lie wholly before the Skip Boundary, CAN-SKIP-UNTIL
        # seconds before the end of the playlist (spec 6.2.5.1).
        boundary = total - can_skip_until(seg)
        elapsed = 0.0
        for s in segments:
            elapsed += s.duration
            if elapsed > boundary:
                break
            skipped += 1
        if skipped:
            lines.append(f"#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}")

    parts_from = total - PART_HORIZON * td  # list parts of segments ending after this
    elapsed = 0.0
    current_init = None
    for i, s in enumerate(segments):
        elapsed += s.duration
        if i < skipped:
            continue
        current_init = _segment_head(lines, s, token, current_init)
        if elapsed > parts_from:
            _parts(lines, s, token)
        lines.append(f"#EXTINF:{s.duration:.5f},")
        lines.append(segment_uri(token, s.msn))
    if current is not None:
        _segment_head(lines, current, token, current_init)
        _parts(lines, current, token)
    if seg.ended:
        lines.append("#EXT-X-ENDLIST")
    else:
        msn, index = seg.next_part_position()
        lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{part_uri(token, msn, index)}"')
        for r in reports:
            lines.append(f'#EXT-X-RENDITION-REPORT:URI="{r.uri}",LAST-MSN={r.last_msn},LAST-PART={r.last_part}')
    return "\n".join(lines) + "\n"


def _segment_head(lines: list[str], s, token: str, current_init):
    """DISCONTINUITY, MAP (when it changes, and always first) and PROGRAM-DATE-TIME."""
    if s.discontinuity:
        lines.append("#EXT-X-DISCONTINUITY")
    if s.init is not current_init:
        lines.append(f'#EXT-X-MAP:URI="{init_uri(token, s.init.id)}"')
    lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{format_pdt(s.program_date_time)}")
    return s.init


def _parts(lines: list[str], s, token: str) -> None:
    for p in s.parts:
        independent = ",INDEPENDENT=YES" if p.independent else ""
        lines.append(f'#EXT-X-PART:DURATION={p.duration:.5f},URI="{part_uri(token, s.msn, p.index)}"{independent}')


@dataclass(slots=True)
class Variant:
    uri: str
    bandwidth: int  # peak bits/s
    average_bandwidth: int
    codecs: str
    resolution: tuple[int, int] | None
    frame_rate: float | None


def multivariant_playlist(variants: list[Variant]) -> str:
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{PLAYLIST_VERSION}", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for v in variants:
        attrs = [f"BANDWIDTH={v.bandwidth}", f"AVERAGE-BANDWIDTH={v.average_bandwidth}", f'CODECS="{v.codecs}"']
        if v.resolution:
            attrs.append(f"RESOLUTION={v.resolution[0]}x{v.resolution[1]}")
        if v.frame_rate:
            attrs.append(f"FRAME-RATE={v.frame_rate:.3f}")
        lines.append("#EXT-X-STREAM-INF:" + ",".join(attrs))
        lines.append(v.uri)
    return "\n".join(lines) + "\n"
