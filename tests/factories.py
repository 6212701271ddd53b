"""Plain functions that make valid rows through the ORM, for tests that need a little world."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from billfold.kit import clock
from billfold.models import (
    Address,
    Order,
    Organization,
    OrganizationUser,
    PaymentMethod,
    PaymentProvider,
    Product,
    Subscription,
    User,
)

_n = itertools.count(1)


def _save(session: Session, row: Any) -> Any:
    session.add(row)
    session.flush()
    return row


def user(session: Session, **values: Any) -> User:
    n = next(_n)
    defaults = dict(name="Ada", last_name=f"Lovelace {n}", email=f"ada{n}@example.com", user_type="individual")
    return _save(session, User(**{**defaults, **values}))


def organization(session: Session, owner: User, **values: Any) -> Organization:
    org = _save(session, Organization(**{"name": f"Analytical Engines {next(_n)} Ltd", "owner_user_id": owner.id, **values}))
    member(session, org, owner, "owner")
    return org


def member(session: Session, org: Organization, person: User, role: str = "member") -> OrganizationUser:
    return _save(session, OrganizationUser(organization_id=org.id, user_id=person.id, role=role))


def address(session: Session, *, user: User | None = None, organization: Organization | None = None, **values: Any) -> Address:
    defaults = dict(
        address_type="billing", name="Ada Lovelace", line1="12 St James's Square", city="London",
        postal_code="SW1Y 4JH", country="GB", phone="+442079460000", email="ada@example.com",
    )
    return _save(session, Address(user_id=user.id if user else None, organization_id=organization.id if organization else None, **{**defaults, **values}))


def provider(session: Session, provider_id: str = "sandbox") -> PaymentProvider:
    """The provider row, active. The test databases are shared by the tests of a worker, and some
    (the fuzzer, acting as the shop's admin) switch providers off: a test that needs one says so."""
    found = session.get(PaymentProvider, provider_id)
    if found is not None:
        found.is_active = True
        return found
    return _save(session, PaymentProvider(id=provider_id, display_name=provider_id.title(), supports_subscriptions=True))


def payment_method(session: Session, *, user: User | None = None, organization: Organization | None = None) -> PaymentMethod:
    return _save(
        session,
        PaymentMethod(
            user_id=user.id if user else None, organization_id=organization.id if organization else None,
            provider_id=provider(session).id, provider_payment_method_id=f"pm_sandbox_{next(_n)}",
            payment_type="credit_card", last_four="4242", expiry_month="12", expiry_year="2030", card_brand="visa",
        ),
    )


def product(session: Session, **values: Any) -> Product:
    defaults = dict(name=f"Pro plan {next(_n)}", product_type="subscription", is_recurring=True, price_cents=2900, billing_interval="monthly")
    return _save(session, Product(**{**defaults, **values}))


def order(session: Session, *, user: User | None = None, organization: Organization | None = None, **values: Any) -> Order:
    defaults = dict(order_number=f"BF-{next(_n):06d}", subtotal_cents=2900, total_cents=2900, status="paid")
    return _save(session, Order(user_id=user.id if user else None, organization_id=organization.id if organization else None, **{**defaults, **values}))


def subscription(session: Session, *, user: User | None = None, organization: Organization | None = None, status: str = "active") -> Subscription:
    start = clock.now()
    return _save(
        session,
        Subscription(
            user_id=user.id if user else None, organization_id=organization.id if organization else None,
            product_id=product(session).id, provider_id=provider(session).id, status=status,
            current_period_start=start, current_period_end=start + timedelta(days=30), price_cents=2900,
        ),
    )
