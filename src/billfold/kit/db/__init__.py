"""Engines and sessions for SQLite, PostgreSQL and MariaDB, set up so that each behaves the way
Billfold expects: UTC everywhere, foreign keys enforced, strict SQL, full UTF-8.

The transaction boundary lives here too: ``transaction()`` commits once at the end of a request
or job, or rolls everything back. Services take a session and never commit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session, make_transient_to_detached, sessionmaker

from billfold.kit.db import changes
from billfold.kit.errors import ConfigurationError, DatabaseUnavailable

# Plain scheme names map to the drivers Billfold ships with.
_DEFAULT_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
    "sqlite": "sqlite+pysqlite",
}
_SUPPORTED_BACKENDS = {"sqlite", "postgresql", "mysql", "mariadb"}

# Every MariaDB connection: UTC, strict, and NOT NULL TIMESTAMPs without surprise defaults.
_MYSQL_INIT = (
    "SET time_zone = '+00:00', "
    "sql_mode = 'STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION', "
    "explicit_defaults_for_timestamp = 1"
)


def is_mysql(dialect: sa.Dialect) -> bool:
    """MariaDB and MySQL share a dialect family (SQLAlchemy names it either way)."""
    return dialect.name in ("mysql", "mariadb")


def parse_database_url(url: str | URL) -> URL:
    """An SQLAlchemy URL with Billfold's driver for each database, or a ConfigurationError
    that says what is wrong with it."""
    try:
        parsed = sa.engine.make_url(url) if isinstance(url, str) else url
    except (sa.exc.ArgumentError, ValueError) as error:
        raise ConfigurationError(
            f"malformed database URL {_redact(url)!r}: expected something like "
            "sqlite:///billfold.db, postgresql://user@host/db or mariadb://user@host/db"
        ) from error
    backend = parsed.get_backend_name()
    if backend == "postgres":
        backend = "postgresql"
    if backend not in _SUPPORTED_BACKENDS:
        raise ConfigurationError(
            f"unsupported database {backend!r} in {_redact(url)!r}: Billfold runs on sqlite, postgresql and mariadb"
        )
    if "+" not in parsed.drivername:
        parsed = parsed.set(drivername=_DEFAULT_DRIVERS[parsed.drivername])
    if backend in ("mysql", "mariadb") and "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    return parsed


def _redact(url: str | URL) -> str:
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # a URL too malformed to parse has no password we could find either
        return str(url)


DEFAULT_THREADS = 16
"""Requests an API process works on at once (``Settings.api_threads``)."""


def pool_options(threads: int = DEFAULT_THREADS) -> dict[str, Any]:
    """A connection pool sized for ``threads`` request threads. A request may hold two connections
    at once (its own session and a short transaction of a service's), so the pool can grow to two
    per thread: no thread then waits for a connection that only another waiting thread could free.
    Five are kept open; the rest are opened when a burst needs them and closed after."""
    kept = min(5, 2 * threads)
    return {"pool_size": kept, "max_overflow": 2 * threads - kept, "pool_timeout": 30}


def create_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine for ``url`` with Billfold's per-database settings. Connects lazily."""
    parsed = parse_database_url(url)
    backend = parsed.get_backend_name()
    options: dict[str, Any] = dict(pool_options())
    if backend == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            folder = Path(database).expanduser().absolute().parent
            if not folder.is_dir():
                raise ConfigurationError(f"the folder {folder} for the SQLite database {database} does not exist")
        options["connect_args"] = {"timeout": 30}
        if not database or database == ":memory:" or database.startswith("file:"):
            for option in pool_options():  # one shared in-memory connection: no pool to size
                options.pop(option)
    elif backend == "postgresql":
        options["connect_args"] = {"options": "-c timezone=UTC", "connect_timeout": 5}
    else:
        options["connect_args"] = {"init_command": _MYSQL_INIT, "connect_timeout": 5}
        # PostgreSQL's default: a statement sees what committed before it began, so a read
        # after waiting for a row lock sees the row as the other transaction left it.
        options["isolation_level"] = "READ COMMITTED"
    options.update(kwargs)
    if options.get("poolclass") is not None and options["poolclass"] is not sa.pool.QueuePool:
        for option in pool_options():
            options.pop(option, None)
    try:
        engine = sa.create_engine(parsed, **options)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as error:
        raise ConfigurationError(f"cannot use database URL {_redact(parsed)!r}: {error}") from error
    _ping_after_idle(engine)
    if backend == "sqlite":
        _configure_sqlite(engine)
    elif backend in ("mysql", "mariadb"):
        event.listen(engine, "handle_error", _mysql_check_failure_is_integrity_error)
    return engine


IDLE_BEFORE_PING_SECONDS = 2.0
"""A pooled connection unused for longer than this is pinged before it is handed out."""


def _ping_after_idle(engine: Engine) -> None:
    # SQLAlchemy's pool_pre_ping costs a round trip at every checkout: a sale checks a connection
    # out about eight times. A connection that went back to the pool a moment ago is as alive as a
    # ping would show; one that sat idle (a restarted server, a proxy's idle timeout) is pinged and,
    # if dead, replaced before anyone uses it (DisconnectionError: the pool retries the checkout).
    @event.listens_for(engine, "checkin")
    def _returned(dbapi_connection: Any, record: Any) -> None:
        record.info["billfold_returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _handed_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        returned = record.info.get("billfold_returned_at")
        if returned is None or time.monotonic() - returned < IDLE_BEFORE_PING_SECONDS:
            return  # new (just connected) or back from a moment ago
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            raise sa.exc.DisconnectionError(f"a pooled connection idle for a while is gone: {error}") from error
        if not alive:
            raise sa.exc.DisconnectionError("a pooled connection idle for a while is gone")


_MYSQL_CONSTRAINT_FAILED = 4025


def _mysql_check_failure_is_integrity_error(context: sa.engine.ExceptionContext) -> BaseException | None:
    # PyMySQL reports a failed CHECK (MariaDB's error 4025, also what Billfold's triggers raise)
    # as an OperationalError; every other database calls it an integrity error, and so do we.
    original = context.original_exception
    if getattr(original, "args", None) and original.args[0] == _MYSQL_CONSTRAINT_FAILED:
        return sa.exc.IntegrityError(context.statement, context.parameters, original)
    return None


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin, so that
        # SAVEPOINT and transactional DDL work (SQLAlchemy's documented recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA busy_timeout = 30000")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        # IMMEDIATE takes the write lock up front. A DEFERRED transaction that read before
        # another committed cannot then write: SQLite refuses at once ("database is locked"),
        # without waiting for the busy timeout. SQLite runs one writer at a time either way.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: the session commits when the block ends, or rolls back if it raises."""
    with factory() as session, session.begin():
        yield session


def hold(session: Session, *rows: object) -> None:
    """Keep ``rows`` in ``session``'s identity map for the session's life. The map holds a row only
    while something else refers to it, so a row a service loaded and let go of is read again by
    the next ``session.get`` of it in the same transaction; a hot path that knows it will ask again
    holds what it loaded."""
    session.info.setdefault(_HELD, []).extend(rows)


_HELD = "billfold_held_rows"


def columns_of(session: Session, model: type, row_id: str, *columns: Any) -> tuple[Any, ...] | None:
    """``columns`` of ``model``'s row ``row_id`` (None: no such row): from the object when the
    session holds it (with any change not yet flushed), else one SELECT of just those columns, with
    no object built. For a hot path that needs a field or two of a wide row (a user's email and
    name, not their passkeys)."""
    held = session.identity_map.get(Session.identity_key(model, row_id))
    if held is not None:
        return tuple(getattr(held, column.key) for column in columns)
    with session.no_autoflush:
        found = session.execute(_columns_of(model, columns), {"row_id": row_id}).first()
    return tuple(found) if found is not None else None


@cache
def _columns_of(model: type, columns: tuple[Any, ...]) -> sa.Select[Any]:
    key = sa.inspect(model).primary_key[0]
    return sa.select(*columns).where(key == sa.bindparam("row_id", type_=key.type))


def insert_rows(session: Session, rows: Sequence[Any]) -> None:
    """Write new ORM objects of one class, not yet added to the session, with one Core INSERT (one
    multi-row statement for several), and make them the session's own as a flush would have left
    them: persistent, their defaults (id, timestamps) filled, later changes flushed as UPDATEs,
    their change marks named. A hot path's new rows skip the unit of work's bookkeeping
    (docs/performance.md). A column is left out as the ORM leaves it out (no value and no default,
    or None where the type writes None as NULL): the database's default or NULL. Inside a
    savepoint, or for rows that would not leave out the same columns, it is ``add`` and ``flush``,
    so a savepoint's rollback still forgets them."""
    if not rows:
        return
    mapper = sa.inspect(type(rows[0]))
    values: list[dict[str, Any]] = []
    for row in rows:
        given, one = sa.inspect(row).dict, {}
        for prop in mapper.column_attrs:
            key, column = prop.key, prop.columns[0]
            if key in given:
                value = given[key]
                if value is None and not column.type.should_evaluate_none:
                    continue
            elif column.default is not None and (column.default.is_scalar or column.default.is_callable):
                value = column.default.arg if column.default.is_scalar else column.default.arg(None)
                setattr(row, key, value)
            else:
                continue
            one[column.key] = value
        values.append(one)
    if session.in_nested_transaction() or any(type(row) is not type(rows[0]) for row in rows) \
            or len({frozenset(one) for one in values}) > 1:
        session.add_all(rows)
        session.flush()
        return
    statement = _insert(mapper.local_table)
    # Named, even as nothing: a write to a watched table that names nothing moves every mark.
    session.execute(statement, values, execution_options={changes.OPTION: changes.new_keys(rows)})
    left_out = [prop for prop in mapper.column_attrs if prop.columns[0].key not in values[0]]
    for row in rows:
        for prop in left_out:  # NULL, unless the database gave a default: that one is read when asked for
            if prop.columns[0].server_default is None:
                sa.inspect(row).dict[prop.key] = None
            else:
                sa.inspect(row).dict.pop(prop.key, None)
        make_transient_to_detached(row)
    session.add_all(rows)


@cache
def _insert(table: sa.Table) -> sa.Insert:
    return sa.insert(table)


T = TypeVar("T")


def for_transaction(session: Session, name: str, make: Callable[[], T]) -> T:
    """What ``session.info[name]`` keeps for the session's current transaction, made by ``make()``
    the first time it is asked for in that transaction (which is begun if none is): a value kept
    for one transaction, committed or rolled back, is never taken for the next."""
    transaction = session.get_transaction() or session.begin()
    kept = session.info.get(name)
    if kept is None or kept[0] is not transaction:
        kept = session.info[name] = (transaction, make())
    return kept[1]  # type: ignore[no-any-return]


def of_transaction(session: Session, name: str, *, pop: bool = False) -> Any:
    """What ``for_transaction`` kept under ``name`` for the current transaction, or None (nothing
    kept, or kept for one that has ended); ``pop``: and forget it."""
    kept = session.info.pop(name, None) if pop else session.info.get(name)
    return kept[1] if kept is not None and kept[0] is session.get_transaction() else None


_AT_COMMIT = "billfold_rows_at_commit"  # for_transaction: model → rows to insert at the commit


def insert_at_commit(session: Session, model: type, row: dict[str, Any]) -> None:
    """``row`` (every column of ``model`` that its other rows give too) inserted at the commit,
    with the transaction's other such rows of ``model`` in one statement: an append-only row that
    nothing in the transaction reads back (an audit event, an analytics event, a queued mail) costs
    no ORM object and no INSERT of its own at each flush. The rows are written after the session's
    last flush (a row they refer to is written first), or before an ORM statement about ``model``
    in the same transaction (``write_at_commit_rows`` for plain SQL), and never for a transaction
    rolled back. Inside a savepoint the row is an object added to the session, so the savepoint's
    rollback takes it along; rows kept for the transaction around it wait for its commit. For
    tables no change mark watches (a Core INSERT on a watched one would move every mark)."""
    if session.in_nested_transaction():
        session.add(model(**row))
        return
    for_transaction(session, _AT_COMMIT, dict).setdefault(model, []).append(row)


def write_at_commit_rows(session: Session, models: Any = None) -> None:
    """Write the rows kept by ``insert_at_commit`` now (those of ``models``, else all): a read of
    them follows."""
    kept: dict[type, list[dict[str, Any]]] | None = of_transaction(session, _AT_COMMIT)
    if not kept or session.in_nested_transaction():
        return
    for model in [m for m in kept if models is None or m in models]:
        rows = kept.pop(model)
        session.connection().execute(_insert(sa.inspect(model).local_table), rows)


@event.listens_for(Session, "do_orm_execute")
def _before_reading_kept(state: Any) -> None:
    kept = of_transaction(state.session, _AT_COMMIT)
    if kept:
        wanted = {mapper.class_ for mapper in state.all_mappers} & set(kept)
        if wanted:
            if state.session.autoflush:
                state.session.flush()  # as the read's own autoflush would: the rows they refer to first
            write_at_commit_rows(state.session, wanted)


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    if of_transaction(session, _AT_COMMIT) and not session.in_nested_transaction():
        session.flush()  # the rows they refer to first (the commit's own flush comes after this hook)
        write_at_commit_rows(session)


@contextmanager
def reading(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A read between two phases of a job or request: nothing is written and nothing committed.
    At the end the rows read are detached (they stay readable, with what was loaded) and the
    transaction is rolled back, so no lock or snapshot is held across a slow call that follows."""
    with factory() as session:
        try:
            yield session
        finally:
            session.expunge_all()
            session.rollback()


def check_connection(engine: Engine) -> None:
    """Connect once, or raise DatabaseUnavailable with the reason in one line."""
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as error:
        raise DatabaseUnavailable(
            f"cannot reach the database at {_redact(engine.url)}: {one_line(error.orig or error)}"
        ) from error


DATABASE_FAILURES = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)
"""A lost connection, a database down, a full pool, a lock or deadlock timeout: the transaction
was rolled back, nothing happened, and the same request can be sent again (503)."""


def one_line(error: BaseException) -> str:
    """A driver's error message on one line, without SQLAlchemy's background link."""
    text = " ".join(str(error).split())
    return text.split(" (Background on this error")[0]
