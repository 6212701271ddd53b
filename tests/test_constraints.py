"""Every CHECK, UNIQUE and ON DELETE action of the spec, exercised with plain SQL on each database:
insert rows, delete their parents, and watch what the database does."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from tests import rows, spec
from tests.rows import MAKE, insert, refused

pytestmark = pytest.mark.every_database

SPEC = spec.load()
FOREIGN_KEYS = [(t.name, fk) for t in SPEC.tables.values() for fk in t.foreign_keys]
CHECK_PAIRS = {
    "user_id IS NOT NULL OR organization_id IS NOT NULL": ("user_id", "organization_id"),
    "order_id IS NOT NULL OR subscription_id IS NOT NULL": ("order_id", "subscription_id"),
}
CHECKED_TABLES = [(t.name, CHECK_PAIRS[c]) for t in SPEC.tables.values() for c in t.checks]
UNIQUES = [(t.name, u) for t in SPEC.tables.values() for u in t.uniques]


def _check_pair(table_name: str, column: str) -> tuple[str, str] | None:
    for name, pair in CHECKED_TABLES:
        if name == table_name and column in pair:
            return pair
    return None


@pytest.mark.parametrize(
    ("table_name", "fk"), FOREIGN_KEYS, ids=[f"{t}.{fk.column}-{fk.on_delete}" for t, fk in FOREIGN_KEYS]
)
def test_deleting_a_parent_does_what_the_foreign_key_says(
    connection: sa.Connection, table_name: str, fk: spec.ForeignKey
) -> None:
    parent = insert(connection, fk.table)
    given = {fk.column: parent["id"]}
    pair = _check_pair(table_name, fk.column)
    if pair:  # give the row its other reference too, so SET NULL alone cannot break its CHECK
        given[next(c for c in pair if c != fk.column)] = MAKE
    child = insert(connection, table_name, **given)

    error = refused(connection, f"DELETE FROM {fk.table} WHERE id = :id", {"id": parent["id"]})

    after = rows.get(connection, table_name, child["id"])
    if fk.on_delete == "CASCADE":
        assert error is None
        assert after is None, "the child row goes with its parent"
    elif fk.on_delete == "SET NULL":
        assert error is None
        assert after is not None and after[fk.column] is None, "the child row stays, its reference cleared"
    else:
        assert error is not None, "RESTRICT refuses to delete a parent that is still referenced"
        assert rows.get(connection, fk.table, parent["id"]) is not None
        assert after is not None and after[fk.column] == parent["id"]


@pytest.mark.parametrize(("table_name", "pair"), CHECKED_TABLES, ids=[t for t, _ in CHECKED_TABLES])
def test_a_row_needs_one_of_its_two_references(connection: sa.Connection, table_name: str, pair: tuple[str, str]) -> None:
    first, second = pair
    table = SPEC.tables[table_name]
    required = {c.name for c in table.columns if not c.nullable and c.default is None}
    assert refused_insert(connection, table_name, {first: None, second: None}, required)

    row = insert(connection, table_name, **{first: MAKE})
    assert refused(connection, f"UPDATE {table_name} SET {first} = NULL WHERE id = :id", {"id": row["id"]})
    assert rows.get(connection, table_name, row["id"])[first] == row[first]

    only_second = insert(connection, table_name, **{first: None, second: MAKE})
    assert rows.get(connection, table_name, only_second["id"])[second] is not None


def refused_insert(connection: sa.Connection, table_name: str, nulls: dict[str, None], required: set[str]) -> str | None:
    """Try to insert a row with the columns in ``nulls`` left NULL; the database's refusal, if any."""
    savepoint = connection.begin_nested()
    try:
        insert(connection, table_name, **nulls)
    except sa.exc.IntegrityError as error:
        savepoint.rollback()
        return str(error.orig)
    savepoint.rollback()
    return None


# The spec's one contradiction: ON DELETE SET NULL on a column its table's CHECK needs. The
# database refuses such a delete on every backend (a CHECK on SQLite and PostgreSQL, triggers on
# MariaDB); `billfold customer erase` is the way to remove a customer who has records.


def test_deleting_the_only_owner_of_an_order_is_refused(connection: sa.Connection) -> None:
    user = insert(connection, "users")
    order = insert(connection, "orders", user_id=user["id"])
    assert refused(connection, "DELETE FROM users WHERE id = :id", {"id": user["id"]})
    assert rows.get(connection, "users", user["id"]) is not None
    assert rows.get(connection, "orders", order["id"])["user_id"] == user["id"]


def test_deleting_an_organization_that_alone_owns_an_order_is_refused(connection: sa.Connection) -> None:
    organization = insert(connection, "organizations")
    insert(connection, "orders", user_id=None, organization_id=organization["id"])
    assert refused(connection, "DELETE FROM organizations WHERE id = :id", {"id": organization["id"]})
    # ...and so is deleting its owner, whose deletion would cascade to the organization.
    assert refused(connection, "DELETE FROM users WHERE id = :id", {"id": organization["owner_user_id"]})
    assert rows.get(connection, "organizations", organization["id"]) is not None


def test_deleting_the_order_a_payment_is_for_is_refused(connection: sa.Connection) -> None:
    order = insert(connection, "orders")
    payment = insert(connection, "payments", order_id=order["id"])
    assert refused(connection, "DELETE FROM orders WHERE id = :id", {"id": order["id"]})
    assert rows.get(connection, "payments", payment["id"])["order_id"] == order["id"]


def test_deleting_the_subscription_a_payment_is_for_is_refused(connection: sa.Connection) -> None:
    subscription = insert(connection, "subscriptions")
    insert(connection, "payments", order_id=None, subscription_id=subscription["id"])
    assert refused(connection, "DELETE FROM subscriptions WHERE id = :id", {"id": subscription["id"]})
    # Deleting the subscriber would cascade to the subscription: refused for the same reason.
    assert refused(connection, "DELETE FROM users WHERE id = :id", {"id": subscription["user_id"]})
    assert rows.get(connection, "subscriptions", subscription["id"]) is not None


def test_deleting_a_provider_whose_subscription_another_provider_was_paid_for_is_refused(
    connection: sa.Connection,
) -> None:
    subscription = insert(connection, "subscriptions")
    insert(connection, "payments", order_id=None, subscription_id=subscription["id"])  # its own provider
    assert refused(connection, "DELETE FROM payment_providers WHERE id = :id", {"id": subscription["provider_id"]})


def test_a_parent_whose_children_keep_another_reference_can_go(connection: sa.Connection) -> None:
    user = insert(connection, "users")
    organization = insert(connection, "organizations")
    order = insert(connection, "orders", user_id=user["id"], organization_id=organization["id"])
    assert refused(connection, "DELETE FROM users WHERE id = :id", {"id": user["id"]}) is None
    assert rows.get(connection, "orders", order["id"])["user_id"] is None


@pytest.mark.parametrize(("table_name", "columns"), UNIQUES, ids=[f"{t}-{'+'.join(u)}" for t, u in UNIQUES])
def test_unique_columns_refuse_a_second_row_with_the_same_values(
    connection: sa.Connection, table_name: str, columns: tuple[str, ...]
) -> None:
    table = SPEC.tables[table_name]
    references = {fk.column for fk in table.foreign_keys}

    def fresh(column_name: str) -> object:
        if column_name in references:
            return MAKE
        return {"currency": "EUR", "snapshot_date": "2026-01-01", "cohort_month": "2026-01-01"}.get(
            column_name, rows.value_for(table.column(column_name))
        )

    first = insert(connection, table_name, **{c: fresh(c) for c in columns})
    same = {c: first[c] for c in columns}
    savepoint = connection.begin_nested()
    with pytest.raises(sa.exc.IntegrityError):
        insert(connection, table_name, **same)
    savepoint.rollback()
    last = columns[-1]
    apart = {"currency": "GBP", "snapshot_date": "2026-02-01", "cohort_month": "2026-02-01"}.get(last, fresh(last))
    insert(connection, table_name, **{**same, last: apart})  # one value apart is a different row


def test_snapshots_without_a_currency_are_not_deduplicated(connection: sa.Connection) -> None:
    """SQL treats NULLs as distinct, so UNIQUE (snapshot_date, metric_type, currency) lets two
    currency-less snapshots of one metric and day coexist, on every database alike."""
    insert(connection, "analytics_snapshots", snapshot_date="2026-03-01", metric_type="active_subscriptions", currency=None)
    insert(connection, "analytics_snapshots", snapshot_date="2026-03-01", metric_type="active_subscriptions", currency=None)
    count = connection.execute(
        sa.text("SELECT count(*) FROM analytics_snapshots WHERE metric_type = 'active_subscriptions'")
    ).scalar_one()
    assert count == 2


def _as_datetime(value: object) -> datetime:
    if isinstance(value, str):  # SQLite hands back its text
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _near_now(value: object) -> bool:
    return abs(_as_datetime(value) - datetime.now(timezone.utc)) < timedelta(minutes=2)


@pytest.mark.parametrize("table_name", sorted(SPEC.tables))
def test_a_raw_insert_that_omits_defaulted_columns_gets_the_spec_defaults(
    connection: sa.Connection, table_name: str
) -> None:
    row = insert(connection, table_name)
    stored = rows.get(connection, table_name, row["id"])
    for column in SPEC.tables[table_name].columns:
        if column.default is None or column.name in row:
            continue
        value = stored[column.name]
        if column.default.upper() == "CURRENT_TIMESTAMP":
            assert _near_now(value), f"{column.name} = {value!r}"
        elif column.default in ("true", "false"):
            assert bool(value) is (column.default == "true") and value in (0, 1, True, False), column.name
        elif column.default.startswith("'"):
            assert value == column.default.strip("'"), column.name
        else:
            assert value == int(column.default), column.name


TOUCHED = sorted(t.name for t in SPEC.tables.values() if any(c.on_update_now for c in t.columns))


def _plain_column(table_name: str) -> spec.Column:
    table = SPEC.tables[table_name]
    references = {fk.column for fk in table.foreign_keys}
    return next(
        c for c in table.columns
        if not c.primary_key and c.name not in references and c.type in ("VARCHAR", "TEXT")
        and c.name not in ("created_at", "updated_at")
    )


def _changed(column: spec.Column) -> str:
    """A value the column surely did not hold, so the row really changes (MariaDB's ON UPDATE
    leaves a row alone when an UPDATE changes nothing)."""
    return f"changed {rows.value_for(spec.Column(**{**column.__dict__, 'name': 'x'}))}"[: column.length or 100]


@pytest.mark.parametrize("table_name", TOUCHED)
def test_updated_at_moves_on_a_raw_update_and_created_at_does_not(connection: sa.Connection, table_name: str) -> None:
    long_ago = "2020-01-01 00:00:00"
    row = insert(connection, table_name, created_at=long_ago, updated_at=long_ago)
    column = _plain_column(table_name)
    connection.execute(
        sa.text(f"UPDATE {table_name} SET {column.name} = :v WHERE id = :id"), {"v": _changed(column), "id": row["id"]}
    )
    stored = rows.get(connection, table_name, row["id"])
    assert _near_now(stored["updated_at"]), stored["updated_at"]
    assert _as_datetime(stored["created_at"]) == datetime(2020, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize("table_name", TOUCHED)
def test_an_update_that_sets_updated_at_keeps_that_value(connection: sa.Connection, table_name: str) -> None:
    row = insert(connection, table_name)
    column = _plain_column(table_name)
    connection.execute(
        sa.text(f"UPDATE {table_name} SET {column.name} = :v, updated_at = :at WHERE id = :id"),
        {"v": _changed(column), "at": "2021-05-06 07:08:09", "id": row["id"]},
    )
    stored = rows.get(connection, table_name, row["id"])
    assert _as_datetime(stored["updated_at"]) == datetime(2021, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
