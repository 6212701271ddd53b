"""Rows made with plain SQL, the way any other program would write them: only the columns the
spec requires (NOT NULL without a default) are given, and parents are made as needed."""

from __future__ import annotations

import itertools
import json
from typing import Any

import sqlalchemy as sa

from tests import spec

SPEC = spec.load()
_counter = itertools.count(1)

# Owner/purpose CHECKs: which reference a bare row gets so that it satisfies its table's CHECK.
_CHECK_DEFAULT = {
    "addresses": "user_id",
    "provider_customers": "user_id",
    "payment_methods": "user_id",
    "orders": "user_id",
    "subscriptions": "user_id",
    "payments": "order_id",
}
FIXED = {
    "country": "US",
    "currency": "USD",
    "last_four": "4242",
    "expiry_month": "12",
    "expiry_year": "2030",
    "user_type": "individual",
    "status": "pending",
}


def value_for(column: spec.Column) -> Any:
    n = next(_counter)
    if column.name in FIXED:
        return FIXED[column.name]
    if column.type == "VARCHAR":
        return f"{column.name}-{n}"[: column.length]
    if column.type == "TEXT":
        return f"{column.name} {n}"
    if column.type in ("BIGINT", "INTEGER"):
        return 100 + n
    if column.type == "BOOLEAN":
        return True
    if column.type == "JSON":
        return json.dumps({"n": n})
    if column.type == "TIMESTAMP":
        return "2026-01-02 03:04:05"
    if column.type == "DATE":
        return "2026-01-01"
    if column.type == "DECIMAL":
        return "12.34"
    raise AssertionError(column.type)


def insert(connection: sa.Connection, table_name: str, **given: Any) -> dict[str, Any]:
    """Insert a row into ``table_name`` with raw SQL and return the values written. Required
    references are made too; ``given`` overrides (``None`` leaves a nullable column NULL)."""
    table = SPEC.tables[table_name]
    values: dict[str, Any] = {}
    references = {fk.column: fk for fk in table.foreign_keys}
    wanted = dict(given)
    check_column = _CHECK_DEFAULT.get(table_name)
    pair = ("order_id", "subscription_id") if table_name == "payments" else ("user_id", "organization_id")
    if check_column and not any(c in wanted for c in pair):
        wanted[check_column] = _MAKE
    for column in table.columns:
        if column.name in wanted:
            value = wanted[column.name]
            if value is _MAKE:
                value = insert(connection, references[column.name].table)["id"]
            if value is not None:
                values[column.name] = value
            continue
        if column.nullable or column.default is not None:
            continue
        if column.name in references:
            values[column.name] = insert(connection, references[column.name].table)["id"]
        elif column.primary_key and table_name == "payment_providers":
            values[column.name] = f"prov_{next(_counter)}"
        elif column.primary_key:
            values[column.name] = f"{table_name[:4]}_{next(_counter):08d}"
        else:
            values[column.name] = value_for(column)
    names = ", ".join(values)
    placeholders = ", ".join(f":{name}" for name in values)
    connection.execute(sa.text(f"INSERT INTO {table_name} ({names}) VALUES ({placeholders})"), values)
    return values


def get(connection: sa.Connection, table_name: str, row_id: str) -> dict[str, Any] | None:
    row = connection.execute(sa.text(f"SELECT * FROM {table_name} WHERE id = :id"), {"id": row_id}).mappings().first()
    return dict(row) if row is not None else None


class _Make:
    def __repr__(self) -> str:
        return "MAKE"


MAKE: Any = _Make()
_MAKE = MAKE


def refused(connection: sa.Connection, statement: str, params: dict[str, Any] | None = None) -> str | None:
    """Run ``statement`` in a savepoint; return the database's error if it refused, else None
    (leaving the statement's effect in place)."""
    savepoint = connection.begin_nested()
    try:
        connection.execute(sa.text(statement), params or {})
    except sa.exc.IntegrityError as error:  # CHECK, UNIQUE, NOT NULL and FK refusals alike
        savepoint.rollback()
        return str(error.orig)
    savepoint.commit()
    return None
