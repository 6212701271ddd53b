"""Several workers sweeping the same due subscriptions at once bill each period exactly once:
rows are claimed with FOR UPDATE SKIP LOCKED and the period moves on in the transaction that
invoices it (PostgreSQL and MariaDB; SQLite has one writer at a time)."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from billfold.kit import clock
from tests.subscribing import SWEEPS, Shop, shop, when  # noqa: F401  (fixture)

pytestmark = [pytest.mark.every_database, pytest.mark.slow]

WORKERS = 4


def test_racing_renewal_sweeps_bill_each_subscription_once(shop: Shop, backend: str, frozen_clock: clock.FrozenClock) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite has no row locks: one writer at a time, nothing to race")
    plan = shop.product(1500)
    people = [shop.customer(f"racer{n}") for n in range(3)]
    subs = [shop.subscribe(person, plan)["id"] for person in people for _ in range(3)]
    frozen_clock.set(when(shop.get(people[0], subs[0])["current_period_end"]))
    start, errors, done = threading.Barrier(WORKERS), [], Counter()

    def worker(n: int) -> None:
        try:
            start.wait()
            for _ in range(20):
                moved = SWEEPS["renew"](shop.context)
                done[n] += moved
                if not moved:
                    break
        except Exception as error:  # noqa: BLE001  (reported below)
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    for sub in subs:
        assert [i.status for i in shop.invoices(sub)] == ["paid", "paid"], sub
        assert len([c for c in shop.charges(sub) if c.status == "succeeded"]) == 2, sub
        assert len(shop.payments(sub)) == 2
        assert shop.events(sub).count("subscription.invoiced") == 2
    assert SWEEPS["renew"](shop.context) == 0
