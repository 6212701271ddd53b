"""Memberships over real HTTP on each database with a frozen clock: a fixed membership bought
through checkout lasts exactly duration_days (allowed one second before its end, refused at it);
an organization's membership serves every member and no one else; add-ons with their own expiry;
admins grant and cancel."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.kit import clock
from billfold.kit.db import session_factory, transaction
from billfold.memberships import may_use
from billfold.memberships.service import grant_for_order
from billfold.models import MembershipType, Order, UserMembership
from tests.accounts import Api
from tests.test_checkout import HOME, checkout, customer, events, order, product
from tests.test_organizations import add_member, assert_problem, create_organization, person


def z(moment: datetime) -> str:
    """How the API writes an instant."""
    return moment.isoformat().replace("+00:00", "Z")


def membership_type(engine: Engine, duration_type: str = "fixed", days: int | None = 30, features: list[str] | None = None) -> str:
    with transaction(session_factory(engine)) as session:
        made = MembershipType(
            name=f"{duration_type} pass", duration_type=duration_type, duration_days=days, price_cents=4900,
            features=features if features is not None else ["reports", "exports"],
        )
        session.add(made)
        session.flush()
        return made.id


def selling(engine: Engine, membership_type_id: str) -> str:
    return product(engine, 4900, metadata_={"membership_type_id": membership_type_id})


def allowed(engine: Engine, user_id: str, feature: str, organization_id: str | None = None, at: datetime | None = None) -> bool:
    with session_factory(engine)() as session:
        return may_use(session, user_id=user_id, feature=feature, organization_id=organization_id, at=at)


def test_a_fixed_membership_bought_through_checkout_lasts_exactly_its_duration(
    frozen_clock: clock.FrozenClock, api: Api, engine: Engine
) -> None:
    start = frozen_clock.now()
    ada = customer(api, engine)
    kind = membership_type(engine, "fixed", 30)
    made = order(api, ada.token, (selling(engine, kind), 1))
    with api.client(ada.token) as client:
        assert checkout(client, made["id"]).status_code == 200
        [mine] = client.get("/v1/me/memberships").json()["data"]
        assert (mine["membership_type_id"], mine["order_id"], mine["status"], mine["grants"]) == (kind, made["id"], "active", True)
        end = start + timedelta(days=30)
        assert mine["start_date"] == z(start) and mine["end_date"] == z(end)
        assert mine["organization_id"] is None and mine["auto_renew"] is False
        answer = client.get("/v1/me/entitlements/reports").json()
        assert answer == {
            "feature": "reports", "allowed": True, "membership_id": mine["id"], "until": z(end),
            "via": "membership", "organization_id": None,
        }
        assert client.get("/v1/me/entitlements/payroll").json()["allowed"] is False
    assert events(engine, mine["id"]) == ["membership.active"]
    with transaction(session_factory(engine)) as session:  # paid twice over: still one membership
        assert grant_for_order(session, session.get(Order, made["id"])) == []
        assert session.scalar(sa.select(sa.func.count()).where(UserMembership.order_id == made["id"])) == 1
    frozen_clock.set(end - timedelta(seconds=1))
    assert allowed(engine, ada.id, "reports"), "one second before its end"
    frozen_clock.set(end)
    assert not allowed(engine, ada.id, "reports"), "the end is exclusive"
    assert allowed(engine, ada.id, "reports", at=end - timedelta(seconds=1))


def test_a_lifetime_membership_never_ends(frozen_clock: clock.FrozenClock, api: Api, engine: Engine) -> None:
    ada = customer(api, engine)
    kind = membership_type(engine, "lifetime", None, ["archive"])
    made = order(api, ada.token, (selling(engine, kind), 1))
    with api.client(ada.token) as client:
        assert checkout(client, made["id"]).status_code == 200
        [mine] = client.get("/v1/me/memberships").json()["data"]
    assert mine["end_date"] is None and mine["until"] is None
    frozen_clock.advance(timedelta(days=365 * 50 + 12))
    assert allowed(engine, ada.id, "archive"), "fifty years on"


def test_an_organizations_membership_serves_its_members_and_no_one_else(
    frozen_clock: clock.FrozenClock, api: Api, engine: Engine
) -> None:
    owner, member, outsider = (person(engine, n) for n in ("owner", "member", "outsider"))
    organization = create_organization(api, owner)
    add_member(api, owner, organization, member, "member")
    with api.client(owner.token) as client:
        assert client.post(f"/v1/organizations/{organization}/addresses", json=HOME).status_code == 201
    kind = membership_type(engine, "fixed", 365, ["seats"])
    made = order(api, owner.token, (selling(engine, kind), 1), organization_id=organization)
    with api.client(owner.token) as client:
        assert checkout(client, made["id"]).status_code == 200
        assert client.get("/v1/me/memberships").json()["data"] == [], "it is the organization's, not the owner's own"
    with api.client(member.token) as client:
        [theirs] = client.get(f"/v1/organizations/{organization}/memberships").json()["data"]
        assert theirs["organization_id"] == organization and theirs["user_id"] == owner.id
        answer = client.get("/v1/me/entitlements/seats", params={"organization_id": organization}).json()
        assert answer["allowed"] and answer["membership_id"] == theirs["id"] and answer["organization_id"] == organization
        assert client.get("/v1/me/entitlements/seats").json()["allowed"] is False, "only for the organization"
    with api.client(outsider.token) as client:
        assert_problem(client.get("/v1/me/entitlements/seats", params={"organization_id": organization}), 404, "not_found")
        assert client.get(f"/v1/organizations/{organization}/memberships").status_code == 404
    assert allowed(engine, member.id, "seats", organization)
    assert allowed(engine, owner.id, "seats", organization)
    assert not allowed(engine, outsider.id, "seats", organization), "not a member"
    with api.client(owner.token) as client:
        assert client.delete(f"/v1/organizations/{organization}/members/{member.id}").status_code == 204
    assert not allowed(engine, member.id, "seats", organization), "a member who leaves loses it"


def test_add_ons_have_their_own_expiry_and_admins_grant_and_cancel(
    frozen_clock: clock.FrozenClock, api: Api, engine: Engine, admin_token: str
) -> None:
    now = frozen_clock.now()
    ada = person(engine, "ada")
    kind = membership_type(engine, "fixed", 90, ["reports"])
    with api.client(admin_token) as admin:
        granted = admin.post(f"/v1/users/{ada.id}/memberships", json={"membership_type_id": kind, "reason": "goodwill"})
        assert granted.status_code == 201, granted.text
        membership = granted.json()["id"]
        assert granted.json()["end_date"] == z(now + timedelta(days=90))
        until = now + timedelta(days=10)
        added = admin.post(f"/v1/memberships/{membership}/addons", json={"feature": "api", "expires_at": z(until)})
        assert added.status_code == 200, added.text
        assert added.json()["addons"] == [{"feature": "api", "expires_at": z(until), "source": "manual", "active": True}]
        assert admin.post(f"/v1/memberships/{membership}/addons", json={"feature": "sso"}).status_code == 200
        assert [a["feature"] for a in admin.get(f"/v1/users/{ada.id}/memberships").json()["data"][0]["addons"]] == ["api", "sso"]
    with api.client(ada.token) as client:
        answer = client.get("/v1/me/entitlements/api").json()
        assert answer["allowed"] and answer["via"] == "addon" and answer["until"] == z(until)
        assert client.post(f"/v1/memberships/{membership}/addons", json={"feature": "x"}).status_code == 403
    assert allowed(engine, ada.id, "api", at=until - timedelta(seconds=1))
    assert not allowed(engine, ada.id, "api", at=until), "the add-on's own expiry"
    assert allowed(engine, ada.id, "reports", at=until) and allowed(engine, ada.id, "sso", at=until)
    assert not allowed(engine, ada.id, "sso", at=now + timedelta(days=90)), "an add-on ends with its membership"
    with api.client(admin_token) as admin:
        removed = admin.delete(f"/v1/memberships/{membership}/addons/sso")
        assert removed.status_code == 200 and [a["feature"] for a in removed.json()["addons"]] == ["api"]
        assert_problem(admin.delete(f"/v1/memberships/{membership}/addons/sso"), 404, "not_found")
        assert not allowed(engine, ada.id, "sso")
        cancelled = admin.post(f"/v1/memberships/{membership}/cancel", json={"reason": "chargeback"})
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert admin.post(f"/v1/memberships/{membership}/cancel", json={}).json()["status"] == "cancelled"
        bad = admin.post(f"/v1/users/{ada.id}/memberships", json={"membership_type_id": kind, "end_date": "2020-01-01T00:00:00Z"})
        assert_problem(bad, 422, "invalid_input", "end_date")
        assert admin.post(f"/v1/users/{ada.id}/memberships", json={"membership_type_id": "mtyp_nothing"}).status_code == 404
    assert not allowed(engine, ada.id, "reports") and not allowed(engine, ada.id, "api")
    assert events(engine, membership) == [
        "membership.active", "membership.addon_added", "membership.addon_added", "membership.addon_removed",
        "membership.cancelled",
    ]


def test_a_refund_ends_what_it_paid_for_a_partial_refund_keeps_access(
    frozen_clock: clock.FrozenClock, api: Api, engine: Engine, admin_token: str
) -> None:
    """The rule (docs/memberships.md): a partial refund of an order leaves the order paid and its
    memberships granting; the refund that makes the order refunded in full cancels them from now."""
    ada = customer(api, engine)
    kind = membership_type(engine, "lifetime", None, ["vault"])
    made = order(api, ada.token, (selling(engine, kind), 1))
    with api.client(ada.token) as client:
        paid = checkout(client, made["id"])
        assert paid.status_code == 200, paid.text
    payment_id = paid.json()["payment"]["id"]
    total = paid.json()["payment"]["amount_cents"]
    with api.client(admin_token) as admin:
        part = admin.post(f"/v1/payments/{payment_id}/refunds", json={"amount_cents": 1000, "reason": "goodwill"})
        assert part.status_code == 201, part.text
    with api.client(ada.token) as client:
        answer = client.get("/v1/me/entitlements/vault").json()
        assert answer["allowed"] is True and answer["until"] is None, "a partial refund keeps access"
    frozen_clock.advance(timedelta(hours=1))
    with api.client(admin_token) as admin:
        rest = admin.post(f"/v1/payments/{payment_id}/refunds", json={"reason": "changed their mind"})
        assert rest.status_code == 201, rest.text
        assert admin.get(f"/v1/orders/{made['id']}").json()["status"] == "refunded"
    with api.client(ada.token) as client:
        assert client.get("/v1/me/entitlements/vault").json() == {
            "feature": "vault", "allowed": False, "membership_id": None, "until": None, "via": None, "organization_id": None,
        }, f"refunded {total} in full: the lifetime membership ends"
        [mine] = client.get("/v1/me/memberships").json()["data"]
    assert (mine["status"], mine["grants"], mine["end_date"], mine["auto_renew"]) == ("cancelled", False, z(frozen_clock.now()), False)
    assert events(engine, mine["id"]) == ["membership.active", "membership.cancelled"]
    assert not allowed(engine, ada.id, "vault")
