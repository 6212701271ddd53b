"""Passkeys over real HTTP, on each database, with a software authenticator (real keys, real
CBOR, real signatures; nothing of the webauthn library is replaced): registering, signing in
without a password, the signature counter, single-use and expiring challenges, naming and
removing, and one user's passkeys out of another's reach."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pyotp
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.kit import clock
from billfold.kit.db import session_factory
from billfold.models import AuthChallenge, PaymentEvent, User
from tests.accounts import PASSWORD, Api
from tests.webauthn_authenticator import Authenticator, b64url


@pytest.fixture
def still_clock() -> Iterator[clock.FrozenClock]:
    with clock.using(clock.FrozenClock()) as frozen:
        yield frozen


def _user(engine: Engine, address: str) -> User:
    with session_factory(engine)() as session:
        return session.scalars(sa.select(User).where(User.email == address)).one()


def _register(client: httpx.Client, device: Authenticator, name: str = "Laptop") -> httpx.Response:
    options = client.post("/v1/me/passkeys/registration-options", json={"password": PASSWORD})
    assert options.status_code == 200, options.text
    return client.post("/v1/me/passkeys", json={"name": name, "credential": device.create(options.json())})


def _passkey_sign_in(api: Api, device: Authenticator, **extra: str) -> httpx.Response:
    with api.client() as client:
        options = client.post("/v1/auth/passkey/options").json()
        return client.post("/v1/auth/passkey", json={"credential": device.get(options), **extra})


def test_a_registered_passkey_signs_in_without_the_password(api: Api, engine: Engine, address: str) -> None:
    api.sign_up(address)
    device = Authenticator(api.url)
    with api.client(api.sign_in(address)) as client:
        assert client.post("/v1/me/passkeys/registration-options", json={"password": "a guess at it"}).status_code == 401
        assert client.post("/v1/me/passkeys/registration-options", json={}).status_code == 422
        options = client.post("/v1/me/passkeys/registration-options", json={"password": PASSWORD}).json()
        assert options["rp"]["id"] == "127.0.0.1" and options["authenticatorSelection"]["userVerification"] == "required"
        added = client.post("/v1/me/passkeys", json={"name": "Laptop", "credential": device.create(options)})
        assert added.status_code == 201, added.text
        assert set(added.json()) == {"id", "name", "created_at", "last_used_at"} and added.json()["last_used_at"] is None
        assert client.get("/v1/me").json()["passkeys"] == 1
        assert api.mails_to(address)[-1]["Subject"] == "A passkey was added"
        assert client.get("/v1/me/passkeys").json() == {"data": [added.json()], "has_more": False}

    signed_in = _passkey_sign_in(api, device)
    assert signed_in.status_code == 200, signed_in.text
    assert signed_in.json()["user"]["email"] == address and signed_in.json()["token"].startswith("bfs_")
    with api.client(signed_in.json()["token"]) as client:
        assert client.get("/v1/me").status_code == 200
        assert client.get("/v1/me/passkeys").json()["data"][0]["last_used_at"] is not None
    assert _passkey_sign_in(api, device).status_code == 200
    (entry,) = _user(engine, address).passkeys
    assert entry["sign_count"] == 2 and entry["name"] == "Laptop"
    assert entry["credential_id"] == b64url(next(iter(device.credentials)))


def test_a_passkey_skips_the_second_factor_and_a_cookie_session_works(api: Api, address: str) -> None:
    api.sign_up(address)
    device = Authenticator(api.url)
    with api.client(api.sign_in(address)) as client:
        assert _register(client, device).status_code == 201
        secret = client.post("/v1/me/two-factor/totp", json={"password": PASSWORD}).json()["secret"]
        assert client.post("/v1/me/two-factor/totp/confirm", json={"code": pyotp.TOTP(secret).now()}).status_code == 200
    with api.client() as client:
        assert client.post("/v1/auth/sign-in", json={"email": address, "password": PASSWORD}).json()["second_factor_required"]
        options = client.post("/v1/auth/passkey/options").json()
        signed_in = client.post("/v1/auth/passkey", json={"credential": device.get(options), "transport": "cookie"})
        assert signed_in.status_code == 200 and signed_in.json()["token"] is None and signed_in.json()["csrf_token"]
        assert client.get("/v1/me").json()["email"] == address


def test_a_cloned_authenticator_is_refused(api: Api, engine: Engine, address: str) -> None:
    api.sign_up(address)
    device = Authenticator(api.url)
    with api.client(api.sign_in(address)) as client:
        assert _register(client, device).status_code == 201
    clone = device.clone()
    assert _passkey_sign_in(api, device).status_code == 200
    assert _passkey_sign_in(api, device).status_code == 200
    stale = _passkey_sign_in(api, clone)  # counter 1, after the server saw 2
    assert stale.status_code == 401 and stale.json()["code"] == "sign_in_failed"
    assert _user(engine, address).passkeys[0]["sign_count"] == 2
    with session_factory(engine)() as session:
        events = session.scalars(sa.select(PaymentEvent.event_type).where(PaymentEvent.entity_id == _user(engine, address).id)).all()
    assert "passkey_sign_count_regressed" in events


def test_a_challenge_answers_one_ceremony(api: Api, engine: Engine, address: str) -> None:
    api.sign_up(address)
    device = Authenticator(api.url)
    with api.client(api.sign_in(address)) as client:
        options = client.post("/v1/me/passkeys/registration-options", json={"password": PASSWORD}).json()
        credential = device.create(options)
        assert client.post("/v1/me/passkeys", json={"name": "Laptop", "credential": credential}).status_code == 201
        again = client.post("/v1/me/passkeys", json={"name": "Again", "credential": credential})
        assert again.status_code == 422 and again.json()["code"] == "challenge_invalid"
    with api.client() as client:
        options = client.post("/v1/auth/passkey/options").json()
        assertion = device.get(options)
        assert client.post("/v1/auth/passkey", json={"credential": assertion}).status_code == 200
        replayed = client.post("/v1/auth/passkey", json={"credential": assertion})
        assert replayed.status_code == 401
        # A fresh signature with a higher counter does not revive a used challenge either.
        assert client.post("/v1/auth/passkey", json={"credential": device.get(options)}).status_code == 401
    assert len(_user(engine, address).passkeys) == 1


def test_an_expired_challenge_is_refused(api: Api, engine: Engine, address: str, still_clock: clock.FrozenClock) -> None:
    api.sign_up(address)
    device = Authenticator(api.url)
    with api.client(api.sign_in(address)) as client:
        options = client.post("/v1/me/passkeys/registration-options", json={"password": PASSWORD}).json()
        still_clock.advance(timedelta(minutes=5, seconds=1))
        late = client.post("/v1/me/passkeys", json={"name": "Laptop", "credential": device.create(options)})
        assert late.status_code == 422 and late.json()["code"] == "challenge_invalid"
        device = Authenticator(api.url)
        assert _register(client, device).status_code == 201
    with api.client() as client:
        options = client.post("/v1/auth/passkey/options").json()
        still_clock.advance(timedelta(minutes=6))
        assert client.post("/v1/auth/passkey", json={"credential": device.get(options)}).status_code == 401
    assert _user(engine, address).passkeys[0]["last_used_at"] is None


def test_an_answer_for_another_site_or_without_user_verification_is_refused(api: Api, engine: Engine, address: str) -> None:
    api.sign_up(address)
    device = Authenticator(api.url)
    with api.client(api.sign_in(address)) as client:
        options = client.post("/v1/me/passkeys/registration-options", json={"password": PASSWORD}).json()
        phished = client.post("/v1/me/passkeys", json={"name": "X", "credential": device.create(options, origin="https://evil.example")})
        assert phished.status_code == 422 and phished.json()["code"] == "passkey_rejected"
        options = client.post("/v1/me/passkeys/registration-options", json={"password": PASSWORD}).json()
        garbage = client.post("/v1/me/passkeys", json={"name": "X", "credential": {"id": "x", "response": {"clientDataJSON": "!!"}}})
        assert garbage.status_code == 422 and garbage.json()["code"] == "passkey_rejected"
        assert _user(engine, address).passkeys is None
        good = Authenticator(api.url)
        assert _register(client, good, "Good").status_code == 201
    with api.client() as client:
        assert client.post("/v1/auth/passkey", json={"credential": {"id": "x"}}).status_code == 401
        options = client.post("/v1/auth/passkey/options").json()
        forged = good.get(options)
        forged["response"]["userHandle"] = b64url(b"usr_\x00' OR 1=1")
        assert client.post("/v1/auth/passkey", json={"credential": forged}).status_code == 401
        assert client.post("/v1/auth/passkey", json={"credential": {"id": "x"}, "password": "no"}).status_code == 422
    lazy = Authenticator(api.url, user_verified=False)
    with api.client(api.sign_in(address)) as client:
        options = client.post("/v1/me/passkeys/registration-options", json={"password": PASSWORD}).json()
        refused = client.post("/v1/me/passkeys", json={"name": "No PIN", "credential": lazy.create(options)})
        assert refused.status_code == 422
    assert [p["name"] for p in _user(engine, address).passkeys] == ["Good"]


def test_passkeys_are_renamed_and_removed_by_their_owner_only(api: Api, engine: Engine, address: str) -> None:
    api.sign_up(address)
    other = f"other.{address}"
    api.sign_up(other)
    laptop, phone = Authenticator(api.url), Authenticator(api.url)
    with api.client(api.sign_in(address)) as client:
        first = _register(client, laptop, "Laptop").json()
        second = _register(client, phone, "Phone").json()
        renamed = client.patch(f"/v1/me/passkeys/{first['id']}", json={"name": "Work laptop"})
        assert renamed.status_code == 200 and renamed.json()["name"] == "Work laptop"
        assert client.patch(f"/v1/me/passkeys/{first['id']}", json={"name": ""}).status_code == 422
    with api.client(api.sign_in(other)) as client:
        assert client.patch(f"/v1/me/passkeys/{first['id']}", json={"name": "Mine now"}).status_code == 404
        gone = client.delete(f"/v1/me/passkeys/{second['id']}")
        assert gone.status_code == 404 and gone.json()["code"] == "passkey_not_found"
        assert client.get("/v1/me/passkeys").json()["data"] == []
    assert [p["name"] for p in _user(engine, address).passkeys] == ["Work laptop", "Phone"]
    with api.client(api.sign_in(address)) as client:
        assert client.delete(f"/v1/me/passkeys/{second['id']}").status_code == 204
        assert [p["id"] for p in client.get("/v1/me/passkeys").json()["data"]] == [first["id"]]
    assert _passkey_sign_in(api, phone).status_code == 401, "a removed passkey signs no one in"
    assert _passkey_sign_in(api, laptop).status_code == 200


def test_challenges_are_kept_as_hashes(api: Api, engine: Engine, address: str) -> None:
    api.sign_up(address)
    with api.client(api.sign_in(address)) as client:
        challenge = client.post("/v1/me/passkeys/registration-options", json={"password": PASSWORD}).json()["challenge"]
    with session_factory(engine)() as session:
        rows = session.scalars(sa.select(AuthChallenge).where(AuthChallenge.user_id == _user(engine, address).id)).all()
    assert len(rows) == 1 and rows[0].purpose == "passkey_registration"
    assert challenge not in json.dumps(rows[0].data) and rows[0].secret_hash != challenge
