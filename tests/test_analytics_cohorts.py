"""User cohorts and the retention matrix (docs/analytics.md, "Events and cohorts"): a generated
history (cohorts over several months, churn, failed payments, refunds across a month's end, two
currencies) checked against a deliberately simple computation over the raw rows; ``rebuild``
derives what the live hooks wrote; two first purchases committing side by side both succeed."""

from __future__ import annotations

import random
import threading
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from billfold.analytics import cohorts
from billfold.kit import clock
from billfold.kit.db import session_factory, transaction
from billfold.kit.ids import new_id
from billfold.models import AnalyticsCohortMonth, AnalyticsEvent, Payment, Refund, Subscription, UserCohort
from billfold.payments.states import PAYMENT, REFUND
from billfold.subscriptions.states import SUBSCRIPTION
from tests import factories as make

FIRST, LAST = date(2025, 1, 1), date(2025, 6, 1)


def month(moment: datetime) -> date:
    return date(moment.year, moment.month, 1)


class History:
    """Rows made through the state machines, so the live hooks write the cohorts, at the clock's time."""

    def __init__(self, session: Session, frozen: clock.FrozenClock) -> None:
        self.session, self.frozen = session, frozen
        self.provider = make.provider(session).id
        self.product = make.product(session).id

    def at(self, moment: datetime) -> None:
        self.frozen.set(moment)

    def subscribe(self, user_id: str, currency: str, price: int) -> str:
        now = clock.now()
        sub = Subscription(user_id=user_id, product_id=self.product, provider_id=self.provider, status="trialing",
                           current_period_start=now, current_period_end=now, price_cents=price, currency=currency)
        self.session.add(sub)
        self.session.flush()
        SUBSCRIPTION.start(self.session, sub, "trialing", by="test")
        return sub.id

    def pay(self, user_id: str, subscription_id: str | None, currency: str, cents: int, *, fails: bool = False,
            order_id: str | None = None) -> str:
        payment = Payment(id=new_id("pay"), user_id=user_id, subscription_id=subscription_id, order_id=order_id,
                          provider_id=self.provider, amount_cents=cents, currency=currency, status="pending")
        self.session.add(payment)
        PAYMENT.start(self.session, payment, "pending", by="test")
        PAYMENT.move(self.session, payment, "failed" if fails else "completed", by="test")
        if not fails:
            payment.completed_at = clock.now()
        self.session.flush()  # (before a refund of it)
        return payment.id

    def refund(self, payment_id: str, currency: str, cents: int) -> Refund:
        refund = Refund(id=new_id("re"), payment_id=payment_id, provider_id=self.provider, amount_cents=cents,
                        currency=currency, status="pending")
        self.session.add(refund)
        REFUND.start(self.session, refund, "pending", by="test")
        REFUND.move(self.session, refund, "succeeded", by="test")
        refund.completed_at = clock.now()
        return refund


def generate(session: Session, frozen: clock.FrozenClock) -> None:
    """About 20 customers starting January to May 2025, paying monthly until they churn; one in ten
    payments fails and is paid a day later; some are partly refunded ten days on (across a month's
    end at times); a third pay in EUR; one pays in both currencies; one only ever trials."""
    rnd = random.Random(14)
    history = History(session, frozen)
    actions: list[tuple[datetime, int, Any]] = []
    for n in range(20):
        user_id = make.user(session).id
        currency = "EUR" if n % 3 == 0 else "USD"
        price = rnd.randrange(1000, 2500, 50)
        start = datetime(2025, 1 + rnd.randrange(5), rnd.randrange(1, 28), 12, tzinfo=clock.UTC)
        months = rnd.randrange(1, 6)
        actions.append((start, n, ("subscribe", user_id, currency, price)))
        for k in range(months):
            due = start + timedelta(days=30 * k)
            if due >= datetime(2025, 7, 1, tzinfo=clock.UTC):
                break
            fails = rnd.random() < 0.1
            actions.append((due, n, ("pay", user_id, currency, price, fails)))
            if fails:
                actions.append((due + timedelta(days=1), n, ("pay", user_id, currency, price, False)))
            elif rnd.random() < 0.2:
                actions.append((due + timedelta(days=10), n, ("refund", user_id, currency, price // 4)))
        if n == 1:  # this one also buys something in EUR in their second month
            actions.append((start + timedelta(days=35), n, ("pay", user_id, "EUR", 999, False)))
    trialist = make.user(session).id
    actions.append((datetime(2025, 2, 3, tzinfo=clock.UTC), 99, ("subscribe", trialist, "USD", 1000)))
    subscription: dict[str, str] = {}
    last_payment: dict[tuple[str, str], str] = {}
    session.commit()
    for moment, _, action in sorted(actions, key=lambda a: (a[0], a[1])):
        history.at(moment)
        kind, user_id, currency = action[:3]
        if kind == "subscribe":
            subscription[user_id] = history.subscribe(user_id, currency, action[3])
        elif kind == "pay":
            payment_id = history.pay(user_id, subscription[user_id], currency, action[3], fails=action[4])
            if not action[4]:
                last_payment[(user_id, currency)] = payment_id
        else:
            history.refund(last_payment[(user_id, currency)], currency, action[3])
        session.commit()


def simple_matrix(session: Session, currency: str, cohort_type: str) -> list[tuple[Any, ...]]:
    """The matrix worked out the plain way, from the raw rows, as (cohort month, index, size,
    customers, revenue): a user's cohort from their first paid payment or first subscription."""
    payments = session.execute(sa.select(Payment.id, Payment.user_id, Payment.currency, Payment.amount_cents,
                                         Payment.status, Payment.completed_at)).all()
    paid = [p for p in payments if p.status in ("completed", "refunded") and p.completed_at is not None and p.user_id]
    refunds = session.execute(sa.select(Refund.payment_id, Refund.currency, Refund.amount_cents, Refund.status, Refund.completed_at)).all()
    subscriptions = session.execute(sa.select(Subscription.user_id, Subscription.created_at)).all()
    first: dict[str, date] = {}
    for user_id, moment in ([(p.user_id, p.completed_at) for p in paid] if cohort_type == "first_purchase"
                            else [(s.user_id, s.created_at) for s in subscriptions if s.user_id]):
        first[user_id] = min(first.get(user_id, month(moment)), month(moment))
    end = datetime(2025, 7, 1, tzinfo=clock.UTC)
    payer = {p.id: p.user_id for p in payments}
    cells = []
    for cohort_month in [date(2025, m, 1) for m in range(1, 7)]:
        members = {u for u, m in first.items() if m == cohort_month}
        members = {u for u in members if any(p.user_id == u and p.currency == currency and p.completed_at < end for p in paid)}
        if not members:
            continue
        for index in range(7 - cohort_month.month):
            target = date(2025, cohort_month.month + index, 1)
            here = [p for p in paid if p.user_id in members and p.currency == currency and month(p.completed_at) == target]
            back = [r for r in refunds if payer[r.payment_id] in members and r.currency == currency and r.status == "succeeded"
                    and r.completed_at is not None and month(r.completed_at) == target]
            revenue = sum(p.amount_cents for p in here) - sum(r.amount_cents for r in back)
            cells.append((cohort_month, index, len(members), len({p.user_id for p in here}), revenue))
    return cells


def cohort_rows(session: Session) -> set[tuple[str, str, date]]:
    return {tuple(row) for row in session.execute(sa.select(UserCohort.user_id, UserCohort.cohort_type, UserCohort.cohort_month))}


@pytest.mark.every_database  # month boundaries, CASE over bind parameters and INSERT ... SELECT differ by dialect
def test_the_retention_matrix_equals_a_simple_computation_and_rebuild_equals_the_live_rows(session: Session) -> None:
    with clock.using(clock.FrozenClock(datetime(2025, 1, 1, tzinfo=clock.UTC))) as frozen:
        generate(session, frozen)
    for currency in ("USD", "EUR"):
        for cohort_type in cohorts.COHORT_TYPES:
            matrix = cohorts.retention(session, FIRST, LAST, currency, cohort_type)
            got = [(c.cohort_month, c.month_index, c.cohort_size, c.customers, c.revenue_cents) for c in matrix]
            assert got == simple_matrix(session, currency, cohort_type), (currency, cohort_type)
    usd = cohorts.retention(session, FIRST, LAST, "USD")
    assert len({c.cohort_month for c in usd}) >= 4 and any(c.customers < c.cohort_size for c in usd), "several cohorts, and churn"
    for cell in usd:
        start = next(c for c in usd if c.cohort_month == cell.cohort_month and c.month_index == 0)
        assert cell.revenue_share == (Decimal(cell.revenue_cents) / start.revenue_cents).quantize(Decimal("0.0001"))
        assert cell.month == cohorts.add_months(cell.cohort_month, cell.month_index)

    # Every cell lists the rows behind it, and they add up to it.
    raw_payments = {p.id: p for p in session.scalars(sa.select(Payment))}
    raw_refunds = {r.id: r for r in session.scalars(sa.select(Refund))}
    for cell in [c for c in usd if c.revenue_cents][:6]:
        rows = cohorts.retention_cell(session, cell.cohort_month, cell.month_index, "USD")
        assert len(rows.user_ids) == cell.customers
        assert {raw_payments[p].user_id for p in rows.payment_ids} == set(rows.user_ids)
        total = sum(raw_payments[p].amount_cents for p in rows.payment_ids) - sum(raw_refunds[r].amount_cents for r in rows.refund_ids)
        assert total == cell.revenue_cents

    live = cohort_rows(session)
    assert {t for _, t, _ in live} == set(cohorts.COHORT_TYPES)
    session.execute(sa.delete(UserCohort))
    written = cohorts.rebuild(session)
    assert cohort_rows(session) == live, "rebuild derives what the hooks wrote"
    assert sum(written.values()) == len(live)
    assert cohorts.rebuild(session) == written and cohort_rows(session) == live, "and again, replacing"


@pytest.mark.every_database  # the insert-ignore of the cohort row is a dialect branch, and a race
def test_two_first_purchases_committed_together_both_succeed_and_make_one_cohort_row(engine: Engine, backend: str) -> None:
    with transaction(session_factory(engine)) as session:
        user = make.user(session)
        user_id, provider_id = user.id, make.provider(session).id
        orders = [make.order(session, user=user, status="pending").id for _ in range(2)]
    # SQLite has one writer at a time: the second waits for the first's commit at its first write.
    together = threading.Barrier(1 if backend == "sqlite" else 2, timeout=30)
    errors: list[BaseException] = []

    def buy(order_id: str) -> None:
        try:
            with session_factory(engine)() as session:
                payment = Payment(id=new_id("pay"), user_id=user_id, order_id=order_id, provider_id=provider_id,
                                  amount_cents=500, currency="USD", status="pending")
                session.add(payment)
                PAYMENT.start(session, payment, "pending", by="test")
                PAYMENT.move(session, payment, "completed", by="test")
                session.flush()
                together.wait()
                session.commit()
        except BaseException as error:  # noqa: BLE001  (reported below)
            errors.append(error)

    threads = [threading.Thread(target=buy, args=(order_id,)) for order_id in orders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with session_factory(engine)() as session:
        assert session.scalars(sa.select(UserCohort.cohort_type).where(UserCohort.user_id == user_id)).all() == ["first_purchase"]
        events = session.scalars(sa.select(AnalyticsEvent.event_type).where(AnalyticsEvent.user_id == user_id)).all()
        assert events == ["payment_completed", "payment_completed"]


def test_a_range_backwards_or_an_unknown_cohort_type_is_refused(session: Session) -> None:
    from billfold.kit.errors import InvalidInput

    with pytest.raises(InvalidInput):
        cohorts.retention(session, LAST, FIRST, "USD")
    with pytest.raises(InvalidInput):
        cohorts.retention(session, FIRST, LAST, "USD", "first_visit")
    assert cohorts.retention(session, FIRST, LAST, "USD") == [], "no history, no cohorts"


def test_month_arithmetic_crosses_years() -> None:
    assert cohorts.add_months(date(2025, 11, 1), 3) == date(2026, 2, 1)
    assert cohorts.months_between(date(2025, 11, 1), date(2026, 2, 1)) == 3
    assert cohorts.month_of(datetime(2024, 2, 29, 23, 59, tzinfo=clock.UTC)) == date(2024, 2, 1)


def test_the_worked_example_in_the_docs(session: Session) -> None:
    """docs/analytics.md, "Retention matrix": ann, bob and cat, January to March."""
    def at(day: str) -> datetime:
        return datetime.fromisoformat(f"2026-{day}T12:00:00+00:00")

    with clock.using(clock.FrozenClock(at("01-01"))) as frozen:
        history = History(session, frozen)
        ann, bob, cat = (make.user(session).id for _ in range(3))
        subs = {u: history.subscribe(u, "USD", 2000) for u in (ann, bob, cat)}
        paid = {}
        for day, user, cents in [("01-10", ann, 2000), ("01-20", bob, 3000), ("02-05", cat, 2500), ("02-10", ann, 2000),
                                 ("03-05", cat, 2500), ("03-10", ann, 2000)]:
            frozen.set(at(day))
            paid[(day, user)] = history.pay(user, subs[user], "USD", cents)
            session.commit()
        frozen.set(at("02-15"))
        history.refund(paid[("02-10", ann)], "USD", 500)
        session.commit()
    matrix = cohorts.retention(session, date(2026, 1, 1), date(2026, 3, 1), "USD")
    shown = [(c.cohort_month.month, c.month_index, c.cohort_size, c.customers, c.revenue_cents, str(c.customer_share), str(c.revenue_share))
             for c in matrix]
    assert shown == [
        (1, 0, 2, 2, 5000, "1.0000", "1.0000"),
        (1, 1, 2, 1, 1500, "0.5000", "0.3000"),
        (1, 2, 2, 1, 2000, "0.5000", "0.4000"),
        (2, 0, 1, 1, 2500, "1.0000", "1.0000"),
        (2, 1, 1, 1, 2500, "1.0000", "1.0000"),
    ], "no one's first purchase is in March: no March cohort"
    rows = cohorts.retention_cell(session, date(2026, 1, 1), 1, "USD")
    assert (rows.user_ids, rows.payment_ids, len(rows.refund_ids)) == ([ann], [paid[("02-10", ann)]], 1)



@pytest.mark.every_database  # the stored months' table, and the live columns' anti-join, on every dialect
def test_the_stored_months_give_the_live_matrix_and_are_forgotten_when_their_rows_change(session: Session) -> None:
    def at(moment: str) -> datetime:
        return datetime.fromisoformat(f"2025-{moment}+00:00")

    with clock.using(clock.FrozenClock(datetime(2025, 1, 1, tzinfo=clock.UTC))) as frozen:
        generate(session, frozen)
        history = History(session, frozen)
        late, subscribed = make.user(session), make.user(session)  # (and a cohort in every month but June)
        frozen.set(at("01-30T23:00"))
        sub = history.subscribe(late.id, "USD", 1500)
        history.pay(late.id, sub, "USD", 1500)
        frozen.set(at("02-03T10:00"))  # an order first: a subscription's cohort with a payment before it
        history.pay(subscribed.id, None, "USD", 4900, order_id=make.order(session, user=subscribed).id)
        frozen.set(at("03-31T23:30"))
        march = history.pay(late.id, sub, "USD", 2000)
        frozen.set(at("04-02T08:00"))  # refunded in the next month
        history.refund(march, "USD", 2000)
        frozen.set(at("04-10T12:00"))  # the first payment in EUR, three months after the cohort's
        history.pay(late.id, sub, "EUR", 900)
        frozen.set(at("04-12T12:00"))
        history.subscribe(subscribed.id, "USD", 900)
        frozen.set(at("05-05T12:00"))
        may_payment = history.pay(late.id, sub, "USD", 700)
        may = history.refund(may_payment, "USD", 300)
        june = make.user(session)  # buys in June before the take, subscribes after it
        frozen.set(at("06-05T12:00"))
        history.pay(june.id, None, "USD", 1500, order_id=make.order(session, user=june).id)
        session.commit()

        frozen.set(at("06-20T12:00"))  # June is not over: computed live, never stored
        spans = [(FIRST, LAST), (date(2025, 3, 1), date(2025, 5, 1))]
        kinds = [(currency, kind) for currency in ("USD", "EUR") for kind in cohorts.COHORT_TYPES]
        live = {(span, *k): cohorts.retention(session, *span, *k) for span in spans for k in kinds}
        for currency, kind in kinds:
            got = [(c.cohort_month, c.month_index, c.cohort_size, c.customers, c.revenue_cents) for c in live[(FIRST, LAST), currency, kind]]
            assert got == simple_matrix(session, currency, kind), (currency, kind)
        assert cohorts.take_due(session) == [date(2025, m, 1) for m in range(1, 7)], "June as it was at the start of the 19th"
        session.commit()
        assert cohorts.months_taken(session, FIRST, LAST) == {date(2025, m, 1) for m in range(1, 6)}
        assert cohorts.due_months(session) == [] and cohorts.take_due(session) == []
        assert session.scalar(sa.select(sa.func.count()).select_from(AnalyticsCohortMonth)) > 6, "columns, not just marks"
        for key, cells in live.items():
            assert cohorts.retention(session, *key[0], *key[1:]) == cells, key

        # Since June was taken: a first purchase; a May customer's first June payment; a subscription
        # by a June buyer, and its payment; a refund of a May payment. The matrix is brought up to date from June's rows.
        frozen.set(at("06-19T01:00"))
        newcomer = make.user(session)
        history.pay(newcomer.id, None, "USD", 1200, order_id=make.order(session, user=newcomer).id)
        frozen.set(at("06-19T02:00"))
        history.pay(late.id, sub, "USD", 800)
        history.pay(june.id, history.subscribe(june.id, "USD", 900), "USD", 900)  # a June customer already
        history.refund(may_payment, "USD", 200)
        session.commit()
        frozen.set(at("06-20T12:00"))
        updated = {(span, *k): cohorts.retention(session, *span, *k) for span in spans for k in kinds}
        for currency, kind in kinds:
            got = [(c.cohort_month, c.month_index, c.cohort_size, c.customers, c.revenue_cents) for c in updated[(FIRST, LAST), currency, kind]]
            assert got == simple_matrix(session, currency, kind), (currency, kind)
        cohorts.forget(session)
        for key, cells in updated.items():
            assert cohorts.retention(session, *key[0], *key[1:]) == cells, key
        cohorts.take_due(session)

        # A refund that succeeded in May fails in June: May's column is forgotten, computed live again.
        REFUND.move(session, may, "failed", by="test")
        session.commit()
        assert cohorts.months_taken(session, FIRST, LAST) == {date(2025, m, 1) for m in range(1, 5)}
        cells = cohorts.retention(session, FIRST, LAST, "USD")
        assert [(c.cohort_month, c.month_index, c.cohort_size, c.customers, c.revenue_cents) for c in cells] == \
            simple_matrix(session, "USD", cohorts.FIRST_PURCHASE)
        assert cells != updated[(FIRST, LAST), "USD", cohorts.FIRST_PURCHASE], "the $3 are back in May"
        assert cohorts.take_due(session) == [date(2025, 5, 1)]
        assert cohorts.retention(session, FIRST, LAST, "USD") == cells

        cohorts.rebuild(session)  # the cohorts rewritten: every stored month goes
        assert cohorts.months_taken(session, FIRST, LAST) == set()
        assert cohorts.retention(session, FIRST, LAST, "USD") == cells
