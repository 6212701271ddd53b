"""Invitations: asking someone to join an organization by email, whether or not they have an
account yet.

An owner or admin invites an address with a role (only owners invite owners). The address gets
an email with a single-use token, valid for seven days; only the token's SHA-256 is kept. The
person accepts by posting the token:

- signed in, as the account whose address was invited: they become a member. The token reached
  that mailbox, so an account that had not confirmed its address is confirmed by it;
- not signed in, with no account at that address: an account is opened (confirmed, for the same
  reason) with the password and names they give, and they become a member; then they sign in;
- not signed in while an account uses the address: 409 ``sign_in_to_accept``.

Inviting an address again replaces the earlier pending invitation (its token stops working), so
"resend" is just inviting again. Owners and admins can list and revoke invitations.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.accounts.organizations import service as organizations
from billfold.accounts.organizations.service import Access, AlreadyMember, Permission
from billfold.accounts.security import Principal, Security, check_new_password, hash_password
from billfold.accounts.service import mark_verified, normalize_email, user_by_email
from billfold.audit import audit
from billfold.kit import clock
from billfold import mailer
from billfold.kit.crypto import hash_token, random_token
from billfold.kit.db.dialects import for_update
from billfold.kit.errors import Conflict, Forbidden, InvalidInput, NotFound
from billfold.kit.ids import has_prefix
from billfold.models import OrganizationInvitation, OrganizationUser, User

LIFETIME = timedelta(days=7)
TOKEN_PREFIX = "bfi"


class SignInToAccept(Conflict):
    code = "sign_in_to_accept"
    title = "Sign in to accept"


class InvitationForAnotherAddress(Forbidden):
    code = "invitation_for_another_address"
    title = "The invitation is for another address"


class InvitationNotUsable(InvalidInput):
    code = "invitation_not_usable"
    title = "The invitation cannot be used"


def status(invitation: OrganizationInvitation) -> str:
    """pending, accepted, revoked or expired."""
    if invitation.accepted_at is not None:
        return "accepted"
    if invitation.revoked_at is not None:
        return "revoked"
    if invitation.expires_at <= clock.now():
        return "expired"
    return "pending"


def invite(
    session: Session, security: Security, access: Access, *, email: str, role: str = "member"
) -> tuple[OrganizationInvitation, str]:
    """Invite ``email`` to the organization; returns the invitation and its token (which only the
    email carries: the API does not return it)."""
    access.require(Permission.MEMBERS)
    if role == "owner":
        access.require(Permission.OWNERSHIP)
    organizations.check_role(role)
    organization = access.organization
    email = normalize_email(email)
    user = user_by_email(session, email)
    if user is not None and organizations.membership(session, organization.id, user.id) is not None:
        raise AlreadyMember(
            f"{email} is already a member of {organization.id}",
            errors=[{"field": "email", "message": "already a member"}],
        )
    now = clock.now()
    for earlier in _pending(session, organization.id, email):
        earlier.revoked_at = now
    token = random_token(TOKEN_PREFIX)
    invitation = OrganizationInvitation(
        organization_id=organization.id,
        email=email,
        role=role,
        token_hash=hash_token(token),
        invited_by_user_id=access.principal.user.id if access.principal.user else None,
        expires_at=now + LIFETIME,
    )
    session.add(invitation)
    session.flush()
    audit(
        session,
        "organization",
        organization.id,
        "member_invited",
        invitation_id=invitation.id,
        role=role,
        by=organizations.actor_id(access.principal),
    )
    url = security.settings.public_url
    mailer.queue(
        session,
        mailer.Email(
            email,
            f"You are invited to join {organization.name}",
            f"Hello,\n\n{organizations.actor_name(access.principal)} invites you to the organization "
            f"{organization.name} on Billfold, as {role}. The invitation is valid for seven days.\n\n"
            f"Your invitation token:\n\n{token}\n\n"
            f"If you have a Billfold account at this address, sign in and POST "
            f'{{"token": "..."}} to {url}/v1/invitations/accept.\n'
            f"If you do not, POST the token with a password, your name and last name to the same "
            f"address: your account is opened and you join at once.\n",
        ),
    )
    return invitation, token


def _pending(session: Session, organization_id: str, email: str) -> list[OrganizationInvitation]:
    statement = sa.select(OrganizationInvitation).where(
        OrganizationInvitation.organization_id == organization_id,
        OrganizationInvitation.email == email,
        OrganizationInvitation.accepted_at.is_(None),
        OrganizationInvitation.revoked_at.is_(None),
    )
    return list(session.scalars(for_update(statement, session)))


def invitations(access: Access) -> sa.Select[tuple[OrganizationInvitation]]:
    """The organization's invitations, newest last, in every status."""
    if access.principal.is_admin:
        access.principal.require_scope("read")
    else:
        access.require(Permission.MEMBERS)
    return sa.select(OrganizationInvitation).where(
        OrganizationInvitation.organization_id == access.organization.id
    )


def revoke(session: Session, access: Access, invitation_id: str) -> OrganizationInvitation:
    """Revoke a pending invitation; its token stops working. Revoking one that is no longer
    pending changes nothing."""
    access.require(Permission.MEMBERS)
    invitation = _invitation(session, access, invitation_id)
    if status(invitation) == "pending":
        invitation.revoked_at = clock.now()
        session.flush()
        audit(
            session,
            "organization",
            access.organization.id,
            "invitation_revoked",
            invitation_id=invitation.id,
            by=organizations.actor_id(access.principal),
        )
    return invitation


def _invitation(session: Session, access: Access, invitation_id: str) -> OrganizationInvitation:
    invitation = None
    if has_prefix(invitation_id, "inv"):
        invitation = session.scalars(
            for_update(sa.select(OrganizationInvitation).where(OrganizationInvitation.id == invitation_id), session)
        ).one_or_none()
    if invitation is None or invitation.organization_id != access.organization.id:
        raise NotFound(f"no invitation {invitation_id} in {access.organization.id}")
    return invitation


@dataclass
class Accepted:
    invitation: OrganizationInvitation
    member: OrganizationUser
    user: User
    account_created: bool


def accept(
    session: Session,
    principal: Principal | None,
    token: str,
    *,
    password: str | None = None,
    name: str | None = None,
    last_name: str | None = None,
) -> Accepted:
    """Join the organization with an invitation's token (see the module's docstring)."""
    invitation = session.scalars(
        for_update(
            sa.select(OrganizationInvitation).where(OrganizationInvitation.token_hash == hash_token(token)), session
        )
    ).one_or_none()
    if invitation is None:
        raise InvitationNotUsable("no invitation has this token", errors=[{"field": "token", "message": "unknown"}])
    state = status(invitation)
    if state != "pending":
        reasons = {
            "accepted": "has already been accepted",
            "revoked": "was revoked or replaced by a newer one",
            "expired": "has expired; ask for a new one",
        }
        raise InvitationNotUsable(
            f"this invitation {reasons[state]}", errors=[{"field": "token", "message": reasons[state]}]
        )
    if principal is not None and principal.user is None:
        raise Forbidden("an API key cannot accept an invitation: the invited person accepts it")
    created = False
    if principal is not None:
        user = principal.user
        assert user is not None
        if user.email != invitation.email:
            raise InvitationForAnotherAddress(
                f"this invitation is for another address than {user.email}; sign in with the invited "
                "account, or sign out and accept it to open an account"
            )
    else:
        user = user_by_email(session, invitation.email)
        if user is not None:
            raise SignInToAccept(
                f"an account uses {invitation.email}: sign in to it, then accept the invitation"
            )
        user = _open_account(session, invitation.email, password=password, name=name, last_name=last_name)
        created = True
    organization = organizations.lock_organization(session, invitation.organization_id)
    if organizations.membership(session, organization.id, user.id, lock=True) is not None:
        raise AlreadyMember(f"{user.email} is already a member of {organization.id}")
    # The invitation's token reached the address: it is confirmed, and what was set on the account
    # before it was (by whoever registered the address) is cleared, as any first confirmation does.
    accepting = principal.auth_session.id if principal and principal.auth_session else None
    mark_verified(session, user, keep_session_id=accepting, by="invitation")
    member = OrganizationUser(organization_id=organization.id, user_id=user.id, role=invitation.role)
    session.add(member)
    invitation.accepted_at = clock.now()
    invitation.accepted_by_user_id = user.id
    session.flush()
    audit(
        session,
        "organization",
        organization.id,
        "member_added",
        user_id=user.id,
        role=invitation.role,
        invitation_id=invitation.id,
        by=user.id,
    )
    return Accepted(invitation, member, user, created)


def _open_account(
    session: Session, email: str, *, password: str | None, name: str | None, last_name: str | None
) -> User:
    given = {"password": password, "name": name, "last_name": last_name}
    missing = [field for field, value in given.items() if not (value or "").strip()]
    if missing:
        raise InvalidInput(
            f"no account uses {email} yet: to open one, give {', '.join(missing)}",
            errors=[{"field": field, "message": "required to open an account"} for field in missing],
        )
    assert password is not None and name is not None and last_name is not None
    check_new_password(password)
    user = User(
        email=email,
        name=name.strip(),
        last_name=last_name.strip(),
        user_type="individual",
        password_hash=hash_password(password),
        is_verified=True,
    )
    session.add(user)
    session.flush()
    audit(session, "user", user.id, "registered", by="invitation")
    return user


def purge(session: Session, *, older_than: timedelta = timedelta(days=30)) -> int:
    """Delete invitations that ended (accepted, revoked or expired) more than ``older_than`` ago;
    the audit rows remain. Returns how many went."""
    cutoff = clock.now() - older_than
    result = session.execute(
        sa.delete(OrganizationInvitation).where(
            sa.or_(
                OrganizationInvitation.accepted_at < cutoff,
                OrganizationInvitation.revoked_at < cutoff,
                OrganizationInvitation.expires_at < cutoff,
            )
        )
    )
    return result.rowcount or 0
