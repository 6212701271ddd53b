"""``billfold analytics snapshot|backfill|report`` (docs/analytics.md "## Snapshots"), run in this
process as an operator would (tests.cli.run), over a small business history made with the real
services and the billing clock: backfill fills its range and can be run again, the report prints
the figures computed here in plain Python over the raw rows (from snapshots or, for days with none,
computed, the same either way), and bad input is one line and exit code 2."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.kit import clock
from billfold.kit.db import create_engine, session_factory, transaction
from billfold.kit.money import Money
from billfold.models import AnalyticsSnapshot, Invoice, InvoiceLine, Payment, Refund, SubscriptionBilling
from tests import cli
from tests.subscribing import Shop, shop  # noqa: F401  (fixture)
from tests.test_analytics_metrics import engine  # noqa: F401  (fixture: a database of the test's own)

START = datetime(2026, 1, 5, 10, 0, tzinfo=clock.UTC)
DAY = timedelta(days=1)
DAYS = 60  # to 2026-03-06: the report's months are 2026-01, 2026-02 and 2026-03 (to the 5th)


def run(shop: Shop, tmp_path: Path, *args: str) -> cli.Result:
    return cli.run("analytics", *args, database_url=shop.engine.url.render_as_string(hide_password=False),
                   settings={"BILLFOLD_DATA_DIR": str(tmp_path)})


def make_history(shop: Shop, frozen_clock: clock.FrozenClock) -> None:
    frozen_clock.set(START)
    admin = shop.admin()
    basic, pro, euro = shop.product(1000), shop.product(3000), shop.product(2000, currency="EUR")
    people = {name: shop.customer(name) for name in ("ada", "bob", "gus", "hal")}
    subs: dict[str, str] = {}
    for n in range(DAYS):
        frozen_clock.set(START + n * DAY)
        if n == 0:
            subs["ada"] = shop.subscribe(people["ada"], basic)["id"]
            subs["gus"] = shop.subscribe(people["gus"], euro)["id"]
        elif n == 3:
            subs["bob"] = shop.subscribe(people["bob"], pro)["id"]
        elif n == 20:
            shop.post(people["bob"], subs["bob"], "cancel", at_period_end=True)
        elif n == 33:
            subs["hal"] = shop.subscribe(people["hal"], euro)["id"]
        elif n == 45:
            with shop.client(admin) as client:
                done = client.post(f"/v1/subscriptions/{subs['gus']}/cancel", json={"at_period_end": False, "refund": True})
            assert done.status_code == 200, done.text
        shop.sweep("renew")
    frozen_clock.set(START + DAYS * DAY)


def plain_month_figures(engine: Engine, months: list[tuple[date, date]]) -> dict[tuple[str, date], dict[str, int]]:
    """Per (currency, month): revenue gross and refunds over the month's days, and MRR and active
    subscriptions at the end of its last day: the paid monthly item lines covering that instant
    of subscriptions not cancelled by then (no discounts, no yearly plans here)."""
    with transaction(session_factory(engine)) as session:
        payments = session.execute(sa.select(Payment.currency, Payment.amount_cents, Payment.completed_at, Payment.status)).all()
        refunds = session.execute(sa.select(Refund.currency, Refund.amount_cents, Refund.completed_at, Refund.status)).all()
        lines = session.execute(
            sa.select(Invoice.subscription_id, Invoice.currency, Invoice.status, Invoice.paid_date, InvoiceLine.kind,
                      InvoiceLine.period_start, InvoiceLine.period_end, InvoiceLine.amount_cents)
            .join(InvoiceLine, InvoiceLine.invoice_id == Invoice.id)
        ).all()
        cancelled = dict(session.execute(sa.select(SubscriptionBilling.subscription_id, SubscriptionBilling.cancelled_at)).all())
    out: dict[tuple[str, date], dict[str, int]] = defaultdict(lambda: {"gross": 0, "refunds": 0, "mrr": 0, "active": 0})
    for first, last in months:
        start = datetime.combine(first, datetime.min.time(), tzinfo=clock.UTC)
        end = datetime.combine(last + DAY, datetime.min.time(), tzinfo=clock.UTC)
        for currency, cents, at, status in payments:
            if status in ("completed", "refunded") and at and start <= at < end:
                out[currency, first]["gross"] += cents
        for currency, cents, at, status in refunds:
            if status == "succeeded" and at and start <= at < end:
                out[currency, first]["refunds"] += cents
        for sub, currency, status, paid, kind, period_start, period_end, cents in lines:
            if (sub and kind == "item" and status == "paid" and paid and paid <= end and period_start <= end < period_end
                    and (cancelled.get(sub) is None or cancelled[sub] > end)):
                out[currency, first]["mrr"] += cents
                out[currency, first]["active"] += 1
    return out


def table(stdout: str) -> dict[str, dict[str, list[str]]]:
    """The report's tables: currency -> row label -> the months' cells."""
    tables: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if re.fullmatch(r"[A-Z]{3}", cells[0]) and len(cells) > 1:
            current = tables.setdefault(cells[0], {"months": cells[1:]})
        elif len(cells) > 1 and current:
            current[cells[0]] = cells[1:]
    return tables


def test_backfill_fills_its_range_again_and_the_report_prints_the_plain_figures(
    shop: Shop, frozen_clock: clock.FrozenClock, tmp_path: Path
) -> None:
    make_history(shop, frozen_clock)
    months = [(date(2026, 1, 1), date(2026, 1, 31)), (date(2026, 2, 1), date(2026, 2, 28)), (date(2026, 3, 1), date(2026, 3, 5))]
    plain = plain_month_figures(shop.engine, months)

    computed = run(shop, tmp_path, "report", "--months", "3")
    assert computed.code == 0, computed
    assert "* some days had no snapshot and were computed now" in computed.stdout

    first = run(shop, tmp_path, "backfill", "--from", "2026-02-01", "--to", "2026-02-28")
    assert first.code == 0, first
    assert re.fullmatch(r"Backfilled 28 days \(2026-02-01 to 2026-02-28\) in \d+\.\d s\.\n", first.stdout), first.stdout
    with transaction(session_factory(shop.engine)) as session:
        def rows() -> list[tuple[date, str, str | None, str]]:
            return sorted(session.execute(sa.select(AnalyticsSnapshot.snapshot_date, AnalyticsSnapshot.metric_type,
                                                    AnalyticsSnapshot.currency, AnalyticsSnapshot.calculation_method)).all())
        once = rows()
    assert {r[0] for r in once} == {date(2026, 2, 1) + i * DAY for i in range(28)}
    assert {r[3] for r in once} == {"on_demand"}
    again = run(shop, tmp_path, "backfill", "--from", "2026-02-01", "--to", "2026-02-28")
    assert again.code == 0, again
    with transaction(session_factory(shop.engine)) as session:
        assert rows() == once  # the same days, replaced: nothing doubled

    defaulted = run(shop, tmp_path, "backfill", "--from", "2026-03-01")  # to yesterday
    assert defaulted.code == 0 and "Backfilled 5 days (2026-03-01 to 2026-03-05)" in defaulted.stdout, defaulted
    snapshot = run(shop, tmp_path, "snapshot")
    assert snapshot.code == 0 and snapshot.stdout.startswith("Snapshot of 2026-03-05: "), snapshot

    stored = run(shop, tmp_path, "report", "--months", "3")  # January still computed, February and March read
    assert stored.code == 0, stored
    assert table(stored.stdout) == {cur: {k: [c if c.startswith("2026-01") else c.rstrip("*") for c in v] if k == "months" else v
                                          for k, v in t.items()}
                                    for cur, t in table(computed.stdout).items()}  # the same figures either way
    assert "All figures read from the stored snapshots." in run(shop, tmp_path, "report", "--months", "2").stdout

    printed = table(stored.stdout)
    assert set(printed) == {"EUR", "USD"}
    for currency, figures in printed.items():
        assert figures["months"] == ["2026-01*", "2026-02", "2026-03"]
        for index, (month, _) in enumerate(months):
            want = plain[currency, month]

            def money(cents: int) -> str:
                return f"{Money(cents, currency).to_decimal():,}"

            assert figures["MRR at month end"][index] == money(want["mrr"]), (currency, month)
            assert figures["Active subscriptions"][index] == str(want["active"]), (currency, month)
            assert figures["Revenue gross"][index] == money(want["gross"]), (currency, month)
            assert figures["Refunds"][index] == money(want["refunds"]), (currency, month)
            assert figures["Revenue net"][index] == money(want["gross"] - want["refunds"]), (currency, month)
        # Net new MRR is the month's change in MRR (January starts from nothing).
        mrr = [0] + [plain[currency, m]["mrr"] for m, _ in months]
        assert figures["Net new MRR"] == [f"{Money(b - a, currency).to_decimal():,}" for a, b in zip(mrr, mrr[1:])]
    assert plain["EUR", date(2026, 2, 1)]["refunds"] > 0 and plain["USD", date(2026, 1, 1)]["mrr"] == 4000

    only = run(shop, tmp_path, "report", "--months", "1", "--currency", "eur")
    assert only.code == 0 and set(table(only.stdout)) == {"EUR"}, only


def test_bad_input_is_one_line_and_exit_code_2(engine: Engine, frozen_clock: clock.FrozenClock, tmp_path: Path) -> None:
    url = engine.url.render_as_string(hide_password=False)
    settings = {"BILLFOLD_DATA_DIR": str(tmp_path)}
    for args, phrase in (
        (("backfill", "--from", "2026-13-01"), "--from '2026-13-01' is not a date"),
        (("backfill", "--from", "2026-01-10", "--to", "2026-01-01"), "--from 2026-01-10 comes after --to 2026-01-01"),
        (("backfill", "--from", "2026-01-01", "--to", "2026-02-01"), "--to 2026-02-01 is in the future"),
        (("snapshot", "--date", "yesterday"), "--date 'yesterday' is not a date"),
        (("report", "--months", "0"), "--months 0 is out of range"),
        (("report", "--currency", "dollars"), "--currency 'dollars' is not an ISO 4217 currency code"),
    ):
        result = cli.run("analytics", *args, database_url=url, settings=settings)
        cli.assert_one_line_error(result, phrase)
        assert result.code == 2, result
    with transaction(session_factory(engine)) as session:
        assert not session.scalar(sa.select(sa.func.count()).select_from(AnalyticsSnapshot))
