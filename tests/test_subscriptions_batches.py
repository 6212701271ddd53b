"""The renewal sweep charges a batch of subscriptions and records all their outcomes in one
transaction: one customer's decline or an unanswered charge does not hold back the others, and
workers racing over small batches still bill every period once."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from datetime import timedelta

import pytest

from billfold import worker
from billfold.kit import clock
from billfold.kit import sweeps as registry
from billfold.payments.engine import STALE_AFTER
from billfold.subscriptions import sweeps
from tests.subscribing import SWEEPS, Shop, shop, when  # noqa: F401  (fixture)

pytestmark = pytest.mark.every_database


def test_one_sweep_records_a_decline_and_an_unanswered_charge_beside_the_paid_renewals(
    shop: Shop, frozen_clock: clock.FrozenClock
) -> None:
    plan = shop.product(1200)
    people = {label: shop.customer(label) for label in ("paid1", "poor", "slow", "paid2")}
    subs = {label: shop.subscribe(person, plan)["id"] for label, person in people.items()}
    shop.post(people["poor"], subs["poor"], "change", payment_method_id=shop.save_method(people["poor"].token, "tok_sandbox_insufficient_funds"))
    shop.post(people["slow"], subs["slow"], "change", payment_method_id=shop.save_method(people["slow"].token, "tok_sandbox_timeout_after_success"))
    frozen_clock.set(when(shop.get(people["paid1"], subs["paid1"])["current_period_end"]))

    assert SWEEPS["renew"](shop.context) == 4, "one batch"

    for label in ("paid1", "paid2"):
        assert shop.get(people[label], subs[label])["status"] == "active"
        assert [i.status for i in shop.invoices(subs[label])] == ["paid", "paid"]
        assert [p.status for p in shop.payments(subs[label])] == ["completed", "completed"]
    poor = shop.get(people["poor"], subs["poor"])
    assert poor["status"] == "past_due"
    assert [i.status for i in shop.invoices(subs["poor"])] == ["paid", "open"]
    assert [p.status for p in shop.payments(subs["poor"])] == ["completed", "failed"]
    assert poor["outstanding_invoice_id"] == shop.invoices(subs["poor"])[-1].id
    # The provider charged but its answer was lost: the payment waits for the stale-payment sweep.
    assert [p.status for p in shop.payments(subs["slow"])] == ["completed", "pending"]
    assert shop.get(people["slow"], subs["slow"])["status"] == "active"

    frozen_clock.advance(STALE_AFTER + timedelta(minutes=1))
    assert SWEEPS["renew"](shop.context) == 1, "the stale payment, taken up again"
    assert [p.status for p in shop.payments(subs["slow"])] == ["completed", "completed"]
    assert [i.status for i in shop.invoices(subs["slow"])] == ["paid", "paid"]
    assert len([c for c in shop.charges(subs["slow"]) if c.status == "succeeded"]) == 2, "the same provider key: charged once"
    for label in subs:
        assert shop.events(subs[label]).count("subscription.invoiced") == 2


def test_two_workers_racing_over_small_batches_bill_each_period_once(
    shop: Shop, backend: str, frozen_clock: clock.FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite has no row locks: one writer at a time, nothing to race")
    monkeypatch.setattr(sweeps, "BATCH", 2)  # many batches for two workers to interleave
    plan = shop.product(700)
    people = [shop.customer(f"batch{n}") for n in range(3)]
    subs = [shop.subscribe(person, plan)["id"] for person in people for _ in range(3)]
    declined = subs[4]
    shop.post(people[1], declined, "change", payment_method_id=shop.save_method(people[1].token, "tok_sandbox_decline"))
    frozen_clock.set(when(shop.get(people[0], subs[0])["current_period_end"]))
    start, errors, done = threading.Barrier(2), [], Counter()

    def worker(n: int) -> None:
        try:
            start.wait()
            for _ in range(30):
                moved = SWEEPS["renew"](shop.context)
                done[n] += moved
                if not moved:
                    break
        except Exception as error:  # noqa: BLE001  (reported below)
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sum(done.values()) == len(subs)
    for sub in subs:
        assert len(shop.payments(sub)) == 2
        assert shop.events(sub).count("subscription.invoiced") == 2
        charges = [c.status for c in shop.charges(sub)]
        if sub == declined:
            assert [i.status for i in shop.invoices(sub)] == ["paid", "open"]
            assert charges.count("succeeded") == 1 and charges.count("failed") == 1
        else:
            assert [i.status for i in shop.invoices(sub)] == ["paid", "paid"], sub
            assert charges.count("succeeded") == 2, sub
    numbers = [i.invoice_number for sub in subs for i in shop.invoices(sub)]
    assert len(set(numbers)) == len(numbers) and not any(n.startswith("inv_") for n in numbers), "numbered, once each"
    assert SWEEPS["renew"](shop.context) == 0


def test_one_round_of_the_worker_renews_a_backlog_of_many_batches_several_at_once(
    shop: Shop, frozen_clock: clock.FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's round runs the renewal sweep again while it finds work (it ran one batch a
    minute: 50 renewals a minute), on ``worker_sweeps_at_once`` threads (one on SQLite), each
    claiming its own batch: every period billed once."""
    monkeypatch.setattr(sweeps, "BATCH", 2)
    plan = shop.product(700)
    people = [shop.customer(f"backlog{n}") for n in range(3)]
    subs = [shop.subscribe(person, plan)["id"] for person in people for _ in range(4)]
    frozen_clock.set(when(shop.get(people[0], subs[0])["current_period_end"]))
    context = dataclasses.replace(shop.context, settings=shop.context.settings.model_copy(update={"worker_sweeps_at_once": 3}))
    renew = registry.get("subscriptions.renew")
    schedule = worker.Schedule()

    assert worker.run_sweeps(context, sweeps=[renew], schedule=schedule) == {"subscriptions.renew": len(subs)}

    for sub in subs:
        assert [p.status for p in shop.payments(sub)] == ["completed", "completed"], sub
        assert [i.status for i in shop.invoices(sub)] == ["paid", "paid"], sub
        assert [c.status for c in shop.charges(sub)].count("succeeded") == 2, sub
    assert worker.run_sweeps(context, sweeps=[renew], schedule=schedule) == {}, "worked through: not due for a minute"
