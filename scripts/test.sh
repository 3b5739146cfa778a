#!/usr/bin/env bash
# Run the test suite (README: "Test"). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup-env.sh
# Real encoders and parsers: the end-to-end tests publish with the ffmpeg CLI and read with ffprobe.
if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
    apt_install ffmpeg
fi
# A real browser (tests/test_browser.py): Debian's Chromium, driven from Node.js by playwright-core
# (tests/browser; it never downloads browsers), plays our HLS with hls.js.
if [ ! -x /usr/bin/chromium ]; then
    apt_install chromium
fi
_node_pkgs=""
command -v node >/dev/null 2>&1 || _node_pkgs="nodejs"
command -v npm >/dev/null 2>&1 || _node_pkgs="$_node_pkgs npm"
if [ -n "$_node_pkgs" ]; then
    apt_install $_node_pkgs
fi
ensure_npm_ci tests/browser
ensure_venv "[test]"
# Databases for the store tests (both backends) and the Redis bus; started if installed but down.
ensure_postgres
ensure_redis
exec .venv/bin/python -m pytest "$@"
