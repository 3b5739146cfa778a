"""Publish a generated test pattern with PyAV to an RTMP URL (run as a separate process).

Usage: python tests/pyav_publish.py URL FRAMES WIDTH HEIGHT

A separate process because libav's RTMP muxer blocks on the socket while
holding the GIL: run inside the server's process it would stall the event loop
that has to answer it.
"""
import sys

import av


def main(url: str, frames: int, width: int, height: int) -> None:
    src = av.open(f"testsrc2=size={width}x{height}:rate=30", format="lavfi")
    out = av.open(url, "w", format="flv")
    try:
        vs = out.add_stream("libx264", rate=30, options={"preset": "veryfast", "tune": "zerolatency", "g": "30"})
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        for i, frame in enumerate(src.decode(video=0)):
            if i == frames:
                break
            frame = frame.reformat(format="yuv420p")
            frame.pts = i
            for pkt in vs.encode(frame):
                out.mux(pkt)
        for pkt in vs.encode(None):
            out.mux(pkt)
    finally:
        out.close()
        src.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
