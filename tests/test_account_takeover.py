"""No lasting account takeover, over real HTTP on each database: an address is used only once it
has confirmed a token mailed to it, changes to how an account is reached need the password, the
owner's address is told of each, and the owner proving the address takes back everything an
earlier holder set on the account."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import httpx
import pyotp
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.kit import clock
from billfold.kit.db import session_factory
from billfold.models import User
from tests.accounts import PASSWORD, Api
from tests.webauthn_authenticator import Authenticator

ATTACKER_PASSWORD = "mallory was here first"


@pytest.fixture
def still_clock() -> Iterator[clock.FrozenClock]:
    """Held still at the start of a 30-second step, so a TOTP code made here is the server's."""
    now = clock.SystemClock().now()
    with clock.using(clock.FrozenClock(now - timedelta(seconds=now.timestamp() % 30))) as frozen:
        yield frozen


def _user(engine: Engine, address: str) -> User | None:
    with session_factory(engine)() as session:
        return session.scalars(sa.select(User).where(User.email == address)).one_or_none()


def _subjects(api: Api, address: str) -> list[str]:
    return [m["Subject"] for m in api.mails_to(address)]


def _passkey_sign_in(api: Api, device: Authenticator) -> httpx.Response:
    with api.client() as client:
        options = client.post("/v1/auth/passkey/options").json()
        return client.post("/v1/auth/passkey", json={"credential": device.get(options)})


def test_whoever_registered_an_address_first_loses_the_account_when_its_owner_resets(
    api: Api, engine: Engine, address: str, still_clock: clock.FrozenClock
) -> None:
    """The story of the attack: Mallory registers the victim's address (unconfirmed), plants her own
    recovery address, an authenticator app and a change of address, and keeps a session. The owner
    resets the password through their mailbox and uses the account. Mallory's sessions are dead and
    a reset for the address no longer reaches her: nothing she set leads back in."""
    victim, mallory = address, f"mallory.{address}"
    api.sign_up(victim, password=ATTACKER_PASSWORD, verify=False)
    attacker_token = api.sign_in(victim, ATTACKER_PASSWORD)
    with api.client(attacker_token) as attacker:
        planted = attacker.post("/v1/me/recovery-email", json={"recovery_email": mallory, "current_password": ATTACKER_PASSWORD})
        assert planted.status_code == 202, planted.text
        assert attacker.post("/v1/auth/verify-email", json={"token": api.change_token_mailed_to(mallory)}).status_code == 200
        assert attacker.get("/v1/me").json()["recovery_email"] == mallory
        secret = attacker.post("/v1/me/two-factor/totp", json={"password": ATTACKER_PASSWORD}).json()["secret"]
        assert attacker.post("/v1/me/two-factor/totp/confirm", json={"code": pyotp.TOTP(secret).at(clock.now())}).status_code == 200
        moving = attacker.post("/v1/me/email", json={"email": f"elsewhere.{mallory}", "current_password": ATTACKER_PASSWORD})
        assert moving.status_code == 202
        pending_move = api.change_token_mailed_to(f"elsewhere.{mallory}")
    reset_mails_to_mallory = _subjects(api, mallory).count("Reset your Billfold password")

    with api.client() as owner:
        assert owner.post("/v1/auth/register", json={"email": victim, "password": PASSWORD, "name": "Vic", "last_name": "Tim"}).status_code == 202
        assert owner.post("/v1/auth/password-reset", json={"email": victim}).status_code == 202
        assert _subjects(api, mallory).count("Reset your Billfold password") == reset_mails_to_mallory, (
            "an unconfirmed account's recovery address gets no reset"
        )
        reset = owner.post("/v1/auth/password-reset/confirm", json={"token": api.token_mailed_to(victim), "new_password": PASSWORD})
        assert reset.status_code == 200, reset.text
    taken_back = _user(engine, victim)
    assert taken_back.is_verified and taken_back.recovery_email is None and not taken_back.two_factor
    with api.client(api.sign_in(victim)) as owner:  # no second factor asked: Mallory's app is gone
        assert owner.patch("/v1/me", json={"name": "Victoria"}).status_code == 200

    with api.client(attacker_token) as attacker:
        assert attacker.get("/v1/me").status_code == 401, "the earlier holder's sessions ended"
        assert attacker.post("/v1/auth/password-reset", json={"email": victim}).status_code == 202
        assert attacker.post("/v1/auth/verify-email", json={"token": pending_move}).status_code == 422, "the planted move is void"
        assert attacker.post("/v1/auth/sign-in", json={"email": victim, "password": ATTACKER_PASSWORD}).status_code == 401
    assert _subjects(api, mallory).count("Reset your Billfold password") == reset_mails_to_mallory, "no reset reaches the planted address"
    assert _user(engine, victim).email == victim and _user(engine, victim).name == "Victoria"


def test_confirming_the_address_clears_what_was_set_on_the_account_before(api: Api, engine: Engine, address: str) -> None:
    """The first confirmation of an account's address (the token mailed at sign-up) ends every
    session and removes a recovery address and passkeys set before it: a passkey signs in with no
    password, so one left by whoever registered the address first would outlast any reset."""
    api.sign_up(address, verify=False)
    signed_up = api.token_mailed_to(address)
    backup, device = f"backup.{address}", Authenticator(api.url)
    with api.client(api.sign_in(address)) as early:
        assert early.post("/v1/me/recovery-email", json={"recovery_email": backup, "current_password": PASSWORD}).status_code == 202
        assert early.post("/v1/auth/verify-email", json={"token": api.change_token_mailed_to(backup)}).status_code == 200
        options = early.post("/v1/me/passkeys/registration-options", json={"password": PASSWORD}).json()
        assert early.post("/v1/me/passkeys", json={"name": "Planted", "credential": device.create(options)}).status_code == 201
        assert _passkey_sign_in(api, device).status_code == 200
        confirmed = early.post("/v1/auth/verify-email", json={"token": signed_up})
        assert confirmed.status_code == 200 and confirmed.json()["is_verified"] is True
        assert confirmed.json()["recovery_email"] is None and confirmed.json()["passkeys"] == 0
        assert early.get("/v1/me").status_code == 401, "sessions opened before the address was confirmed end"
    assert _passkey_sign_in(api, device).status_code == 401


def test_the_recovery_address_needs_the_password_and_is_used_only_once_it_confirms(api: Api, engine: Engine, address: str) -> None:
    """A signed-in session set the recovery address with no password and no notice; the next reset
    went there."""
    api.sign_up(address)
    backup = f"backup.{address}"
    with api.client(api.sign_in(address)) as client:
        old_way = client.patch("/v1/me", json={"recovery_email": backup})
        assert old_way.status_code == 422 and "recovery_email" in {e["field"] for e in old_way.json()["errors"]}
        bare = client.post("/v1/me/recovery-email", json={"recovery_email": backup})
        assert bare.status_code == 422 and "current_password" in {e["field"] for e in bare.json()["errors"]}
        assert client.post("/v1/me/recovery-email", json={"recovery_email": backup, "current_password": "a guess at it"}).status_code == 401
        assert api.mails_to(backup) == []
        asked = client.post("/v1/me/recovery-email", json={"recovery_email": backup, "current_password": PASSWORD})
        assert asked.status_code == 202
        assert backup in api.mails_to(address)[-1].get_content(), "the account's address is told"
        assert client.get("/v1/me").json()["recovery_email"] is None, "not before it confirms"
        client.post("/v1/auth/password-reset", json={"email": address})
        assert [m["Subject"] for m in api.mails_to(backup)] == ["Confirm your new Billfold recovery address"], "no reset to an unconfirmed address"
        confirmed = client.post("/v1/auth/verify-email", json={"token": api.change_token_mailed_to(backup)})
        assert confirmed.status_code == 200 and confirmed.json()["recovery_email"] == backup
        client.post("/v1/auth/password-reset", json={"email": address})
        assert api.token_mailed_to(backup) == api.token_mailed_to(address), "a confirmed recovery address gets the reset"
        removed = client.post("/v1/me/recovery-email", json={"recovery_email": None, "current_password": PASSWORD})
        assert removed.status_code == 202 and client.get("/v1/me").json()["recovery_email"] is None


def test_the_sign_in_address_changes_once_the_new_one_confirms_and_the_old_one_is_told(api: Api, engine: Engine, address: str) -> None:
    api.sign_up(address)
    new, taken = f"new.{address}", f"taken.{address}"
    api.sign_up(taken)
    with api.client(api.sign_in(address)) as client:
        assert client.post("/v1/me/email", json={"email": new}).status_code == 422
        assert client.post("/v1/me/email", json={"email": new, "current_password": "a guess at it"}).status_code == 401
        assert client.post("/v1/me/email", json={"email": taken, "current_password": PASSWORD}).status_code == 202, "the same answer"
        assert "already has an account" in api.mails_to(taken)[-1].get_content() and "bfe_" not in api.mails_to(taken)[-1].get_content()
        assert client.post("/v1/me/email", json={"email": new, "current_password": PASSWORD}).status_code == 202
        assert new in api.mails_to(address)[-1].get_content(), "the current address is told"
        assert client.post("/v1/auth/sign-in", json={"email": new, "password": PASSWORD}).status_code == 401, "not before it confirms"
        moved = client.post("/v1/auth/verify-email", json={"token": api.change_token_mailed_to(new)})
        assert moved.status_code == 200 and moved.json()["email"] == new
        assert client.get("/v1/me").json()["email"] == new, "the session that asked stays"
    assert "now signs in with" in api.mails_to(address)[-1].get_content()
    assert api.sign_in(new)
    with api.client() as client:
        assert client.post("/v1/auth/sign-in", json={"email": address, "password": PASSWORD}).status_code == 401


def test_a_reset_voids_a_change_of_address_waiting_for_confirmation(api: Api, engine: Engine, address: str) -> None:
    """Someone with the password and a session asks to move the account; the owner, told by email,
    resets the password: the move can no longer be confirmed."""
    api.sign_up(address)
    elsewhere = f"thief.{address}"
    with api.client(api.sign_in(address)) as thief:
        assert thief.post("/v1/me/email", json={"email": elsewhere, "current_password": PASSWORD}).status_code == 202
    with api.client() as owner:
        owner.post("/v1/auth/password-reset", json={"email": address})
        assert owner.post("/v1/auth/password-reset/confirm", json={"token": api.token_mailed_to(address), "new_password": "the owner's new one"}).status_code == 200
        assert owner.post("/v1/auth/verify-email", json={"token": api.change_token_mailed_to(elsewhere)}).status_code == 422
    assert _user(engine, address) is not None and _user(engine, elsewhere) is None
