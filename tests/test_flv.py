"""sfstream.flv against real encoder output (PyAV: libx264, aac) and hand-built syntax.

The helpers at the top (encode_flv, flv_tags, demux) are also used by
test_fmp4.py.
"""
from __future__ import annotations

import functools
import io
from fractions import Fraction

import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfstream.flv import (
    FLVError,
    UnsupportedCodec,
    parse_audio_message,
    parse_audio_specific_config,
    parse_avc_decoder_config,
    parse_sps,
    parse_video_message,
)
from sfstream.media.packet import AudioConfig, Packet, VideoConfig

# ---------------------------------------------------------------------------
# Media generation helpers
# ---------------------------------------------------------------------------

FPS = 30


@functools.lru_cache(maxsize=None)
def encode_flv(
    width: int = 0,
    height: int = 0,
    frames: int = 0,
    pix_fmt: str = "yuv420p",
    x264: tuple[tuple[str, str], ...] = (),
    audio_rate: int = 0,
    audio_layout: str = "stereo",
) -> bytes:
    """Encode testsrc2 (libx264) and/or a sine (aac) into an in-memory FLV.

    frames == 0 means no video; audio_rate == 0 means no audio.  Audio lasts
    as long as the video (or one second without video).
    """
    buf = io.BytesIO()
    out = av.open(buf, "w", format="flv")
    vstream = astream = None
    if frames:
        options = {"preset": "veryfast", "g": "30", **dict(x264)}
        vstream = out.add_stream("libx264", rate=FPS, options=options)
        vstream.width, vstream.height, vstream.pix_fmt = width, height, pix_fmt
    if audio_rate:
        astream = out.add_stream("aac", rate=audio_rate, layout=audio_layout)

    if vstream is not None:
        src = av.open(f"testsrc2=size={width}x{height}:rate={FPS}", format="lavfi")
        for i, frame in enumerate(src.decode(video=0)):
            if i == frames:
                break
            frame = frame.reformat(format=pix_fmt)
            frame.pts = i
            frame.pict_type = 0  # lavfi marks every frame I; let x264 choose
            for packet in vstream.encode(frame):
                out.mux(packet)
        src.close()
        for packet in vstream.encode(None):
            out.mux(packet)

    if astream is not None:
        seconds = frames / FPS if frames else 1.0
        channels = "sin(440*2*PI*t)" if audio_layout == "mono" else "sin(440*2*PI*t)|sin(550*2*PI*t)"
        src = av.open(f"aevalsrc={channels}:s={audio_rate}:d={seconds}", format="lavfi")
        resampler = av.AudioResampler("fltp", audio_layout, audio_rate, frame_size=1024)
        for frame in [*src.decode(audio=0), None]:
            for chunk in resampler.resample(frame):
                for packet in astream.encode(chunk):
                    out.mux(packet)
        src.close()
        for packet in astream.encode(None):
            out.mux(packet)
    out.close()
    return buf.getvalue()


def flv_tags(data: bytes) -> list[tuple[int, int, bytes]]:
    """Minimal FLV file walker: [(tag_type, timestamp_ms, body)]."""
    assert data[:3] == b"FLV"
    header_size = int.from_bytes(data[5:9], "big")
    pos = header_size + 4  # header + PreviousTagSize0
    tags = []
    while pos + 11 <= len(data):
        tag_type = data[pos] & 0x1F
        size = int.from_bytes(data[pos + 1 : pos + 4], "big")
        ts = int.from_bytes(data[pos + 4 : pos + 7], "big") | (data[pos + 7] << 24)
        body = data[pos + 11 : pos + 11 + size]
        assert len(body) == size
        tags.append((tag_type, ts, body))
        pos += 11 + size + 4  # tag + PreviousTagSize
    return tags


def demux(data: bytes) -> tuple[VideoConfig | None, AudioConfig | None, list[Packet], list[Packet]]:
    """Feed every FLV tag body to the parsers, like the RTMP ingest does."""
    vcfg = acfg = None
    video: list[Packet] = []
    audio: list[Packet] = []
    for tag_type, ts, body in flv_tags(data):
        if tag_type == 9:
            result = parse_video_message(body, ts)
        elif tag_type == 8:
            result = parse_audio_message(body, ts)
        else:
            continue
        if isinstance(result, VideoConfig):
            vcfg = result
        elif isinstance(result, AudioConfig):
            acfg = result
        elif isinstance(result, Packet):
            (video if result.is_video else audio).append(result)
    return vcfg, acfg, video, audio


def x264_sps(width: int, height: int, pix_fmt: str = "yuv420p", **options: str) -> bytes:
    """The SPS NAL unit libx264 puts into its (Annex B) global-header extradata."""
    cc = av.CodecContext.create("libx264", "w")
    cc.width, cc.height, cc.pix_fmt = width, height, pix_fmt
    cc.time_base = Fraction(1, FPS)
    cc.framerate = FPS
    cc.options = {"preset": "veryfast", **options}
    cc.flags |= av.codec.context.Flags.global_header
    cc.open()
    nals = [n.lstrip(b"\x00") for n in cc.extradata.split(b"\x00\x00\x01")]
    return next(n for n in nals if n and n[0] & 0x1F == 7)


# ---------------------------------------------------------------------------
# Hand-built bitstreams (spec syntax written out independently of the parser)
# ---------------------------------------------------------------------------


class BitWriter:
    def __init__(self) -> None:
        self.bits: list[str] = []

    def u(self, n: int, value: int) -> BitWriter:
        if n:
            self.bits.append(format(value, f"0{n}b"))
        return self

    def ue(self, value: int) -> BitWriter:
        code = format(value + 1, "b")
        self.bits.append("0" * (len(code) - 1) + code)
        return self

    def se(self, value: int) -> BitWriter:
        return self.ue(2 * value - 1 if value > 0 else -2 * value)

    def raw(self) -> bytes:
        s = "".join(self.bits)
        s += "0" * (-len(s) % 8)
        return int(s, 2).to_bytes(len(s) // 8, "big") if s else b""

    def rbsp(self) -> bytes:
        """With rbsp_trailing_bits (7.3.2.11)."""
        self.bits.append("1")
        return self.raw()


def add_emulation_prevention(rbsp: bytes) -> bytes:
    out = bytearray()
    zeros = 0
    for b in rbsp:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def build_sps(
    *,
    profile_idc: int = 100,
    chroma_format_idc: int = 1,
    separate_colour_plane: int = 0,
    scaling_lists: list[list[int] | None] | None = None,
    poc_type: int = 0,
    poc_cycle: list[int] = (),
    width_mbs: int = 80,
    height_map_units: int = 45,
    frame_mbs_only: int = 1,
    crop: tuple[int, int, int, int] | None = None,
) -> bytes:
    """SPS NAL unit per H.264 7.3.2.1.1; scaling_lists[i] = delta_scale list or None."""
    w = BitWriter().u(8, profile_idc).u(8, 0).u(8, 40).ue(0)
    if profile_idc in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        w.ue(chroma_format_idc)
        if chroma_format_idc == 3:
            w.u(1, separate_colour_plane)
        w.ue(0).ue(0).u(1, 0)
        w.u(1, scaling_lists is not None)
        if scaling_lists is not None:
            for deltas in scaling_lists:
                w.u(1, deltas is not None)
                for d in deltas or ():
                    w.se(d)
    w.ue(0)  # log2_max_frame_num_minus4
    w.ue(poc_type)
    if poc_type == 0:
        w.ue(2)
    elif poc_type == 1:
        w.u(1, 0).se(-3).se(7).ue(len(poc_cycle))
        for offset in poc_cycle:
            w.se(offset)
    w.ue(4).u(1, 0)  # max_num_ref_frames, gaps
    w.ue(width_mbs - 1).ue(height_map_units - 1).u(1, frame_mbs_only)
    if not frame_mbs_only:
        w.u(1, 1)
    w.u(1, 1)  # direct_8x8_inference_flag
    w.u(1, crop is not None)
    for c in crop or ():
        w.ue(c)
    w.u(1, 0)  # vui_parameters_present_flag
    return b"\x67" + add_emulation_prevention(w.rbsp())


def scaling_deltas(values: list[int]) -> list[int]:
    """delta_scale sequence that codes `values` (7.3.2.1.1.1), stopping at a 0 value."""
    deltas, last = [], 8
    for v in values:
        delta = (v - last + 128) % 256 - 128
        deltas.append(delta)
        if v == 0:
            break
        last = v
    return deltas


def build_asc(object_type: int, freq_index: int, channels: int, *, explicit_rate: int = 0,
              ext_index: int | None = None, ext_rate: int = 0, core_type: int = 2) -> bytes:
    w = BitWriter()

    def aot(t: int) -> None:
        if t >= 31:
            w.u(5, 31).u(6, t - 32)
        else:
            w.u(5, t)

    def freq(i: int, rate: int) -> None:
        w.u(4, i)
        if i == 15:
            w.u(24, rate)

    aot(object_type)
    freq(freq_index, explicit_rate)
    w.u(4, channels)
    if ext_index is not None:
        freq(ext_index, ext_rate)
        aot(core_type)
    w.u(3, 0)  # GASpecificConfig: frameLengthFlag, dependsOnCoreCoder, extensionFlag
    return w.raw()


# ---------------------------------------------------------------------------
# SPS from real encoders
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "width,height,pix_fmt,options,profile_idc",
    [
        (1280, 720, "yuv420p", {"profile": "baseline"}, 66),
        (854, 480, "yuv420p", {"profile": "main"}, 77),
        (426, 240, "yuv420p", {"profile": "high"}, 100),
        (1920, 1080, "yuv420p", {"tune": "zerolatency"}, 100),
        (640, 360, "yuv420p10le", {}, 110),  # High 10: bit_depth_*_minus8 = 2
        (426, 239, "yuv422p", {}, 122),  # 4:2:2: CropUnitY = 1
        (425, 239, "yuv444p", {}, 244),  # 4:4:4: CropUnitX = CropUnitY = 1
        (425, 239, "gray", {}, 100),  # chroma_format_idc 0: ChromaArrayType 0
        (1920, 1080, "yuv420p", {"x264-params": "interlaced=1"}, 100),  # frame_mbs_only 0
        (718, 572, "yuv420p", {"x264-params": "interlaced=1:bff=1:bframes=3"}, 100),
    ],
)
def test_parse_sps_from_x264(width, height, pix_fmt, options, profile_idc):
    sps = x264_sps(width, height, pix_fmt, **options)
    assert sps[1] == profile_idc
    assert parse_sps(sps) == (width, height)


def test_parse_sps_accepts_memoryview_and_bytearray():
    sps = x264_sps(854, 480)
    assert parse_sps(memoryview(sps)) == parse_sps(bytearray(sps)) == (854, 480)


# ---------------------------------------------------------------------------
# SPS syntax that x264 never emits
# ---------------------------------------------------------------------------


def test_sps_scaling_lists_4_2_0():
    jvt_4x4 = [6, 13, 13, 20, 20, 20, 28, 28, 28, 28, 32, 32, 32, 37, 37, 42]
    lists = [scaling_deltas(jvt_4x4)] * 6 + [scaling_deltas([i % 250 + 4 for i in range(64)]), None]
    sps = build_sps(scaling_lists=lists, crop=(0, 0, 0, 4), width_mbs=120, height_map_units=68)
    assert parse_sps(sps) == (1920, 1080)


def test_sps_scaling_lists_use_default_flag():
    # A first delta that makes nextScale 0 means "use the default list" and
    # ends the list after one se(v) (useDefaultScalingMatrixFlag).
    lists = [[-8]] * 8
    assert parse_sps(build_sps(scaling_lists=lists)) == (1280, 720)


def test_sps_scaling_lists_4_4_4_has_twelve():
    lists = [None, [-8], [1] * 16, None, None, [0] * 16] + [[2] * 64, None, [-8], [0] * 64, [5] * 64, [-3] * 64]
    sps = build_sps(profile_idc=244, chroma_format_idc=3, scaling_lists=lists, crop=(1, 2, 3, 4))
    assert parse_sps(sps) == (1280 - 3, 720 - 7)


def test_sps_separate_colour_plane_crop_units_are_luma():
    sps = build_sps(profile_idc=244, chroma_format_idc=3, separate_colour_plane=1, crop=(1, 0, 0, 1))
    assert parse_sps(sps) == (1279, 719)


def test_sps_poc_type_1_loop():
    sps = build_sps(profile_idc=77, poc_type=1, poc_cycle=[1, -2, 300, -4000, 0], crop=(0, 3, 0, 0))
    assert parse_sps(sps) == (1280 - 6, 720)


def test_sps_interlaced_4_2_0_crop_unit_y_is_4():
    sps = build_sps(profile_idc=77, poc_type=2, height_map_units=34, frame_mbs_only=0, crop=(0, 0, 0, 2))
    assert parse_sps(sps) == (1280, 1080)


def test_sps_emulation_prevention_is_removed():
    # width 1 MB, height 1 map unit: long runs of zero bits force 00 00 03.
    sps = build_sps(profile_idc=66, poc_type=2, width_mbs=1, height_map_units=1,
                    crop=(0, 0, 0, 0))
    assert parse_sps(sps) == (16, 16)
    # Large offset_for_ref_frame values are long runs of zero bits.
    sps = build_sps(profile_idc=77, poc_type=1, poc_cycle=[2**20, -(2**20), 2**22], crop=(0, 8, 0, 4))
    assert b"\x00\x00\x03" in sps
    assert parse_sps(sps) == (1280 - 16, 720 - 8)


@settings(max_examples=150, deadline=None)
@given(
    profile_idc=st.sampled_from([66, 77, 88, 100, 110, 122, 244, 44, 118, 128]),
    chroma=st.integers(0, 3),
    separate=st.integers(0, 1),
    scaling=st.one_of(
        st.none(),
        st.lists(st.one_of(st.none(), st.lists(st.integers(0, 255), min_size=64, max_size=64)),
                 min_size=12, max_size=12),
    ),
    poc_type=st.integers(0, 2),
    poc_cycle=st.lists(st.integers(-(2**20), 2**20), max_size=8),
    width_mbs=st.integers(1, 300),
    height_map_units=st.integers(1, 200),
    frame_mbs_only=st.integers(0, 1),
    crop=st.one_of(st.none(), st.tuples(*[st.integers(0, 7)] * 4)),
)
def test_sps_round_trip(profile_idc, chroma, separate, scaling, poc_type, poc_cycle, width_mbs,
                        height_map_units, frame_mbs_only, crop):
    """Whatever the writer (straight from the spec tables) emits, the parser sizes correctly."""
    if profile_idc not in (100, 110, 122, 244, 44, 118, 128):
        chroma, separate, scaling = 1, 0, None
    if chroma != 3:
        separate = 0
    lists = None
    if scaling is not None:
        count = 12 if chroma == 3 else 8
        lists = [None if values is None else scaling_deltas(values[: 16 if i < 6 else 64])
                 for i, values in enumerate(scaling[:count])]
    sps = build_sps(profile_idc=profile_idc, chroma_format_idc=chroma, separate_colour_plane=separate,
                    scaling_lists=lists, poc_type=poc_type, poc_cycle=poc_cycle, width_mbs=width_mbs,
                    height_map_units=height_map_units, frame_mbs_only=frame_mbs_only, crop=crop)
    width, height = width_mbs * 16, (2 - frame_mbs_only) * height_map_units * 16
    if crop:
        # Table 6-1 and 7-19..7-22, written out per case.
        if separate or chroma == 0:
            unit_x, unit_y = 1, 2 - frame_mbs_only
        elif chroma == 1:
            unit_x, unit_y = 2, 2 * (2 - frame_mbs_only)
        elif chroma == 2:
            unit_x, unit_y = 2, 2 - frame_mbs_only
        else:
            unit_x, unit_y = 1, 2 - frame_mbs_only
        width -= unit_x * (crop[0] + crop[1])
        height -= unit_y * (crop[2] + crop[3])
    if width <= 0 or height <= 0:
        with pytest.raises(FLVError):
            parse_sps(sps)
    else:
        assert parse_sps(sps) == (width, height)


# ---------------------------------------------------------------------------
# Video messages from a real FLV
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x264,reorder",
    [((("x264-params", "bframes=2"),), True), ((("tune", "zerolatency"),), False)],
)
def test_video_messages_from_flv(x264, reorder):
    frames = 45
    vcfg, acfg, video, audio = demux(encode_flv(854, 480, frames, x264=x264))
    assert acfg is None and not audio
    assert (vcfg.width, vcfg.height, vcfg.profile) == (854, 480, 100)
    assert vcfg.codec_string.startswith("avc1.64")
    assert vcfg.nal_length_size == 4
    assert len(vcfg.sps) == 1 and len(vcfg.pps) == 1 and vcfg.sps[0][0] & 0x1F == 7
    assert len(video) == frames
    assert video[0].keyframe and video[30].keyframe
    assert sum(p.keyframe for p in video) == 2  # g=30
    dts = [p.dts for p in video]
    assert dts == sorted(dts)
    pts = [p.pts for p in video]
    in_order = sorted(pts)
    assert {b - a for a, b in zip(in_order, in_order[1:])} <= {33, 34}  # one frame apart
    assert (pts != in_order) == reorder  # B-frames: decode order != presentation order
    assert any(p.cts > 0 for p in video) == reorder
    for p in video:
        # AVCC: 4-byte lengths that exactly tile the payload.
        pos = 0
        while pos < len(p.data):
            pos += 4 + int.from_bytes(p.data[pos : pos + 4], "big")
        assert pos == len(p.data)


def test_video_message_fields():
    nalus = b"\x00\x00\x00\x02\x65\x88"
    p = parse_video_message(b"\x17\x01\x00\x00\x21" + nalus, 1000, 5.5)
    assert p == Packet(True, 1000, nalus, True, 0x21, 5.5)
    p = parse_video_message(memoryview(b"\x27\x01\xff\xff\xfe" + nalus), 7)
    assert p.cts == -2 and not p.keyframe and p.data == nalus and type(p.data) is bytes
    assert parse_video_message(b"\x27\x01\x80\x00\x00" + nalus, 0).cts == -(2**23)
    assert parse_video_message(b"\x27\x01\x7f\xff\xff" + nalus, 0).cts == 2**23 - 1


def test_video_messages_ignored():
    assert parse_video_message(b"", 0) is None
    assert parse_video_message(b"\x17\x02\x00\x00\x00", 0) is None  # end of sequence
    assert parse_video_message(b"\x17\x02", 0) is None
    assert parse_video_message(b"\x17\x01\x00\x00\x00", 0) is None  # no NAL units
    assert parse_video_message(b"\x57\x00", 0) is None  # video info/command frame
    assert parse_video_message(b"\x52\x00", 0) is None


def test_video_sequence_header_memoryview():
    body = next(b for t, _, b in flv_tags(encode_flv(426, 240, 3)) if t == 9)
    cfg = parse_video_message(memoryview(body), 0)
    assert isinstance(cfg, VideoConfig) and cfg.avcc == body[5:] and type(cfg.avcc) is bytes
    assert (cfg.width, cfg.height) == (426, 240)


# ---------------------------------------------------------------------------
# Audio messages from a real FLV
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("rate,layout", [(44100, "stereo"), (48000, "mono"), (22050, "stereo")])
def test_audio_messages_from_flv(rate, layout):
    vcfg, acfg, video, audio = demux(encode_flv(audio_rate=rate, audio_layout=layout))
    assert vcfg is None and not video
    channels = 1 if layout == "mono" else 2
    assert (acfg.object_type, acfg.sample_rate, acfg.channels) == (2, rate, channels)
    assert acfg.codec_string == "mp4a.40.2"
    assert acfg.asc == parse_audio_specific_config(acfg.asc).asc
    expected = -(-rate // 1024)  # one second of 1024-sample frames, plus the flush
    assert expected <= len(audio) <= expected + 2
    assert all(p.keyframe and not p.is_video and p.cts == 0 for p in audio)
    assert [p.dts for p in audio] == sorted(p.dts for p in audio)


def test_audio_message_fields():
    p = parse_audio_message(memoryview(b"\xaf\x01\x21\x10"), 33, 1.5)
    assert p == Packet(False, 33, b"\x21\x10", True, 0, 1.5)
    assert parse_audio_message(b"", 0) is None
    assert parse_audio_message(b"\xaf\x01", 0) is None
    cfg = parse_audio_message(b"\xaf\x00\x12\x10", 0)
    assert cfg == AudioConfig(b"\x12\x10", 2, 44100, 2)


def test_asc_variants():
    assert parse_audio_specific_config(build_asc(2, 3, 1)) == AudioConfig(build_asc(2, 3, 1), 2, 48000, 1)
    # Explicit 24-bit frequency (index 15).
    cfg = parse_audio_specific_config(build_asc(2, 15, 2, explicit_rate=44056))
    assert (cfg.sample_rate, cfg.channels) == (44056, 2)
    # HE-AAC (SBR): core 24 kHz, extension (output) 48 kHz; codec string stays .5.
    cfg = parse_audio_specific_config(build_asc(5, 6, 2, ext_index=3))
    assert (cfg.object_type, cfg.sample_rate, cfg.channels, cfg.codec_string) == (5, 48000, 2, "mp4a.40.5")
    # HE-AACv2 (PS): mono core, stereo output.
    cfg = parse_audio_specific_config(build_asc(29, 7, 1, ext_index=4))
    assert (cfg.object_type, cfg.sample_rate, cfg.channels, cfg.codec_string) == (29, 44100, 2, "mp4a.40.29")
    # Escaped object type (31 -> 32 + 6 bits), e.g. 42 = USAC.
    cfg = parse_audio_specific_config(build_asc(42, 4, 2))
    assert (cfg.object_type, cfg.sample_rate) == (42, 44100)
    # 7.1
    assert parse_audio_specific_config(build_asc(2, 3, 7)).channels == 8


def test_asc_program_config_element():
    # channelConfiguration 0: the layout is in a PCE (14496-3 4.4.1.1).
    w = BitWriter().u(5, 2).u(4, 3).u(4, 0).u(3, 0)  # AAC-LC, 48 kHz, GASpecificConfig
    w.u(4, 0).u(2, 1).u(4, 3)  # element_instance_tag, object_type, sampling_frequency_index
    w.u(4, 2).u(4, 0).u(4, 1).u(2, 1).u(3, 0).u(4, 0)  # 2 front, 0 side, 1 back, 1 lfe
    w.u(1, 0).u(1, 0).u(1, 0)  # no mixdowns
    w.u(1, 0).u(4, 0).u(1, 1).u(4, 1)  # front: SCE (centre), CPE (L/R)
    w.u(1, 1).u(4, 2)  # back: CPE
    w.u(4, 0)  # lfe tag
    cfg = parse_audio_specific_config(w.raw() + b"\x00\x00")
    assert (cfg.sample_rate, cfg.channels) == (48000, 6)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first_byte,name",
    [(0x12, "Sorenson"), (0x13, "Screen"), (0x14, "VP6"), (0x15, "VP6"), (0x16, "Screen"),
     (0x1C, "HEVC"), (0x1D, "AV1"), (0x19, "unknown"), (0x21, "JPEG")],
)
def test_unsupported_video_codecs(first_byte, name):
    with pytest.raises(UnsupportedCodec, match=name):
        parse_video_message(bytes([first_byte]) + b"\x00\x00\x00\x00\x00", 0)


@pytest.mark.parametrize("fourcc", [b"hvc1", b"av01", b"vp09", b"avc1"])
def test_enhanced_rtmp_video_unsupported(fourcc):
    with pytest.raises(UnsupportedCodec, match=fourcc.decode()):
        parse_video_message(b"\x90" + fourcc + b"\x01\x02\x03", 0)  # SequenceStart, keyframe


@pytest.mark.parametrize(
    "first_byte,name",
    [(0x2F, "MP3"), (0xB6, "Speex"), (0xE2, "MP3"), (0x72, "G.711"), (0x3E, "PCM"), (0x66, "Nellymoser")],
)
def test_unsupported_audio_codecs(first_byte, name):
    with pytest.raises(UnsupportedCodec, match=name):
        parse_audio_message(bytes([first_byte, 0, 1, 2]), 0)


def test_enhanced_rtmp_audio_unsupported():
    with pytest.raises(UnsupportedCodec, match="Opus"):
        parse_audio_message(b"\x90Opus\x00", 0)


def test_truncated_avc_sequence_header():
    body = next(b for t, _, b in flv_tags(encode_flv(854, 480, 3)) if t == 9)
    record = body[5:]
    sps_len = int.from_bytes(record[6:8], "big")
    pps_end = 8 + sps_len + 1 + 2 + int.from_bytes(record[9 + sps_len : 11 + sps_len], "big")
    assert isinstance(parse_video_message(body, 0), VideoConfig)
    for cut in range(1, 5 + pps_end):
        with pytest.raises(FLVError):
            parse_video_message(body[:cut], 0)
    for cut in range(0, pps_end):
        with pytest.raises(FLVError):
            parse_avc_decoder_config(record[:cut])


def test_bad_avc_records():
    record = next(b for t, _, b in flv_tags(encode_flv(854, 480, 3)) if t == 9)[5:]
    with pytest.raises(FLVError, match="version"):
        parse_avc_decoder_config(b"\x02" + record[1:])
    with pytest.raises(FLVError, match="length size"):
        parse_avc_decoder_config(record[:4] + b"\xfe" + record[5:])
    with pytest.raises(FLVError, match="no SPS"):
        parse_avc_decoder_config(record[:5] + b"\xe0\x00")
    with pytest.raises(FLVError, match="AVCPacketType"):
        parse_video_message(b"\x17\x03\x00\x00\x00\x01", 0)


def test_truncated_sps_raises_or_parses():
    sps = x264_sps(854, 480)
    for cut in range(len(sps)):
        try:
            assert parse_sps(sps[:cut]) == (854, 480)  # only the VUI was lost
        except FLVError:
            pass
    for cut in range(6):
        with pytest.raises(FLVError):
            parse_sps(sps[:cut])


@pytest.mark.parametrize(
    "sps",
    [
        build_sps(width_mbs=5000),  # 80000 px: does not fit the 16-bit sample entry
        build_sps(crop=(400, 300, 0, 0)),  # cropped to nothing
        build_sps(chroma_format_idc=4),
        b"\x67" + b"\x00" * 20,  # exp-Golomb code with > 31 leading zeros
        b"\x68\x64\x00\x1f\xac",  # a PPS, not an SPS
        b"\x67\x64\x00\x1f\x00\x00\x00\x00",
        b"\x67\x64\x00\x1f\xff\x00\x00\x00\x00\x00\x00\x00\x00\x01",
    ],
)
def test_garbage_sps(sps):
    with pytest.raises(FLVError):
        parse_sps(sps)


def test_bad_asc():
    for asc in [b"", b"\x12", b"\x00\x00", build_asc(2, 13, 2), build_asc(2, 14, 2), build_asc(2, 4, 9)]:
        with pytest.raises(FLVError):
            parse_audio_specific_config(asc)
    with pytest.raises(FLVError):
        parse_audio_message(b"\xaf\x00", 0)
    with pytest.raises(FLVError):
        parse_audio_message(b"\xaf\x00\x12", 0)
    with pytest.raises(FLVError):
        parse_audio_message(b"\xaf", 0)
    with pytest.raises(FLVError):
        parse_audio_message(b"\xaf\x02\x00", 0)


# Prefixes that steer random bytes into the deeper parsers.
_PREFIXES = [b"", b"\x17\x00", b"\x17\x00\x00\x00\x00\x01\x64\x00\x1f\xff\xe1\x00", b"\x27\x01",
             b"\xaf\x00", b"\xaf\x01", b"\x01\x64\x00\x1f\xff\xe1\x00\x10\x67\x64\x00\x1f"]


@settings(max_examples=400, deadline=None)
@given(prefix=st.sampled_from(_PREFIXES), data=st.binary(max_size=80))
def test_fuzz_only_flv_errors(prefix, data):
    blob = prefix + data
    for fn in (parse_video_message, parse_audio_message):
        try:
            fn(blob, 0)
        except FLVError:
            pass
    for fn in (parse_avc_decoder_config, parse_audio_specific_config, parse_sps):
        try:
            fn(blob)
        except FLVError:
            pass
    try:
        parse_sps(b"\x67" + blob)
    except FLVError:
        pass
