"""What every endpoint shares: the request's unit of work, problem documents for errors, and
cursor pagination."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Any, Generic, TypeVar

import sqlalchemy as sa
from fastapi import Depends, Query, Request
from fastapi.dependencies.utils import get_flat_params
from fastapi.params import Query as QueryParam
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from billfold.kit.db import one_line
from billfold.kit.errors import BillfoldError, DatabaseUnavailable, InvalidInput, RequestTooLarge
from billfold.kit.inputs import QueryDigits


class _BodyTooLarge(Exception):
    pass


class LimitRequestBody:
    """Answers 413 ``request_too_large`` to a request whose body is over ``max_bytes``: at once
    from its Content-Length, before anything is read, and otherwise (a chunked body) as soon as
    the bytes received pass the limit, so no middleware or endpoint ever holds more than
    ``max_bytes`` of a body. It stands outermost, in front of the guards that read whole bodies."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = [value for name, value in scope.get("headers", ()) if name.lower() == b"content-length"]
        if any(not value.strip().isdigit() or int(value) > self.max_bytes for value in declared):
            await self._refuse(send)
            return
        received = 0
        started = False

        async def limited() -> Any:
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def sending(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message.get("type") == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, sending)
        except _BodyTooLarge:
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        detail = f"the request body is over {self.max_bytes} bytes (the max_request_bytes setting)"
        await send_problem(send, RequestTooLarge(detail, max_bytes=self.max_bytes), [(b"connection", b"close")])


async def read_body(scope: dict[str, Any], receive: Any) -> tuple[bytes, Any]:
    """The request's whole body (bounded by ``LimitRequestBody`` outside), and the ``receive`` to
    pass on, which replays it to the app. Read once per request: the body is kept in the scope, so
    the next guard gets it from there and passes on the replaying ``receive`` it was given."""
    if "billfold.body" in scope:
        return scope["billfold.body"], receive
    messages, chunks = [], []
    while True:
        message = await receive()
        messages.append(message)
        chunks.append(message.get("body", b""))
        if not message.get("more_body") or message.get("type") != "http.request":
            break
    scope["billfold.body"] = body = b"".join(chunks)
    replay = iter(messages)

    async def replayed() -> Any:
        return next(replay, None) or await receive()

    return body, replayed


_log = logging.getLogger("billfold.api")

IN_LOOP_BODY_BYTES = 65536
"""A body up to this size is read through (scanned, hashed, parsed) in the event loop; a larger
one takes a while, so that work goes to a thread and other requests go on."""

_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000", re.IGNORECASE)


class RefuseNulCharacters:
    """Answers 422 to a request with a NUL character in its path, query or JSON body.

    PostgreSQL cannot store NUL in text, and no name, address or id has one; refusing it at the
    door, on every database alike, keeps it from ever reaching a query as a 500.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = target_holds_nul(scope)
        if not refused:
            body, receive = await read_body(scope, receive)
            refused = body_holds_nul(body)
        if refused:
            await send_problem(send, nul_refused())
            return
        await self.app(scope, receive, send)


def target_holds_nul(scope: dict[str, Any]) -> bool:
    target = scope.get("path", "").encode("utf-8", "surrogateescape") + b"?" + scope.get("query_string", b"")
    return b"\x00" in target or b"%00" in target


def body_holds_nul(body: bytes) -> bool:
    """A NUL byte, or JSON's escape of one, in a request body."""
    return b"\x00" in body or _ESCAPED_NUL.search(body) is not None


def nul_refused() -> InvalidInput:
    detail = "text may not contain NUL characters (\\u0000)"
    return InvalidInput(detail, errors=[{"field": "", "message": detail}])


class AdmitRequests:
    """Lets at most ``limit`` requests into the app at once; the others wait their turn in the
    event loop (no thread, no connection), and after ``wait_seconds`` get 503 with Retry-After.

    A request's steps (authentication, the endpoint, the answer's serialisation) each wait for a
    thread of the pool, and between steps it may hold a database connection. Admitting no more
    requests than there are threads, with a connection pool of two per thread, means no thread
    ever waits for a connection that only a request waiting for a thread could give back: the
    deadlock that, before, answered a burst of 200 with up to 180 times 500 after 30 s."""

    def __init__(self, app: Any, limit: int, wait_seconds: float = 20.0) -> None:
        self.app = app
        self.limit = limit
        self.wait_seconds = wait_seconds
        self._slots: asyncio.Semaphore | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limit)
        try:
            await asyncio.wait_for(self._slots.acquire(), self.wait_seconds)
        except TimeoutError:
            await send_problem(send, Busy("the service is busy; retry shortly"))
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self._slots.release()


class Busy(BillfoldError):
    status = 503
    code = "service_busy"
    title = "Service busy"
    retry_after = 1


def json_bytes(content: Any) -> bytes:
    """JSON as Starlette's ``JSONResponse`` renders it (compact, UTF-8), so an answer sent straight
    from ASGI is the app's to the byte."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


async def send_json(
    send: Any, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = (),
    content_type: bytes = b"application/json",
) -> None:
    """A whole answer straight from ASGI (a middleware, or a door in front of the app)."""
    start = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


async def send_problem(send: Any, error: BillfoldError, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """Answer with ``error``'s problem document straight from ASGI, with its Retry-After, as the
    app's error handler (``billfold.api.problem_response``) would, to the byte."""
    retry_in = error.retry_in()
    extra = [*headers, (b"retry-after", str(retry_in).encode())] if retry_in else headers
    await send_json(send, error.status, json_bytes(error.to_problem()), extra, b"application/problem+json")


def database_busy(method: str, path: str, error: BaseException) -> DatabaseUnavailable:
    """What a request that met a database failure (``kit.db.DATABASE_FAILURES``) answers: logged
    in one line, then 503 to retry."""
    _log.warning("database error on %s %s: %s", method, path, one_line(error))
    return DatabaseUnavailable("the database is busy or unreachable; retry shortly")


def _declared_query(route: APIRoute) -> frozenset[str]:
    names: frozenset[str] | None = getattr(route, "_billfold_query_names", None)
    if names is None:  # worked out once per route (routes are not hashable, so kept on the route)
        names = frozenset(p.alias for p in get_flat_params(route.dependant) if isinstance(p.field_info, QueryParam))
        route._billfold_query_names = names  # type: ignore[attr-defined]
    return names


async def refuse_unknown_query_parameters(request: Request) -> None:
    """An app-wide dependency: a query parameter the route does not declare is refused (422
    naming it) before anything else runs, instead of being silently ignored, so that a client
    asking for ``/v1/users?email=...`` learns that there is no such filter rather than getting
    every user."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not route.include_in_schema:
        return  # web pages (the front page) take what links add, such as utm_source
    unknown = sorted(set(request.query_params.keys()) - _declared_query(route))
    if unknown:
        detail = f"unknown query parameter{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}"
        raise InvalidInput(detail, errors=[{"field": name, "message": "unknown query parameter"} for name in unknown])


def unit_of_work(request: Request) -> Iterator[Session]:
    """The request's session: what it wrote is committed when the endpoint returns, before the
    response is sent, or rolled back if it raises. Services never commit; this does.

    Authentication ends its own short transaction at once (``end_step``), so no request holds a
    pooled connection (or SQLite's write lock) while it waits for a thread for its next step; the
    endpoint's first statement begins the transaction this commits."""
    with request.app.state.sessions() as session:
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        session.commit()


def end_step(session: Session) -> None:
    """Commit what a request's step did (authentication; the request's own transaction before an
    idempotent money move takes its key) and give its connection back to the pool before the next
    step. Rows it loaded stay readable (the sessions do not expire on commit) and stay in the
    session for the endpoint. The request's unit of work is the one place that commits; this is it."""
    session.commit()


DbSession = Annotated[Session, Depends(unit_of_work, scope="function")]


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    code: str = Field(description="Stable, machine-readable reason.")


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the problem documents an endpoint can answer with."""
    described = {
        400: "Malformed request.",
        401: "Not signed in, or wrong credentials.",
        403: "Not allowed.",
        404: "No such thing, or not yours to see.",
        409: "Conflicts with the current state.",
        422: "Invalid input; `errors` names each field.",
        402: "The payment was declined; `decline_code` says why.",
        429: "Too many attempts; see Retry-After.",
        503: "A payment provider did not answer; retry (with the same Idempotency-Key).",
    }
    return {
        status: {"model": Problem, "description": described[status], "content": {"application/problem+json": {}}}
        for status in statuses
    }


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list, oldest first. Ask for the next with ``starting_after=<last id>``."""

    data: list[T]
    has_more: bool


class PageQuery(BaseModel):
    limit: int
    starting_after: str | None


async def page_query(
    limit: Annotated[int, Query(ge=1, le=100, description="How many items, 1 to 100."), QueryDigits] = 20,
    starting_after: Annotated[str | None, Query(max_length=255, description="The id after which the page starts.")] = None,
) -> PageQuery:
    return PageQuery(limit=limit, starting_after=starting_after)


Paging = Annotated[PageQuery, Depends(page_query)]


def paginate(
    session: Session,
    statement: sa.Select[Any],
    id_column: sa.ColumnElement[str],
    paging: PageQuery,
    to_item: Callable[[Any], T],
) -> Page[T]:
    """Run ``statement`` ordered by its (time-sortable) id, one page at a time."""
    if paging.starting_after is not None:
        statement = statement.where(id_column > paging.starting_after)
    rows: Sequence[Any] = session.scalars(statement.order_by(id_column).limit(paging.limit + 1)).all()
    return Page[T](data=[to_item(row) for row in rows[: paging.limit]], has_more=len(rows) > paging.limit)


def require(condition: bool, detail: str, field: str) -> None:
    if not condition:
        raise InvalidInput(detail, errors=[{"field": field, "message": detail}])
