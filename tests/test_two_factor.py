"""Two-factor authentication over real HTTP, on each database: enrolling an authenticator app,
signing in with a code or a recovery code, lock-out, replays, turning it off, and the key kept
encrypted. The server reads the same clock as the test, which holds it still so codes are exact."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pyotp
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.accounts.sessions import open_session
from billfold.kit import clock
from billfold.kit.db import session_factory
from billfold.models import AuthChallenge, PaymentEvent, SignInThrottle, User
from tests.accounts import PASSWORD, Api


@pytest.fixture(autouse=True)
def still_clock() -> Iterator[clock.FrozenClock]:
    """Now, held still at the start of a 30-second step: a code made by the test is the code the
    server expects, and moving on a few seconds keeps the same code."""
    now = clock.SystemClock().now()
    with clock.using(clock.FrozenClock(now - timedelta(seconds=now.timestamp() % 30))) as frozen:
        yield frozen


def _user(engine: Engine, address: str) -> User:
    with session_factory(engine)() as session:
        return session.scalars(sa.select(User).where(User.email == address)).one()


def _code(secret: str) -> str:
    return pyotp.TOTP(secret).at(clock.now())


def _wrong(secret: str) -> str:
    """A well-formed code that no step near now has."""
    totp, step = pyotp.TOTP(secret), pyotp.TOTP(secret).timecode(clock.now())
    near = {totp.generate_otp(step + offset) for offset in range(-2, 3)}
    return next(code for code in ("000000", "111111", "222222", "333333", "444444", "555555") if code not in near)


def _enrolled(api: Api, address: str) -> tuple[str, list[str]]:
    """Sign up, turn two-factor on; the TOTP secret and the recovery codes."""
    api.sign_up(address)
    with api.client(api.sign_in(address)) as client:
        enrolment = client.post("/v1/me/two-factor/totp", json={"password": PASSWORD})
        assert enrolment.status_code == 201, enrolment.text
        secret = enrolment.json()["secret"]
        confirmed = client.post("/v1/me/two-factor/totp/confirm", json={"code": _code(secret)})
        assert confirmed.status_code == 200, confirmed.text
    return secret, confirmed.json()["recovery_codes"]


def _password_step(client: httpx.Client, address: str, **extra: str) -> str:
    answer = client.post("/v1/auth/sign-in", json={"email": address, "password": PASSWORD, **extra})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["second_factor_required"] is True and body["token"] is None and body["session"] is None and body["user"] is None
    return body["challenge"]


def _second_step(client: httpx.Client, challenge: str, code: str) -> httpx.Response:
    return client.post("/v1/auth/sign-in/second-factor", json={"challenge": challenge, "code": code})


def test_enrolling_an_app_then_signing_in_takes_a_code(api: Api, engine: Engine, address: str, still_clock: clock.FrozenClock) -> None:
    api.sign_up(address)
    with api.client(api.sign_in(address)) as client:
        stolen_session = client.post("/v1/me/two-factor/totp", json={"password": "a guess at it"})
        assert stolen_session.status_code == 401 and _user(engine, address).two_factor is None, "a session alone is not enough"
        enrolment = client.post("/v1/me/two-factor/totp", json={"password": PASSWORD}).json()
        assert enrolment["otpauth_uri"].startswith("otpauth://totp/Billfold:") and f"secret={enrolment['secret']}" in enrolment["otpauth_uri"]
        assert client.get("/v1/me/two-factor").json() == {"enabled": False, "pending": True, "confirmed_at": None, "recovery_codes_left": 0}
        assert api.sign_in(address), "an unconfirmed enrolment changes nothing at sign-in"
        wrong = client.post("/v1/me/two-factor/totp/confirm", json={"code": _wrong(enrolment["secret"])})
        assert wrong.status_code == 401 and wrong.json()["code"] == "wrong_code"
        confirmed = client.post("/v1/me/two-factor/totp/confirm", json={"code": _code(enrolment["secret"])})
        assert confirmed.status_code == 200
        codes = confirmed.json()["recovery_codes"]
        assert len(codes) == len(set(codes)) == 10
        me = client.get("/v1/me").json()
        assert me["two_factor_enabled"] is True and enrolment["secret"] not in json.dumps(me)
        status = client.get("/v1/me/two-factor").json()
        assert status["enabled"] is True and status["recovery_codes_left"] == 10 and enrolment["secret"] not in json.dumps(status)
        assert client.post("/v1/me/two-factor/totp", json={"password": PASSWORD}).json()["code"] == "two_factor_already_enabled"
    assert api.mails_to(address)[-1]["Subject"] == "Two-factor authentication is on"

    still_clock.advance(timedelta(seconds=30))  # the code that confirmed is spent; take the next one
    with api.client() as client:
        challenge = _password_step(client, address)
        refused = _second_step(client, challenge, "12345x")
        assert refused.status_code == 401 and refused.json()["code"] == "sign_in_failed"
        signed_in = _second_step(client, challenge, _code(enrolment["secret"]))
        assert signed_in.status_code == 200, signed_in.text
        body = signed_in.json()
        assert body["user"]["email"] == address and body["token"].startswith("bfs_") and body["second_factor_required"] is False
        assert client.get("/v1/me", headers={"Authorization": f"Bearer {body['token']}"}).status_code == 200
        again = _second_step(client, challenge, _code(enrolment["secret"]))
    assert again.status_code == 401 and again.json() == refused.json(), "a challenge completes one sign-in, and failures look alike"


def test_wrong_codes_count_toward_the_lock_like_wrong_passwords(api: Api, engine: Engine, address: str) -> None:
    secret, _ = _enrolled(api, address)
    wrong = _wrong(secret)
    with api.client() as client:
        challenge = _password_step(client, address)
        for _ in range(4):
            assert _second_step(client, challenge, wrong).status_code == 401
        # The right password again does not wipe the count: knowing it buys no more guesses.
        challenge = _password_step(client, address)
        assert _second_step(client, challenge, wrong).status_code == 401
        assert _user(engine, address).is_locked
        locked = _second_step(client, challenge, _code(secret))
        assert locked.status_code == 401 and locked.json()["code"] == "sign_in_failed"
        assert client.post("/v1/auth/sign-in", json={"email": address, "password": PASSWORD}).status_code == 401


def test_a_right_code_after_wrong_ones_signs_in_and_starts_the_count_over(api: Api, engine: Engine, address: str, still_clock: clock.FrozenClock) -> None:
    secret, _ = _enrolled(api, address)
    still_clock.advance(timedelta(seconds=30))
    wrong = _wrong(secret)
    with api.client() as client:
        challenge = _password_step(client, address, transport="cookie")
        for _ in range(4):
            _second_step(client, challenge, wrong)
        signed_in = _second_step(client, challenge, _code(secret))
        assert signed_in.status_code == 200 and signed_in.json()["token"] is None, "the transport asked for at the password step"
        assert any(c.startswith("billfold_session=") and "HttpOnly" in c for c in signed_in.headers.get_list("set-cookie"))
        assert client.get("/v1/me").json()["email"] == address
    still_clock.advance(timedelta(seconds=30))
    with api.client() as client:
        challenge = _password_step(client, address)
        for _ in range(4):
            _second_step(client, challenge, wrong)
    assert not _user(engine, address).is_locked


def test_a_code_is_accepted_once(api: Api, address: str, still_clock: clock.FrozenClock) -> None:
    secret, _ = _enrolled(api, address)
    still_clock.advance(timedelta(seconds=30))
    code = _code(secret)
    with api.client() as client:
        assert _second_step(client, _password_step(client, address), code).status_code == 200
        replayed = _second_step(client, _password_step(client, address), code)
        assert replayed.status_code == 401, "a code seen once is never taken again, even within its window"
        still_clock.advance(timedelta(seconds=10))  # same 30-second step: the same code
        assert _second_step(client, _password_step(client, address), _code(secret)).status_code == 401
        still_clock.advance(timedelta(seconds=30))
        assert _second_step(client, _password_step(client, address), _code(secret)).status_code == 200


def test_a_recovery_code_signs_in_once(api: Api, engine: Engine, address: str) -> None:
    _, codes = _enrolled(api, address)
    with api.client() as client:
        first = _second_step(client, _password_step(client, address), codes[3].lower().replace("-", " "))
        assert first.status_code == 200, "case, spaces and dashes do not matter"
        assert _second_step(client, _password_step(client, address), codes[3]).status_code == 401
        token = _second_step(client, _password_step(client, address), codes[4]).json()["token"]
    assert "recovery code" in api.mails_to(address)[-1]["Subject"] and "8 are left" in api.mails_to(address)[-1].get_content()
    with api.client(token) as client:
        assert client.get("/v1/me/two-factor").json()["recovery_codes_left"] == 8
        fresh = client.post("/v1/me/two-factor/recovery-codes", json={"code": codes[5]})
        assert fresh.status_code == 200 and set(fresh.json()["recovery_codes"]).isdisjoint(codes)
        assert client.get("/v1/me/two-factor").json()["recovery_codes_left"] == 10
    with api.client() as client:
        assert _second_step(client, _password_step(client, address), codes[6]).status_code == 401, "the old set is gone"
        assert _second_step(client, _password_step(client, address), fresh.json()["recovery_codes"][0]).status_code == 200


def test_the_key_is_kept_encrypted_and_recovery_codes_only_as_digests(api: Api, engine: Engine, address: str) -> None:
    secret, codes = _enrolled(api, address)
    stored = _user(engine, address).two_factor
    raw = json.dumps(stored)
    assert secret not in raw and secret.lower() not in raw
    assert stored["totp"]["secret"].startswith("v1.") and stored["totp"]["confirmed"] is True
    assert not any(code.replace("-", "") in raw or code in raw for code in codes)
    assert len(stored["recovery_codes"]) == 10 and all(entry["used_at"] is None for entry in stored["recovery_codes"])


def test_turning_it_off_takes_a_current_code(api: Api, engine: Engine, address: str, still_clock: clock.FrozenClock) -> None:
    secret, codes = _enrolled(api, address)
    still_clock.advance(timedelta(seconds=30))
    with api.client() as client:
        token = _second_step(client, _password_step(client, address), codes[0]).json()["token"]
    with api.client(token) as client:
        assert client.post("/v1/me/two-factor/disable", json={}).status_code == 422
        wrong = client.post("/v1/me/two-factor/disable", json={"code": codes[0]})
        assert wrong.status_code == 401 and wrong.json()["code"] == "wrong_code", "a spent recovery code"
        assert _user(engine, address).two_factor is not None
        assert client.post("/v1/me/two-factor/disable", json={"code": _code(secret)}).status_code == 204
        assert client.get("/v1/me").json()["two_factor_enabled"] is False
        assert client.post("/v1/me/two-factor/disable", json={"code": _code(secret)}).json()["code"] == "two_factor_not_enrolled"
    assert _user(engine, address).two_factor is None
    assert api.sign_in(address), "the password alone is enough again"


def test_guessing_codes_from_a_stolen_session_locks_the_account(api: Api, engine: Engine, address: str) -> None:
    secret, _ = _enrolled(api, address)
    wrong = _wrong(secret)
    with session_factory(engine).begin() as session:  # a session of the user's, as a thief would hold it
        _, token = open_session(session, session.get(User, _user(engine, address).id), transport="bearer", address=None, user_agent="thief", days=1)
    with api.client(token) as client:
        for _ in range(5):
            assert client.post("/v1/me/two-factor/disable", json={"code": wrong}).status_code == 401
        assert client.get("/v1/me").status_code == 401, "the lock signs every session out"
    assert _user(engine, address).is_locked and _user(engine, address).two_factor is not None


def test_an_expired_second_step_is_refused(api: Api, engine: Engine, address: str, still_clock: clock.FrozenClock) -> None:
    secret, _ = _enrolled(api, address)
    with api.client() as client:
        challenge = _password_step(client, address)
        still_clock.advance(timedelta(minutes=5, seconds=1))
        late = _second_step(client, challenge, _code(secret))
        assert late.status_code == 401 and late.json()["code"] == "sign_in_failed"
        forged = _second_step(client, "bfc_not-a-challenge", _code(secret))
        assert forged.status_code == 401 and forged.json() == late.json()
    with session_factory(engine)() as session:
        row = session.scalars(sa.select(AuthChallenge).where(AuthChallenge.user_id == _user(engine, address).id, AuthChallenge.purpose == "second_factor")).one()
        assert row.used_at is None and challenge not in json.dumps(row.data), "kept as a hash only"


def test_confirming_without_an_enrolment_or_with_extra_fields_changes_nothing(api: Api, engine: Engine, address: str) -> None:
    api.sign_up(address)
    with api.client(api.sign_in(address)) as client:
        assert client.post("/v1/me/two-factor/totp/confirm", json={"code": "123456"}).json()["code"] == "two_factor_not_enrolled"
        extra = client.post("/v1/me/two-factor/totp/confirm", json={"code": "123456", "secret": "AAAA"})
        assert extra.status_code == 422 and "secret" in {e["field"] for e in extra.json()["errors"]}
        assert client.post("/v1/me/two-factor/recovery-codes", json={"code": "123456"}).status_code == 409
    assert _user(engine, address).two_factor is None
    with session_factory(engine)() as session:
        events = session.scalars(sa.select(PaymentEvent.event_type).where(PaymentEvent.entity_id == _user(engine, address).id)).all()
    assert "two_factor_enabled" not in events


def test_a_shop_admin_clears_two_factor_for_someone_who_lost_it(api: Api, engine: Engine, address: str, admin_token: str) -> None:
    _enrolled(api, address)
    user_id = _user(engine, address).id
    with api.client() as client:
        _password_step(client, address)  # the code is still asked for
    with api.client() as anonymous:
        assert anonymous.delete(f"/v1/users/{user_id}/two-factor").status_code == 401
    api.sign_up(f"other.{address}")
    with api.client(api.sign_in(f"other.{address}")) as customer:
        assert customer.delete(f"/v1/users/{user_id}/two-factor").status_code == 403
    assert _user(engine, address).two_factor is not None, "a refused request changes nothing"
    with api.client(admin_token) as admin:
        cleared = admin.delete(f"/v1/users/{user_id}/two-factor")
        assert cleared.status_code == 200, cleared.text
        assert cleared.json()["two_factor_enabled"] is False
        assert admin.delete("/v1/users/usr_nobody/two-factor").status_code == 404
    assert _user(engine, address).two_factor is None
    assert "turned it off for you" in api.mails_to(address)[-1].get_content()
    assert api.sign_in(address), "the password alone signs in again"
    with session_factory(engine)() as session:
        kinds = session.scalars(sa.select(PaymentEvent.event_type).where(PaymentEvent.entity_id == user_id)).all()
    assert "two_factor_cleared_by_admin" in kinds



def test_a_fresh_code_stands_in_for_the_password_when_changing_how_the_account_is_reached(
    api: Api, engine: Engine, address: str, still_clock: clock.FrozenClock
) -> None:
    """Changing the password or the addresses, or deleting the account, takes the current password
    or a code in the same request; a wrong code counts as a failed sign-in, as elsewhere."""
    secret, _ = _enrolled(api, address)
    still_clock.advance(timedelta(seconds=30))
    with api.client() as client:
        token = _second_step(client, _password_step(client, address), _code(secret)).json()["token"]
    still_clock.advance(timedelta(seconds=30))
    user_id = _user(engine, address).id
    with api.client(token) as client:
        wrong = client.post("/v1/me/recovery-email", json={"recovery_email": f"backup.{address}", "code": _wrong(secret)})
        assert wrong.status_code == 401 and wrong.json()["code"] == "wrong_code"
        with session_factory(engine)() as session:
            assert session.get(SignInThrottle, f"user:{user_id}").failures == 1, "counted toward the lock"
        assert client.post("/v1/me/password", json={"code": _code(secret), "new_password": "changed by code alone"}).status_code == 204
        assert client.get("/v1/me").status_code == 200
    assert api.mails_to(address)[-1]["Subject"] == "Your Billfold password was changed"
    api.sign_up(f"plain.{address}")
    with api.client(api.sign_in(f"plain.{address}")) as client:
        off = client.post("/v1/me/password", json={"code": "123456", "new_password": "changed by code alone"})
        assert off.status_code == 422 and "code" in {e["field"] for e in off.json()["errors"]}
