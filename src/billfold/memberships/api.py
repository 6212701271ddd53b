"""The memberships HTTP routes under /v1 (tag memberships); see docs/memberships.md.

Customers see their own memberships and their organizations' (every member may look) and ask
whether they may use a feature; the shop's admins and API keys see any user's, grant, cancel and
manage add-ons."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, status
from sqlalchemy.orm import Session

from billfold.accounts.organizations import service as organizations
from billfold.accounts.access import user_owner
from billfold.accounts.auth import Admin, Authenticated, User
from billfold.accounts.organizations.service import Permission
from billfold.accounts.security import Principal
from billfold.kit import clock
from billfold.kit.http import DbSession, Page, PageQuery, Paging, paginate, problems, require
from billfold.memberships import entitlements, service
from billfold.memberships.schemas import AddonIn, CancelIn, EntitlementOut, GrantIn, MembershipOut
from billfold.models import UserMembership

router = APIRouter(prefix="/v1", tags=["memberships"], responses=problems(400, 401, 403, 404, 422))

FeaturePath = Annotated[str, Path(min_length=1, max_length=100, description="A feature name, as membership types list them.")]
OrganizationQuery = Annotated[
    str | None,
    Query(max_length=255, description="Also count this organization's memberships (you must be a member)."),
]


def _grace(request: Request) -> timedelta:
    return timedelta(days=request.app.state.security.settings.membership_grace_days)


def _out(session: Session, request: Request, rows: list[UserMembership]) -> list[MembershipOut]:
    at = clock.now()
    return [MembershipOut.of(d, at) for d in service.describe(session, rows, grace=_grace(request), at=at)]


def _page(session: Session, request: Request, statement, paging: PageQuery) -> Page[MembershipOut]:  # type: ignore[no-untyped-def]
    require("\x00" not in (paging.starting_after or ""), "must not contain NUL characters", "starting_after")
    page = paginate(session, statement, UserMembership.id, paging, lambda row: row)
    return Page[MembershipOut](data=_out(session, request, list(page.data)), has_more=page.has_more)


def _one(session: Session, request: Request, membership: UserMembership) -> MembershipOut:
    return _out(session, request, [membership])[0]


def _me(principal: Principal) -> str:
    assert principal.user is not None
    return principal.user.id


def _check(
    session: Session, request: Request, principal: Principal, user_id: str, feature: str, organization_id: str | None
) -> EntitlementOut:
    if organization_id is not None:
        organizations.access(session, principal, organization_id)  # 404 unless it is one's own (or an admin)
    answer = entitlements.entitlement(
        session, user_id=user_id, feature=feature, organization_id=organization_id, grace=_grace(request)
    )
    return EntitlementOut.model_validate(answer)


@router.get("/me/memberships", response_model=Page[MembershipOut])
def list_my_memberships(request: Request, principal: User, session: DbSession, paging: Paging) -> Page[MembershipOut]:
    """Your own memberships, oldest first (your organizations' are under the organization)."""
    return _page(session, request, service.own_memberships(_me(principal)), paging)


@router.get("/me/entitlements/{feature}", response_model=EntitlementOut)
def my_entitlement(
    feature: FeaturePath, request: Request, principal: User, session: DbSession,
    organization_id: OrganizationQuery = None,
) -> EntitlementOut:
    """May you use this feature now? From your memberships and their add-ons, and with
    `organization_id` those of that organization (any member may use them)."""
    return _check(session, request, principal, _me(principal), feature, organization_id)


@router.get("/organizations/{organization_id}/memberships", response_model=Page[MembershipOut])
def list_organization_memberships(
    organization_id: str, request: Request, principal: Authenticated, session: DbSession, paging: Paging
) -> Page[MembershipOut]:
    """The organization's memberships: every member may look."""
    access = organizations.access(session, principal, organization_id)
    access.require(Permission.VIEW)
    return _page(session, request, service.organization_memberships(access.organization.id), paging)


@router.get("/users/{user_id}/memberships", response_model=Page[MembershipOut])
def list_user_memberships(
    user_id: str, request: Request, principal: Admin, session: DbSession, paging: Paging
) -> Page[MembershipOut]:
    """Every membership the user holds, those held for an organization included (admins)."""
    owner = user_owner(session, user_id)
    return _page(session, request, service.held_memberships(owner.user_id or user_id), paging)


@router.post(
    "/users/{user_id}/memberships", status_code=status.HTTP_201_CREATED, response_model=MembershipOut,
)
def grant_membership(
    user_id: str, body: GrantIn, request: Request, principal: Admin, session: DbSession
) -> MembershipOut:
    """Grant a membership of a type by hand (a comp, a goodwill gesture): from `start_date`
    (default now) to `end_date` (default: the type's duration; never for a lifetime type)."""
    membership = service.grant_manually(
        session, user_id=user_id, membership_type_id=body.membership_type_id, by=organizations.actor_id(principal),
        start_date=body.start_date, end_date=body.end_date, reason=body.reason,
    )
    return _one(session, request, membership)


@router.get("/users/{user_id}/entitlements/{feature}", response_model=EntitlementOut)
def user_entitlement(
    user_id: str, feature: FeaturePath, request: Request, principal: Admin, session: DbSession,
    organization_id: OrganizationQuery = None,
) -> EntitlementOut:
    """May this user use this feature now (for the merchant's backend)?"""
    user_owner(session, user_id)
    return _check(session, request, principal, user_id, feature, organization_id)


@router.post("/memberships/{membership_id}/cancel", response_model=MembershipOut, responses=problems(409))
def cancel_membership(
    membership_id: str, body: CancelIn, request: Request, principal: Admin, session: DbSession
) -> MembershipOut:
    """End a membership now (admins). The subscription it follows, if any, is not cancelled."""
    membership = service.cancel(session, membership_id, by=organizations.actor_id(principal), reason=body.reason)
    return _one(session, request, membership)


@router.post("/memberships/{membership_id}/addons", response_model=MembershipOut)
def add_addon(
    membership_id: str, body: AddonIn, request: Request, principal: Admin, session: DbSession
) -> MembershipOut:
    """Add an add-on (or replace the one for the same feature): it grants `feature` while the
    membership grants, until `expires_at` (exclusive) if given."""
    membership = service.add_addon(
        session, membership_id, feature=body.feature, expires_at=body.expires_at, source=body.source,
        by=organizations.actor_id(principal),
    )
    return _one(session, request, membership)


@router.delete("/memberships/{membership_id}/addons/{feature}", response_model=MembershipOut)
def remove_addon(
    membership_id: str, feature: FeaturePath, request: Request, principal: Admin, session: DbSession
) -> MembershipOut:
    membership = service.remove_addon(session, membership_id, feature, by=organizations.actor_id(principal))
    return _one(session, request, membership)
