"""The ``billfold`` command.

Every failure an operator can cause (a malformed URL, an unreachable database, an unknown
revision, a refused erasure) ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import sys
from typing import Annotated

import sqlalchemy as sa
import typer
from alembic import command
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from rich.console import Console
from sqlalchemy.engine import Engine

from billfold import __version__
from billfold.config import get_settings
from billfold.kit.db import check_connection, create_engine, one_line, session_factory, transaction
from billfold.kit.errors import BillfoldError
from billfold.migrations import alembic_config

app = typer.Typer(
    help="Billfold: payments and billing for one-time products, subscriptions and memberships.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Migrate the database at BILLFOLD_DATABASE_URL.", no_args_is_help=True)
customer_app = typer.Typer(help="Customers: users and organizations.", no_args_is_help=True)
app.add_typer(db_app, name="db")
apikey_app = typer.Typer(help="API keys for the merchant's backend.", no_args_is_help=True)
app.add_typer(customer_app, name="customer")
app.add_typer(apikey_app, name="apikey")

# soft_wrap: a line longer than the terminal stays one line (scripts and pipes read these).
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class CommandFailed(Exception):
    """A command could not do what was asked; the message says why, in one line."""


def _engine() -> Engine:
    engine = create_engine(get_settings().database_url)
    check_connection(engine)
    return engine


def _revision_of(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _head(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def _require_migrated(engine: Engine) -> None:
    current, head = _revision_of(engine), _head(engine)
    if current != head:
        raise CommandFailed(
            f"the database is at revision {current or 'none'}, not the latest ({head}); run `billfold db upgrade` first"
        )


@app.command()
def version() -> None:
    """Print Billfold's version."""
    out.print(__version__)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Migrate the database up to REVISION (default: the latest)."""
    engine = _engine()
    before = _revision_of(engine)
    command.upgrade(alembic_config(engine), revision)
    after = _revision_of(engine)
    if before == after:
        out.print(f"Database already at revision {after or 'none'}.")
    else:
        out.print(f"Database migrated from {before or 'empty'} to {after}.")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target revision; base removes everything.")] = "-1") -> None:
    """Migrate the database down to REVISION (default: one step back)."""
    engine = _engine()
    before = _revision_of(engine)
    if before is None:
        raise CommandFailed("the database has no migrations applied; there is nothing to downgrade")
    command.downgrade(alembic_config(engine), revision)
    out.print(f"Database migrated from {before} down to {_revision_of(engine) or 'base (empty)'}.")


@db_app.command("current")
def db_current() -> None:
    """Show the database's revision and whether it is the latest."""
    engine = _engine()
    current, head = _revision_of(engine), _head(engine)
    if current is None:
        out.print(f"none (not migrated; latest is {head})")
    elif current == head:
        out.print(f"{current} (head)")
    else:
        out.print(f"{current} (latest is {head}; run `billfold db upgrade`)")


@app.command()
def demo(
    if_empty: Annotated[bool, typer.Option("--if-empty", help="Do nothing, successfully, when the database has data.")] = False,
) -> None:
    """Load a small, realistic shop (catalog, customers, organizations, addresses) into an empty database."""
    from billfold.demo import is_empty, load_demo

    engine = _engine()
    _require_migrated(engine)
    with transaction(session_factory(engine)) as session:
        if not is_empty(session):
            if if_empty:
                out.print("The database already has data; demo data not loaded.")
                return
            raise CommandFailed(
                "the database already has data; demo data is only loaded into an empty database "
                "(use a fresh BILLFOLD_DATABASE_URL, or `billfold db downgrade base` then `billfold db upgrade`)"
            )
        summary = load_demo(session)
    out.print("Demo data loaded: " + ", ".join(f"{what}: {n}" for what, n in summary.items()) + ".")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (BILLFOLD_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (BILLFOLD_PORT).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (about one per core).")] = 1,
    access_log: Annotated[bool, typer.Option(help="Log every request (costs about a quarter of a simple request's time).")] = True,
) -> None:
    """Serve the API and pages on http://127.0.0.1:8000."""
    import uvicorn

    from billfold.api import create_app

    settings = get_settings()
    engine = _engine()
    _require_migrated(engine)
    host, port = host or settings.host, port or settings.port
    out.print(f"Billfold {__version__} serving on http://{host}:{port}  (API reference: http://{host}:{port}/docs)")
    if workers > 1:
        # Each worker process builds its own app (and engine) from the same settings.
        engine.dispose()
        uvicorn.run("billfold.api:create_app", factory=True, host=host, port=port, workers=workers,
                    log_level="info", access_log=access_log)
    else:
        uvicorn.run(create_app(settings, engine), host=host, port=port, log_level="info", access_log=access_log)


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
) -> None:
    """Migrate the database, load the demo data if it is empty, and serve: everything at once."""
    db_upgrade("head")
    demo(if_empty=True)
    serve(host=host, port=port)


@customer_app.command("erase")
def customer_erase(
    customer_id: Annotated[str, typer.Argument(help="A user (usr_…) or organization (org_…) id.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Erase a customer's personal data. Orders, payments and invoices are kept, anonymised."""
    from billfold.accounts.erasure import erase_customer

    engine = _engine()
    _require_migrated(engine)
    if not yes and not typer.confirm(f"Erase {customer_id}? This cannot be undone.", default=False):
        raise CommandFailed("nothing erased")
    with transaction(session_factory(engine)) as session:
        erasure = erase_customer(session, customer_id)
    lines = [f"{erasure.customer_id}: {erasure.outcome}"]
    for organization in erasure.organizations:
        lines.append(f"{organization.customer_id}: {organization.outcome} (owned by {erasure.customer_id} alone)")
    if erasure.kept:
        lines.append("kept: " + ", ".join(f"{n} {table}" for table, n in erasure.kept.items()))
    if erasure.removed:
        lines.append("removed: " + ", ".join(f"{n} {table}" for table, n in erasure.removed.items()))
    out.print("\n".join(lines))


@app.command()
def purge() -> None:
    """Delete what has ended: used or expired sign-in challenges, long-ended sessions, closed
    throttle windows, invitations that ended a month ago, Idempotency-Keys older than 72 hours.
    Safe to run at any time."""
    from billfold.accounts.housekeeping import purge as purge_accounts
    from billfold.kit import idempotency

    engine = _engine()
    _require_migrated(engine)
    with transaction(session_factory(engine)) as session:
        removed = purge_accounts(session)
        removed["idempotency_keys"] = idempotency.purge(session)
    out.print(", ".join(f"{n} {table}" for table, n in removed.items()) + " deleted")


@apikey_app.command("create")
def apikey_create(
    name: Annotated[str, typer.Option("--name", help="What the key is for, e.g. 'shop backend'.")],
    scope: Annotated[list[str] | None, typer.Option("--scope", help="read or write; repeat for both (default: both).")] = None,
) -> None:
    """Create an API key and print it. It is shown this once; Billfold keeps only its hash."""
    from billfold.accounts.api_keys import create_api_key

    engine = _engine()
    _require_migrated(engine)
    with transaction(session_factory(engine)) as session:
        key, secret = create_api_key(session, name=name, scopes=scope or ["read", "write"], created_by=None)
    err.print(f"API key {key.id} ({', '.join(key.scopes)}) created; it is shown only now:", highlight=False)
    out.print(secret, highlight=False)


def _one_line_reason(error: BaseException) -> str:
    if isinstance(error, BillfoldError):
        return error.detail
    if isinstance(error, CommandError):
        return f"migration failed: {one_line(error)}"
    if isinstance(error, sa.exc.OperationalError):
        return f"database error: {one_line(error.orig or error)}"
    if isinstance(error, sa.exc.SQLAlchemyError):
        return f"database error: {one_line(error)}"
    return one_line(error)


def main() -> None:
    try:
        app()
    except (BillfoldError, CommandFailed, CommandError, sa.exc.SQLAlchemyError) as error:
        err.print(f"billfold: error: {_one_line_reason(error)}", markup=False, highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
