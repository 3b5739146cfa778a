"""sfstream.hls.fmp4: box structure, then real encoder output checked by ffprobe and PyAV.

The end-to-end tests run the same chain as the server: PyAV encodes into
FLV, the FLV tag bodies go through sfstream.flv, the packets are cut into
fragments at keyframes and written with init_segment/media_fragment.
"""
from __future__ import annotations

import json
import struct
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import pytest

from sfstream.hls.fmp4 import (
    AUDIO_TRACK_ID,
    VIDEO_TIMESCALE,
    VIDEO_TRACK_ID,
    Sample,
    TrackFragment,
    init_segment,
    media_fragment,
)
from sfstream.media.packet import AudioConfig, Packet, VideoConfig
from tests.test_flv import FPS, demux, encode_flv

FFPROBE = "/usr/bin/ffprobe"

# ---------------------------------------------------------------------------
# A minimal box reader
# ---------------------------------------------------------------------------

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"dinf", b"stbl", b"mvex", b"moof", b"traf"}


def boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[bytes, int, int]]:
    """[(type, payload_start, box_end)] of the boxes in data[start:end]; sizes must tile exactly."""
    end = len(data) if end is None else end
    out = []
    pos = start
    while pos < end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        assert size >= header and pos + size <= end, f"bad {kind} size {size}"
        out.append((kind, pos + header, pos + size))
        pos += size
    assert pos == end
    return out


def find(data: bytes, path: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """All (payload_start, end) for a slash-separated box path, e.g. 'moov/trak/tkhd'."""
    head, _, rest = path.partition("/")
    hits = []
    for kind, payload, box_end in boxes(data, start, end):
        if kind == head.encode():
            hits += find(data, rest, payload, box_end) if rest else [(payload, box_end)]
    return hits


def one(data: bytes, path: str, start: int = 0, end: int | None = None) -> bytes:
    (hit,) = find(data, path, start, end)
    return data[hit[0] : hit[1]]


# ---------------------------------------------------------------------------
# Fixtures: configs from a real encoder
# ---------------------------------------------------------------------------


def real_video_config() -> VideoConfig:
    vcfg, _, _, _ = demux(encode_flv(854, 480, 3))
    return vcfg


AAC_48K_STEREO = AudioConfig(b"\x11\x90", 2, 48000, 2)


# ---------------------------------------------------------------------------
# init_segment structure
# ---------------------------------------------------------------------------


def test_init_segment_structure_video_and_audio():
    vcfg = real_video_config()
    init = init_segment(vcfg, AAC_48K_STEREO)
    top = [kind for kind, _, _ in boxes(init)]
    assert top == [b"ftyp", b"moov"]
    ftyp = one(init, "ftyp")
    assert ftyp[:4] == b"iso6" and b"cmfc" in ftyp[8:]
    mvhd = one(init, "moov/mvhd")
    assert struct.unpack_from(">I", mvhd, 12)[0] == 1000  # timescale
    assert struct.unpack_from(">I", mvhd, len(mvhd) - 4)[0] == 3  # next_track_ID
    tkhds = [init[s:e] for s, e in find(init, "moov/trak/tkhd")]
    assert [struct.unpack_from(">I", t, 12)[0] for t in tkhds] == [VIDEO_TRACK_ID, AUDIO_TRACK_ID]
    assert all(t[:4] == b"\x00\x00\x00\x03" for t in tkhds)  # version 0, enabled|in_movie
    assert struct.unpack_from(">II", tkhds[0], len(tkhds[0]) - 8) == (854 << 16, 480 << 16)
    assert struct.unpack_from(">h", tkhds[1], 36)[0] == 0x0100  # audio volume
    mdhds = [init[s:e] for s, e in find(init, "moov/trak/mdia/mdhd")]
    assert [struct.unpack_from(">I", m, 12)[0] for m in mdhds] == [VIDEO_TIMESCALE, 48000]
    assert all(struct.unpack_from(">H", m, 20)[0] == 0x55C4 for m in mdhds)  # 'und'
    hdlrs = [init[s:e] for s, e in find(init, "moov/trak/mdia/hdlr")]
    assert [h[8:12] for h in hdlrs] == [b"vide", b"soun"]
    drefs = [init[s:e] for s, e in find(init, "moov/trak/mdia/minf/dinf/dref")]
    assert drefs == [b"\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x0curl \x00\x00\x00\x01"] * 2
    for table in ("stts", "stsc", "stco"):
        assert [init[s:e] for s, e in find(init, f"moov/trak/mdia/minf/stbl/{table}")] == [bytes(8)] * 2
    trexs = [init[s:e] for s, e in find(init, "moov/mvex/trex")]
    assert [struct.unpack_from(">II", t, 4) for t in trexs] == [(1, 1), (2, 1)]

    stsd_v, stsd_a = [init[s:e] for s, e in find(init, "moov/trak/mdia/minf/stbl/stsd")]
    (kind, payload, end), = boxes(stsd_v, 8)
    assert kind == b"avc1"
    assert struct.unpack_from(">HH", stsd_v, payload + 24) == (854, 480)
    assert struct.unpack_from(">Hh", stsd_v, payload + 74) == (0x18, -1)
    assert one(stsd_v, "avcC", payload + 78, end) == vcfg.avcc

    (kind, payload, end), = boxes(stsd_a, 8)
    assert kind == b"mp4a"
    assert struct.unpack_from(">HHI", stsd_a, payload + 16) == (2, 16, 0)
    assert struct.unpack_from(">I", stsd_a, payload + 24)[0] == 48000 << 16
    esds = one(stsd_a, "esds", payload + 28, end)
    assert esds[4] == 0x03  # ES_Descriptor
    dcd = esds.index(b"\x04", 5)
    assert esds[dcd + 2 : dcd + 4] == b"\x40\x15"
    assert b"\x05\x02\x11\x90" in esds  # DecoderSpecificInfo = the ASC
    assert esds.endswith(b"\x06\x01\x02")  # SLConfigDescriptor


def test_init_segment_single_track():
    video_only = init_segment(real_video_config(), None)
    assert [struct.unpack_from(">I", video_only, s + 12)[0] for s, _ in find(video_only, "moov/trak/tkhd")] == [1]
    assert len(find(video_only, "moov/mvex/trex")) == 1
    assert find(video_only, "moov/trak/mdia/minf/vmhd") and not find(video_only, "moov/trak/mdia/minf/smhd")

    audio_only = init_segment(None, AudioConfig(b"\x10\x08", 2, 96000, 1))
    assert [struct.unpack_from(">I", audio_only, s + 12)[0] for s, _ in find(audio_only, "moov/trak/tkhd")] == [2]
    stsd = one(audio_only, "moov/trak/mdia/minf/stbl/stsd")
    assert struct.unpack_from(">I", stsd, 8 + 8 + 24)[0] == 0  # 96000 does not fit 16.16
    mdhd = one(audio_only, "moov/trak/mdia/mdhd")
    assert struct.unpack_from(">I", mdhd, 12)[0] == 96000
    with pytest.raises(ValueError):
        init_segment(None, None)


# ---------------------------------------------------------------------------
# media_fragment structure
# ---------------------------------------------------------------------------


def parse_fragment(frag: bytes) -> tuple[int, list[dict]]:
    (moof_kind, moof_payload, moof_end), (mdat_kind, mdat_payload, mdat_end) = boxes(frag)
    assert (moof_kind, mdat_kind) == (b"moof", b"mdat")
    moof_start = moof_payload - 8
    mfhd = one(frag, "mfhd", moof_payload, moof_end)
    trafs = []
    for start, end in find(frag, "traf", moof_payload, moof_end):
        tfhd = one(frag, "tfhd", start, end)
        tfdt = one(frag, "tfdt", start, end)
        trun = one(frag, "trun", start, end)
        flags, track_id = struct.unpack_from(">II", tfhd)
        assert flags == 0x020000  # version 0, default-base-is-moof
        assert tfdt[0] == 1
        version_flags, count, offset = struct.unpack_from(">IIi", trun)
        assert version_flags == 0x01000F01
        entries = [struct.unpack_from(">IIIi", trun, 12 + 16 * i) for i in range(count)]
        assert len(trun) == 12 + 16 * count
        size = sum(e[1] for e in entries)
        data = frag[moof_start + offset : moof_start + offset + size]
        assert moof_start + offset >= mdat_payload and moof_start + offset + size <= mdat_end
        trafs.append(dict(track_id=track_id, base=struct.unpack_from(">Q", tfdt, 4)[0],
                          entries=entries, data=data))
    return struct.unpack_from(">I", mfhd, 4)[0], trafs


def test_media_fragment_layout():
    video = TrackFragment(1, 2**40 + 5, [Sample(3000, 3, True, 6000), Sample(3000, 2, False, -3000),
                                         Sample(2970, 4, False, 0)], [b"VVV", b"WW", b"XXXX"])
    audio = TrackFragment(2, 123456, [Sample(1024, 2, True), Sample(1024, 1, True)], [b"aa", memoryview(b"b")])
    frag = media_fragment(7, [video, audio])
    seq, trafs = parse_fragment(frag)
    assert seq == 7
    v, a = trafs
    assert (v["track_id"], v["base"], v["data"]) == (1, 2**40 + 5, b"VVVWWXXXX")
    assert v["entries"] == [(3000, 3, 0x02000000, 6000), (3000, 2, 0x01010000, -3000), (2970, 4, 0x01010000, 0)]
    assert (a["track_id"], a["base"], a["data"]) == (2, 123456, b"aab")
    assert a["entries"] == [(1024, 2, 0x02000000, 0), (1024, 1, 0x02000000, 0)]
    assert frag.endswith(b"mdat" + b"VVVWWXXXXaab")

    # Track order is the caller's; offsets follow it.
    _, (a2, v2) = parse_fragment(media_fragment(8, [audio, video]))
    assert (a2["data"], v2["data"]) == (b"aab", b"VVVWWXXXX")
    # One track only.
    _, (only,) = parse_fragment(media_fragment(9, [audio]))
    assert only["data"] == b"aab"


def test_media_fragment_size_mismatch():
    with pytest.raises(ValueError):
        media_fragment(1, [TrackFragment(1, 0, [Sample(1, 5, True)], [b"abc"])])


# ---------------------------------------------------------------------------
# End to end: encoder -> FLV -> parser -> fMP4 -> ffprobe / PyAV
# ---------------------------------------------------------------------------


def build_mp4(vcfg: VideoConfig | None, acfg: AudioConfig | None,
              video: list[Packet], audio: list[Packet]) -> tuple[bytes, int]:
    """init segment + fragments cut at every video keyframe (every 20 AAC frames without video)."""
    if video:
        cuts = [p.dts for p in video if p.keyframe][1:]
    else:
        cuts = [p.dts for p in audio[20::20]]
    v_ts = [p.dts * VIDEO_TIMESCALE // 1000 for p in video]
    v_dur = [b - a for a, b in zip(v_ts, v_ts[1:])] + [VIDEO_TIMESCALE // FPS]
    a_base = round(audio[0].dts * acfg.sample_rate / 1000) if audio else 0

    out = [init_segment(vcfg, acfg)]
    vi = ai = 0
    seq = 1
    for end in [*cuts, float("inf")]:
        tracks = []
        vj = vi
        while vj < len(video) and video[vj].dts < end:
            vj += 1
        if vj > vi:
            chunk = video[vi:vj]
            tracks.append(TrackFragment(
                VIDEO_TRACK_ID, v_ts[vi],
                [Sample(v_dur[vi + k], len(p.data), p.keyframe, p.cts * VIDEO_TIMESCALE // 1000)
                 for k, p in enumerate(chunk)],
                [p.data for p in chunk],
            ))
        aj = ai
        while aj < len(audio) and audio[aj].dts < end:
            aj += 1
        if aj > ai:
            chunk = audio[ai:aj]
            tracks.append(TrackFragment(
                AUDIO_TRACK_ID, a_base + 1024 * ai,
                [Sample(1024, len(p.data), True) for p in chunk],
                [p.data for p in chunk],
            ))
        if tracks:
            out.append(media_fragment(seq, tracks))
            seq += 1
        vi, ai = vj, aj
    return b"".join(out), seq - 1


def ffprobe(path: Path) -> dict:
    result = subprocess.run(
        [FFPROBE, "-v", "error", "-show_streams", "-show_format", "-count_frames", "-of", "json", str(path)],
        check=True, capture_output=True, text=True,
    )
    assert result.stderr == "", result.stderr  # ffprobe found nothing to complain about
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    "width,height,x264,audio_rate,layout",
    [
        (1280, 720, (("x264-params", "bframes=2"),), 48000, "stereo"),
        (854, 480, (("tune", "zerolatency"),), 44100, "mono"),  # cropped width (864 coded)
        (426, 240, (("x264-params", "bframes=3:b-pyramid=normal"),), 0, ""),  # video only, cropped
        (0, 0, (), 44100, "stereo"),  # audio only
    ],
)
def test_end_to_end(tmp_path, width, height, x264, audio_rate, layout):
    frames = 90 if width else 0
    flv = encode_flv(width, height, frames, x264=x264, audio_rate=audio_rate, audio_layout=layout or "stereo")
    vcfg, acfg, video, audio = demux(flv)
    assert (vcfg is not None) == bool(frames) and (acfg is not None) == bool(audio_rate)
    assert len(video) == frames
    mp4, fragments = build_mp4(vcfg, acfg, video, audio)
    assert fragments >= 3
    path = tmp_path / "out.mp4"
    path.write_bytes(mp4)

    info = ffprobe(path)
    streams = {s["codec_type"]: s for s in info["streams"]}
    assert set(streams) == ({"video"} if frames else set()) | ({"audio"} if audio_rate else set())
    if frames:
        v = streams["video"]
        assert (v["codec_name"], v["width"], v["height"]) == ("h264", width, height)
        assert int(v["nb_read_frames"]) == frames
        # Duration: within one frame of what was encoded.
        assert abs(float(v["duration"]) - frames / FPS) <= 1 / FPS + 1e-6
    if audio_rate:
        a = streams["audio"]
        channels = 1 if layout == "mono" else 2
        assert (a["codec_name"], int(a["sample_rate"]), a["channels"]) == ("aac", audio_rate, channels)
        assert int(a["nb_read_frames"]) == len(audio)
        # ffprobe measures fragmented tracks from decode time 0, so the audio
        # track "duration" includes its tfdt start (the encoder's priming shift).
        audio_end = audio[0].dts / 1000 + len(audio) * 1024 / audio_rate
        assert abs(float(a["duration"]) - audio_end) <= 1024 / audio_rate + 1e-6
    expected_duration = frames / FPS if frames else len(audio) * 1024 / audio_rate
    assert abs(float(info["format"]["duration"]) - expected_duration) <= 0.1

    with av.open(str(path)) as container:
        if frames:
            decoded = list(container.decode(video=0))
            assert len(decoded) == frames
            assert all((f.width, f.height) == (width, height) for f in decoded)
            pts = [f.pts for f in decoded]
            # Presentation order with strictly increasing pts: the trun v1
            # composition offsets put the B-frames back in place.
            assert all(a < b for a, b in zip(pts, pts[1:]))
            assert container.streams.video[0].time_base == Fraction(1, VIDEO_TIMESCALE)
            expected = sorted(p.pts * VIDEO_TIMESCALE // 1000 for p in video)
            assert pts == expected
    if audio_rate:
        with av.open(str(path)) as container:
            samples = sum(f.samples for f in container.decode(audio=0))
            assert samples == len(audio) * 1024
