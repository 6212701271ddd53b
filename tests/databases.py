"""Test databases: SQLite always, PostgreSQL and MariaDB when BILLFOLD_TEST_DATABASES names them.

Each pytest worker gets its own database on each server, created fresh, so workers never see
each other's rows. A named server that cannot be reached fails the tests that need it; it is
never skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import URL, Engine

from billfold.kit.db import create_engine, parse_database_url
from billfold.migrations import alembic_config

ALL = ("sqlite", "postgresql", "mariadb")

SERVER_URLS = {
    "postgresql": os.environ.get("BILLFOLD_TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    "mariadb": os.environ.get("BILLFOLD_TEST_MARIADB_URL", "mariadb://root@127.0.0.1:3306/"),
}


def selected() -> list[str]:
    """SQLite, plus the databases BILLFOLD_TEST_DATABASES names (comma-separated)."""
    named = [n.strip().lower() for n in os.environ.get("BILLFOLD_TEST_DATABASES", "").split(",") if n.strip()]
    aliases = {"postgres": "postgresql", "pg": "postgresql", "mysql": "mariadb"}
    named = [aliases.get(n, n) for n in named]
    unknown = sorted(set(named) - set(ALL))
    if unknown:
        raise SystemExit(f"BILLFOLD_TEST_DATABASES names unknown databases {unknown}; use {', '.join(ALL)}")
    return [n for n in ALL if n == "sqlite" or n in named]


def run_prefix() -> str:
    """BILLFOLD_TEST_RUN, when set, goes into every database name, so that several test runs
    (in several checkouts) can share the servers without dropping each other's databases."""
    run = "".join(c for c in os.environ.get("BILLFOLD_TEST_RUN", "").lower() if c.isalnum())
    return f"{run}_" if run else ""


def fresh_database(backend: str, name: str, sqlite_dir: Path) -> URL:
    """Create an empty database called ``name`` (dropping any left from an earlier run)."""
    name = run_prefix() + name
    if backend == "sqlite":
        path = sqlite_dir / f"{name}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return parse_database_url(f"sqlite:///{path}")
    server = parse_database_url(SERVER_URLS[backend])
    drop_database(backend, server.set(database=name))
    with _admin(backend) as connection:
        if backend == "postgresql":
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        else:
            connection.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    return server.set(database=name)


def drop_database(backend: str, url: URL) -> None:
    if backend == "sqlite":
        return
    with _admin(backend) as connection:
        if backend == "postgresql":
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
        else:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS `{url.database}`")


@contextmanager
def _admin(backend: str) -> Iterator[sa.Connection]:
    """A connection to the server itself, outside any transaction, for CREATE/DROP DATABASE."""
    admin = create_engine(SERVER_URLS[backend], isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as connection:
            yield connection
    finally:
        admin.dispose()


def migrate(engine: Engine, revision: str = "head") -> None:
    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    command.downgrade(alembic_config(engine), revision)
