"""Passwords, access tokens (JWT) and refresh tokens.

- bcrypt is deliberately slow (~0.25 s at cost 12): it runs in a worker thread,
  never on the event loop. bcrypt reads only 72 bytes of a password, so we
  pre-hash longer ones with SHA-256 (base64) rather than silently ignore the rest.
- Access tokens are short-lived HS256 JWTs (iss, aud, exp, iat, jti, sub); a
  revoked one (logout) is remembered in the bus until it would have expired.
- Refresh tokens are random strings; only their SHA-256 is stored. Each use
  rotates them; a second use of the same token means it leaked, and the whole
  family (the login session) is revoked.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass

import bcrypt
import jwt

ISSUER = "sfstream"
AUDIENCE = "sfstream-api"
ALGORITHM = "HS256"


def _prepare(password: str) -> bytes:
    raw = password.encode("utf-8")
    if len(raw) > 72:
        raw = base64.b64encode(hashlib.sha256(raw).digest())
    return raw


async def hash_password(password: str, rounds: int) -> str:
    loop = asyncio.get_running_loop()
    salt = bcrypt.gensalt(rounds)
    hashed = await loop.run_in_executor(None, bcrypt.hashpw, _prepare(password), salt)
    return hashed.decode("ascii")


async def verify_password(password: str, hashed: str) -> bool:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, bcrypt.checkpw, _prepare(password), hashed.encode("ascii"))


# Real hashes of a random password, one per bcrypt cost: verifying against the one at the
# configured cost takes what a real check takes, so "no such user" and "wrong password" cost
# the same time (no user enumeration by timing). Made lazily in a worker thread, once per cost.
_dummy_hashes: dict[int, str] = {}


async def dummy_hash(rounds: int) -> str:
    if rounds not in _dummy_hashes:
        hashed = await hash_password(secrets.token_urlsafe(16), rounds)
        _dummy_hashes.setdefault(rounds, hashed)
    return _dummy_hashes[rounds]


class InvalidToken(Exception):
    pass


@dataclass(frozen=True, slots=True)
class AccessToken:
    token: str
    jti: str
    user_id: int
    expires_at: float  # Unix time


class TokenService:
    def __init__(self, secret: str, ttl: float) -> None:
        self._secret = secret
        self.ttl = ttl

    def issue(self, user_id: int, *, now: float | None = None) -> AccessToken:
        now = time.time() if now is None else now
        jti = uuid.uuid4().hex
        exp = now + self.ttl
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": str(user_id), "iat": int(now), "exp": int(exp), "jti": jti}
        return AccessToken(jwt.encode(claims, self._secret, algorithm=ALGORITHM), jti, user_id, float(int(exp)))

    def verify(self, token: str) -> AccessToken:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],  # never "none", never an algorithm the token chooses
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "jti", "iss", "aud"]},
            )
            return AccessToken(token, str(claims["jti"]), int(claims["sub"]), float(claims["exp"]))
        except (jwt.PyJWTError, ValueError) as exc:
            raise InvalidToken(str(exc)) from None


def new_refresh_token() -> tuple[str, str]:
    """(token for the client, its hash for the database)."""
    token = secrets.token_urlsafe(32)
    return token, hash_refresh_token(token)


def hash_refresh_token(token: str) -> str:
    # A fast hash is right here: the token has 256 random bits, nothing to brute-force.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_family_id() -> str:
    return uuid.uuid4().hex
