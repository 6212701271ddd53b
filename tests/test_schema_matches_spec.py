"""The migrated schema on each database holds every item of the spec: columns with their types,
nullability and defaults, primary keys, foreign keys with their ON DELETE actions, UNIQUE and
CHECK constraints, the recommended indexes, and what makes updated_at move."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.models import Base
from tests import spec

pytestmark = pytest.mark.every_database

SPEC = spec.load()
TABLES = sorted(SPEC.tables)

# MariaDB cannot express these CHECKs (error 1901); triggers enforce them there instead.
MARIADB_TRIGGER_CHECKS = {"orders", "payments"}


def _type_matches(backend: str, column: spec.Column, reflected: sa.types.TypeEngine) -> bool:
    compiled = reflected.compile(dialect=_dialect(backend)).upper()
    if column.type == "VARCHAR":
        return compiled.startswith("VARCHAR") and getattr(reflected, "length", None) == column.length
    if column.type == "TEXT":
        return compiled == "TEXT"
    if column.type == "BOOLEAN":
        return compiled in ("BOOLEAN", "TINYINT(1)", "BOOL")
    if column.type == "BIGINT":
        return compiled == "BIGINT" or compiled.startswith("BIGINT(")
    if column.type == "INTEGER":
        return compiled in ("INTEGER", "INT") or compiled.startswith("INTEGER(") or compiled.startswith("INT(")
    if column.type == "TIMESTAMP":
        return compiled in ("TIMESTAMP", "TIMESTAMP WITHOUT TIME ZONE")
    if column.type == "DATE":
        return compiled == "DATE"
    if column.type == "DECIMAL":
        return (compiled.startswith("DECIMAL") or compiled.startswith("NUMERIC")) and (
            reflected.precision,
            reflected.scale,
        ) == (column.length, column.scale)
    if column.type == "JSON":
        # MariaDB's JSON is an alias of LONGTEXT with a json_valid() CHECK (tested below).
        return compiled == "JSON" or (backend == "mariadb" and compiled == "LONGTEXT")
    raise AssertionError(f"the spec uses a type the test does not know: {column.type}")


def _dialect(backend: str) -> sa.Dialect:
    from sqlalchemy.dialects import mysql, postgresql, sqlite

    return {"sqlite": sqlite.dialect(), "postgresql": postgresql.dialect(), "mariadb": mysql.dialect()}[backend]


def _default_matches(backend: str, written: str | None, reflected: str | None) -> bool:
    if written is None:
        return reflected is None or reflected.upper() == "NULL"
    assert reflected is not None
    found = reflected.strip().strip("()").lower()
    if written.upper() == "CURRENT_TIMESTAMP":
        if backend == "postgresql":  # stored as UTC, whatever the session's time zone
            return "current_timestamp" in found and "utc" in found
        return found in ("current_timestamp", "current_timestamp()")
    if written.lower() in ("false", "true"):
        truth = written.lower() == "true"
        return found in (("true", "1") if truth else ("false", "0"))
    if written.startswith("'"):
        value = written.strip("'").lower()
        return re.sub(r"::[\w ]+$", "", found).strip("'") == value
    return found == written.lower()


@pytest.fixture
def inspector(engine: Engine) -> sa.Inspector:
    return sa.inspect(engine)


# Tables Billfold adds beyond the spec: the models' tables that the spec does not have.
OWN_TABLES = set(Base.metadata.tables) - set(SPEC.tables)
SCHEMA_DOC = Path(__file__).resolve().parents[1] / "docs" / "schema.md"


# Columns and unique keys Billfold adds to the spec's tables (after the spec's own columns). Their
# types and nullability are the models', which test_migrations holds against the migrated schema.
OWN_COLUMNS = {
    name: [c.name for c in table.columns if c.name not in SPEC.tables[name].column_names]
    for name, table in Base.metadata.tables.items()
    if name in SPEC.tables
}
OWN_UNIQUES = {
    name: {tuple(c.name for c in index.columns) for index in table.indexes if index.unique}
    - {tuple(u) for u in SPEC.tables[name].uniques}
    for name, table in Base.metadata.tables.items()
    if name in SPEC.tables
}


def test_the_database_has_the_spec_tables_and_only_its_own_besides(inspector: sa.Inspector) -> None:
    assert set(inspector.get_table_names()) - {"alembic_version"} == set(SPEC.tables) | OWN_TABLES


def test_every_table_billfold_adds_is_described_in_the_schema_docs() -> None:
    text = SCHEMA_DOC.read_text()
    assert OWN_TABLES, "the sign-in tables at least"
    assert sorted(t for t in OWN_TABLES if f"| `{t}` |" not in text) == []


def test_every_column_and_unique_key_billfold_adds_to_a_spec_table_is_described_in_the_schema_docs() -> None:
    text = SCHEMA_DOC.read_text()
    columns = [f"{t}.{c}" for t, added in OWN_COLUMNS.items() for c in added]
    assert "payment_webhooks.provider_event_id" in columns
    assert [c for c in columns if f"| `{c}` |" not in text] == []
    keys = [
        index.name for name in SPEC.tables for index in Base.metadata.tables[name].indexes
        if index.unique and tuple(c.name for c in index.columns) in OWN_UNIQUES[name]
    ]
    assert keys and [k for k in keys if f"`{k}`" not in text] == []


@pytest.mark.parametrize("table_name", TABLES)
def test_columns_have_the_spec_type_nullability_and_default(
    backend: str, inspector: sa.Inspector, table_name: str
) -> None:
    expected = SPEC.tables[table_name]
    reflected = {c["name"]: c for c in inspector.get_columns(table_name)}
    assert list(reflected) == expected.column_names + OWN_COLUMNS[table_name], "columns and their order"
    for column in expected.columns:  # Billfold's own columns are the models' (test_migrations)
        found = reflected[column.name]
        assert _type_matches(backend, column, found["type"]), f"{table_name}.{column.name}: {found['type']!r}"
        assert found["nullable"] == column.nullable, f"{table_name}.{column.name} nullable"
        default = found["default"]
        if backend == "mariadb" and column.on_update_now:  # reflected with its ON UPDATE clause
            assert default is not None and default.lower().endswith(" on update current_timestamp()")
            default = default[: -len(" on update current_timestamp()")]
        assert _default_matches(backend, column.default, default), (
            f"{table_name}.{column.name} default {found['default']!r}, spec says {column.default}"
        )


@pytest.mark.parametrize("table_name", TABLES)
def test_primary_and_foreign_keys_are_the_spec(
    backend: str, engine: Engine, inspector: sa.Inspector, table_name: str
) -> None:
    expected = SPEC.tables[table_name]
    primary = inspector.get_pk_constraint(table_name)["constrained_columns"]
    assert primary == [c.name for c in expected.columns if c.primary_key]
    found = {
        (fk["constrained_columns"][0], fk["referred_table"], fk["referred_columns"][0], (fk["options"].get("ondelete") or "").upper())
        for fk in inspector.get_foreign_keys(table_name)
    }
    if backend == "mariadb":
        # SHOW CREATE TABLE leaves out ON DELETE RESTRICT (InnoDB's default); the catalog has it.
        with engine.connect() as connection:
            rules = dict(
                connection.execute(
                    sa.text(
                        "SELECT constraint_name, delete_rule FROM information_schema.referential_constraints "
                        "WHERE constraint_schema = DATABASE() AND table_name = :t"
                    ),
                    {"t": table_name},
                ).all()
            )
        found = {
            (fk["constrained_columns"][0], fk["referred_table"], fk["referred_columns"][0], rules[fk["name"]])
            for fk in inspector.get_foreign_keys(table_name)
        }
    assert found == {(fk.column, fk.table, fk.target_column, fk.on_delete) for fk in expected.foreign_keys}


@pytest.mark.parametrize("table_name", TABLES)
def test_unique_constraints_are_the_spec(inspector: sa.Inspector, table_name: str) -> None:
    expected = {tuple(u) for u in SPEC.tables[table_name].uniques}
    found = {tuple(u["column_names"]) for u in inspector.get_unique_constraints(table_name)}
    # A reflected unique index counts too (MariaDB reports some UNIQUE constraints that way).
    found |= {tuple(i["column_names"]) for i in inspector.get_indexes(table_name) if i["unique"]}
    assert found == expected | OWN_UNIQUES[table_name]


@pytest.mark.parametrize("table_name", TABLES)
def test_check_constraints_are_the_spec(backend: str, engine: Engine, inspector: sa.Inspector, table_name: str) -> None:
    expected = SPEC.tables[table_name].checks
    checks = [c["sqltext"] for c in inspector.get_check_constraints(table_name)]
    if backend == "mariadb":
        # The catalog lists column-level CHECKs too (the json_valid() behind each JSON column).
        with engine.connect() as connection:
            checks = list(
                connection.execute(
                    sa.text(
                        "SELECT check_clause FROM information_schema.check_constraints "
                        "WHERE constraint_schema = DATABASE() AND table_name = :t"
                    ),
                    {"t": table_name},
                ).scalars()
            )
        json_columns = [c.name for c in SPEC.tables[table_name].columns if c.type == "JSON"]
        json_checks = [c for c in checks if "json_valid" in c.lower()]
        assert len(json_checks) == len(json_columns), "every JSON column keeps valid JSON"
        checks = [c for c in checks if "json_valid" not in c.lower()]
        if table_name in MARIADB_TRIGGER_CHECKS:
            assert checks == []
            with engine.connect() as connection:
                triggers = set(
                    connection.execute(
                        sa.text(
                            "SELECT trigger_name FROM information_schema.triggers "
                            "WHERE event_object_schema = DATABASE() AND event_object_table = :t"
                        ),
                        {"t": table_name},
                    ).scalars()
                )
            assert {f"trg_{table_name}_{kind}_{when}" for kind in ["owner" if table_name == "orders" else "purpose"] for when in ("insert", "update")} <= triggers
            return

    def normal(text: str) -> str:
        return re.sub(r"[\s()`\"]", "", text).lower()

    assert sorted(normal(c) for c in checks) == sorted(normal(c) for c in expected)


def test_every_recommended_index_exists(inspector: sa.Inspector) -> None:
    for index in SPEC.indexes:
        found = {i["name"]: tuple(i["column_names"]) for i in inspector.get_indexes(index.table)}
        assert found.get(index.name) == index.columns, f"{index.name} on {index.table}"


@pytest.mark.parametrize(
    "table_name", [t for t in TABLES if any(c.on_update_now for c in SPEC.tables[t].columns)]
)
def test_updated_at_is_set_on_update_by_the_database(backend: str, engine: Engine, table_name: str) -> None:
    with engine.connect() as connection:
        if backend == "mariadb":
            extra = connection.execute(
                sa.text(
                    "SELECT extra FROM information_schema.columns WHERE table_schema = DATABASE() "
                    "AND table_name = :t AND column_name = 'updated_at'"
                ),
                {"t": table_name},
            ).scalar_one()
            assert "on update current_timestamp" in extra.lower()
        elif backend == "postgresql":
            assert connection.execute(
                sa.text("SELECT count(*) FROM pg_trigger WHERE tgname = :n AND NOT tgisinternal"),
                {"n": f"trg_{table_name}_updated_at"},
            ).scalar_one() == 1
        else:
            assert connection.execute(
                sa.text("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name = :n"),
                {"n": f"trg_{table_name}_updated_at"},
            ).scalar_one() == 1
