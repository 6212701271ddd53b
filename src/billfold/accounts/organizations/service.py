"""Organizations, their members and roles (see docs/permissions.md for the whole matrix).

Who may do what:
- The shop's admin users and API keys may do everything (API keys within their scopes: ``read``
  for looking, ``write`` for changing).
- A user sees only the organizations they belong to; to anyone else an organization does not
  exist (404, the same answer as for an id nobody uses). A member whose role does not allow an
  action gets 403.
- Roles: ``owner`` everything; ``admin`` members and settings; ``billing`` addresses (and later
  payment methods, invoices, subscriptions); ``member`` looks.

An organization may have several owners. ``organizations.owner_user_id`` names the primary owner,
who is always one of them: the primary owner cannot leave, be removed or stop being an owner
until ownership is transferred, so an organization always has an owner.

Services take a session and never commit; every change writes an audit row in the same
transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.accounts.erasure import Erasure, erase_organization
from billfold.accounts.security import Principal
from billfold.accounts.service import normalize_email, user_by_email
from billfold.audit import audit
from billfold import mailer
from billfold.kit.db.dialects import for_update
from billfold.kit.errors import Conflict, Forbidden, InvalidInput, NotFound
from billfold.kit.ids import has_prefix
from billfold.models import Organization, OrganizationUser, User
from billfold.models.accounts import ORGANIZATION_ROLES

SETTINGS = ("name", "business_email", "business_phone", "tax_id", "address")
PREVIOUS_OWNER_ROLE = "admin"  # what the primary owner becomes on transferring ownership


class Permission(Enum):
    VIEW = "view the organization, its members and addresses"
    SETTINGS = "change the organization's settings"
    MEMBERS = "add, remove and change members"
    OWNERSHIP = "grant or take away the owner role, transfer ownership or delete the organization"
    BILLING = "manage the organization's addresses"


ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "owner": frozenset(Permission),
    "admin": frozenset({Permission.VIEW, Permission.SETTINGS, Permission.MEMBERS}),
    "billing": frozenset({Permission.VIEW, Permission.BILLING}),
    "member": frozenset({Permission.VIEW}),
}
assert set(ROLE_PERMISSIONS) == set(ORGANIZATION_ROLES)


class RoleRequired(Forbidden):
    """A member whose role does not allow the action."""

    code = "role_required"
    title = "Your role does not allow this"


class AlreadyMember(Conflict):
    code = "already_member"
    title = "Already a member"


class NoSuchAccount(NotFound):
    code = "no_account"
    title = "No account with this address"


class UnconfirmedAccount(Conflict):
    code = "account_unconfirmed"
    title = "The account's address is not confirmed"


class PrimaryOwnerRequired(Conflict):
    """The primary owner cannot leave, be removed or demoted: an organization always has an owner."""

    code = "primary_owner_required"
    title = "The organization needs its owner"


@dataclass
class Access:
    """What the principal may do to one organization. ``membership`` is the principal's own row,
    if they belong to it (shop admins and API keys usually do not)."""

    principal: Principal
    organization: Organization
    membership: OrganizationUser | None

    @property
    def role(self) -> str | None:
        return self.membership.role if self.membership else None

    def require(self, permission: Permission) -> None:
        if self.principal.is_admin:
            self.principal.require_scope(_scope(permission))
            return
        assert self.membership is not None  # access() lets no other principal through
        if permission not in ROLE_PERMISSIONS[self.membership.role]:
            allowed = [role for role in ORGANIZATION_ROLES if permission in ROLE_PERMISSIONS[role]]
            raise RoleRequired(
                f"your role in {self.organization.id} is {self.membership.role}; "
                f"to {permission.value} you need to be {' or '.join(allowed)}",
                role=self.membership.role,
                roles_allowed=allowed,
            )


def _scope(permission: Permission) -> str:
    return "read" if permission is Permission.VIEW else "write"


def access(session: Session, principal: Principal, organization_id: str, *, lock: bool = False) -> Access:
    """The principal's access to an organization; NotFound if it does not exist or, for a user
    who is not a shop admin, if they do not belong to it. ``lock`` holds the organization's row
    until the transaction ends, so changes to its members and addresses happen one at a time."""
    organization = None
    if has_prefix(organization_id, "org"):
        statement = sa.select(Organization).where(Organization.id == organization_id)
        organization = session.scalars(for_update(statement, session) if lock else statement).one_or_none()
    own = None
    if organization is not None and principal.user is not None:
        own = membership(session, organization.id, principal.user.id, lock=lock)
    if organization is None or (own is None and not principal.is_admin):
        raise NotFound(f"no organization {organization_id}")
    return Access(principal, organization, own)


def lock_organization(session: Session, organization_id: str) -> Organization:
    """The organization's row, held until the transaction ends (see ``access``)."""
    statement = sa.select(Organization).where(Organization.id == organization_id)
    return session.scalars(for_update(statement, session)).one()


def membership(
    session: Session, organization_id: str, user_id: str, *, lock: bool = False
) -> OrganizationUser | None:
    statement = sa.select(OrganizationUser).where(
        OrganizationUser.organization_id == organization_id, OrganizationUser.user_id == user_id
    )
    if lock:
        # A locking read sees the latest committed row even under MariaDB's REPEATABLE READ.
        statement = for_update(statement, session).execution_options(populate_existing=True)
    return session.scalars(statement).one_or_none()


# The organization


def create_organization(
    session: Session, principal: Principal, *, owner_user_id: str | None = None, **settings: str | None
) -> Organization:
    """A new organization; its owner (the signed-in user unless an admin names another) becomes
    its primary owner and first member."""
    principal.require_scope("write")
    if owner_user_id is None:
        if principal.user is None:
            detail = "an API key cannot own an organization: name its owner with owner_user_id"
            raise Forbidden(detail, errors=[{"field": "owner_user_id", "message": "required for an API key"}])
        owner = principal.user
    else:
        if principal.user is None or owner_user_id != principal.user.id:
            principal.require_admin()
        owner = session.get(User, owner_user_id) if has_prefix(owner_user_id, "usr") else None
        if owner is None:
            raise NotFound(f"no user {owner_user_id}", errors=[{"field": "owner_user_id", "message": "no such user"}])
    organization = Organization(owner_user_id=owner.id, **_clean_settings(settings))
    session.add(organization)
    session.flush()
    session.add(OrganizationUser(organization_id=organization.id, user_id=owner.id, role="owner"))
    session.flush()
    audit(session, "organization", organization.id, "created", owner_user_id=owner.id)
    return organization


def _clean_settings(settings: dict[str, str | None]) -> dict[str, str | None]:
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise InvalidInput(
            f"not an organization setting: {', '.join(unknown)}",
            errors=[{"field": f, "message": "not a setting"} for f in unknown],
        )
    if "name" in settings and not (settings["name"] or "").strip():
        raise InvalidInput(
            "an organization needs a name", errors=[{"field": "name", "message": "must not be blank"}]
        )
    if settings.get("business_email"):
        settings = {
            **settings,
            "business_email": normalize_email(settings["business_email"], "business_email"),
        }  # type: ignore[arg-type]
    return settings


def visible_organizations(principal: Principal) -> sa.Select[tuple[Organization]]:
    """Every organization for the shop's admins; a user's own for a user."""
    if principal.is_admin:
        principal.require_scope("read")
        return sa.select(Organization)
    assert principal.user is not None
    return (
        sa.select(Organization)
        .join(OrganizationUser, OrganizationUser.organization_id == Organization.id)
        .where(OrganizationUser.user_id == principal.user.id)
    )


def roles_of(session: Session, principal: Principal, organization_ids: list[str]) -> dict[str, str]:
    """The principal's role in each of these organizations it belongs to."""
    if principal.user is None or not organization_ids:
        return {}
    rows = session.execute(
        sa.select(OrganizationUser.organization_id, OrganizationUser.role).where(
            OrganizationUser.user_id == principal.user.id,
            OrganizationUser.organization_id.in_(organization_ids),
        )
    ).all()
    return {organization_id: role for organization_id, role in rows}


def view(access: Access) -> Organization:
    access.require(Permission.VIEW)
    return access.organization


def update_settings(session: Session, access: Access, changes: dict[str, str | None]) -> Organization:
    """Change the name, business email and phone, tax id or address text."""
    access.require(Permission.SETTINGS)
    organization = access.organization
    cleaned = _clean_settings(changes)
    changed = sorted(f for f, v in cleaned.items() if getattr(organization, f) != v)
    for field in changed:
        setattr(organization, field, cleaned[field])
    if changed:
        session.flush()
        audit(session, "organization", organization.id, "updated", fields=changed)
    return organization


def delete_organization(session: Session, access: Access) -> Erasure:
    """Delete the organization, or anonymise it when orders, payments or invoices name it
    (see accounts/erasure.py); refused while it has live subscriptions."""
    access.require(Permission.OWNERSHIP)
    return erase_organization(session, access.organization.id)


def transfer_ownership(session: Session, access: Access, user_id: str) -> Organization:
    """Make a member the primary owner; the previous primary owner stays as an admin."""
    access.require(Permission.OWNERSHIP)
    organization = access.organization
    target = membership(session, organization.id, user_id, lock=True) if has_prefix(user_id, "usr") else None
    if target is None:
        detail = f"{user_id} is not a member of {organization.id}; add them first, then transfer ownership"
        raise NotFound(detail, errors=[{"field": "user_id", "message": "not a member"}])
    previous_owner_id = organization.owner_user_id
    if target.user_id == previous_owner_id:
        return organization
    previous = membership(session, organization.id, previous_owner_id, lock=True)
    if previous is not None:
        previous.role = PREVIOUS_OWNER_ROLE
    target.role = "owner"
    organization.owner_user_id = target.user_id
    session.flush()
    audit(
        session,
        "organization",
        organization.id,
        "ownership_transferred",
        previous_owner_user_id=previous_owner_id,
        owner_user_id=target.user_id,
        by=actor_id(access.principal),
    )
    return organization


# Members


def members(access: Access) -> sa.Select[tuple[OrganizationUser]]:
    access.require(Permission.VIEW)
    return sa.select(OrganizationUser).where(OrganizationUser.organization_id == access.organization.id)


def users_by_id(session: Session, user_ids: list[str]) -> dict[str, User]:
    if not user_ids:
        return {}
    return {user.id: user for user in session.scalars(sa.select(User).where(User.id.in_(user_ids)))}


def get_member(session: Session, access: Access, user_id: str) -> OrganizationUser:
    access.require(Permission.VIEW)
    return _member(session, access, user_id)


def _member(session: Session, access: Access, user_id: str, *, lock: bool = False) -> OrganizationUser:
    member = (
        membership(session, access.organization.id, user_id, lock=lock)
        if has_prefix(user_id, "usr")
        else None
    )
    if member is None:
        raise NotFound(f"{user_id} is not a member of {access.organization.id}")
    return member


def add_member(session: Session, access: Access, *, email: str, role: str = "member") -> OrganizationUser:
    """Add the person with an existing, confirmed account at ``email`` at once. Anyone else is
    invited instead (accounts/invitations.py)."""
    access.require(Permission.MEMBERS)
    if role == "owner":
        access.require(Permission.OWNERSHIP)
    check_role(role)
    organization = access.organization
    email = normalize_email(email)
    user = user_by_email(session, email)
    if user is None:
        detail = (
            f"no Billfold account uses {email}; invite them instead "
            f"(POST /v1/organizations/{organization.id}/invitations): they can open one as they accept"
        )
        raise NoSuchAccount(detail, errors=[{"field": "email", "message": "no account with this address"}])
    if not user.is_verified:
        raise UnconfirmedAccount(
            f"the account at {email} has not confirmed its address yet; ask them to confirm it, or invite "
            f"them (POST /v1/organizations/{organization.id}/invitations): accepting confirms it",
            errors=[{"field": "email", "message": "address not confirmed"}],
        )
    if membership(session, organization.id, user.id, lock=True) is not None:
        raise AlreadyMember(
            f"{email} is already a member of {organization.id}",
            errors=[{"field": "email", "message": "already a member"}],
        )
    member = OrganizationUser(organization_id=organization.id, user_id=user.id, role=role)
    session.add(member)
    session.flush()
    audit(
        session,
        "organization",
        organization.id,
        "member_added",
        user_id=user.id,
        role=role,
        by=actor_id(access.principal),
    )
    mailer.queue(
        session,
        mailer.Email(
            user.email,
            f"You were added to {organization.name}",
            f"Hello {user.name},\n\n{actor_name(access.principal)} added you to the organization "
            f"{organization.name} on Billfold, as {role}.\n",
        ),
    )
    return member


def change_role(session: Session, access: Access, user_id: str, role: str) -> OrganizationUser:
    access.require(Permission.MEMBERS)
    check_role(role)
    member = _member(session, access, user_id, lock=True)
    if "owner" in (role, member.role):
        access.require(Permission.OWNERSHIP)
    if member.role == role:
        return member
    if role != "owner":
        _keep_primary_owner(session, access, member, "stop being an owner")
    previous = member.role
    member.role = role
    session.flush()
    audit(
        session,
        "organization",
        access.organization.id,
        "member_role_changed",
        user_id=member.user_id,
        previous_role=previous,
        role=role,
        by=actor_id(access.principal),
    )
    return member


def remove_member(session: Session, access: Access, user_id: str) -> None:
    """Remove a member; any member may remove themselves (leave)."""
    member = _member(session, access, user_id, lock=True)
    leaving = access.membership is not None and access.membership.id == member.id
    if not leaving:
        access.require(Permission.MEMBERS)
        if member.role == "owner":
            access.require(Permission.OWNERSHIP)
    _keep_primary_owner(session, access, member, "leave" if leaving else "be removed")
    session.delete(member)
    session.flush()
    audit(
        session,
        "organization",
        access.organization.id,
        "member_left" if leaving else "member_removed",
        user_id=user_id,
        role=member.role,
        by=actor_id(access.principal),
    )


def _keep_primary_owner(session: Session, access: Access, member: OrganizationUser, what: str) -> None:
    organization = access.organization
    if member.user_id != organization.owner_user_id:
        return
    others = "its only owner" if _owner_count(session, access.organization.id) == 1 else "its primary owner"
    raise PrimaryOwnerRequired(
        f"{member.user_id} is {others} of {organization.id} and cannot {what}: an organization always has an "
        f"owner. Transfer ownership to another member first (POST /v1/organizations/{organization.id}/transfer-ownership)."
    )


def _owner_count(session: Session, organization_id: str) -> int:
    return (
        session.scalar(
            sa.select(sa.func.count())
            .select_from(OrganizationUser)
            .where(OrganizationUser.organization_id == organization_id, OrganizationUser.role == "owner")
        )
        or 0
    )


def check_role(role: str) -> None:
    if role not in ORGANIZATION_ROLES:
        detail = f"role must be one of {', '.join(ORGANIZATION_ROLES)}"
        raise InvalidInput(detail, errors=[{"field": "role", "message": detail}])


def actor_id(principal: Principal) -> str | None:
    if principal.user is not None:
        return principal.user.id
    return principal.api_key.id if principal.api_key is not None else None


def actor_name(principal: Principal) -> str:
    if principal.user is not None:
        return f"{principal.user.name} {principal.user.last_name} ({principal.user.email})"
    return "The shop"
