"""sfstream: a live-streaming server in one asyncio process (RTMP in, LL-HLS out)."""

__version__ = "0.1.0"
