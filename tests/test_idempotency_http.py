"""The ``Idempotency-Key`` header over HTTP, on a demo route added to the real app for the test:
replays carry ``Idempotent-Replayed: true``, a retry while the first runs gets 409, other
parameters get 422, a failure before execution stores nothing, and OpenAPI documents the header."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from billfold.accounts.auth import Authenticated
from billfold.kit import clock
from billfold.kit.errors import BillfoldError
from billfold.kit.http import problems
from billfold.idempotency_http import Idempotent
from billfold.kit.ids import new_id
from billfold.models import SignInThrottle
from tests.server import serving

BLOCKING_AMOUNT = 7
DECLINED_AMOUNT = 402
started, proceed = threading.Event(), threading.Event()
ran: list[str] = []


class ChargeIn(BaseModel):
    amount: int = Field(ge=1)


class ChargeOut(BaseModel):
    id: str
    amount: int


class CardDeclined(BillfoldError):
    status = 402
    code = "card_declined"
    title = "Card declined"


router = APIRouter()


@router.post("/v1/test-charges", status_code=201, response_model=ChargeOut, responses=problems(409, 422))
def create_charge(body: ChargeIn, idempotent: Idempotent) -> JSONResponse:
    def handler(session: Session) -> ChargeOut:
        if body.amount == BLOCKING_AMOUNT:
            started.set()
            assert proceed.wait(timeout=20)
        ran.append(charge := new_id("ch"))
        session.add(SignInThrottle(key=charge, failures=body.amount, window_started_at=clock.now()))
        if body.amount == DECLINED_AMOUNT:
            raise CardDeclined("the card was declined")
        return ChargeOut(id=charge, amount=body.amount)

    return idempotent.respond("test-merchant", body, handler, status_code=201)


@router.post("/v1/test-refunds", status_code=201, response_model=ChargeOut, responses=problems(401, 409, 422))
def create_refund(body: ChargeIn, principal: Authenticated, idempotent: Idempotent) -> JSONResponse:
    """Signed in: authentication has used the request's session before the key is claimed."""

    def handler(session: Session) -> ChargeOut:
        ran.append(refund := new_id("re"))
        session.add(SignInThrottle(key=refund, failures=body.amount, window_started_at=clock.now()))
        return ChargeOut(id=refund, amount=body.amount)

    return idempotent.respond(principal.idempotency_scope, body, handler, status_code=201)


@pytest.fixture
def client(engine: Engine, tmp_path: Path) -> Iterator[httpx.Client]:
    ran.clear()
    started.clear()
    proceed.clear()
    with serving(engine, tmp_path, routers=[router]) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def post(client: httpx.Client, key: str | None, amount: int = 100) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post("/v1/test-charges", json={"amount": amount}, headers=headers)


def test_a_retry_gets_the_first_response_back_marked_as_a_replay(client: httpx.Client) -> None:
    key = new_id("k")
    first = post(client, key)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    for _ in range(2):
        again = post(client, key)
        assert (again.status_code, again.json(), again.headers["idempotent-replayed"]) == (201, first.json(), "true")
    assert ran == [first.json()["id"]]

    other = post(client, key, amount=101)
    assert other.status_code == 422 and other.json()["code"] == "idempotency_error"
    assert other.headers["content-type"] == "application/problem+json"

    without = [post(client, None) for _ in range(2)]
    assert [a.status_code for a in without] == [201, 201] and without[0].json() != without[1].json()
    assert len(ran) == 3


def test_a_retry_while_the_first_request_runs_gets_409(client: httpx.Client) -> None:
    key = new_id("k")
    answers: dict[str, httpx.Response] = {}
    first = threading.Thread(target=lambda: answers.setdefault("first", post(client, key, BLOCKING_AMOUNT)))
    first.start()
    try:
        assert started.wait(timeout=20)
        busy = post(client, key, BLOCKING_AMOUNT)
        assert busy.status_code == 409 and busy.json()["code"] == "idempotency_key_in_use"
        assert post(client, key, BLOCKING_AMOUNT + 1).json()["code"] == "idempotency_error"
    finally:
        proceed.set()
        first.join(timeout=30)
    assert answers["first"].status_code == 201
    replay = post(client, key, BLOCKING_AMOUNT)
    assert (replay.status_code, replay.json(), replay.headers["idempotent-replayed"]) == (201, answers["first"].json(), "true")
    assert len(ran) == 1


def test_a_final_error_is_replayed_and_a_refusal_before_execution_is_not_stored(client: httpx.Client) -> None:
    key = new_id("k")
    declined = post(client, key, DECLINED_AMOUNT)
    assert declined.status_code == 402 and declined.json()["code"] == "card_declined"
    assert declined.headers["content-type"] == "application/problem+json"
    again = post(client, key, DECLINED_AMOUNT)
    assert (again.status_code, again.json(), again.headers["idempotent-replayed"]) == (402, declined.json(), "true")
    assert len(ran) == 1

    key = new_id("k")
    invalid = client.post("/v1/test-charges", json={"amount": 0}, headers={"Idempotency-Key": key})
    assert invalid.status_code == 422 and invalid.json()["code"] == "invalid_input"
    assert post(client, key).status_code == 201, "the invalid request did not use the key up"

    for bad in ("x" * 256, ""):
        refused = post(client, bad)
        assert refused.status_code == 422 and "Idempotency-Key" in refused.text


def test_openapi_documents_the_header(client: httpx.Client) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/test-charges"]["post"]
    (header,) = [p for p in operation["parameters"] if p["name"] == "Idempotency-Key"]
    assert header["in"] == "header" and header["required"] is False
    assert "24 hours" in header["description"]


def test_a_signed_in_route_scopes_keys_to_its_caller(client: httpx.Client, admin_token: str, engine: Engine) -> None:
    key = new_id("k")
    as_admin = {"Authorization": f"Bearer {admin_token}", "Idempotency-Key": key}
    first = client.post("/v1/test-refunds", json={"amount": 5}, headers=as_admin)
    assert first.status_code == 201, first.text
    again = client.post("/v1/test-refunds", json={"amount": 5}, headers=as_admin)
    assert (again.status_code, again.json(), again.headers["idempotent-replayed"]) == (201, first.json(), "true")
    # The same key string from another caller (here: the unauthenticated demo route's merchant) is another key.
    assert post(client, key, 5).status_code == 201
    assert client.post("/v1/test-refunds", json={"amount": 5}, headers={"Idempotency-Key": key}).status_code == 401
    assert len(ran) == 2
