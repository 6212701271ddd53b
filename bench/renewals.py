"""Renewals per second: the `subscriptions.renew` sweep over N due subscriptions on PostgreSQL, with
one worker and with two worker processes, beside a raw-driver ceiling measured in the same run.

    .venv/bin/python bench/renewals.py --subscriptions 100000 [--customers 500]

Each renewal is what the sweep does for real: claim the subscription (FOR UPDATE SKIP LOCKED),
issue its invoice with a line, create the payment, advance the period, write the events, charge
the sandbox provider off-session with the payment's key, and record the outcome. The ceiling is the
same rows written by psycopg with no ORM and no provider call, one transaction per renewal, with
the same number of connections: what the database alone allows.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import psycopg
import sqlalchemy as sa
from alembic import command

SERVER = os.environ.get("BILLFOLD_BENCH_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
NAME = "billfold_bench_renewals"


def fresh_database() -> str:
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{NAME}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{NAME}"')
    return SERVER.rsplit("/", 1)[0] + f"/{NAME}"


def settings_for(url: str, data_dir: Path):  # noqa: ANN201
    from billfold.config import Settings

    return Settings(database_url=url, data_dir=data_dir, secret_key="bench-" + "k" * 40)


def seed(url: str, data_dir: Path, customers: int, subscriptions: int, tag: str) -> None:
    """``customers`` people with a saved sandbox card, and ``subscriptions`` monthly subscriptions
    among them, all due now."""
    from billfold.accounts.addresses import Owner
    from billfold.accounts.security import Security
    from billfold.kit import clock
    from billfold.kit.db import create_engine, session_factory, transaction
    from billfold.kit.ids import new_id
    from billfold.models import Address, PaymentProvider, Product, Subscription, SubscriptionBilling, User
    from billfold.payments import methods

    engine = create_engine(url)
    settings = settings_for(url, data_dir)
    security = Security.from_settings(settings)
    sessions = session_factory(engine)
    now = clock.now()
    with transaction(sessions) as session:
        if session.get(PaymentProvider, "sandbox") is None:
            session.add(PaymentProvider(id="sandbox", display_name="Sandbox", is_active=True, supports_subscriptions=True,
                                        supports_saved_methods=True, config={"kind": "sandbox"}))
        product = Product(name=f"Plan {tag}", product_type="subscription", is_recurring=True, price_cents=2900,
                          currency="USD", billing_interval="monthly")
        session.add(product)
        session.flush()
        product_id = product.id
    people: list[tuple[str, str]] = []
    for n in range(customers):
        with transaction(sessions) as session:
            user = User(name="Bench", last_name=str(n), email=f"bench.{tag}.{n}@example.com", user_type="individual",
                        is_verified=True)
            session.add(user)
            session.flush()
            session.add(Address(user_id=user.id, address_type="both", is_default=True, name="Bench", line1="1 Main St",
                                city="Portland", postal_code="97201", country="US"))
            session.flush()
            method = methods.save_method(session, security, Owner.user(user.id), token="tok_sandbox_visa")
            people.append((user.id, method.id))
    start = now - timedelta(days=31)
    subs, rows = [], []
    for n in range(subscriptions):
        user_id, method_id = people[n % customers]
        sub_id = new_id("sub")
        subs.append({
            "id": sub_id, "user_id": user_id, "product_id": product_id, "payment_method_id": method_id,
            "provider_id": "sandbox", "status": "active", "current_period_start": start,
            "current_period_end": now - timedelta(seconds=1 + n % 3600), "cancel_at_period_end": False,
            "price_cents": 2900, "currency": "USD", "metadata": {"billing_interval": "monthly", "billing_country": "US"},
            "created_at": start, "updated_at": start,
        })
        rows.append({"subscription_id": sub_id, "quantity": 1, "credit_cents": 0, "billing_anchor": start, "period_index": 0,
                     "retries_done": 0, "created_at": start, "updated_at": start})
    with engine.begin() as connection:
        for chunk in range(0, subscriptions, 5000):
            connection.execute(sa.insert(Subscription.__table__), subs[chunk:chunk + 5000])
            connection.execute(sa.insert(SubscriptionBilling.__table__), rows[chunk:chunk + 5000])
    engine.dispose()


def _worker(url: str, data_dir: str, counts: "multiprocessing.Queue[int]") -> None:
    import billfold.invoices  # noqa: F401  (registers reactions)
    import billfold.memberships  # noqa: F401
    from billfold.accounts.security import Security
    from billfold.kit.db import create_engine, session_factory
    from billfold.kit.jobs import Context
    from billfold.subscriptions.sweeps import renew_due_subscriptions

    settings = settings_for(url, Path(data_dir))
    engine = create_engine(url)
    context = Context(session_factory(engine), settings, Security.from_settings(settings))
    done = 0
    while True:
        moved = renew_due_subscriptions(context)
        if not moved:
            break
        done += moved
    counts.put(done)
    engine.dispose()


def renew(url: str, data_dir: Path, workers: int) -> tuple[int, float]:
    counts: multiprocessing.Queue[int] = multiprocessing.Queue()
    processes = [multiprocessing.Process(target=_worker, args=(url, str(data_dir), counts)) for _ in range(workers)]
    started = time.perf_counter()
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    elapsed = time.perf_counter() - started
    return sum(counts.get() for _ in processes), elapsed


CEILING_SQL = [
    "INSERT INTO invoices (id, invoice_number, subscription_id, user_id, status, amount_cents, total_cents, currency, issue_date, due_date) "
    "VALUES (%(inv)s, %(num)s, NULL, NULL, 'open', 2900, 2900, 'USD', now(), now())",
    "INSERT INTO invoice_lines (id, invoice_id, position, kind, description, quantity, unit_amount_cents, amount_cents, created_at) "
    "VALUES (%(line)s, %(inv)s, 0, 'item', 'Plan', 1, 2900, 2900, now())",
    "INSERT INTO payments (id, subscription_id, provider_id, amount_cents, currency, status) VALUES (%(pay)s, %(sub)s, 'sandbox', 2900, 'USD', 'pending')",
    "INSERT INTO payment_events (id, entity_type, entity_id, event_type) VALUES (%(e1)s, 'invoice', %(inv)s, 'invoice.open')",
    "INSERT INTO payment_events (id, entity_type, entity_id, event_type) VALUES (%(e2)s, 'payment', %(pay)s, 'payment.pending')",
    "UPDATE payments SET status = 'completed', completed_at = now() WHERE id = %(pay)s",
    "UPDATE invoices SET status = 'paid', paid_date = now() WHERE id = %(inv)s",
    "INSERT INTO payment_events (id, entity_type, entity_id, event_type) VALUES (%(e3)s, 'payment', %(pay)s, 'payment.completed')",
]


def ceiling(url: str, renewals: int, connections: int) -> float:
    """Renewals/s when each is the same rows written by psycopg, one transaction each."""
    per = renewals // connections

    with psycopg.connect(url) as connection:
        subscription = connection.execute("SELECT id FROM subscriptions LIMIT 1").fetchone()[0]

    def run(worker: int) -> None:
        with psycopg.connect(url) as connection:
            for n in range(per):
                key = f"{connections}c{worker}x{n}"
                with connection.transaction():
                    for sql in CEILING_SQL:
                        connection.execute(sql, {"inv": f"cinv_{key}", "num": f"C-{key}", "line": f"cinl_{key}",
                                                 "pay": f"cpay_{key}", "sub": subscription, "e1": f"ce1_{key}", "e2": f"ce2_{key}", "e3": f"ce3_{key}"})

    threads = [threading.Thread(target=run, args=(w,)) for w in range(connections)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return per * connections / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscriptions", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--ceiling", type=int, default=5000, help="renewals the raw ceiling writes")
    args = parser.parse_args()
    url = fresh_database()
    from billfold.kit.db import create_engine
    from billfold.migrations import alembic_config

    engine = create_engine(url)
    command.upgrade(alembic_config(engine), "head")
    engine.dispose()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-renewals-"))
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    results = {}
    for workers in (1, 2):
        seed(url, data_dir, args.customers, args.subscriptions, f"w{workers}")
        done, elapsed = renew(url, data_dir, workers)
        results[workers] = done / elapsed
        print(f"{workers} worker{'s' if workers > 1 else ''}: {done:,} renewals in {elapsed:.1f} s = {done / elapsed:,.0f} renewals/s")
    for connections in (1, 2):
        rate = ceiling(url, args.ceiling, connections)
        print(f"raw ceiling, {connections} connection{'s' if connections > 1 else ''}: {rate:,.0f} renewals/s; "
              f"ours / ceiling: {results[connections] / rate:.0%}")
    print(f"100,000 renewals would take {100_000 / results[2]:.0f} s with 2 workers (goal: under 60 s)")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
