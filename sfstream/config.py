"""One settings object, from defaults, `SFSTREAM_*` environment variables and CLI flags.

Each setting is a dataclass field whose metadata carries its help text; the
CLI flags and env var names are derived from the field name, so the argument
parser, the environment and (later) the README's configuration reference
cannot drift apart. Precedence: CLI flag > environment > default.
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .transcode.ladder import parse_ladder

ENV_PREFIX = "SFSTREAM_"
NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
KEY_RE = re.compile(r"[A-Za-z0-9_.\-~]{8,256}")


class ConfigError(ValueError):
    """A setting has an invalid value; the message names the setting."""


def _setting(default, help: str, *, env: str | None = None, flag: str | None = None, secret: bool = False):
    # Secrets stay out of repr(settings), so logging the settings can never leak them.
    return field(default=default, repr=not secret, metadata={"help": help, "env": env, "flag": flag})


def parse_stream_keys(items: list[str]) -> dict[str, str]:
    """NAME=KEY items -> {key: name}. Keys must be unguessable-looking and unique."""
    keys: dict[str, str] = {}
    for item in items:
        item = item.strip()
        if not item:
            continue
        name, sep, key = item.partition("=")
        if not sep:
            raise ConfigError("stream_key: expected NAME=KEY")
        if not NAME_RE.fullmatch(name):
            raise ConfigError(f"stream_key: invalid stream name {name!r} (letters, digits, _ . - ; up to 64)")
        if not KEY_RE.fullmatch(key):
            # Never echo the key itself: it is a secret even when it is invalid.
            raise ConfigError(
                f"stream_key: the key for {name!r} must be 8-256 characters of letters, digits, _ . - ~"
            )
        if key in keys:
            raise ConfigError(f"stream_key: the same key is given for {keys[key]!r} and {name!r}")
        keys[key] = name
    return keys


@dataclass(frozen=True)
class Settings:
    host: str = _setting("0.0.0.0", "Address the RTMP and HTTP listeners bind to.")
    rtmp_port: int = _setting(1935, "RTMP listen port (0 picks a free port).")
    http_port: int = _setting(8080, "HTTP listen port for HLS, API and websockets (0 picks a free port).")
    data_dir: Path = _setting(Path("./data"), "Directory for the database, avatars and thumbnails.")
    stream_keys: dict = _setting(
        None,
        "Static stream key: NAME=KEY, repeatable. NAME is the public stream name (/hls/NAME/index.m3u8), "
        "KEY the secret the encoder sends. Env: comma-separated.",
        env="SFSTREAM_STREAM_KEYS",
        flag="--stream-key",
        secret=True,
    )
    public_url: str = _setting(
        "", "Base URL printed for viewers and encoders (e.g. https://live.example.com); default from host/ports."
    )
    log_level: str = _setting("info", "Logging level: debug, info, warning, error.")
    log_format: str = _setting("text", "Log lines as text, or json (one JSON object per line, for log shippers).")
    production: bool = _setting(
        False,
        "Production mode: refuse to start without a strong secret key (SFSTREAM_SECRET_KEY), mark cookies Secure.",
    )
    secret_key: str = _setting(
        "",
        "Secret for signing tokens and encrypting stream keys (at least 32 characters; prefer the env var). "
        "Empty outside production mode: generated once and kept in DATA_DIR/secret-key.",
        secret=True,
    )
    database_url: str = _setting(
        "",
        "Database: empty for SQLite in DATA_DIR/sfstream.db, or postgresql://USER:PASSWORD@HOST:PORT/DB.",
        secret=True,  # it may hold a password
    )
    db_pool_min: int = _setting(1, "PostgreSQL connection pool: connections kept open.")
    db_pool_max: int = _setting(10, "PostgreSQL connection pool: most connections at once.")
    redis_url: str = _setting(
        "",
        "Redis for state shared by several instances (rate limits, token revocation): redis://HOST:6379/0.",
        secret=True,
    )
    redis_prefix: str = _setting("sfstream:", "Prefix of every Redis key (deployments sharing one Redis differ here).")
    bcrypt_rounds: int = _setting(12, "bcrypt cost factor for password hashes (4-31; each +1 doubles the work).")
    access_token_ttl: float = _setting(900.0, "Seconds an access token (JWT) is valid.")
    refresh_token_ttl: float = _setting(30 * 86400.0, "Seconds a refresh token is valid (each use rotates it).")
    trusted_proxies: str = _setting(
        "",
        "Comma-separated addresses or networks of reverse proxies whose X-Forwarded-For/-Proto are believed "
        "(e.g. 127.0.0.1,10.0.0.0/8). Empty: the peer address is the client.",
    )
    login_attempts: int = _setting(5, "Failed logins allowed per client address and per account in a window.")
    login_window: float = _setting(60.0, "Seconds of that window (then 429 with Retry-After).")
    api_rate_limit: int = _setting(600, "API requests allowed per client address per minute (then 429).")
    avatar_max_bytes: int = _setting(5 * 1024 * 1024, "Largest avatar upload in bytes.")
    avatar_max_pixels: int = _setting(16_000_000, "Largest avatar image in pixels (width x height) before decoding.")
    rtmp_app: str = _setting("live", "RTMP application name in the publish URL (rtmp://HOST/APP/KEY).")
    rtmp_max_connections: int = _setting(1000, "Concurrent RTMP connections accepted; more are refused.")
    rtmp_max_message_size: int = _setting(
        8 * 1024 * 1024, "Largest RTMP message (e.g. one video frame) in bytes; larger closes the connection."
    )
    rtmp_max_chunk_size: int = _setting(65536, "Largest chunk size a publisher may set, in bytes.")
    rtmp_handshake_timeout: float = _setting(10.0, "Seconds a client has to complete the RTMP handshake.")
    rtmp_idle_timeout: float = _setting(30.0, "Seconds without data after which an RTMP connection is closed.")
    hls_segment_duration: float = _setting(
        2.0, "Target segment duration in seconds; segments are cut at the first keyframe after it."
    )
    hls_part_duration: float = _setting(0.2, "Target partial-segment (LL-HLS part) duration in seconds.")
    hls_window: int = _setting(
        10, "Segments listed in a live media playlist (more than 6 lets delta updates skip some)."
    )
    hls_linger: float = _setting(60.0, "Seconds an ended stream's playlists stay available.")
    hls_reconnect_grace: float = _setting(
        10.0,
        "Seconds a publisher that dropped (not one that stopped) may reconnect with the same key and "
        "continue the same playlists after a discontinuity; then the playlist ends. 0 ends at once.",
    )
    ladder: str = _setting(
        "1080p,720p,480p",
        "Transcoding ladder: rungs encoded below the source (which is always offered untouched), e.g. "
        "720p,480p or 720p@2500k,360p; rungs as tall as the source or taller are skipped. none: source only.",
    )
    transcode_preset: str = _setting("veryfast", "libx264 preset of the ladder (ultrafast ... medium).")
    transcode_threads: int = _setting(0, "Threads per rung encoder (0: x264 chooses).")
    transcode_max_lag: float = _setting(
        1.5, "Seconds a rung's frames may lag real time before the tallest rung is shed (restored when calm)."
    )
    thumbnail_interval: float = _setting(
        10.0, "Seconds between live thumbnails (JPEG at /thumbnails/NAME.jpg); 0 turns them off."
    )
    public_rtmp_url: str = _setting(
        "", "RTMP server URL given to streamers (e.g. rtmp://live.example.com/live); default from the "
        "request's host and rtmp_port."
    )
    viewer_timeout: float = _setting(
        10.0, "Seconds an HLS viewer session still counts after its last playlist request."
    )
    stats_interval: float = _setting(
        10.0, "Seconds between samples of a live stream's viewer count (statistics, viewers_count)."
    )
    playback_token_ttl: float = _setting(
        6 * 3600.0, "Seconds a playback token for a private stream is valid."
    )
    ws_max_connections: int = _setting(
        20000, "Viewer-count websockets accepted by this process; more get 503."
    )
    ws_max_per_client: int = _setting(
        20, "Viewer-count websockets accepted from one client address; more get 429."
    )

    def __post_init__(self) -> None:
        if self.stream_keys is None:
            object.__setattr__(self, "stream_keys", {})
        for name in ("rtmp_port", "http_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(f"{name}: must be between 0 and 65535")
        positive = (
            "rtmp_max_connections", "rtmp_max_message_size", "rtmp_max_chunk_size", "rtmp_handshake_timeout",
            "rtmp_idle_timeout", "hls_segment_duration", "hls_part_duration", "hls_window",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be greater than 0")
        if not 4 <= self.bcrypt_rounds <= 31:
            raise ConfigError("bcrypt_rounds: must be between 4 and 31")
        for name in ("db_pool_min", "db_pool_max", "access_token_ttl", "refresh_token_ttl", "login_attempts",
                     "login_window", "api_rate_limit", "avatar_max_bytes", "avatar_max_pixels", "viewer_timeout",
                     "stats_interval", "playback_token_ttl", "ws_max_connections", "ws_max_per_client"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be greater than 0")
        if self.db_pool_min > self.db_pool_max:
            raise ConfigError("db_pool_min: must not exceed db_pool_max")
        if self.database_url and not self.database_url.startswith(("postgresql://", "postgres://", "sqlite://")):
            raise ConfigError("database_url: expected postgresql://... or sqlite:///PATH")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("redis_url: expected redis://HOST:PORT/DB")
        try:
            self.proxy_networks()
        except ValueError as exc:
            raise ConfigError(f"trusted_proxies: {exc}") from None
        if self.rtmp_max_chunk_size < 128:
            raise ConfigError("rtmp_max_chunk_size: must be at least 128 (the RTMP default chunk size)")
        if self.hls_reconnect_grace < 0 or self.hls_linger < 0:
            raise ConfigError("hls_reconnect_grace, hls_linger: must not be negative")
        if self.hls_part_duration > self.hls_segment_duration:
            raise ConfigError("hls_part_duration: must not exceed hls_segment_duration")
        if self.log_format not in ("text", "json"):
            raise ConfigError("log_format: text or json")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("log_level: must be one of debug, info, warning, error")
        try:
            parse_ladder(self.ladder)
        except ValueError as exc:
            raise ConfigError(f"ladder: {exc}") from None
        if self.transcode_preset not in X264_PRESETS:
            raise ConfigError(f"transcode_preset: one of {', '.join(X264_PRESETS)}")
        if self.transcode_threads < 0 or self.thumbnail_interval < 0 or not self.transcode_max_lag > 0:
            raise ConfigError("transcode_threads, thumbnail_interval: not negative; transcode_max_lag: > 0")
        if not NAME_RE.fullmatch(self.rtmp_app):
            raise ConfigError("rtmp_app: letters, digits, _ . - only")

    def proxy_networks(self) -> tuple:
        return tuple(
            ipaddress.ip_network(item.strip(), strict=False) for item in self.trusted_proxies.split(",") if item.strip()
        )

    # ------------------------------------------------------------------ sources

    @classmethod
    def fields(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))

    @staticmethod
    def env_name(f: dataclasses.Field) -> str:
        return f.metadata.get("env") or ENV_PREFIX + f.name.upper()

    @staticmethod
    def flag_name(f: dataclasses.Field) -> str:
        return f.metadata.get("flag") or "--" + f.name.replace("_", "-")

    @classmethod
    def reference_markdown(cls) -> str:
        """The README's configuration table (tests/test_config.py keeps the README current)."""
        shown = {"stream_keys": "(none)", "public_url": "(none)", "public_rtmp_url": "(none)", "data_dir": "./data"}
        rows = ["| flag | env | default | meaning |", "| --- | --- | --- | --- |"]
        for f in cls.fields():
            default = shown.get(f.name, f.default)
            rows.append(f"| `{cls.flag_name(f)}` | `{cls.env_name(f)}` | `{default}` | {f.metadata['help']} |")
        return "\n".join(rows) + "\n"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for f in cls.fields():
            kwargs = {"dest": f.name, "default": None, "help": f"{f.metadata['help']} [env {cls.env_name(f)}]"}
            if f.name == "stream_keys":
                parser.add_argument(cls.flag_name(f), action="append", metavar="NAME=KEY", **kwargs)
            else:
                parser.add_argument(cls.flag_name(f), metavar=f.name.split("_")[-1].upper(), **kwargs)

    @classmethod
    def load(cls, args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from CLI args (highest precedence), then env, then defaults."""
        env = os.environ if env is None else env
        values = {}
        for f in cls.fields():
            raw = getattr(args, f.name, None) if args is not None else None
            source = cls.flag_name(f)
            if raw is None and cls.env_name(f) in env:
                raw, source = env[cls.env_name(f)], cls.env_name(f)
                if f.name == "stream_keys":
                    raw = raw.split(",")
            if raw is None:
                continue
            values[f.name] = cls._convert(f, raw, source)
        return cls(**values)

    @staticmethod
    def _convert(f: dataclasses.Field, raw, source: str):
        if f.name == "stream_keys":
            return parse_stream_keys(list(raw))
        kind = type(f.default)
        try:
            if kind is bool:
                return str(raw).lower() in ("1", "true", "yes", "on")
            if kind is Path:
                return Path(raw)
            return kind(raw)
        except ValueError:
            raise ConfigError(f"{f.name}: {source} expects a {kind.__name__}, got {raw!r}") from None


DEFAULT_STREAM_NAME = "live"
DEFAULT_KEY_FILE = "stream-key"


def with_default_stream_key(settings: Settings) -> tuple[Settings, Path | None]:
    """A self-hoster who gave no --stream-key still gets one working key.

    It is generated once, kept in DATA_DIR/stream-key (mode 0600) and published
    as stream "live"; the key itself is never printed or logged, only the file.
    """
    if settings.stream_keys:
        return settings, None
    path = settings.data_dir / DEFAULT_KEY_FILE
    if path.exists():
        key = path.read_text().strip()
    else:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
    keys = parse_stream_keys([f"{DEFAULT_STREAM_NAME}={key}"])
    return dataclasses.replace(settings, stream_keys=keys), path
