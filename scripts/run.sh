#!/usr/bin/env bash
# Run the server (README: "Run"). Extra arguments go to `sfstream serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup-env.sh
ensure_venv ""
exec .venv/bin/sfstream serve "$@"
