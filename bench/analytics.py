"""Analytics at a million subscriptions (issue 14, "Fast"): bulk-load a business's two years into
PostgreSQL with COPY, then time one day's snapshot in full (no day before it stored), a backfill of
the N days before it (oldest first: the first in full, the next derived from the day before), the
day again as the day after a stored day (derived; its churn window from the stored movers when N ≥
31), the 24-month cohort matrix (cold, its months being stored, stored; and the current month
brought up to date) and a 90-day MRR series, beside a same-run baseline (a full scan of payments).
``--keep`` migrates a reused database to head first (a migration added since the load).

    .venv/bin/python bench/analytics.py                                   # 1,000,000 / 10,000,000
    .venv/bin/python bench/analytics.py --subscriptions 20000 --payments 200000   # to try it out
    .venv/bin/python bench/analytics.py --keep ...    # reuse the loaded database (and keep it)

The business (deterministic, ``--seed``): subscriptions created over the two years ending on
``DAY`` (2026-11-30), more of them lately (density growing linearly); three tiers, monthly (85 %)
and yearly (15 %, ten months' price), in USD (60 %), EUR (30 %) and GBP (10 %); 25 % start with
a 14-day trial (70 % convert); each period has an invoice with one ``item`` line covering it
(30-day months, 365-day years) and its payment; 4 % of first attempts fail (a failed payment,
then a retry paid three days later, or the subscription is cancelled unpaid; a failure in the last
week leaves the invoice open: past due); 10 % have 20 % off their first three invoices; at each
renewal 1 % move up a tier and 0.5 % down; voluntary churn 3 % a month (15 % at a yearly
renewal); 1 % pause for good. 2 % of paid payments are refunded in full a few days later. The
rest of ``--payments`` are one-off purchases by the same users (8 % failed). ``user_cohorts`` is
written from the same rows (each user's first completed payment and first subscription).

Loading drops the loaded tables' secondary indexes, COPYs every table at once (one connection
each, foreign-key triggers off: ``session_replication_role = replica``), builds the indexes again
and runs VACUUM ANALYZE; each step is timed.

The 90-day series through ``GET /v1/analytics/metrics`` needs ``billfold.analytics.api``; without
it the bench times ``snapshots.series`` directly and says the HTTP figure is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from billfold.kit.db import create_engine, session_factory  # noqa: E402
from tests import databases  # noqa: E402

DATABASE = "billfold_bench_analytics"
DAY = date(2026, 11, 30)
DAYS = 730
FIRST = DAY - timedelta(days=DAYS - 1)
TABLES = ("users", "products", "subscriptions", "subscription_billing", "invoices", "invoice_lines", "orders", "payments",
          "refunds", "user_cohorts")
TIERS = (("Basic", 900), ("Pro", 2900), ("Business", 9900))
CURRENCIES = (("USD", 0.6), ("EUR", 0.9), ("GBP", 1.0))
GOALS = {"snapshot": 5.0, "cohorts": 5.0, "series": 0.2}


# ---- generating and loading ---------------------------------------------------------------------


class Clock:
    """Timestamps as text, fast: a moment is seconds since FIRST's midnight."""

    def __init__(self) -> None:
        self.days = [(FIRST + timedelta(days=d)).isoformat() for d in range(DAYS + 800)]
        self.tod = [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(86400)]

    def __call__(self, moment: int) -> str:
        return f"{self.days[moment // 86400]} {self.tod[moment % 86400]}"


class Writer:
    """One COPY per table, each on its own connection, fed in chunks."""

    COLUMNS = {
        "users": "id, name, last_name, email, user_type, is_verified, created_at, updated_at",
        "products": "id, name, product_type, is_recurring, price_cents, currency, billing_interval, is_active, created_at, updated_at",
        "subscriptions": "id, user_id, product_id, provider_id, status, current_period_start, current_period_end, "
                         "cancel_at_period_end, trial_end, price_cents, currency, created_at, updated_at",
        "subscription_billing": "subscription_id, quantity, credit_cents, billing_anchor, period_index, paused_at, cancelled_at, "
                                "retries_done, created_at, updated_at",
        "invoices": "id, invoice_number, subscription_id, user_id, status, amount_cents, tax_cents, discount_cents, total_cents, "
                    "currency, issue_date, due_date, paid_date, created_at, updated_at",
        "invoice_lines": "id, invoice_id, position, kind, description, product_id, quantity, unit_amount_cents, amount_cents, "
                         "period_start, period_end, created_at",
        "orders": "id, order_number, user_id, status, currency, subtotal_cents, tax_cents, discount_cents, total_cents, "
                  "created_at, updated_at, completed_at",
        "payments": "id, order_id, subscription_id, user_id, provider_id, amount_cents, currency, status, created_at, updated_at, completed_at",
        "refunds": "id, payment_id, provider_id, amount_cents, currency, status, created_at, updated_at, completed_at",
        "user_cohorts": "id, user_id, cohort_month, cohort_type, created_at",
    }

    def __init__(self, url: str, stack: contextlib.ExitStack) -> None:
        self.buffers: dict[str, list[str]] = {t: [] for t in TABLES}
        self.sizes = dict.fromkeys(TABLES, 0)
        self.rows = dict.fromkeys(TABLES, 0)
        self.copies = {}
        for table in TABLES:
            connection = stack.enter_context(psycopg.connect(url))
            connection.execute("SET session_replication_role = replica")
            cursor = stack.enter_context(connection.cursor())
            self.copies[table] = stack.enter_context(cursor.copy(f"COPY {table} ({self.COLUMNS[table]}) FROM STDIN"))

    def row(self, table: str, line: str) -> None:
        buffer = self.buffers[table]
        buffer.append(line)
        self.rows[table] += 1
        if len(buffer) >= 20000:
            self.flush(table)

    def flush(self, table: str) -> None:
        if self.buffers[table]:
            self.copies[table].write("\n".join(self.buffers[table]) + "\n")
            self.buffers[table].clear()

    def close(self) -> None:
        for table in TABLES:
            self.flush(table)


N = "\\N"


def generate(out: Writer, subscriptions: int, payments: int, seed: int) -> None:
    rnd = random.Random(seed)
    ts = Clock()
    end = DAYS * 86400  # the end of DAY
    t0 = ts(0)
    products = {}
    for tier, (name, monthly) in enumerate(TIERS):
        for interval, price in (("monthly", monthly), ("yearly", monthly * 10)):
            for currency, _ in CURRENCIES:
                pid = f"prod_{name.lower()}_{interval}_{currency.lower()}"
                products[tier, interval, currency] = (pid, price)
                out.row("products", f"{pid}\t{name} {interval} {currency}\tsubscription\tt\t{price}\t{currency}\t{interval}\tt\t{t0}\t{t0}")
    users = max(1, int(subscriptions * 0.9))
    first_paid = [0] * users  # moment + 1 of each user's first completed payment (0: none)
    first_sub = [0] * users
    for u in range(users):
        out.row("users", f"usr_{u:07d}\tBench\t{u}\tbench{u}@example.com\tindividual\tt\t{t0}\t{t0}")
    counters = {"inv": 0, "pay": 0, "ref": 0, "ord": 0}

    def pay(sub: str, user: int, amount: int, currency: str, at: int, ok: bool, order: str = N) -> str:
        counters["pay"] += 1
        pid = f"pay_{counters['pay']:08d}"
        sub = f"{order}\t{sub}"
        if not ok:
            out.row("payments", f"{pid}\t{sub}\tusr_{user:07d}\tsandbox\t{amount}\t{currency}\tfailed\t{ts(at)}\t{ts(at)}\t{N}")
            return pid
        status = "completed"
        if rnd.random() < 0.02:
            refunded = at + rnd.randint(3600, 10 * 86400)
            if refunded < end:
                status = "refunded"
                counters["ref"] += 1
                out.row("refunds", f"ref_{counters['ref']:07d}\t{pid}\tsandbox\t{amount}\t{currency}\tsucceeded\t{ts(refunded)}\t{ts(refunded)}\t{ts(refunded)}")
        out.row("payments", f"{pid}\t{sub}\tusr_{user:07d}\tsandbox\t{amount}\t{currency}\t{status}\t{ts(at)}\t{ts(at)}\t{ts(at)}")
        if not first_paid[user] or at + 1 < first_paid[user]:
            first_paid[user] = at + 1
        return pid

    for s in range(subscriptions):
        sid = f"sub_{s:07d}"
        user = s % users
        created = int(end * math.sqrt(rnd.random()))
        if not first_sub[user] or created + 1 < first_sub[user]:
            first_sub[user] = created + 1
        r = rnd.random()
        currency = next(c for c, p in CURRENCIES if r < p)
        interval = "yearly" if rnd.random() < 0.15 else "monthly"
        length = (365 if interval == "yearly" else 30) * 86400
        tier = rnd.choices((0, 1, 2), (5, 3, 1))[0]
        trial_end = created + 14 * 86400 if rnd.random() < 0.25 else None
        discounted = 3 if rnd.random() < 0.10 else 0
        paused_at = cancelled_at = None
        start, index, status = trial_end or created, 0, "active"
        if trial_end is not None and rnd.random() > 0.7:
            cancelled_at = trial_end if trial_end < end else None
        if trial_end is not None and trial_end >= end:
            status = "trialing"
        elif cancelled_at is not None:
            status = "cancelled"
        period_start = period_end = start
        while status == "active" and start < end:
            if rnd.random() < 0.001:
                paused_at, status = start, "paused"
                break
            if index:
                r = rnd.random()
                if r < 0.01 and tier < 2:
                    tier += 1
                elif r < 0.015 and tier > 0:
                    tier -= 1
            product, price = products[tier, interval, currency]
            discount = price // 5 if index < discounted else 0
            counters["inv"] += 1
            iid = f"inv_{counters['inv']:08d}"
            period_start, period_end = start, start + length
            issued = ts(start)
            paid_at = None
            if rnd.random() < 0.04:
                pay(sid, user, price - discount, currency, start, False)
                retry = start + 3 * 86400
                if end - start < 7 * 86400:
                    status = "past_due"
                elif rnd.random() < 0.7:
                    paid_at = retry
                else:
                    cancelled_at, status = retry, "cancelled"
            else:
                paid_at = start + rnd.randint(1, 60)
            if paid_at is not None and paid_at < end:
                pay(sid, user, price - discount, currency, paid_at, True)
                state, paid_text = "paid", ts(paid_at)
            else:
                state, paid_text = ("uncollectible" if status == "cancelled" else "open"), N
                if status == "active":
                    status = "past_due"
            out.row("invoices", f"{iid}\tINV-{counters['inv']:08d}\t{sid}\tusr_{user:07d}\t{state}\t{price}\t0\t{discount}\t"
                                f"{price - discount}\t{currency}\t{issued}\t{issued}\t{paid_text}\t{issued}\t{issued}")
            out.row("invoice_lines", f"inl_{counters['inv']:08d}\t{iid}\t1\titem\tPlan\t{product}\t1\t{price}\t{price}\t"
                                     f"{issued}\t{ts(period_end)}\t{issued}")
            index += 1
            start = period_end
            if status != "active" or start >= end:
                break
            if rnd.random() < (0.15 if interval == "yearly" else 0.03):
                cancelled_at, status = start, "cancelled"
        if status == "active" and start >= end:
            pass
        product, price = products[tier, interval, currency]
        if period_end == period_start:
            period_start, period_end = created, trial_end or created + length
        out.row("subscriptions", f"{sid}\tusr_{user:07d}\t{product}\tsandbox\t{status}\t{ts(period_start)}\t{ts(period_end)}\tf\t"
                                 f"{ts(trial_end) if trial_end else N}\t{price}\t{currency}\t{ts(created)}\t{ts(created)}")
        out.row("subscription_billing", f"{sid}\t1\t0\t{ts(trial_end or created)}\t{max(index - 1, 0)}\t"
                                        f"{ts(paused_at) if paused_at is not None else N}\t"
                                        f"{ts(cancelled_at) if cancelled_at is not None and cancelled_at < end else N}\t0\t{ts(created)}\t{ts(created)}")
    for _ in range(max(0, payments - counters["pay"])):  # one-off purchases
        user = rnd.randrange(users)
        at = int(end * math.sqrt(rnd.random()))
        currency = CURRENCIES[0][0] if rnd.random() < 0.6 else CURRENCIES[1][0]
        amount, ok = rnd.choice((500, 1500, 4900, 12000)), rnd.random() > 0.08
        counters["ord"] += 1
        oid = f"ord_{counters['ord']:08d}"
        out.row("orders", f"{oid}\tORD-{counters['ord']:08d}\tusr_{user:07d}\t{'paid' if ok else 'pending'}\t{currency}\t{amount}\t0\t0\t"
                          f"{amount}\t{ts(at)}\t{ts(at)}\t{ts(at) if ok else N}")
        pay(N, user, amount, currency, at, ok, oid)
    months: dict[int, str] = {}
    for kind, firsts in (("first_purchase", first_paid), ("first_subscription", first_sub)):
        for u, moment in enumerate(firsts):
            if moment:
                day = (moment - 1) // 86400
                month = months.get(day) or months.setdefault(day, ts.days[day][:8] + "01")
                out.row("user_cohorts", f"coh_{kind[6:9]}_{u:07d}\tusr_{u:07d}\t{month}\t{kind}\t{t0}")


def load(url: str, subscriptions: int, payments: int, seed: int) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("INSERT INTO payment_providers (id, display_name, is_active, supports_subscriptions) VALUES ('sandbox', 'Sandbox', true, true)")
        indexes = c.execute(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = 'public' AND i.tablename = ANY(%s) "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conname = i.indexname)", (list(TABLES),)).fetchall()
        for name, _ in indexes:
            c.execute(f'DROP INDEX "{name}"')
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        out = Writer(url, stack)
        generate(out, subscriptions, payments, seed)
        out.close()
    copied = time.perf_counter() - started
    total = sum(out.rows.values())
    print(f"COPY: {total:,} rows in {copied:.0f} s = {total / copied:,.0f} rows/s "
          f"({', '.join(f'{t} {n:,}' for t, n in out.rows.items())})")
    with psycopg.connect(url, autocommit=True) as c:
        t = time.perf_counter()
        for _, definition in indexes:
            c.execute(definition)
        built = time.perf_counter() - t
        t = time.perf_counter()
        c.execute("VACUUM ANALYZE")
        vacuumed = time.perf_counter() - t
        size = c.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()[0]
    print(f"indexes ({len(indexes)}) rebuilt in {built:.0f} s; VACUUM ANALYZE {vacuumed:.0f} s; "
          f"loading took {copied + built + vacuumed:.0f} s in all; database {size}")


# ---- measuring ------------------------------------------------------------------------------------


class Statements:
    """Every statement sent, with its parameters and time, while ``recording``."""

    def __init__(self, engine: sa.Engine) -> None:
        self.seen: list[tuple[float, str, Any]] = []
        self.recording = False
        sa.event.listen(engine, "before_cursor_execute", self.before)
        sa.event.listen(engine, "after_cursor_execute", self.after)

    def before(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        conn.info["bench_started"] = time.perf_counter()

    def after(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if self.recording and not executemany:
            self.seen.append((time.perf_counter() - conn.info.pop("bench_started"), statement, parameters))

    @contextlib.contextmanager
    def record(self) -> Iterator[list[tuple[float, str, Any]]]:
        self.seen, self.recording = [], True
        try:
            yield self.seen
        finally:
            self.recording = False


def first_line(statement: str) -> str:
    return " ".join(statement.split())[:150]


def explain(engine: sa.Engine, statement: str, parameters: Any) -> str:
    with engine.connect() as c:
        rows = c.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters).all()
        c.rollback()
    return "\n".join("    " + (r[0] if len(r[0]) < 240 else r[0][:240] + " ...") for r in rows)


def timed(label: str, goal: float | None, seconds: float, extra: str = "") -> None:
    ratio = f"; goal < {goal * 1000:.0f} ms: {seconds / goal:.2f}× the goal ({'met' if seconds < goal else 'MISSED'})" if goal else ""
    print(f"{label}: {seconds * 1000:,.0f} ms{extra}{ratio}")


def baseline(url: str) -> None:
    with psycopg.connect(url) as c:
        size = c.execute("SELECT pg_relation_size('payments')").fetchone()[0]
        c.execute("SELECT count(*) FROM payments")  # warm
        t = time.perf_counter()
        n = c.execute("SELECT count(*) FROM payments").fetchone()[0]
        count = time.perf_counter() - t
        t = time.perf_counter()
        c.execute("SELECT currency, sum(amount_cents) FROM payments WHERE status <> 'failed' GROUP BY currency").fetchall()
        grouped = time.perf_counter() - t
    print(f"baseline: SELECT count(*) FROM payments ({n:,} rows, {size / 2**20:,.0f} MiB) {count * 1000:,.0f} ms = "
          f"{n / count / 1e6:.1f} M rows/s, {size / 2**20 / count:,.0f} MiB/s; sum by currency over all payments {grouped * 1000:,.0f} ms")


def slowest(engine: sa.Engine, seen: list[tuple[float, str, Any]], count: int, plans: int) -> None:
    ranked = sorted(seen, key=lambda s: -s[0])
    total = sum(s[0] for s in seen)
    print(f"  {len(seen)} statements, {total * 1000:,.0f} ms in the database driver; slowest:")
    for seconds, statement, _ in ranked[:count]:
        print(f"    {seconds * 1000:8,.0f} ms  {first_line(statement)}")
    for seconds, statement, parameters in ranked[:plans]:
        print(f"  EXPLAIN (ANALYZE, BUFFERS) of the {seconds * 1000:,.0f} ms statement:\n{explain(engine, statement, parameters)}")


def clear_snapshots(engine: sa.Engine) -> None:
    with engine.begin() as c:
        c.exec_driver_sql("DELETE FROM analytics_snapshots")
        c.exec_driver_sql("DELETE FROM analytics_mrr_movers")


def take_timed(engine: sa.Engine, recorder: Statements, day: date, label: str) -> list[tuple[float, str, Any]]:
    """One day's snapshot, rolled back; says whether it was derived from the day before and its
    churn window from the stored movers."""
    from billfold.analytics import metrics, snapshots

    sessions = session_factory(engine)
    with sessions() as session:
        with recorder.record() as seen:
            t = time.perf_counter()
            rows = snapshots.take(session, day, method="manual")
            elapsed = time.perf_counter() - t
        session.rollback()
        figures = metrics.day_figures(session, day)  # (not timed: says which way the day went)
        session.rollback()
    how = f"derived: {'yes' if figures.derived else 'no'}, window from stored movers: {'yes' if figures.window_derived else 'no'}"
    timed(f"one day's snapshot ({day}, {label}, {len(rows)} rows, {how}, rolled back)", GOALS["snapshot"], elapsed)
    return seen


def snapshot(engine: sa.Engine, recorder: Statements, plans: int) -> None:
    """The day computed in full (no day before it stored): cold, then warm."""
    clear_snapshots(engine)
    for attempt in ("cold", "warm"):
        seen = take_timed(engine, recorder, DAY, f"in full, {attempt}")
    slowest(engine, seen, 8, plans)


def backfill(engine: sa.Engine, days: int) -> list[float]:
    """``days`` days ending the day before DAY, oldest first and committed, as ``billfold analytics
    backfill`` takes them: the first in full, the next ones derived from the day before (their churn
    window in full until 30 days are stored)."""
    from billfold.analytics import snapshots

    clear_snapshots(engine)
    sessions = session_factory(engine)
    per = []
    for n in range(days, 0, -1):
        with sessions() as session:
            t = time.perf_counter()
            snapshots.take(session, DAY - timedelta(days=n), method="manual")
            session.commit()
            per.append(time.perf_counter() - t)
    total = sum(per)
    print(f"backfill of {days} days ending {DAY - timedelta(days=1)}, oldest first (committed): {total:,.1f} s; the first "
          f"(in full) {per[0] * 1000:,.0f} ms, the next ones {', '.join(f'{p * 1000:,.0f}' for p in per[1:])} ms")
    return per


def derived(engine: sa.Engine, recorder: Statements, plans: int) -> None:
    """DAY after the backfilled days: derived from DAY − 1, its window from the stored movers."""
    for attempt in ("cold", "warm"):
        seen = take_timed(engine, recorder, DAY, f"the day after a stored day, {attempt}")
    slowest(engine, seen, 8, plans)


def fill_history(engine: sa.Engine, days: int) -> None:
    """Copy the newest snapshot day's rows back to make 365 days of history for the series (the
    series reads stored rows; what they hold does not change its cost)."""
    with engine.begin() as c:
        c.exec_driver_sql(
            "INSERT INTO analytics_snapshots (id, snapshot_date, metric_type, metric_value, currency, breakdown, calculation_method,"
            " calculation_duration_ms, data_freshness, created_at, updated_at)"
            " SELECT 'snapf_' || d || '_' || s.id, s.snapshot_date - d, s.metric_type, s.metric_value, s.currency, s.breakdown,"
            " s.calculation_method, s.calculation_duration_ms, s.data_freshness, s.created_at, s.updated_at"
            " FROM analytics_snapshots s, generate_series(%(first)s, 364) d WHERE s.snapshot_date = %(day)s",
            {"first": days, "day": DAY})
        n = c.exec_driver_sql("SELECT count(*) FROM analytics_snapshots").scalar()
    print(f"analytics_snapshots: {n:,} rows (365 days; the days before the backfill's are copies of {DAY}'s)")


def cohort_matrix(engine: sa.Engine, recorder: Statements, plans: int) -> None:
    """The 24-month matrix (a) cold: no month stored, every column computed from the payments;
    (b) the settled months being stored (``cohorts.take_due``: the nightly sweep's first take, then
    one month again, what a month costs it); (c) with the months stored. The bench's clock is the
    real one: every month to DAY's is settled after its first day."""
    from billfold.analytics import cohorts
    from billfold.models import AnalyticsCohortMonth

    first = cohorts.add_months(cohorts.month_of(DAY), -23)
    sessions = session_factory(engine)
    with sessions() as session:
        cohorts.forget(session)
        session.commit()

    def matrix(label: str, show: bool) -> list[Any]:
        answers = []
        for currency in ("USD", "EUR"):
            with sessions() as session, recorder.record() as seen:
                t = time.perf_counter()
                cells = cohorts.retention(session, first, DAY, currency)
                elapsed = time.perf_counter() - t
            timed(f"cohort matrix, 24 months ({first:%Y-%m} to {DAY:%Y-%m}), {currency}, {len(cells)} cells, {label}",
                  GOALS["cohorts"], elapsed)
            answers.append(cells)
        if show:
            slowest(engine, seen, 6, plans)
        return answers

    cold = matrix("cold (no month stored)", True)
    with sessions() as session, recorder.record() as seen:
        t = time.perf_counter()
        months = cohorts.take_due(session)
        session.commit()
        elapsed = time.perf_counter() - t
        rows = session.scalar(sa.select(sa.func.count()).select_from(AnalyticsCohortMonth))
    print(f"cohorts.take_due, the first take: {len(months)} months ({months[0]:%Y-%m} to {months[-1]:%Y-%m}), "
          f"{rows:,} rows, {elapsed * 1000:,.0f} ms (committed)")
    slowest(engine, seen, 6, 0)
    last = cohorts.month_of(DAY)  # (with the real clock, the months after it are empty)
    with sessions() as session:
        cohorts.forget(session, [last])
        t = time.perf_counter()
        again = cohorts.take_due(session)
        session.commit()
        elapsed = time.perf_counter() - t
    print(f"cohorts.take_due, one month ({again[0]:%Y-%m}, the nightly sweep's monthly take): {elapsed * 1000:,.0f} ms (committed)")
    stored = matrix("stored months", False)
    stored = matrix("stored months, again", False)
    print(f"stored matrix equals the cold one: {stored == cold}")

    # (d) As on DAY at noon, its month not over: the nightly take stores the month as it was at the
    # start of the day before; the matrix adds what happened since (two days of payments) live.
    from billfold.kit import clock

    with clock.using(clock.FrozenClock(datetime.combine(DAY, datetime.min.time(), clock.UTC) + timedelta(hours=12))):
        with sessions() as session:
            cohorts.forget(session, [last])
            t = time.perf_counter()
            partial = cohorts.take_due(session)
            session.commit()
            elapsed = time.perf_counter() - t
        print(f"cohorts.take_due as on {DAY} at noon: {', '.join(f'{m:%Y-%m}' for m in partial)} as of {cohorts.settled_until()} "
              f"(the nightly sweep's daily take), {elapsed * 1000:,.0f} ms (committed)")
        current = matrix(f"the last month stored to {cohorts.settled_until():%m-%d}, brought up to date", True)
    print(f"that matrix equals the cold one: {current == cold}")
    with sessions() as session:
        cohorts.take_due(session)  # (the last month whole again)
        session.commit()


def series(engine: sa.Engine, url: str, requests: int) -> None:
    from billfold.analytics import snapshots

    first = DAY - timedelta(days=89)
    sessions = session_factory(engine)
    times = []
    for _ in range(requests):
        with sessions() as session:
            t = time.perf_counter()
            rows = snapshots.series(session, "mrr", first, DAY)
            times.append(time.perf_counter() - t)
    times.sort()
    print(f"snapshots.series('mrr', 90 days) directly, {requests} calls, {len(rows)} rows: p50 {statistics.median(times) * 1000:.1f} ms, "
          f"p99 {times[int(len(times) * 0.99)] * 1000:.1f} ms")
    if importlib.util.find_spec("billfold.analytics.api") is None:
        print("90-day MRR series over HTTP: MISSING (GET /v1/analytics/metrics is not on this branch yet); the figure above is "
              "the series read alone, without HTTP, auth and serialisation")
        return
    import httpx
    from checkout import serve

    from billfold.accounts.api_keys import create_api_key

    with sessions() as session:
        _, secret = create_api_key(session, name="bench", scopes=["admin"] if _has_admin_scope() else ["read"], created_by=None)
        session.commit()
    query = f"/v1/analytics/metrics?metric=mrr&from={first}&to={DAY}&granularity=day"
    with serve(url, Path(tempfile.mkdtemp(prefix="bench-analytics-")), 1) as (_, base):
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {secret}"}, timeout=60) as client:
            answer = client.get(query)
            answer.raise_for_status()
            times = []
            for _ in range(requests):
                t = time.perf_counter()
                client.get(query).raise_for_status()
                times.append(time.perf_counter() - t)
    times.sort()
    p50, p99 = statistics.median(times), times[int(len(times) * 0.99)]
    timed(f"GET {query}, {requests} requests, p99", GOALS["series"], p99, f" (p50 {p50 * 1000:.1f} ms, {len(answer.content):,} bytes)")


def _has_admin_scope() -> bool:
    from billfold.accounts.api_keys import API_KEY_SCOPES

    return "admin" in API_KEY_SCOPES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscriptions", type=int, default=1_000_000)
    parser.add_argument("--payments", type=int, default=10_000_000)
    parser.add_argument("--backfill-days", type=int, default=31,
                        help="days backfilled (oldest first) before DAY is timed as the day after a stored day; "
                             "31 or more: DAY's churn window is read from the stored movers too")
    parser.add_argument("--requests", type=int, default=50, help="requests of the 90-day series")
    parser.add_argument("--plans", type=int, default=3, help="EXPLAIN ANALYZE of this many slowest statements")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--keep", action="store_true", help="reuse the loaded database if there is one, and keep it")
    parser.add_argument("--database", default=databases.SERVER_URLS["postgresql"], help="PostgreSQL server URL")
    parser.add_argument("--set", default="", help="settings for the bench's connections, e.g. jit=off,work_mem=64MB")
    parser.add_argument("--name", default=DATABASE, help="the bench database's name")
    parser.add_argument("--only", default="snapshot,backfill,cohorts,series", help="what to time")
    args = parser.parse_args()
    databases.SERVER_URLS["postgresql"] = args.database
    only = set(args.only.split(","))
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    server = sa.make_url(args.database)
    url = server.set(database=args.name)
    plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(server.set(drivername="postgresql").render_as_string(hide_password=False), autocommit=True) as admin:
        loaded = admin.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                               (args.name,)).fetchone()
    sizes = f"loaded {args.subscriptions} {args.payments} {args.seed}"
    if not (args.keep and loaded and loaded[0] == sizes):
        engine = create_engine(databases.fresh_database("postgresql", args.name, Path(tempfile.gettempdir())))
        databases.migrate(engine)
        engine.dispose()
        print(f"loading {args.subscriptions:,} subscriptions and about {args.payments:,} payments into {args.name}")
        load(plain, args.subscriptions, args.payments, args.seed)
        with psycopg.connect(plain, autocommit=True) as c:
            c.execute(f"COMMENT ON DATABASE {args.name} IS '{sizes}'")
    else:
        print(f"reusing {args.name} (--keep)")
        engine = create_engine(url)
        t = time.perf_counter()
        databases.migrate(engine)  # a migration added since the load (its indexes are built here, once)
        engine.dispose()
        print(f"migrated to head in {time.perf_counter() - t:.0f} s")
    engine = create_engine(url)
    settings = [item.split("=", 1) for item in args.set.split(",") if item]
    if settings:
        @sa.event.listens_for(engine, "connect")
        def _settings(connection: Any, record: Any) -> None:
            with connection.cursor() as cursor:
                for name, value in settings:
                    cursor.execute(f"SET {name} = '{value}'")
            connection.commit()

        print(f"on the bench's connections: {', '.join(f'{n} = {v}' for n, v in settings)}")
    recorder = Statements(engine)
    baseline(plain)
    try:
        if "snapshot" in only:
            snapshot(engine, recorder, args.plans)
        if "cohorts" in only:
            cohort_matrix(engine, recorder, min(args.plans, 2))
        if "backfill" in only and args.backfill_days:
            backfill(engine, args.backfill_days)
            derived(engine, recorder, args.plans)
        if "series" in only:
            with engine.begin() as c:
                has = c.exec_driver_sql("SELECT count(*) FROM analytics_snapshots WHERE snapshot_date = %(d)s", {"d": DAY}).scalar()
            if not has:
                from billfold.analytics import snapshots

                with session_factory(engine)() as session:
                    snapshots.take(session, DAY, method="manual")
                    session.commit()
            with engine.begin() as c:
                c.exec_driver_sql("DELETE FROM analytics_snapshots WHERE id LIKE 'snapf_%%'")
                taken = c.exec_driver_sql("SELECT count(DISTINCT snapshot_date) FROM analytics_snapshots").scalar()
            fill_history(engine, taken)  # the days taken end with DAY; older ones are copies
            series(engine, url.render_as_string(hide_password=False), args.requests)
    finally:
        engine.dispose()
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not args.keep:
        databases.drop_database("postgresql", url)
        print(f"dropped {args.name} (--keep keeps it)")


if __name__ == "__main__":
    main()
