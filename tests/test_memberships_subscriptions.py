"""A recurring membership follows its subscription (a row made directly, as the subscriptions code
will make it): active, past due within the grace, expired beyond it, active again when it pays,
and cancelled once a cancelled subscription's paid period ends. The entitlement check is right
before the sweep runs; the sweep stores the same answer, once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from billfold.config import Settings
from billfold.kit import clock
from billfold.kit.sweeps import Context, sweeps
from billfold.memberships import grant_for_subscription, may_use
from billfold.memberships.sweeps import expire
from billfold.models import MembershipType, PaymentEvent, Subscription, UserMembership
from tests import factories as make

GRACE = timedelta(days=7)


@pytest.fixture
def context(connection: sa.Connection) -> Context:
    sessions = sessionmaker(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    return Context(sessions=sessions, settings=Settings(membership_grace_days=7), security=None)  # type: ignore[arg-type]


@pytest.fixture
def world(session: Session, frozen_clock: clock.FrozenClock) -> Iterator[dict]:
    kind = MembershipType(name="Pro", duration_type="recurring", duration_days=30, price_cents=2900, features=["reports"])
    session.add(kind)
    session.flush()
    ada = make.user(session)
    plan = make.product(session, metadata_={"membership_type_id": kind.id})
    yield {"kind": kind, "ada": ada, "plan": plan}


def subscribe(session: Session, plan_id: str, **owner: str) -> Subscription:
    start = clock.now()
    subscription = Subscription(
        **owner, product_id=plan_id, provider_id=make.provider(session).id, status="active",
        current_period_start=start, current_period_end=start + timedelta(days=30), price_cents=2900,
    )
    session.add(subscription)
    session.flush()
    return subscription


def stored(session: Session, membership_id: str) -> tuple[str, object]:
    session.expire_all()
    row = session.get(UserMembership, membership_id)
    assert row is not None
    return row.status, row.end_date


def test_a_recurring_membership_follows_its_subscription_through_dunning_and_renewal(
    session: Session, world: dict, frozen_clock: clock.FrozenClock, context: Context
) -> None:
    ada = world["ada"]
    subscription = subscribe(session, world["plan"].id, user_id=ada.id)
    membership = grant_for_subscription(session, subscription)
    assert membership is not None and grant_for_subscription(session, subscription) is membership, "made once"
    assert (membership.user_id, membership.auto_renew, membership.end_date) == (ada.id, True, subscription.current_period_end)

    def can(at_offset: timedelta | None = None) -> bool:
        at = subscription.current_period_end + at_offset if at_offset is not None else None
        return may_use(session, user_id=ada.id, feature="reports", at=at, grace=GRACE)

    assert can() and not may_use(session, user_id=ada.id, feature="payroll", grace=GRACE)
    period_end = subscription.current_period_end
    # The renewal fails: past due, within the grace.
    subscription.status = "past_due"
    session.flush()
    frozen_clock.set(period_end + timedelta(days=1))
    assert can(), "past due within the grace"
    assert can(GRACE - timedelta(seconds=1)) and not can(GRACE), "the grace ends exactly"
    assert expire(context) == 0, "nothing to store yet"
    frozen_clock.set(period_end + GRACE)
    assert not can(), "refused before the sweep has run"
    assert stored(session, membership.id)[0] == "active"
    assert expire(context) == 1
    assert stored(session, membership.id) == ("expired", period_end)
    assert expire(context) == 0, "a second run changes nothing"
    # A late payment renews it.
    subscription.status = "active"
    subscription.current_period_start = clock.now()
    subscription.current_period_end = clock.now() + timedelta(days=30)
    session.flush()
    assert can(), "active again before the sweep has run"
    assert expire(context) == 1 and expire(context) == 0
    assert stored(session, membership.id) == ("active", subscription.current_period_end)
    # Cancelled: it lasts to the end of the period paid for, without grace.
    subscription.status = "cancelled"
    session.flush()
    assert can(timedelta(seconds=-1)) and not can(timedelta(0))
    frozen_clock.set(subscription.current_period_end)
    assert expire(context) == 1 and expire(context) == 0
    assert stored(session, membership.id)[0] == "cancelled"
    assert not can()
    steps = session.scalars(
        sa.select(PaymentEvent.event_type).where(PaymentEvent.entity_id == membership.id).order_by(PaymentEvent.id)
    ).all()
    assert steps == ["membership.active", "membership.expired", "membership.active", "membership.cancelled"]


def test_an_organizations_subscription_serves_its_members(session: Session, world: dict, frozen_clock: clock.FrozenClock) -> None:
    owner, member, outsider = make.user(session), make.user(session), make.user(session)
    organization = make.organization(session, owner)
    make.member(session, organization, member, "billing")
    subscription = subscribe(session, world["plan"].id, organization_id=organization.id)
    membership = grant_for_subscription(session, subscription)
    assert membership is not None and membership.user_id == owner.id, "held by the primary owner"
    for someone in (owner, member):
        assert may_use(session, user_id=someone.id, feature="reports", organization_id=organization.id)
        assert not may_use(session, user_id=someone.id, feature="reports"), "it is the organization's"
    assert not may_use(session, user_id=outsider.id, feature="reports", organization_id=organization.id)


def test_a_subscription_to_a_product_without_a_membership_type_grants_nothing(session: Session, world: dict) -> None:
    plain = make.product(session)
    assert grant_for_subscription(session, subscribe(session, plain.id, user_id=world["ada"].id)) is None


def test_the_sweep_expires_fixed_memberships_and_is_registered(
    session: Session, world: dict, frozen_clock: clock.FrozenClock, context: Context
) -> None:
    kind = MembershipType(name="Week pass", duration_type="fixed", duration_days=7, price_cents=900, features=["reports"])
    session.add(kind)
    session.flush()
    from billfold.memberships.service import grant_manually

    passes = [grant_manually(session, user_id=world["ada"].id, membership_type_id=kind.id, by=None) for _ in range(3)]
    frozen_clock.advance(timedelta(days=7) - timedelta(seconds=1))
    assert expire(context) == 0
    frozen_clock.advance(timedelta(seconds=1))
    assert expire(context) == 3 and expire(context) == 0
    assert {stored(session, p.id)[0] for p in passes} == {"expired"}
    assert "memberships.expire" in {s.name for s in sweeps()}
    assert next(s for s in sweeps() if s.name == "memberships.expire").every == timedelta(minutes=1)
