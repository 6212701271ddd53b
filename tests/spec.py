"""The spec's DDL (docs/spec/payment-system-schema.md, a copy of the contract), read into plain
data so the tests can hold every database's schema against it item by item."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

SPEC_PATH = Path(__file__).resolve().parent.parent / "docs" / "spec" / "payment-system-schema.md"


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # upper case, e.g. VARCHAR, TEXT, BOOLEAN, BIGINT, INTEGER, TIMESTAMP, DECIMAL, JSON, DATE
    length: int | None  # VARCHAR length, or DECIMAL precision
    scale: int | None
    nullable: bool
    default: str | None  # as written: CURRENT_TIMESTAMP, false, true, 0, 'USD'
    on_update_now: bool
    primary_key: bool
    unique: bool


@dataclass(frozen=True)
class ForeignKey:
    column: str
    table: str
    target_column: str
    on_delete: str


@dataclass
class Table:
    name: str
    columns: list[Column] = field(default_factory=list)
    foreign_keys: list[ForeignKey] = field(default_factory=list)
    uniques: list[tuple[str, ...]] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


@dataclass(frozen=True)
class Index:
    name: str
    table: str
    columns: tuple[str, ...]


@dataclass
class Spec:
    tables: dict[str, Table]
    indexes: list[Index]


_TYPE = re.compile(r"^(?P<type>[A-Z]+)(?:\((?P<a>\d+)(?:,\s*(?P<b>\d+))?\))?", re.I)


def _strip_comment(line: str) -> str:
    return line.split("--", 1)[0].strip().rstrip(",").strip()


def _parse_column(text: str) -> Column:
    name, rest = text.split(None, 1)
    match = _TYPE.match(rest)
    assert match, text
    type_name = match.group("type").upper()
    type_name = {"INT": "INTEGER"}.get(type_name, type_name)
    rest_upper = rest.upper()
    default = None
    default_match = re.search(r"\bDEFAULT\s+('[^']*'|[\w.]+)", rest, re.I)
    if default_match:
        default = default_match.group(1)
    return Column(
        name=name,
        type=type_name,
        length=int(match.group("a")) if match.group("a") else None,
        scale=int(match.group("b")) if match.group("b") else None,
        nullable="NOT NULL" not in rest_upper and "PRIMARY KEY" not in rest_upper,
        default=default,
        on_update_now="ON UPDATE CURRENT_TIMESTAMP" in rest_upper,
        primary_key="PRIMARY KEY" in rest_upper,
        unique=re.search(r"\bUNIQUE\b", rest_upper) is not None,
    )


def _cols(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(","))


@lru_cache(maxsize=1)
def load() -> Spec:
    text = SPEC_PATH.read_text()
    sql = "\n".join(re.findall(r"```sql\n(.*?)```", text, re.S))
    tables: dict[str, Table] = {}
    for match in re.finditer(r"CREATE TABLE (\w+) \((.*?)\n\);", sql, re.S):
        table = Table(match.group(1))
        for raw in match.group(2).splitlines():
            line = _strip_comment(raw)
            if not line:
                continue
            if fk := re.match(r"FOREIGN KEY \((\w+)\) REFERENCES (\w+)\((\w+)\) ON DELETE (SET NULL|CASCADE|RESTRICT)", line):
                table.foreign_keys.append(ForeignKey(fk.group(1), fk.group(2), fk.group(3), fk.group(4)))
            elif uq := re.match(r"UNIQUE KEY(?: \w+)? \(([^)]*)\)", line):
                table.uniques.append(_cols(uq.group(1)))
            elif ck := re.match(r"CHECK \((.*)\)$", line):
                table.checks.append(ck.group(1))
            else:
                table.columns.append(_parse_column(line))
        for column in table.columns:
            if column.unique:
                table.uniques.append((column.name,))
        tables[table.name] = table
    indexes = [
        Index(m.group(1), m.group(2), _cols(m.group(3)))
        for m in re.finditer(r"CREATE INDEX (\w+) ON (\w+)\(([^)]*)\);", sql)
    ]
    return Spec(tables, indexes)
