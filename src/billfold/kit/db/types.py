"""Column types and server-side expressions that mean the same thing on SQLite, PostgreSQL and
MariaDB."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

from billfold.kit.clock import UTC, ensure_utc


# SQLite keeps TIMESTAMP as text. Whole seconds, the same text SQLite's CURRENT_TIMESTAMP
# writes, so rows written by Billfold and rows defaulted by the database sort together.
class _SQLiteTimestamp(sqlite.DATETIME):
    __visit_name__ = "TIMESTAMP"  # the column's declared type stays the spec's TIMESTAMP


_SQLITE_TIMESTAMP = _SQLiteTimestamp(
    storage_format="%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d",
)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """The spec's ``TIMESTAMP``: UTC, whole seconds, timezone-aware in Python.

    Values are truncated to the second on the way in, because MariaDB's ``TIMESTAMP`` keeps
    whole seconds; doing it everywhere means a value reads back the same on every database.
    A naive datetime is refused: its time zone would be a guess.
    """

    impl = sa.TIMESTAMP
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(_SQLITE_TIMESTAMP)
        return dialect.type_descriptor(sa.TIMESTAMP(timezone=False))

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return ensure_utc(value).replace(tzinfo=None, microsecond=0)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# JSON columns: Python None is SQL NULL (not the JSON literal null), as a nullable column means.
JSONType = sa.JSON(none_as_null=True)


class current_timestamp_utc(FunctionElement[datetime]):
    """``DEFAULT CURRENT_TIMESTAMP`` of the spec, stored as UTC on every database."""

    type = sa.TIMESTAMP()
    inherit_cache = True


class current_timestamp_utc_on_update(FunctionElement[datetime]):
    """``DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP``. Only MariaDB can say the
    second half in a column; PostgreSQL and SQLite get a trigger from the migrations."""

    type = sa.TIMESTAMP()
    inherit_cache = True


@compiles(current_timestamp_utc)
@compiles(current_timestamp_utc_on_update)
def _current_timestamp_default(element: Any, compiler: Any, **kw: Any) -> str:
    # SQLite's CURRENT_TIMESTAMP is UTC already.
    return "CURRENT_TIMESTAMP"


@compiles(current_timestamp_utc, "postgresql")
@compiles(current_timestamp_utc_on_update, "postgresql")
def _current_timestamp_pg(element: Any, compiler: Any, **kw: Any) -> str:
    # TIMESTAMP WITHOUT TIME ZONE holds UTC whatever the session's TimeZone setting is.
    return PG_NOW_UTC


@compiles(current_timestamp_utc, "mysql")
@compiles(current_timestamp_utc, "mariadb")
def _current_timestamp_mysql(element: Any, compiler: Any, **kw: Any) -> str:
    # MariaDB's TIMESTAMP is stored as UTC and shown in the session's time zone (set to UTC).
    return "CURRENT_TIMESTAMP"


@compiles(current_timestamp_utc_on_update, "mysql")
@compiles(current_timestamp_utc_on_update, "mariadb")
def _current_timestamp_on_update_mysql(element: Any, compiler: Any, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP"


PG_NOW_UTC = "date_trunc('second', timezone('UTC', CURRENT_TIMESTAMP))"
