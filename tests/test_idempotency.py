"""Idempotency keys on each database: stored and replayed answers, mismatches, real concurrent
claims (threads, each with its own connection), stale locks taken over and fenced, released locks
resumed, and purging by age."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from billfold.kit import clock
from billfold import idempotency as idem
from billfold.kit.db import session_factory, transaction
from billfold.kit.errors import BillfoldError, InvalidInput, TooManyRequests
from billfold.kit.ids import new_id
from billfold.models import IdempotencyKey, SignInThrottle

pytestmark = pytest.mark.every_database

THREADS = 30


class CardDeclined(BillfoldError):
    status = 402
    code = "card_declined"
    title = "Card declined"


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


@pytest.fixture
def scope() -> str:
    return new_id("key")


def request(scope: str, key: str | None = None, params: Any = None) -> dict[str, Any]:
    return {"scope": scope, "key": new_id("k") if key is None else key, "method": "POST", "path": "/v1/refunds",
            "params": {"payment": "pay_1", "amount": 500} if params is None else params}


def mark(session: Session, name: str) -> str:
    """A business write the test can look for afterwards."""
    session.add(SignInThrottle(key=name, failures=1, window_started_at=clock.now()))
    return name


def exists(sessions: sessionmaker[Session], name: str) -> bool:
    with sessions() as session:
        return session.get(SignInThrottle, name) is not None


def key_row(sessions: sessionmaker[Session], scope: str, key: str) -> IdempotencyKey | None:
    with sessions() as session:
        return session.scalars(
            sa.select(IdempotencyKey).where(IdempotencyKey.scope == scope, IdempotencyKey.idem_key == key)
        ).one_or_none()


def test_the_first_answer_is_stored_and_every_retry_gets_it_back(sessions: sessionmaker[Session], scope: str) -> None:
    calls: list[str] = []

    def handler(session: Session) -> tuple[int, Any]:
        calls.append(mark(session, new_id("ref")))
        return 201, {"id": calls[-1], "amount": 500}

    args = request(scope)
    first = idem.run_once(sessions, handler, **args)
    assert first == (201, {"id": calls[0], "amount": 500}, False)
    for _ in range(3):
        assert idem.run_once(sessions, handler, **args) == (201, first.body, True)
    assert len(calls) == 1 and exists(sessions, calls[0])
    row = key_row(sessions, scope, args["key"])
    assert row is not None and row.id.startswith("idem_")
    assert (row.recovery_point, row.lock_token, row.locked_at, row.response_code) == ("finished", None, None, 201)
    assert row.request_hash == idem.request_hash("POST", "/v1/refunds", args["params"])


def test_the_same_key_with_other_parameters_is_refused_and_changes_nothing(sessions: sessionmaker[Session], scope: str) -> None:
    args = request(scope)
    idem.run_once(sessions, lambda s: (201, {"n": 1}), **args)
    before = key_row(sessions, scope, args["key"])

    def never(session: Session) -> tuple[int, Any]:
        raise AssertionError("a mismatched request must not run")

    for changed in ({"params": {"payment": "pay_1", "amount": 501}}, {"path": "/v1/other"}, {"method": "PUT"}):
        with pytest.raises(idem.IdempotencyKeyMismatch) as refused:
            idem.run_once(sessions, never, **{**args, **changed})
        assert (refused.value.status, refused.value.code) == (422, "idempotency_error")
        assert "different" in refused.value.detail
    after = key_row(sessions, scope, args["key"])
    assert (after.request_hash, after.response_body, after.last_run_at) == (before.request_hash, before.response_body, before.last_run_at)
    # The same key string of another caller is another key.
    assert idem.run_once(sessions, lambda s: (201, {"n": 2}), **{**args, "scope": new_id("key"), "params": {"x": 1}}) == (201, {"n": 2}, False)


def test_parameters_compare_by_content_not_by_key_order(sessions: sessionmaker[Session], scope: str) -> None:
    args = request(scope, params={"a": 1, "b": {"c": [1, 2], "d": "é"}})
    idem.run_once(sessions, lambda s: (200, {"ok": True}), **args)
    reordered = {**args, "params": {"b": {"d": "é", "c": [1, 2]}, "a": 1}}
    assert idem.run_once(sessions, lambda s: (200, {"ok": False}), **reordered) == (200, {"ok": True}, True)


@pytest.mark.parametrize("key", ["", " ", " lead", "trail ", "x" * 256, "caf\u00e9", "tab\there", "line\n"])
def test_a_malformed_key_is_refused_before_anything_is_stored(sessions: sessionmaker[Session], scope: str, key: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        idem.claim(sessions, **request(scope, key))
    assert "Idempotency-Key" in refused.value.detail
    assert key_row(sessions, scope, key[:255]) is None


def test_keys_of_255_printable_characters_are_accepted(sessions: sessionmaker[Session], scope: str) -> None:
    for key in ("x" * 255, "a b", "!~", "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"):
        assert isinstance(idem.claim(sessions, **request(scope, key)), idem.Claim)


def _race(count: int, work: Callable[[], Any]) -> list[Any]:
    """Run ``work`` in ``count`` threads released at once; each result or exception, in a list."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work()
        except Exception as error:  # noqa: BLE001 - the test sorts them out
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    return results


def test_of_many_concurrent_claims_of_one_key_exactly_one_wins(sessions: sessionmaker[Session], scope: str) -> None:
    args = request(scope)
    results = _race(THREADS, lambda: idem.claim(sessions, **args))
    claims = [r for r in results if isinstance(r, idem.Claim)]
    assert len(claims) == 1, results
    assert all(isinstance(r, idem.IdempotencyKeyInUse) for r in results if r is not claims[0]), results

    with transaction(sessions) as session:
        idem.finish(session, claims[0], 201, {"done": True})
    results = _race(THREADS, lambda: idem.claim(sessions, **args))
    assert all(r == idem.Replay(201, {"done": True}) for r in results), results


def test_concurrent_retries_of_a_one_transaction_request_do_its_work_once(sessions: sessionmaker[Session], scope: str) -> None:
    args = request(scope)
    written: list[str] = []
    lock = threading.Lock()

    def handler(session: Session) -> tuple[int, Any]:
        name = mark(session, new_id("ref"))
        with lock:
            written.append(name)
        return 201, {"id": name}

    results = _race(THREADS, lambda: idem.run_once(sessions, handler, **args))
    ran = [r for r in results if isinstance(r, idem.Outcome) and not r.replayed]
    assert len(ran) == 1 and len(written) == 1, results
    for result in results:
        assert isinstance(result, idem.IdempotencyKeyInUse) or result == (201, {"id": written[0]}, result.replayed), result
    assert exists(sessions, written[0])
    assert idem.run_once(sessions, handler, **args) == (201, {"id": written[0]}, True)


def test_a_stale_lock_is_taken_over_and_the_old_holder_is_fenced_off(
    sessions: sessionmaker[Session], scope: str, frozen_clock: clock.FrozenClock
) -> None:
    args = request(scope)
    old = idem.claim(sessions, **args)
    assert isinstance(old, idem.Claim)
    with transaction(sessions) as session:
        old = idem.advance(session, old, "refund_created")

    frozen_clock.advance(idem.LOCK_TIMEOUT - timedelta(seconds=1))
    with pytest.raises(idem.IdempotencyKeyInUse) as busy:
        idem.claim(sessions, **args)
    assert (busy.value.status, busy.value.code) == (409, "idempotency_key_in_use")

    frozen_clock.advance(timedelta(seconds=2))
    new = idem.claim(sessions, **args)
    assert isinstance(new, idem.Claim)
    assert (new.id, new.recovery_point) == (old.id, "refund_created") and new.lock_token != old.lock_token
    assert new.provider_key("refund") == old.provider_key("refund") == f"billfold-{old.id}-refund"

    # The old holder wakes up and tries its next phase: its writes roll back with it.
    written = new_id("late")
    with pytest.raises(idem.LostLock):
        with transaction(sessions) as session:
            mark(session, written)
            idem.advance(session, old, "provider_called")
    assert not exists(sessions, written)
    with pytest.raises(idem.LostLock), transaction(sessions) as session:
        idem.finish(session, old, 201, {"from": "old"})
    assert idem.release(sessions, old) is False, "a lost lock is not released by its old holder"

    with transaction(sessions) as session:
        idem.finish(session, new, 201, {"from": "new"})
    assert idem.claim(sessions, **args) == idem.Replay(201, {"from": "new"})


def test_a_released_key_lets_an_immediate_retry_resume_from_its_last_recovery_point(
    sessions: sessionmaker[Session], scope: str, frozen_clock: clock.FrozenClock
) -> None:
    args = request(scope)
    first = idem.claim(sessions, **args)
    assert isinstance(first, idem.Claim) and first.recovery_point == "started"
    kept, lost = new_id("ord"), new_id("pay")
    with transaction(sessions) as session:
        mark(session, kept)
        first = idem.advance(session, first, "order_created")
    with pytest.raises(RuntimeError), transaction(sessions) as session:
        mark(session, lost)
        idem.advance(session, first, "charge_created")
        raise RuntimeError("the provider timed out")
    with pytest.raises(idem.IdempotencyKeyInUse):
        idem.claim(sessions, **args)  # still locked until released
    assert idem.release(sessions, first) is True

    retry = idem.claim(sessions, **args)
    assert isinstance(retry, idem.Claim)
    assert (retry.id, retry.recovery_point) == (first.id, "order_created")
    assert exists(sessions, kept) and not exists(sessions, lost)
    row = key_row(sessions, scope, args["key"])
    assert row.lock_token == retry.lock_token and row.locked_at == clock.now()


def test_a_final_error_is_stored_and_replayed_but_a_passing_one_is_not(sessions: sessionmaker[Session], scope: str) -> None:
    declined, calls = request(scope), []

    def decline(session: Session) -> tuple[int, Any]:
        calls.append(mark(session, new_id("try")))
        raise CardDeclined("the card was declined", decline_code="insufficient_funds")

    first = idem.run_once(sessions, decline, **declined)
    assert (first.status, first.body["code"], first.body["decline_code"], first.replayed) == (402, "card_declined", "insufficient_funds", False)
    assert idem.run_once(sessions, decline, **declined) == (402, first.body, True)
    assert len(calls) == 1 and not exists(sessions, calls[0]), "the handler's writes roll back"

    for error in (TooManyRequests("slow down", retry_after=1), RuntimeError("boom"), idem.LostLock("taken")):
        args, attempts = request(scope), []

        def fail(session: Session, error: Exception = error) -> tuple[int, Any]:
            attempts.append(1)
            if len(attempts) == 1:
                raise error
            return 201, {"second": True}

        with pytest.raises(type(error)):
            idem.run_once(sessions, fail, **args)
        row = key_row(sessions, scope, args["key"])
        assert (row.recovery_point, row.lock_token, row.locked_at) == ("started", None, None)
        assert idem.run_once(sessions, fail, **args) == (201, {"second": True}, False)


def test_purge_keeps_keys_for_their_retention_and_never_under_a_day(
    sessions: sessionmaker[Session], scope: str, frozen_clock: clock.FrozenClock
) -> None:
    finished, abandoned, held, recent = (request(scope) for _ in range(4))
    idem.run_once(sessions, lambda s: (200, {}), **finished)
    idem.claim(sessions, **abandoned)  # never finished, never released: its lock goes stale
    held_claim = idem.claim(sessions, **held)
    idem.release(sessions, held_claim)

    frozen_clock.advance(timedelta(hours=71))
    with transaction(sessions) as session:
        idem.purge(session)
    assert all(key_row(sessions, scope, a["key"]) for a in (finished, abandoned, held))

    frozen_clock.advance(timedelta(hours=2))
    idem.claim(sessions, **recent)
    assert isinstance(idem.claim(sessions, **held), idem.Claim)  # a retry holds it right now
    with transaction(sessions) as session:
        assert idem.purge(session) >= 2
    assert key_row(sessions, scope, finished["key"]) is None
    assert key_row(sessions, scope, abandoned["key"]) is None
    assert key_row(sessions, scope, held["key"]) is not None, "a key in use is left alone"
    assert key_row(sessions, scope, recent["key"]) is not None

    frozen_clock.advance(idem.LOCK_TIMEOUT)
    with transaction(sessions) as session:
        idem.purge(session, older_than=timedelta(hours=24))
    assert key_row(sessions, scope, held["key"]) is None
    assert key_row(sessions, scope, recent["key"]) is not None

    with pytest.raises(InvalidInput, match="24 hours"), transaction(sessions) as session:
        idem.purge(session, older_than=timedelta(hours=23))
    # After a purge, the key is new again: the request runs again, as Stripe documents.
    assert idem.run_once(sessions, lambda s: (200, {"again": True}), **finished) == (200, {"again": True}, False)
