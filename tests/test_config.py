"""Settings: defaults, environment, flags, validation."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sfstream.config import ConfigError, Settings, parse_stream_keys


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    Settings.add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_match_the_spec():
    s = Settings.load(parse([]), env={})
    assert (s.host, s.rtmp_port, s.http_port, s.data_dir) == ("0.0.0.0", 1935, 8080, Path("./data"))
    assert s.stream_keys == {}


def test_flag_beats_env_beats_default():
    env = {"SFSTREAM_RTMP_PORT": "1940", "SFSTREAM_HTTP_PORT": "9000"}
    s = Settings.load(parse(["--rtmp-port", "1999"]), env=env)
    assert s.rtmp_port == 1999 and s.http_port == 9000


def test_stream_keys_from_flags_and_env():
    s = Settings.load(parse(["--stream-key", "alice=alicekey1", "--stream-key", "bob=bobkey123"]), env={})
    assert s.stream_keys == {"alicekey1": "alice", "bobkey123": "bob"}
    s = Settings.load(parse([]), env={"SFSTREAM_STREAM_KEYS": "alice=alicekey1, bob=bobkey123"})
    assert s.stream_keys == {"alicekey1": "alice", "bobkey123": "bob"}


@pytest.mark.parametrize(
    "items, message",
    [
        (["alice"], "expected NAME=KEY"),
        (["al/ice=alicekey1"], "invalid stream name"),
        (["alice=k"], "must be 8-256 characters"),
        (["alice=samekey123", "bob=samekey123"], "same key"),
    ],
)
def test_stream_key_errors(items, message):
    with pytest.raises(ConfigError, match=message):
        parse_stream_keys(items)


@pytest.mark.parametrize(
    "field, value",
    [
        ("rtmp_port", -1), ("http_port", 65536), ("rtmp_max_connections", 0), ("rtmp_max_message_size", 0),
        ("rtmp_max_chunk_size", 64), ("rtmp_handshake_timeout", 0), ("rtmp_idle_timeout", -1),
        ("hls_segment_duration", 0), ("hls_window", 0), ("log_level", "loud"), ("rtmp_app", "a/b"),
    ],
)
def test_invalid_values_name_the_setting(field, value):
    with pytest.raises(ConfigError, match=field):
        Settings(**{field: value})


def test_part_longer_than_segment_is_refused():
    with pytest.raises(ConfigError, match="hls_part_duration"):
        Settings(hls_segment_duration=1.0, hls_part_duration=2.0)


def test_readme_configuration_reference_is_current():
    """The README's table is generated (`sfstream config-reference`); regenerate it when settings change."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    table = readme[readme.index(start) + len(start) : readme.index(end)]
    assert table == Settings.reference_markdown(), "run: sfstream config-reference, paste into README.md"
