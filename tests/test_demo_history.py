"""``billfold demo --months N``: months of a subscription business lived through day by day, on
each database. What a person exploring the demo would check: the history spans the months asked
for and ends now, nothing was left due, the money adds up, and it holds the things a real shop
sees (signups, renewals, upgrades, churn, failed payments and recoveries, refunds)."""

from __future__ import annotations

import os
import re
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from billfold import worker
from billfold.config import Settings
from billfold.demo.history import build_history
from billfold.kit import clock
from billfold.kit.db import create_engine, session_factory
from billfold.analytics import jobs
from billfold.models import AnalyticsSnapshot, Invoice, InvoiceLine, OutboxEmail, Payment, PaymentEvent, Refund, Subscription, User, UserCohort
from billfold.subscriptions.periods import add_months
from tests import cli, databases
from tests.accounts import Api
from tests.conftest import MigratedDatabases
from tests.server import free_port

pytestmark = pytest.mark.slow

MONTHS = 3


def test_three_months_of_history_end_now_leave_nothing_due_and_add_up(backend: str, tmp_path: Path, migrated: MigratedDatabases) -> None:
    name = f"billfold_history_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
    url = migrated.copy(backend, name)
    engine = create_engine(url)
    try:
        # An SMTP server is configured (nothing listens there): the history must not use it.
        settings = Settings(database_url=url.render_as_string(hide_password=False), data_dir=tmp_path / "data",
                            smtp_host="127.0.0.1", smtp_port=free_port(), smtp_starttls=False)
        days: list[int] = []
        before = clock.now()
        report = build_history(
            worker.make_context(settings, engine), months=MONTHS, on_day=lambda n, total, now: days.append(n)
        )
        after = clock.now()
        assert before - timedelta(seconds=1) <= report.end <= after
        assert report.start == add_months(report.end, -MONTHS)
        assert days == list(range(1, report.days + 1)) and 89 <= report.days <= 92

        with session_factory(engine)() as session:
            # It spans the months and ends now: the first customers are as old as the history,
            # and every month has its invoices.
            first_signup = session.scalar(sa.select(sa.func.min(User.created_at)))
            assert first_signup is not None and abs(first_signup - report.start) < timedelta(seconds=5)
            latest = session.scalar(sa.select(sa.func.max(PaymentEvent.created_at)))
            assert latest is not None and report.end - timedelta(days=2) < latest <= report.end
            issued = session.scalars(sa.select(Invoice.issue_date)).all()
            months = {(d.year, d.month) for d in issued}
            assert len(months) >= MONTHS, f"invoices in {sorted(months)}"

            # Nothing was left due: the worker caught up after every day.
            subscriptions = session.scalars(sa.select(Subscription)).all()
            for s in subscriptions:
                if s.status == "active":
                    assert s.current_period_end > report.end, f"{s.id} was not renewed"
                if s.status == "trialing":
                    assert s.trial_end is not None and s.trial_end > report.end, f"{s.id}'s trial did not end"
            assert session.scalar(sa.select(sa.func.count()).select_from(Payment).where(Payment.status == "pending")) == 0

            # Each active subscription's current period is invoiced and paid.
            paid_periods = set(session.execute(
                sa.select(Invoice.subscription_id, InvoiceLine.period_start)
                .join(InvoiceLine, InvoiceLine.invoice_id == Invoice.id)
                .where(Invoice.status == "paid", InvoiceLine.kind == "item")
            ).all())
            for s in subscriptions:
                if s.status == "active":
                    assert (s.id, s.current_period_start) in paid_periods, f"{s.id}'s current period is unpaid"

            # The money adds up: refunds never exceed their payment, refunded payments are refunded
            # in full, and invoice numbers have no gaps.
            refunded: dict[str, int] = defaultdict(int)
            for payment_id, amount in session.execute(
                sa.select(Refund.payment_id, Refund.amount_cents).where(Refund.status == "succeeded")
            ):
                refunded[payment_id] += amount
            for payment in session.scalars(sa.select(Payment).where(Payment.id.in_(refunded))):
                assert refunded[payment.id] <= payment.amount_cents
                assert (payment.status == "refunded") == (refunded[payment.id] == payment.amount_cents)
            numbers: dict[str, list[int]] = defaultdict(list)
            for number in session.scalars(sa.select(Invoice.invoice_number)):
                series, serial = re.fullmatch(r"(.+)-(\d+)", number).groups()  # type: ignore[union-attr]
                numbers[series].append(int(serial))
            for series, serials in numbers.items():
                assert sorted(serials) == list(range(1, len(serials) + 1)), f"gaps in {series}"

            # What a real shop sees.
            statuses = {s.status for s in subscriptions}
            assert {"active", "cancelled"} <= statuses
            failed = session.scalar(sa.select(sa.func.count()).select_from(Payment).where(Payment.status == "failed"))
            assert failed and failed > 0
            moves = session.execute(
                sa.select(PaymentEvent.event_type).where(PaymentEvent.entity_type == "subscription")
            ).scalars().all()
            assert any("past_due" in move for move in moves), "no renewal ever failed"

            # Its mail (receipts, dunning) went to the mail folder, every row sent, none to SMTP.
            outbox = dict(session.execute(sa.select(OutboxEmail.id, OutboxEmail.status)).all())
            subjects = [m["Subject"] for m in Api("", tmp_path / "data").mails_to_anyone()]
            assert set(outbox.values()) == {"sent"} and len(subjects) == len(outbox)
            assert any(s.startswith("Your receipt for order ") for s in subjects), "receipts for orders"
            assert any(re.fullmatch(r"Your payment of .+ did not go through", s) for s in subjects), "dunning mails"

            # Analytics as after months of nightly runs: every day to yesterday taken, and the cohorts.
            taken = dict(session.execute(
                sa.select(AnalyticsSnapshot.snapshot_date, sa.func.min(AnalyticsSnapshot.calculation_method))
                .group_by(AnalyticsSnapshot.snapshot_date)
            ).all())
            days = (jobs.yesterday(report.end) - report.start.date()).days + 1
            assert sorted(taken) == jobs.days_between(report.start.date(), jobs.yesterday(report.end)) and len(taken) == days
            assert set(taken.values()) == {"scheduled"} and report.snapshot_days == days
            assert session.scalar(sa.select(sa.func.count()).select_from(UserCohort)) >= report.totals["customers"] // 2
        for action in ("signups", "orders paid", "refunds", "seats added", "cancellations at period end",
                       "cards that began failing", "cards fixed"):
            assert report.actions[action] > 0, f"no {action} in {dict(report.actions)}"
        assert report.worker["subscriptions.renew"] > 0 and report.worker["subscriptions.trials"] > 0
        assert report.totals["customers"] > 20
    finally:
        engine.dispose()
        databases.drop_database(backend, url)


def test_billfold_demo_months_prints_what_it_made_and_then_refuses_politely(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    assert cli.run("db", "upgrade", database_url=url, cwd=tmp_path).code == 0
    made = cli.run("demo", "--months", "1", database_url=url, cwd=tmp_path)
    assert made.code == 0, made
    assert re.search(r"Demo shop loaded with 1 month of history \(\d{4}-\d\d-\d\d to \d{4}-\d\d-\d\d, \d\d days\)", made.stdout)
    printed = dict(re.findall(r"^\s+([a-z][a-z .:_-]*[a-z])\s+(\d+)$", made.stdout, re.M))
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            customers = connection.scalar(sa.text("SELECT count(*) FROM users WHERE user_type != 'admin'"))
            invoices = connection.scalar(sa.text("SELECT count(*) FROM invoices"))
        assert int(printed["customers"]) == customers > 12
        assert int(printed["invoices"]) == invoices > 0
    finally:
        engine.dispose()
    again = cli.run("demo", "--months", "1", database_url=url, cwd=tmp_path)
    cli.assert_one_line_error(again, "already has data")
