"""Invitations over real HTTP on each database: inviting an address with no account, which opens
one on accepting; inviting an existing account, which must be signed in to accept; replacing,
revoking and expiry; who may invite; and that the token is single-use and never shown by the API."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.accounts import invitations
from billfold.kit import clock
from billfold.kit.db import session_factory, transaction
from billfold.models import OrganizationInvitation, User
from tests.accounts import PASSWORD, Api
from tests.test_organizations import add_member, assert_problem, create_organization, events, person, roles


def invitation_token(api: Api, address: str) -> str:
    body = api.mails_to(address)[-1].get_content()
    return re.search(r"^(bfi_[A-Za-z0-9_-]+)$", body, re.M).group(1)


def invite(api: Api, token: str, organization: str, address: str, role: str = "member") -> dict:
    with api.client(token) as client:
        answer = client.post(f"/v1/organizations/{organization}/invitations", json={"email": address, "role": role})
    assert answer.status_code == 201, answer.text
    return answer.json()


def test_an_invited_address_without_an_account_opens_one_by_accepting(api: Api, engine: Engine, address: str) -> None:
    ada = person(engine, "ada")
    organization = create_organization(api, ada, "Difference Engines")
    made = invite(api, ada.token, organization, address.upper(), "billing")
    assert made["email"] == address and made["status"] == "pending" and made["role"] == "billing"
    assert "token" not in made and "bfi_" not in str(made)
    [mail] = api.mails_to(address)
    assert "Difference Engines" in mail["Subject"]
    token = invitation_token(api, address)
    with api.client() as stranger:
        missing = assert_problem(stranger.post("/v1/invitations/accept", json={"token": token}), 422, "invalid_input")
        assert {e["field"] for e in missing["errors"]} == {"password", "name", "last_name"}
        assert roles(engine, organization) == {ada.id: "owner"}, "a refused accept changes nothing"
        joined = stranger.post(
            "/v1/invitations/accept",
            json={"token": token, "password": PASSWORD, "name": "Grace", "last_name": "Hopper"},
        )
        assert joined.status_code == 201, joined.text
        assert joined.json()["account_created"] is True and joined.json()["role"] == "billing"
        again = stranger.post(
            "/v1/invitations/accept",
            json={"token": token, "password": PASSWORD, "name": "Grace", "last_name": "Hopper"},
        )
        assert "already been accepted" in assert_problem(again, 422, "invitation_not_usable", "token")["detail"]
    grace = api.sign_in(address)  # confirmed by the token that reached the mailbox: no verify step
    with api.client(grace) as client:
        mine = client.get("/v1/organizations").json()["data"]
    assert [(o["id"], o["role"]) for o in mine] == [(organization, "billing")]
    with api.client(ada.token) as client:
        [listed] = client.get(f"/v1/organizations/{organization}/invitations").json()["data"]
    assert listed["status"] == "accepted" and listed["accepted_by_user_id"] == joined.json()["user_id"]
    assert "member_invited" in events(engine, organization) and "member_added" in events(engine, organization)


def test_an_existing_account_accepts_signed_in_as_the_invited_address(api: Api, engine: Engine, address: str) -> None:
    ada, eve = person(engine, "ada"), person(engine, "eve")
    organization = create_organization(api, ada)
    api.sign_up(address, verify=False)
    invite(api, ada.token, organization, address)
    token = invitation_token(api, address)
    with api.client() as anonymous:
        assert_problem(anonymous.post("/v1/invitations/accept", json={"token": token}), 409, "sign_in_to_accept")
    with api.client(eve.token) as other:
        assert_problem(
            other.post("/v1/invitations/accept", json={"token": token}), 403, "invitation_for_another_address"
        )
    assert len(roles(engine, organization)) == 1
    with api.client(api.sign_in(address)) as invited:
        joined = invited.post("/v1/invitations/accept", json={"token": token})
        assert joined.status_code == 201, joined.text
        assert joined.json()["account_created"] is False and joined.json()["role"] == "member"
    with session_factory(engine)() as session:
        assert session.scalars(sa.select(User.is_verified).where(User.email == address)).one() is True


def test_inviting_again_replaces_the_token_and_revoking_ends_it(api: Api, engine: Engine, address: str) -> None:
    ada = person(engine, "ada")
    organization = create_organization(api, ada)
    first = invite(api, ada.token, organization, address)
    old_token = invitation_token(api, address)
    second = invite(api, ada.token, organization, address, "admin")
    new_token = invitation_token(api, address)
    assert old_token != new_token
    with api.client(ada.token) as client:
        listed = {i["id"]: i["status"] for i in client.get(f"/v1/organizations/{organization}/invitations").json()["data"]}
        assert listed == {first["id"]: "revoked", second["id"]: "pending"}
    body = {"token": old_token, "password": PASSWORD, "name": "Old", "last_name": "Token"}
    with api.client() as stranger:
        assert "revoked" in assert_problem(stranger.post("/v1/invitations/accept", json=body), 422, "invitation_not_usable")["detail"]
    with api.client(ada.token) as client:
        assert client.delete(f"/v1/organizations/{organization}/invitations/{second['id']}").status_code == 204
        assert client.delete(f"/v1/organizations/{organization}/invitations/inv_nothing").status_code == 404
    with api.client() as stranger:
        refused = stranger.post("/v1/invitations/accept", json={**body, "token": new_token})
        assert_problem(refused, 422, "invitation_not_usable", "token")
        assert_problem(stranger.post("/v1/invitations/accept", json={**body, "token": "bfi_made_up"}), 422, "invitation_not_usable")
    assert roles(engine, organization) == {ada.id: "owner"}
    with session_factory(engine)() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(User).where(User.email == address)) == 0


def test_an_invitation_expires_after_seven_days(
    api: Api, engine: Engine, address: str, frozen_clock: clock.FrozenClock
) -> None:
    ada = person(engine, "ada")
    organization = create_organization(api, ada)
    invite(api, ada.token, organization, address)
    token = invitation_token(api, address)
    frozen_clock.advance(timedelta(days=7, seconds=1))
    body = {"token": token, "password": PASSWORD, "name": "Late", "last_name": "Comer"}
    with api.client() as stranger:
        assert "expired" in assert_problem(stranger.post("/v1/invitations/accept", json=body), 422, "invitation_not_usable")["detail"]
    frozen_clock.advance(timedelta(days=31))
    with transaction(session_factory(engine)) as session:
        assert invitations.purge(session) >= 1
        assert session.scalars(sa.select(OrganizationInvitation).where(OrganizationInvitation.email == address)).all() == []


def test_only_owners_and_admins_invite_and_only_owners_invite_owners(api: Api, engine: Engine, address: str) -> None:
    ada, ann, bob, eve = (person(engine, n) for n in ("ada", "ann", "bob", "eve"))
    organization = create_organization(api, ada)
    add_member(api, ada, organization, ann, "admin")
    add_member(api, ada, organization, bob, "billing")
    with api.client(ann.token) as admin:
        assert_problem(
            admin.post(f"/v1/organizations/{organization}/invitations", json={"email": address, "role": "owner"}),
            403,
            "role_required",
        )
        assert admin.post(f"/v1/organizations/{organization}/invitations", json={"email": address}).status_code == 201
        assert_problem(
            admin.post(f"/v1/organizations/{organization}/invitations", json={"email": bob.email}), 409, "already_member", "email"
        )
    with api.client(bob.token) as billing:
        assert_problem(billing.get(f"/v1/organizations/{organization}/invitations"), 403, "role_required")
    with api.client(eve.token) as outsider:
        assert outsider.get(f"/v1/organizations/{organization}/invitations").status_code == 404
    assert len(api.mails_to(address)) == 1


@pytest.mark.parametrize("field", ["email", "role"])
def test_a_bad_invitation_names_the_field_and_sends_nothing(api: Api, engine: Engine, address: str, field: str) -> None:
    ada = person(engine, "ada")
    organization = create_organization(api, ada)
    body = {"email": address, "role": "member", field: "not-valid"}
    with api.client(ada.token) as client:
        problem = client.post(f"/v1/organizations/{organization}/invitations", json=body)
    assert problem.status_code == 422 and field in problem.text
    assert api.mails_to(address) == [] or field == "email"
