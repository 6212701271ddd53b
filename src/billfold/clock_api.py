"""The billing clock over HTTP, for the shop's admins: ``GET /v1/admin/clock`` and, in sandbox
mode, ``POST /v1/admin/clock/advance`` (docs/operations.md#billing-clock)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field, field_validator

from billfold import worker as background
from billfold.accounts.auth import optional_principal, require_admin, require_principal
from billfold.accounts.schemas import In
from billfold.accounts.security import Principal
from billfold.kit import clock
from billfold.kit.db import transaction
from billfold.kit.errors import InvalidInput
from billfold.kit.http import problems
from billfold.kit.sweeps import Context

router = APIRouter(prefix="/v1/admin", tags=["operations"])


def _admin(request: Request) -> Principal:
    # The request's own unit of work would hold its transaction (on SQLite: the write lock) while
    # the catch-up runs its sweeps' transactions; so the caller is checked in a short one of its own.
    with transaction(request.app.state.sessions) as session:
        principal = optional_principal(request, session, request.app.state.security)
        return require_admin(request, require_principal(principal))


Admin = Annotated[Principal, Depends(_admin)]


class ClockState(BaseModel):
    now: datetime = Field(description="The time the whole system runs on.")
    offset_seconds: int = Field(description="How far ahead of real time it runs (sandbox mode only).")
    sandbox: bool = Field(description="Whether the clock may be moved (BILLFOLD_SANDBOX).")


BY_PATTERN = r"^\s*([0-9]{1,6}\s*s|[0-9]{1,5}\s*[mh]|[0-9]{1,4}\s*d|[0-9]{1,3}\s*w)\s*$"
"""A duration up to 999999s, 99999m or h, 9999d or 999w: at most about 27 years per move."""
_BY = re.compile(BY_PATTERN)


class Advance(In):
    by: str = Field(
        description="How far forward: 30d, 12h, 90m, 45s or 2w (365d for a year).",
        examples=["30d"],
        json_schema_extra={"pattern": BY_PATTERN},
    )

    @field_validator("by")
    @classmethod
    def _duration(cls, value: str) -> str:
        try:
            clock.parse_duration(value)
        except InvalidInput as error:
            raise ValueError(error.detail) from None
        if not _BY.match(value):
            raise ValueError(f"{value!r} is too far to move at once; move up to 9999d (or 999w) at a time")
        return value


class Advanced(ClockState):
    before: datetime = Field(description="The system's time before it moved.")
    steps: int = Field(description="Steps time moved in (at most a day each), every sweep catching up after each.")
    done: dict[str, int] = Field(description="What each sweep did in all, by sweep name.")


def _state(request: Request) -> ClockState:
    settings = request.app.state.settings
    return ClockState(
        now=clock.now(),
        offset_seconds=clock.read_offset_seconds(request.app.state.engine),
        sandbox=settings.sandbox,
    )


@router.get("/clock", response_model=ClockState, responses=problems(401, 403))
def get_clock(request: Request, _: Admin) -> ClockState:
    """The billing clock: the system's time, how far ahead of real time it runs, and whether it may move."""
    return _state(request)


@router.post("/clock/advance", response_model=Advanced, responses=problems(400, 401, 403, 409, 422))
def advance_clock(request: Request, body: Advance, _: Admin) -> Advanced:
    """Move the whole system's time forward (sandbox mode only; 409 otherwise) and do everything
    that became due (renewals, retries, expiry) before answering, with what each sweep did."""
    state = request.app.state
    background.require_sandbox(state.settings)
    background.load_sweeps()
    context = Context(sessions=state.sessions, settings=state.settings, security=state.security)
    moved = background.advance_clock(context, body.by)
    current = _state(request)
    return Advanced(**current.model_dump(), before=moved.before, steps=moved.steps, done=moved.done)
