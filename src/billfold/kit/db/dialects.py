"""What differs between SQLite, PostgreSQL and MariaDB when writing rows: upserts and row locks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

T = TypeVar("T", bound=tuple[Any, ...])


def _insert_for(dialect_name: str, table: sa.Table) -> Any:
    if dialect_name == "postgresql":
        return postgresql.insert(table)
    if dialect_name in ("mysql", "mariadb"):
        return mysql.insert(table)
    if dialect_name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"no upsert for dialect {dialect_name}")


def upsert(
    session: Session,
    table: sa.Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    key: Sequence[str],
    update: Iterable[str] | None = None,
) -> int:
    """Insert ``rows``; where a row with the same ``key`` (a primary key or unique constraint)
    exists, overwrite the ``update`` columns (default: every column not in ``key``).
    Returns the number of rows the statement reports as affected."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    statement = _insert_for(dialect, table).values(list(rows))
    columns = list(update) if update is not None else [c for c in rows[0] if c not in key]
    if not columns:
        return insert_ignore(session, table, rows, key=key)
    if dialect in ("mysql", "mariadb"):
        statement = statement.on_duplicate_key_update({c: statement.inserted[c] for c in columns})
    else:
        statement = statement.on_conflict_do_update(
            index_elements=list(key), set_={c: statement.excluded[c] for c in columns}
        )
    return session.execute(statement).rowcount


def increment(session: Session, table: sa.Table, key: Mapping[str, Any], column: str, by: int = 1) -> int:
    """Add ``by`` to ``column`` of the row ``key`` (creating it at ``by``) and return the new value,
    in one atomic statement (as ``upsert_row`` writes it). The row stays locked until the
    transaction ends. The statements are built once per dialect and table (the numbers of every
    order and invoice come from here)."""
    if by < 1:
        raise ValueError("increment by at least one")
    dialect = session.get_bind().dialect.name
    upsert, read = _increments(dialect, table, tuple(key), column)
    values = {**{f"key_{name}": value for name, value in key.items()}, "by": by}
    if read is None:
        return int(session.execute(upsert, values).scalar_one())
    session.execute(upsert, values)
    return int(session.execute(read, values).scalar_one())


@cache
def _increments(dialect: str, table: sa.Table, key: tuple[str, ...], column: str) -> tuple[Any, Any]:
    """``increment``'s statements, built once: the upsert, and on MariaDB the read of the value after it."""
    by = sa.bindparam("by", type_=table.c[column].type)
    statement = _insert_for(dialect, table).values(
        {**{name: sa.bindparam(f"key_{name}", type_=table.c[name].type) for name in key}, column: by}
    )
    if dialect in ("mysql", "mariadb"):
        where = [table.c[name] == sa.bindparam(f"key_{name}", type_=table.c[name].type) for name in key]
        return statement.on_duplicate_key_update([(column, table.c[column] + by)]), sa.select(table.c[column]).where(*where)
    return statement.on_conflict_do_update(index_elements=list(key), set_={column: table.c[column] + by}).returning(table.c[column]), None


def upsert_row(
    session: Session,
    table: sa.Table,
    key: Mapping[str, Any],
    insert: Mapping[str, Any],
    update: Sequence[tuple[str, Any]],
    column: str,
) -> Any:
    """Insert the row ``key`` with ``insert``, or, when it exists, set ``update`` (expressions of
    the row as it was); return ``column`` as it is afterwards. One atomic statement: ON CONFLICT
    DO UPDATE on PostgreSQL and SQLite, ON DUPLICATE KEY UPDATE on MariaDB, whose duplicate-key
    path takes the row's exclusive lock at once. (An UPDATE, then an INSERT when nothing matched
    — or an INSERT IGNORE, then an UPDATE — deadlocks on MariaDB when several transactions create
    the row together: each holds a shared lock from its duplicate-key error and waits to upgrade
    it.) MariaDB evaluates ``update`` left to right, each seeing the columns set before it, so an
    expression that reads another updated column must come before that column's assignment.
    The row stays locked until the transaction ends."""
    dialect = session.get_bind().dialect.name
    statement = _insert_for(dialect, table).values({**key, **insert})
    if dialect in ("mysql", "mariadb"):
        session.execute(statement.on_duplicate_key_update(list(update)))
        where = [table.c[name] == value for name, value in key.items()]
        return session.scalar(sa.select(table.c[column]).where(*where))
    statement = statement.on_conflict_do_update(index_elements=list(key), set_=dict(update)).returning(table.c[column])
    return session.execute(statement).scalar_one()


def insert_ignore(
    session: Session, table: sa.Table, rows: Sequence[Mapping[str, Any]], *, key: Sequence[str]
) -> int:
    """Insert ``rows``, silently skipping those whose ``key`` already exists.
    Returns how many rows were new."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    if dialect in ("mysql", "mariadb"):
        return _insert_ignore_mysql(session, table, rows)
    # One statement built the same for any number of rows, so compiled once; SQLAlchemy sends the
    # rows as one multi-row VALUES ("insertmanyvalues"). RETURNING counts what was new: rowcount
    # is not reliable for a multi-row insert.
    statement = _insert_for(dialect, table).on_conflict_do_nothing(index_elements=list(key)).returning(table.c[key[0]])
    return len(session.execute(statement, list(rows)).all())


_MYSQL_DUPLICATE_KEY = 1062


def _insert_ignore_mysql(session: Session, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> int:
    # MariaDB has no ON CONFLICT DO NOTHING. INSERT IGNORE would also swallow NOT NULL and CHECK
    # failures, and ON DUPLICATE KEY UPDATE reports duplicates as affected rows (SQLAlchemy
    # connects with CLIENT_FOUND_ROWS), so each row gets a savepoint and only a duplicate key
    # is forgiven. All rows go first in one statement (no key taken, the usual case: one round
    # trip); only when a key was taken are they tried again one by one.
    if len(rows) > 1:
        try:
            with session.begin_nested():
                session.execute(sa.insert(table), list(rows))
            return len(rows)
        except sa.exc.IntegrityError as error:
            if _mysql_error_code(error) != _MYSQL_DUPLICATE_KEY:
                raise
    inserted = 0
    for row in rows:
        try:
            with session.begin_nested():
                session.execute(sa.insert(table).values(**row))
            inserted += 1
        except sa.exc.IntegrityError as error:
            if _mysql_error_code(error) != _MYSQL_DUPLICATE_KEY:
                raise
    return inserted


def _mysql_error_code(error: sa.exc.DBAPIError) -> object:
    return error.orig.args[0] if error.orig is not None and error.orig.args else None


def for_update(statement: Select[T], session: Session, *, skip_locked: bool = False) -> Select[T]:
    """Lock the selected rows until the transaction ends. ``skip_locked`` passes over rows another
    transaction holds, so several workers can claim work side by side. SQLite locks the whole
    database on write instead, so the statement is left as it is there."""
    if session.get_bind().dialect.name == "sqlite":
        return statement
    return statement.with_for_update(skip_locked=skip_locked)
