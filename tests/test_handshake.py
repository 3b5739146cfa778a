"""sfstream.rtmp.handshake: RTMP spec 1.0 section 5.2, and the Flash Player 9+ digest
handshake that ffmpeg, librtmp (OBS) and Flash send (offset schemes at bytes 8 and 772).

Keys and digests are recomputed here with hashlib/hmac from the published constants,
not taken from the module under test.
"""
from __future__ import annotations

import hashlib
import hmac
import random

import pytest

from sfstream.rtmp import handshake

# ---------------------------------------------------------------------------
# helpers: the digest scheme written out independently of the module
# ---------------------------------------------------------------------------

KEY_TAIL = bytes.fromhex("F0EEC24A8068BEE82E00D0D1029E7E576EEC5D2D29806FAB93B8E636CFEB31AE")
FP_KEY = b"Genuine Adobe Flash Player 001"  # 30 bytes: signs C1
FMS_KEY = b"Genuine Adobe Flash Media Server 001"  # 36 bytes: signs S1
FMS_FULL_KEY = FMS_KEY + KEY_TAIL  # 68 bytes: derives the S2 key


def hmac256(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def offset_for(packet: bytes, base: int) -> int:
    # scheme base 8: digest at sum(bytes 8..11) % 728 + 12; base 772: % 728 + 776
    return sum(packet[base : base + 4]) % 728 + base + 4


def sign(packet: bytes, base: int, key: bytes) -> bytes:
    """Place the HMAC of (packet minus its 32 digest bytes) at the scheme's offset."""
    off = offset_for(packet, base)
    digest = hmac256(key, packet[:off] + packet[off + 32 :])
    return packet[:off] + digest + packet[off + 32 :]


def digest_at(packet: bytes, base: int) -> bytes:
    off = offset_for(packet, base)
    return packet[off : off + 32]


def verifies(packet: bytes, base: int, key: bytes) -> bool:
    off = offset_for(packet, base)
    return packet[off : off + 32] == hmac256(key, packet[:off] + packet[off + 32 :])


def random_c1(seed: int, version: bytes) -> bytes:
    rng = random.Random(seed)
    return bytes(4) + version + rng.randbytes(1528)


def split_response(resp: bytes) -> tuple[int, bytes, bytes]:
    assert len(resp) == 1 + 1536 + 1536
    return resp[0], resp[1:1537], resp[1537:]


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------


def test_published_keys():
    assert handshake.CLIENT_KEY == FP_KEY + KEY_TAIL
    assert handshake.SERVER_KEY == FMS_FULL_KEY
    assert len(handshake.CLIENT_KEY) == 62 and len(handshake.SERVER_KEY) == 68


def test_simple_handshake_echoes_c1():  # 5.2.2-5.2.4: S0 = 3; S2 echoes C1
    c1 = random_c1(1, bytes(4))  # zeros at bytes 4..7: no digest
    rnd = bytes(range(256)) * 12
    s0, s1, s2 = split_response(handshake.server_response(c1, rnd))
    assert s0 == 3
    assert s2 == c1
    assert s1[4:8] == bytes(4)  # 5.2.3: zero field
    assert s1[8:] == rnd[8:1536]  # random data
    assert handshake.find_digest(s1, FMS_KEY) is None


def test_simple_c1_with_nonzero_version_and_no_digest_gets_simple_answer():
    c1 = random_c1(2, bytes.fromhex("80000702"))
    _, _, s2 = split_response(handshake.server_response(c1))
    assert s2 == c1


@pytest.mark.parametrize("digest", [False, True])
def test_client_hello_layout(digest):
    hello = handshake.client_hello(digest)
    assert len(hello) == 1537 and hello[0] == 3
    c1 = hello[1:]
    if digest:
        assert c1[4:8] == bytes.fromhex("80000702")  # a non-zero version marks a digest C1
        assert verifies(c1, 8, FP_KEY)
    else:
        assert c1[4:8] == bytes(4)
        assert not verifies(c1, 8, FP_KEY) and not verifies(c1, 772, FP_KEY)


def test_digest_handshake_scheme_8():
    c1 = handshake.client_hello(True)[1:]
    client_digest = digest_at(c1, 8)
    assert handshake.find_digest(c1, FP_KEY) == (8, client_digest)
    s0, s1, s2 = split_response(handshake.server_response(c1))
    assert s0 == 3
    assert s1[4:8] != bytes(4)  # server version: non-zero in a digest S1
    # S1 carries a digest signed with the 36-byte FMS key, at the client's scheme
    assert verifies(s1, 8, FMS_KEY)
    assert handshake.find_digest(s1, FMS_KEY) == (8, digest_at(s1, 8))
    # S2: the last 32 bytes sign the rest with HMAC(full FMS key, client digest)
    s2_key = hmac256(FMS_FULL_KEY, client_digest)
    assert s2[-32:] == hmac256(s2_key, s2[:-32])
    assert s2 != c1


def test_digest_handshake_scheme_772_built_by_hand():
    c1 = sign(random_c1(3, bytes.fromhex("0A000C02")), 772, FP_KEY)
    assert not verifies(c1, 8, FP_KEY)
    client_digest = digest_at(c1, 772)
    assert handshake.find_digest(c1, FP_KEY) == (772, client_digest)
    rnd = random.Random(4).randbytes(3072)
    s0, s1, s2 = split_response(handshake.server_response(c1, rnd))
    assert s0 == 3
    assert verifies(s1, 772, FMS_KEY) and not verifies(s1, 8, FMS_KEY)
    assert handshake.find_digest(s1, FMS_KEY) == (772, digest_at(s1, 772))
    assert s2[:-32] == rnd[1536:3072][:-32]
    assert s2[-32:] == hmac256(hmac256(FMS_FULL_KEY, client_digest), s2[:-32])


@pytest.mark.parametrize("base", [8, 772])
def test_digest_at_extreme_offsets(base):
    # offset bytes summing to 0 and to 727 (mod 728): the digest's first and last positions
    for fill, rel in ((bytes(4), 0), (bytes([255, 255, 217, 0]), 727)):
        c1 = bytearray(random_c1(5, bytes.fromhex("80000702")))
        c1[base : base + 4] = fill
        assert offset_for(bytes(c1), base) == base + 4 + rel
        c1 = sign(bytes(c1), base, FP_KEY)
        found = handshake.find_digest(c1, FP_KEY)
        assert found == (base, digest_at(c1, base))
        _, _, s2 = split_response(handshake.server_response(c1))
        assert s2[-32:] == hmac256(hmac256(FMS_FULL_KEY, found[1]), s2[:-32])


@pytest.mark.parametrize("base", [8, 772])
def test_corrupted_digest_gets_the_simple_answer(base):
    c1 = bytearray(sign(random_c1(6, bytes.fromhex("80000702")), base, FP_KEY))
    c1[offset_for(bytes(c1), base) + 5] ^= 0x01  # one bit of the digest
    c1 = bytes(c1)
    assert handshake.find_digest(c1, FP_KEY) is None
    _, s1, s2 = split_response(handshake.server_response(c1))
    assert s2 == c1
    assert s1[4:8] == bytes(4)


def test_digest_signed_with_the_wrong_key_gets_the_simple_answer():
    c1 = sign(random_c1(7, bytes.fromhex("80000702")), 8, FMS_KEY)
    _, _, s2 = split_response(handshake.server_response(c1))
    assert s2 == c1


def test_compute_digest_and_offset_match_the_scheme():
    c1 = random_c1(8, bytes(4))
    for base in (8, 772):
        off = handshake.digest_offset(c1, base)
        assert off == offset_for(c1, base)
        assert handshake.compute_digest(c1, off, FP_KEY) == hmac256(FP_KEY, c1[:off] + c1[off + 32 :])


def test_c2_is_an_echo_of_s1():
    s1 = random.Random(9).randbytes(1536)
    assert handshake.client_ack(s1) == s1


@pytest.mark.parametrize("size", [0, 1535, 1537])
def test_server_response_needs_a_whole_c1(size):
    with pytest.raises(ValueError):
        handshake.server_response(bytes(size))
