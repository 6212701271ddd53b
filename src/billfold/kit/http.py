"""What every endpoint shares: the request's unit of work, problem documents for errors, and
cursor pagination."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Any, Generic, TypeVar

import sqlalchemy as sa
from fastapi import Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from billfold.kit.errors import InvalidInput


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
        429: "Too many attempts; see Retry-After.",
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
    limit: Annotated[int, Query(ge=1, le=100, description="How many items, 1 to 100.")] = 20,
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
