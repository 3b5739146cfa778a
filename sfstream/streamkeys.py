"""Stream keys at rest, and playback tokens for private streams.

A stream key is a bearer secret (whoever holds it can broadcast as its owner), so the
database never holds it in plaintext: it is stored AES-GCM encrypted (the owner can read
it again in the API) plus an HMAC-SHA256 of it, which is what an RTMP publish looks up
(an index on ciphertext is impossible: AES-GCM is randomised). Both keys, and the key
that signs playback tokens, are derived from SFSTREAM_SECRET_KEY with HKDF, each with its
own label, so no key serves two purposes. Changing the secret key makes existing stream
keys unreadable: their owners get new ones (GET /api/stream/key does it).
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_PREFIX = "live_"
NONCE_BYTES = 12
PLAYBACK_AUDIENCE = "sfstream-playback"


def derive(secret: str, label: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label.encode()).derive(secret.encode())


class UnreadableKey(Exception):
    """The ciphertext does not open with our key (the secret key changed, or the row was altered)."""


class StreamKeys:
    def __init__(self, secret: str) -> None:
        self._aead = AESGCM(derive(secret, "sfstream stream-key encryption v1"))
        self._mac_key = derive(secret, "sfstream stream-key lookup v1")

    @staticmethod
    def generate() -> str:
        # 192 random bits; the prefix tells a leaked string for what it is (secret scanners).
        return KEY_PREFIX + secrets.token_urlsafe(24)

    def lookup_hash(self, key: str) -> str:
        return hmac.new(self._mac_key, key.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    def seal(self, key: str, user_id: int) -> bytes:
        # The user id is associated data: a ciphertext copied to another user's row does not open.
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, key.encode(), _aad(user_id))

    def open(self, sealed: bytes, user_id: int) -> str:
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _aad(user_id)).decode()
        except (InvalidTag, ValueError) as exc:
            raise UnreadableKey(str(exc) or "authentication failed") from None


def _aad(user_id: int) -> bytes:
    return f"sfstream stream key of user {user_id}".encode()


@dataclass(frozen=True, slots=True)
class PlaybackGrant:
    stream_id: int
    name: str
    expires_at: float


class InvalidPlaybackToken(Exception):
    pass


class PlaybackTokens:
    """Signed, expiring permission to watch one private broadcast (HS256 JWT)."""

    def __init__(self, secret: str, ttl: float) -> None:
        self._key = derive(secret, "sfstream playback tokens v1")
        self.ttl = ttl

    def issue(self, stream_id: int, name: str, *, now: float | None = None) -> tuple[str, float]:
        now = time.time() if now is None else now
        exp = int(now + self.ttl)
        token = jwt.encode({"aud": PLAYBACK_AUDIENCE, "sub": str(stream_id), "name": name, "iat": int(now), "exp": exp},
                           self._key, algorithm="HS256")
        return token, float(exp)

    def verify(self, token: str) -> PlaybackGrant:
        try:
            claims = jwt.decode(token, self._key, algorithms=["HS256"], audience=PLAYBACK_AUDIENCE,
                                options={"require": ["exp", "sub", "aud"]})
            return PlaybackGrant(int(claims["sub"]), str(claims["name"]), float(claims["exp"]))
        except (jwt.PyJWTError, KeyError, ValueError, TypeError) as exc:
            raise InvalidPlaybackToken(str(exc)) from None
