"""`facegate` command: serve, migrate, keys, events."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from app.core.config import REPO_ROOT, get_settings

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.orm import Session

    from app.api.schemas import KeyCreate


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    config = Config(str(REPO_ROOT / "migrations" / "alembic.ini"))
    config.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


# A command waiting for its database says so this often (on stderr).
WAIT_LOG_S = 5.0
# `keys` and `events` wait less than `serve` and `migrate`: someone is at the keyboard.
ADMIN_WAIT_S = 10.0


def migrate(database_url: str | None = None, wait_s: float = 60.0, quiet: bool = False) -> None:
    """Wait for the database, then `alembic upgrade head` (the prestart step).

    While waiting it says so every WAIT_LOG_S seconds; it gives up after ``wait_s`` with a
    one-line SystemExit, as it does when the migration itself fails. ``quiet`` keeps Alembic's
    own log lines off stderr (for the commands that print JSON).
    """
    from alembic import command
    from alembic.util.exc import CommandError
    from sqlalchemy.exc import OperationalError, SQLAlchemyError

    from app.core.config import Settings
    from app.store.db import make_engine, ping

    settings = get_settings() if database_url is None else Settings(DATABASE_URL=database_url)
    engine = make_engine(settings)
    url = engine.url.render_as_string(hide_password=True)
    started = time.monotonic()
    deadline, next_log = started + wait_s, started
    while True:
        try:
            ping(engine)
            break
        except OperationalError as exc:
            now = time.monotonic()
            if now > deadline:
                raise SystemExit(f"database at {url} unreachable for {wait_s:.0f}s ({exc.__class__.__name__})") from exc
            if now >= next_log:
                print(
                    f"waiting for the database at {url} ({exc.__class__.__name__}; {now - started:.0f}s so far, "
                    f"giving up after {wait_s:.0f}s)",
                    file=sys.stderr,
                    flush=True,
                )
                next_log = now + WAIT_LOG_S
            time.sleep(min(1.0, wait_s / 4))
    engine.dispose()
    config = alembic_config(settings.DATABASE_URL)
    config.attributes["skip_logging"] = quiet or database_url is not None
    try:
        command.upgrade(config, "head")
    except (CommandError, SQLAlchemyError) as exc:
        first_line = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise SystemExit(f"could not migrate the database at {url}: {first_line}") from exc


def _session() -> Session:
    from app.store.db import make_engine, make_session_factory

    return make_session_factory(make_engine(get_settings()))()


def _key_spec(args: argparse.Namespace) -> KeyCreate:
    """The key as POST /v1/keys would validate it; a one-line exit when it is not valid."""
    from pydantic import ValidationError

    from app.api.schemas import KeyCreate

    try:
        return KeyCreate(name=args.name, scope=args.scope, expires_in_days=args.expires_in_days)
    except ValidationError as exc:
        problems = "; ".join(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}" for e in exc.errors())
        raise SystemExit(f"facegate keys create: {problems}") from exc


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="facegate", description="face recognition for door access")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run migrations, then serve the API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--no-migrate", action="store_true", help="skip `alembic upgrade head`")
    sub.add_parser("migrate", help="wait for the database and apply migrations")
    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key; it is printed once")
    create.add_argument("--name", required=True)
    create.add_argument("--scope", choices=["door", "analysis", "door+analysis", "admin"], required=True)
    create.add_argument("--expires-in-days", type=int, default=None)
    keys.add_parser("list", help="list keys (never the keys themselves)")
    revoke = keys.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id", type=int)
    events = sub.add_parser("events", help="audit events").add_subparsers(dest="events_command", required=True)
    events.add_parser("purge", help="delete events older than EVENT_RETENTION_DAYS")
    args = parser.parse_args(argv)

    if args.command == "migrate":
        migrate()
    elif args.command == "serve":
        import uvicorn

        if not args.no_migrate:
            migrate()
        settings = get_settings()
        uvicorn.run(
            "app.main:app_factory",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=settings.LOG_LEVEL.lower(),
            access_log=False,
        )
    elif args.command == "keys":
        from app.api.schemas import KeyPublic
        from app.core.errors import NotFound
        from app.services import admin
        from app.services.audit import CLI
        from app.store import crud

        spec = _key_spec(args) if args.keys_command == "create" else None
        # Like `serve`: a database never migrated is migrated first, not a traceback.
        migrate(wait_s=ADMIN_WAIT_S, quiet=True)
        with _session() as session:
            if spec is not None:
                key, row = admin.create_key(session, name=spec.name, scope=spec.scope, expires_in_days=spec.expires_in_days, actor=CLI)
                session.commit()
                print(json.dumps({"id": row.id, "name": row.name, "scope": row.scope, "key": key}))
                print("store this key now: it is not shown again", file=sys.stderr)
            elif args.keys_command == "list":
                # The API's shape (GET /v1/keys): JSON nulls, UTC times with their offset.
                for row in crud.list_api_keys(session)[0]:
                    public = KeyPublic.model_validate(row, from_attributes=True).model_dump(mode="json")
                    print(json.dumps({**public, "revoked": row.revoked_at is not None}))
            else:
                try:
                    revoked = admin.revoke_key(session, args.key_id, actor=CLI)
                except NotFound as exc:
                    raise SystemExit(f"no key with id {args.key_id}") from exc
                session.commit()
                print(json.dumps({"id": revoked.id, "revoked": True}))
    elif args.command == "events":
        from app.services import admin

        settings = get_settings()
        migrate(wait_s=ADMIN_WAIT_S, quiet=True)
        with _session() as session:
            gone, tombstones = admin.purge(session, retention_days=settings.EVENT_RETENTION_DAYS)
            session.commit()
        print(json.dumps({"events_deleted": gone, "tombstones_deleted": tombstones}))


if __name__ == "__main__":
    main(sys.argv[1:])
