#!/bin/sh
# Install sfstream into a fresh virtual environment and check that it starts.
#
#   scripts/install-venv.sh PREFIX [SOURCE_DIR]
#
# The Docker image's install step: the Dockerfile's build stage runs exactly this
# (PREFIX /opt/venv), and tests/test_image.py runs it too, in a fresh directory holding
# what the Dockerfile copies, then starts `sfstream serve` from PREFIX with the image's
# environment. So what the image installs and runs is tested without a Docker engine.
#
# SOURCE_DIR defaults to the checkout this script is in. PYTHON picks the interpreter
# (default python3, 3.11 or newer). pip's own variables apply (PIP_NO_CACHE_DIR, PIP_INDEX_URL, ...).
# Nothing else is installed: PyAV's wheel bundles FFmpeg (libx264 included), so the
# image needs no Debian ffmpeg.
set -eu

if [ "$#" -lt 1 ] || [ "$#" -gt 2 ]; then
    echo "usage: $0 PREFIX [SOURCE_DIR]" >&2
    exit 2
fi
prefix=$1
source_dir=${2:-$(dirname "$0")/..}
python=${PYTHON:-python3}

if [ -e "$prefix/bin/python" ]; then
    echo "install-venv: $prefix already holds a virtual environment; give a new directory" >&2
    exit 1
fi

"$python" -m venv "$prefix"
# A regular (not editable) install: the package is copied into the venv, so the source
# directory can go away afterwards (the image keeps only the venv).
"$prefix/bin/python" -m pip install --quiet --disable-pip-version-check "$source_dir"

# The entry point works and the native parts load (FFmpeg inside PyAV, uvloop, asyncpg, ...).
"$prefix/bin/sfstream" --help >/dev/null
"$prefix/bin/python" -c "import av, asyncpg, bcrypt, cryptography, uvloop, sfstream.app"
echo "install-venv: $("$prefix/bin/sfstream" --version), PyAV $("$prefix/bin/python" -c 'import av; print(av.__version__)') in $prefix"
