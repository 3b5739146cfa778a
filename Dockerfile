# sfstream in one container: RTMP on 1935, HTTP (HLS, API, websockets) on 8080, state in /data.
#
#   docker build -t sfstream .
#   docker run -p 1935:1935 -p 8080:8080 -v sfdata:/data sfstream
#
# The install step is scripts/install-venv.sh and the start step is the ENV + CMD of the
# final stage; tests/test_image.py runs both outside Docker (and lints this file with hadolint).

# ---- build: a virtual environment with sfstream and its dependencies (wheels only, no compiler)
FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY sfstream ./sfstream
COPY scripts/install-venv.sh ./scripts/install-venv.sh
RUN sh scripts/install-venv.sh /opt/venv /src

# ---- runtime: the same base image (the venv's python links to it), the venv, nothing else
FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="sfstream" \
      org.opencontainers.image.description="Live-streaming server: RTMP ingest, PyAV transcoding, LL-HLS, REST API" \
      org.opencontainers.image.licenses="MIT"

# A fixed, unprivileged uid/gid (10001) so a bind-mounted data directory can be chowned to it.
RUN groupadd --system --gid 10001 sfstream \
    && useradd --system --no-log-init --uid 10001 --gid sfstream \
        --home-dir /data --shell /usr/sbin/nologin sfstream \
    && mkdir /data \
    && chown sfstream:sfstream /data

# Owned by root: the server cannot modify its own code.
COPY --from=build /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SFSTREAM_DATA_DIR=/data \
    SFSTREAM_HOST=0.0.0.0

WORKDIR /data
USER 10001:10001
# SQLite database, secret key, default stream key, avatars, thumbnails.
VOLUME ["/data"]
# RTMP ingest, HTTP (HLS, REST API, websockets, /healthz, /readyz).
EXPOSE 1935 8080

# slim has no curl: Python's urllib asks /healthz on the port the server listens on.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SFSTREAM_HTTP_PORT', '8080') + '/healthz', timeout=4)"]

# sfstream is PID 1 and that is fine: it installs its own SIGTERM/SIGINT handlers (so
# `docker stop` ends live streams with ENDLIST and exits 0) and starts no child processes
# (PyAV runs FFmpeg in threads), so there are no zombies to reap; `docker run --init` adds tini if wanted.
STOPSIGNAL SIGTERM
CMD ["sfstream", "serve"]
