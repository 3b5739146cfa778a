"""ISO BMFF / CMAF writer: init segment and fragments (fragmented MP4).

LL-HLS serves an init segment (ftyp+moov, no samples) followed by
moof+mdat fragments (parts).  Box layouts follow ISO/IEC 14496-12; the
avc1/avcC entry follows 14496-15 and mp4a/esds follows 14496-14 / 14496-1.

media_fragment() runs several times a second per stream, so it computes
every box size arithmetically and joins the pieces once; nothing is
serialised twice.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from sfstream.media.packet import AudioConfig, VideoConfig

__all__ = [
    "VIDEO_TRACK_ID",
    "AUDIO_TRACK_ID",
    "VIDEO_TIMESCALE",
    "Sample",
    "TrackFragment",
    "init_segment",
    "media_fragment",
]

VIDEO_TRACK_ID = 1
AUDIO_TRACK_ID = 2
VIDEO_TIMESCALE = 90000  # audio track timescale = AudioConfig.sample_rate

# Unity transformation matrix (14496-12 8.3.2 tkhd / 8.2.2 mvhd), 16.16 and 2.30.
_MATRIX = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)

# sample_flags (14496-12 8.8.3.1): sync samples depend on nothing
# (sample_depends_on = 2); others depend on earlier samples
# (sample_depends_on = 1) and set sample_is_non_sync_sample.
_FLAGS_SYNC = 0x02000000
_FLAGS_NON_SYNC = 0x01010000

_TFHD_DEFAULT_BASE_IS_MOOF = 0x020000
# data-offset | sample-duration | sample-size | sample-flags | sample-composition-time-offset
_TRUN_FLAGS = 0x000F01

_SAMPLE = struct.Struct(">IIIi")  # one trun v1 entry: duration, size, flags, signed cts
_MOOF_HEAD = struct.Struct(">I4sI4sII")  # moof header + complete mfhd
_TRAF_HEAD = struct.Struct(">I4sI4sII" "I4sIQ" "I4sIII")  # traf, tfhd, tfdt v1, trun head


def _box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def _full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *payload)


# --------------------------------------------------------------------------
# Init segment
# --------------------------------------------------------------------------


def _ftyp() -> bytes:
    # CMAF (23000-19 7.2) brand cmfc plus the ISO brands for tfdt v1 / trun v1
    # (iso6) and default-base-is-moof (iso5).
    return _box(b"ftyp", b"iso6", struct.pack(">I", 0), b"iso6", b"cmfc", b"iso5", b"mp41")


def _mvhd(next_track_id: int) -> bytes:
    # 14496-12 8.2.2, version 0.  Duration 0: the length lives in the fragments.
    return _full_box(
        b"mvhd", 0, 0,
        struct.pack(">IIII", 0, 0, 1000, 0),  # creation, modification, timescale, duration
        struct.pack(">IH", 0x00010000, 0x0100),  # rate 1.0, volume 1.0
        bytes(10),  # reserved
        _MATRIX,
        bytes(24),  # pre_defined
        struct.pack(">I", next_track_id),
    )


def _tkhd(track_id: int, volume: int, width: int, height: int) -> bytes:
    # 14496-12 8.3.2, version 0; flags 3 = track_enabled | track_in_movie.
    return _full_box(
        b"tkhd", 0, 3,
        struct.pack(">IIIII", 0, 0, track_id, 0, 0),  # creation, modification, id, reserved, duration
        bytes(8),  # reserved
        struct.pack(">hhhH", 0, 0, volume, 0),  # layer, alternate_group, volume, reserved
        _MATRIX,
        struct.pack(">II", width << 16, height << 16),  # 16.16 fixed point
    )


def _mdhd(timescale: int) -> bytes:
    # 14496-12 8.4.2; language is ISO-639-2/T packed as three 5-bit letters - 0x60.
    lang = ((ord("u") - 0x60) << 10) | ((ord("n") - 0x60) << 5) | (ord("d") - 0x60)
    return _full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, timescale, 0, lang, 0))


def _hdlr(handler: bytes, name: bytes) -> bytes:
    # 14496-12 8.4.3: pre_defined, handler_type, reserved[3], null-terminated name.
    return _full_box(b"hdlr", 0, 0, struct.pack(">I4s12x", 0, handler), name + b"\x00")


def _dinf() -> bytes:
    # 14496-12 8.7.2: one 'url ' entry with flag 1 = media is in this file.
    return _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1), _full_box(b"url ", 0, 1)))


def _stbl(sample_entry: bytes) -> bytes:
    # 14496-12 8.5: the mandatory tables exist but are empty; samples are
    # described by the movie fragments (8.8).
    return _box(
        b"stbl",
        _full_box(b"stsd", 0, 0, struct.pack(">I", 1), sample_entry),
        _full_box(b"stts", 0, 0, struct.pack(">I", 0)),
        _full_box(b"stsc", 0, 0, struct.pack(">I", 0)),
        _full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0)),
        _full_box(b"stco", 0, 0, struct.pack(">I", 0)),
    )


def _avc1(video: VideoConfig) -> bytes:
    # VisualSampleEntry (14496-12 12.1.3) + AVCConfigurationBox (14496-15 5.4.2.1).
    return _box(
        b"avc1",
        bytes(6), struct.pack(">H", 1),  # reserved, data_reference_index
        bytes(16),  # pre_defined, reserved, pre_defined[3]
        struct.pack(">HHIII", video.width, video.height, 0x00480000, 0x00480000, 0),  # 72 dpi
        struct.pack(">H", 1),  # frame_count
        bytes(32),  # compressorname (empty Pascal string)
        struct.pack(">Hh", 0x0018, -1),  # depth, pre_defined
        _box(b"avcC", video.avcc),
    )


def _descriptor(tag: int, *payload: bytes) -> bytes:
    """MPEG-4 descriptor (14496-1 8.3.3): tag, expandable size, payload."""
    body = b"".join(payload)
    n = len(body)
    size = bytearray([n & 0x7F])
    n >>= 7
    while n:
        size.insert(0, 0x80 | (n & 0x7F))
        n >>= 7
    return bytes([tag]) + bytes(size) + body


def _mp4a(audio: AudioConfig) -> bytes:
    # AudioSampleEntry (14496-12 12.2.3) + ESDBox (14496-14 5.6).
    rate = audio.sample_rate << 16 if audio.sample_rate <= 0xFFFF else 0
    esds = _full_box(
        b"esds", 0, 0,
        _descriptor(
            0x03,  # ES_Descriptor
            struct.pack(">HB", AUDIO_TRACK_ID, 0),  # ES_ID, no dependence/URL/OCR
            _descriptor(
                0x04,  # DecoderConfigDescriptor
                # objectTypeIndication 0x40 = MPEG-4 Audio; 0x15 = streamType
                # 5 (AudioStream) << 2 | upStream 0 | reserved 1.
                struct.pack(">BB", 0x40, 0x15),
                (0).to_bytes(3, "big"),  # bufferSizeDB (unknown)
                struct.pack(">II", 0, 0),  # maxBitrate, avgBitrate (unknown)
                _descriptor(0x05, audio.asc),  # DecoderSpecificInfo = AudioSpecificConfig
            ),
            _descriptor(0x06, b"\x02"),  # SLConfigDescriptor, predefined 2 (MP4)
        ),
    )
    return _box(
        b"mp4a",
        bytes(6), struct.pack(">H", 1),  # reserved, data_reference_index
        bytes(8),  # reserved
        struct.pack(">HHHHI", audio.channels, 16, 0, 0, rate),
        esds,
    )


def _trak(track_id: int, timescale: int, handler: bytes, name: bytes, media_header: bytes,
          sample_entry: bytes, volume: int, width: int, height: int) -> bytes:
    return _box(
        b"trak",
        _tkhd(track_id, volume, width, height),
        _box(
            b"mdia",
            _mdhd(timescale),
            _hdlr(handler, name),
            _box(b"minf", media_header, _dinf(), _stbl(sample_entry)),
        ),
    )


def _trex(track_id: int) -> bytes:
    # 14496-12 8.8.3: defaults are unused (every trun carries all fields)
    # except the sample description index, which must be 1.
    return _full_box(b"trex", 0, 0, struct.pack(">IIIII", track_id, 1, 0, 0, 0))


def init_segment(video: VideoConfig | None, audio: AudioConfig | None) -> bytes:
    """ftyp + moov describing the present tracks (video id 1, audio id 2)."""
    if video is None and audio is None:
        raise ValueError("init_segment needs at least one track")
    traks: list[bytes] = []
    trexs: list[bytes] = []
    if video is not None:
        traks.append(_trak(
            VIDEO_TRACK_ID, VIDEO_TIMESCALE, b"vide", b"VideoHandler",
            _full_box(b"vmhd", 0, 1, bytes(8)),  # 14496-12 12.1.2: flags 1, graphicsmode+opcolor 0
            _avc1(video), 0, video.width, video.height,
        ))
        trexs.append(_trex(VIDEO_TRACK_ID))
    if audio is not None:
        traks.append(_trak(
            AUDIO_TRACK_ID, audio.sample_rate, b"soun", b"SoundHandler",
            _full_box(b"smhd", 0, 0, bytes(4)),  # 14496-12 12.2.2: balance 0
            _mp4a(audio), 0x0100, 0, 0,
        ))
        trexs.append(_trex(AUDIO_TRACK_ID))
    moov = _box(b"moov", _mvhd(AUDIO_TRACK_ID + 1), *traks, _box(b"mvex", *trexs))
    return _ftyp() + moov


# --------------------------------------------------------------------------
# Media fragments
# --------------------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    duration: int  # in the track timescale
    size: int  # bytes
    keyframe: bool
    cts: int = 0  # composition offset in the track timescale, may be negative


@dataclass(slots=True)
class TrackFragment:
    track_id: int
    base_decode_time: int  # tfdt, track timescale
    samples: list[Sample]
    data: list[bytes]  # sample payloads in order; concatenated into mdat


def media_fragment(sequence_number: int, tracks: list[TrackFragment]) -> bytes:
    """One moof (mfhd + a traf per track) followed by one mdat.

    Each traf is tfhd (default-base-is-moof, so offsets are relative to the
    moof start, 14496-12 8.8.7.1) + tfdt v1 (64-bit decode time, 8.8.12) +
    trun v1 (signed composition offsets, 8.8.8) with every per-sample field.
    The mdat holds the tracks' data back to back in traf order.
    """
    # traf = traf hdr 8 + tfhd 16 + tfdt 20 + trun hdr 20 + 16 per sample
    moof_size = 8 + 16 + sum(64 + 16 * len(t.samples) for t in tracks)
    data_sizes = [sum(map(len, t.data)) for t in tracks]
    mdat_payload = sum(data_sizes)
    large = mdat_payload > 0xFFFFFFFF - 8
    mdat_header = (
        struct.pack(">I4sQ", 1, b"mdat", 16 + mdat_payload) if large
        else struct.pack(">I4s", 8 + mdat_payload, b"mdat")
    )

    parts: list[bytes] = [_MOOF_HEAD.pack(moof_size, b"moof", 16, b"mfhd", 0, sequence_number)]
    data_offset = moof_size + len(mdat_header)
    pack_sample = _SAMPLE.pack
    for track, data_size in zip(tracks, data_sizes):
        samples = track.samples
        n = len(samples)
        if sum(s.size for s in samples) != data_size:
            raise ValueError(f"track {track.track_id}: sample sizes do not add up to the data length")
        parts.append(_TRAF_HEAD.pack(
            64 + 16 * n, b"traf",
            16, b"tfhd", _TFHD_DEFAULT_BASE_IS_MOOF, track.track_id,
            20, b"tfdt", 1 << 24, track.base_decode_time,
            20 + 16 * n, b"trun", (1 << 24) | _TRUN_FLAGS, n, data_offset,
        ))
        parts += [
            pack_sample(s.duration, s.size, _FLAGS_SYNC if s.keyframe else _FLAGS_NON_SYNC, s.cts)
            for s in samples
        ]
        data_offset += data_size
    parts.append(mdat_header)
    for track in tracks:
        parts += track.data
    return b"".join(parts)
