"""Command line: `sfstream serve | migrate | user ...`. Argument parsing only; the work is in app.py."""
from __future__ import annotations

import argparse
import asyncio
import getpass
import sys

from . import __version__
from . import logs
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
    user = sub.add_parser("user", help="manage accounts (e.g. create an administrator)")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    create = user_sub.add_parser("create", help="create an account; the password is prompted for or read from stdin")
    create.add_argument("--username", required=True)
    create.add_argument("--email", required=True)
    create.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of stdin (for scripts) instead of prompting")
    create.add_argument("--admin", action="store_true", help="make the account an administrator")
    Settings.add_arguments(create)
    set_admin = user_sub.add_parser("set-admin", help="make an existing account an administrator")
    set_admin.add_argument("name", metavar="USERNAME")
    set_admin.add_argument("--revoke", action="store_true", help="take the administrator role away instead")
    Settings.add_arguments(set_admin)
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


class CommandError(Exception):
    """A user command failed for a reason the user can fix; the message says which (exit 1)."""


def _read_password(from_stdin: bool) -> str:
    # The password never appears in argv (visible in ps) or in any output.
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass("Password: ")
    if getpass.getpass("Password (again): ") != password:
        raise CommandError("the passwords differ")
    return password


async def _user_create(settings: Settings, args: argparse.Namespace, password: str) -> int:
    from .api.schemas import RegisterSchema
    from .api.security import hash_password
    from .store import Conflict, open_store

    # The rules of POST /api/auth/register, so the CLI cannot create an account the API would refuse.
    errors = RegisterSchema().validate({"username": args.username, "email": args.email, "password": password})
    if errors:
        raise CommandError("; ".join(f"{field}: {' '.join(map(str, msgs))}" for field, msgs in sorted(errors.items())))
    password_hash = await hash_password(password, settings.bcrypt_rounds)
    store = await open_store(settings.database_url, data_dir=settings.data_dir, pool_min=1, pool_max=1)
    try:
        user = await store.create_user(args.username, args.email.lower(), password_hash, is_admin=args.admin)
    except Conflict as exc:
        raise CommandError(f"this {exc.field} is already registered") from None
    finally:
        await store.close()
    role = "an administrator" if user.is_admin else "a user"
    print(f"sfstream: created {user.username} (id {user.id}), {role}")
    return 0


async def _user_set_admin(settings: Settings, args: argparse.Namespace) -> int:
    from .store import open_store

    store = await open_store(settings.database_url, data_dir=settings.data_dir, pool_min=1, pool_max=1)
    try:
        user = await store.get_user_by_username(args.name)
        if user is None:
            raise CommandError(f"no user {args.name!r}")
        user = await store.set_admin(user.id, not args.revoke)
    finally:
        await store.close()
    print(f"sfstream: {user.username} is {'an administrator' if user.is_admin else 'no longer an administrator'}")
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
    logs.configure(settings.log_level, settings.log_format)
    if args.command == "migrate":
        try:
            return _run(_migrate(settings))
        except (OSError, ValueError) as exc:
            print(f"sfstream: cannot migrate: {exc}", file=sys.stderr)
            return 1
    if args.command == "user":
        try:
            if args.user_command == "create":
                return _run(_user_create(settings, args, _read_password(args.password_stdin)))
            return _run(_user_set_admin(settings, args))
        except CommandError as exc:
            print(f"sfstream: {exc}", file=sys.stderr)
            return 1
        except (OSError, ValueError) as exc:  # the database does not answer, a bad URL
            print(f"sfstream: cannot {args.user_command}: {exc}", file=sys.stderr)
            return 1
        except (KeyboardInterrupt, EOFError):  # Ctrl-C or Ctrl-D at the password prompt
            print(file=sys.stderr)
            return 130
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
