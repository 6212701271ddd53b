"""Every cell of the permission matrix in docs/permissions.md, as one real HTTP request on each
database. The matrix is read from the document, so the document and the service cannot drift
apart: ✓ must answer 2xx (a read shows the thing, a write changes it); 403, 404 and 409 must answer
that status and leave every row the request could touch as it was; *hidden* answers 200 without
the organization.

The people and API keys are made once per database (directly in the database: no Argon2 hashing);
each cell gets a fresh organization with those people in their roles, so no request disturbs
another."""

from __future__ import annotations

import re
from datetime import timedelta
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.accounts.api_keys import create_api_key
from billfold.invoices.service import LineIn, issue_invoice
from billfold.kit import clock
from billfold.kit.db import session_factory, transaction
from billfold.kit.ids import new_id
from billfold.models import (
    Address,
    CreditNote,
    MembershipType,
    Order,
    OrderItem,
    Organization,
    OrganizationInvitation,
    OrganizationUser,
    Payment,
    PaymentMethod,
    PaymentProvider,
    Product,
    Refund,
    Subscription,
    SubscriptionBilling,
    User,
    UserMembership,
)
from tests.server import serving
from tests.test_organizations import Person, person

MATRIX = Path(__file__).parents[1] / "docs" / "permissions.md"
COLUMNS = (
    "owner",
    "admin",
    "billing",
    "member",
    "non-member",
    "admin user",
    "API key (read)",
    "API key (write)",
)
ROLES = ("owner", "admin", "billing", "member")
OUTCOMES = ("✓", "403", "404", "409", "hidden", "—")


@dataclass(frozen=True)
class Row:
    action: str
    request: str  # `METHOD /path` or "later"
    cells: dict[str, str]


def read_matrix() -> list[Row]:
    lines = MATRIX.read_text(encoding="utf-8").splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| action | request |"))
    names = [c.strip() for c in lines[header].strip("|").split("|")]
    assert tuple(names[2:]) == COLUMNS, f"the matrix's columns are {names[2:]}"
    rows = []
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        action, request, *cells = (c.strip() for c in line.strip().strip("|").split("|"))
        rows.append(Row(action, request.strip("`"), dict(zip(COLUMNS, cells, strict=True))))
    return rows


# The requests


@dataclass
class Scene:
    """A fresh organization with the shared people in their roles, and what the requests act on."""

    organization: str
    owner: str
    co_owner: str  # a second owner
    extra: str  # a plain member, also "another user" with an address of their own
    extra_email: str
    outsider_email: str  # a confirmed account that belongs to no organization
    organization_address: str
    extra_address: str
    invitation: str  # a pending invitation to the organization
    me: str | None  # the acting user, if a user acts
    my_address: str | None
    # Payment methods, two per owner: the first the default, the second not.
    organization_methods: tuple[str, str]
    extra_methods: tuple[str, str]
    my_methods: tuple[str, str] | None
    product: str  # a one-time product on sale
    order: str  # a pending order of the organization's
    plan: str  # a recurring product with a trial, on sale
    subscription: str  # an active subscription of the organization's, quantity 2
    ending: str  # an active one of the organization's, paused and cancelled at period end
    invoice: str  # an open invoice of the organization's
    credit_note: str  # a credit note on that invoice (a refund of a payment of the organization's)
    payment: str  # a completed payment of the organization's paid order
    # Memberships granting FEATURE: the organization's (from a paid order of its), another user's
    # (with an add-on ADDON), and the acting user's own.
    organization_membership: str
    extra_membership: str
    my_membership: str | None
    membership_type: str


PROVIDER = "matrix_sandbox"
FEATURE = "matrix-reports"
ADDON = "matrix-addon"
SAVE = {"provider_id": PROVIDER, "token": "tok_sandbox_visa"}

ADDRESS = {
    "address_type": "billing",
    "name": "Ada Lovelace",
    "line1": "12 St James's Square",
    "city": "London",
    "postal_code": "SW1Y 4JH",
    "country": "GB",
}


@dataclass(frozen=True)
class Action:
    request: str  # as the matrix writes it
    send: Callable[[httpx.Client, Scene], httpx.Response]
    shows: Callable[[Scene], str | None] | None = None  # for a read: the id an allowed answer contains


def _from(s: Scene, start: str) -> dict[str, Any]:
    # The shared people collect rows across tests; start the page just before the scene's own.
    return {"starting_after": start[:-1], "limit": 100}


def _made(s: Scene) -> str:
    """The address of the customer "Create a customer" makes in this scene."""
    return f"made.{s.organization.lower()}@example.com"


def _org(s: Scene, rest: str = "") -> str:
    return f"/v1/organizations/{s.organization}{rest}"


ACTIONS: dict[str, Action] = {
    "Create an organization": Action(
        "POST /v1/organizations",
        lambda c, s: c.post(
            "/v1/organizations", json={"name": "Made here", **({} if s.me else {"owner_user_id": s.extra})}
        ),
    ),
    "Find the organization in the list": Action(
        "GET /v1/organizations",
        lambda c, s: c.get("/v1/organizations", params=_from(s, s.organization)),
        lambda s: s.organization,
    ),
    "See the organization": Action(
        "GET /v1/organizations/{id}", lambda c, s: c.get(_org(s)), lambda s: s.organization
    ),
    "Change its settings": Action(
        "PATCH /v1/organizations/{id}", lambda c, s: c.patch(_org(s), json={"name": "Renamed"})
    ),
    "Delete it": Action("DELETE /v1/organizations/{id}", lambda c, s: c.delete(_org(s))),
    "Transfer ownership": Action(
        "POST /v1/organizations/{id}/transfer-ownership",
        lambda c, s: c.post(_org(s, "/transfer-ownership"), json={"user_id": s.extra}),
    ),
    "See the members": Action(
        "GET /v1/organizations/{id}/members",
        lambda c, s: c.get(_org(s, "/members"), params={"limit": 100}),
        lambda s: s.extra,
    ),
    "See one member": Action(
        "GET /v1/organizations/{id}/members/{user_id}",
        lambda c, s: c.get(_org(s, f"/members/{s.extra}")),
        lambda s: s.extra,
    ),
    "Add a member as admin, billing or member": Action(
        "POST /v1/organizations/{id}/members",
        lambda c, s: c.post(_org(s, "/members"), json={"email": s.outsider_email, "role": "billing"}),
    ),
    "Add a member as owner": Action(
        "POST /v1/organizations/{id}/members",
        lambda c, s: c.post(_org(s, "/members"), json={"email": s.outsider_email, "role": "owner"}),
    ),
    "Change a member's role (not to or from owner)": Action(
        "PATCH /v1/organizations/{id}/members/{user_id}",
        lambda c, s: c.patch(_org(s, f"/members/{s.extra}"), json={"role": "billing"}),
    ),
    "Make a member an owner": Action(
        "PATCH /v1/organizations/{id}/members/{user_id}",
        lambda c, s: c.patch(_org(s, f"/members/{s.extra}"), json={"role": "owner"}),
    ),
    "Make a co-owner something else": Action(
        "PATCH /v1/organizations/{id}/members/{user_id}",
        lambda c, s: c.patch(_org(s, f"/members/{s.co_owner}"), json={"role": "admin"}),
    ),
    "Make the primary owner something else": Action(
        "PATCH /v1/organizations/{id}/members/{user_id}",
        lambda c, s: c.patch(_org(s, f"/members/{s.owner}"), json={"role": "admin"}),
    ),
    "Remove a member (not an owner)": Action(
        "DELETE /v1/organizations/{id}/members/{user_id}",
        lambda c, s: c.delete(_org(s, f"/members/{s.extra}")),
    ),
    "Remove a co-owner": Action(
        "DELETE /v1/organizations/{id}/members/{user_id}",
        lambda c, s: c.delete(_org(s, f"/members/{s.co_owner}")),
    ),
    "Remove the primary owner": Action(
        "DELETE /v1/organizations/{id}/members/{user_id}",
        lambda c, s: c.delete(_org(s, f"/members/{s.owner}")),
    ),
    "Leave the organization": Action(
        "DELETE /v1/organizations/{id}/members/{own user id}",
        lambda c, s: c.delete(_org(s, f"/members/{s.me}")),
    ),
    "Invite someone as admin, billing or member": Action(
        "POST /v1/organizations/{id}/invitations",
        lambda c, s: c.post(_org(s, "/invitations"), json={"email": f"new.{s.organization.lower()}@example.com", "role": "billing"}),
    ),
    "Invite someone as owner": Action(
        "POST /v1/organizations/{id}/invitations",
        lambda c, s: c.post(_org(s, "/invitations"), json={"email": f"new.{s.organization.lower()}@example.com", "role": "owner"}),
    ),
    "See its invitations": Action(
        "GET /v1/organizations/{id}/invitations",
        lambda c, s: c.get(_org(s, "/invitations")),
        lambda s: s.invitation,
    ),
    "Revoke an invitation": Action(
        "DELETE /v1/organizations/{id}/invitations/{invitation_id}",
        lambda c, s: c.delete(_org(s, f"/invitations/{s.invitation}")),
    ),
    "See its addresses": Action(
        "GET /v1/organizations/{id}/addresses",
        lambda c, s: c.get(_org(s, "/addresses")),
        lambda s: s.organization_address,
    ),
    "See one of its addresses": Action(
        "GET /v1/organizations/{id}/addresses/{address_id}",
        lambda c, s: c.get(_org(s, f"/addresses/{s.organization_address}")),
        lambda s: s.organization_address,
    ),
    "Add an address to it": Action(
        "POST /v1/organizations/{id}/addresses", lambda c, s: c.post(_org(s, "/addresses"), json=ADDRESS)
    ),
    "Change one of its addresses": Action(
        "PATCH /v1/organizations/{id}/addresses/{address_id}",
        lambda c, s: c.patch(_org(s, f"/addresses/{s.organization_address}"), json={"city": "Leeds"}),
    ),
    "Delete one of its addresses": Action(
        "DELETE /v1/organizations/{id}/addresses/{address_id}",
        lambda c, s: c.delete(_org(s, f"/addresses/{s.organization_address}")),
    ),
    "See one's own addresses": Action(
        "GET /v1/me/addresses",
        lambda c, s: c.get("/v1/me/addresses", params=_from(s, s.my_address or s.extra_address)),
        lambda s: s.my_address,
    ),
    "See one of one's own addresses": Action(
        "GET /v1/me/addresses/{address_id}",
        lambda c, s: c.get(f"/v1/me/addresses/{s.my_address or s.extra_address}"),
        lambda s: s.my_address,
    ),
    "Add an address of one's own": Action(
        "POST /v1/me/addresses", lambda c, s: c.post("/v1/me/addresses", json=ADDRESS)
    ),
    "Change one of one's own addresses": Action(
        "PATCH /v1/me/addresses/{address_id}",
        lambda c, s: c.patch(f"/v1/me/addresses/{s.my_address or s.extra_address}", json={"city": "Leeds"}),
    ),
    "Delete one of one's own addresses": Action(
        "DELETE /v1/me/addresses/{address_id}",
        lambda c, s: c.delete(f"/v1/me/addresses/{s.my_address or s.extra_address}"),
    ),
    "Reach another user's address as one's own": Action(
        "GET /v1/me/addresses/{address_id}", lambda c, s: c.get(f"/v1/me/addresses/{s.extra_address}")
    ),
    "See a user's addresses": Action(
        "GET /v1/users/{user_id}/addresses",
        lambda c, s: c.get(f"/v1/users/{s.extra}/addresses"),
        lambda s: s.extra_address,
    ),
    "Add an address for a user": Action(
        "POST /v1/users/{user_id}/addresses",
        lambda c, s: c.post(f"/v1/users/{s.extra}/addresses", json=ADDRESS),
    ),
    "Change a user's address": Action(
        "PATCH /v1/users/{user_id}/addresses/{address_id}",
        lambda c, s: c.patch(f"/v1/users/{s.extra}/addresses/{s.extra_address}", json={"city": "Leeds"}),
    ),
    "Delete a user's address": Action(
        "DELETE /v1/users/{user_id}/addresses/{address_id}",
        lambda c, s: c.delete(f"/v1/users/{s.extra}/addresses/{s.extra_address}"),
    ),
    "See its payment methods": Action(
        "GET /v1/organizations/{id}/payment-methods",
        lambda c, s: c.get(_org(s, "/payment-methods")),
        lambda s: s.organization_methods[0],
    ),
    "See one of its payment methods": Action(
        "GET /v1/organizations/{id}/payment-methods/{payment_method_id}",
        lambda c, s: c.get(_org(s, f"/payment-methods/{s.organization_methods[0]}")),
        lambda s: s.organization_methods[0],
    ),
    "Add a payment method to it": Action(
        "POST /v1/organizations/{id}/payment-methods", lambda c, s: c.post(_org(s, "/payment-methods"), json=SAVE)
    ),
    "Change its default payment method": Action(
        "PATCH /v1/organizations/{id}/payment-methods/{payment_method_id}",
        lambda c, s: c.patch(_org(s, f"/payment-methods/{s.organization_methods[1]}"), json={"make_default": True}),
    ),
    "Delete one of its payment methods": Action(
        "DELETE /v1/organizations/{id}/payment-methods/{payment_method_id}",
        lambda c, s: c.delete(_org(s, f"/payment-methods/{s.organization_methods[0]}")),
    ),
    "Buy for it": Action(
        "POST /v1/orders",
        lambda c, s: c.post("/v1/orders", json={"items": [{"product_id": s.product}], "organization_id": s.organization}),
    ),
    "See one of its orders": Action(
        "GET /v1/orders/{order_id}", lambda c, s: c.get(f"/v1/orders/{s.order}"), lambda s: s.order
    ),
    "Pay one of its orders": Action(
        "POST /v1/orders/{order_id}/checkout",
        lambda c, s: c.post(f"/v1/orders/{s.order}/checkout", json={"provider_id": PROVIDER, "token": "tok_sandbox_visa"}),
    ),
    "Buy for it and pay in one request": Action(
        "POST /v1/checkouts",
        lambda c, s: c.post(
            "/v1/checkouts",
            json={"items": [{"product_id": s.product}], "organization_id": s.organization, "provider_id": PROVIDER, "token": "tok_sandbox_visa"},
        ),
    ),
    "Cancel one of its orders": Action(
        "POST /v1/orders/{order_id}/cancel", lambda c, s: c.post(f"/v1/orders/{s.order}/cancel", json={})
    ),
    "Subscribe it to a plan": Action(
        "POST /v1/subscriptions",
        lambda c, s: c.post("/v1/subscriptions", json={"product_id": s.plan, "organization_id": s.organization}),
    ),
    "Find its subscriptions in the list": Action(
        "GET /v1/subscriptions",
        lambda c, s: c.get("/v1/subscriptions", params=_from(s, s.subscription)),
        lambda s: s.subscription,
    ),
    "See one of its subscriptions": Action(
        "GET /v1/subscriptions/{subscription_id}",
        lambda c, s: c.get(f"/v1/subscriptions/{s.subscription}"),
        lambda s: s.subscription,
    ),
    "Change the plan or quantity of one of its subscriptions": Action(
        "POST /v1/subscriptions/{subscription_id}/change",
        lambda c, s: c.post(f"/v1/subscriptions/{s.subscription}/change", json={"quantity": 1}),
    ),
    "Cancel one of its subscriptions": Action(
        "POST /v1/subscriptions/{subscription_id}/cancel",
        lambda c, s: c.post(f"/v1/subscriptions/{s.subscription}/cancel", json={"at_period_end": True}),
    ),
    "Cancel one of its subscriptions now with a refund": Action(
        "POST /v1/subscriptions/{subscription_id}/cancel",
        lambda c, s: c.post(f"/v1/subscriptions/{s.subscription}/cancel", json={"at_period_end": False, "refund": True}),
    ),
    "Resume one of its subscriptions": Action(
        "POST /v1/subscriptions/{subscription_id}/resume",
        lambda c, s: c.post(f"/v1/subscriptions/{s.ending}/resume"),
    ),
    "Pause one of its subscriptions": Action(
        "POST /v1/subscriptions/{subscription_id}/pause",
        lambda c, s: c.post(f"/v1/subscriptions/{s.subscription}/pause"),
    ),
    "Unpause one of its subscriptions": Action(
        "POST /v1/subscriptions/{subscription_id}/unpause",
        lambda c, s: c.post(f"/v1/subscriptions/{s.ending}/unpause"),
    ),
    "Move one of its subscriptions to the catalog's price": Action(
        "POST /v1/subscriptions/{subscription_id}/migrate-price",
        lambda c, s: c.post(f"/v1/subscriptions/{s.subscription}/migrate-price", json={}),
    ),
    "See its invoices": Action(
        "GET /v1/invoices/{invoice_id}", lambda c, s: c.get(f"/v1/invoices/{s.invoice}"), lambda s: s.invoice
    ),
    "See its credit notes": Action(
        "GET /v1/credit-notes/{credit_note_id}", lambda c, s: c.get(f"/v1/credit-notes/{s.credit_note}"), lambda s: s.credit_note
    ),
    "Find its credit notes in the list": Action(
        "GET /v1/credit-notes",
        lambda c, s: c.get("/v1/credit-notes", params=_from(s, s.credit_note)),
        lambda s: s.credit_note,
    ),
    "See one's own payment methods": Action(
        "GET /v1/me/payment-methods",
        lambda c, s: c.get("/v1/me/payment-methods", params=_from(s, (s.my_methods or s.extra_methods)[0])),
        lambda s: s.my_methods and s.my_methods[0],
    ),
    "See one of one's own payment methods": Action(
        "GET /v1/me/payment-methods/{payment_method_id}",
        lambda c, s: c.get(f"/v1/me/payment-methods/{(s.my_methods or s.extra_methods)[0]}"),
        lambda s: s.my_methods and s.my_methods[0],
    ),
    "Add a payment method of one's own": Action(
        "POST /v1/me/payment-methods", lambda c, s: c.post("/v1/me/payment-methods", json=SAVE)
    ),
    "Change one's own default payment method": Action(
        "PATCH /v1/me/payment-methods/{payment_method_id}",
        lambda c, s: c.patch(f"/v1/me/payment-methods/{(s.my_methods or s.extra_methods)[1]}", json={"make_default": True}),
    ),
    "Delete one of one's own payment methods": Action(
        "DELETE /v1/me/payment-methods/{payment_method_id}",
        lambda c, s: c.delete(f"/v1/me/payment-methods/{(s.my_methods or s.extra_methods)[0]}"),
    ),
    "Reach another user's payment method as one's own": Action(
        "GET /v1/me/payment-methods/{payment_method_id}",
        lambda c, s: c.get(f"/v1/me/payment-methods/{s.extra_methods[0]}"),
    ),
    "See a user's payment methods": Action(
        "GET /v1/users/{user_id}/payment-methods",
        lambda c, s: c.get(f"/v1/users/{s.extra}/payment-methods"),
        lambda s: s.extra_methods[0],
    ),
    "Add a payment method for a user": Action(
        "POST /v1/users/{user_id}/payment-methods",
        lambda c, s: c.post(f"/v1/users/{s.extra}/payment-methods", json=SAVE),
    ),
    "Change a user's default payment method": Action(
        "PATCH /v1/users/{user_id}/payment-methods/{payment_method_id}",
        lambda c, s: c.patch(f"/v1/users/{s.extra}/payment-methods/{s.extra_methods[1]}", json={"make_default": True}),
    ),
    "Delete a user's payment method": Action(
        "DELETE /v1/users/{user_id}/payment-methods/{payment_method_id}",
        lambda c, s: c.delete(f"/v1/users/{s.extra}/payment-methods/{s.extra_methods[0]}"),
    ),
    "Create a customer": Action(
        "POST /v1/users",
        lambda c, s: c.post("/v1/users", json={"email": _made(s), "name": "Made", "last_name": "Here"}),
    ),
    "Find a customer by email": Action(
        "GET /v1/users?email={email}",
        lambda c, s: c.get("/v1/users", params={"email": s.extra_email.upper()}),
        lambda s: s.extra,
    ),
    "Find its payments in the list": Action(
        "GET /v1/payments",
        lambda c, s: c.get("/v1/payments", params=_from(s, s.payment)),
        lambda s: s.payment,
    ),
    "See its memberships": Action(
        "GET /v1/organizations/{id}/memberships",
        lambda c, s: c.get(_org(s, "/memberships")),
        lambda s: s.organization_membership,
    ),
    "Use its memberships": Action(
        "GET /v1/me/entitlements/{feature}?organization_id={id}",
        lambda c, s: c.get(f"/v1/me/entitlements/{FEATURE}", params={"organization_id": s.organization}),
        lambda s: s.organization_membership,
    ),
    "See one's own memberships": Action(
        "GET /v1/me/memberships",
        lambda c, s: c.get("/v1/me/memberships", params=_from(s, s.my_membership or s.extra_membership)),
        lambda s: s.my_membership,
    ),
    "See a user's memberships": Action(
        "GET /v1/users/{user_id}/memberships",
        lambda c, s: c.get(f"/v1/users/{s.extra}/memberships"),
        lambda s: s.extra_membership,
    ),
    "Ask whether a user may use a feature": Action(
        "GET /v1/users/{user_id}/entitlements/{feature}",
        lambda c, s: c.get(f"/v1/users/{s.extra}/entitlements/{FEATURE}"),
        lambda s: s.extra_membership,
    ),
    "Grant a user a membership": Action(
        "POST /v1/users/{user_id}/memberships",
        lambda c, s: c.post(f"/v1/users/{s.extra}/memberships", json={"membership_type_id": s.membership_type}),
    ),
    "Cancel a membership": Action(
        "POST /v1/memberships/{membership_id}/cancel",
        lambda c, s: c.post(f"/v1/memberships/{s.extra_membership}/cancel", json={}),
    ),
    "Add an add-on to a membership": Action(
        "POST /v1/memberships/{membership_id}/addons",
        lambda c, s: c.post(f"/v1/memberships/{s.extra_membership}/addons", json={"feature": "matrix-more"}),
    ),
    "Remove an add-on from a membership": Action(
        "DELETE /v1/memberships/{membership_id}/addons/{feature}",
        lambda c, s: c.delete(f"/v1/memberships/{s.extra_membership}/addons/{ADDON}"),
    ),
}


# The world: people made once per database, a fresh organization per cell


@dataclass
class World:
    engine: Engine
    people: dict[str, Person]  # by column, for the columns that are users
    clients: dict[
        str, httpx.Client
    ]  # by column, each signed in as its principal (made once: each costs ~60 ms)

    def scene(self, column: str, subscriptions: bool = False) -> Scene:
        """``subscriptions``: give the organization live subscriptions (which would keep it from being deleted)."""
        me = self.people[column].id if column in self.people else None
        with transaction(session_factory(self.engine)) as session:

            def user(label: str) -> str:
                row = User(
                    name=label,
                    last_name="Tester",
                    email=f"{label}.{new_id('p').lower()}@example.com",
                    user_type="individual",
                    is_verified=True,
                )
                session.add(row)
                session.flush()
                return row.id

            def methods(**owner: str) -> tuple[str, str]:
                rows = [
                    PaymentMethod(
                        **owner, provider_id=PROVIDER, provider_payment_method_id=new_id("pm"),
                        payment_type="credit_card", card_brand="visa", last_four="4242",
                        expiry_month="12", expiry_year="2031", is_default=default,
                    )
                    for default in (True, False)
                ]
                session.add_all(rows)
                session.flush()
                return rows[0].id, rows[1].id

            def address(**owner: str) -> str:
                row = Address(**owner, **ADDRESS, is_default=True)
                session.add(row)
                session.flush()
                return row.id

            co_owner, extra, outsider = user("co-owner"), user("extra"), user("outsider")
            organization = Organization(name="Matrix Ltd", owner_user_id=self.people["owner"].id)
            session.add(organization)
            session.flush()
            members = {self.people[role].id: role for role in ROLES} | {co_owner: "owner", extra: "member"}
            session.add_all(
                OrganizationUser(organization_id=organization.id, user_id=u, role=r)
                for u, r in members.items()
            )
            outsider_email = session.get(User, outsider).email  # type: ignore[union-attr]
            invitation = OrganizationInvitation(
                organization_id=organization.id,
                email=f"invited.{organization.id.lower()}@example.com",
                role="member",
                token_hash=new_id("tok").lower().ljust(64, "0")[:64],
                expires_at=clock.now() + timedelta(days=7),
            )
            session.add(invitation)
            product = Product(name="Matrix manual", product_type="digital", price_cents=1500, currency="USD")
            session.add(product)
            session.flush()
            order = Order(
                order_number=new_id("mx"), organization_id=organization.id, subtotal_cents=1500, total_cents=1500,
                currency="USD", status="pending",
            )
            session.add(order)
            session.flush()
            session.add(OrderItem(order_id=order.id, product_id=product.id, quantity=1, unit_price_cents=1500, total_cents=1500))
            kind = MembershipType(name="Matrix pass", duration_type="lifetime", price_cents=1500, features=[FEATURE])
            paid = Order(
                order_number=new_id("mx"), organization_id=organization.id, subtotal_cents=1500, total_cents=1500,
                currency="USD", status="paid",
            )
            session.add_all([kind, paid])
            session.flush()
            payment = Payment(
                order_id=paid.id, organization_id=organization.id, provider_id=PROVIDER, amount_cents=1500,
                currency="USD", status="completed", completed_at=clock.now(),
            )
            session.add(payment)
            plan = Product(
                name="Matrix plan", product_type="subscription", is_recurring=True, billing_interval="monthly",
                trial_days=7, price_cents=1800, currency="USD",
            )
            session.add(plan)
            session.flush()

            def subscription(**extra: object) -> str:
                now = clock.now()
                row = Subscription(
                    organization_id=organization.id, product_id=plan.id, provider_id=PROVIDER, status="active",
                    current_period_start=now - timedelta(days=10), current_period_end=now + timedelta(days=20),
                    price_cents=1500, currency="USD", metadata_={"billing_interval": "monthly"},
                    cancel_at_period_end=bool(extra.get("ending")),
                )
                session.add(row)
                session.flush()
                session.add(SubscriptionBilling(
                    subscription_id=row.id, quantity=2, billing_anchor=now - timedelta(days=10),
                    paused_at=now if extra.get("ending") else None,
                ))
                session.flush()
                return row.id
            invoice = issue_invoice(
                session, currency="USD", organization_id=organization.id, lines=[LineIn("Matrix manual", 1500, product_id=product.id)]
            )
            charged = Payment(
                order_id=paid.id, organization_id=organization.id, provider_id=PROVIDER, provider_payment_id=new_id("ch"),
                amount_cents=1500, currency="USD", status="completed",
            )
            session.add(charged)
            session.flush()
            refund = Refund(payment_id=charged.id, order_id=paid.id, provider_id=PROVIDER, amount_cents=500, currency="USD", status="succeeded")
            session.add(refund)
            session.flush()
            note = CreditNote(
                credit_note_number=new_id("cnx"), invoice_id=invoice.id, refund_id=refund.id, amount_cents=500, currency="USD",
                issue_date=clock.now(),
            )
            session.add(note)
            session.flush()

            def membership(holder: str, **values: Any) -> str:
                row = UserMembership(
                    user_id=holder, membership_type_id=kind.id, status="active", start_date=clock.now(), **values
                )
                session.add(row)
                session.flush()
                return row.id

            return Scene(
                organization=organization.id,
                owner=self.people["owner"].id,
                co_owner=co_owner,
                extra=extra,
                extra_email=session.get(User, extra).email,  # type: ignore[union-attr]
                outsider_email=outsider_email,
                organization_address=address(organization_id=organization.id),
                extra_address=address(user_id=extra),
                invitation=invitation.id,
                me=me,
                my_address=address(user_id=me) if me else None,
                organization_methods=methods(organization_id=organization.id),
                extra_methods=methods(user_id=extra),
                my_methods=methods(user_id=me) if me else None,
                product=product.id,
                order=order.id,
                plan=plan.id,
                subscription=subscription() if subscriptions else "sub_none",
                ending=subscription(ending=True) if subscriptions else "sub_none",
                invoice=invoice.id,
                credit_note=note.id,
                payment=payment.id,
                organization_membership=membership(self.people["owner"].id, order_id=paid.id),
                extra_membership=membership(extra, addons=[{"feature": ADDON, "expires_at": None, "source": "manual"}]),
                # Ending, so that the organization's lifetime membership is the one named for FEATURE.
                my_membership=membership(me, end_date=clock.now() + timedelta(days=30)) if me else None,
                membership_type=kind.id,
            )

    def snapshot(self, scene: Scene) -> dict[str, Any]:
        """Every row a request in the matrix could change, in the scene and around it."""
        owners = [u for u in (scene.me, scene.extra) if u]
        with session_factory(self.engine)() as session:
            organization = session.get(Organization, scene.organization)
            members = session.execute(
                sa.select(OrganizationUser.user_id, OrganizationUser.role)
                .where(OrganizationUser.organization_id == scene.organization)
                .order_by(OrganizationUser.user_id)
            ).all()
            addresses = session.execute(
                sa.select(
                    Address.id, Address.user_id, Address.organization_id, Address.is_default, Address.city
                )
                .where(
                    sa.or_(
                        Address.organization_id == scene.organization,
                        sa.and_(Address.user_id.in_(owners), Address.organization_id.is_(None)),
                    )
                )
                .order_by(Address.id)
            ).all()
            owned = session.execute(
                sa.select(Organization.owner_user_id, sa.func.count())
                .where(Organization.owner_user_id.in_(owners))
                .group_by(Organization.owner_user_id)
                .order_by(Organization.owner_user_id)
            ).all()
            invitations = session.execute(
                sa.select(OrganizationInvitation.id, OrganizationInvitation.role, OrganizationInvitation.revoked_at)
                .where(OrganizationInvitation.organization_id == scene.organization)
                .order_by(OrganizationInvitation.id)
            ).all()
            payment_methods = session.execute(
                sa.select(
                    PaymentMethod.id, PaymentMethod.user_id, PaymentMethod.organization_id, PaymentMethod.is_default
                )
                .where(
                    sa.or_(
                        PaymentMethod.organization_id == scene.organization,
                        sa.and_(PaymentMethod.user_id.in_(owners), PaymentMethod.organization_id.is_(None)),
                    )
                )
                .order_by(PaymentMethod.id)
            ).all()
            orders = session.execute(
                sa.select(Order.id, Order.status, sa.func.count(Payment.id))
                .outerjoin(Payment, Payment.order_id == Order.id)
                .where(Order.organization_id == scene.organization)
                .group_by(Order.id, Order.status)
                .order_by(Order.id)
            ).all()
            memberships = session.execute(
                sa.select(UserMembership.id, UserMembership.status, UserMembership.end_date, UserMembership.addons)
                .where(UserMembership.user_id.in_([*owners, scene.owner]))
                .order_by(UserMembership.id)
            ).all()
            subscriptions = session.execute(
                sa.select(
                    Subscription.id, Subscription.status, Subscription.cancel_at_period_end, Subscription.price_cents,
                    SubscriptionBilling.quantity, SubscriptionBilling.credit_cents, SubscriptionBilling.paused_at,
                )
                .join(SubscriptionBilling, SubscriptionBilling.subscription_id == Subscription.id)
                .where(Subscription.organization_id == scene.organization)
                .order_by(Subscription.id)
            ).all()
            made = session.scalar(sa.select(sa.func.count()).select_from(User).where(User.email == _made(scene)))
            return {
                "customers made": made,
                "memberships": [(m[0], m[1], m[2], repr(m[3])) for m in memberships],
                "subscriptions": [tuple(x) for x in subscriptions],
                "orders": [tuple(o) for o in orders],
                "payment methods": [tuple(m) for m in payment_methods],
                "organization": organization and (organization.name, organization.owner_user_id),
                "invitations": [tuple(i) for i in invitations],
                "members": [tuple(m) for m in members],
                "addresses": [tuple(a) for a in addresses],
                "organizations owned": [tuple(o) for o in owned],
            }


@pytest.fixture(scope="module")
def world(backend: str, migrated: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    engine = migrated.engine(backend)
    people = {column: person(engine, column.replace(" ", "-")) for column in ROLES + ("non-member",)}
    people["admin user"] = person(engine, "shop-admin", user_type="admin")
    keys = {}
    with transaction(session_factory(engine)) as session:
        if session.get(PaymentProvider, PROVIDER) is None:
            session.add(PaymentProvider(
                id=PROVIDER, display_name="Matrix sandbox", config={"kind": "sandbox"}, supports_saved_methods=True
            ))
        for column, scope in (("API key (read)", "read"), ("API key (write)", "write")):
            keys[column] = create_api_key(session, name=column, scopes=[scope], created_by=None)[1]
    tokens = {column: p.token for column, p in people.items()} | keys
    with serving(engine, tmp_path_factory.mktemp("permissions")) as url:
        clients = {
            c: httpx.Client(base_url=url, headers={"Authorization": f"Bearer {t}"}, timeout=30)
            for c, t in tokens.items()
        }
        yield World(engine, people, clients)
        for client in clients.values():
            client.close()


ROWS = read_matrix()
CELLS = [
    pytest.param(
        row.action,
        column,
        outcome,
        id=f"{re.sub(r'[^a-z0-9]+', '-', row.action.lower()).strip('-')}--{column}",
    )
    for row in ROWS
    if row.request != "later"
    for column, outcome in row.cells.items()
    if outcome != "—"
]


def test_the_matrix_names_a_request_for_every_row_and_a_known_outcome_in_every_cell() -> None:
    built = {row.action: row.request for row in ROWS if row.request != "later"}
    assert set(built) == set(ACTIONS), (
        "a row of docs/permissions.md without a request here, or the other way round"
    )
    for action, request in built.items():
        assert request == ACTIONS[action].request, action
    for row in ROWS:
        assert set(row.cells.values()) <= set(OUTCOMES), row
        if re.match(r"(later|[A-Z]+ /v1/organizations/)", row.request):
            assert row.cells["non-member"] == "404", (
                f"{row.action}: an outsider must not learn the organization exists"
            )


def _only_ids(document: Any) -> bool:
    """Nothing in ``document`` but ids (``id`` members, at any depth)."""
    if isinstance(document, list):
        return all(_only_ids(item) for item in document)
    if isinstance(document, dict):
        return all(key == "id" or (isinstance(value, dict | list) and _only_ids(value)) for key, value in document.items())
    return False


@pytest.mark.parametrize(("action", "column", "outcome"), CELLS)
def test_each_cell_of_the_matrix(world: World, action: str, column: str, outcome: str) -> None:
    scene = world.scene(column, subscriptions="/v1/subscriptions" in ACTIONS[action].request)
    before = world.snapshot(scene)
    answer = ACTIONS[action].send(world.clients[column], scene)
    method = answer.request.method
    after = world.snapshot(scene)
    assert method == ACTIONS[action].request.split()[0]
    if outcome == "✓":
        assert 200 <= answer.status_code < 300, answer.text
        shows = ACTIONS[action].shows
        if method == "GET":
            assert shows is not None and shows(scene) in answer.text, "an allowed read shows the thing"
        else:
            assert after != before, "an allowed write changes something"
            if column == "API key (write)" and answer.content:
                assert _only_ids(answer.json()), f"a key that may not read gets ids back, not what it wrote: {answer.text}"
    elif outcome == "hidden":
        assert answer.status_code == 200 and scene.organization not in answer.text
    else:
        assert answer.status_code == int(outcome), answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert after == before, "a refused request changes nothing"
