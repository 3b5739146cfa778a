"""The media types every stage shares: codec configurations and packets.

Passthrough (FLV demux) and, later, the transcoder both produce these, so the
HLS packager is written once (DESIGN.md, principle 5).

Timestamps are integer milliseconds, the unit RTMP carries; the packager
converts to track timescales.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class VideoConfig:
    """H.264 decoder configuration taken from an AVCDecoderConfigurationRecord."""

    avcc: bytes  # the whole AVCDecoderConfigurationRecord, copied into the avcC box
    width: int
    height: int
    profile: int  # profile_idc
    compat: int  # constraint flags byte
    level: int  # level_idc
    nal_length_size: int = 4
    sps: tuple[bytes, ...] = field(default=())
    pps: tuple[bytes, ...] = field(default=())

    @property
    def codec_string(self) -> str:
        """RFC 6381 codec parameter, e.g. avc1.64001f."""
        return f"avc1.{self.profile:02x}{self.compat:02x}{self.level:02x}"


@dataclass(frozen=True, slots=True)
class AudioConfig:
    """AAC configuration taken from an AudioSpecificConfig."""

    asc: bytes  # the AudioSpecificConfig, copied into the esds DecoderSpecificInfo
    object_type: int  # 2 = AAC-LC, 5 = HE-AAC (SBR), 29 = HE-AACv2
    sample_rate: int
    channels: int

    @property
    def codec_string(self) -> str:
        return f"mp4a.40.{self.object_type}"

    @property
    def samples_per_frame(self) -> int:
        """Samples per AAC frame at `sample_rate`.

        An AAC frame is 1024 core samples; HE-AAC (SBR, types 5 and 29) doubles the
        output rate, and `sample_rate` is that output rate, so a frame spans 2048.
        """
        return 2048 if self.object_type in (5, 29) else 1024


@dataclass(slots=True)
class Packet:
    """One access unit.

    video: `data` is AVCC (length-prefixed NAL units, length size from the config);
    audio: `data` is one raw AAC frame (no ADTS header).
    """

    is_video: bool
    dts: int  # decode timestamp, ms
    data: bytes
    keyframe: bool = True
    cts: int = 0  # composition offset (pts - dts), ms; B-frames make it positive
    arrival: float = 0.0  # time.monotonic() when the RTMP message arrived (latency metrics)

    @property
    def pts(self) -> int:
        return self.dts + self.cts
