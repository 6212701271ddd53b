"""Provider customers: who a user or an organization is at each payment provider.

The ``provider_customers`` row for (owner, provider) is made on first use. The remote customer is
created with an idempotency key derived from the owner and the provider, so two concurrent first
uses make one customer at the provider; on our side the owner's row is locked first, so they also
make one row (and an insert that still collides is rolled back to a savepoint and re-read).
Services never commit.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.accounts.access import Owner, lock_owner, owner_of
from billfold.audit import audit
from billfold.kit.db.dialects import for_update
from billfold.models import Organization, ProviderCustomer
from billfold.providers.base import ProviderAdapter


def customer_key(provider_id: str, owner: Owner) -> str:
    """The idempotency key of creating the owner's customer at the provider."""
    return f"customer-{provider_id}-{owner.id}"


def find_provider_customer(session: Session, provider_id: str, owner: Owner) -> ProviderCustomer | None:
    statement = (
        sa.select(ProviderCustomer)
        .where(ProviderCustomer.provider_id == provider_id, owner.owns(ProviderCustomer))
        .order_by(ProviderCustomer.id)
        .limit(1)
    )
    # A locking read sees rows committed while we waited for the owner's lock, even under
    # MariaDB's REPEATABLE READ.
    statement = for_update(statement, session).execution_options(populate_existing=True)
    return session.scalars(statement).first()


def provider_customers_of(session: Session, provider_id: str, owners: list[Owner]) -> dict[Owner, ProviderCustomer]:
    """The customers the owners have at the provider already, in one read without locks (for
    charging many owners at once; :func:`ensure_provider_customer` makes a missing one)."""
    users = {o.user_id for o in owners if o.organization_id is None and o.user_id}
    organizations = {o.organization_id for o in owners if o.organization_id is not None}
    if not users and not organizations:
        return {}
    rows = session.scalars(
        sa.select(ProviderCustomer)
        .where(
            ProviderCustomer.provider_id == provider_id,
            sa.or_(
                sa.and_(ProviderCustomer.user_id.in_(users), ProviderCustomer.organization_id.is_(None)),
                ProviderCustomer.organization_id.in_(organizations),
            ),
        )
        .order_by(ProviderCustomer.id.desc())  # the first made wins, as in find_provider_customer
    )
    found: dict[Owner, ProviderCustomer] = {}
    for row in rows:
        found[owner_of(row)] = row
    return found


def ensure_provider_customer(session: Session, adapter: ProviderAdapter, owner: Owner) -> ProviderCustomer:
    """The owner's customer at the adapter's provider, created there and here on first use."""
    holder = lock_owner(session, owner)
    provider_id = adapter.provider_id
    existing = find_provider_customer(session, provider_id, owner)
    if existing is not None:
        return existing
    if isinstance(holder, Organization):
        email, name = holder.business_email, holder.name
    else:
        email, name = holder.email, " ".join(p for p in (holder.name, holder.last_name) if p) or None
    remote = adapter.create_customer(
        email=email, name=name, metadata={f"billfold_{k}": v for k, v in owner.data().items()},
        idempotency_key=customer_key(provider_id, owner),
    )
    customer = ProviderCustomer(
        user_id=owner.user_id, organization_id=owner.organization_id, provider_id=provider_id,
        provider_customer_id=remote.id,
    )
    try:
        with session.begin_nested():
            session.add(customer)
            session.flush()
    except sa.exc.IntegrityError:
        # Another transaction saved the same remote customer first (the same idempotency key
        # gave it the same id): use its row.
        found = session.scalars(
            sa.select(ProviderCustomer)
            .where(ProviderCustomer.provider_id == provider_id, ProviderCustomer.provider_customer_id == remote.id)
            .execution_options(populate_existing=True)
        ).one()
        return found
    audit(session, "provider_customer", customer.id, "created", provider_id=provider_id, **owner.data())
    return customer
