"""Bursts of hundreds of simultaneous requests against the real server, on each database: every
answer is a success or a documented refusal (4xx, or 503 with Retry-After), never a 500 and never
a hang, and the provider's books and ours agree afterwards.

Before these tests, a request took a pooled connection when it authenticated and kept it while it
waited for a thread for its next step, while the threads waited for connections: 200 requests
gave up to 180 answers of 500 after the 30 s pool timeout."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.kit.db import session_factory, transaction
from billfold.models import Order, Payment
from billfold.providers.sandbox import SandboxProvider
from tests import factories as make
from tests.server import serving
from tests.test_checkout import HOME
from tests.test_organizations import person

pytestmark = pytest.mark.slow

BURST = 300


def _product(engine: Engine) -> str:
    with transaction(session_factory(engine)) as session:
        make.provider(session)
        return make.product(
            session, product_type="digital", is_recurring=False, billing_interval=None, price_cents=1250, currency="USD"
        ).id


def _orders(url: str, token: str, product_id: str, count: int) -> list[str]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        assert client.post("/v1/me/addresses", json=HOME).status_code == 201
        made = [client.post("/v1/orders", json={"items": [{"product_id": product_id, "quantity": 1}]}) for _ in range(count)]
    assert all(m.status_code == 201 for m in made), [m.text for m in made if m.status_code != 201][:3]
    return [m.json()["id"] for m in made]


def _burst(url: str, calls: list[tuple[str, str, str, dict | None, dict]]) -> list[httpx.Response | BaseException]:
    """Send every call at once (one thread each, released together); each answer or the error."""
    start = threading.Barrier(len(calls))

    def send(call: tuple[str, str, str, dict | None, dict]) -> httpx.Response | BaseException:
        method, path, token, body, headers = call
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}", **headers}, timeout=90) as client:
            start.wait()
            try:
                return client.request(method, path, json=body)
            except httpx.HTTPError as error:  # a hang ends here, as a timeout
                return error

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(send, calls))


def _assert_no_server_errors(answers: list[httpx.Response | BaseException]) -> Counter:
    errors = [a for a in answers if isinstance(a, BaseException)]
    assert not errors, f"{len(errors)} requests got no answer, e.g. {errors[0]!r}"
    statuses = Counter(a.status_code for a in answers if isinstance(a, httpx.Response))
    bad = [a for a in answers if isinstance(a, httpx.Response) and a.status_code >= 500 and a.status_code != 503]
    assert not bad, f"{statuses}: e.g. {bad[0].status_code} {bad[0].text[:300]}"
    for answer in answers:
        if isinstance(answer, httpx.Response) and answer.status_code == 503:
            assert answer.headers.get("Retry-After", "").isdigit(), answer.text
            assert answer.headers["content-type"].startswith("application/problem+json")
    return statuses


# The real clock on every database; the sandbox's billing clock (read from the database by every
# request) on one, picked as other tests' databases are: the clock's own SQL is tested on all three.
@pytest.mark.parametrize("sandbox_mode", [
    pytest.param(False, id="real-clock", marks=pytest.mark.every_database), pytest.param(True, id="sandbox-clock"),
])
def test_a_burst_of_checkouts_and_reads_gets_no_500_and_the_books_agree(
    engine: Engine, tmp_path: Path, sandbox_mode: bool
) -> None:
    product_id = _product(engine)
    buyers = [person(engine, f"burst{n}") for n in range(20)]
    with serving(engine, tmp_path, sandbox=sandbox_mode) as url:
        per_buyer = BURST // 2 // len(buyers)
        with ThreadPoolExecutor(len(buyers)) as pool:
            made = list(pool.map(lambda b: _orders(url, b.token, product_id, per_buyer), buyers))
        orders = {b.token: ids for b, ids in zip(buyers, made)}
        calls: list[tuple[str, str, str, dict | None, dict]] = []
        for buyer in buyers:
            for order_id in orders[buyer.token]:
                key = {"Idempotency-Key": str(uuid.uuid4())}
                calls.append(("POST", f"/v1/orders/{order_id}/checkout", buyer.token, {"token": "tok_sandbox_visa"}, key))
                calls.append(("GET", "/v1/orders", buyer.token, None, {}))
        answers = _burst(url, calls)
        statuses = _assert_no_server_errors(answers)
        assert statuses[200] > 0, statuses

        # Every checkout that was refused for being busy can be retried, and then succeeds.
        retry = [c for c, a in zip(calls, answers) if c[0] == "POST" and isinstance(a, httpx.Response) and a.status_code != 200]
        for method, path, token, body, headers in retry:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}", **headers}, timeout=60) as client:
                again = client.request(method, path, json=body)
                assert again.status_code == 200, again.text

    all_orders = [o for ids in orders.values() for o in ids]
    with session_factory(engine)() as session:
        statuses_now = Counter(session.scalars(sa.select(Order.status).where(Order.id.in_(all_orders))))
        completed = session.scalars(
            sa.select(Payment.provider_payment_id).where(Payment.order_id.in_(all_orders), Payment.status == "completed")
        ).all()
    assert statuses_now == Counter({"paid": len(all_orders)})
    charged = [
        c for c in SandboxProvider("sandbox", {"state_path": str(tmp_path / "sandbox.sqlite3")}).list_charges()
        if (c.metadata or {}).get("order_id") in set(all_orders)
    ]
    assert sorted(c.id for c in charged) == sorted(completed), "one charge per order, each recorded"


@pytest.mark.every_database
def test_a_busy_provider_store_is_a_503_to_retry_not_a_misconfigured_provider(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transient failure (here the sandbox's store locked by another process) is not a fault of
    the provider's configuration: it answers 503 with Retry-After, is not stored as the key's final
    answer, and the same request with the same key then pays."""
    from billfold.providers.sandbox import store

    monkeypatch.setattr(store, "BUSY_TIMEOUT_MS", 300)  # wait 0.3 s for the lock instead of 30 s
    product_id = _product(engine)
    buyer = person(engine, "patient")
    with serving(engine, tmp_path) as url:
        (order_id,) = _orders(url, buyer.token, product_id, 1)
        holder = sqlite3.connect(tmp_path / "sandbox.sqlite3", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        headers = {"Authorization": f"Bearer {buyer.token}", "Idempotency-Key": "busy-store-1"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            try:
                busy = client.post(f"/v1/orders/{order_id}/checkout", json={"token": "tok_sandbox_visa"})
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            assert busy.status_code == 503, busy.text
            assert busy.json()["code"] == "provider_unavailable" and busy.headers["Retry-After"].isdigit()
            paid = client.post(f"/v1/orders/{order_id}/checkout", json={"token": "tok_sandbox_visa"})
            assert paid.status_code == 200, paid.text
            assert paid.json()["order"]["status"] == "paid"
