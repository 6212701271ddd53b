"""Migrations up and down on each database, the models agreeing with them, and the ``billfold db``
commands an operator runs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

import billfold.migrations
from billfold.kit.db import create_engine
from billfold.kit.db.base import Base
from tests import databases, spec
from tests.cli import assert_one_line_error, run
from tests.test_schema_matches_spec import OWN_TABLES

pytestmark = pytest.mark.every_database

SPEC_TABLES = set(spec.load().tables)
ALL_TABLES = SPEC_TABLES | OWN_TABLES
HEAD = ScriptDirectory(str(Path(billfold.migrations.__file__).parent)).get_current_head()


@pytest.fixture
def scratch(backend: str, tmp_path: Path) -> Iterator[Engine]:
    """An empty database of its own, for tests that migrate."""
    url = databases.fresh_database(backend, f"billfold_scratch_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}", tmp_path)
    engine = create_engine(url)
    yield engine
    engine.dispose()
    databases.drop_database(backend, url)


def _tables(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def _trigger_count(engine: Engine) -> int:
    query = {
        "sqlite": "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'",
        "postgresql": "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal",
        "mariadb": "SELECT count(*) FROM information_schema.triggers WHERE trigger_schema = DATABASE()",
    }["mariadb" if engine.dialect.name in ("mysql", "mariadb") else engine.dialect.name]
    with engine.connect() as connection:
        return connection.execute(sa.text(query)).scalar_one()


def test_the_migration_goes_up_down_and_up_again(scratch: Engine) -> None:
    databases.migrate(scratch)
    assert _tables(scratch) == ALL_TABLES | {"alembic_version"}
    assert _trigger_count(scratch) > 0

    databases.downgrade(scratch, "base")
    assert _tables(scratch) <= {"alembic_version"}
    assert _trigger_count(scratch) == 0
    if scratch.dialect.name == "postgresql":
        with scratch.connect() as connection:
            assert connection.execute(
                sa.text("SELECT count(*) FROM pg_proc WHERE proname = 'billfold_touch_updated_at'")
            ).scalar_one() == 0

    databases.migrate(scratch)
    assert _tables(scratch) == ALL_TABLES | {"alembic_version"}


def _differences(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def test_the_models_describe_the_migrated_schema(scratch: Engine, engine: Engine) -> None:
    """What the ORM believes about each table is what the migrations built: no difference in
    tables, columns, types, nullability, indexes, unique constraints or foreign keys. Checked on a
    database migrated here, and on the suite's own, which is a copy of a migrated template
    (tests/databases.migrated_copy): the copy holds the same schema and triggers."""
    databases.migrate(scratch)
    assert _differences(scratch) == []
    assert _differences(engine) == []
    assert _tables(engine) == _tables(scratch) and _trigger_count(engine) == _trigger_count(scratch)


def test_db_commands_migrate_report_and_roll_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    assert "none (not migrated" in run("db", "current", database_url=url).stdout

    upgraded = run("db", "upgrade", database_url=url)
    assert upgraded.code == 0, upgraded
    assert f"migrated from empty to {HEAD}" in upgraded.stdout
    assert run("db", "current", database_url=url).stdout.strip() == f"{HEAD} (head)"
    assert f"already at revision {HEAD}" in run("db", "upgrade", database_url=url).stdout

    one_back = run("db", "downgrade", database_url=url)
    assert one_back.code == 0 and "down to" in one_back.stdout
    assert "latest is" in run("db", "current", database_url=url).stdout
    assert run("db", "upgrade", database_url=url).code == 0

    downgraded = run("db", "downgrade", "base", database_url=url)
    assert downgraded.code == 0, downgraded
    assert "none (not migrated" in run("db", "current", database_url=url).stdout
    assert _tables(create_engine(url)) <= {"alembic_version"}


@pytest.mark.parametrize(
    ("url", "phrases"),
    [
        ("not a url", ("malformed database URL",)),
        ("postgresql://billfold@db.example:port/shop", ("malformed database URL",)),
        ("oracle://scott@localhost/shop", ("unsupported database 'oracle'",)),
        ("postgresql://postgres@127.0.0.1:1/shop", ("cannot reach the database", "127.0.0.1:1")),
        ("mariadb://root@127.0.0.1:1/shop", ("cannot reach the database", "127.0.0.1:1")),
        ("sqlite:////no/such/folder/shop.db", ("/no/such/folder", "does not exist")),
    ],
    ids=["garbage", "bad-port", "unsupported", "postgresql-unreachable", "mariadb-unreachable", "sqlite-no-folder"],
)
def test_a_bad_database_url_ends_in_one_line_and_a_non_zero_exit(url: str, phrases: tuple[str, ...]) -> None:
    for command in (("db", "upgrade"), ("db", "current"), ("db", "downgrade"), ("demo",), ("serve",)):
        assert_one_line_error(run(*command, database_url=url), *phrases)


def test_a_password_in_a_bad_url_is_not_printed() -> None:
    result = run("db", "current", database_url="postgresql://billfold:s3cret-pw@127.0.0.1:1/shop")
    assert_one_line_error(result, "cannot reach the database")
    assert "s3cret-pw" not in result.stderr


def test_an_unknown_revision_is_refused_in_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    assert_one_line_error(run("db", "upgrade", "nosuchrevision", database_url=url), "nosuchrevision")
    assert_one_line_error(run("db", "downgrade", database_url=url), "nothing to downgrade")
    run("db", "upgrade", database_url=url)
    assert_one_line_error(run("db", "downgrade", "nosuchrevision", database_url=url), "nosuchrevision")
    assert run("db", "current", database_url=url).stdout.strip() == f"{HEAD} (head)", "a refused command changes nothing"


def test_serving_an_unmigrated_database_is_refused(tmp_path: Path) -> None:
    assert_one_line_error(run("serve", database_url=f"sqlite:///{tmp_path / 'shop.db'}", process=True), "billfold db upgrade")


def test_recovery_addresses_never_confirmed_are_forgotten_by_0013(scratch: Engine) -> None:
    """Recovery addresses set the old way (no confirmation) would still receive password resets;
    0013 clears them and keeps the ones confirmed through the link."""
    from sqlalchemy.orm import Session

    from billfold.audit import audit
    from tests import factories as make

    databases.migrate(scratch, "0012")
    with Session(scratch) as session, session.begin():
        planted = make.user(session, recovery_email="mallory@attacker.example", is_verified=True)
        confirmed = make.user(session, recovery_email="ada@backup.example", is_verified=True)
        audit(session, "user", confirmed.id, "recovery_email_set")
        none = make.user(session)
        ids = planted.id, confirmed.id, none.id
    databases.migrate(scratch, "0013")
    with scratch.connect() as connection:
        rows = dict(connection.execute(sa.text("SELECT id, recovery_email FROM users")).all())
    assert [rows[i] for i in ids] == [None, "ada@backup.example", None]


def test_0014_adds_the_provider_event_id_and_its_downgrade_keeps_the_webhooks(scratch: Engine) -> None:
    """Webhooks stored before 0014 stay, with no event id; going back down keeps them too."""
    databases.migrate(scratch, "0013")
    with scratch.begin() as connection:
        connection.execute(sa.text("INSERT INTO payment_providers (id, display_name) VALUES ('sandbox', 'Sandbox')"))
        connection.execute(sa.text(
            "INSERT INTO payment_webhooks (id, provider_id, event_type, payload) "
            "VALUES ('whk_1', 'sandbox', 'charge.succeeded', '{}')"
        ))
    databases.migrate(scratch, "0014")
    with scratch.connect() as connection:
        assert connection.execute(sa.text("SELECT id, provider_event_id FROM payment_webhooks")).all() == [("whk_1", None)]
    databases.downgrade(scratch, "0013")
    assert "provider_event_id" not in {c["name"] for c in sa.inspect(scratch).get_columns("payment_webhooks")}
    with scratch.connect() as connection:
        assert connection.execute(sa.text("SELECT id FROM payment_webhooks")).scalars().all() == ["whk_1"]
