"""Organizations over real HTTP, on each database: creating one makes the creator its owner; owners
and admins manage members and settings; ownership passes by transfer; the primary owner cannot
leave; deleting keeps what the financial records need; strangers cannot tell it exists."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.accounts.sessions import open_session
from billfold.kit.db import session_factory, transaction
from billfold.kit.ids import new_id
from billfold.models import Organization, OrganizationUser, PaymentEvent, User
from tests import factories as make
from tests.accounts import Api


@dataclass(frozen=True)
class Person:
    """A user made directly in the database (no password, so no Argon2 hash), signed in."""

    id: str
    email: str
    token: str


def person(
    engine: Engine, label: str = "someone", *, verified: bool = True, user_type: str = "individual"
) -> Person:
    email = f"{label}.{new_id('p').lower()}@example.com"
    with transaction(session_factory(engine)) as session:
        user = User(
            name=label.title(), last_name="Tester", email=email, user_type=user_type, is_verified=verified
        )
        session.add(user)
        session.flush()
        _, token = open_session(session, user, transport="bearer", address=None, user_agent="tests", days=1)
        return Person(user.id, email, token)


def api_key(api: Api, admin_token: str, *scopes: str) -> str:
    with api.client(admin_token) as admin:
        made = admin.post("/v1/api-keys", json={"name": "backend", "scopes": list(scopes)})
    assert made.status_code == 201, made.text
    return made.json()["secret"]


def create_organization(api: Api, owner: Person, name: str = "Analytical Engines Ltd") -> str:
    with api.client(owner.token) as client:
        made = client.post("/v1/organizations", json={"name": name})
    assert made.status_code == 201, made.text
    return made.json()["id"]


def add_member(api: Api, by: Person, organization_id: str, someone: Person, role: str = "member") -> None:
    with api.client(by.token) as client:
        added = client.post(
            f"/v1/organizations/{organization_id}/members", json={"email": someone.email, "role": role}
        )
    assert added.status_code == 201, added.text


def roles(engine: Engine, organization_id: str) -> dict[str, str]:
    with session_factory(engine)() as session:
        rows = session.execute(
            sa.select(OrganizationUser.user_id, OrganizationUser.role).where(
                OrganizationUser.organization_id == organization_id
            )
        ).all()
    return dict(rows)  # type: ignore[arg-type]


def primary_owner(engine: Engine, organization_id: str) -> str | None:
    with session_factory(engine)() as session:
        return session.scalar(sa.select(Organization.owner_user_id).where(Organization.id == organization_id))


def events(engine: Engine, organization_id: str) -> list[str]:
    with session_factory(engine)() as session:
        return list(
            session.scalars(
                sa.select(PaymentEvent.event_type)
                .where(PaymentEvent.entity_id == organization_id)
                .order_by(PaymentEvent.id)
            )
        )


def assert_problem(answer: httpx.Response, status: int, code: str, field: str | None = None) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["code"] == code, problem
    if field is not None:
        assert field in {e["field"] for e in problem["errors"]}, problem
    return problem


def test_creating_an_organization_makes_the_creator_its_owner(api: Api, engine: Engine) -> None:
    ada = person(engine, "ada")
    with api.client(ada.token) as client:
        made = client.post(
            "/v1/organizations",
            json={
                "name": "  Analytical Engines Ltd ",
                "business_email": "Billing@Engines.example",
                "tax_id": "GB123456789",
            },
        )
        assert made.status_code == 201, made.text
        organization = made.json()
        assert (
            organization["name"] == "Analytical Engines Ltd"
            and organization["business_email"] == "billing@engines.example"
        )
        assert organization["owner_user_id"] == ada.id and organization["role"] == "owner"
        assert organization["id"].startswith("org_")
        members = client.get(f"/v1/organizations/{organization['id']}/members").json()["data"]
    assert [(m["user_id"], m["role"], m["is_primary_owner"], m["email"]) for m in members] == [
        (ada.id, "owner", True, ada.email)
    ]
    assert roles(engine, organization["id"]) == {ada.id: "owner"}
    assert primary_owner(engine, organization["id"]) == ada.id
    assert events(engine, organization["id"]) == ["created"]


def test_a_user_lists_only_their_organizations_and_an_admin_lists_all(
    api: Api, engine: Engine, admin_token: str
) -> None:
    ada, bob = person(engine, "ada"), person(engine, "bob")
    first, second = create_organization(api, ada, "First"), create_organization(api, ada, "Second")
    bobs = create_organization(api, bob, "Bob's")
    with api.client(ada.token) as client:
        page = client.get("/v1/organizations", params={"limit": 1}).json()
        assert [o["id"] for o in page["data"]] == [first] and page["has_more"] is True
        rest = client.get("/v1/organizations", params={"starting_after": first}).json()
        assert [o["id"] for o in rest["data"]] == [second] and rest["has_more"] is False
    with api.client(admin_token) as admin:
        listed = admin.get("/v1/organizations", params={"starting_after": first[:-1], "limit": 100}).json()[
            "data"
        ]
    assert [o["id"] for o in listed if o["id"] in (first, second, bobs)] == [first, second, bobs]
    assert all(o["role"] is None for o in listed), "the shop's admin is no member"


def test_an_api_key_creates_an_organization_for_the_owner_it_names(
    api: Api, engine: Engine, admin_token: str
) -> None:
    ada, eve = person(engine, "ada"), person(engine, "eve")
    with api.client(api_key(api, admin_token, "write")) as backend:
        assert_problem(
            backend.post("/v1/organizations", json={"name": "Nobody's"}),
            403,
            "forbidden",
            "owner_user_id",
        )
        assert_problem(
            backend.post("/v1/organizations", json={"name": "Ghost's", "owner_user_id": "usr_nobody"}),
            404,
            "not_found",
            "owner_user_id",
        )
        made = backend.post("/v1/organizations", json={"name": "Ada's", "owner_user_id": ada.id})
    # A key without read gets the id of what it made, not the organization (docs/permissions.md).
    assert made.status_code == 201 and list(made.json()) == ["id"]
    assert roles(engine, made.json()["id"]) == {ada.id: "owner"}
    with api.client(eve.token) as client:
        refused = client.post("/v1/organizations", json={"name": "Ada's too", "owner_user_id": ada.id})
    assert_problem(refused, 403, "forbidden")
    with session_factory(engine)() as session:
        assert (
            session.scalar(
                sa.select(sa.func.count())
                .select_from(Organization)
                .where(Organization.owner_user_id == ada.id)
            )
            == 1
        )


def test_owners_and_admins_change_the_settings_and_a_bad_setting_changes_nothing(
    api: Api, engine: Engine
) -> None:
    ada, ann = person(engine, "ada"), person(engine, "ann")
    organization = create_organization(api, ada, "Engines")
    add_member(api, ada, organization, ann, "admin")
    with api.client(ann.token) as admin:
        changed = admin.patch(
            f"/v1/organizations/{organization}",
            json={"business_phone": "+442079460000", "address": "12 St James's Square"},
        )
        assert changed.status_code == 200 and changed.json()["business_phone"] == "+442079460000"
        assert changed.json()["name"] == "Engines" and changed.json()["role"] == "admin"
        for body, field in [
            ({"name": None}, "name"),
            ({"name": "   "}, "name"),
            ({"business_email": "not an address"}, "business_email"),
            ({"business_phone": "020 7946 0000"}, "business_phone"),
            ({"owner_user_id": ann.id}, "owner_user_id"),
            ({"name": "x" * 256}, "name"),
        ]:
            assert_problem(
                admin.patch(f"/v1/organizations/{organization}", json=body), 422, "invalid_input", field
            )
        nul = admin.patch(f"/v1/organizations/{organization}", json={"tax_id": "GB\x00123"})
        assert_problem(nul, 422, "invalid_input")  # refused at the door, for every field alike
        assert "NUL" in nul.json()["detail"]
        after = admin.get(f"/v1/organizations/{organization}").json()
    assert (after["name"], after["business_phone"], after["address"], after["owner_user_id"]) == (
        "Engines",
        "+442079460000",
        "12 St James's Square",
        ada.id,
    )
    assert events(engine, organization).count("updated") == 1


def test_an_owner_adds_a_member_by_email_who_is_told_by_email(api: Api, engine: Engine) -> None:
    ada, bob = person(engine, "ada"), person(engine, "bob")
    organization = create_organization(api, ada, "Engines")
    with api.client(ada.token) as client:
        added = client.post(
            f"/v1/organizations/{organization}/members", json={"email": bob.email.upper(), "role": "billing"}
        )
        assert added.status_code == 201, added.text
        assert (added.json()["user_id"], added.json()["role"], added.json()["is_primary_owner"]) == (
            bob.id,
            "billing",
            False,
        )
        again = client.post(
            f"/v1/organizations/{organization}/members", json={"email": bob.email, "role": "admin"}
        )
        assert_problem(again, 409, "already_member", "email")
        assert_problem(
            client.post(
                f"/v1/organizations/{organization}/members", json={"email": bob.email, "role": "boss"}
            ),
            422,
            "invalid_input",
            "role",
        )
    assert roles(engine, organization) == {ada.id: "owner", bob.id: "billing"}
    mail = api.mails_to(bob.email)
    assert len(mail) == 1 and "Engines" in mail[0]["Subject"] and "as billing" in mail[0].get_content()
    with api.client(bob.token) as client:
        mine = client.get("/v1/organizations").json()["data"]
    assert [(o["id"], o["role"]) for o in mine] == [(organization, "billing")]


def test_someone_without_a_confirmed_account_is_pointed_to_an_invitation(
    api: Api, engine: Engine, address: str
) -> None:
    ada = person(engine, "ada")
    organization = create_organization(api, ada)
    with api.client(ada.token) as client:
        nobody = assert_problem(
            client.post(f"/v1/organizations/{organization}/members", json={"email": address}),
            404,
            "no_account",
            "email",
        )
        assert "invite them" in nobody["detail"]
        api.sign_up(address, verify=False)
        unconfirmed = assert_problem(
            client.post(f"/v1/organizations/{organization}/members", json={"email": address}),
            409,
            "account_unconfirmed",
            "email",
        )
        assert "confirm" in unconfirmed["detail"]
        assert len(roles(engine, organization)) == 1
        with api.client() as newcomer:
            assert (
                newcomer.post(
                    "/v1/auth/verify-email", json={"token": api.token_mailed_to(address)}
                ).status_code
                == 200
            )
        assert (
            client.post(f"/v1/organizations/{organization}/members", json={"email": address}).status_code
            == 201
        )
    assert sorted(roles(engine, organization).values()) == ["member", "owner"]


def test_admins_manage_members_but_only_owners_touch_the_owner_role(api: Api, engine: Engine) -> None:
    ada, ann, bob, cat = (
        person(engine, "ada"),
        person(engine, "ann"),
        person(engine, "bob"),
        person(engine, "cat"),
    )
    organization = create_organization(api, ada)
    add_member(api, ada, organization, ann, "admin")
    add_member(api, ann, organization, bob)
    with api.client(ann.token) as admin:
        assert (
            admin.patch(
                f"/v1/organizations/{organization}/members/{bob.id}", json={"role": "billing"}
            ).json()["role"]
            == "billing"
        )
        refused = assert_problem(
            admin.patch(f"/v1/organizations/{organization}/members/{bob.id}", json={"role": "owner"}),
            403,
            "role_required",
        )
        assert refused["role"] == "admin" and refused["roles_allowed"] == ["owner"]
        assert_problem(
            admin.post(
                f"/v1/organizations/{organization}/members", json={"email": cat.email, "role": "owner"}
            ),
            403,
            "role_required",
        )
        assert_problem(
            admin.patch(f"/v1/organizations/{organization}/members/usr_nobody", json={"role": "member"}),
            404,
            "not_found",
        )
    with api.client(ada.token) as owner:
        assert (
            owner.patch(f"/v1/organizations/{organization}/members/{bob.id}", json={"role": "owner"}).json()[
                "role"
            ]
            == "owner"
        )
    with api.client(ann.token) as admin:
        assert_problem(
            admin.delete(f"/v1/organizations/{organization}/members/{bob.id}"), 403, "role_required"
        )
        assert_problem(
            admin.patch(f"/v1/organizations/{organization}/members/{bob.id}", json={"role": "member"}),
            403,
            "role_required",
        )
    assert roles(engine, organization) == {ada.id: "owner", ann.id: "admin", bob.id: "owner"}
    assert events(engine, organization).count("member_role_changed") == 2


def test_the_last_owner_cannot_leave_be_demoted_or_removed(
    api: Api, engine: Engine, admin_token: str
) -> None:
    ada, bob = person(engine, "ada"), person(engine, "bob")
    organization = create_organization(api, ada)
    add_member(api, ada, organization, bob)
    with api.client(ada.token) as owner:
        leaving = assert_problem(
            owner.delete(f"/v1/organizations/{organization}/members/{ada.id}"), 409, "primary_owner_required"
        )
        assert "only owner" in leaving["detail"] and "transfer-ownership" in leaving["detail"]
        assert_problem(
            owner.patch(f"/v1/organizations/{organization}/members/{ada.id}", json={"role": "admin"}),
            409,
            "primary_owner_required",
        )
    with api.client(admin_token) as shop:
        assert_problem(
            shop.delete(f"/v1/organizations/{organization}/members/{ada.id}"), 409, "primary_owner_required"
        )
    assert roles(engine, organization) == {ada.id: "owner", bob.id: "member"}


def test_a_co_owner_may_leave_but_the_primary_owner_must_transfer_first(api: Api, engine: Engine) -> None:
    ada, bob = person(engine, "ada"), person(engine, "bob")
    organization = create_organization(api, ada)
    add_member(api, ada, organization, bob, "owner")
    with api.client(bob.token) as co_owner:
        primary = assert_problem(
            co_owner.delete(f"/v1/organizations/{organization}/members/{ada.id}"),
            409,
            "primary_owner_required",
        )
        assert "primary owner" in primary["detail"]
        assert co_owner.delete(f"/v1/organizations/{organization}/members/{bob.id}").status_code == 204
        assert_problem(co_owner.get(f"/v1/organizations/{organization}"), 404, "not_found")
    assert roles(engine, organization) == {ada.id: "owner"}
    assert events(engine, organization)[-1] == "member_left"


def test_a_member_may_leave_and_then_no_longer_sees_the_organization(api: Api, engine: Engine) -> None:
    ada, bob = person(engine, "ada"), person(engine, "bob")
    organization = create_organization(api, ada)
    add_member(api, ada, organization, bob)
    with api.client(bob.token) as member:
        assert_problem(
            member.delete(f"/v1/organizations/{organization}/members/{ada.id}"), 403, "role_required"
        )
        assert member.delete(f"/v1/organizations/{organization}/members/{bob.id}").status_code == 204
        assert member.get("/v1/organizations").json()["data"] == []
        assert_problem(member.get(f"/v1/organizations/{organization}/members"), 404, "not_found")
    assert roles(engine, organization) == {ada.id: "owner"}


def test_transferring_ownership_makes_a_member_the_owner_and_the_owner_an_admin(
    api: Api, engine: Engine
) -> None:
    ada, bob, eve = person(engine, "ada"), person(engine, "bob"), person(engine, "eve")
    organization = create_organization(api, ada)
    add_member(api, ada, organization, bob)
    with api.client(ada.token) as owner:
        assert_problem(
            owner.post(f"/v1/organizations/{organization}/transfer-ownership", json={"user_id": eve.id}),
            404,
            "not_found",
            "user_id",
        )
        moved = owner.post(f"/v1/organizations/{organization}/transfer-ownership", json={"user_id": bob.id})
        assert (
            moved.status_code == 200
            and moved.json()["owner_user_id"] == bob.id
            and moved.json()["role"] == "admin"
        )
        assert_problem(owner.delete(f"/v1/organizations/{organization}"), 403, "role_required")
        assert owner.delete(f"/v1/organizations/{organization}/members/{ada.id}").status_code == 204, (
            "no longer the owner, she may leave"
        )
    assert primary_owner(engine, organization) == bob.id
    assert roles(engine, organization) == {bob.id: "owner"}
    assert "ownership_transferred" in events(engine, organization)


def test_deleting_an_organization_removes_it_and_its_members(api: Api, engine: Engine) -> None:
    ada, bob = person(engine, "ada"), person(engine, "bob")
    organization = create_organization(api, ada)
    add_member(api, ada, organization, bob, "admin")
    with api.client(bob.token) as admin:
        assert_problem(admin.delete(f"/v1/organizations/{organization}"), 403, "role_required")
    with api.client(ada.token) as owner:
        deleted = owner.delete(f"/v1/organizations/{organization}")
        assert deleted.status_code == 200 and deleted.json() == {
            "id": organization,
            "outcome": "deleted",
            "kept": {},
        }
        assert_problem(owner.get(f"/v1/organizations/{organization}"), 404, "not_found")
    assert primary_owner(engine, organization) is None and roles(engine, organization) == {}


def test_an_organization_with_orders_is_kept_anonymised_and_one_with_live_subscriptions_is_not_deleted(
    api: Api, engine: Engine, admin_token: str
) -> None:
    ada = person(engine, "ada")
    bought, subscribed = create_organization(api, ada, "Bought"), create_organization(api, ada, "Subscribed")
    with transaction(session_factory(engine)) as session:
        make.order(session, organization=session.get(Organization, bought))
        make.subscription(session, organization=session.get(Organization, subscribed))
    with api.client(ada.token) as owner:
        kept = owner.delete(f"/v1/organizations/{bought}")
        assert (
            kept.status_code == 200
            and kept.json()["outcome"] == "anonymised"
            and kept.json()["kept"] == {"orders": 1}
        )
        assert_problem(owner.get(f"/v1/organizations/{bought}"), 404, "not_found")
        live = assert_problem(owner.delete(f"/v1/organizations/{subscribed}"), 409, "conflict")
        assert "live subscription" in live["detail"]
    with api.client(admin_token) as shop:
        assert shop.get(f"/v1/organizations/{bought}").json()["name"] == "Bought", (
            "invoices must still name it"
        )
    assert roles(engine, bought) == {} and roles(engine, subscribed) == {ada.id: "owner"}


def test_a_stranger_cannot_tell_an_organization_from_one_that_does_not_exist(
    api: Api, engine: Engine
) -> None:
    ada, eve = person(engine, "ada"), person(engine, "eve")
    organization = create_organization(api, ada)
    made_up = new_id("org")
    with api.client(eve.token) as stranger:
        for path in ("", "/members", f"/members/{ada.id}", "/addresses"):
            real = stranger.get(f"/v1/organizations/{organization}{path}")
            fake = stranger.get(f"/v1/organizations/{made_up}{path}")
            assert real.status_code == fake.status_code == 404
            assert real.json()["detail"].replace(organization, "ID") == fake.json()["detail"].replace(
                made_up, "ID"
            )
        answer = stranger.patch(f"/v1/organizations/{organization}", json={"name": "Mine now"})
    assert_problem(answer, 404, "not_found")
    assert primary_owner(engine, organization) == ada.id


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/organizations/org_%00", 422, "invalid_input"),  # NUL is refused at the door
        ("/v1/organizations/" + "x" * 2000, 404, "not_found"),
        ("/v1/organizations/ORG_1/members/usr_%00", 422, "invalid_input"),
        ("/v1/organizations/org_1/addresses/adr_1", 404, "not_found"),
    ],
    ids=["nul", "long", "nul-member", "short-ids"],
)
def test_a_malformed_id_is_not_found_not_an_error(api: Api, engine: Engine, path: str, status: int, code: str) -> None:
    ada = person(engine, "ada")
    with api.client(ada.token) as client:
        assert_problem(client.get(path), status, code)
        assert_problem(client.delete(path), status, code)


def test_a_malformed_page_cursor_is_refused_naming_it(api: Api, engine: Engine) -> None:
    ada = person(engine, "ada")
    organization = create_organization(api, ada)
    with api.client(ada.token) as client:
        for path in ("/v1/organizations", f"/v1/organizations/{organization}/members", "/v1/me/addresses"):
            refused = client.get(path, params={"starting_after": "x" * 300})
            assert_problem(refused, 422, "invalid_input", "starting_after")
            nul = client.get(path, params={"starting_after": "org_\x00"})
            assert_problem(nul, 422, "invalid_input")
            assert "NUL" in nul.json()["detail"]


def test_every_organization_endpoint_is_documented_with_its_problems(api: Api) -> None:
    document = httpx.get(f"{api.url}/openapi.json", timeout=30).json()
    ours = {
        p: ops
        for p, ops in document["paths"].items()
        if p.startswith(("/v1/organizations", "/v1/me/addresses", "/v1/users/{user_id}/addresses"))
    }
    assert len([op for ops in ours.values() for op in ops]) == 35  # 29, 5 for its payment methods, 1 for its memberships
    for path, operations in ours.items():
        for method, operation in operations.items():
            answers = operation["responses"]
            assert {"401", "403", "404", "422"} <= set(answers), (method, path)
            schemas = [c["schema"]["$ref"] for c in answers["404"]["content"].values() if "schema" in c]
            assert schemas and all(ref.endswith("Problem") for ref in schemas), (method, path)
            if method in ("patch", "delete") and "/members/" in path:
                assert "409" in answers, (method, path)
