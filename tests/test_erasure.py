"""Deleting a customer: financial records are kept, personal data is erased (DESIGN.md rule 9)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.accounts.erasure import erase_customer, erase_user, erased_email
from billfold.kit.errors import Conflict, NotFound
from billfold.models import Address, Order, Organization, OrganizationUser, PaymentEvent, PaymentMethod, User
from tests import factories as make
from tests.cli import assert_one_line_error, run


def _count(session: Session, model: type, *where: sa.ColumnElement[bool]) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0


def test_a_customer_who_never_bought_anything_is_deleted_outright(session: Session) -> None:
    ada = make.user(session)
    make.address(session, user=ada)
    make.payment_method(session, user=ada)
    other = make.organization(session, make.user(session))
    make.member(session, other, ada)

    erasure = erase_user(session, ada.id)

    assert erasure.outcome == "deleted"
    session.expire_all()
    assert session.get(User, ada.id) is None
    assert _count(session, Address, Address.user_id == ada.id) == 0
    assert _count(session, OrganizationUser, OrganizationUser.user_id == ada.id) == 0
    assert session.get(Organization, other.id) is not None, "an organization the user only belonged to stays"


def test_a_customer_with_orders_is_anonymised_and_the_orders_keep_pointing_at_them(session: Session) -> None:
    ada = make.user(session, user_name="ada", phone="+442079460000", recovery_email="ada@backup.example", picture="https://example.com/ada.png", password_hash="$argon2id$...", two_factor={"totp": "x"}, passkeys=[{"id": "k"}])
    billed_to = make.address(session, user=ada)
    spare = make.address(session, user=ada, address_type="shipping", is_default=True)
    card = make.payment_method(session, user=ada)
    order = make.order(session, user=ada, billing_address_id=billed_to.id)
    club = make.organization(session, make.user(session))
    make.member(session, club, ada, "billing")
    spare_id, card_id = spare.id, card.id

    # The database alone refuses to delete her: her order would be left without an owner.
    with pytest.raises(sa.exc.IntegrityError), session.begin_nested():
        session.execute(sa.delete(User).where(User.id == ada.id))

    erasure = erase_user(session, ada.id)

    assert erasure.outcome == "anonymised"
    assert erasure.kept == {"orders": 1}
    session.expire_all()
    erased = session.get(User, ada.id)
    assert erased is not None
    assert (erased.name, erased.last_name, erased.email) == ("Erased", "Customer", erased_email(ada.id))
    for column in ("user_name", "phone", "recovery_email", "picture", "password_hash", "salt", "two_factor", "passkeys"):
        assert getattr(erased, column) is None, column
    assert erased.is_locked and not erased.is_verified
    assert session.get(Order, order.id).user_id == ada.id, "the order is kept and still hers"
    kept_address = session.get(Address, billed_to.id)
    assert kept_address is not None and kept_address.phone is None and kept_address.email is None
    assert session.get(Address, spare_id) is None, "an address no record uses is erased"
    assert session.get(PaymentMethod, card_id) is None
    assert _count(session, OrganizationUser, OrganizationUser.user_id == ada.id) == 0
    audit = session.scalars(sa.select(PaymentEvent).where(PaymentEvent.entity_id == ada.id)).one()
    assert (audit.entity_type, audit.event_type, audit.data["outcome"]) == ("user", "erased", "anonymised")


def test_a_customer_with_a_live_subscription_is_not_erased(session: Session) -> None:
    ada = make.user(session)
    subscription = make.subscription(session, user=ada)
    with pytest.raises(Conflict) as refused:
        erase_user(session, ada.id)
    assert subscription.id in refused.value.detail
    session.expire_all()
    assert session.get(User, ada.id).email == ada.email, "nothing was changed"


def test_a_cancelled_subscription_does_not_stand_in_the_way(session: Session) -> None:
    ada = make.user(session)
    make.subscription(session, user=ada, status="cancelled")
    assert erase_user(session, ada.id).kept == {"subscriptions": 1}


def test_an_owner_whose_organization_has_other_members_must_hand_it_over_first(session: Session) -> None:
    ada = make.user(session)
    org = make.organization(session, ada)
    make.member(session, org, make.user(session), "admin")
    with pytest.raises(Conflict) as refused:
        erase_user(session, ada.id)
    assert org.id in refused.value.detail and "transfer ownership" in refused.value.detail
    assert session.get(Organization, org.id) is not None


def test_an_organization_owned_alone_goes_with_its_owner(session: Session) -> None:
    ada = make.user(session)
    org = make.organization(session, ada, business_email="billing@engines.example")
    make.address(session, organization=org)

    erasure = erase_user(session, ada.id)

    assert erasure.outcome == "deleted"
    assert [(o.customer_id, o.outcome) for o in erasure.organizations] == [(org.id, "deleted")]
    session.expire_all()
    assert session.get(Organization, org.id) is None


def test_an_organization_with_orders_is_kept_for_its_invoices_while_its_owner_is_anonymised(session: Session) -> None:
    ada = make.user(session)
    org = make.organization(session, ada, business_email="billing@engines.example", business_phone="+4930123456", tax_id="DE123456789")
    order = make.order(session, organization=org)

    erasure = erase_user(session, ada.id)

    assert erasure.outcome == "anonymised", "her row stays: the organization she owned still names her as owner"
    assert [(o.customer_id, o.outcome, o.kept) for o in erasure.organizations] == [(org.id, "anonymised", {"orders": 1})]
    session.expire_all()
    kept = session.get(Organization, org.id)
    assert kept.tax_id == "DE123456789" and kept.business_email is None and kept.business_phone is None
    assert session.get(Order, order.id).organization_id == org.id


def test_erasing_an_unknown_customer_says_so(session: Session) -> None:
    with pytest.raises(NotFound):
        erase_customer(session, "usr_01JD0000000000000000000000")
    with pytest.raises(NotFound, match="not a customer id"):
        erase_customer(session, "ord_01JD0000000000000000000000")


def test_the_cli_erases_a_customer_and_explains_a_refusal(tmp_path: Path) -> None:
    from billfold.kit.db import create_engine, session_factory, transaction

    url = f"sqlite:///{tmp_path / 'shop.db'}"
    assert run("db", "upgrade", database_url=url).code == 0
    engine = create_engine(url)
    with transaction(session_factory(engine)) as session:
        ada = make.user(session)
        make.order(session, user=ada)
        bob = make.user(session)
        make.subscription(session, user=bob)
        ada_id, bob_id = ada.id, bob.id

    asked = run("customer", "erase", ada_id, database_url=url, stdin="n\n")
    assert_one_line_error(asked, "nothing erased")

    done = run("customer", "erase", ada_id, "--yes", database_url=url)
    assert done.code == 0, done
    assert f"{ada_id}: anonymised" in done.stdout and "kept: 1 orders" in done.stdout
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT email FROM users WHERE id = :id"), {"id": ada_id}).scalar_one() == erased_email(ada_id)

    assert_one_line_error(run("customer", "erase", bob_id, "--yes", database_url=url), "live subscription", "cancel")
    assert_one_line_error(run("customer", "erase", "usr_01JD0000000000000000000000", "--yes", database_url=url), "no user")
    engine.dispose()


def test_invitations_to_an_erased_persons_address_go_with_them(session: Session) -> None:
    from datetime import timedelta

    from billfold.kit import clock
    from billfold.models import OrganizationInvitation

    ada = make.user(session)
    shop = make.organization(session, make.user(session))
    for n, email in enumerate((ada.email, "someone.else@example.com")):
        session.add(
            OrganizationInvitation(
                organization_id=shop.id, email=email, role="member", token_hash=f"{n}" * 64,
                expires_at=clock.now() + timedelta(days=7),
            )
        )
    session.flush()

    erase_user(session, ada.id)

    left = session.scalars(sa.select(OrganizationInvitation.email).where(OrganizationInvitation.organization_id == shop.id)).all()
    assert left == ["someone.else@example.com"]
