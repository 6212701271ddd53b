"""Renewals per second: the `subscriptions.renew` sweep over N due subscriptions on PostgreSQL, with
one worker and with two worker processes, beside a raw-driver ceiling measured in the same run.

    .venv/bin/python bench/renewals.py --subscriptions 100000 [--customers 500]
    .venv/bin/python bench/renewals.py --subscriptions 2000 --provider-latency-ms 250 --provider-jitter-ms 50

``--provider-latency-ms L --provider-jitter-ms J`` make the workers' sandbox wait L ms plus up to
J more per charge (``BILLFOLD_SANDBOX_LATENCY_MS``), as a remote provider would; seeding does not
wait.

Each renewal is what the sweep does for real: claim the subscription (FOR UPDATE SKIP LOCKED),
issue its invoice with a line, create the payment, advance the period, write the events, charge
the sandbox provider off-session with the payment's key, and record the outcome. The sweep does
this 50 subscriptions at a time: one transaction claims and invoices the batch, the sandbox is
charged once per payment, one transaction records the batch's outcomes.

The ceiling is the same rows written by psycopg alone (no ORM, no Python domain code, no provider
call), batched the same way: per 50 renewals one transaction inserts the invoices, lines,
payments and their four events each, advances 50 subscriptions and their billing rows and takes
50 invoice numbers, and a second transaction marks the payments and invoices paid with their two
events each; every table's rows go in one ``executemany``. The old ceiling, one transaction per
renewal and a statement per row, is printed beside it for comparison with earlier figures.
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
from typing import Any

import psycopg
import sqlalchemy as sa
from alembic import command

SERVER = os.environ.get("BILLFOLD_BENCH_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
NAME = "billfold_bench_renewals"


def fresh_database(name: str = NAME) -> str:
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    return SERVER.rsplit("/", 1)[0] + f"/{name}"


def settings_for(url: str, data_dir: Path, latency_ms: int = 0, jitter_ms: int = 0, at_once: int = 4):  # noqa: ANN201
    from billfold.config import Settings

    return Settings(database_url=url, data_dir=data_dir, secret_key="bench-" + "k" * 40,
                    sandbox_latency_ms=latency_ms, sandbox_latency_jitter_ms=jitter_ms, worker_sweeps_at_once=at_once)


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
    with engine.connect() as connection:  # statistics, as autovacuum would have them for a table this size:
        connection.execute(sa.text("ANALYZE"))  # without them the claim sorted every active row (3 of ~10 sessions busy with it)
        connection.commit()
    engine.dispose()


def _worker(url: str, data_dir: str, counts: "multiprocessing.Queue[tuple[int, list[float], int, float]]",
            latency_ms: int = 0, jitter_ms: int = 0, at_once: int = 4) -> None:
    import importlib
    import resource

    for module in ("billfold.invoices", "billfold.memberships"):  # they register reactions
        importlib.import_module(module)
    from billfold.accounts.security import Security
    from billfold.kit.db import create_engine, session_factory
    from billfold import worker
    from billfold.kit.sweeps import Context, Sweep
    from billfold.subscriptions.sweeps import renew_due_subscriptions

    settings = settings_for(url, Path(data_dir), latency_ms, jitter_ms, at_once)
    engine = create_engine(url)
    context = Context(session_factory(engine), settings, Security.from_settings(settings))
    batches: list[float] = []

    def timed(context: Context) -> int:  # one batch, timed
        started = time.perf_counter()
        moved = renew_due_subscriptions(context)
        if moved:
            batches.append(time.perf_counter() - started)
        return moved

    cpu = time.process_time()
    # What a worker's round does with the renewal backlog (worker.drain): the sweep again while it
    # finds work, on worker_sweeps_at_once threads.
    done, _ = worker.drain(context, Sweep("subscriptions.renew", timed, timedelta(minutes=1), drain=True), seconds=3600)
    done = done or 0
    cpu = time.process_time() - cpu
    counts.put((done, batches, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, cpu))
    engine.dispose()


def renew(url: str, data_dir: Path, workers: int, latency_ms: int = 0, jitter_ms: int = 0, at_once: int = 4) -> dict[str, float]:
    counts: multiprocessing.Queue[tuple[int, list[float], int, float]] = multiprocessing.Queue()
    processes = [multiprocessing.Process(target=_worker, args=(url, str(data_dir), counts, latency_ms, jitter_ms, at_once))
                 for _ in range(workers)]
    started = time.perf_counter()
    for process in processes:
        process.start()
    reports = [counts.get() for _ in processes]
    for process in processes:
        process.join()
    elapsed = time.perf_counter() - started
    done = sum(r[0] for r in reports)
    batches = sorted(b for r in reports for b in r[1])
    return {
        "done": done, "elapsed": elapsed, "rate": done / elapsed,
        "p50": batches[len(batches) // 2] if batches else 0.0,
        "p95": batches[int(len(batches) * 0.95)] if batches else 0.0,
        "peak_mib": max(r[2] for r in reports) / 1024,
        "cpu_ms": sum(r[3] for r in reports) / max(done, 1) * 1000,
    }


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

    return _threads(run, connections, per * connections)


BATCH = 50
EVENT = "INSERT INTO payment_events (id, entity_type, entity_id, event_type, data, created_at) VALUES (%s, %s, %s, %s, %s, now())"


def batched_ceiling(url: str, renewals: int, connections: int, tag: str) -> float:
    """Renewals/s when the sweep's rows and transactions are written by psycopg alone, 50 renewals
    per transaction pair, one executemany per table and statement."""
    per = renewals // connections // BATCH * BATCH
    with psycopg.connect(url) as connection:
        subscriptions = [row[0] for row in connection.execute(
            "SELECT id FROM subscriptions ORDER BY id LIMIT %s", (per * connections,))]
    data = '{"by": "system"}'

    def run(worker: int) -> None:
        mine = subscriptions[worker * per:(worker + 1) * per]
        with psycopg.connect(url) as connection:
            for start in range(0, per, BATCH):
                keys = [f"{tag}{connections}c{worker}x{n}" for n in range(start, start + BATCH)]
                subs = mine[start:start + BATCH]
                with connection.transaction(), connection.cursor() as cursor:
                    cursor.execute("SELECT s.id FROM subscriptions s JOIN subscription_billing b ON b.subscription_id = s.id "
                                   "WHERE s.id = ANY(%s) ORDER BY s.id FOR UPDATE", (subs,))
                    cursor.executemany(
                        "INSERT INTO invoices (id, invoice_number, subscription_id, status, amount_cents, tax_cents, discount_cents,"
                        " total_cents, currency, issue_date, due_date, created_at, updated_at)"
                        " VALUES (%s, %s, %s, 'draft', 2900, 0, 0, 2900, 'USD', now(), now(), now(), now())",
                        [(f"cinv_{k}", f"cinv_{k}", sub) for k, sub in zip(keys, subs)])
                    cursor.executemany(
                        "INSERT INTO invoice_lines (id, invoice_id, position, kind, description, quantity, unit_amount_cents,"
                        " amount_cents, period_start, period_end, created_at) VALUES (%s, %s, 1, 'item', 'Plan', 1, 2900, 2900, now(), now(), now())",
                        [(f"cinl_{k}", f"cinv_{k}") for k in keys])
                    cursor.executemany(
                        "INSERT INTO payments (id, subscription_id, provider_id, amount_cents, currency, status, metadata, created_at, updated_at)"
                        " VALUES (%s, %s, 'sandbox', 2900, 'USD', 'pending', %s, now(), now())",
                        [(f"cpay_{k}", sub, data) for k, sub in zip(keys, subs)])
                    cursor.executemany("UPDATE subscriptions SET current_period_start = now(), current_period_end = now() + interval '1 month',"
                                       " updated_at = now() WHERE id = %s", [(sub,) for sub in subs])
                    cursor.executemany("UPDATE subscription_billing SET period_index = period_index + 1, updated_at = now()"
                                       " WHERE subscription_id = %s", [(sub,) for sub in subs])
                    cursor.executemany(EVENT, [(f"ce{n}_{k}", entity, f"{prefix}_{k}", kind, data) for k in keys for n, entity, prefix, kind in (
                        (1, "invoice", "cinv", "invoice.draft"), (2, "subscription", "csub", "subscription.invoiced"),
                        (3, "payment", "cpay", "payment.pending"), (4, "invoice", "cinv", "invoice.open"))])
                    last = cursor.execute(
                        "INSERT INTO number_series (series, last_value) VALUES (%s, %s) ON CONFLICT (series) DO UPDATE"
                        " SET last_value = number_series.last_value + EXCLUDED.last_value RETURNING last_value",
                        (f"bench-{tag}", BATCH)).fetchone()[0]
                    cursor.executemany("UPDATE invoices SET invoice_number = %s, status = 'open' WHERE id = %s",
                                       [(f"C{tag}-{last - BATCH + 1 + n:08d}", f"cinv_{k}") for n, k in enumerate(keys)])
                with connection.transaction(), connection.cursor() as cursor:
                    cursor.execute("SELECT s.id FROM subscriptions s JOIN subscription_billing b ON b.subscription_id = s.id "
                                   "WHERE s.id = ANY(%s) ORDER BY s.id FOR UPDATE", (subs,))
                    cursor.execute("SELECT id FROM payments WHERE id = ANY(%s) ORDER BY id FOR UPDATE", ([f"cpay_{k}" for k in keys],))
                    cursor.execute("SELECT id FROM invoices WHERE id = ANY(%s)", ([f"cinv_{k}" for k in keys],))
                    cursor.executemany("UPDATE payments SET status = 'completed', provider_payment_id = %s, metadata = %s,"
                                       " completed_at = now(), updated_at = now() WHERE id = %s",
                                       [(f"ch_{k}", data, f"cpay_{k}") for k in keys])
                    cursor.executemany("UPDATE invoices SET status = 'paid', paid_date = now(), updated_at = now() WHERE id = %s",
                                       [(f"cinv_{k}",) for k in keys])
                    cursor.executemany(EVENT, [(f"ce{n}_{k}", entity, f"{prefix}_{k}", kind, data) for k in keys for n, entity, prefix, kind in (
                        (5, "payment", "cpay", "payment.completed"), (6, "invoice", "cinv", "invoice.paid"))])

    return _threads(run, connections, per * connections)


def _threads(run: Any, connections: int, renewals: int) -> float:
    threads = [threading.Thread(target=run, args=(w,)) for w in range(connections)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return renewals / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscriptions", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--ceiling", type=int, default=5000, help="renewals each raw ceiling writes")
    parser.add_argument("--workers", default="1,2", help="worker counts to run, e.g. 1,2 or 2")
    parser.add_argument("--provider-latency-ms", type=int, default=0, help="the workers' sandbox waits this long per call")
    parser.add_argument("--provider-jitter-ms", type=int, default=0, help="and up to this much more, at random")
    parser.add_argument("--at-once", type=int, default=4, help="BILLFOLD_WORKER_SWEEPS_AT_ONCE: batches a worker works on at once")
    parser.add_argument("--database-name", default=NAME, help="the database this run drops and creates")
    args = parser.parse_args()
    if args.provider_latency_ms or args.provider_jitter_ms:
        print(f"sandbox latency: {args.provider_latency_ms} ms + up to {args.provider_jitter_ms} ms per call")
    counts = [int(w) for w in args.workers.split(",")]
    url = fresh_database(args.database_name)
    from billfold.kit.db import create_engine
    from billfold.migrations import alembic_config

    engine = create_engine(url)
    command.upgrade(alembic_config(engine), "head")
    engine.dispose()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-renewals-"))
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results = {}
    for workers in counts:
        seed(url, data_dir, args.customers, args.subscriptions, f"w{workers}")
        print(f"  seeded {args.subscriptions:,} due subscriptions; load average {os.getloadavg()[0]:.2f}")
        r = renew(url, data_dir, workers, args.provider_latency_ms, args.provider_jitter_ms, args.at_once)
        results[workers] = r
        print(f"{workers} worker{'s' if workers > 1 else ''}: {r['done']:,} renewals in {r['elapsed']:.1f} s = {r['rate']:,.0f} renewals/s; "
              f"a sweep of 50: p50 {r['p50'] * 1000:.0f} ms, p95 {r['p95'] * 1000:.0f} ms; worker CPU {r['cpu_ms']:.2f} ms/renewal; "
              f"peak RSS per worker {r['peak_mib']:.0f} MiB; load average {os.getloadavg()[0]:.2f}")
        batched = batched_ceiling(url, args.ceiling, workers, f"b{workers}")
        single = ceiling(url, args.ceiling, workers)
        print(f"raw ceiling, {workers} connection{'s' if workers > 1 else ''}: batched like the sweep {batched:,.0f} renewals/s "
              f"(ours / ceiling: {r['rate'] / batched:.0%}); one transaction per renewal {single:,.0f}/s; "
              f"load average {os.getloadavg()[0]:.2f}")
    fastest = results[max(counts)]["rate"]
    print(f"100,000 renewals take {100_000 / fastest:.0f} s with {max(counts)} worker(s) at this rate (goal: under 60 s with 2)")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
