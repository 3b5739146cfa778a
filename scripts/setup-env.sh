# Sourced by run.sh and test.sh: make sure the machine has what sfstream needs.
# Debian packages come from apt (with sudo when not root), Python packages go
# into ./.venv, so nothing is installed into the system Python.

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
_apt_updated=""

apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "sfstream: please install: $* (no apt-get on this machine)" >&2
        return 1
    fi
    if [ -z "$_apt_updated" ]; then
        $SUDO apt-get update -qq
        _apt_updated=1
    fi
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_venv() {
    # $1: pip extras, e.g. "[test]"
    if [ ! -x .venv/bin/python ]; then
        if ! python3 -m venv .venv >/dev/null 2>&1; then
            rm -rf .venv
            apt_install python3-venv
            python3 -m venv .venv
        fi
    fi
    local stamp=".venv/.installed$1"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        .venv/bin/python -m pip install -q --upgrade pip
        .venv/bin/python -m pip install -q -e ".$1"
        touch "$stamp"
    fi
}

ensure_npm_ci() {
    # $1: a directory with package.json + package-lock.json. Installs exactly the lock file
    # (npm ci) when node_modules is missing or older than the lock file.
    local stamp="$1/node_modules/.installed"
    if [ ! -f "$stamp" ] || [ "$1/package-lock.json" -nt "$stamp" ]; then
        (cd "$1" && npm ci --no-audit --no-fund)
        touch "$stamp"
    fi
}

port_open() {
    # $1 host, $2 port: does something accept TCP connections there? (bash's /dev/tcp, no tools needed)
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

wait_port() {
    # $1 host, $2 port: up to 10 s for a just-started daemon to listen.
    local i
    for i in $(seq 50); do
        port_open "$1" "$2" && return 0
        sleep 0.2
    done
    return 1
}

ensure_postgres() {
    # The store tests run against PostgreSQL too (tests/db.py). Start the machine's own cluster
    # if it is installed but down; never install it (without it those tests skip, or fail on CI).
    if [ -n "${SFSTREAM_TEST_DATABASE_URL:-}" ] || port_open 127.0.0.1 5432; then return 0; fi
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ ! -d /etc/postgresql ]; then return 0; fi
    local version
    version="$(ls /etc/postgresql | sort -V | tail -n 1)"
    [ -n "$version" ] || return 0
    echo "sfstream: starting PostgreSQL $version" >&2
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start \
        || echo "sfstream: could not start PostgreSQL $version" >&2
    wait_port 127.0.0.1 5432 || echo "sfstream: PostgreSQL does not answer on 127.0.0.1:5432" >&2
}

ensure_redis() {
    # Same for Redis: an unpersisted throwaway server on localhost, only if redis-server exists.
    if port_open 127.0.0.1 6379 || ! command -v redis-server >/dev/null 2>&1; then return 0; fi
    echo "sfstream: starting redis-server" >&2
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no >/dev/null \
        || echo "sfstream: could not start redis-server" >&2
    wait_port 127.0.0.1 6379 || echo "sfstream: Redis does not answer on 127.0.0.1:6379" >&2
}
