"""H.264 bitstream formats: encoders speak Annex B (start codes), fMP4 wants AVCC
(length-prefixed NAL units) and an AVCDecoderConfigurationRecord (ISO/IEC 14496-15)."""
from __future__ import annotations

import struct

from ..flv import parse_avc_decoder_config
from ..media.packet import VideoConfig

NAL_SPS, NAL_PPS, NAL_AUD = 7, 8, 9
HIGH_PROFILES = {100, 110, 122, 144}  # their records carry the chroma / bit-depth extension


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B byte stream (3- or 4-byte start codes)."""
    nals = []
    n = len(data)
    i = data.find(b"\x00\x00\x01")
    while 0 <= i < n:
        start = i + 3
        j = data.find(b"\x00\x00\x01", start)
        end = n if j < 0 else j
        # A 4-byte start code (00 00 00 01) leaves its first zero on the previous NAL unit.
        nal = data[start:end]
        if j >= 0 and nal.endswith(b"\x00"):
            nal = nal.rstrip(b"\x00")
        if nal:
            nals.append(nal)
        i = j
    return nals


def annexb_to_avcc(data: bytes) -> bytes:
    """Length-prefix each NAL unit (4 bytes); parameter sets and access unit delimiters go,
    the init section carries the parameter sets."""
    out = bytearray()
    for nal in split_annexb(data):
        if nal[0] & 0x1F in (NAL_SPS, NAL_PPS, NAL_AUD):
            continue
        out += struct.pack(">I", len(nal))
        out += nal
    return bytes(out)


def config_from_annexb(extradata: bytes) -> VideoConfig:
    """The VideoConfig of an encoder's global header (SPS and PPS in Annex B)."""
    nals = split_annexb(extradata)
    sps = [n for n in nals if n[0] & 0x1F == NAL_SPS]
    pps = [n for n in nals if n[0] & 0x1F == NAL_PPS]
    if not sps or not pps:
        raise ValueError("the encoder's header has no SPS or PPS")
    profile, compat, level = sps[0][1], sps[0][2], sps[0][3]
    record = bytearray([1, profile, compat, level, 0xFF, 0xE0 | len(sps)])  # 4-byte NAL lengths
    for s in sps:
        record += struct.pack(">H", len(s)) + s
    record.append(len(pps))
    for p in pps:
        record += struct.pack(">H", len(p)) + p
    if profile in HIGH_PROFILES:
        # 4:2:0, 8-bit luma and chroma (what we encode), no SPS extensions
        record += bytes([0xFC | 1, 0xF8, 0xF8, 0])
    return parse_avc_decoder_config(bytes(record))
