"""Erasing a customer (DESIGN.md rule 9): orders, payments, invoices, subscriptions and memberships
outlive the customer, so a user who has any of them is anonymised, not deleted: their personal
data is overwritten and what identified them is removed, and the financial records keep pointing
at the same (now anonymous) row. A user with no such records is deleted outright. Services never
commit; the caller's transaction does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.audit import audit
from billfold.kit.db.dialects import for_update
from billfold.kit.errors import Conflict, NotFound
from billfold.models import (
    Address,
    AnalyticsEvent,
    OutboxEmail,
    Invoice,
    Order,
    Organization,
    OrganizationInvitation,
    OrganizationUser,
    Payment,
    PaymentMethod,
    Subscription,
    User,
    UserMembership,
)

LIVE_SUBSCRIPTION_STATUSES = ("active", "trialing", "past_due")
ERASED_NAME = "Erased"
ERASED_LAST_NAME = "Customer"


@dataclass
class Erasure:
    """What erasing a customer did."""

    customer_id: str
    outcome: str  # "deleted" or "anonymised"
    kept: dict[str, int] = field(default_factory=dict)  # financial records kept, by table
    removed: dict[str, int] = field(default_factory=dict)  # rows removed, by table
    organizations: list[Erasure] = field(default_factory=list)  # organizations erased with the user


def erased_email(user_id: str) -> str:
    """A unique address that can never receive mail (RFC 2606 reserves ``.invalid``)."""
    return f"erased-{user_id}@billfold.invalid"


def _count(session: Session, model: type, column: sa.ColumnElement[str | None], owner_id: str) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(model).where(column == owner_id)) or 0


def _financial_records(session: Session, owner: type[User] | type[Organization], owner_id: str) -> dict[str, int]:
    column = "user_id" if owner is User else "organization_id"
    models: list[type] = [Order, Payment, Invoice, Subscription]
    if owner is User:
        models.append(UserMembership)
    counts = {m.__tablename__: _count(session, m, getattr(m, column), owner_id) for m in models}
    return {table: n for table, n in counts.items() if n}


def _refuse_live_subscriptions(session: Session, column: sa.ColumnElement[str | None], owner_id: str) -> None:
    live = session.scalars(
        sa.select(Subscription.id)
        .where(column == owner_id, Subscription.status.in_(LIVE_SUBSCRIPTION_STATUSES))
        .order_by(Subscription.id)
    ).all()
    if live:
        raise Conflict(
            f"{owner_id} still has {len(live)} live subscription(s) ({', '.join(live)}); "
            "cancel them before erasing the customer",
            live_subscriptions=list(live),
        )


def erase_customer(session: Session, customer_id: str) -> Erasure:
    """Erase the user or organization named by ``customer_id`` (``usr_…`` or ``org_…``)."""
    if customer_id.startswith("usr_"):
        return erase_user(session, customer_id)
    if customer_id.startswith("org_"):
        return erase_organization(session, customer_id)
    raise NotFound(f"{customer_id!r} is not a customer id; customers are users (usr_…) or organizations (org_…)")


def erase_user(session: Session, user_id: str) -> Erasure:
    """Erase a user's personal data, keeping the financial records that mention them.

    Refused (Conflict) while the user has live subscriptions, or owns an organization that has
    other members (ownership must pass to one of them first). Organizations the user owns alone
    are erased with them.
    """
    user = session.scalars(for_update(sa.select(User).where(User.id == user_id), session)).one_or_none()
    if user is None:
        raise NotFound(f"no user {user_id}")
    _refuse_live_subscriptions(session, Subscription.user_id, user_id)

    owned = session.scalars(
        sa.select(Organization.id).where(Organization.owner_user_id == user_id).order_by(Organization.id)
    ).all()
    shared = session.scalars(
        sa.select(OrganizationUser.organization_id)
        .where(OrganizationUser.organization_id.in_(owned), OrganizationUser.user_id != user_id)
        .distinct()
    ).all()
    if shared:
        raise Conflict(
            f"{user_id} owns organization(s) with other members ({', '.join(sorted(shared))}); "
            "transfer ownership before erasing the user",
            organizations=sorted(shared),
        )
    for organization_id in owned:
        _refuse_live_subscriptions(session, Subscription.organization_id, organization_id)

    organizations = [erase_organization(session, organization_id) for organization_id in owned]
    # Invitations sent to the address name the person too.
    invitations_removed = session.execute(
        sa.delete(OrganizationInvitation).where(OrganizationInvitation.email == user.email)
    ).rowcount
    # The mail written to the person (sent or not) names them and may hold their tokens.
    mail_removed = _forget_mail(session, user.email, user.recovery_email)
    kept = _financial_records(session, User, user_id)
    still_owned = session.scalar(
        sa.select(sa.func.count()).select_from(Organization).where(Organization.owner_user_id == user_id)
    )
    if not kept and not still_owned:
        session.delete(user)
        session.flush()
        erasure = Erasure(user_id, "deleted", organizations=organizations)
    else:
        removed = _strip_personal_data(session, "user_id", user_id)
        removed["organization_users"] = session.execute(
            sa.delete(OrganizationUser).where(OrganizationUser.user_id == user_id)
        ).rowcount
        removed["organization_invitations"] = invitations_removed
        removed["mail_outbox"] = mail_removed
        removed["analytics_events"] = session.execute(
            sa.update(AnalyticsEvent).where(AnalyticsEvent.user_id == user_id).values(user_id=None, session_id=None)
        ).rowcount
        user.name = ERASED_NAME
        user.last_name = ERASED_LAST_NAME
        user.email = erased_email(user_id)
        for column in ("picture", "user_name", "password_hash", "salt", "recovery_email", "phone", "two_factor", "passkeys"):
            setattr(user, column, None)
        user.is_verified = False
        user.is_locked = True
        session.flush()
        erasure = Erasure(user_id, "anonymised", kept=kept, removed=_nonzero(removed), organizations=organizations)
    _audit(session, "user", erasure)
    return erasure


def erase_organization(session: Session, organization_id: str) -> Erasure:
    """Remove an organization's members, saved payment methods and unused addresses; delete the
    organization itself when no financial record mentions it. Its name and tax id stay when
    records do: invoices must name the business they were issued to."""
    organization = session.scalars(
        for_update(sa.select(Organization).where(Organization.id == organization_id), session)
    ).one_or_none()
    if organization is None:
        raise NotFound(f"no organization {organization_id}")
    _refuse_live_subscriptions(session, Subscription.organization_id, organization_id)
    mail_removed = _forget_mail(session, organization.business_email)
    kept = _financial_records(session, Organization, organization_id)
    if not kept:
        session.delete(organization)
        session.flush()
        erasure = Erasure(organization_id, "deleted")
    else:
        removed = _strip_personal_data(session, "organization_id", organization_id)
        removed["organization_users"] = session.execute(
            sa.delete(OrganizationUser).where(OrganizationUser.organization_id == organization_id)
        ).rowcount
        removed["mail_outbox"] = mail_removed
        organization.business_email = None
        organization.business_phone = None
        session.flush()
        erasure = Erasure(organization_id, "anonymised", kept=kept, removed=_nonzero(removed))
    _audit(session, "organization", erasure)
    return erasure


def _strip_personal_data(session: Session, owner_column: str, owner_id: str) -> dict[str, int]:
    """Delete saved payment methods and the addresses no financial record uses; the addresses an
    order or invoice uses stay (an invoice must show whom it was issued to) without phone or email."""
    removed = {
        "payment_methods": session.execute(
            sa.delete(PaymentMethod).where(getattr(PaymentMethod, owner_column) == owner_id)
        ).rowcount
    }
    used = sa.union(
        sa.select(Order.billing_address_id.label("id")),
        sa.select(Order.shipping_address_id),
        sa.select(Invoice.billing_address_id),
    ).subquery()
    in_use = sa.select(used.c.id).where(used.c.id.is_not(None))
    owned = getattr(Address, owner_column) == owner_id
    removed["addresses"] = session.execute(
        sa.delete(Address).where(owned, Address.id.not_in(in_use)).execution_options(synchronize_session=False)
    ).rowcount
    session.execute(
        sa.update(Address).where(owned).values(phone=None, email=None, is_default=False).execution_options(
            synchronize_session=False
        )
    )
    return removed


def _forget_mail(session: Session, *addresses: str | None) -> int:
    wanted = [address for address in addresses if address]
    if not wanted:
        return 0
    return session.execute(sa.delete(OutboxEmail).where(OutboxEmail.to_address.in_(wanted))).rowcount


def _nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {table: n for table, n in counts.items() if n}


def _audit(session: Session, entity_type: str, erasure: Erasure) -> None:
    audit(session, entity_type, erasure.customer_id, "erased",
          outcome=erasure.outcome, kept=erasure.kept, removed=erasure.removed)
    session.flush()
