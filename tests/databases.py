"""Test databases: SQLite always, PostgreSQL and MariaDB when BILLFOLD_TEST_DATABASES names them.

Each pytest worker gets its own database on each server, created fresh, so workers never see
each other's rows. A named server that cannot be reached fails the tests that need it; it is
never skipped.
"""

from __future__ import annotations

import fcntl
import os
import shutil
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


def migrated_copy(backend: str, name: str, sqlite_dir: Path, shared_dir: Path) -> URL:
    """A database called ``name`` holding what ``billfold db upgrade`` builds, copied from a
    template that the first worker of the run migrates (one migration per database server and run
    instead of one per worker and database: a migration costs 1 to 5 s). ``shared_dir`` is the
    run's folder every worker sees. PostgreSQL copies with CREATE DATABASE ... TEMPLATE, SQLite
    copies the file, MariaDB recreates each table and trigger from SHOW CREATE and copies the rows.
    The copies are tested as the migrated schema is (test_schema_matches_spec, test_migrations'
    models-against-schema check, the constraint tests run on them)."""
    with (shared_dir / f"template-{backend}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held while copying too: PostgreSQL refuses a template in use
        marker = shared_dir / f"template-{backend}.done"
        template_name = "billfold_template"
        if backend == "sqlite":
            template = shared_dir / f"{run_prefix()}{template_name}.db"
            if not marker.exists():
                engine = create_engine(fresh_database("sqlite", template_name, shared_dir))
                migrate(engine)
                engine.dispose()
                marker.touch()
            url = fresh_database("sqlite", name, sqlite_dir)
            shutil.copyfile(template, url.database)
            return url
        server = parse_database_url(SERVER_URLS[backend])
        if not marker.exists():
            engine = create_engine(fresh_database(backend, template_name, shared_dir), poolclass=sa.pool.NullPool)
            migrate(engine)
            engine.dispose()
            marker.touch()
        template_name = run_prefix() + template_name
        name = run_prefix() + name
        drop_database(backend, server.set(database=name))
        with _admin(backend) as connection:
            if backend == "postgresql":
                connection.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"')
            else:
                _copy_mariadb(connection, template_name, name)
        return server.set(database=name)


def _copy_mariadb(connection: sa.Connection, source: str, target: str) -> None:
    connection.exec_driver_sql(f"CREATE DATABASE `{target}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    tables = connection.exec_driver_sql(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s AND table_type = 'BASE TABLE'", (source,)
    ).scalars().all()
    triggers = connection.exec_driver_sql(
        "SELECT trigger_name FROM information_schema.triggers WHERE trigger_schema = %s "
        "ORDER BY event_object_table, action_timing, event_manipulation, action_order", (source,)
    ).scalars().all()
    connection.exec_driver_sql("SET SESSION foreign_key_checks = 0")
    try:
        for table in tables:
            ddl = connection.exec_driver_sql(f"SHOW CREATE TABLE `{source}`.`{table}`").one()[1]
            connection.exec_driver_sql(f"USE `{target}`")
            connection.exec_driver_sql(ddl.replace("%", "%%"))
            connection.exec_driver_sql(f"INSERT INTO `{target}`.`{table}` SELECT * FROM `{source}`.`{table}`")
        for trigger in triggers:
            row = connection.exec_driver_sql(f"SHOW CREATE TRIGGER `{source}`.`{trigger}`").mappings().one()
            connection.exec_driver_sql("SET SESSION sql_mode = %s", (row["sql_mode"],))
            connection.exec_driver_sql(f"USE `{target}`")
            connection.exec_driver_sql(row["SQL Original Statement"].replace("%", "%%"))
    finally:
        connection.exec_driver_sql("SET SESSION foreign_key_checks = 1")
