"""The ladder's seams, without a server: the HLS side of rungs, a failing encoder, bitstreams."""
from __future__ import annotations

import asyncio
import threading
from fractions import Fraction

import av

from sfstream import flv
from sfstream.hls.live import HLSSettings, HLSStream
from sfstream.media.live import LiveStream
from sfstream.media.packet import VideoConfig
from sfstream.rtmp.client import read_flv
from sfstream.transcode.h264 import annexb_to_avcc, config_from_annexb, split_annexb
from sfstream.transcode.ladder import Rung, parse_ladder, rungs_for_source
from sfstream.transcode.pipeline import RungEncoder, TranscodeSettings, Transcoder

from .conftest import require, run


async def test_a_returning_publisher_gets_fresh_rungs_and_old_epochs_are_ignored():
    hls = HLSStream(LiveStream("x"), HLSSettings(), asyncio.get_running_loop())
    first = hls.set_rungs(["720p", "480p"])
    hls.rung_shed("720p", True, first)
    assert hls.renditions["720p"].shed
    second = hls.set_rungs(["720p"])  # the publisher came back: a new transcoder
    assert not hls.renditions["720p"].shed  # it decides afresh
    assert hls.renditions["480p"].segmenter.ended  # a rung it no longer makes ends
    hls.rung_shed("720p", True, first)  # late news from the old transcoder
    assert not hls.renditions["720p"].shed
    hls.rung_shed("720p", True, second)
    assert hls.renditions["720p"].shed


def test_a_failed_encoder_never_blocks_its_feeder():
    events = []
    bad = TranscodeSettings(ladder=(), preset="no-such-preset", rung_queue=2)
    enc = RungEncoder(Rung(240, 400), bad, lambda kind, value: events.append(kind))
    frame = av.VideoFrame(320, 240, "yuv420p")
    frame.pts, frame.time_base = 0, Fraction(1, 1000)
    enc.submit(frame, True, 0.0)
    enc.join(10)
    assert events == ["failed"] and not enc.alive and not enc.active
    assert not enc.submit(frame, True, 0.0)  # refused at once, even a keyframe (no wait)
    done = threading.Event()
    threading.Thread(target=lambda: (enc.close(), done.set()), daemon=True).start()
    assert done.wait(5), "close() hung on a dead encoder"


def test_annexb_to_avcc_and_config_from_an_encoder():
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = 320, 180, "yuv420p", Fraction(1, 1000)
    ctx.flags |= av.codec.context.Flags.global_header
    ctx.options = {"preset": "ultrafast", "tune": "zerolatency"}
    ctx.open()
    config = config_from_annexb(bytes(ctx.extradata))
    assert (config.width, config.height, config.nal_length_size) == (320, 180, 4)
    assert config.codec_string.startswith("avc1.")
    frame = av.VideoFrame(320, 180, "yuv420p")
    frame.pts, frame.time_base = 0, Fraction(1, 1000)
    packets = [*ctx.encode(frame), *ctx.encode(None)]
    data = annexb_to_avcc(bytes(packets[0]))
    pos, types = 0, []
    while pos < len(data):  # walk the length prefixes: they must tile the buffer exactly
        size = int.from_bytes(data[pos:pos + 4], "big")
        types.append(data[pos + 4] & 0x1F)
        pos += 4 + size
    assert pos == len(data) and 5 in types and 7 not in types and 8 not in types  # IDR, no SPS/PPS
    assert split_annexb(b"\x00\x00\x00\x01\x67\x01\x00\x00\x01\x68\x02") == [b"\x67\x01", b"\x68\x02"]


def test_ladder_parsing_and_rungs_below_the_source():
    assert parse_ladder("none") == () and parse_ladder("") == ()
    ladder = parse_ladder("480p,1080p,720p@2000k")
    assert [(r.height, r.kbps) for r in ladder] == [(1080, 5000), (720, 2000), (480, 1200)]
    assert [r.height for r in rungs_for_source(ladder, 720)] == [480]  # a rung of the source's height: no
    assert Rung(480, 1200).size_for(1920, 1080) == (854, 480)
    assert Rung(720, 2800).size_for(640, 360) == (640, 360)  # never above the source
    for bad in ("720", "721p", "720p,720p", "99999p"):
        try:
            parse_ladder(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


class CountingSink:
    def __init__(self) -> None:
        self.packets: dict[str, list] = {}
        self.done = asyncio.Event()

    def set_rungs(self, names):
        return 1

    def rung_config(self, name, video, epoch):
        pass

    def rung_packet(self, name, packet, epoch):
        self.packets.setdefault(name, []).append(packet)

    def rung_shed(self, name, shed, epoch):
        pass

    def ladder_done(self, epoch):
        self.done.set()


async def test_every_frame_of_a_b_frame_source_reaches_the_rung(tmp_path):
    """A source with B-frames: the decoder holds the last frames for reordering until it is
    flushed; the end of the stream must flush it (no frame lost at the end)."""
    path = tmp_path / "b.flv"
    code, _, err = await run(
        require("ffmpeg"), "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30", "-t", "2",
        "-c:v", "libx264", "-preset", "fast", "-bf", "3", "-g", "30", "-pix_fmt", "yuv420p", "-f", "flv", str(path))
    assert code == 0, err.decode()
    sink = CountingSink()
    transcoder = Transcoder("b", TranscodeSettings(ladder=parse_ladder("240p"), preset="ultrafast", max_lag=1000.0,
                                                    thumbnail_interval=0), sink, asyncio.get_running_loop())
    sent, b_frames = 0, False
    for tag in read_flv(path.read_bytes()):
        if tag.type_id != 9:
            continue
        item = flv.parse_video_message(tag.body, tag.timestamp, 0.0)
        if isinstance(item, VideoConfig):
            transcoder.on_config(item, None)
        elif item is not None:
            sent += 1
            b_frames |= item.cts > 0
            transcoder.on_packet(item)  # 60 packets: the decode queue (120) holds them all
    transcoder.on_end()
    await asyncio.wait_for(sink.done.wait(), 30)
    assert b_frames  # the source really reorders (composition offsets)
    assert sent == 60 and len(sink.packets["240p"]) == 60
