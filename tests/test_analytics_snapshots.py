"""Analytics snapshots at work (docs/analytics.md "## Snapshots"): the worker's nightly sweep over a
small business history made with the real services and the billing clock (it takes yesterday,
catches up the nights it was down, and takes nothing twice), every stored day equal to the figures
computed on demand, days taken after the fact (the demo's way) equal to the nightly ones,
recomputing a day replacing its rows, freshness; and, on every database, two takers of the same
day at once leaving one set of rows and no error."""

from __future__ import annotations

import dataclasses
import threading
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.analytics import jobs, metrics, snapshots
from billfold.kit import clock
from billfold.kit.db import session_factory, transaction
from billfold.models import AnalyticsSnapshot, Payment
from tests import factories
from tests.subscribing import Shop, shop  # noqa: F401  (fixture)
from tests.test_analytics_metrics import engine  # noqa: F401  (fixture: a database of the test's own)

START = datetime(2026, 1, 5, 10, 0, tzinfo=clock.UTC)
DAY = timedelta(days=1)
DAYS = 40
DOWN = (30, 31, 32)  # the worker is down these mornings


def day_of(n: int) -> date:
    return (START + n * DAY).date()


def stored(engine: Engine, day: date) -> dict[tuple[str, str | None], AnalyticsSnapshot]:
    with transaction(session_factory(engine)) as session:
        rows = session.scalars(sa.select(AnalyticsSnapshot).where(AnalyticsSnapshot.snapshot_date == day)).all()
        session.expunge_all()
    keys = [(r.metric_type, r.currency) for r in rows]
    assert len(keys) == len(set(keys)), f"{day}: duplicate rows"
    return dict(zip(keys, rows))


def figures(rows: dict[tuple[str, str | None], AnalyticsSnapshot]) -> dict[tuple[str, str | None], tuple[Decimal, dict[str, Any]]]:
    return {key: (row.metric_value, row.breakdown or {}) for key, row in rows.items()}


def on_demand(engine: Engine, day: date) -> dict[tuple[str, str | None], tuple[Decimal, dict[str, Any]]]:
    """``metrics.day_metrics`` now, shaped as stored (JSON keeps exact values as numbers or strings)."""
    with transaction(session_factory(engine)) as session:
        values = metrics.day_metrics(session, day)
    return {
        (v.metric_type, v.currency): (v.metric_value, {"value": v.value if isinstance(v.value, int) else str(v.value), "unit": v.unit, **v.breakdown})
        for v in values
        if v.value is not None
    }


def test_the_nightly_sweep_takes_every_day_once_catches_up_and_equals_on_demand_figures(
    analytics_nightly: None, shop: Shop, frozen_clock: clock.FrozenClock
) -> None:
    frozen_clock.set(START)
    admin = shop.admin()
    basic, pro, euro = shop.product(1000), shop.product(3000), shop.product(2000, currency="EUR")
    trial = shop.product(1500, trial_days=14)
    people = {name: shop.customer(name) for name in ("ada", "bob", "cy", "gus")}
    subs: dict[str, str] = {}
    taken: dict[int, int] = {}
    for n in range(DAYS):
        frozen_clock.set(START + n * DAY)
        if n == 0:
            for name, plan in (("ada", basic), ("cy", trial), ("gus", euro)):
                subs[name] = shop.subscribe(people[name], plan)["id"]
        elif n == 3:
            subs["bob"] = shop.subscribe(people["bob"], pro)["id"]
        elif n == 10:
            shop.post(people["ada"], subs["ada"], "change", product_id=pro)
        elif n == 20:
            shop.post(people["bob"], subs["bob"], "cancel", at_period_end=True)
        elif n == 25:
            with shop.client(admin) as client:
                done = client.post(f"/v1/subscriptions/{subs['gus']}/cancel", json={"at_period_end": False, "refund": True})
            assert done.status_code == 200, done.text
        for name in ("renew", "trials", "dunning"):
            shop.sweep(name)
        if n not in DOWN:
            taken[n] = jobs.take_nightly(shop.context)
            assert jobs.take_nightly(shop.context) == 0  # a second run (another worker) finds nothing to do

    # Each morning takes yesterday; the morning after three missed nights takes those too.
    assert taken == {n: 4 if n == DOWN[-1] + 1 else 1 for n in range(DAYS) if n not in DOWN}
    first, last = day_of(-1), day_of(DAYS - 2)
    with transaction(session_factory(shop.engine)) as session:
        assert snapshots.days_taken(session, first, last) == set(jobs.days_between(first, last))
        assert jobs.due_days(session, day_of(DAYS - 1)) == []
        methods = set(session.scalars(sa.select(AnalyticsSnapshot.calculation_method).distinct()))
        freshness = set(session.scalars(sa.select(AnalyticsSnapshot.data_freshness).distinct()))
    assert methods == {"scheduled"} and freshness == {"recent", "historical"}  # the caught-up days are over a day old

    # Property: every stored day is exactly what day_metrics computes now.
    for day in jobs.days_between(day_of(0), last):
        assert figures(stored(shop.engine, day)) == on_demand(shop.engine, day), day
    busy = stored(shop.engine, day_of(25))
    assert busy["revenue_refunds", "EUR"].breakdown["value"] > 0 and busy["mrr", "USD"].breakdown["value"] > 0

    # Days taken after the fact, as the demo does, equal the nightly ones (and say so the same way).
    nightly = {day: figures(stored(shop.engine, day)) for day in (day_of(9), day_of(10), day_of(25))}
    assert jobs.fill_history(shop.context.sessions, day_of(9), day_of(10)) == 2
    jobs.fill_history(shop.context.sessions, day_of(25), day_of(25))
    for day, before in nightly.items():
        after = stored(shop.engine, day)
        assert figures(after) == before
        assert {(r.calculation_method, r.data_freshness, r.created_at) for r in after.values()} == {
            ("scheduled", "recent", metrics.end_of(day) + jobs.NIGHTLY_DELAY)
        }

    # Recomputing a day replaces its rows: the same figures, new rows, the new method.
    old = stored(shop.engine, day_of(12))
    with transaction(shop.context.sessions) as session:
        rows = snapshots.take(session, day_of(12), method="on_demand")
    new = stored(shop.engine, day_of(12))
    assert len(rows) == len(new) == len(old) and figures(new) == figures(old)
    assert not {r.id for r in new.values()} & {r.id for r in old.values()}
    assert {(r.calculation_method, r.data_freshness) for r in new.values()} == {("on_demand", "historical")}

    # A day taken while it runs is real_time, and the nightly sweep takes it again once it is over.
    today = day_of(DAYS - 1)
    with transaction(shop.context.sessions) as session:
        snapshots.take(session, today, method="on_demand")
    assert {r.data_freshness for r in stored(shop.engine, today).values()} == {"real_time"}
    frozen_clock.set(START + DAYS * DAY)
    switched_off = dataclasses.replace(shop.context, settings=shop.context.settings.model_copy(update={"analytics_nightly": False}))
    assert jobs.take_nightly(switched_off) == 0, "BILLFOLD_ANALYTICS_NIGHTLY=false: the worker takes no snapshot"
    assert {r.data_freshness for r in stored(shop.engine, today).values()} == {"real_time"}
    assert jobs.take_nightly(shop.context) == 1
    assert {(r.calculation_method, r.data_freshness) for r in stored(shop.engine, today).values()} == {("scheduled", "recent")}

    # The sweep looks back a bounded number of days: of a longer gap, the last ones are caught up
    # and the older ones left to backfill.
    with transaction(shop.context.sessions) as session:
        session.execute(sa.delete(AnalyticsSnapshot).where(AnalyticsSnapshot.snapshot_date > day_of(0)))
        assert jobs.due_days(session, day_of(jobs.CATCH_UP_DAYS + 1)) == jobs.days_between(day_of(1), day_of(jobs.CATCH_UP_DAYS))
        assert jobs.due_days(session, day_of(jobs.CATCH_UP_DAYS + 3)) == jobs.days_between(day_of(3), day_of(jobs.CATCH_UP_DAYS + 2))


@pytest.mark.every_database
def test_two_takers_of_one_day_at_once_leave_one_set_of_rows_and_no_error(engine: Engine, frozen_clock: clock.FrozenClock) -> None:
    day = frozen_clock.now().date() - DAY
    sessions = session_factory(engine)
    with transaction(sessions) as session:
        buyer = factories.user(session)
        order = factories.order(session, user=buyer)
        session.add(Payment(order_id=order.id, user_id=buyer.id, provider_id=factories.provider(session).id, amount_cents=1500,
                            currency="USD", status="completed", completed_at=metrics.start_of(day) + timedelta(hours=3)))
    expected = on_demand(engine, day)
    assert ("revenue_gross", "USD") in expected and ("memberships_active", None) in expected

    # The on-demand take holds its transaction open; the nightly one starts meanwhile, waits, then
    # finds the day taken after it ended and skips it. Then two plain takes race.
    first_in = threading.Event()
    release = threading.Event()
    outcome: dict[str, Any] = {}

    def on_demand_take() -> None:
        try:
            with transaction(sessions) as session:
                snapshots.take(session, day, method="on_demand")
                first_in.set()
                release.wait(10)
        except Exception as error:  # pragma: no cover - the assertion below shows it
            outcome["first"] = error

    def nightly_take() -> None:
        try:
            with transaction(sessions) as session:
                outcome["nightly took"] = jobs.take_if_unsettled(session, day, "scheduled")
        except Exception as error:  # pragma: no cover
            outcome["nightly"] = error

    first = threading.Thread(target=on_demand_take)
    first.start()
    assert first_in.wait(10)
    second = threading.Thread(target=nightly_take)
    second.start()
    second.join(0.5)
    assert second.is_alive(), "the second taker waits for the first"
    release.set()
    first.join(10)
    second.join(30)
    assert outcome == {"nightly took": False}
    rows = stored(engine, day)
    assert figures(rows) == expected and {r.calculation_method for r in rows.values()} == {"on_demand"}

    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def take() -> None:
        try:
            barrier.wait(10)
            with transaction(sessions) as session:
                snapshots.take(session, day, method="manual")
        except Exception as error:  # pragma: no cover
            errors.append(error)

    racers = [threading.Thread(target=take) for _ in range(2)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(30)
    assert errors == []
    rows = stored(engine, day)  # (fails on duplicates)
    assert figures(rows) == expected and {r.calculation_method for r in rows.values()} == {"manual"}


def test_an_unpause_rewrites_the_past_so_the_next_day_is_computed_in_full_and_equals_the_full_figures(
    analytics_nightly: None, shop: Shop, frozen_clock: clock.FrozenClock
) -> None:
    """Unpausing clears ``paused_at``: the pause vanishes from the history, so a day derived from
    the stored day before would keep the subscription out of MRR. The day after an unpause is
    computed from the whole history, and the days after it derive from that one."""
    frozen_clock.set(START)
    basic = shop.product(1000)
    ada, bob = shop.customer("ada"), shop.customer("bob")
    subs = {"ada": shop.subscribe(ada, basic)["id"], "bob": shop.subscribe(bob, basic)["id"]}
    for n in range(1, 10):
        frozen_clock.set(START + n * DAY)
        if n == 3:
            shop.post(ada, subs["ada"], "pause")
        elif n == 6:
            shop.post(ada, subs["ada"], "unpause")
        for name in ("renew", "trials", "dunning"):
            shop.sweep(name)
        assert jobs.take_nightly(shop.context) == 1
    assert stored(shop.engine, day_of(4))["mrr", "USD"].breakdown["value"] == 1000, "as known that night: ada paused"
    with transaction(shop.context.sessions) as session:
        assert not metrics.day_figures(session, day_of(6)).derived, "an unpause was recorded since day 5 was taken"
        assert metrics.day_figures(session, day_of(7)).derived
        full = {n: metrics.day_figures(session, day_of(n), derive=False).values for n in (6, 7, 8)}
    for n, values in full.items():
        shaped = {(v.metric_type, v.currency): (v.metric_value, {"value": v.value if isinstance(v.value, int) else str(v.value), "unit": v.unit, **v.breakdown})
                  for v in values if v.value is not None}
        assert figures(stored(shop.engine, day_of(n))) == shaped, n
        assert shaped["mrr", "USD"][1]["value"] == 2000, n
