"""Command line: `sfstream serve`. Argument parsing only; the work is in app.py."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from . import __version__
from .config import ConfigError, Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfstream", description="Live streaming server: RTMP in, LL-HLS out.")
    parser.add_argument("--version", action="version", version=f"sfstream {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the RTMP listener and the HTTP server in one process")
    Settings.add_arguments(serve)
    migrate = sub.add_parser("migrate", help="apply pending database migrations (serve also does it at start-up)")
    Settings.add_arguments(migrate)
    sub.add_parser("config-reference", help="print every setting (flag, env var, default) as a Markdown table")
    return parser


async def _migrate(settings: Settings) -> int:
    from .store import open_store

    # Opening the store applies what is pending, in order, once (a lock guards concurrent starts).
    store = await open_store(settings.database_url, data_dir=settings.data_dir,
                             pool_min=1, pool_max=max(1, settings.db_pool_min))
    await store.close()
    kind = "PostgreSQL" if settings.database_url.startswith(("postgres://", "postgresql://")) else "SQLite"
    print(f"sfstream: {kind} database is up to date")
    return 0


def _run(coro) -> int:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (not on Windows); asyncio's loop works too
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "config-reference":
        print(Settings.reference_markdown(), end="")
        return 0
    try:
        settings = Settings.load(args)
    except ConfigError as exc:
        print(f"sfstream: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "migrate":
        try:
            return _run(_migrate(settings))
        except (OSError, ValueError) as exc:
            print(f"sfstream: cannot migrate: {exc}", file=sys.stderr)
            return 1
    if args.command == "serve":
        from .app import serve

        try:
            return _run(serve(settings))
        except ConfigError as exc:  # found while starting, e.g. production mode without a secret key
            print(f"sfstream: configuration error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:  # e.g. the port is taken, the database or Redis does not answer
            print(f"sfstream: cannot start: {exc}", file=sys.stderr)
            return 1
    return 2
