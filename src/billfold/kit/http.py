"""What every endpoint shares: the request's unit of work, problem documents for errors, and
cursor pagination."""

from __future__ import annotations

import json
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

from billfold.kit.errors import InvalidInput
from billfold.kit.inputs import QueryDigits


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
        target = scope.get("path", "").encode("utf-8", "surrogateescape") + b"?" + scope.get("query_string", b"")
        refused = b"\x00" in target or b"%00" in target
        messages = []
        if not refused:
            body = b""
            while True:  # request bodies here are small JSON documents
                message = await receive()
                messages.append(message)
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            refused = b"\x00" in body or _ESCAPED_NUL.search(body) is not None
        if refused:
            detail = "text may not contain NUL characters (\\u0000)"
            problem = InvalidInput(detail, errors=[{"field": "", "message": detail}]).to_problem()
            payload = json.dumps(problem).encode()
            await send({"type": "http.response.start", "status": 422,
                        "headers": [(b"content-type", b"application/problem+json"), (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return
        replay = iter(messages)

        async def replayed() -> Any:
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)


def _declared_query(route: APIRoute) -> frozenset[str]:
    names: frozenset[str] | None = getattr(route, "_billfold_query_names", None)
    if names is None:  # worked out once per route (routes are not hashable, so kept on the route)
        names = frozenset(p.alias for p in get_flat_params(route.dependant) if isinstance(p.field_info, QueryParam))
        route._billfold_query_names = names  # type: ignore[attr-defined]
    return names


def refuse_unknown_query_parameters(request: Request) -> None:
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
    """The request's transaction: committed when the endpoint returns, before the response is
    sent, or rolled back if it raises. Services never commit; this does."""
    with request.app.state.sessions() as session, session.begin():
        yield session


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


def page_query(
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
