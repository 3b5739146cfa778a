"""RTMP handshake (C0/C1/C2 <-> S0/S1/S2), version 3.

The simple handshake of the RTMP spec (section 5.2) echoes C1 as S2. Flash
Player, OBS's librtmp and ffmpeg send a "digest" C1 (Flash Player 9+ style):
an HMAC-SHA256 over C1 sits at an offset derived from four bytes at either
offset 8 or 772. Clients that sent one may verify that the server answered in
kind, so when C1 carries a valid digest we answer with a digest S1 and an S2
signed with a key derived from the client's digest, as Flash Media Server,
nginx-rtmp and MediaMTX do. Otherwise we answer with the simple handshake.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time

VERSION = 3
HANDSHAKE_SIZE = 1536
DIGEST_SIZE = 32

_KEY_TAIL = bytes(
    [0xF0, 0xEE, 0xC2, 0x4A, 0x80, 0x68, 0xBE, 0xE8, 0x2E, 0x00, 0xD0, 0xD1, 0x02, 0x9E, 0x7E, 0x57,
     0x6E, 0xEC, 0x5D, 0x2D, 0x29, 0x80, 0x6F, 0xAB, 0x93, 0xB8, 0xE6, 0x36, 0xCF, 0xEB, 0x31, 0xAE]
)
CLIENT_KEY = b"Genuine Adobe Flash Player 001" + _KEY_TAIL  # 62 bytes; digests use the first 30
SERVER_KEY = b"Genuine Adobe Flash Media Server 001" + _KEY_TAIL  # 68 bytes; digests use the first 36
SERVER_VERSION = bytes([0x0D, 0x0E, 0x0A, 0x0D])  # any non-zero value marks a digest S1

# The two digest layouts ("schemes"): where the 4 offset bytes sit.
SCHEME_BASES = (8, 772)


def digest_offset(packet: bytes, base: int) -> int:
    """Offset of the 32-byte digest: sum of the 4 bytes at `base`, mod 728, past them."""
    return sum(packet[base : base + 4]) % 728 + base + 4


def compute_digest(packet: bytes, offset: int, key: bytes) -> bytes:
    """HMAC-SHA256 over the packet with the digest bytes themselves left out."""
    msg = packet[:offset] + packet[offset + DIGEST_SIZE :]
    return hmac.new(key, msg, hashlib.sha256).digest()


def find_digest(packet: bytes, key: bytes) -> tuple[int, bytes] | None:
    """Return (scheme base, digest) if `packet` carries a valid digest made with `key`."""
    for base in SCHEME_BASES:
        offset = digest_offset(packet, base)
        digest = packet[offset : offset + DIGEST_SIZE]
        if hmac.compare_digest(digest, compute_digest(packet, offset, key)):
            return base, digest
    return None


def _with_digest(packet: bytearray, base: int, key: bytes) -> bytes:
    offset = digest_offset(packet, base)
    packet[offset : offset + DIGEST_SIZE] = compute_digest(bytes(packet), offset, key)
    return bytes(packet)


def _timestamp() -> bytes:
    return struct.pack(">I", int(time.monotonic() * 1000) & 0xFFFFFFFF)


def server_response(c1: bytes, random: bytes | None = None) -> bytes:
    """S0 + S1 + S2 for the client's C1 (which must be HANDSHAKE_SIZE bytes)."""
    if len(c1) != HANDSHAKE_SIZE:
        raise ValueError("C1 must be 1536 bytes")
    rnd = random if random is not None else os.urandom(2 * HANDSHAKE_SIZE)
    found = find_digest(c1, CLIENT_KEY[:30])
    if found is None:
        # Simple handshake: S1 = time + zero + random, S2 = echo of C1.
        s1 = _timestamp() + b"\x00\x00\x00\x00" + rnd[8:HANDSHAKE_SIZE]
        return bytes([VERSION]) + s1 + c1
    base, client_digest = found
    s1 = _with_digest(bytearray(_timestamp() + SERVER_VERSION + rnd[8:HANDSHAKE_SIZE]), base, SERVER_KEY[:36])
    # S2: random bytes whose last 32 bytes sign the rest with a key bound to C1's digest.
    s2 = bytearray(rnd[HANDSHAKE_SIZE : 2 * HANDSHAKE_SIZE])
    key = hmac.new(SERVER_KEY, client_digest, hashlib.sha256).digest()
    s2[-DIGEST_SIZE:] = hmac.new(key, bytes(s2[:-DIGEST_SIZE]), hashlib.sha256).digest()
    return bytes([VERSION]) + s1 + bytes(s2)


def client_hello(digest: bool = True) -> bytes:
    """C0 + C1 for our own publishing client (tests, benchmarks)."""
    c1 = bytearray(_timestamp() + (bytes([0x80, 0x00, 0x07, 0x02]) if digest else bytes(4)))
    c1 += os.urandom(HANDSHAKE_SIZE - 8)
    if digest:
        return bytes([VERSION]) + _with_digest(c1, SCHEME_BASES[0], CLIENT_KEY[:30])
    return bytes([VERSION]) + bytes(c1)


def client_ack(s1: bytes) -> bytes:
    """C2: echo S1 (servers accept the echo, as librtmp's and ffmpeg's publishers rely on)."""
    return bytes(s1)
