"""The analytics API (docs/analytics.md "## API") over real HTTP: a small business history made with
the real services and the billing clock (two currencies, an upgrade, a yearly plan, a cancellation
at period end, a cancellation with a refund, a declined first payment), snapshots taken with
``analytics.snapshots.take`` for most days and a few left for the API to compute on demand. Series
are checked against ``metrics.day_metrics`` computed directly and against figures worked out by
hand; weeks and months against the days; movements against the change in MRR; the rows behind a
figure against the figure; CSV against JSON. Permissions and bad input need no history.

The test of exact values runs on every database: the series reads the snapshots' JSON breakdown,
which each dialect stores and reads back its own way; the rest runs once."""

from __future__ import annotations

import csv
import io
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.accounts.api_keys import create_api_key
from billfold.analytics import metrics, snapshots
from billfold.analytics.api import csv_answer
from billfold.kit import clock
from billfold.kit.db import create_engine, session_factory, transaction
from billfold.models import AnalyticsSnapshot
from tests.conftest import MigratedDatabases, worker_id
from tests import subscribing
from tests.subscribing import Shop

shop = subscribing.shop  # the fixture

START = datetime(2026, 1, 5, 10, 0, tzinfo=clock.UTC)  # a Monday
DAYS = 40
STORED_UNTIL = 37  # days 38 and 39 have no snapshot: the API computes them
DAY = timedelta(days=1)


def day_of(n: int) -> date:
    return (START + n * DAY).date()


@pytest.fixture
def engine(migrated: MigratedDatabases, backend: str) -> Iterator[Engine]:
    """A database of this test's own: the figures read every row, so no other test's may be there."""
    fresh = create_engine(migrated.copy(backend, f"billfold_analytics_api_{worker_id()}"))
    yield fresh
    fresh.dispose()


def make_history(shop: Shop, frozen_clock: clock.FrozenClock) -> dict[str, Any]:
    frozen_clock.set(START)
    admin = shop.admin()
    basic, pro = shop.product(1000), shop.product(3000)
    yearly = shop.product(12010, interval="yearly")  # a twelfth is 1000.83: 1001
    euro = shop.product(2000, currency="EUR")
    people = {name: shop.customer(name) for name in ("ada", "bob", "eve", "gus")}
    people["ivy"] = shop.customer("ivy", token="tok_sandbox_decline")
    subs: dict[str, str] = {}
    for n in range(DAYS):
        frozen_clock.set(START + n * DAY)
        if n == 0:
            for name, plan in (("ada", basic), ("eve", yearly), ("gus", euro)):
                subs[name] = shop.subscribe(people[name], plan)["id"]
            shop.subscribe(people["ivy"], basic, expect=402)  # a failed payment on day 0
        elif n == 3:
            subs["bob"] = shop.subscribe(people["bob"], pro)["id"]
        elif n == 10:
            shop.post(people["ada"], subs["ada"], "change", product_id=pro)  # 30.00 from her renewal on day 31
        elif n == 15:
            with shop.client(admin) as client:
                done = client.post(f"/v1/subscriptions/{subs['gus']}/cancel", json={"at_period_end": False, "refund": True})
            assert done.status_code == 200, done.text
        elif n == 20:
            shop.post(people["bob"], subs["bob"], "cancel", at_period_end=True)  # ends on day 34
        shop.sweep("renew")
    return {"admin": admin, "people": people, "subs": subs}


def get(client: httpx.Client, path: str, expect: int = 200, **params: Any) -> Any:
    answer = client.get(f"/v1/analytics/{path}", params=params)
    assert answer.status_code == expect, answer.text
    if answer.headers["content-type"].startswith("text/csv"):
        return list(csv.DictReader(io.StringIO(answer.text)))
    return answer.json()


def values(series: dict[str, Any], currency: str | None = "USD") -> dict[str, Any]:
    return {p["period_start"]: p["value"] for p in series["data"] if p["currency"] == currency}


def exact(value: Any) -> Any:
    return value if value is None or isinstance(value, int) else str(value)


def test_series_movements_rows_and_csv(shop: Shop, frozen_clock: clock.FrozenClock) -> None:
    made = make_history(shop, frozen_clock)
    sessions = session_factory(shop.engine)
    with transaction(sessions) as session:
        for n in range(-1, STORED_UNTIL + 1):
            snapshots.take(session, day_of(n), method="manual")
        # 90 days with day 39: the 49 days before day -1 had nothing either; their rows are day -1's.
        empty = session.execute(sa.select(AnalyticsSnapshot.__table__).where(AnalyticsSnapshot.snapshot_date == day_of(-1))).mappings().all()
        session.execute(sa.insert(AnalyticsSnapshot), [
            {**row, "id": f"{row['id']}_{n}", "snapshot_date": day_of(-n)} for n in range(2, 51) for row in empty])
    first, last = day_of(0), day_of(DAYS - 1)
    client = shop.client(made["admin"])

    # Daily MRR: the snapshots' exact values, and by hand: ada 10.00 + eve 12,010.00 / 12 = 20.01,
    # bob's 30.00 from day 3 to his period's end on day 34, ada's 30.00 from her renewal on day 31.
    mrr = get(client, "metrics", metric="mrr", **{"from": str(first), "to": str(last)})
    assert (mrr["kind"], mrr["unit"]) == ("stock", "cents")
    usd, eur = values(mrr), values(mrr, "EUR")
    assert usd[str(day_of(0))] == 2001 and usd[str(day_of(3))] == 5001 and usd[str(day_of(20))] == 5001
    assert eur[str(day_of(0))] == 2000 and eur[str(day_of(15))] == 0  # a stored day without a row: 0
    with sessions() as session:
        direct = {n: {(v.metric_type, v.currency): exact(v.value) for v in metrics.day_metrics(session, day_of(n))}
                  for n in (0, 15, 34, 39)}
    for n, figures in direct.items():
        assert usd[str(day_of(n))] == figures[("mrr", "USD")], n
    assert usd[str(day_of(39))] == 1001 + 3000  # bob gone (day 34), ada at 30.00 since day 31

    # Days 38 and 39 had no snapshot: computed for the answer, not stored.
    assert mrr["computed_days"] == [str(day_of(n)) for n in range(STORED_UNTIL + 1, DAYS)]
    with sessions() as session:
        assert snapshots.days_taken(session, day_of(STORED_UNTIL + 1), last) == set()

    # Revenue per day, a flow, and the failure rate: against day_metrics.
    gross = values(get(client, "metrics", metric="revenue_gross", currency="USD", **{"from": str(first), "to": str(last)}))
    failure = values(get(client, "metrics", metric="payment_failure_rate", currency="USD", **{"from": str(first), "to": str(first)}))
    assert gross[str(day_of(0))] == direct[0][("revenue_gross", "USD")] == 1000 + 12010
    assert failure[str(day_of(0))] == direct[0][("payment_failure_rate", "USD")] == "0.3333"  # ivy's 1 of 3

    # Weeks (Monday to Sunday) and months: a stock is its last day's value, a flow the sum of its days.
    weekly = get(client, "metrics", metric="mrr", granularity="week", currency="USD", **{"from": str(first), "to": str(last)})
    assert [(p["period_start"], p["period_end"]) for p in weekly["data"]][:2] == [
        (str(day_of(0)), str(day_of(6))), (str(day_of(7)), str(day_of(13)))]
    assert all(p["value"] == usd[p["period_end"]] for p in weekly["data"])
    monthly = get(client, "metrics", metric="revenue_gross", granularity="month", currency="USD", **{"from": str(first), "to": str(last)})
    assert [(p["period_start"], p["period_end"]) for p in monthly["data"]] == [
        (str(first), "2026-01-31"), ("2026-02-01", str(last))]
    for p in monthly["data"]:
        assert p["value"] == sum(v for d, v in gross.items() if p["period_start"] <= d <= p["period_end"])

    # Movements over the range add up to the change in MRR; the rows behind them add up to each kind.
    moved = {m["currency"]: m for m in get(client, "movements", **{"from": str(first), "to": str(last)})["data"]}
    for cur, m in moved.items():
        kinds = sum(m[k] for k in metrics.MOVEMENT_KINDS)
        assert kinds == m["net_new"] == m["mrr_change"] == m["mrr_at_end"] - m["mrr_at_start"], m
    assert moved["USD"]["mrr_at_end"] == usd[str(last)] and moved["USD"]["new"] == 4001 + 0
    assert "EUR" not in moved  # gus came (day 0) and went (day 15) within the range: no movement
    window = {"from": str(day_of(4)), "to": str(last)}  # from the end of day 3: bob paying
    moved_later = {m["currency"]: m for m in get(client, "movements", **window)["data"]}
    churned = get(client, "movements/rows", kind="churned", **window)["data"]
    assert {r["currency"]: r["change_cents"] for r in churned} == {"USD": -3000, "EUR": -2000}
    assert made["subs"]["bob"] in next(r for r in churned if r["currency"] == "USD")["subscription_ids"]
    rows = get(client, "movements/rows", **window)["data"]
    assert [(r["kind"], r["before_cents"], r["after_cents"]) for r in rows if r["customer_id"] == made["people"]["ada"].id] == [
        ("expansion", 1000, 3000)]
    for cur, m in moved_later.items():
        for kind in metrics.MOVEMENT_KINDS:
            assert m[kind] == sum(r["change_cents"] for r in rows if r["currency"] == cur and r["kind"] == kind), (cur, kind)

    # MRR's rows and a day's revenue rows add up to the figures.
    behind = get(client, "mrr/rows", at=str(day_of(5)))["data"]
    assert sorted(r["mrr_cents"] for r in behind if r["currency"] == "USD") == [1000, 1001, 3000]
    assert sum(r["mrr_cents"] for r in behind if r["currency"] == "EUR") == eur[str(day_of(5))]
    revenue = get(client, "revenue/rows", date=str(day_of(0)))["data"]
    assert sum(r["amount_cents"] for r in revenue if r["kind"] == "payment" and r["currency"] == "USD") == gross[str(day_of(0))]
    assert [r["amount_cents"] for r in revenue if r["kind"] == "failed"] == [1000]
    refunds = get(client, "revenue/rows", date=str(day_of(15)), currency="EUR")["data"]
    assert [r["kind"] for r in refunds] == ["refund"] and 0 < refunds[0]["amount_cents"] <= 2000

    # Cohorts: a cell's rows add up to it.
    matrix = get(client, "cohorts", from_month="2026-01", to_month="2026-02", currency="USD")["data"]
    january = next(c for c in matrix if c["cohort_month"] == "2026-01" and c["month_index"] == 0)
    assert january["cohort_size"] == 3 and january["customers"] == 3  # ada, eve, bob (ivy never paid)
    for cell in matrix:
        found = get(client, "cohorts/cell", cohort_month=cell["cohort_month"], month_index=cell["month_index"], currency="USD")["data"]
        assert len({r["user_id"] for r in found if r["kind"] == "payment"}) == cell["customers"]
        assert sum(r["amount_cents"] * (1 if r["kind"] == "payment" else -1) for r in found) == cell["revenue_cents"]

    # Recognition: the invoices add up to the month's figures, each with its lines.
    january_revenue = get(client, "recognition", month="2026-01")
    for figure in january_revenue["data"]:
        invoices = [i for i in january_revenue["invoices"] if i["currency"] == figure["currency"]]
        assert sum(i["recognised_cents"] for i in invoices) == figure["recognised_cents"]
        assert sum(i["deferred_cents"] for i in invoices) == figure["deferred_cents"]
        assert all(i["lines"] for i in invoices)

    # CSV parses back to the same figures.
    sheet = get(client, "metrics", metric="mrr", format="csv", **{"from": str(first), "to": str(last)})
    assert {(r["period_start"], r["currency"]): int(r["value"]) for r in sheet} == {
        (p["period_start"], p["currency"]): p["value"] for p in mrr["data"]}
    sheet = get(client, "movements/rows", format="csv", **window)
    assert [(r["customer_id"], r["kind"], int(r["change_cents"]), r["subscription_ids"].split()) for r in sheet] == [
        (r["customer_id"], r["kind"], r["change_cents"], r["subscription_ids"]) for r in rows]
    sheet = get(client, "recognition", month="2026-01", format="csv")
    assert sum(int(r["recognised_cents"]) for r in sheet) == sum(f["recognised_cents"] for f in january_revenue["data"])

    # Too many days without a snapshot: a problem saying to backfill (days 38, 39 and 40 before day -50).
    frozen_clock.set(START + DAYS * DAY)
    answer = client.get("/v1/analytics/metrics", params={"metric": "mrr", "from": str(day_of(-90)), "to": str(last)})
    assert answer.status_code == 409 and "billfold analytics backfill --from" in answer.json()["detail"], answer.text

    # The 90-day MRR series from snapshots alone: timed, not asserted.
    with transaction(sessions) as session:
        for n in range(STORED_UNTIL + 1, DAYS):
            snapshots.take(session, day_of(n), method="manual")
    params = {"metric": "mrr", "from": str(day_of(DAYS - 90)), "to": str(last), "currency": "USD"}
    client.get("/v1/analytics/metrics", params=params)
    started = time.perf_counter()
    answer = client.get("/v1/analytics/metrics", params=params)
    elapsed_ms = (time.perf_counter() - started) * 1000
    assert answer.status_code == 200 and answer.json()["computed_days"] == [] and len(answer.json()["data"]) == 90
    print(f"\n90-day MRR series over HTTP on {shop.engine.dialect.name}: {elapsed_ms:.1f} ms")
    client.close()


# Who may ask, and what is refused


def test_admins_and_read_keys_only_and_bad_input_is_a_422(shop: Shop) -> None:
    with session_factory(shop.engine).begin() as session:
        _, reader = create_api_key(session, name="analytics reader", scopes=["read"], created_by=None)
        _, writer = create_api_key(session, name="analytics writer", scopes=["write"], created_by=None)
    admin = shop.admin()
    today = clock.now().date()
    paths = [
        ("metrics", {"metric": "mrr", "from": str(today), "to": str(today)}),
        ("movements", {"from": str(today - 7 * DAY), "to": str(today)}),
        ("mrr/rows", {"at": str(today)}),
        ("mrr/rows", {"at": str(today), "format": "csv"}),
        ("revenue/rows", {"date": str(today), "format": "csv"}),
        ("movements/rows", {"from": str(today), "to": str(today), "limit": 5}),
        ("cohorts/cell", {"cohort_month": f"{today:%Y-%m}", "month_index": 0, "currency": "USD", "format": "csv"}),
        ("recognition", {"month": f"{today:%Y-%m}"}),
        ("cohorts", {"from_month": f"{today:%Y-%m}", "to_month": f"{today:%Y-%m}", "currency": "USD"}),
    ]
    for who, token, status in [("admin", admin, 200), ("reader", reader, 200), ("writer", writer, 403),
                               ("customer", shop.customer("cat").token, 403), ("anonymous", None, 401)]:
        with shop.client(token) as client:
            for path, params in paths:
                answer = client.get(f"/v1/analytics/{path}", params=params)
                assert answer.status_code == status, (who, path, answer.text)
                if status != 200:
                    assert answer.headers["content-type"] == "application/problem+json"
    with shop.client(reader) as client:
        answer = client.get("/v1/analytics/revenue/rows", params={"date": str(today), "format": "csv"})
    assert answer.headers["content-type"].startswith("text/csv") and answer.text.startswith("kind,id,currency,amount_cents\r\n")

    day = str(today - DAY)
    for params, field in [
        ({"metric": "profit"}, "metric"),
        ({"from": day, "to": str(today - 2 * DAY)}, "from"),
        ({"from": "1990-01-01"}, "to"),
        ({"currency": "usd"}, "currency"),
        ({"currency": "ABC"}, "currency"),
        ({"from": "2026-02-30"}, "from"),
        ({"from": "20260201"}, "from"),
        ({"to": "2999-01-01"}, "to"),
        ({"granularity": "year"}, "granularity"),
        ({"metric": "memberships_active", "currency": "USD"}, "currency"),
        ({"colour": "red"}, "colour"),
    ]:
        query = {"metric": "mrr", "from": day, "to": day, **params}
        with shop.client(admin) as client:
            answer = client.get("/v1/analytics/metrics", params=query)
        assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json", (params, answer.text)
        assert field in [e["field"] for e in answer.json()["errors"]], (params, answer.json())
    with shop.client(admin) as client:
        for path, params, field in [
            ("cohorts", {"from_month": "2026-13", "to_month": "2026-01", "currency": "USD"}, "from_month"),
            ("cohorts/cell", {"cohort_month": f"{today:%Y-%m}", "month_index": "1", "currency": "USD"}, "month_index"),
            ("recognition", {"month": "9999-12"}, "month"),
            ("movements/rows", {"from": day, "to": day, "kind": "lost"}, "kind"),
        ]:
            answer = client.get(f"/v1/analytics/{path}", params=params)
            assert answer.status_code == 422 and field in [e["field"] for e in answer.json()["errors"]], (path, answer.text)


def test_csv_cells_are_never_formulas() -> None:
    answer = csv_answer("x", ["a", "b", "c", "d"], [["=1+1", "@SUM(A1)", -500, "+44 20"], ["-cmd", "plain", None, ["s1", "s2"]]])
    rows = list(csv.reader(io.StringIO(answer.body.decode())))
    assert rows == [["a", "b", "c", "d"], ["'=1+1", "'@SUM(A1)", "-500", "'+44 20"], ["'-cmd", "plain", "", "s1 s2"]]


@pytest.mark.every_database
def test_the_snapshot_values_are_exact(shop: Shop, frozen_clock: clock.FrozenClock) -> None:
    """The answer is the breakdown's exact value, not the DECIMAL(20,2) column: money in minor units,
    a rate with four places (the column keeps two); a row without it is read from the column."""
    frozen_clock.set(START)
    with transaction(session_factory(shop.engine)) as session:
        session.execute(sa.insert(AnalyticsSnapshot), [
            {"id": f"snap_t{i}", "snapshot_date": day_of(0), "metric_type": m, "metric_value": v, "currency": c,
             "breakdown": b, "calculation_method": "manual", "calculation_duration_ms": 1, "data_freshness": "historical",
             "created_at": START, "updated_at": START}
            for i, (m, v, c, b) in enumerate([
                ("memberships_active", 0, None, {"value": 0, "unit": "count"}),
                ("mrr", 123.45, "USD", {"value": 12345, "unit": "cents"}),
                ("logo_churn_rate", 0.17, "USD", {"value": "0.1667", "unit": "ratio"}),
                ("arr", 1481.40, "USD", {"unit": "cents"}),  # written by hand, without the exact value
            ])
        ])
    grouped: dict[str, Any] = defaultdict(dict)
    with shop.client(shop.admin()) as client:
        for metric in ("mrr", "logo_churn_rate", "arpu", "arr"):
            grouped[metric] = values(get(client, "metrics", metric=metric, **{"from": str(day_of(0)), "to": str(day_of(0))}))
    assert grouped["mrr"] == {str(day_of(0)): 12345}
    assert grouped["logo_churn_rate"] == {str(day_of(0)): "0.1667"}
    assert grouped["arpu"] == {}  # no currency has a row for it that day
    assert grouped["arr"] == {str(day_of(0)): 148140}  # from the column when the breakdown lacks it
