"""`facegate` command: serve, migrate, keys, events."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from app.core.config import REPO_ROOT, get_settings

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.orm import Session


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    config = Config(str(REPO_ROOT / "migrations" / "alembic.ini"))
    config.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(database_url: str | None = None, wait_s: float = 60.0) -> None:
    """Wait for the database, then `alembic upgrade head` (the prestart step)."""
    from alembic import command
    from sqlalchemy.exc import OperationalError

    from app.core.config import Settings
    from app.store.db import make_engine, ping

    settings = get_settings() if database_url is None else Settings(DATABASE_URL=database_url)
    engine = make_engine(settings)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            ping(engine)
            break
        except OperationalError as exc:
            if time.monotonic() > deadline:
                url = engine.url.render_as_string(hide_password=True)
                raise SystemExit(f"database at {url} unreachable for {wait_s:.0f}s") from exc
            time.sleep(1.0)
    engine.dispose()
    config = alembic_config(settings.DATABASE_URL)
    config.attributes["skip_logging"] = database_url is not None
    command.upgrade(config, "head")


def _session() -> Session:
    from app.store.db import make_engine, make_session_factory

    return make_session_factory(make_engine(get_settings()))()


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
    create.add_argument("--scope", choices=["door", "admin"], required=True)
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
        from sqlalchemy import select

        from app.store import crud
        from app.store.models import ApiKey

        with _session() as session:
            if args.keys_command == "create":
                expires = crud.utcnow() + timedelta(days=args.expires_in_days) if args.expires_in_days else None
                key, row = crud.create_api_key(session, args.name, args.scope, expires)
                session.commit()
                print(json.dumps({"id": row.id, "name": row.name, "scope": row.scope, "key": key}))
                print("store this key now: it is not shown again", file=sys.stderr)
            elif args.keys_command == "list":
                for row in session.execute(select(ApiKey).order_by(ApiKey.id)).scalars():
                    print(
                        json.dumps(
                            {
                                "id": row.id,
                                "name": row.name,
                                "scope": row.scope,
                                "prefix": row.prefix,
                                "revoked": row.revoked_at is not None,
                                "expires_at": str(row.expires_at),
                            }
                        )
                    )
            else:
                revoked = session.get(ApiKey, args.key_id)
                if revoked is None:
                    raise SystemExit(f"no key with id {args.key_id}")
                revoked.revoked_at = crud.utcnow()
                session.commit()
                print(json.dumps({"id": revoked.id, "revoked": True}))
    elif args.command == "events":
        from app.store import crud

        settings = get_settings()
        with _session() as session:
            gone = crud.purge_events(session, crud.utcnow() - timedelta(days=settings.EVENT_RETENTION_DAYS))
            tombstones = crud.purge_tombstones(session, crud.utcnow() - timedelta(days=1))
            session.commit()
        print(json.dumps({"events_deleted": gone, "tombstones_deleted": tombstones}))


if __name__ == "__main__":
    main(sys.argv[1:])
