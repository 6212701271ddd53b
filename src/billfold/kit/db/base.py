"""The declarative base every model derives from, and the column helpers the spec repeats."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from billfold.kit import clock
from billfold.kit.db.types import UTCDateTime, current_timestamp_utc, current_timestamp_utc_on_update
from billfold.kit.ids import new_id

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Every table on MariaDB: InnoDB, full UTF-8, and binary collation so that UNIQUE and equality
# compare exactly as they do on PostgreSQL and SQLite (case-sensitive, accent-sensitive).
MYSQL_TABLE_OPTIONS: dict[str, str] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


def table_args(*items: Any) -> tuple[Any, ...]:
    """``__table_args__`` with the table options every table shares."""
    return (*items, dict(MYSQL_TABLE_OPTIONS))


def id_column(prefix: str) -> Mapped[str]:
    """``id VARCHAR(255) PRIMARY KEY``, filled with a new prefixed id when not given."""
    return mapped_column(sa.String(255), primary_key=True, default=lambda: new_id(prefix))


def created_at_column() -> Mapped[datetime]:
    """``created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP``; Billfold fills it from its clock."""
    return mapped_column(UTCDateTime, nullable=False, default=clock.now, server_default=current_timestamp_utc())


def updated_at_column() -> Mapped[datetime]:
    """``updated_at ... ON UPDATE CURRENT_TIMESTAMP``. Billfold sets it from its clock on every
    ORM update; the database sets it on any other update that leaves it alone (MariaDB by
    ``ON UPDATE``, PostgreSQL and SQLite by the triggers the migrations install)."""
    return mapped_column(
        UTCDateTime,
        nullable=False,
        default=clock.now,
        onupdate=clock.now,
        server_default=current_timestamp_utc_on_update(),
    )
