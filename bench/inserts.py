"""What one checkout-shaped write costs through each data layer Billfold can use.

A transaction inserts an order, two order items, a payment and a payment event, then commits.
It runs N times through the bare DB-API driver (the ceiling), SQLAlchemy Core, and the ORM, on a
freshly migrated database, and prints transactions per second, latency percentiles, this
process's CPU per transaction and per statement (the layer's own cost), and each layer's ratio
to the driver measured in the same run; then what an empty transaction (one ``SELECT 1``) costs
through each.

    python bench/inserts.py                                    # SQLite file in a temp folder
    python bench/inserts.py --database postgresql://postgres@127.0.0.1/postgres
    python bench/inserts.py --database mariadb://root@127.0.0.1/ -n 5000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from billfold.kit import clock  # noqa: E402
from billfold.kit.db import create_engine, session_factory  # noqa: E402
from billfold.kit.ids import new_id  # noqa: E402
from billfold.models import Order, OrderItem, Payment, PaymentEvent, PaymentProvider, Product, User  # noqa: E402
from tests import databases  # noqa: E402


def setup(backend: str, server: str | None, folder: Path) -> sa.Engine:
    if server:
        databases.SERVER_URLS[backend] = server
    engine = create_engine(databases.fresh_database(backend, "billfold_bench", folder))
    databases.migrate(engine)
    with session_factory(engine).begin() as session:
        session.add(PaymentProvider(id="sandbox", display_name="Sandbox"))
        session.add(User(id="usr_bench", name="Bench", last_name="Mark", email="bench@example.com", user_type="individual"))
        session.add(Product(id="prod_bench", name="Plan", product_type="subscription", price_cents=2900))
    return engine


def rows() -> dict[str, dict[str, object]]:
    now = clock.now().replace(microsecond=0)
    order_id = new_id("ord")
    return {
        "order": dict(id=order_id, order_number=new_id("bf"), user_id="usr_bench", status="pending", subtotal_cents=5800,
                      tax_cents=0, discount_cents=0, total_cents=5800, currency="USD", created_at=now, updated_at=now),
        "items": [dict(id=new_id("oit"), order_id=order_id, product_id="prod_bench", quantity=1, unit_price_cents=2900,
                       total_cents=2900, created_at=now) for _ in range(2)],
        "payment": dict(id=new_id("pay"), order_id=order_id, user_id="usr_bench", provider_id="sandbox", amount_cents=5800,
                        currency="USD", status="pending", created_at=now, updated_at=now),
        "event": dict(id=new_id("evt"), entity_type="order", entity_id=order_id, event_type="created",
                      data='{"status": "pending"}', created_at=now),
    }


def driver_layer(engine: sa.Engine) -> Callable[[], None]:
    raw = engine.raw_connection()
    style = "named" if engine.dialect.name == "sqlite" else "pyformat"
    def sql(table: str, values: dict[str, object]) -> tuple[str, dict[str, object]]:
        marks = ", ".join((f":{k}" if style == "named" else f"%({k})s") for k in values)
        plain = {k: (v.replace(tzinfo=None) if hasattr(v, "tzinfo") else v) for k, v in values.items()}
        return f"INSERT INTO {table} ({', '.join(values)}) VALUES ({marks})", plain
    def checkout() -> None:
        r = rows()
        cursor = raw.cursor()
        if engine.dialect.name == "sqlite":
            cursor.execute("BEGIN")
        cursor.execute(*sql("orders", r["order"]))
        for item in r["items"]:
            cursor.execute(*sql("order_items", item))
        cursor.execute(*sql("payments", r["payment"]))
        cursor.execute(*sql("payment_events", r["event"]))
        raw.commit()
        cursor.close()
    return checkout


def core_layer(engine: sa.Engine) -> Callable[[], None]:
    tables = {m: m.__table__ for m in (Order, OrderItem, Payment, PaymentEvent)}
    def checkout() -> None:
        r = rows()
        with engine.begin() as connection:
            connection.execute(sa.insert(tables[Order]), r["order"])
            connection.execute(sa.insert(tables[OrderItem]), r["items"])
            connection.execute(sa.insert(tables[Payment]), r["payment"])
            connection.execute(sa.insert(tables[PaymentEvent]), {**r["event"], "data": {"status": "pending"}})
    return checkout


def orm_layer(engine: sa.Engine) -> Callable[[], None]:
    sessions = session_factory(engine)
    def checkout() -> None:
        r = rows()
        with sessions.begin() as session:
            order = Order(**{k: v for k, v in r["order"].items() if k not in ("created_at", "updated_at")})
            session.add(order)
            session.flush()
            session.add_all(OrderItem(**{k: v for k, v in i.items() if k != "created_at"}) for i in r["items"])
            session.add(Payment(**{k: v for k, v in r["payment"].items() if k not in ("created_at", "updated_at")}))
            session.add(PaymentEvent(**{**{k: v for k, v in r["event"].items() if k != "created_at"}, "data": {"status": "pending"}}))
    return checkout


def driver_empty(engine: sa.Engine) -> Callable[[], None]:
    raw = engine.raw_connection()

    def empty() -> None:
        cursor = raw.cursor()
        cursor.execute("SELECT 1")
        cursor.fetchall()
        raw.commit()
        cursor.close()
    return empty


def core_empty(engine: sa.Engine) -> Callable[[], None]:
    one = sa.select(sa.literal(1))

    def empty() -> None:
        with engine.begin() as connection:
            connection.execute(one).all()
    return empty


def orm_empty(engine: sa.Engine) -> Callable[[], None]:
    """Billfold's own unit of work (``kit.db.transaction``): a Session, its connection from the
    pool, BEGIN, the statement, COMMIT."""
    from billfold.kit.db import transaction

    sessions, one = session_factory(engine), sa.select(sa.literal(1))

    def empty() -> None:
        with transaction(sessions) as session:
            session.execute(one).all()
    return empty


def measure(checkout: Callable[[], None], n: int) -> tuple[float, list[float], float]:
    """Transactions per second, each one's latency, and this process's CPU seconds per
    transaction (the layer's own cost: the database server's is not in it)."""
    for _ in range(min(200, n // 10)):  # warm up caches and the pool
        checkout()
    latencies = []
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        t0 = time.perf_counter()
        checkout()
        latencies.append(time.perf_counter() - t0)
    return n / (time.perf_counter() - started), latencies, (time.process_time() - cpu) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", help="server URL (postgresql://… or mariadb://…); default: a SQLite file")
    parser.add_argument("-n", type=int, default=3000, help="transactions per layer")
    args = parser.parse_args()
    backend = "sqlite"
    if args.database:
        backend = "postgresql" if args.database.startswith("postg") else "mariadb"
    with tempfile.TemporaryDirectory() as folder:
        engine = setup(backend, args.database, Path(folder))
        print(f"{backend}: {args.n} checkout-shaped transactions per layer (order, 2 items, payment, event, commit)")
        baseline = cpu_baseline = None
        for name, layer in (("driver", driver_layer), ("core", core_layer), ("orm", orm_layer)):
            rate, latencies, cpu = measure(layer(engine), args.n)
            baseline, cpu_baseline = baseline or rate, cpu_baseline or cpu
            q = statistics.quantiles(latencies, n=100)
            print(f"  {name:<7} {rate:8.0f} tx/s   p50 {q[49] * 1000:6.2f} ms   p99 {q[98] * 1000:6.2f} ms   "
                  f"{rate / baseline:5.0%} of driver   Python CPU {cpu * 1e6:5.0f} µs a transaction, "
                  f"{cpu * 1e6 / 5:4.0f} µs a statement ({cpu / cpu_baseline:.1f}× the driver's)")
        print("  an empty transaction (one SELECT 1, commit), what every transaction costs before its statements:")
        for name, layer in (("driver", driver_empty), ("core", core_empty), ("orm", orm_empty)):
            rate, latencies, cpu = measure(layer(engine), args.n)
            print(f"  {name:<7} {rate:8.0f} tx/s   Python CPU {cpu * 1e6:5.0f} µs a transaction")
        engine.dispose()
        if backend != "sqlite":
            databases.drop_database(backend, engine.url)


if __name__ == "__main__":
    main()
