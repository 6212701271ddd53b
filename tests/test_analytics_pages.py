"""The rows behind a figure come in pages (docs/analytics.md "## API"): ``limit`` and
``starting_after`` as every Billfold list, ``{"data", "has_more"}``; CSV streams every row. A
history of a few dozen rows (subscriptions with a paid line each, payments, failed payments and
refunds in two currencies) is written directly; walking the pages with a small limit gives
exactly the rows of one large page (and of the row functions called without a page), with no
duplicate, and the CSV is their concatenation. Bad cursors and limits are 422s naming the field.

Every database: the page is cut in SQL (a keyset condition on string ids, LIMIT), whose order
and comparison are each database's own."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from billfold.analytics import api, cohorts, metrics
from billfold.kit import clock
from billfold.kit.db import create_engine, session_factory, transaction
from billfold.kit.ids import new_id
from billfold.models import Invoice, InvoiceLine, Payment, Refund
from billfold.payments.states import PAYMENT, REFUND
from tests import factories as make
from tests import subscribing
from tests.conftest import MigratedDatabases, worker_id
from tests.subscribing import Shop

shop = subscribing.shop  # the fixture

START = datetime(2026, 3, 2, 9, 0, tzinfo=clock.UTC)
DAY = START.date()
CUSTOMERS = 24


@pytest.fixture
def engine(migrated: MigratedDatabases, backend: str) -> Iterator[Engine]:
    """A database of this test's own: the rows behind a figure are every row of the day."""
    fresh = create_engine(migrated.copy(backend, f"billfold_analytics_pages_{worker_id()}"))
    yield fresh
    fresh.dispose()


def make_history(shop: Shop, frozen_clock: clock.FrozenClock) -> None:
    """24 customers paying on the same day, a quarter in EUR: each a subscription with a paid
    monthly line; every third also refunded, every fifth with a failed payment first."""
    frozen_clock.set(START)
    with transaction(session_factory(shop.engine)) as session:
        provider = make.provider(session).id
        for n in range(CUSTOMERS):
            currency, cents = ("EUR", 2000 + n) if n % 4 == 0 else ("USD", 1000 + n)
            person = make.user(session)
            sub = make.subscription(session, user=person)
            invoice = Invoice(invoice_number=f"PAGES-{new_id('n')}", subscription_id=sub.id, user_id=person.id, status="paid",
                              amount_cents=cents, total_cents=cents, currency=currency, issue_date=START, due_date=START,
                              paid_date=START)
            session.add(invoice)
            session.flush()
            session.add(InvoiceLine(invoice_id=invoice.id, position=0, kind="item", description="plan", product_id=sub.product_id,
                                    unit_amount_cents=cents, amount_cents=cents, period_start=START,
                                    period_end=START + timedelta(days=31)))
            if n % 5 == 0:
                pay(session, person.id, sub.id, provider, currency, cents, fails=True)
            paid = pay(session, person.id, sub.id, provider, currency, cents)
            if n % 3 == 0:
                refund = Refund(id=new_id("re"), payment_id=paid, provider_id=provider, amount_cents=cents // 2,
                                currency=currency, status="pending")
                session.add(refund)
                REFUND.start(session, refund, "pending", by="test")
                REFUND.move(session, refund, "succeeded", by="test")
                refund.completed_at = clock.now()
    frozen_clock.set(START + timedelta(days=1))


def pay(session: Any, user_id: str, subscription_id: str, provider: str, currency: str, cents: int, *, fails: bool = False) -> str:
    payment = Payment(id=new_id("pay"), user_id=user_id, subscription_id=subscription_id, provider_id=provider,
                      amount_cents=cents, currency=currency, status="pending")
    session.add(payment)
    PAYMENT.start(session, payment, "pending", by="test")
    PAYMENT.move(session, payment, "failed" if fails else "completed", by="test")
    if not fails:
        payment.completed_at = clock.now()
    session.flush()
    return payment.id


def walk(client: httpx.Client, path: str, cursor: Any, limit: int, **params: Any) -> list[dict[str, Any]]:
    """Every page of ``path``, following ``starting_after`` (the last row's ``cursor``)."""
    rows: list[dict[str, Any]] = []
    after = None
    while True:
        answer = client.get(f"/v1/analytics/{path}", params={**params, "limit": limit, **({"starting_after": after} if after else {})})
        assert answer.status_code == 200, answer.text
        page = answer.json()
        assert len(page["data"]) <= limit and set(page) == {"data", "has_more"}
        rows += page["data"]
        if not page["has_more"]:
            return rows
        assert len(page["data"]) == limit
        after = cursor(page["data"][-1])


def as_csv(client: httpx.Client, path: str, **params: Any) -> list[dict[str, str]]:
    answer = client.get(f"/v1/analytics/{path}", params={**params, "format": "csv"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv"), answer.text
    assert answer.headers["content-disposition"].startswith("attachment; filename=")
    assert "content-length" not in answer.headers  # streamed
    return list(csv.DictReader(io.StringIO(answer.text)))


@pytest.mark.every_database  # the page is cut in SQL on string ids
def test_walking_the_pages_gives_every_row_once_and_csv_streams_them_all(
    shop: Shop, frozen_clock: clock.FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "CSV_PAGE", 6)  # the CSV is read in several pages, some lists an exact multiple of them
    make_history(shop, frozen_clock)
    client = shop.client(shop.admin())
    cohort = {"cohort_month": f"{DAY:%Y-%m}", "month_index": 0}
    lists: list[tuple[str, Any, dict[str, Any]]] = [
        ("mrr/rows", lambda r: r["invoice_line_id"], {"at": str(DAY)}),
        ("mrr/rows", lambda r: r["invoice_line_id"], {"at": str(DAY), "currency": "USD"}),
        ("revenue/rows", lambda r: r["id"], {"date": str(DAY)}),
        ("revenue/rows", lambda r: r["id"], {"date": str(DAY), "currency": "EUR"}),
        ("cohorts/cell", lambda r: r["id"], {**cohort, "currency": "USD"}),
        ("movements/rows", lambda r: f"{r['currency']}:{r['customer_id']}", {"from": str(DAY), "to": str(DAY)}),
    ]
    for path, cursor, params in lists:
        whole = client.get(f"/v1/analytics/{path}", params={**params, "limit": 100}).json()
        assert whole["has_more"] is False
        walked = walk(client, path, cursor, 7, **params)
        assert walked == whole["data"], path  # the same rows, in the same order
        assert len({cursor(r) for r in walked}) == len(walked) > 7, path  # no duplicate; more than a page
        sheet = as_csv(client, path, **params)
        assert [list(r) for r in sheet][:1] == [list(walked[0])]
        assert [{k: v.split() if k == "subscription_ids" else v for k, v in r.items()} for r in sheet] == [
            {k: v if isinstance(v, list) else "" if v is None else str(v) for k, v in r.items()} for r in walked], path
        # CSV starts after starting_after too (a download resumed).
        assert as_csv(client, path, starting_after=cursor(walked[9]), **params) == sheet[10:], path

    # The pages hold exactly the row functions' whole answers (called without a page, as before).
    with session_factory(shop.engine)() as session:
        lines = [r.invoice_line_id for r in metrics.mrr_rows(session, metrics.end_of(DAY))]
        found = metrics.revenue_rows(session, DAY)
        cell = cohorts.retention_cell(session, date(DAY.year, DAY.month, 1), 0, "USD")
    assert [r["invoice_line_id"] for r in walk(client, "mrr/rows", lambda r: r["invoice_line_id"], 5, at=str(DAY))] == lines
    assert len(lines) == CUSTOMERS
    revenue = walk(client, "revenue/rows", lambda r: r["id"], 5, date=str(DAY))
    assert [(r["kind"], r["id"]) for r in revenue] == [
        (kind, row[0]) for kind, key in (("payment", "payments"), ("refund", "refunds"), ("failed", "failed")) for row in found[key]]
    assert [len(found[k]) for k in ("payments", "refunds", "failed")] == [CUSTOMERS, CUSTOMERS // 3, CUSTOMERS // 5 + 1]
    rows = walk(client, "cohorts/cell", lambda r: r["id"], 4, currency="USD", **cohort)
    assert [r["id"] for r in rows] == cell.payment_ids + cell.refund_ids
    assert sorted({r["user_id"] for r in rows if r["kind"] == "payment"}) == cell.user_ids
    client.close()


def test_bad_cursors_and_limits_are_422s_naming_the_field(shop: Shop) -> None:
    today = clock.now().date()
    with shop.client(shop.admin()) as client:
        for path, params in [
            ("mrr/rows", {"at": str(today)}),
            ("revenue/rows", {"date": str(today)}),
            ("cohorts/cell", {"cohort_month": f"{today:%Y-%m}", "month_index": 0, "currency": "USD"}),
            ("movements/rows", {"from": str(today), "to": str(today)}),
        ]:
            for bad, field in [
                ({"starting_after": "nothing_here"}, "starting_after"),
                ({"limit": 101}, "limit"),
                ({"limit": 0}, "limit"),
                ({"limit": "1e1"}, "limit"),
                ({"limit": 5, "format": "csv"}, "limit"),  # CSV answers every row
            ]:
                answer = client.get(f"/v1/analytics/{path}", params={**params, **bad})
                assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json", (path, bad, answer.text)
                assert field in [e["field"] for e in answer.json()["errors"]], (path, bad, answer.json())
            answer = client.get(f"/v1/analytics/{path}", params={**params, "limit": 100})
            assert answer.status_code == 200 and answer.json() == {"data": [], "has_more": False}, (path, answer.text)
