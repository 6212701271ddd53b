"""Signing up, in and out over real HTTP, on each database: verification, sessions by bearer token
and by cookie with CSRF protection, lock-out, throttling, password change and reset."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.kit.db import session_factory
from billfold.models import AuthSession, SignInThrottle, User
from tests.accounts import PASSWORD, Api
from tests.server import serving


def _user(engine: Engine, address: str) -> User | None:
    with session_factory(engine)() as session:
        return session.scalars(sa.select(User).where(User.email == address)).one_or_none()


def test_signing_up_sends_a_token_that_verifies_the_address(api: Api, engine: Engine, address: str) -> None:
    api.sign_up(address.upper(), verify=False)  # addresses are kept in lower case
    user = _user(engine, address)
    assert user is not None and not user.is_verified and user.password_hash.startswith("$argon2id$")
    with api.client() as client:
        verified = client.post("/v1/auth/verify-email", json={"token": api.token_mailed_to(address)})
        assert verified.status_code == 200 and verified.json()["is_verified"] is True
        assert client.post("/v1/auth/verify-email", json={"token": "forged.token"}).status_code == 422


def test_signing_up_twice_creates_nothing_and_tells_the_owner(api: Api, engine: Engine, address: str) -> None:
    api.sign_up(address)
    first_id = _user(engine, address).id
    with api.client() as client:
        again = client.post("/v1/auth/register", json={"email": address, "password": "another password 1", "name": "Eve", "last_name": "X"})
    assert again.status_code == 202, "the same answer as for a new address"
    assert _user(engine, address).id == first_id and _user(engine, address).name == "Grace"
    assert "already exists" in api.mails_to(address)[-1].get_content()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"password": "short"}, "password"),
        ({"email": "not-an-address"}, "email"),
        ({"user_type": "admin"}, "user_type"),
        ({"card_number": "4242424242424242"}, "card_number"),
    ],
    ids=["short-password", "bad-email", "self-made-admin", "unknown-field"],
)
def test_a_bad_sign_up_is_refused_naming_the_field_and_creates_nothing(api: Api, engine: Engine, address: str, body: dict, field: str) -> None:
    request = {"email": address, "password": PASSWORD, "name": "Grace", "last_name": "Hopper", **body}
    with api.client() as client:
        answer = client.post("/v1/auth/register", json=request)
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"
    assert field in {e["field"] for e in answer.json()["errors"]}
    assert _user(engine, address) is None
    assert api.mails_to(address) == []


def test_a_bearer_session_works_until_signed_out(api: Api, address: str) -> None:
    api.sign_up(address)
    with api.client() as client:
        signed_in = client.post("/v1/auth/sign-in", json={"email": address, "password": PASSWORD}).json()
    assert signed_in["first_time"] is True and signed_in["user"]["email"] == address
    assert "password_hash" not in str(signed_in) and "argon2" not in str(signed_in)
    token = signed_in["token"]
    with api.client(token) as client:
        me = client.get("/v1/me").json()
        assert me["email"] == address and me["first_time"] is False
        assert client.post("/v1/auth/sign-out").status_code == 204
        gone = client.get("/v1/me")
    assert gone.status_code == 401 and gone.json()["code"] == "unauthorized"
    assert api.sign_in(address) and api.client().post("/v1/auth/sign-in", json={"email": address, "password": PASSWORD}).json()["first_time"] is False


def test_wrong_email_wrong_password_and_locked_account_get_the_same_answer(api: Api, address: str) -> None:
    api.sign_up(address)
    with api.client() as client:
        wrong_password = client.post("/v1/auth/sign-in", json={"email": address, "password": "not the password"})
        wrong_email = client.post("/v1/auth/sign-in", json={"email": f"x{address}", "password": PASSWORD})
    assert wrong_password.status_code == wrong_email.status_code == 401
    assert wrong_password.json() == wrong_email.json()
    assert wrong_password.json()["code"] == "sign_in_failed"


def test_five_failures_in_a_row_lock_the_account_until_an_admin_unlocks_it(api: Api, engine: Engine, address: str, admin_token: str) -> None:
    api.sign_up(address)
    with api.client() as client:
        for _ in range(5):
            assert client.post("/v1/auth/sign-in", json={"email": address, "password": "not the password"}).status_code == 401
        locked = client.post("/v1/auth/sign-in", json={"email": address, "password": PASSWORD})
    assert locked.status_code == 401 and locked.json()["code"] == "sign_in_failed"
    user = _user(engine, address)
    assert user.is_locked
    with api.client(admin_token) as admin:
        assert admin.post(f"/v1/users/{user.id}/unlock").json()["is_locked"] is False
    assert api.sign_in(address)


def test_a_success_resets_the_count_of_failures(api: Api, engine: Engine, address: str) -> None:
    api.sign_up(address)
    with api.client() as client:
        for _ in range(4):
            client.post("/v1/auth/sign-in", json={"email": address, "password": "not the password"})
        api.sign_in(address)
        for _ in range(4):
            client.post("/v1/auth/sign-in", json={"email": address, "password": "not the password"})
    assert not _user(engine, address).is_locked


def test_failures_from_one_client_address_are_throttled(engine: Engine, tmp_path: Path, address: str) -> None:
    with session_factory(engine).begin() as session:  # other tests' failures came from this address too
        session.execute(sa.delete(SignInThrottle).where(SignInThrottle.key == "address:127.0.0.1"))
    with serving(engine, tmp_path, sign_in_attempts_per_address=3) as url, httpx.Client(base_url=url) as client:
        answers = [client.post("/v1/auth/sign-in", json={"email": f"{n}{address}", "password": "guess"}) for n in range(4)]
    assert [a.status_code for a in answers] == [401, 401, 401, 429]
    assert int(answers[-1].headers["retry-after"]) > 0
    assert answers[-1].json()["code"] == "too_many_requests"


def test_a_cookie_session_needs_the_csrf_token_for_writes(api: Api, address: str) -> None:
    api.sign_up(address)
    with api.client() as client:
        signed_in = client.post("/v1/auth/sign-in", json={"email": address, "password": PASSWORD, "transport": "cookie"})
        assert signed_in.json()["token"] is None
        cookie = signed_in.headers.get_list("set-cookie")
        assert any(c.startswith("billfold_session=") and "HttpOnly" in c for c in cookie)
        assert client.get("/v1/me").json()["email"] == address
        forged = client.patch("/v1/me", json={"name": "Mallory"})
        assert forged.status_code == 403 and forged.json()["code"] == "csrf_failed"
        honest = client.patch("/v1/me", json={"name": "Grace B."}, headers={"X-CSRF-Token": signed_in.json()["csrf_token"]})
        assert honest.status_code == 200 and honest.json()["name"] == "Grace B."


def test_changing_the_password_signs_out_the_other_sessions(api: Api, address: str) -> None:
    api.sign_up(address)
    laptop, phone = api.sign_in(address), api.sign_in(address)
    with api.client(laptop) as client:
        assert client.post("/v1/me/password", json={"current_password": "wrong one!!", "new_password": "a brand new secret"}).status_code == 401
        assert client.post("/v1/me/password", json={"current_password": PASSWORD, "new_password": "a brand new secret"}).status_code == 204
        assert client.get("/v1/me").status_code == 200, "this session stays"
    with api.client(phone) as client:
        assert client.get("/v1/me").status_code == 401
    assert api.sign_in(address, "a brand new secret")


def test_a_reset_token_sets_a_new_password_once_and_unlocks(api: Api, engine: Engine, address: str) -> None:
    api.sign_up(address)
    token = api.sign_in(address)
    with api.client(token) as client:
        asked = client.post("/v1/me/recovery-email", json={"recovery_email": f"backup.{address}", "current_password": PASSWORD})
        assert asked.status_code == 202, asked.text
        assert client.post("/v1/auth/verify-email", json={"token": api.change_token_mailed_to(f"backup.{address}")}).status_code == 200
    with api.client() as client:
        for _ in range(5):
            client.post("/v1/auth/sign-in", json={"email": address, "password": "wrong"})
        assert client.post("/v1/auth/password-reset", json={"email": address}).status_code == 202
        reset = api.token_mailed_to(address)
        assert api.token_mailed_to(f"backup.{address}") == reset
        done = client.post("/v1/auth/password-reset/confirm", json={"token": reset, "new_password": "fresh and long enough"})
        assert done.status_code == 200
        reused = client.post("/v1/auth/password-reset/confirm", json={"token": reset, "new_password": "another new one!"})
        assert reused.status_code == 422
    assert not _user(engine, address).is_locked
    assert _user(engine, address).recovery_email is None, "a reset removes the recovery address"
    with api.client(token) as client:
        assert client.get("/v1/me").status_code == 401, "a reset signs out every session"
    assert api.sign_in(address, "fresh and long enough")


def test_a_reset_for_an_unknown_address_answers_the_same_and_sends_nothing(api: Api, address: str) -> None:
    with api.client() as client:
        answer = client.post("/v1/auth/password-reset", json={"email": address})
    assert answer.status_code == 202
    assert api.mails_to(address) == []


def test_a_user_sees_and_revokes_their_sessions(api: Api, engine: Engine, address: str) -> None:
    api.sign_up(address)
    first, second = api.sign_in(address), api.sign_in(address)
    with api.client(first) as client:
        listed = client.get("/v1/me/sessions").json()["data"]
        assert len(listed) == 2 and sum(s["current"] for s in listed) == 1
        other = next(s["id"] for s in listed if not s["current"])
        assert client.delete(f"/v1/me/sessions/{other}").status_code == 204
        assert client.delete("/v1/me/sessions/ses_01JD0000000000000000000000").status_code == 404
    with api.client(second) as client:
        assert client.get("/v1/me").status_code == 401
    with session_factory(engine)() as session:
        assert session.get(AuthSession, other).revoked_at is not None


def test_profile_updates_check_what_they_are_given(api: Api, address: str) -> None:
    api.sign_up(address)
    with api.client(api.sign_in(address)) as client:
        assert client.patch("/v1/me", json={"picture": "http://example.com/me.png"}).status_code == 422
        assert client.patch("/v1/me", json={"phone": "0301234"}).status_code == 422
        good = client.patch("/v1/me", json={"picture": "https://example.com/me.png", "phone": "+4930123456"})
        assert good.status_code == 200 and good.json()["picture"] == "https://example.com/me.png"


def test_deleting_ones_account_takes_the_password_and_erases_it(api: Api, engine: Engine, address: str) -> None:
    api.sign_up(address)
    with api.client(api.sign_in(address)) as client:
        bare = client.delete("/v1/me")
        assert bare.status_code == 422 and "current_password" in {e["field"] for e in bare.json()["errors"]}, "a session alone is not enough"
        assert client.request("DELETE", "/v1/me", json={"current_password": "a guess at it"}).status_code == 401
        assert _user(engine, address) is not None
        assert client.request("DELETE", "/v1/me", json={"current_password": PASSWORD}).json()["detail"] == "Account deleted."
        assert client.get("/v1/me").status_code == 401
    assert _user(engine, address) is None


@pytest.mark.every_database
def test_simultaneous_failures_on_a_new_key_are_all_counted_without_deadlock(backend: str, engine: Engine, address: str) -> None:
    """Twenty wrong passwords for one new address at the same moment: each is counted once, and
    none fails (an UPDATE after an INSERT IGNORE deadlocked on MariaDB when the row was new)."""
    if backend == "sqlite":
        pytest.skip("SQLite runs one writer at a time: there is no concurrency to test")
    import threading

    from billfold.accounts import sessions as sign_ins
    from billfold.accounts.security import Security
    from billfold.config import Settings
    from billfold.kit.db import transaction

    security = Security.from_settings(Settings(database_url=engine.url.render_as_string(hide_password=False)))
    factory = session_factory(engine)
    start, errors = threading.Barrier(20), []

    def fail(n: int) -> None:
        try:
            start.wait()
            with transaction(factory) as session:
                sign_ins.record_failed_sign_in(session, security, email=address, address=f"203.0.113.{n}", user=None)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=fail, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with factory() as session:
        failures = session.scalar(sa.select(SignInThrottle.failures).where(SignInThrottle.key == sign_ins._email_key(address)))
    assert failures == 20, "every failure counted"


def _median_seconds(send: Callable[[int], httpx.Response], expected: int, times: int = 5) -> float:
    took = []
    for n in range(times):
        start = time.perf_counter()
        answer = send(n)
        took.append(time.perf_counter() - start)
        assert answer.status_code == expected, answer.text
    return statistics.median(took)


@pytest.mark.usefixtures("production_password_hashing")  # the suite's cheap hashing would hide the difference
def test_signing_in_takes_as_long_whether_or_not_the_account_exists_or_is_locked(engine: Engine, tmp_path: Path, address: str) -> None:
    """An unknown address or a locked account answered in 6-10 ms, a wrong password in 120-300 ms:
    the timing told who has an account. Now each costs one Argon2 check (an order of magnitude
    is what is measured, so the bound is loose)."""
    locked = f"locked.{address}"
    limits = {"sign_in_attempts_per_address": 1000, "sign_in_attempts_per_account": 1000}
    with serving(engine, tmp_path, **limits) as url:
        api = Api(url, tmp_path)
        api.sign_up(address)
        api.sign_up(locked)
        with api.client() as client:
            for _ in range(5):
                client.post("/v1/auth/sign-in", json={"email": locked, "password": "not the password"})
            assert _user(engine, locked).is_locked
            sign_in = lambda email, password: client.post("/v1/auth/sign-in", json={"email": email, "password": password})  # noqa: E731
            sign_in(f"warm.{address}", PASSWORD)
            slow = _median_seconds(lambda n: sign_in(address, f"not the password {n}"), 401, times=3)
            unknown = _median_seconds(lambda n: sign_in(f"nobody.{n}.{address}", PASSWORD), 401, times=3)
            locked_out = _median_seconds(lambda n: sign_in(locked, PASSWORD), 401, times=3)
    with session_factory(engine).begin() as session:  # these failures came from 127.0.0.1, as every test's do
        session.execute(sa.delete(SignInThrottle).where(SignInThrottle.key == "address:127.0.0.1"))
    assert unknown >= slow / 2, f"unknown address {unknown * 1000:.0f} ms, a real one {slow * 1000:.0f} ms"
    assert locked_out >= slow / 2, f"locked account {locked_out * 1000:.0f} ms, an open one {slow * 1000:.0f} ms"


@pytest.mark.usefixtures("production_password_hashing")
def test_registering_takes_as_long_whether_or_not_the_address_has_an_account(api: Api, address: str) -> None:
    api.sign_up(address)
    with api.client() as client:
        register = lambda email: client.post("/v1/auth/register", json={"email": email, "password": PASSWORD, "name": "Eve", "last_name": "X"})  # noqa: E731
        register(f"warm.{address}")
        new = _median_seconds(lambda n: register(f"new.{n}.{address}"), 202, times=3)
        taken = _median_seconds(lambda n: register(address), 202, times=3)
    assert taken >= new / 2, f"a taken address {taken * 1000:.0f} ms, a new one {new * 1000:.0f} ms"
