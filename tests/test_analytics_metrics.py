"""The analytics metrics (docs/analytics.md "## Metrics") over a business history made with the real
services and the billing clock: signups, a trial that converts and one that does not, an upgrade,
a downgrade, a yearly plan, churn at period end, a cancellation with a refund, a pause, a
reactivation, declined payments, two currencies. Every figure is compared with a deliberately
simple computation written here over the raw rows, in plain Python, day by day; a property test
checks that MRR movements add up to the change in MRR over random periods, to the cent.

Every database: the metrics are SQL with dialect-sensitive arithmetic (integer division, date
ranges, conditional sums)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from billfold.analytics import jobs, metrics, recognition
from billfold.kit import clock
from billfold.kit.db import create_engine, session_factory, transaction
from billfold.models import (
    CreditNote,
    Invoice,
    InvoiceLine,
    MembershipType,
    Payment,
    Product,
    Refund,
    Subscription,
    SubscriptionBilling,
    UserMembership,
)
from tests.conftest import MigratedDatabases, worker_id
from tests.subscribing import Shop, shop  # noqa: F401  (fixture)

pytestmark = pytest.mark.every_database

START = datetime(2026, 1, 5, 10, 0, tzinfo=clock.UTC)
DAYS = 100
DAY = timedelta(days=1)


@pytest.fixture
def engine(migrated: MigratedDatabases, backend: str) -> Iterator[Engine]:
    """A database of this test's own: the metrics read every row, so no other test's may be there."""
    fresh = create_engine(migrated.copy(backend, f"billfold_metrics_{worker_id()}"))
    yield fresh
    fresh.dispose()


def day_of(n: int) -> date:
    return (START + n * DAY).date()


# The history


def make_history(shop: Shop, frozen_clock: clock.FrozenClock) -> None:
    frozen_clock.set(START)
    admin = shop.admin()
    basic, pro = shop.product(1000), shop.product(3000)
    yearly = shop.product(12010, interval="yearly")  # a twelfth is 1000.83: 1001
    trial = shop.product(1000, trial_days=14)
    euro = shop.product(2000, currency="EUR")
    with transaction(session_factory(shop.engine)) as session:
        kind = MembershipType(name="Club", duration_type="recurring", duration_days=30, price_cents=2000, currency="EUR")
        session.add(kind)
        session.flush()
        session.get(Product, euro).metadata_ = {"membership_type_id": kind.id}
    people = {name: shop.customer(name) for name in ("ada", "bob", "cy", "eve", "fay", "gus", "hal", "jo")}
    people["dee"] = shop.customer("dee", token="tok_sandbox_insufficient_funds")
    people["ivy"] = shop.customer("ivy", token="tok_sandbox_decline")
    subs: dict[str, str] = {}

    def subscribe(name: str, product: str, expect: int = 201) -> None:
        subs[name] = shop.subscribe(people[name], product, expect=expect)["subscription_id" if expect == 402 else "id"]

    def act(n: int) -> None:
        if n == 0:
            for name, plan in (("ada", basic), ("eve", yearly), ("cy", trial), ("dee", trial), ("gus", euro), ("hal", euro)):
                subscribe(name, plan)
            subscribe("ivy", basic, expect=402)  # declined: never active
        elif n == 3:
            subscribe("bob", pro)
        elif n == 5:
            subscribe("jo", basic)
        elif n == 30:  # jo's card will fail at her renewal on day 36; she fixes it on day 38
            shop.post(people["jo"], subs["jo"], "change", payment_method_id=shop.save_method(people["jo"].token, "tok_sandbox_insufficient_funds"))
        elif n == 38:
            shop.post(people["jo"], subs["jo"], "change", payment_method_id=people["jo"].card)
        elif n == 10:
            shop.post(people["ada"], subs["ada"], "change", product_id=pro)  # upgrade, prorated and paid now
        elif n == 20:
            subscribe("fay", basic)
        elif n == 25:
            shop.post(people["fay"], subs["fay"], "cancel", at_period_end=True)
        elif n == 40:
            shop.post(people["bob"], subs["bob"], "change", product_id=basic)  # downgrade: credit, cheaper from renewal
        elif n == 45:
            with shop.client(admin) as client:
                done = client.post(f"/v1/subscriptions/{subs['gus']}/cancel", json={"at_period_end": False, "refund": True})
            assert done.status_code == 200 and done.json()["refund_status"] == "succeeded", done.text
        elif n == 50:
            shop.post(people["hal"], subs["hal"], "pause")
        elif n == 75:
            subscribe("fay", basic)  # back again: a reactivation

    for n in range(DAYS):
        frozen_clock.set(START + n * DAY)
        act(n)
        for sweep in ("renew", "trials", "dunning"):
            shop.sweep(sweep)


# The plain computation over the raw rows


@dataclass
class Rows:
    subs: dict[str, Any]
    billing: dict[str, Any]
    invoices: dict[str, Any]
    lines: list[Any]
    interval: dict[str, str]
    payments: list[Any]
    refunds: list[Any]
    notes: list[Any]
    memberships: list[Any]


def load(engine: Engine) -> Rows:
    with session_factory(engine)() as s:
        return Rows(
            {r.id: r for r in s.scalars(sa.select(Subscription))},
            {r.subscription_id: r for r in s.scalars(sa.select(SubscriptionBilling))},
            {r.id: r for r in s.scalars(sa.select(Invoice))},
            list(s.scalars(sa.select(InvoiceLine))),
            {r.id: r.billing_interval for r in s.scalars(sa.select(Product))},
            list(s.scalars(sa.select(Payment))),
            list(s.scalars(sa.select(Refund))),
            list(s.scalars(sa.select(CreditNote))),
            list(s.scalars(sa.select(UserMembership))),
        )


def twelfth(cents: int) -> int:
    return int((Decimal(cents) / 12).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def sub_mrr(rows: Rows, sub_id: str, at: datetime) -> int:
    billing = rows.billing[sub_id]
    if (billing.cancelled_at and billing.cancelled_at <= at) or (billing.paused_at and billing.paused_at <= at):
        return 0
    total = 0
    for line in rows.lines:
        invoice = rows.invoices[line.invoice_id]
        if invoice.subscription_id != sub_id or invoice.status != "paid" or invoice.paid_date > at or line.kind != "item":
            continue
        if line.period_start <= at < line.period_end:
            amount = line.amount_cents - invoice.discount_cents
            total += twelfth(amount) if rows.interval[line.product_id] == "yearly" else amount
    return total


def customer_mrr(rows: Rows, at: datetime) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = defaultdict(int)
    for sub in rows.subs.values():
        out[sub.user_id or sub.organization_id, sub.currency] += sub_mrr(rows, sub.id, at)
    return out


def total_mrr(rows: Rows, at: datetime) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for (_, currency), cents in customer_mrr(rows, at).items():
        out[currency] += cents
    return {c: v for c, v in out.items() if v}


def plain_movements(rows: Rows, a: int, b: int) -> dict[str, dict[str, int]]:
    """Movements from the end of day a to the end of day b; reactivation when the customer paid at
    the end of any day before a."""
    before, after = customer_mrr(rows, metrics.end_of(day_of(a))), customer_mrr(rows, metrics.end_of(day_of(b)))
    earlier = [customer_mrr(rows, metrics.end_of(day_of(n))) for n in range(-1, a)]
    out: dict[str, dict[str, int]] = {}
    for key in set(before) | set(after):
        x, y = before.get(key, 0), after.get(key, 0)
        if x == y:
            continue
        if x == 0:
            kind = "reactivation" if any(m.get(key, 0) for m in earlier) else "new"
        elif y == 0:
            kind = "churned"
        else:
            kind = "expansion" if y > x else "contraction"
        kinds = out.setdefault(key[1], {k: 0 for k in metrics.MOVEMENT_KINDS} | {"net_new": 0})
        kinds[kind] += y - x
        kinds["net_new"] += y - x
    return out


def plain_revenue(rows: Rows, day: date) -> dict[str, tuple[int, int, int, int]]:
    """(gross, refunds, failed, attempts) per currency."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for p in rows.payments:
        if p.completed_at and p.completed_at.date() == day and p.status in ("completed", "refunded"):
            out[p.currency][0] += p.amount_cents
        if p.created_at.date() == day and p.status in ("completed", "refunded", "failed"):
            out[p.currency][3] += 1
            out[p.currency][2] += p.status == "failed"
    for r in rows.refunds:
        if r.completed_at and r.completed_at.date() == day and r.status == "succeeded":
            out[r.currency][1] += r.amount_cents
    return {c: tuple(v) for c, v in out.items()}  # type: ignore[misc]


def plain_counts(rows: Rows, at: datetime) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"active": 0, "trialing": 0, "past_due": 0})
    for sub in rows.subs.values():
        cancelled = rows.billing[sub.id].cancelled_at
        live = not cancelled or cancelled > at
        if sub_mrr(rows, sub.id, at):
            out[sub.currency]["active"] += 1
        if live and sub.trial_end and sub.created_at <= at < sub.trial_end:
            out[sub.currency]["trialing"] += 1
        unpaid = [
            line for line in rows.lines
            if rows.invoices[line.invoice_id].subscription_id == sub.id and line.kind == "item"
            and line.period_start <= at < line.period_end and rows.invoices[line.invoice_id].issue_date <= at
            and rows.invoices[line.invoice_id].status in ("open", "uncollectible", "paid")
            and (rows.invoices[line.invoice_id].paid_date is None or rows.invoices[line.invoice_id].paid_date > at)
        ]
        if live and unpaid:
            out[sub.currency]["past_due"] += 1
    return {c: v for c, v in out.items() if any(v.values())}


def exact_earned(rows: Rows, invoice: Any, at: datetime) -> Fraction:
    """What an invoice without credit notes has earned before ``at``, as an exact fraction."""
    if at <= invoice.paid_date:
        return Fraction(0)
    earned = Fraction(0)
    for line in rows.lines:
        if line.invoice_id != invoice.id:
            continue
        if line.period_start is None:
            earned += line.amount_cents
        else:
            whole = (line.period_end - line.period_start).total_seconds()
            part = min(max((at - line.period_start).total_seconds(), 0), whole)
            earned += Fraction(line.amount_cents) * Fraction(int(part), int(whole))
    return earned


# The test


def test_every_metric_equals_a_plain_computation_over_the_rows(shop: Shop, frozen_clock: clock.FrozenClock) -> None:
    make_history(shop, frozen_clock)
    rows = load(shop.engine)
    sessions = session_factory(shop.engine)
    with sessions() as session:
        # Figures a person can check by hand.
        mid_january = metrics.mrr(session, metrics.end_of(day_of(15)))
        assert mid_january["USD"][0] == 1000 + 1001 + 3000 + 1000 + 1000, "ada basic (upgrade counts from her renewal), eve 12010/12, bob, cy converted, jo; dee past due"
        assert mid_january["EUR"][0] == 4000
        assert metrics.mrr(session, metrics.end_of(day_of(35)))["USD"][0] == 3000 + 1001 + 3000 + 1000 + 1000 + 1000
        assert metrics.subscription_counts(session, metrics.end_of(day_of(15)))["USD"]["past_due"] == 1
        assert metrics.subscription_counts(session, metrics.end_of(day_of(37)))["USD"]["past_due"] == 1, "jo, in dunning"
        assert metrics.movements(session, metrics.end_of(day_of(35)), metrics.end_of(day_of(36)))["USD"]["churned"] == -1000, "jo: unpaid"
        assert metrics.movements(session, metrics.end_of(day_of(37)), metrics.end_of(day_of(38)))["USD"]["reactivation"] == 1000, "jo: paid again"
        assert metrics.movements(session, metrics.end_of(day_of(74)), metrics.end_of(day_of(75)))["USD"]["reactivation"] == 1000
        assert metrics.movements(session, metrics.end_of(day_of(44)), metrics.end_of(day_of(45)))["EUR"]["churned"] == -2000
        [refund] = rows.refunds
        assert {m.metric_type: m.value for m in metrics.revenue(session, day_of(45)) if m.currency == "EUR"}["revenue_refunds"] == refund.amount_cents > 0

        for n in range(-1, DAYS):
            at = metrics.end_of(day_of(n))
            assert {c: v[0] for c, v in metrics.mrr(session, at).items() if v[0]} == total_mrr(rows, at), n
            if n >= 0:
                assert {c: k for c, k in metrics.movements(session, metrics.end_of(day_of(n - 1)), at).items()} == plain_movements(rows, n - 1, n), n
            assert {c: v for c, v in metrics.subscription_counts(session, at).items() if any(v.values())} == plain_counts(rows, at), n
            if n >= 0:
                figures = {(m.currency, m.metric_type): m.value for m in metrics.revenue(session, day_of(n))}
                for currency, (gross, refunds, failed, attempts) in plain_revenue(rows, day_of(n)).items():
                    assert figures[currency, "revenue_gross"] == gross and figures[currency, "revenue_refunds"] == refunds
                    assert figures[currency, "revenue_net"] == gross - refunds and figures[currency, "payments_failed"] == failed
                    assert figures[currency, "payment_failure_rate"] == (metrics.ratio(failed, attempts) if attempts else None)
        assert any(m.metric_type == "payments_failed" and m.value for n in range(DAYS) for m in metrics.revenue(session, day_of(n)))

        # Every movement names the rows behind it, and the rows behind MRR add up to it.
        for m in metrics.movement_rows(session, metrics.end_of(day_of(0)), metrics.end_of(day_of(DAYS - 1))):
            assert m.subscription_ids and m.change_cents == customer_mrr(rows, metrics.end_of(day_of(DAYS - 1)))[m.customer_id, m.currency] - customer_mrr(rows, metrics.end_of(day_of(0)))[m.customer_id, m.currency]
        at = metrics.end_of(day_of(60))
        assert {c: sum(r.mrr_cents for r in metrics.mrr_rows(session, at) if r.currency == c) for c in ("USD", "EUR")} == {c: total_mrr(rows, at).get(c, 0) for c in ("USD", "EUR")}

        # Churn, retention, ARPU, LTV over a month: from the plain movements.
        a, b = 30, 60
        plain = plain_movements(rows, a, b)
        start_customers = customer_mrr(rows, metrics.end_of(day_of(a)))
        kept = metrics.retention(session, metrics.end_of(day_of(a)), metrics.end_of(day_of(b)))
        for currency in ("USD", "EUR"):
            paying = [k for k, v in start_customers.items() if v and k[1] == currency]
            gone = [k for k in paying if not customer_mrr(rows, metrics.end_of(day_of(b))).get(k)]
            start_mrr = total_mrr(rows, metrics.end_of(day_of(a))).get(currency, 0)
            r = kept[currency]
            assert (r.customers_at_start, r.customers_churned, r.mrr_at_start) == (len(paying), len(gone), start_mrr)
            assert r.logo_churn_rate == metrics.ratio(len(gone), len(paying))
            moved = plain[currency]
            assert r.revenue_churn_rate == metrics.ratio(-(moved["churned"] + moved["contraction"]), start_mrr)
            assert r.net_revenue_retention == metrics.ratio(start_mrr + moved["expansion"] + moved["contraction"] + moved["churned"], start_mrr)
        assert kept["EUR"].customers_churned == 2 and kept["EUR"].logo_churn_rate == Decimal("1.0000"), "gus cancelled, hal paused"
        end_paying = [v for k, v in customer_mrr(rows, metrics.end_of(day_of(b))).items() if v and k[1] == "USD"]
        arpu = int((Decimal(sum(end_paying)) / len(end_paying)).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        usd = kept["USD"]
        assert (usd.customers_at_end, usd.mrr_at_end, usd.arpu_cents) == (len(end_paying), sum(end_paying), arpu)
        assert usd.customers_churned == 1, "fay's first subscription ended"
        assert usd.ltv_estimate_cents == int((Decimal(arpu) * usd.customers_at_start / usd.customers_churned).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        calm = metrics.retention(session, metrics.end_of(day_of(80)), metrics.end_of(day_of(81)))["USD"]
        assert calm.customers_churned == 0 and calm.logo_churn_rate == 0 and calm.ltv_estimate_cents is None, "no churn: no lifetime, not a division by zero"

        # Trials: cy converted, dee did not.
        ended, converted, rate = metrics.trial_conversion(session, START, START + 30 * DAY)["USD"]
        assert (ended, converted, rate) == (2, 1, Decimal("0.5000"))

        # Memberships: the euro plan sells one; gus's ended when he cancelled.
        for n in (0, 10, 45, 46, 60, DAYS - 1):
            lo, hi = metrics.start_of(day_of(n)), metrics.end_of(day_of(n))
            got = metrics.memberships(session, lo, hi)
            live = [m for m in rows.memberships if m.status != "pending" and m.start_date <= hi and (m.end_date is None or m.end_date > hi)]
            started = [m for m in rows.memberships if m.status != "pending" and lo <= m.start_date < hi]
            expired = [m for m in rows.memberships if m.status != "pending" and m.end_date and lo <= m.end_date < hi]
            assert sum(t["active"] for t in got.values()) == len(live), n
            assert sum(t["started"] for t in got.values()) == len(started), n
            assert sum(t["expired"] for t in got.values()) == len(expired), n
        assert sum(t["started"] for t in metrics.memberships(session, START, START + DAY).values()) == 2

        # Revenue recognition, month by month.
        credited = {note.invoice_id for note in rows.notes}
        paid_lines = sum(line.amount_cents for line in rows.lines if rows.invoices[line.invoice_id].status == "paid")
        given_back = sum(note.amount_cents for note in rows.notes)
        months = [(2026, m) for m in range(1, 6)]
        recognised_total = defaultdict(int)
        for year, month in months:
            got = recognition.recognised(session, year, month)
            lo, hi = recognition.month_start(year, month), recognition.month_start(*recognition.next_month(year, month))
            for currency, figure in got.items():
                recognised_total[currency] += figure.recognised_cents
                plain_invoices = [i for i in rows.invoices.values() if i.status == "paid" and i.currency == currency and i.id not in credited]
                exact = sum(exact_earned(rows, i, hi) - exact_earned(rows, i, lo) for i in plain_invoices)
                mine = sum(v[0] for k, v in figure.by_invoice.items() if k not in credited)
                lines_touching = sum(1 for line in rows.lines if line.invoice_id in {i.id for i in plain_invoices})
                assert abs(mine - exact) <= lines_touching, (year, month, currency)
                assert figure.recognised_cents == sum(v[0] for v in figure.by_invoice.values())
            eve_yearly = next(line for line in rows.lines if rows.interval.get(line.product_id or "") == "yearly")
            if (year, month) == (2026, 2):
                whole = (eve_yearly.period_end - eve_yearly.period_start).total_seconds()
                share = Fraction(eve_yearly.amount_cents) * Fraction(int((hi - lo).total_seconds()), int(whole))
                assert abs(got["USD"].by_invoice[eve_yearly.invoice_id][0] - share) <= 1, "a twelfth-ish of the year: 28 of 365 days"
        last = recognition.recognised(session, *months[-1])
        totals = sum(recognised_total.values()) + sum(f.deferred_cents for f in last.values())
        assert totals == paid_lines - given_back, "every cent paid is recognised or deferred, less what was given back"

        # The day's full set is shaped for analytics_snapshots.
        shown = metrics.day_metrics(session, day_of(60))
        assert len({(m.metric_type, m.currency) for m in shown}) == len(shown)
        mrr_usd = next(m for m in shown if (m.metric_type, m.currency) == ("mrr", "USD"))
        assert mrr_usd.metric_value == Decimal(total_mrr(rows, metrics.end_of(day_of(60)))["USD"]) / 100
        assert sum(mrr_usd.breakdown["by_plan"].values()) == mrr_usd.value

    # Property: over any period, the movements add up to the change in MRR, to the cent.
    instants = st.integers(-2 * 24, DAYS * 24).map(lambda h: START + timedelta(hours=h))

    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(instants, instants)
    def reconciles(a: datetime, b: datetime) -> None:
        with sessions() as session:
            before, after = metrics.mrr(session, a), metrics.mrr(session, b)
            moved = metrics.movements(session, a, b)
            for currency in set(before) | set(after) | set(moved):
                change = after.get(currency, (0, {}))[0] - before.get(currency, (0, {}))[0]
                kinds = moved.get(currency, {"net_new": 0})
                assert kinds["net_new"] == change == sum(kinds.get(k, 0) for k in metrics.MOVEMENT_KINDS)

    reconciles()

    # Days taken in order are derived from the day before (and their churn window from the stored
    # movers) and equal the figures computed over the whole history, every day.
    jobs.fill_history(sessions, day_of(-1), day_of(DAYS - 1))
    shape = lambda values: {(v.metric_type, v.currency): (v.value, v.breakdown) for v in values if v.value is not None}  # noqa: E731
    with sessions() as session:
        for n in range(-1, DAYS):
            derived = metrics.day_figures(session, day_of(n))
            assert derived.derived == (n >= 0) and derived.window_derived == (n >= 30), n
            full = metrics.day_figures(session, day_of(n), derive=False)
            assert shape(derived.values) == shape(full.values), n
            assert [(m.customer_id, m.currency, m.kind, m.before_cents, m.after_cents) for m in derived.movers] == [
                (m.customer_id, m.currency, m.kind, m.before_cents, m.after_cents) for m in full.movers], n
