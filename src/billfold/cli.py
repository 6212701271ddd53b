"""The ``billfold`` command.

Every failure an operator can cause (a malformed URL, an unreachable database, an unknown
revision, a refused erasure) ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import sys
import threading
from contextlib import nullcontext
from typing import Annotated, Any

import sqlalchemy as sa
import typer
from alembic import command
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from datetime import date, datetime, timedelta

from pydantic import ValidationError
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
clock_app = typer.Typer(
    help="The billing clock: show it, or move it forward for the whole system (sandbox mode only).",
    no_args_is_help=True,
)
app.add_typer(clock_app, name="clock")
analytics_app = typer.Typer(
    help="Analytics snapshots: take a day, fill history, print the last months (docs/analytics.md).",
    no_args_is_help=True,
)
app.add_typer(analytics_app, name="analytics")

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
    months: Annotated[
        int, typer.Option(min=0, max=36, help="Also live through this many months of business up to now (0: the shop only).")
    ] = 0,
    seed: Annotated[int, typer.Option(help="The history's random seed: the same seed, the same history.")] = 2026,
) -> None:
    """Load a small, realistic shop (catalog, customers, organizations, addresses) into an empty
    database; with --months, also a history of signups, renewals, upgrades, churn, failed payments
    and refunds up to now."""
    from billfold.demo.shop import is_empty, load_demo, start_over, unfinished_load

    settings = get_settings()
    engine = _engine()
    _require_migrated(engine)
    with transaction(session_factory(engine)) as session:
        unfinished = unfinished_load(session)
        if unfinished and unfinished.running:
            raise CommandFailed(
                f"the demo is being loaded into this database by {unfinished.by}; wait for it to finish, or stop it and run this again"
            )
        if unfinished:
            start_over(session)
    if unfinished:
        err.print("An earlier demo load was interrupted before it finished; starting over.", highlight=False)
    with transaction(session_factory(engine)) as session:
        empty = is_empty(session)
        if empty and not months:
            summary = load_demo(session)
    if not empty:
        if if_empty:
            out.print("The database already has data; demo data not loaded.")
            return
        raise CommandFailed(
            "the database already has data; demo data is only loaded into an empty database "
            "(use a fresh BILLFOLD_DATABASE_URL, or `billfold db downgrade base` then `billfold db upgrade`)"
        )
    if not months:
        out.print("Demo data loaded: " + ", ".join(f"{what}: {n}" for what, n in summary.items()) + ".")
        return
    try:
        _demo_history(settings, engine, months, seed)
    except KeyboardInterrupt:
        raise CommandFailed(
            "interrupted: the demo history is not complete; run the same command again to start it over"
        ) from None


def _demo_history(settings: Any, engine: Engine, months: int, seed: int) -> None:
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from billfold import worker as background
    from billfold.demo.history import build_history

    background.install_clock(settings, engine)
    context = background.make_context(settings, engine)
    started = time.monotonic()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("living through the history", total=None)

        # Ctrl-C raises KeyboardInterrupt wherever the main thread is, and Python drops it when that is
        # a finaliser (a pooled connection's weakref callback, say): the load would then run on and
        # exit 0. So it is also remembered, and raised again at the next day's start at the latest.
        interrupted: list[int] = []

        def interrupt(signum: int, frame: Any) -> None:
            interrupted.append(signum)
            raise KeyboardInterrupt

        def on_day(number: int, days: int, now: datetime) -> None:
            if interrupted:
                raise KeyboardInterrupt
            progress.update(task, total=days, completed=number, description=f"living through {now:%Y-%m-%d}")

        def on_snapshot(number: int, days: int, day: date) -> None:
            on_day(number, days, datetime.combine(day, datetime.min.time()))
            progress.update(task, description=f"analytics snapshot of {day:%Y-%m-%d}")

        previous = signal.signal(signal.SIGINT, interrupt)
        try:
            report = build_history(context, months=months, seed=seed, on_day=on_day, on_snapshot=on_snapshot)
        finally:
            signal.signal(signal.SIGINT, previous)
    out.print(
        f"Demo shop loaded with {months} month{'s' if months != 1 else ''} of history "
        f"({report.start:%Y-%m-%d} to {report.end:%Y-%m-%d}, {report.days} days) in {time.monotonic() - started:.1f} s:",
        highlight=False,
    )
    _print_done(report.totals)
    out.print("What customers did:", highlight=False)
    _print_done(dict(sorted(report.actions.items())))
    out.print("What the worker did:", highlight=False)
    _print_done({name: n for name, n in sorted(report.worker.items()) if n})


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

    from billfold import worker as background

    settings = get_settings()
    host, port = host or settings.host, settings.port if port is None else port
    listening = _listen(host, port)  # first: a port that cannot be had fails before anything starts
    engine = _engine()
    _require_migrated(engine)
    background.install_clock(settings, engine)
    embedded = settings.worker_mode == "embedded"
    if embedded:
        _log_to_stderr()
    out.print(f"Billfold {__version__} serving on http://{host}:{port}  (API reference: http://{host}:{port}/docs)")
    if workers > 1:
        # Each worker process builds its own app (and engine) from the same settings. The embedded
        # background worker runs only in a one-process server: run `billfold worker` beside this.
        engine.dispose()
        listening.close()  # uvicorn's supervisor binds it again for its workers
        uvicorn.run("billfold.api:create_app", factory=True, host=host, port=port, workers=workers,
                    log_level="info", access_log=access_log, timeout_keep_alive=KEEP_ALIVE_SECONDS)
    else:
        config = uvicorn.Config(create_app(settings, engine, run_worker=embedded), host=host, port=port,
                                log_level="info", access_log=access_log, timeout_keep_alive=KEEP_ALIVE_SECONDS)
        uvicorn.Server(config).run(sockets=[listening])


# How long an idle keep-alive connection is kept open (uvicorn's default is 5 s). Longer than the
# 60 s idle timeout of the usual load balancers and proxies (AWS's ALB, nginx's upstream keepalive
# 60 s), so that the proxy, not Billfold, closes an idle connection: otherwise a request it sends
# as Billfold closes the connection fails with "server disconnected without sending a response"
# (seen in bench/checkout.py at 512 clients, whose threads may sit idle past 5 s).
KEEP_ALIVE_SECONDS = 75


def _listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound to ``host:port``; a port out of range, a port another program
    holds, or an address this machine does not have is a one-line error."""
    if not 1 <= port <= 65535:
        raise CommandFailed(f"port {port} is not a TCP port; choose one from 1 to 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
    except OSError as error:
        listening.close()
        if error.errno == errno.EADDRINUSE:
            raise CommandFailed(
                f"port {port} on {host} is already in use by another program; stop it, or choose another port with --port"
            ) from None
        raise CommandFailed(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return listening


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    demo_months: Annotated[
        int, typer.Option(min=0, max=36, help="Months of demo history to make when the database is empty (0: the shop only).")
    ] = 12,
) -> None:
    """Migrate the database, load the demo shop with a year of history if it is empty, and serve:
    everything at once."""
    settings = get_settings()
    _listen(host or settings.host, settings.port if port is None else port).close()  # before the minutes of the demo
    db_upgrade("head")
    demo(if_empty=True, months=demo_months)
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
    throttle windows, invitations that ended a month ago, Idempotency-Keys older than 72 hours,
    outgoing webhook deliveries that ended 30 days ago. Safe to run at any time."""
    from billfold.accounts.housekeeping import purge as purge_accounts
    from billfold import idempotency
    from billfold.notify import delivery

    engine = _engine()
    _require_migrated(engine)
    with transaction(session_factory(engine)) as session:
        removed = purge_accounts(session)
        removed["idempotency_keys"] = idempotency.purge(session)
        removed["webhook_deliveries"] = delivery.purge(session)
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


def _log_to_stderr() -> None:
    """Billfold's log lines (what each sweep did, what failed) through Rich on stderr."""
    from rich.logging import RichHandler

    logger = logging.getLogger("billfold")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        logger.addHandler(RichHandler(console=err, show_path=False, markup=False, rich_tracebacks=False))
    logger.setLevel(logging.INFO)


def _print_done(done: dict[str, int]) -> None:
    width = max((len(name) for name in done), default=0)
    for name, n in done.items():
        out.print(f"  {name.ljust(width)}  {n}", highlight=False)


@app.command()
def worker(
    once: Annotated[bool, typer.Option("--once", help="Run each sweep that is due once, then exit.")] = False,
    catch_up: Annotated[bool, typer.Option("--catch-up", help="Run every sweep until none has work, then exit.")] = False,
    scheduler: Annotated[
        bool, typer.Option("--scheduler", help="Only send due sweeps to the broker; run none here.")
    ] = False,
    consume: Annotated[
        bool, typer.Option("--dramatiq", help="Only run the sweeps the broker delivers; schedule none.")
    ] = False,
    threads: Annotated[int, typer.Option(min=1, help="Dramatiq consumer threads.")] = 4,
    tick: Annotated[float | None, typer.Option(min=0.01, help="Seconds between rounds (BILLFOLD_WORKER_TICK).")] = None,
) -> None:
    """Run the background work: renewals, retries, expiry, purges. Loops until SIGTERM or Ctrl-C.

    Without BILLFOLD_BROKER_URL the sweeps run here. With it, this process schedules (one Dramatiq
    message per due sweep) and consumes; --scheduler or --dramatiq does only one of the two."""
    from billfold import worker as background

    settings = get_settings()
    engine = _engine()
    _require_migrated(engine)
    background.install_clock(settings, engine)
    _log_to_stderr()
    sweeps = background.load_sweeps()
    context = background.make_context(settings, engine)
    if once or catch_up:
        if once and catch_up:
            raise CommandFailed("--once and --catch-up do not go together")
        done = background.catch_up(context) if catch_up else background.run_sweeps(context, schedule=background.Schedule())
        background.heartbeat(context)  # a worker run from cron counts as a worker
        out.print(f"{'Caught up' if catch_up else 'Ran'} {len(done)} of {len(sweeps)} sweeps:", highlight=False)
        _print_done(done)
        return
    if (scheduler or consume) and not settings.broker_url:
        raise CommandFailed("--scheduler and --dramatiq need a broker: set BILLFOLD_BROKER_URL (redis://… or amqp://…)")
    if scheduler and consume:
        raise CommandFailed("--scheduler and --dramatiq do not go together; give neither to do both")
    dramatiq = background.dispatcher(context)
    runner = background.Runner(
        context, tick=tick or settings.worker_tick, dispatch=dramatiq.send if dramatiq else None
    )
    stopping = threading.Event()
    received: list[str] = []

    def stop(signum: int, _frame: Any) -> None:
        # Only flags here: the handler runs between two bytecodes of whatever the main thread was
        # doing (even a lazy import inside a log call), where logging itself can fail. A thread
        # says that the worker is stopping.
        received.append(signal.Signals(signum).name)
        stopping.set()
        runner.stop()

    def announce() -> None:
        stopping.wait()
        if received:
            logging.getLogger("billfold.worker").info("%s: stopping after the work in progress", received[0])

    announcer = threading.Thread(target=announce, name="billfold-worker-stop", daemon=True)
    announcer.start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    where = "through the broker" if dramatiq else "in this process"
    err.print(f"Billfold worker: {len(sweeps)} sweeps, {where}; stop with Ctrl-C or SIGTERM.", highlight=False)
    consuming = dramatiq.consuming(threads=threads) if dramatiq and not scheduler else nullcontext()
    try:
        with consuming:
            if consume:
                while not stopping.wait(0.5):
                    pass
            else:
                runner.run()
    finally:
        stopping.set()  # lets the announcing thread end
        announcer.join(timeout=5)
        if dramatiq:
            dramatiq.close()
    err.print("Billfold worker stopped.", highlight=False)


@clock_app.command("show")
def clock_show() -> None:
    """Print the billing clock: now, how far it runs ahead of real time, and whether it may move."""
    from billfold.kit import clock

    settings = get_settings()
    engine = _engine()
    _require_migrated(engine)
    offset = clock.read_offset_seconds(engine)
    now = clock.SystemClock().now() + (timedelta(seconds=offset) if settings.sandbox else timedelta(0))
    out.print(f"now: {now.isoformat(timespec='seconds')}", highlight=False)
    out.print(f"offset: {offset}s ({timedelta(seconds=offset)} ahead of real time)", highlight=False)
    out.print(f"sandbox: {'on' if settings.sandbox else 'off'}", highlight=False)


@clock_app.command("advance")
def clock_advance(
    by: Annotated[str, typer.Argument(help="How far: 30d, 12h, 90m, 45s, 2w (365d for a year).")],
    step: Annotated[str, typer.Option(help="The largest step time takes before every sweep catches up.")] = "1d",
) -> None:
    """Move the whole system's time forward (sandbox mode only), doing everything that became due."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from billfold import worker as background
    from billfold.kit.clock import parse_duration

    settings = get_settings()
    background.require_sandbox(settings)
    delta, largest_step = parse_duration(by), parse_duration(step)
    engine = _engine()
    _require_migrated(engine)
    background.install_clock(settings, engine)
    background.load_sweeps()
    context = background.make_context(settings, engine)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("catching up", total=None)

        def on_step(number: int, steps: int, now: datetime) -> None:
            progress.update(task, total=steps, completed=number, description=f"catching up to {now:%Y-%m-%d %H:%M}")

        moved = background.advance_clock(context, delta, step=largest_step, on_step=on_step)
    out.print(
        f"Clock moved {by} ahead in {moved.steps} step{'s' if moved.steps != 1 else ''}: now "
        f"{moved.after.isoformat(timespec='seconds')} (was {moved.before.isoformat(timespec='seconds')}).",
        highlight=False,
    )
    _print_done(moved.done)


def _when(option: str, text: str, now: datetime) -> datetime:
    """A ``--since`` / ``--until`` value: a date (midnight UTC), an ISO 8601 time (UTC when it names
    no zone), or a duration back from now (``7d``, ``12h``)."""
    from billfold.kit import clock
    from billfold.kit.errors import InvalidInput

    try:
        return now - clock.parse_duration(text)
    except InvalidInput:
        pass
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CommandFailed(
            f"{option} {text!r} is not a date; give YYYY-MM-DD, an ISO 8601 time such as 2026-12-01T09:30:00Z, "
            "or a duration back from now such as 7d"
        ) from None
    return value.replace(tzinfo=clock.UTC) if value.tzinfo is None else clock.ensure_utc(value)


def _finding_line(finding: Any) -> str:
    between = f"{finding.ours or '-'} / {finding.theirs or '-'}"
    return f"{finding.action:<13} {finding.kind:<14} {finding.object:<6} {between}: {finding.detail}"


@app.command()
def reconcile(
    provider: Annotated[str, typer.Option("--provider", help="The provider's id (a payment_providers row).")],
    since: Annotated[str, typer.Option("--since", help="Start of the window: YYYY-MM-DD, an ISO 8601 time, or 7d back from now.")],
    until: Annotated[str | None, typer.Option("--until", help="End of the window, excluded (default: now).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Change nothing: report what would be repaired.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Compare the provider's charges and refunds created in the window with Billfold's; settle what
    a lost answer or webhook left pending, report the rest. Exit 0: all agree (after repairs);
    1: disagreements remain for a person; 2: bad input, or the provider or database cannot be read."""
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from billfold import worker as background
    from billfold.kit import clock
    from billfold.payments.reconcile import reconcile as run_reconcile

    try:
        settings = get_settings()
        engine = _engine()
        _require_migrated(engine)
        background.install_clock(settings, engine)
        now = clock.now()
        start = _when("--since", since, now)
        end = _when("--until", until, now) if until is not None else now
        context = background.make_context(settings, engine)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        # On a terminal only (Rich draws nothing when stderr is a pipe or a file): scripts read stdout.
        with Progress(*columns, console=err, transient=True) as progress:
            task = progress.add_task(f"listing {provider}", total=None)

            def on_progress(stage: str, done: int, total: int) -> None:
                progress.update(task, description=f"{stage} {provider}", total=total, completed=done)

            report = run_reconcile(
                context.sessions, context.security, provider, start, end, repair=not dry_run, progress=on_progress
            )
    except (BillfoldError, CommandFailed, sa.exc.SQLAlchemyError, ValidationError) as error:
        err.print(f"billfold: error: {_one_line_reason(error)}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        out.print(
            f"Reconciled {provider} from {report.since.isoformat(timespec='seconds')} to "
            f"{report.until.isoformat(timespec='seconds')}{' (dry run: nothing changed)' if dry_run else ''}: "
            f"{report.charges} charge{'s' if report.charges != 1 else ''} and {report.refunds} "
            f"refund{'s' if report.refunds != 1 else ''} at the provider.",
            markup=False, highlight=False,
        )
        for finding in report.findings:
            out.print(_finding_line(finding), markup=False, highlight=False)
        out.print(", ".join(f"{name} {n}" for name, n in report.counts().items()), markup=False, highlight=False)
        open_ = len(report.open)
        repairable = sum(1 for f in report.findings if f.action == "repairable")
        out.print(
            "All agree." if not open_ else f"{open_} disagreement{'s' if open_ != 1 else ''} left for a person"
            + (f" ({repairable} would be repaired without --dry-run)." if repairable else "."),
            markup=False, highlight=False,
        )
    if not report.all_agree:
        raise typer.Exit(1)


def _day(option: str, text: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise CommandFailed(f"{option} {text!r} is not a date; give YYYY-MM-DD, such as 2026-11-30") from None


def _analytics_command(run: Any) -> None:
    """Run an analytics command: bad input, a refused value or an unreachable database is one line
    on stderr and exit 2 (as ``reconcile``); Ctrl-C keeps the days already taken."""
    try:
        run()
    except (BillfoldError, CommandFailed, sa.exc.SQLAlchemyError, ValidationError) as error:
        err.print(f"billfold: error: {_one_line_reason(error)}", markup=False, highlight=False)
        raise typer.Exit(2) from None


def _analytics_context() -> Any:
    from billfold import worker as background

    settings = get_settings()
    engine = _engine()
    _require_migrated(engine)
    background.install_clock(settings, engine)
    return background.make_context(settings, engine)


@analytics_app.command("snapshot")
def analytics_snapshot(
    day: Annotated[str | None, typer.Option("--date", help="The day, YYYY-MM-DD (default: yesterday, UTC).")] = None,
) -> None:
    """Take one day's snapshot now (calculation_method on_demand), replacing the day's rows."""
    from billfold.analytics import jobs, snapshots
    from billfold.kit import clock

    def run() -> None:
        context = _analytics_context()
        today = clock.now().astimezone(clock.UTC).date()
        taken = _day("--date", day) if day is not None else jobs.yesterday()
        if taken > today:
            raise CommandFailed(f"--date {taken} is in the future (today is {today}, UTC)")
        with transaction(context.sessions) as session:
            rows = snapshots.take(session, taken, method="on_demand")
        out.print(f"Snapshot of {taken}: {len(rows)} rows ({rows[0]['data_freshness'] if rows else 'no figures'}).",
                  markup=False, highlight=False)

    _analytics_command(run)


@analytics_app.command("backfill")
def analytics_backfill(
    first: Annotated[str, typer.Option("--from", help="The first day, YYYY-MM-DD.")],
    last: Annotated[str | None, typer.Option("--to", help="The last day, YYYY-MM-DD (default: yesterday, UTC).")] = None,
) -> None:
    """Take every day's snapshot from --from to --to (calculation_method on_demand), one
    transaction per day: an interrupted backfill keeps the days it did; run it again to finish."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from billfold.analytics import jobs
    from billfold.kit import clock

    def run() -> None:
        start = _day("--from", first)
        end = _day("--to", last) if last is not None else None
        context = _analytics_context()
        today = clock.now().astimezone(clock.UTC).date()
        end = end or jobs.yesterday()
        if end > today:
            raise CommandFailed(f"--to {end} is in the future (today is {today}, UTC)")
        if start > end:
            raise CommandFailed(f"--from {start} comes after --to {end}")
        started = time.monotonic()
        done: list[date] = []
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        try:
            with Progress(*columns, console=err, transient=True) as progress:  # drawn on a terminal only
                task = progress.add_task("backfilling", total=(end - start).days + 1)

                def on_day(number: int, days: int, day: date) -> None:
                    done.append(day)
                    progress.update(task, completed=number, description=f"backfilled {day}")

                days = jobs.backfill(context.sessions, start, end, on_day=on_day)
        except KeyboardInterrupt:
            kept = f"{done[0]} to {done[-1]} kept" if done else "no day finished"
            raise CommandFailed(f"interrupted after {len(done)} days ({kept}); run the same command again to finish") from None
        out.print(f"Backfilled {days} day{'s' if days != 1 else ''} ({start} to {end}) in {time.monotonic() - started:.1f} s.",
                  markup=False, highlight=False)

    _analytics_command(run)


@analytics_app.command("report")
def analytics_report(
    months: Annotated[int, typer.Option("--months", help="How many months (1 to 36), this one included.")] = 6,
    currency: Annotated[str | None, typer.Option("--currency", help="One currency (ISO 4217); default: each.")] = None,
) -> None:
    """Print the last months per currency: MRR at month end, net new MRR and its movements, active
    subscriptions, revenue, churn. Read from the snapshots; days without one are computed."""
    from billfold.analytics import jobs
    from billfold.kit import money

    def run() -> None:
        code = None
        if not 1 <= months <= 36:
            raise CommandFailed(f"--months {months} is out of range; give 1 to 36")
        if currency is not None:
            if not money.is_currency(currency.strip().upper()):
                raise CommandFailed(f"--currency {currency!r} is not an ISO 4217 currency code, such as USD")
            code = money.normalize_currency(currency)
        context = _analytics_context()
        with transaction(context.sessions) as session:
            rows = jobs.report_months(session, months, last_day=jobs.yesterday(), currency=code)
        for line in _report_lines(rows, code):
            out.print(line, markup=False, highlight=False)

    _analytics_command(run)


def _report_lines(rows: list[Any], currency: str | None) -> list[str]:
    from billfold.analytics.metrics import MOVEMENT_KINDS
    from billfold.kit.money import Money

    if not rows:
        return [f"No figures{' in ' + currency if currency else ''} for these months: nothing was paid or billed."]
    lines: list[str] = []
    computed = False
    for cur in sorted({m.currency for m in rows}):
        mine = [m for m in rows if m.currency == cur]

        def cents(value: int) -> str:
            return f"{Money(value, cur).to_decimal():,}"

        def rate(value: Any) -> str:
            return "-" if value is None else f"{value * 100:.2f}%"

        header = [f"{m.month:%Y-%m}{'*' if m.computed_days else ''}" for m in mine]
        computed = computed or any(m.computed_days for m in mine)
        table = [
            (cur, header),
            ("MRR at month end", [cents(m.mrr) for m in mine]),
            ("Net new MRR", [cents(m.movements["net_new"]) for m in mine]),
            *((f"  {kind}", [cents(m.movements[kind]) for m in mine]) for kind in MOVEMENT_KINDS),
            ("Active subscriptions", [str(m.active) for m in mine]),
            ("Revenue gross", [cents(m.gross) for m in mine]),
            ("Refunds", [cents(m.refunds) for m in mine]),
            ("Revenue net", [cents(m.net) for m in mine]),
            ("Logo churn (30 days)", [rate(m.logo_churn) for m in mine]),
            ("Revenue churn (30 days)", [rate(m.revenue_churn) for m in mine]),
        ]
        width = max(12, *(len(v) for _, values in table for v in values))
        label = max(len(name) for name, _ in table)
        lines += [f"{name:<{label}}  " + "  ".join(f"{v:>{width}}" for v in values) for name, values in table] + [""]
    last = rows[-1].last_day
    lines.append(f"Month end: each month's last day, {last} for {last:%Y-%m} (the last day that is over).")
    if computed:
        lines.append("* some days had no snapshot and were computed now (run `billfold analytics backfill` to store them).")
    else:
        lines.append("All figures read from the stored snapshots.")
    return lines


def _one_line_reason(error: BaseException) -> str:
    if isinstance(error, BillfoldError):
        return error.detail
    if isinstance(error, CommandError):
        return f"migration failed: {one_line(error)}"
    if isinstance(error, sa.exc.OperationalError):
        return f"database error: {one_line(error.orig or error)}"
    if isinstance(error, sa.exc.SQLAlchemyError):
        return f"database error: {one_line(error)}"
    if isinstance(error, ValidationError):  # a BILLFOLD_ setting
        return "; ".join(
            f"BILLFOLD_{'_'.join(str(part) for part in e['loc']).upper()}: {e['msg']}" for e in error.errors()
        )
    return one_line(error)


def main() -> None:
    from billfold.wiring import wire

    wire()  # every command runs wired (billfold.wiring), whether it serves, sweeps or pays
    try:
        app()
    except (BillfoldError, CommandFailed, CommandError, sa.exc.SQLAlchemyError, ValidationError) as error:
        err.print(f"billfold: error: {_one_line_reason(error)}", markup=False, highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
