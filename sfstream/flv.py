"""FLV tag bodies (= RTMP audio/video message payloads) -> codec configs and packets.

An RTMP audio (type 8) or video (type 9) message payload is exactly the body
of an FLV tag (Adobe FLV spec v10.1, E.4.2 AUDIODATA / E.4.3 VIDEODATA), so
this module serves both the RTMP ingest and FLV files.

Only H.264 (codec id 7) and AAC (SoundFormat 10) are accepted; the HLS
packager copies them into fMP4 untouched.  Everything else raises
`UnsupportedCodec` naming the codec so the ingest can reject the publisher
with a useful message.

`parse_video_message` / `parse_audio_message` run for every frame and do
only a couple of slice operations; the heavier parsers (avcC, SPS, ASC) run
once per sequence header.  Every parser turns malformed input into
`FLVError` -- never IndexError/struct.error -- because the input comes
straight off the network.
"""
from __future__ import annotations

from sfstream.media.packet import AudioConfig, Packet, VideoConfig

__all__ = [
    "FLVError",
    "UnsupportedCodec",
    "parse_video_message",
    "parse_audio_message",
    "parse_avc_decoder_config",
    "parse_sps",
    "parse_audio_specific_config",
]


class FLVError(ValueError):
    """Malformed FLV/RTMP media payload or codec configuration."""


class UnsupportedCodec(FLVError):
    """Well-formed payload, but not H.264 video / AAC audio."""


# FLV spec E.4.3.1 CodecID.  12/13 are the unofficial Chinese HEVC/AV1
# extensions some CDNs use.
_VIDEO_CODECS = {
    1: "JPEG",
    2: "Sorenson H.263",
    3: "Screen video",
    4: "On2 VP6",
    5: "On2 VP6 with alpha",
    6: "Screen video v2",
    7: "AVC",
    12: "HEVC (non-standard codec id 12)",
    13: "AV1 (non-standard codec id 13)",
}

# FLV spec E.4.2.1 SoundFormat.
_AUDIO_CODECS = {
    0: "Linear PCM, platform endian",
    1: "ADPCM",
    2: "MP3",
    3: "Linear PCM, little endian",
    4: "Nellymoser 16 kHz mono",
    5: "Nellymoser 8 kHz mono",
    6: "Nellymoser",
    7: "G.711 A-law",
    8: "G.711 mu-law",
    9: "enhanced RTMP audio",
    10: "AAC",
    11: "Speex",
    14: "MP3 8 kHz",
    15: "device-specific sound",
}


def _fourcc(payload: bytes | memoryview, start: int) -> str:
    raw = bytes(payload[start : start + 4])
    return raw.decode("latin-1") if len(raw) == 4 else raw.hex()


# --------------------------------------------------------------------------
# Per-frame hot path
# --------------------------------------------------------------------------


def parse_video_message(
    payload: bytes | memoryview, dts: int, arrival: float = 0.0
) -> VideoConfig | Packet | None:
    """Parse an FLV VIDEODATA body.

    Returns a VideoConfig for an AVC sequence header, a Packet for coded
    frames, and None for things the packager ignores (end of sequence,
    video info/command frames, empty bodies).
    """
    n = len(payload)
    if n == 0:
        return None
    b0 = payload[0]
    if b0 & 0x80:
        # Enhanced RTMP (veovera E-RTMP): IsExHeader bit, then a FourCC at
        # bytes 1..4 names the codec (hvc1, av01, vp09, ...).
        raise UnsupportedCodec(f"enhanced RTMP video (FourCC {_fourcc(payload, 1)!r}) is not supported")
    frame_type = b0 >> 4
    codec_id = b0 & 0x0F
    if frame_type == 5:
        # Video info/command frame (E.4.3.1): carries no picture.
        return None
    if codec_id != 7:
        name = _VIDEO_CODECS.get(codec_id, f"unknown codec id {codec_id}")
        raise UnsupportedCodec(f"video codec {name} (id {codec_id}) is not supported; use H.264")
    if n < 5:
        if n >= 2 and payload[1] == 2:
            return None  # end of sequence; some encoders omit the CompositionTime
        raise FLVError(f"AVC video tag too short ({n} bytes, need 5)")
    packet_type = payload[1]
    if packet_type == 1:
        if n == 5:
            return None
        # CompositionTime is SI24 (E.4.3.2): B-frames make it positive, some
        # encoders emit negative values.
        cts = (payload[2] << 16) | (payload[3] << 8) | payload[4]
        if cts & 0x800000:
            cts -= 0x1000000
        return Packet(True, dts, bytes(payload[5:]), frame_type == 1, cts, arrival)
    if packet_type == 0:
        return parse_avc_decoder_config(bytes(payload[5:]))
    if packet_type == 2:
        return None
    raise FLVError(f"unknown AVCPacketType {packet_type}")


def parse_audio_message(
    payload: bytes | memoryview, dts: int, arrival: float = 0.0
) -> AudioConfig | Packet | None:
    """Parse an FLV AUDIODATA body.

    AAC sequence header -> AudioConfig, raw AAC frame -> Packet, empty -> None.
    """
    n = len(payload)
    if n == 0:
        return None
    sound_format = payload[0] >> 4
    if sound_format != 10:
        if sound_format == 9 and n >= 5:
            # Enhanced RTMP v2 audio: FourCC at bytes 1..4 (mp4a, Opus, ac-3...).
            raise UnsupportedCodec(
                f"enhanced RTMP audio (FourCC {_fourcc(payload, 1)!r}) is not supported"
            )
        name = _AUDIO_CODECS.get(sound_format, f"unknown sound format {sound_format}")
        raise UnsupportedCodec(f"audio codec {name} (format {sound_format}) is not supported; use AAC")
    if n < 2:
        raise FLVError("AAC audio tag too short (no AACPacketType)")
    packet_type = payload[1]
    if packet_type == 1:
        if n == 2:
            return None
        # Every AAC access unit is independently decodable -> keyframe.
        return Packet(False, dts, bytes(payload[2:]), True, 0, arrival)
    if packet_type == 0:
        return parse_audio_specific_config(bytes(payload[2:]))
    raise FLVError(f"unknown AACPacketType {packet_type}")


# --------------------------------------------------------------------------
# AVCDecoderConfigurationRecord (ISO/IEC 14496-15, 5.3.3.1)
# --------------------------------------------------------------------------


def parse_avc_decoder_config(record: bytes) -> VideoConfig:
    """Parse an AVCDecoderConfigurationRecord (the FLV AVC sequence header).

    The record is kept verbatim in VideoConfig.avcc because the fMP4 avcC
    box is defined as exactly this structure (14496-15 5.3.3.1.2).
    """
    record = bytes(record)
    n = len(record)
    if n < 7:
        raise FLVError(f"AVCDecoderConfigurationRecord too short ({n} bytes)")
    if record[0] != 1:
        raise FLVError(f"AVCDecoderConfigurationRecord version {record[0]} (expected 1)")
    profile, compat, level = record[1], record[2], record[3]
    nal_length_size = (record[4] & 0x03) + 1
    if nal_length_size == 3:
        # 14496-15: lengthSizeMinusOne "shall be one of 0, 1, or 3".
        raise FLVError("AVCDecoderConfigurationRecord: invalid NAL length size 3")
    pos = 5
    sps_list: list[bytes] = []
    pps_list: list[bytes] = []
    for count_mask, out in ((0x1F, sps_list), (0xFF, pps_list)):
        if pos >= n:
            raise FLVError("AVCDecoderConfigurationRecord truncated (parameter set count)")
        count = record[pos] & count_mask
        pos += 1
        for _ in range(count):
            if pos + 2 > n:
                raise FLVError("AVCDecoderConfigurationRecord truncated (parameter set length)")
            length = (record[pos] << 8) | record[pos + 1]
            pos += 2
            if length == 0 or pos + length > n:
                raise FLVError("AVCDecoderConfigurationRecord truncated (parameter set data)")
            out.append(record[pos : pos + length])
            pos += length
    if not sps_list:
        raise FLVError("AVCDecoderConfigurationRecord has no SPS")
    if not pps_list:
        raise FLVError("AVCDecoderConfigurationRecord has no PPS")
    width, height = parse_sps(sps_list[0])
    return VideoConfig(
        avcc=record,
        width=width,
        height=height,
        profile=profile,
        compat=compat,
        level=level,
        nal_length_size=nal_length_size,
        sps=tuple(sps_list),
        pps=tuple(pps_list),
    )


# --------------------------------------------------------------------------
# Bit reader (big-endian, MSB first) with exp-Golomb, H.264 9.1
# --------------------------------------------------------------------------


class _BitReader:
    """MSB-first bit reader over a byte string.

    The whole buffer becomes one Python int so each read is a shift and a
    mask; reads past the end raise FLVError instead of silently yielding
    zeros, so truncated configs are reported rather than misparsed.
    """

    __slots__ = ("_value", "_left", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._value = int.from_bytes(data, "big")
        self._left = len(data) * 8  # bits not yet consumed
        self._what = what

    def bits(self, n: int) -> int:
        if n > self._left:
            raise FLVError(f"{self._what} truncated")
        self._left -= n
        return (self._value >> self._left) & ((1 << n) - 1)

    def flag(self) -> bool:
        return self.bits(1) == 1

    def ue(self) -> int:
        """ue(v), H.264 9.1: leadingZeroBits zeros, a 1, then that many bits."""
        zeros = 0
        while self.bits(1) == 0:
            zeros += 1
            if zeros > 31:
                # 32 leading zeros would exceed the 2^32-2 range of ue(v).
                raise FLVError(f"{self._what}: invalid exp-Golomb code")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        """se(v), H.264 9.1.1: k -> (-1)^(k+1) * ceil(k/2)."""
        k = self.ue()
        return (k + 1) >> 1 if k & 1 else -(k >> 1)


# --------------------------------------------------------------------------
# Sequence parameter set (H.264 7.3.2.1.1)
# --------------------------------------------------------------------------

# profile_idc values whose SPS carries chroma_format_idc etc. (7.3.2.1.1).
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})

# 65535 is the limit of the 16-bit width/height fields in the avc1 sample entry.
_MAX_DIMENSION = 0xFFFF


def _skip_scaling_list(r: _BitReader, size: int) -> None:
    """scaling_list() syntax, H.264 7.3.2.1.1.1; values are not needed."""
    last_scale = next_scale = 8
    for _ in range(size):
        if next_scale != 0:
            delta_scale = r.se()
            if not -128 <= delta_scale <= 127:
                raise FLVError("SPS: delta_scale out of range")
            next_scale = (last_scale + delta_scale + 256) % 256
        if next_scale != 0:
            last_scale = next_scale


def parse_sps(sps: bytes) -> tuple[int, int]:
    """Return the displayed (width, height) of an H.264 SPS NAL unit.

    `sps` is the NAL unit as stored in avcC: the one-byte NAL header
    (nal_unit_type 7) followed by the emulation-prevented payload.
    """
    sps = bytes(sps)
    if len(sps) < 4:
        raise FLVError(f"SPS too short ({len(sps)} bytes)")
    if sps[0] & 0x1F != 7:
        raise FLVError(f"not an SPS NAL unit (nal_unit_type {sps[0] & 0x1F})")
    # 7.4.1: drop emulation_prevention_three_byte from every 00 00 03.
    rbsp = sps[1:].replace(b"\x00\x00\x03", b"\x00\x00")
    r = _BitReader(rbsp, "SPS")

    profile_idc = r.bits(8)
    r.bits(8)  # constraint_set flags + reserved_zero_2bits
    r.bits(8)  # level_idc
    if r.ue() > 31:
        raise FLVError("SPS: seq_parameter_set_id out of range")

    chroma_format_idc = 1  # 7.4.2.1.1: inferred 1 (4:2:0) when not present
    separate_colour_plane = False
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = r.ue()
        if chroma_format_idc > 3:
            raise FLVError(f"SPS: invalid chroma_format_idc {chroma_format_idc}")
        if chroma_format_idc == 3:
            separate_colour_plane = r.flag()
        for _ in range(2):  # bit_depth_luma_minus8, bit_depth_chroma_minus8: 0..6
            if r.ue() > 6:
                raise FLVError("SPS: invalid bit depth")
        r.bits(1)  # qpprime_y_zero_transform_bypass_flag
        if r.flag():  # seq_scaling_matrix_present_flag
            for i in range(12 if chroma_format_idc == 3 else 8):
                if r.flag():  # seq_scaling_list_present_flag[i]
                    _skip_scaling_list(r, 16 if i < 6 else 64)

    if r.ue() > 12:  # log2_max_frame_num_minus4, range 0..12
        raise FLVError("SPS: invalid log2_max_frame_num_minus4")
    poc_type = r.ue()
    if poc_type == 0:
        if r.ue() > 12:  # log2_max_pic_order_cnt_lsb_minus4
            raise FLVError("SPS: invalid log2_max_pic_order_cnt_lsb_minus4")
    elif poc_type == 1:
        r.bits(1)  # delta_pic_order_always_zero_flag
        r.se()  # offset_for_non_ref_pic
        r.se()  # offset_for_top_to_bottom_field
        cycle = r.ue()  # num_ref_frames_in_pic_order_cnt_cycle, range 0..255
        if cycle > 255:
            raise FLVError("SPS: invalid num_ref_frames_in_pic_order_cnt_cycle")
        for _ in range(cycle):
            r.se()  # offset_for_ref_frame[i]
    elif poc_type != 2:
        raise FLVError(f"SPS: invalid pic_order_cnt_type {poc_type}")

    r.ue()  # max_num_ref_frames
    r.bits(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = r.ue() + 1  # pic_width_in_mbs_minus1
    height_map_units = r.ue() + 1  # pic_height_in_map_units_minus1
    frame_mbs_only = r.bits(1)
    if not frame_mbs_only:
        r.bits(1)  # mb_adaptive_frame_field_flag
    r.bits(1)  # direct_8x8_inference_flag

    width = width_mbs * 16
    # 7-18: FrameHeightInMbs = (2 - frame_mbs_only_flag) * PicHeightInMapUnits
    height = (2 - frame_mbs_only) * height_map_units * 16

    if r.flag():  # frame_cropping_flag
        left, right, top, bottom = r.ue(), r.ue(), r.ue(), r.ue()
        # 7-19..7-22: crop offsets are in chroma sample units.
        chroma_array_type = 0 if separate_colour_plane else chroma_format_idc
        if chroma_array_type == 0:
            crop_x, crop_y = 1, 2 - frame_mbs_only
        else:
            sub_width_c = 1 if chroma_format_idc == 3 else 2  # Table 6-1
            sub_height_c = 2 if chroma_format_idc == 1 else 1
            crop_x, crop_y = sub_width_c, sub_height_c * (2 - frame_mbs_only)
        width -= crop_x * (left + right)
        height -= crop_y * (top + bottom)

    if not (0 < width <= _MAX_DIMENSION and 0 < height <= _MAX_DIMENSION):
        raise FLVError(f"SPS: implausible picture size {width}x{height}")
    return width, height


# --------------------------------------------------------------------------
# AudioSpecificConfig (ISO/IEC 14496-3, 1.6.2.1)
# --------------------------------------------------------------------------

# 14496-3 Table 1.18 samplingFrequencyIndex; 13 and 14 are reserved.
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)

# Object types whose config is a GASpecificConfig (14496-3 1.6.2.1), i.e. the
# ones that may carry a program_config_element when channelConfiguration == 0.
_GA_OBJECT_TYPES = frozenset({1, 2, 3, 4, 6, 7, 17, 19, 20, 21, 22, 23})


def _object_type(r: _BitReader) -> int:
    """GetAudioObjectType(), 14496-3 1.6.2.1: 31 escapes to 32 + 6 bits."""
    ot = r.bits(5)
    return 32 + r.bits(6) if ot == 31 else ot


def _sampling_frequency(r: _BitReader) -> int:
    index = r.bits(4)
    if index == 15:
        rate = r.bits(24)  # explicit samplingFrequency
    elif index < len(_AAC_RATES):
        rate = _AAC_RATES[index]
    else:
        raise FLVError(f"AudioSpecificConfig: reserved samplingFrequencyIndex {index}")
    if rate == 0:
        raise FLVError("AudioSpecificConfig: sampling frequency 0")
    return rate


def _pce_channels(r: _BitReader) -> int:
    """Count output channels of a program_config_element (14496-3 4.4.1.1)."""
    r.bits(4 + 2 + 4)  # element_instance_tag, object_type, sampling_frequency_index
    front, side, back = r.bits(4), r.bits(4), r.bits(4)
    lfe = r.bits(2)
    r.bits(3 + 4)  # num_assoc_data_elements, num_valid_cc_elements
    if r.flag():  # mono_mixdown_present
        r.bits(4)
    if r.flag():  # stereo_mixdown_present
        r.bits(4)
    if r.flag():  # matrix_mixdown_idx_present
        r.bits(3)
    channels = lfe
    for _ in range(front + side + back):
        channels += 2 if r.flag() else 1  # *_element_is_cpe: a pair vs a single channel
        r.bits(4)  # *_element_tag_select
    return channels


def parse_audio_specific_config(asc: bytes) -> AudioConfig:
    """Parse an AudioSpecificConfig (the FLV AAC sequence header).

    For explicitly signalled HE-AAC (object type 5 = SBR, 29 = SBR+PS) the
    reported sample rate is the SBR output (extension) rate and the object
    type stays 5/29, so codec_string gives mp4a.40.5 / mp4a.40.29, which
    is what HLS players expect for HE-AAC.
    """
    asc = bytes(asc)
    if len(asc) < 2:
        raise FLVError(f"AudioSpecificConfig too short ({len(asc)} bytes)")
    r = _BitReader(asc, "AudioSpecificConfig")
    object_type = _object_type(r)
    if object_type == 0:
        raise FLVError("AudioSpecificConfig: audio object type 0 (null)")
    sample_rate = _sampling_frequency(r)
    channel_config = r.bits(4)
    core_type = object_type
    if object_type in (5, 29):
        # 1.6.2.1: explicit hierarchical SBR signalling -- extension rate,
        # then the core object type (normally 2, AAC-LC).
        sample_rate = _sampling_frequency(r)
        core_type = _object_type(r)
        if core_type == 22:
            r.bits(4)  # extensionChannelConfiguration

    if channel_config == 0:
        channels = 0
        if core_type in _GA_OBJECT_TYPES:
            # GASpecificConfig (4.4.1): frameLengthFlag, dependsOnCoreCoder
            # (+14-bit coreCoderDelay), extensionFlag, then the PCE.
            r.bits(1)
            if r.flag():
                r.bits(14)
            r.bits(1)
            channels = _pce_channels(r)
        if channels == 0:
            raise FLVError("AudioSpecificConfig: channel layout not signalled")
    elif channel_config <= 6:
        channels = channel_config
    elif channel_config == 7:
        channels = 8  # 7.1 (Table 1.19)
    else:
        # 11..14 are 6.1/7.1 variants from 14496-3 AMD; 8..10 reserved.
        channels = {11: 7, 12: 8, 13: 24, 14: 8}.get(channel_config, 0)
        if channels == 0:
            raise FLVError(f"AudioSpecificConfig: reserved channelConfiguration {channel_config}")

    if object_type == 29 and channels == 1:
        # Parametric Stereo decodes a mono core into stereo output.
        channels = 2
    return AudioConfig(asc=asc, object_type=object_type, sample_rate=sample_rate, channels=channels)
