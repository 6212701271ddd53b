"""``Idempotency-Key`` for FastAPI routes.

A route that creates or moves money takes the ``Idempotent`` dependency and hands its work over::

    @router.post("/v1/payments/{payment_id}/refunds", status_code=201, response_model=RefundOut,
                 responses=problems(404, 409, 422))
    def refund(payment_id: str, body: RefundIn, principal: Admin, idempotent: Idempotent) -> Response:
        return idempotent.respond(
            principal.idempotency_scope, body,
            lambda session: service.refund(session, payment_id, body.amount),
            status_code=201,
        )

The header is optional and documented in OpenAPI (so schema-driven clients and fuzzers send it).
Without it the handler simply runs. With it, the first outcome is stored and every retry gets it
back with ``Idempotent-Replayed: true``; see ``billfold.idempotency`` for what is stored.

The handler gets a session of its own, in a transaction committed together with the stored
response; the request's own session (the one authentication used) is committed first and must
not be used by the handler: pass it ids, not ORM objects. A route with several atomic phases
(checkout) uses ``claim``/``advance``/``finish`` directly, with ``Idempotent.key``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from billfold.kit.db import transaction
from billfold.kit.http import DbSession, end_step
from billfold.kit.errors import BillfoldError
from billfold.idempotency import (
    HEADER,
    KEY_PATTERN,
    MAX_KEY_LENGTH,
    Claim,
    Replay,
    check_key,
    claim,
    finish,
    is_final,
    release,
    run_once,
)

REPLAYED_HEADER = "Idempotent-Replayed"
PROBLEM_JSON = "application/problem+json"

KeyHeader = Annotated[
    str | None,
    Header(
        alias=HEADER,
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        pattern=KEY_PATTERN,
        description=(
            "Makes the request safe to retry: the first response to a key is stored and every retry "
            "with the same key gets it back (with `Idempotent-Replayed: true`). Reusing a key with "
            "other parameters is a 422 `idempotency_error`; a retry while the first is still running "
            "is a 409 `idempotency_key_in_use`. Keys are kept at least 24 hours. A V4 UUID is a good key."
        ),
    ),
]


class IdempotentRequest:
    """The request's optional ``Idempotency-Key`` and the means to answer it idempotently."""

    def __init__(self, request: Request, session: Session, key: str | None) -> None:
        self.request = request
        self.session = session
        self.key = check_key(key) if key is not None else None

    def params(self, body: Any) -> dict[str, Any]:
        """What the stored request hash covers besides method and path: the body and the query."""
        return {
            "body": jsonable_encoder(body),
            "query": sorted(self.request.query_params.multi_items()),
        }

    def respond(
        self,
        scope: str,
        body: Any,
        handler: Callable[[Session], Any],
        *,
        status_code: int = 200,
    ) -> JSONResponse:
        """Run ``handler(session)`` at most once for this key of ``scope`` (the caller: an API key
        id or a user id) and answer with its result, a Pydantic model or anything JSON-able,
        as ``status_code``. ``body`` is the parsed request body (a Pydantic model or None)."""
        # End the request's own transaction (authentication's reads and last-used stamps): the
        # key must be claimed in a committed transaction of its own before the work starts, and
        # SQLite lets only one transaction write at a time.
        end_step(self.session)
        sessions = self.request.app.state.sessions

        def handle(session: Session) -> tuple[int, Any]:
            return status_code, jsonable_encoder(handler(session))

        if self.key is None:
            with transaction(sessions) as session:
                status, content = handle(session)
            return JSONResponse(content, status_code=status)
        outcome = run_once(
            sessions, handle, scope=scope, key=self.key, method=self.request.method,
            path=self.request.url.path, params=self.params(body),
        )
        return answer_with(outcome.status, outcome.body, replayed=outcome.replayed)


async def idempotent_request(request: Request, session: DbSession, key: KeyHeader = None) -> IdempotentRequest:
    return IdempotentRequest(request, session, key)


Idempotent = Annotated[IdempotentRequest, Depends(idempotent_request)]


class Answer:
    """Builds the response inside the transaction that records the outcome (so the stored answer
    under an Idempotency-Key is exactly what was sent), and keeps it for the route to return."""

    def __init__(self, build: Callable[[Session, Any], tuple[int, Any]]) -> None:
        self.build = build
        self.status: int = 500
        self.body: Any = None

    def __call__(self, session: Session, outcome: Any) -> tuple[int, Any]:
        self.status, self.body = self.build(session, outcome)
        return self.status, self.body

    def response(self, replayed: bool = False) -> JSONResponse:
        return answer_with(self.status, self.body, replayed=replayed)


def answer_with(status: int, body: Any, *, replayed: bool = False) -> JSONResponse:
    """The response for an outcome: problem JSON for errors, Retry-After on a 503 (the provider
    or the database did not answer: the same request, with the same key, may be sent again)."""
    headers = {REPLAYED_HEADER: "true"} if replayed else {}
    if status == 503:
        retry_after = body.get("retry_after") if isinstance(body, dict) else None
        headers["Retry-After"] = str(retry_after if isinstance(retry_after, int) and retry_after > 0 else 2)
    media_type = PROBLEM_JSON if status >= 400 else None
    return JSONResponse(body, status_code=status, headers=headers or None, media_type=media_type)


def idempotently(
    request: Request, idempotent: IdempotentRequest, scope: str, body: Any, answer: Answer,
    work: Callable[[Claim | None], Any],
) -> JSONResponse:
    """Run a money move of several phases (checkout, refunds, subscription charges) once per
    Idempotency-Key, when one is given: ``work(claim)`` runs the phases, records its outcome with
    ``finish(session, claim, *answer(session, outcome))`` in its last transaction, and returns the
    outcome. A final refusal is stored; anything else releases the key for a retry."""
    end_step(idempotent.session)  # the request's own transaction ends before the phases begin
    sessions = request.app.state.sessions
    if idempotent.key is None:
        outcome = work(None)
        if answer.body is None:
            with sessions() as session:
                answer(session, outcome)
        return answer.response()
    claimed = claim(
        sessions, scope=scope, key=idempotent.key, method=request.method, path=request.url.path,
        params=idempotent.params(body),
    )
    if isinstance(claimed, Replay):
        answer.status, answer.body = claimed.status, claimed.body
        return answer.response(replayed=True)
    try:
        outcome = work(claimed)
    except BaseException as error:
        if is_final(error):
            assert isinstance(error, BillfoldError)
            with transaction(sessions) as session:
                finish(session, claimed, error.status, error.to_problem())
        else:
            release(sessions, claimed)
        raise
    if answer.body is None:  # nothing was stored (cannot happen with a claim): answer anyway
        with sessions() as session:
            answer(session, outcome)
    return answer.response()
