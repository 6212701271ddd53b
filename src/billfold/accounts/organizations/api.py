"""Organizations, their members and roles, and addresses of users and organizations.

Who may do what is decided in the services (``organizations.Access``); see docs/permissions.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Response, status
from sqlalchemy.orm import Session

from billfold.accounts import addresses, invitations
from billfold.accounts.organizations import service as organizations
from billfold.accounts.access import Owner, me, organization_owner, user_owner
from billfold.accounts.auth import Admin, Anyone, Authenticated, SecurityDep, User
from billfold.accounts.organizations.schemas import (
    AcceptInvitationIn,
    InvitationAccepted,
    InvitationIn,
    InvitationOut,
    AddressIn,
    AddressOut,
    AddressUpdate,
    MemberIn,
    MemberOut,
    MemberUpdate,
    OrganizationDeleted,
    OrganizationIn,
    OrganizationOut,
    OrganizationUpdate,
    TransferIn,
)
from billfold.accounts.security import Principal
from billfold.kit.http import DbSession, Page, PageQuery, Paging, paginate, problems, require
from billfold.models import Address, Organization, OrganizationInvitation, OrganizationUser

router = APIRouter(prefix="/v1", responses=problems(400, 422))
orgs = APIRouter(prefix="/organizations", tags=["organizations"], responses=problems(401, 403, 404))
my_addresses = APIRouter(prefix="/me/addresses", tags=["addresses"], responses=problems(401, 403, 404))
invitations_router = APIRouter(prefix="/invitations", tags=["organizations"], responses=problems(401, 403))
user_addresses = APIRouter(
    prefix="/users/{user_id}/addresses", tags=["addresses"], responses=problems(401, 403, 404)
)

T = TypeVar("T")
NO_CONTENT: dict[str, Any] = {"status_code": status.HTTP_204_NO_CONTENT, "response_class": Response}


def _page(page: Page[Any], convert: Callable[[list[Any]], list[T]]) -> Page[T]:
    return Page[T](data=convert(page.data), has_more=page.has_more)


def _rows(session: Session, statement: Any, id_column: Any, paging: PageQuery) -> Page[Any]:
    """A page of ORM rows, to be converted a page at a time (one query for what they refer to)."""
    # PostgreSQL cannot compare text holding NUL (a 500); this belongs in kit/http.page_query.
    require("\x00" not in (paging.starting_after or ""), "must not contain NUL characters", "starting_after")
    return paginate(session, statement, id_column, paging, lambda row: row)


# Organizations


@orgs.post("", status_code=status.HTTP_201_CREATED, response_model=OrganizationOut)
def create_organization(
    body: OrganizationIn, principal: Authenticated, session: DbSession
) -> OrganizationOut:
    """Create an organization. The signed-in user becomes its owner; an admin or API key may name
    another owner with `owner_user_id`."""
    organization = organizations.create_organization(session, principal, **body.model_dump())
    return OrganizationOut.of(
        organization, organizations.roles_of(session, principal, [organization.id]).get(organization.id)
    )


@orgs.get("", response_model=Page[OrganizationOut])
def list_organizations(principal: Authenticated, session: DbSession, paging: Paging) -> Page[OrganizationOut]:
    """The organizations the user belongs to; every organization for admins and API keys."""
    page = _rows(session, organizations.visible_organizations(principal), Organization.id, paging)
    roles = organizations.roles_of(session, principal, [o.id for o in page.data])
    return _page(page, lambda rows: [OrganizationOut.of(o, roles.get(o.id)) for o in rows])


@orgs.get("/{organization_id}", response_model=OrganizationOut)
def get_organization(organization_id: str, principal: Authenticated, session: DbSession) -> OrganizationOut:
    access = organizations.access(session, principal, organization_id)
    return OrganizationOut.of(organizations.view(access), access.role)


@orgs.patch("/{organization_id}", response_model=OrganizationOut)
def update_organization(
    organization_id: str, body: OrganizationUpdate, principal: Authenticated, session: DbSession
) -> OrganizationOut:
    """Change the settings: owners and admins."""
    access = organizations.access(session, principal, organization_id, lock=True)
    return OrganizationOut.of(
        organizations.update_settings(session, access, body.model_dump(exclude_unset=True)), access.role
    )


@orgs.delete("/{organization_id}", response_model=OrganizationDeleted, responses=problems(409))
def delete_organization(
    organization_id: str, principal: Authenticated, session: DbSession
) -> OrganizationDeleted:
    """Delete the organization: owners only. One that orders, payments or invoices name is kept,
    anonymised; one with live subscriptions is refused (409)."""
    access = organizations.access(session, principal, organization_id, lock=True)
    erasure = organizations.delete_organization(session, access)
    return OrganizationDeleted(id=erasure.customer_id, outcome=erasure.outcome, kept=erasure.kept)  # type: ignore[arg-type]


@orgs.post("/{organization_id}/transfer-ownership", response_model=OrganizationOut)
def transfer_ownership(
    organization_id: str, body: TransferIn, principal: Authenticated, session: DbSession
) -> OrganizationOut:
    """Make a member the primary owner (owners only); the previous primary owner becomes an admin."""
    access = organizations.access(session, principal, organization_id, lock=True)
    return OrganizationOut.of(organizations.transfer_ownership(session, access, body.user_id), access.role)


# Members


def _members_out(
    session: Session, organization: Organization, rows: list[OrganizationUser]
) -> list[MemberOut]:
    users = organizations.users_by_id(session, [m.user_id for m in rows])
    return [MemberOut.of(m, users[m.user_id], organization.owner_user_id) for m in rows]


@orgs.get("/{organization_id}/members", response_model=Page[MemberOut])
def list_members(
    organization_id: str, principal: Authenticated, session: DbSession, paging: Paging
) -> Page[MemberOut]:
    access = organizations.access(session, principal, organization_id)
    page = _rows(session, organizations.members(access), OrganizationUser.id, paging)
    return _page(page, lambda rows: _members_out(session, access.organization, rows))


@orgs.post(
    "/{organization_id}/members",
    status_code=status.HTTP_201_CREATED,
    response_model=MemberOut,
    responses=problems(409),
)
def add_member(
    organization_id: str, body: MemberIn, principal: Authenticated, session: DbSession
) -> MemberOut:
    """Add someone who has a confirmed Billfold account, by email (owners and admins; only owners
    add owners). There are no invitations: without an account the answer asks them to sign up."""
    access = organizations.access(session, principal, organization_id, lock=True)
    member = organizations.add_member(session, access, email=body.email, role=body.role)
    return _members_out(session, access.organization, [member])[0]


@orgs.get("/{organization_id}/members/{user_id}", response_model=MemberOut)
def get_member(organization_id: str, user_id: str, principal: Authenticated, session: DbSession) -> MemberOut:
    access = organizations.access(session, principal, organization_id)
    return _members_out(session, access.organization, [organizations.get_member(session, access, user_id)])[0]


@orgs.patch("/{organization_id}/members/{user_id}", response_model=MemberOut, responses=problems(409))
def change_member_role(
    organization_id: str, user_id: str, body: MemberUpdate, principal: Authenticated, session: DbSession
) -> MemberOut:
    """Change a member's role (owners and admins; only owners grant or take away the owner role).
    The primary owner stays an owner until ownership is transferred."""
    access = organizations.access(session, principal, organization_id, lock=True)
    member = organizations.change_role(session, access, user_id, body.role)
    return _members_out(session, access.organization, [member])[0]


@orgs.delete("/{organization_id}/members/{user_id}", **NO_CONTENT, responses=problems(409))
def remove_member(
    organization_id: str, user_id: str, principal: Authenticated, session: DbSession
) -> Response:
    """Remove a member (owners and admins; only owners remove owners), or leave: any member may
    remove themselves, except the primary owner, who transfers ownership first."""
    access = organizations.access(session, principal, organization_id, lock=True)
    organizations.remove_member(session, access, user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# Invitations


@orgs.post(
    "/{organization_id}/invitations",
    status_code=status.HTTP_201_CREATED,
    response_model=InvitationOut,
    responses=problems(409),
)
def invite(
    organization_id: str, body: InvitationIn, principal: Authenticated, session: DbSession, security: SecurityDep
) -> InvitationOut:
    """Invite an address, with or without an account, to join with a role (owners and admins; only
    owners invite owners). The token goes only to that address, by email, valid for seven days.
    Inviting the address again replaces the pending invitation."""
    access = organizations.access(session, principal, organization_id, lock=True)
    invitation, _token = invitations.invite(session, security, access, email=body.email, role=body.role)
    return InvitationOut.of(invitation, invitations.status(invitation))


@orgs.get("/{organization_id}/invitations", response_model=Page[InvitationOut])
def list_invitations(
    organization_id: str, principal: Authenticated, session: DbSession, paging: Paging
) -> Page[InvitationOut]:
    """The organization's invitations in every status (owners and admins)."""
    access = organizations.access(session, principal, organization_id)
    page = _rows(session, invitations.invitations(access), OrganizationInvitation.id, paging)
    return _page(page, lambda rows: [InvitationOut.of(i, invitations.status(i)) for i in rows])


@orgs.delete("/{organization_id}/invitations/{invitation_id}", **NO_CONTENT)
def revoke_invitation(
    organization_id: str, invitation_id: str, principal: Authenticated, session: DbSession
) -> Response:
    """Revoke a pending invitation (owners and admins): its token stops working."""
    access = organizations.access(session, principal, organization_id, lock=True)
    invitations.revoke(session, access, invitation_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@invitations_router.post(
    "/accept", status_code=status.HTTP_201_CREATED, response_model=InvitationAccepted, responses=problems(409)
)
def accept_invitation(body: AcceptInvitationIn, principal: Anyone, session: DbSession) -> InvitationAccepted:
    """Join with an invitation's token: signed in as the invited address, or, with no account at
    that address, not signed in and with a password, name and last name to open one."""
    accepted = invitations.accept(
        session, principal, body.token, password=body.password, name=body.name, last_name=body.last_name
    )
    return InvitationAccepted(
        organization_id=accepted.member.organization_id,
        user_id=accepted.user.id,
        email=accepted.user.email,
        role=accepted.member.role,  # type: ignore[arg-type]
        account_created=accepted.account_created,
    )


# Addresses: the same five endpoints for an organization, the signed-in user, and (for admins) any user.


def _address_out(session: Session, owner: Owner, address: Address) -> AddressOut:
    return AddressOut.of(address, addresses.defaults_of(session, owner))


def _address_page(session: Session, owner: Owner, paging: PageQuery) -> Page[AddressOut]:
    page = _rows(session, addresses.addresses_of(owner), Address.id, paging)
    defaults = addresses.defaults_of(session, owner)
    return _page(page, lambda rows: [AddressOut.of(a, defaults) for a in rows])


def _organization(
    session: Session, principal: Principal, organization_id: str, *, change: bool
) -> Owner:
    return organization_owner(session, principal, organization_id, change=change, lock=change)


@orgs.get("/{organization_id}/addresses", response_model=Page[AddressOut])
def list_organization_addresses(
    organization_id: str, principal: Authenticated, session: DbSession, paging: Paging
) -> Page[AddressOut]:
    return _address_page(session, _organization(session, principal, organization_id, change=False), paging)


@orgs.post("/{organization_id}/addresses", status_code=status.HTTP_201_CREATED, response_model=AddressOut)
def create_organization_address(
    organization_id: str, body: AddressIn, principal: Authenticated, session: DbSession
) -> AddressOut:
    """Add an address (owners and the billing role)."""
    owner = _organization(session, principal, organization_id, change=True)
    return _address_out(session, owner, addresses.create_address(session, owner, body.model_dump()))


@orgs.get("/{organization_id}/addresses/{address_id}", response_model=AddressOut)
def get_organization_address(
    organization_id: str, address_id: str, principal: Authenticated, session: DbSession
) -> AddressOut:
    owner = _organization(session, principal, organization_id, change=False)
    return _address_out(session, owner, addresses.get_address(session, owner, address_id))


@orgs.patch("/{organization_id}/addresses/{address_id}", response_model=AddressOut, responses=problems(409))
def update_organization_address(
    organization_id: str, address_id: str, body: AddressUpdate, principal: Authenticated, session: DbSession
) -> AddressOut:
    owner = _organization(session, principal, organization_id, change=True)
    return _address_out(
        session,
        owner,
        addresses.update_address(session, owner, address_id, body.model_dump(exclude_unset=True)),
    )


@orgs.delete("/{organization_id}/addresses/{address_id}", **NO_CONTENT, responses=problems(409))
def delete_organization_address(
    organization_id: str, address_id: str, principal: Authenticated, session: DbSession
) -> Response:
    """Delete an address no order or invoice uses; if it was a default, another takes its place."""
    addresses.delete_address(
        session, _organization(session, principal, organization_id, change=True), address_id
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@my_addresses.get("", response_model=Page[AddressOut])
def list_my_addresses(principal: User, session: DbSession, paging: Paging) -> Page[AddressOut]:
    return _address_page(session, me(principal), paging)


@my_addresses.post("", status_code=status.HTTP_201_CREATED, response_model=AddressOut)
def create_my_address(body: AddressIn, principal: User, session: DbSession) -> AddressOut:
    return _address_out(
        session, me(principal), addresses.create_address(session, me(principal), body.model_dump())
    )


@my_addresses.get("/{address_id}", response_model=AddressOut)
def get_my_address(address_id: str, principal: User, session: DbSession) -> AddressOut:
    return _address_out(session, me(principal), addresses.get_address(session, me(principal), address_id))


@my_addresses.patch("/{address_id}", response_model=AddressOut, responses=problems(409))
def update_my_address(
    address_id: str, body: AddressUpdate, principal: User, session: DbSession
) -> AddressOut:
    address = addresses.update_address(
        session, me(principal), address_id, body.model_dump(exclude_unset=True)
    )
    return _address_out(session, me(principal), address)


@my_addresses.delete("/{address_id}", **NO_CONTENT, responses=problems(409))
def delete_my_address(address_id: str, principal: User, session: DbSession) -> Response:
    addresses.delete_address(session, me(principal), address_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@user_addresses.get("", response_model=Page[AddressOut])
def list_user_addresses(
    user_id: str, principal: Admin, session: DbSession, paging: Paging
) -> Page[AddressOut]:
    """A user's addresses: admins and API keys."""
    return _address_page(session, user_owner(session, user_id), paging)


@user_addresses.post("", status_code=status.HTTP_201_CREATED, response_model=AddressOut)
def create_user_address(user_id: str, body: AddressIn, principal: Admin, session: DbSession) -> AddressOut:
    owner = user_owner(session, user_id)
    return _address_out(session, owner, addresses.create_address(session, owner, body.model_dump()))


@user_addresses.get("/{address_id}", response_model=AddressOut)
def get_user_address(user_id: str, address_id: str, principal: Admin, session: DbSession) -> AddressOut:
    owner = user_owner(session, user_id)
    return _address_out(session, owner, addresses.get_address(session, owner, address_id))


@user_addresses.patch("/{address_id}", response_model=AddressOut, responses=problems(409))
def update_user_address(
    user_id: str, address_id: str, body: AddressUpdate, principal: Admin, session: DbSession
) -> AddressOut:
    owner = user_owner(session, user_id)
    return _address_out(
        session,
        owner,
        addresses.update_address(session, owner, address_id, body.model_dump(exclude_unset=True)),
    )


@user_addresses.delete("/{address_id}", **NO_CONTENT, responses=problems(409))
def delete_user_address(user_id: str, address_id: str, principal: Admin, session: DbSession) -> Response:
    addresses.delete_address(session, user_owner(session, user_id), address_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


router.include_router(orgs)
router.include_router(my_addresses)
router.include_router(user_addresses)
router.include_router(invitations_router)
