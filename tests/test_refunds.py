"""Refunds over real HTTP on each database, with the sandbox provider: one request makes one refund
of its own (unless it replays its own Idempotency-Key), a refund of unknown outcome is settled by
asking the provider with its own key, never by guessing from the amount, a refund the provider
refuses is not answered 201, what the provider cannot do is refused before anything is written,
and after concurrent refunds (and timeouts after the provider refunded) the provider's books and
ours agree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold import worker
from billfold.config import Settings
from billfold.kit import clock
from billfold.kit.db import session_factory, transaction
from billfold.kit.ids import new_id
from billfold.kit.sweeps import Context
from billfold.kit.money import Money
from billfold.models import Payment, PaymentProvider, Refund
from billfold.payments.engine import STALE_AFTER
from billfold.providers.sandbox import SandboxProvider
from tests import cli
from tests.accounts import Api
from tests.test_checkout import checkout, customer, order, product
from tests.test_organizations import assert_problem
from tests.server import free_port

SLOW = "tok_sandbox_timeout_after_success"  # the provider acts, then its answer is lost


def sandbox(api: Api) -> SandboxProvider:
    return SandboxProvider("sandbox", {"state_path": str(Path(api.data_dir) / "sandbox.sqlite3")})


def context(api: Api, engine: Engine) -> Context:
    settings = Settings(database_url=engine.url.render_as_string(hide_password=False), data_dir=api.data_dir)
    return worker.make_context(settings, engine)


def paid(api: Api, engine: Engine, price: int = 1000, token: str = "tok_sandbox_visa", provider_id: str | None = None) -> dict:
    """A completed payment of ``price`` cents (a token that times out is paid by its retry)."""
    buyer = customer(api, engine)
    made = order(api, buyer.token, (product(engine, price), 1))
    body = {"token": token, **({"provider_id": provider_id} if provider_id else {})}
    with api.client(buyer.token) as client:
        answer = checkout(client, made["id"], **body)
        if answer.status_code == 503:
            answer = checkout(client, made["id"], **body)
    assert answer.status_code == 200, answer.text
    return answer.json()["payment"]


def post_refund(client: httpx.Client, payment_id: str, key: str | None = None, **body: object) -> httpx.Response:
    return client.post(f"/v1/payments/{payment_id}/refunds", json=body, headers={"Idempotency-Key": key} if key else {})


def ours(engine: Engine, payment_id: str) -> tuple[str, list[tuple[str, str, int, str | None]]]:
    """The payment's status and its refunds (id, status, amount, reason), oldest first."""
    with session_factory(engine)() as session:
        payment = session.get(Payment, payment_id)
        rows = session.scalars(sa.select(Refund).where(Refund.payment_id == payment_id).order_by(Refund.id)).all()
        return payment.status, [(r.id, r.status, r.amount_cents, r.reason) for r in rows]


def theirs(api: Api, payment: dict) -> list[tuple[str, int, str | None]]:
    """The provider's refunds of the payment's charge: (our refund id, amount, reason)."""
    made = sandbox(api).list_refunds_of(payment["provider_payment_id"])
    return [(r.metadata.get("refund_id"), r.amount.amount, r.reason) for r in made]


def settle(api: Api, engine: Engine) -> int:
    """Run the worker's sweep that settles pending refunds, as the worker would once they are stale."""
    later = clock.FrozenClock(clock.now() + STALE_AFTER + timedelta(minutes=1))
    with clock.using(later):
        return worker.run_sweep(context(api, engine), "refunds.settle") or 0


def test_a_new_request_makes_its_own_refund_and_a_pending_one_is_settled_by_asking_the_provider(
    api: Api, engine: Engine, admin_token: str
) -> None:
    payment = paid(api, engine, 1000, SLOW)
    assert payment["amount_cents"] == 1200, "20 % VAT on 1000"
    with api.client(admin_token) as admin:
        lost = post_refund(admin, payment["id"], "refund-a", amount_cents=600, reason="arrived damaged")
        first = assert_problem(lost, 503, "provider_unavailable")["refund_id"]
        other = post_refund(admin, payment["id"], "refund-b", amount_cents=600, reason="arrived late")
        second = assert_problem(other, 503, "provider_unavailable")["refund_id"]
        assert second != first, "a new request never takes up another request's pending refund"
        rest = assert_problem(post_refund(admin, payment["id"], "refund-c"), 409, "refund_in_progress")
        assert set(rest["pending_refund_ids"]) == {first, second} and rest["left_cents"] == 0
        assert_problem(post_refund(admin, payment["id"], amount_cents=1), 409, "refund_in_progress")
        assert_problem(post_refund(admin, payment["id"], amount_cents=1201), 422, "invalid_amount", "amount_cents")
        retried = post_refund(admin, payment["id"], "refund-a", amount_cents=600, reason="arrived damaged")
        assert retried.status_code == 201, retried.text
        assert (retried.json()["id"], retried.json()["status"], retried.json()["reason"]) == (first, "succeeded", "arrived damaged")
    assert ours(engine, payment["id"])[1] == [(first, "succeeded", 600, "arrived damaged"), (second, "pending", 600, "arrived late")]
    assert settle(api, engine) >= 1
    assert ours(engine, payment["id"]) == ("refunded", [(first, "succeeded", 600, "arrived damaged"), (second, "succeeded", 600, "arrived late")])
    assert theirs(api, payment) == [(first, 600, "arrived damaged"), (second, 600, "arrived late")]
    with api.client(admin_token) as admin:
        replayed = post_refund(admin, payment["id"], "refund-b", amount_cents=600, reason="arrived late")
        assert (replayed.status_code, replayed.json()["id"], replayed.json()["status"]) == (201, second, "succeeded")
        assert admin.get(f"/v1/orders/{payment['order_id']}").json()["status"] == "refunded"


def test_two_requests_with_different_keys_get_two_refunds_and_the_rest_is_refunded_in_full(
    api: Api, engine: Engine, admin_token: str
) -> None:
    payment = paid(api, engine, 1000)
    with api.client(admin_token) as admin:
        one = post_refund(admin, payment["id"], new_id("k"), amount_cents=300, reason="one")
        two = post_refund(admin, payment["id"], new_id("k"), amount_cents=300, reason="two")
        assert one.status_code == two.status_code == 201 and one.json()["id"] != two.json()["id"]
        rest = post_refund(admin, payment["id"], new_id("k"))
        assert (rest.status_code, rest.json()["amount_cents"], rest.json()["status"]) == (201, 600, "succeeded")
    assert [amount for _, amount, _ in theirs(api, payment)] == [300, 300, 600]
    assert ours(engine, payment["id"])[0] == "refunded"


def test_a_refund_the_provider_refuses_is_not_answered_201_and_blocks_nothing(api: Api, engine: Engine, admin_token: str) -> None:
    payment = paid(api, engine, 1000)
    # Someone refunded 1000 of 1200 in the provider's own dashboard: the provider refuses more than 200.
    sandbox(api).refund(charge_id=payment["provider_payment_id"], amount=Money(1000, "USD"), idempotency_key=new_id("dash"))
    with api.client(admin_token) as admin:
        refused = post_refund(admin, payment["id"], "too-much", amount_cents=500, reason="broken")
        problem = assert_problem(refused, 409, "refund_failed")
        assert problem["payment_id"] == payment["id"] and problem["provider_code"] == "refund_exceeds_captured"
        again = post_refund(admin, payment["id"], "too-much", amount_cents=500, reason="broken")
        assert (again.status_code, again.json(), again.headers["Idempotent-Replayed"]) == (409, problem, "true")
        assert admin.get(f"/v1/payments/{payment['id']}").json()["status"] == "completed"
        fits = post_refund(admin, payment["id"], amount_cents=200, reason="what is left at the provider")
        assert fits.status_code == 201 and fits.json()["status"] == "succeeded", fits.text
    assert [(status, amount) for _, status, amount, _ in ours(engine, payment["id"])[1]] == [("failed", 500), ("succeeded", 200)]
    [(refund_id, *_)] = [row for row in ours(engine, payment["id"])[1] if row[1] == "failed"]
    assert problem["refund_id"] == refund_id


def _provider(engine: Engine) -> str:
    provider_id = new_id("sbx").lower()[:20]
    with transaction(session_factory(engine)) as session:
        session.add(PaymentProvider(id=provider_id, display_name="Narrow sandbox", config={"kind": "sandbox"}))
    return provider_id


def _configure(engine: Engine, provider_id: str, **config: object) -> None:
    with transaction(session_factory(engine)) as session:
        session.get(PaymentProvider, provider_id).config = {"kind": "sandbox", **config}


def test_what_the_provider_cannot_do_is_refused_before_any_refund_is_written(api: Api, engine: Engine, admin_token: str) -> None:
    provider_id = _provider(engine)
    payment = paid(api, engine, 1000, provider_id=provider_id)
    with api.client(admin_token) as admin:
        _configure(engine, provider_id, disable=["refunds"])
        assert_problem(post_refund(admin, payment["id"], "no-refunds"), 422, "not_supported")
        _configure(engine, provider_id, disable=["partial_refunds"])
        assert_problem(post_refund(admin, payment["id"], amount_cents=400), 422, "not_supported")
        _configure(engine, provider_id, currencies=["EUR"])
        assert_problem(post_refund(admin, payment["id"]), 422, "not_supported")
        assert ours(engine, payment["id"]) == ("completed", []), "a refused refund leaves no row"
        _configure(engine, provider_id, disable=["partial_refunds"])
        whole = post_refund(admin, payment["id"], reason="all of it")
        assert whole.status_code == 201 and whole.json()["status"] == "succeeded", whole.text
    assert ours(engine, payment["id"])[0] == "refunded"


def test_the_refund_sweep_is_registered_and_settles_a_refund_whose_answer_was_lost(api: Api, engine: Engine, admin_token: str) -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", "from billfold import worker; print(*(s.name for s in worker.load_sweeps()))"],
        capture_output=True, text=True, check=True,
    )
    assert "refunds.settle" in loaded.stdout.split(), "the worker loads the sweep by itself"
    payment = paid(api, engine, 1000, SLOW)
    with api.client(admin_token) as admin:
        lost = post_refund(admin, payment["id"], reason="no key, answer lost")  # as if we crashed after the provider refunded
        refund_id = assert_problem(lost, 503, "provider_unavailable")["refund_id"]
    assert ours(engine, payment["id"]) == ("completed", [(refund_id, "pending", 1200, "no key, answer lost")])
    assert worker.run_sweep(context(api, engine), "refunds.settle") == 0, "not while a request may still be driving it"
    assert settle(api, engine) >= 1
    assert ours(engine, payment["id"]) == ("refunded", [(refund_id, "succeeded", 1200, "no key, answer lost")])
    assert theirs(api, payment) == [(refund_id, 1200, "no key, answer lost")]


@pytest.mark.slow
@pytest.mark.every_database
@pytest.mark.parametrize("token", ["tok_sandbox_visa", SLOW])
def test_concurrent_refunds_with_other_keys_and_reasons_agree_with_the_provider(
    api: Api, engine: Engine, admin_token: str, backend: str, token: str
) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite has no row locks: one writer at a time, nothing to race")
    payment = paid(api, engine, 1000, token)
    callers, start = 16, threading.Barrier(16)
    answers: list[httpx.Response] = []

    def ask(n: int) -> None:
        with api.client(admin_token) as admin:
            start.wait()
            answers.append(post_refund(admin, payment["id"], f"race-{n}-{new_id('k')}", amount_cents=300, reason=f"reason {n}"))

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = Counter(a.status_code for a in answers)
    assert set(statuses) <= {201, 409, 422, 503}, [a.text for a in answers if a.status_code not in (201, 409, 422, 503)]
    assert all(a.json()["status"] == "succeeded" for a in answers if a.status_code == 201)
    assert statuses[201] + statuses[503] == 4, statuses
    settle(api, engine)
    status, rows = ours(engine, payment["id"])
    succeeded = [(refund_id, amount, reason) for refund_id, state, amount, reason in rows if state == "succeeded"]
    assert sorted(succeeded) == sorted(theirs(api, payment)), "the provider's books and ours agree"
    assert sum(amount for _, amount, _ in succeeded) == 1200 == sandbox(api).get_charge(payment["provider_payment_id"]).amount_refunded.amount
    assert status == "refunded" and all(state == "succeeded" for _, state, _, _ in rows)


@contextmanager
def billfold_serve(engine: Engine, data_dir: Path) -> Iterator[str]:
    """``billfold serve`` in a process of its own (and its own process group, to kill it whole)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}
    env.update(
        BILLFOLD_DATABASE_URL=engine.url.render_as_string(hide_password=False), BILLFOLD_DATA_DIR=str(data_dir),
        BILLFOLD_WORKER="off",
    )
    with (data_dir / "serve.log").open("ab") as log:
        server = subprocess.Popen(
            [cli.BILLFOLD, "serve", "--port", str(port), "--no-access-log"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (data_dir / "serve.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (data_dir / "serve.log").read_text()
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # no shutdown: requests die wherever they are
        server.wait()


@pytest.mark.slow
@pytest.mark.every_database
def test_refunds_killed_mid_burst_end_with_the_provider_and_our_books_agreeing(
    api: Api, engine: Engine, admin_token: str, backend: str
) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite has no row locks: one writer at a time, nothing to race")
    payments = [paid(api, engine, 1000) for _ in range(3)]  # 1200 each, through the same sandbox state file
    answered, told = threading.Event(), []
    with billfold_serve(engine, Path(api.data_dir)) as url:
        def ask(payment_id: str, n: int) -> None:
            headers = {"Authorization": f"Bearer {admin_token}", "Idempotency-Key": new_id("kill")}
            try:
                answer = httpx.post(
                    f"{url}/v1/payments/{payment_id}/refunds", json={"amount_cents": 300, "reason": f"asker {n}"},
                    headers=headers, timeout=30,
                )
            except httpx.HTTPError:
                return  # killed mid-request
            told.append(answer)
            answered.set()

        threads = [threading.Thread(target=ask, args=(p["id"], n)) for p in payments for n in range(8)]
        for thread in threads:
            thread.start()
        assert answered.wait(30), "no answer before the kill"
    # The server was killed (SIGKILL) at the first answer, with the other requests anywhere.
    for thread in threads:
        thread.join()
    assert len(told) < len(threads), "some requests were cut off by the kill"
    settle(api, engine)
    for payment in payments:
        status, rows = ours(engine, payment["id"])
        assert all(state != "pending" for _, state, _, _ in rows), rows
        succeeded = sorted((refund_id, amount, reason) for refund_id, state, amount, reason in rows if state == "succeeded")
        assert succeeded == sorted(theirs(api, payment)), "the provider's books and ours agree"
        given_back = sum(amount for _, amount, _ in succeeded)
        assert given_back == sandbox(api).get_charge(payment["provider_payment_id"]).amount_refunded.amount <= 1200
        assert status == ("refunded" if given_back == 1200 else "completed")
    refunded = {answer.json()["id"] for answer in told if answer.status_code == 201}
    assert refunded <= {row[0] for p in payments for row in ours(engine, p["id"])[1] if row[1] == "succeeded"}
