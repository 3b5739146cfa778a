"""Ladder rungs: which renditions to encode, at what size and bitrate."""
from __future__ import annotations

import re
from dataclasses import dataclass

# Per-rung video bitrates for 30 fps H.264 (kbit/s), in the range of Apple's HLS authoring
# spec and Twitch/YouTube ingest guidance; maxrate = bitrate, VBV buffer = 1 s of it.
KNOWN = {2160: 12000, 1440: 8000, 1080: 5000, 720: 2800, 540: 1800, 480: 1200, 360: 800, 240: 400}
DEFAULT_LADDER = "1080p,720p,480p"
_RUNG_RE = re.compile(r"(\d{3,4})p(?:@(\d{2,6})k)?")


@dataclass(frozen=True, slots=True)
class Rung:
    height: int
    kbps: int

    @property
    def name(self) -> str:
        return f"{self.height}p"

    def size_for(self, src_width: int, src_height: int) -> tuple[int, int]:
        """Output size: this height (never above the source's) at the source's aspect ratio,
        both even (4:2:0 chroma)."""
        height = min(self.height, src_height) // 2 * 2
        width = max(2, round(src_width * height / src_height / 2) * 2)
        return width, height


def parse_ladder(text: str) -> tuple[Rung, ...]:
    """"1080p,720p,480p" (known bitrates) or "720p@2500k,360p" (explicit); "none" for source only."""
    text = text.strip().lower()
    if text in ("", "none", "source"):
        return ()
    rungs = []
    for item in (i.strip() for i in text.split(",")):
        m = _RUNG_RE.fullmatch(item)
        if m is None:
            raise ValueError(f"ladder rung {item!r}: expected e.g. 720p or 720p@2500k")
        height = int(m[1])
        if not 144 <= height <= 4320 or height % 2:
            raise ValueError(f"ladder rung {item!r}: height must be even, 144-4320")
        kbps = int(m[2]) if m[2] else KNOWN.get(height) or round(5000 * (height / 1080) ** 1.5)
        rungs.append(Rung(height, kbps))
    if len({r.height for r in rungs}) != len(rungs):
        raise ValueError("ladder: each height at most once")
    return tuple(sorted(rungs, key=lambda r: -r.height))


def rungs_for_source(ladder: tuple[Rung, ...], src_height: int) -> tuple[Rung, ...]:
    """Rungs strictly below the source: the source itself is always offered untouched, so a
    rung of its height would only cost CPU, and taller ones would be upscaled."""
    return tuple(r for r in ladder if r.height < src_height)
