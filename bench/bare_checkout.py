"""The checkout bench's bare app: what HTTP, Python and psycopg cost by themselves for a sale.

A FastAPI app with the same endpoints as the sale `bench/checkout.py` drives (``POST /v1/orders``,
``POST /v1/orders/{id}/checkout``, ``POST /v1/checkouts``, ``GET /healthz``), each running the
transactions and statements of that bench's pgbench script (``checkout.PGBENCH_SCRIPT``: the same
statements as a traced Billfold checkout) with psycopg 3 straight through a psycopg_pool pool,
every statement prepared. No ORM, no Pydantic models, no services: the JSON body is parsed and its
ids used, nothing is validated. Plain ``def`` endpoints on the threadpool (16 threads, as
Billfold's ``api_threads``), like Billfold's.

What differs from the pgbench script, so that a sale is driven by its request as in Billfold:
- the customer and the two products are the body's ids (pgbench draws them from two lookup tables);
- the API key is looked up by the SHA-256 of the bearer token once a process, then kept, as
  Billfold keeps it (``accounts.auth``); pgbench is given its id;
- the checkout request reads the order's customer and address from its ``SELECT * FROM orders``
  and the products from its read of the order's lines (pgbench carries them over in variables);
- the one-request sale (``POST /v1/checkouts``) runs the script's statements as Billfold's one
  request does (``ONE_REQUEST``: 4 transactions, 32 statements), the key claimed first finished last.
Like pgbench, and unlike Billfold, it makes no sandbox provider call.

Started by `bench/checkout.py` (not by hand), as
``python -m uvicorn --app-dir bench bare_checkout:app --workers W --no-access-log``, with
``BARE_DATABASE_URL`` (a libpq URL), ``BARE_SERIES`` and ``BARE_INVOICE_SERIES`` (the
``number_series`` rows Billfold's orders and invoices use) in its environment.
Needs ``psycopg_pool`` (the ``dev`` extra).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import Body, FastAPI, Header, HTTPException
from fastapi.responses import JSONResponse
from psycopg_pool import ConnectionPool

# checkout.py's script, read without importing it (and with it Billfold and SQLAlchemy)
PGBENCH_SCRIPT = next(
    ast.literal_eval(node.value) for node in ast.parse(Path(__file__).with_name("checkout.py").read_text()).body
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "PGBENCH_SCRIPT"
)

THREADS = 16  # Billfold's api_threads

Statement = tuple[str, "str | None"]  # SQL with %(name)s parameters, the \gset prefix (None: no \gset)


def parse(script: str) -> list[list[Statement]]:
    """The script's transactions, each a list of statements (BEGIN and COMMIT left out)."""
    transactions: list[list[Statement]] = []
    lines: list[str] = []
    for line in script.strip().splitlines():
        line = line.strip()
        if not line or line.startswith(r"\set"):
            continue
        lines.append(line)
        gset = re.search(r"\s*\\gset(?:\s+(\w+))?$", line)
        if not (gset or line.endswith(";")):
            continue
        sql = " ".join(lines)
        lines = []
        sql = sql[: -len(gset.group(0))] if gset else sql[:-1]
        if sql == "BEGIN":
            transactions.append([])
        elif sql != "COMMIT":
            transactions[-1].append((convert(sql), (gset.group(1) or "") if gset else None))
    return transactions


# Where the pgbench script draws a customer or product from its lookup tables, take the body's id.
BODY_IDS = {
    "JOIN bench_customers b ON b.user_id = u.id WHERE b.n = :c": "WHERE u.id = :user_id",
    "(SELECT product_id FROM bench_products WHERE n = :p)": ":item1",
    "(SELECT product_id FROM bench_products WHERE n = :q)": ":item2",
}


def convert(sql: str) -> str:
    """pgbench's ``:name`` variables as psycopg's ``%(name)s`` (``::type`` casts kept)."""
    for lookup, by_id in BODY_IDS.items():
        sql = sql.replace(lookup, by_id)
    return re.sub(r"(?<![:\w]):([a-z_][a-z0-9_]*)", r"%(\1)s", sql.replace("%", "%%"))


TRANSACTIONS = parse(PGBENCH_SCRIPT)
assert len(TRANSACTIONS) == 6 and not any("bench_" in s for t in TRANSACTIONS for s, _ in t), "the pgbench script changed"
ORDER, CHECKOUT = TRANSACTIONS[:2], TRANSACTIONS[2:]


def _without(statements: list[Statement], *starts: str) -> list[Statement]:
    return [(sql, gset) for sql, gset in statements if not sql.startswith(starts)]


# One request, as Billfold's trace has it: the key claimed; the order placed and its payment started
# in one transaction (the order, just placed, is not read again, and the answer is not built
# there; its number taken after the payment is written, the events last); the outcome; the mail.
# 4 transactions, 32 statements (a first purchase: its cohort row).
PLACE, START = TRANSACTIONS[1], TRANSACTIONS[3]
ONE_REQUEST = [
    TRANSACTIONS[0],
    PLACE[:5] + START[4:7] + PLACE[5:7] + START[7:],  # read, the order and its items; routing and the payment; its number; the key; events
    TRANSACTIONS[4],
    TRANSACTIONS[5],
]
assert [sql.split(" (")[0] for sql, _ in ONE_REQUEST[1]] == [
    "SELECT u.* FROM users u WHERE u.id = %(user_id)s", "SELECT p.*, EXISTS", "SELECT * FROM addresses WHERE user_id = %(u_id)s AND organization_id IS NULL AND is_default IS true ORDER BY id",
    "INSERT INTO orders", "INSERT INTO order_items", "SELECT * FROM payment_routing_rules WHERE is_active ORDER BY position, id",
    "SELECT * FROM payment_providers WHERE id = 'sandbox'", "INSERT INTO payments", "INSERT INTO number_series",
    "UPDATE orders SET order_number = 'PGB-' || %(last_value)s::text, updated_at = now() WHERE id = %(o)s",
    "UPDATE idempotency_keys SET recovery_point = 'payment:' || %(pay)s, locked_at = now(), last_run_at = now() WHERE id = %(k2)s AND recovery_point != 'finished'",
    "INSERT INTO payment_events",
], "the pgbench script changed"
assert sum(map(len, ONE_REQUEST)) == 32, "the pgbench script changed"


def _order_row(rows: list[dict[str, Any]], names: dict[str, Any]) -> None:
    names.setdefault("u_id", rows[0]["user_id"])
    names.setdefault("a_id", rows[0]["billing_address_id"])


def _items(rows: list[dict[str, Any]], names: dict[str, Any]) -> None:
    names.setdefault("item1", rows[0]["product_id"])
    names.setdefault("item2", rows[1]["product_id"])


# What the two-request checkout learns from its reads, where pgbench had it in variables already.
READS: dict[str, Callable[[list[dict[str, Any]], dict[str, Any]], None]] = {
    convert("SELECT * FROM orders WHERE id = :o FOR UPDATE"): _order_row,
    convert(
        "SELECT order_items.*, products.* FROM order_items JOIN products ON products.id = order_items.product_id "
        "WHERE order_items.order_id = :o ORDER BY order_items.id"
    ): _items,
}
assert all(any(s == read for t in TRANSACTIONS for s, _ in t) for read in READS), "the pgbench script changed"

# API keys by the SHA-256 of their token: read once a process, as Billfold keeps them.
_KEYS: dict[str, str] = {}


def _api_key_id(key_hash: str) -> str:
    found = _KEYS.get(key_hash)
    if found is None:
        with pool.connection() as connection:
            row = connection.execute("SELECT id, revoked_at FROM api_keys WHERE key_hash = %s", (key_hash,)).fetchone()
        if row is None or row["revoked_at"] is not None:
            raise HTTPException(401, "unknown API key")
        found = _KEYS[key_hash] = row["id"]
    return found


def run(transactions: list[list[Statement]], names: dict[str, Any]) -> dict[str, Any]:
    """Each transaction on one pooled connection (BEGIN … COMMIT, every statement prepared)."""
    with pool.connection() as connection:
        for statements in transactions:
            with connection.transaction(), connection.cursor() as cursor:
                for sql, gset in statements:
                    cursor.execute(sql, names, prepare=True)
                    if cursor.description is None:
                        continue
                    rows = cursor.fetchall()
                    if gset is not None:
                        if not rows:
                            raise HTTPException(404, f"no row for {sql[:60]}")
                        names.update((gset + name, value) for name, value in rows[0].items())
                    if sql in READS:
                        READS[sql](rows, names)
    return names


def start(authorization: str | None, **names: Any) -> dict[str, Any]:
    token = (authorization or "").removeprefix("Bearer ")
    return {"api_key_id": _api_key_id(hashlib.sha256(token.encode()).hexdigest()), "series": os.environ["BARE_SERIES"],
            "invoice_series": os.environ["BARE_INVOICE_SERIES"], **names}


def from_body(body: dict[str, Any]) -> dict[str, Any]:
    items = body["items"]
    return {"user_id": body["user_id"], "item1": items[0]["product_id"], "item2": items[1]["product_id"]}


pool: ConnectionPool


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    global pool
    anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
    from psycopg.rows import dict_row

    pool = ConnectionPool(os.environ["BARE_DATABASE_URL"], min_size=4, max_size=THREADS,
                          kwargs={"autocommit": True, "row_factory": dict_row}, open=True)
    yield
    pool.close()


app = FastAPI(lifespan=lifespan, openapi_url=None)


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/orders", status_code=201)
def create_order(body: dict[str, Any] = Body(), authorization: str | None = Header(None)) -> dict[str, Any]:
    names = run(ORDER, start(authorization, **from_body(body)))
    return {"id": names["o"], "order_number": f"PGB-{names['last_value']}", "status": "pending"}


@app.post("/v1/orders/{order_id}/checkout")
def checkout(order_id: str, body: dict[str, Any] = Body(), authorization: str | None = Header(None)) -> Any:
    if body.get("token") != "tok_sandbox_visa":
        return JSONResponse({"detail": "token"}, status_code=402)
    names = run(CHECKOUT, start(authorization, o=order_id))
    return {"order": {"id": order_id, "status": "paid"}, "payment": {"id": names["pay"], "status": "completed"}}


@app.post("/v1/checkouts")
def one_request(body: dict[str, Any] = Body(), authorization: str | None = Header(None)) -> Any:
    names = start(authorization, **from_body(body))
    # the one key claimed first is the one finished in the last: the script's k2 is k1
    names = run(ONE_REQUEST[:1], names)
    names = run(ONE_REQUEST[1:], {**names, "k2": names["k1"]})
    return {"order": {"id": names["o"], "status": "paid"}, "payment": {"id": names["pay"], "status": "completed"}}
