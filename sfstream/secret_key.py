"""The server's secret: signs access tokens, and (later) encrypts stream keys at rest.

Production mode demands a strong SFSTREAM_SECRET_KEY (several instances must share
it). A self-hoster gets one generated once and kept in DATA_DIR/secret-key, so
tokens stay valid across restarts without any setup.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from .config import ConfigError, Settings

MIN_LENGTH = 32
SECRET_FILE = "secret-key"
# Values people paste from examples; refused in production whatever their length.
KNOWN_WEAK = {"changeme", "secret", "change-me", "please-change-me", "your-secret-key"}


def load_secret_key(settings: Settings) -> str:
    key = settings.secret_key
    if key:
        if len(key) < MIN_LENGTH or key.lower() in KNOWN_WEAK or len(set(key)) < 8:
            raise ConfigError(f"secret_key: use at least {MIN_LENGTH} random characters (e.g. `openssl rand -hex 32`)")
        return key
    if settings.production:
        raise ConfigError("secret_key: production mode needs SFSTREAM_SECRET_KEY (at least 32 random characters)")
    path = Path(settings.data_dir) / SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    generated = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(generated + "\n")
    return generated
