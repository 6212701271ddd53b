"""The entitlement door's kept answers (``memberships.door``, ``kit.db.changes``): a check asked
again is answered without the database, and every change its answer depends on, made by any
process on the host (the server itself, another process's ORM flush or plain SQL, the clock
moving on), is seen by the very next check."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from billfold.api import create_app
from billfold.config import Settings
from billfold.kit import clock
from billfold.kit.db import session_factory, transaction
from billfold.kit.db.changes import slot
from billfold.memberships import door
from billfold.memberships.service import grant_manually
from billfold.models import UserMembership
from tests import cli
from tests.accounts import Api
from tests.server import free_port, wait_for_health
from tests.test_entitlement_door import in_process
from tests.test_checkout import HOME, checkout, order
from tests.test_memberships import membership_type, selling
from tests.test_organizations import add_member, api_key, assert_problem, create_organization, person


def granted(engine: Engine, user_id: str, membership_type_id: str) -> str:
    with transaction(session_factory(engine)) as session:
        return grant_manually(session, user_id=user_id, membership_type_id=membership_type_id, by=None).id


def elsewhere(engine: Engine, code: str) -> None:
    """Run ``code`` in another Python process on the same database, with ``session`` open in a
    transaction that commits at the end (``sa``, the models and ``clock`` imported)."""
    prelude = (
        "import sys\nimport sqlalchemy as sa\nfrom billfold.kit import clock\nfrom billfold.kit.db import create_engine, session_factory, transaction\n"
        "from billfold.models import *\n"
        "engine = create_engine(sys.argv[1])\n"
        "with transaction(session_factory(engine)) as session:\n"
    )
    body = "".join(f"    {line}\n" for line in textwrap.dedent(code).strip().splitlines())
    url = engine.url.render_as_string(hide_password=False)
    done = subprocess.run([sys.executable, "-c", prelude + body, url], capture_output=True, text=True, timeout=60, env=os.environ)
    assert done.returncode == 0, done.stderr


class Statements:
    """Counts the statements an engine runs."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        event.listen(engine, "before_cursor_execute", self._seen)
        self._engine = engine

    def _seen(self, *args: Any) -> None:
        self.count += 1

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._seen)

    def during(self, app: Any, path: str, token: str) -> tuple[int, httpx.Response]:
        before = self.count
        [answer] = in_process(app, ("GET", path, {"authorization": f"Bearer {token}"}))
        return self.count - before, answer


def test_a_kept_answer_asks_nothing_until_something_it_was_read_from_changes(engine: Engine, tmp_path: Path) -> None:
    ada = person(engine, "ada")
    bob = person(engine, "bob")
    while slot(f"user:{bob.id}") == slot(f"user:{ada.id}"):  # one mark in 16,383: another bob
        bob = person(engine, "bob")
    kind = membership_type(engine, "fixed", 30, ["reports"])
    ada_membership = granted(engine, ada.id, kind)
    granted(engine, bob.id, kind)
    app = create_app(Settings(database_url=engine.url.render_as_string(hide_password=False), data_dir=tmp_path), engine)
    statements = Statements(engine)
    try:
        path = "/v1/me/entitlements/reports"
        asked, first = statements.during(app, path, ada.token)
        assert asked >= 2 and first.json()["allowed"] is True
        asked, again = statements.during(app, path, ada.token)
        assert (asked, again.content, again.headers.get("cache-control")) == (0, first.content, first.headers.get("cache-control"))

        with transaction(session_factory(engine)) as session:  # someone else's membership changes
            session.get(UserMembership, session.scalar(sa.select(UserMembership.id).where(UserMembership.user_id == bob.id))).end_date = clock.now() + timedelta(days=60)
        asked, again = statements.during(app, path, ada.token)
        assert asked == 0 and again.content == first.content, "another user's change leaves ada's answer kept"

        with transaction(session_factory(engine)) as session:  # ada's own ends (an ORM change: her mark moves)
            session.get(UserMembership, ada_membership).end_date = clock.now() - timedelta(seconds=1)
        asked, after = statements.during(app, path, ada.token)
        assert asked >= 2 and after.json()["allowed"] is False

        with transaction(session_factory(engine)) as session:  # plain SQL on a watched table: every mark
            session.execute(sa.update(UserMembership).where(UserMembership.user_id == bob.id).values(auto_renew=True))
        asked, again = statements.during(app, path, ada.token)
        assert asked >= 2 and again.json()["allowed"] is False
        asked, _ = statements.during(app, path, ada.token)
        assert asked == 0

        off = create_app(Settings(
            database_url=engine.url.render_as_string(hide_password=False), data_dir=tmp_path, entitlement_cache=False,
        ), engine)
        assert [statements.during(off, path, ada.token)[0] >= 2 for _ in range(2)] == [True, True], "BILLFOLD_ENTITLEMENT_CACHE=false"
    finally:
        statements.close()


def test_every_change_an_answer_depends_on_is_seen_by_the_next_check(
    frozen_clock: clock.FrozenClock, api: Api, engine: Engine, admin_token: str
) -> None:
    owner, member, ada = person(engine, "owner"), person(engine, "member"), person(engine, "ada")
    organization = create_organization(api, owner)
    add_member(api, owner, organization, member)
    kind = membership_type(engine, "fixed", 30, ["reports", "exports"])
    backend = api_key(api, admin_token, "read")

    def ask(token: str, feature: str = "reports", **params: str) -> httpx.Response:
        with api.client(token) as client:
            return client.get(f"/v1/me/entitlements/{feature}", params=params)

    def twice(token: str, feature: str = "reports", **params: str) -> httpx.Response:
        first, second = ask(token, feature, **params), ask(token, feature, **params)
        assert first.status_code == second.status_code and first.content == second.content
        return second

    # A membership granted in another process (its ORM flush moves ada's mark).
    assert twice(ada.token).json()["allowed"] is False
    now = frozen_clock.now()
    elsewhere(engine, f"""
        from datetime import datetime, timedelta
        from billfold.memberships.service import grant_manually
        start = datetime.fromisoformat("{now.isoformat()}")
        grant_manually(session, user_id="{ada.id}", membership_type_id="{kind}", by=None, start_date=start, end_date=start + timedelta(days=30))
    """)
    mine = ask(ada.token)
    assert mine.json()["allowed"] is True and mine.json()["until"] is not None

    # An organization's membership, bought over the API, for a member.
    assert twice(member.token, organization_id=organization).json()["allowed"] is False
    with api.client(owner.token) as client:
        assert client.post(f"/v1/organizations/{organization}/addresses", json=HOME).status_code == 201
        made = order(api, owner.token, (selling(engine, kind), 1), organization_id=organization)
        assert checkout(client, made["id"]).status_code == 200
    seat = ask(member.token, organization_id=organization).json()
    assert seat["allowed"] is True and seat["organization_id"] == organization

    # Its type's features edited over the API.
    assert twice(member.token, "exports", organization_id=organization).json()["allowed"] is True
    with api.client(admin_token) as admin:
        assert admin.patch(f"/v1/membership-types/{kind}", json={"features": ["reports"]}).status_code == 200
    assert ask(member.token, "exports", organization_id=organization).json()["allowed"] is False

    # Ended by plain SQL in another process (every mark moves).
    assert twice(member.token, organization_id=organization).json()["allowed"] is True
    elsewhere(engine, f"""
        session.execute(sa.update(UserMembership).where(UserMembership.id == "{seat['membership_id']}").values(end_date=clock.now() - __import__("datetime").timedelta(days=400)))
    """)
    assert ask(member.token, organization_id=organization).json()["allowed"] is False

    # The member removed over the API: the organization is not theirs to ask about.
    assert twice(member.token, organization_id=organization).status_code == 200
    with api.client(owner.token) as client:
        assert client.delete(f"/v1/organizations/{organization}/members/{member.id}").status_code == 204
    assert_problem(ask(member.token, organization_id=organization), 404, "not_found")

    # The user locked, by an ORM change in another process: the session no longer names them.
    assert twice(owner.token).status_code == 200
    elsewhere(engine, f'session.get(User, "{owner.id}").is_locked = True')
    assert_problem(ask(owner.token), 401, "unauthorized")

    # Time alone: ada's membership ends while nothing is written (asked with an API key: her
    # session, of a day, ends first, and is refused then too).
    with api.client(backend) as client:
        first = client.get(f"/v1/users/{ada.id}/entitlements/reports")
        assert first.json()["allowed"] is True and client.get(f"/v1/users/{ada.id}/entitlements/reports").content == first.content
        frozen_clock.advance(timedelta(days=2))
        assert_problem(ask(ada.token), 401, "unauthorized")
        assert client.get(f"/v1/users/{ada.id}/entitlements/reports").json()["allowed"] is True
        frozen_clock.advance(timedelta(days=28))
        assert client.get(f"/v1/users/{ada.id}/entitlements/reports").json()["allowed"] is False


@pytest.mark.every_database
def test_checks_racing_with_changes_never_see_a_change_late(api: Api, engine: Engine, admin_token: str) -> None:
    """8 clients check without pause while a membership is granted and cancelled 10 times over
    the API, a twentieth of a second apart: a check that starts after a change was answered, and ends before the next one is
    asked, sees it."""
    ada = person(engine, "ada")
    kind = membership_type(engine, "fixed", 30, ["reports"])
    lock = threading.Lock()
    state = {"allowed": False, "changes": 0}  # changes: odd while one is being made
    late: list[str] = []
    failed: list[str] = []
    settled = [0]  # checks asked and answered between two changes
    stop = threading.Event()

    def checker() -> None:
        with api.client(ada.token) as client:
            while not stop.is_set():
                with lock:
                    expected, before = state["allowed"], state["changes"]
                answer = client.get("/v1/me/entitlements/reports")
                with lock:
                    between = before % 2 == 0 and state["changes"] == before
                    settled[0] += between
                if answer.status_code != 200:
                    failed.append(f"{answer.status_code} {answer.text[:200]}")
                elif between and answer.json()["allowed"] is not expected:
                    late.append(f"after change {before}: {answer.json()}")

    def change(request: Any, allowed: bool) -> httpx.Response:
        with lock:
            state["changes"] += 1
        answer = request()
        with lock:
            state["allowed"], state["changes"] = allowed, state["changes"] + 1
        time.sleep(0.05)  # checks that start and end before the next change
        return answer

    threads = [threading.Thread(target=checker) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        with api.client(admin_token) as admin:
            for _ in range(10):
                made = change(lambda: admin.post(f"/v1/users/{ada.id}/memberships", json={"membership_type_id": kind}), True)
                assert made.status_code == 201, made.text
                cancelled = change(lambda: admin.post(f"/v1/memberships/{made.json()['id']}/cancel", json={}), False)
                assert cancelled.status_code == 200, cancelled.text
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert failed == [] and late == []
    assert settled[0] >= 100


def test_a_clock_set_back_reads_a_kept_answer_again(frozen_clock: clock.FrozenClock, engine: Engine, tmp_path: Path) -> None:
    """A kept answer holds from the time it was read on: with the clock set back before a
    membership's start (a test's clock may be), the check is read again and refused."""
    ada = person(engine, "ada")
    kind = membership_type(engine, "fixed", 30, ["reports"])
    now = frozen_clock.now()
    with transaction(session_factory(engine)) as session:
        grant_manually(session, user_id=ada.id, membership_type_id=kind, by=None, start_date=now)
    app = create_app(Settings(database_url=engine.url.render_as_string(hide_password=False), data_dir=tmp_path), engine)
    statements = Statements(engine)
    try:
        assert statements.during(app, "/v1/me/entitlements/reports", ada.token)[1].json()["allowed"] is True
        asked, kept = statements.during(app, "/v1/me/entitlements/reports", ada.token)
        assert asked == 0 and kept.json()["allowed"] is True
        frozen_clock.set(now - timedelta(hours=1))
        asked, before = statements.during(app, "/v1/me/entitlements/reports", ada.token)
        assert asked >= 1 and before.json()["allowed"] is False
    finally:
        statements.close()


def test_two_server_processes_each_see_a_change_the_other_made(engine: Engine, admin_token: str, tmp_path: Path) -> None:
    """``billfold serve --workers 2``: checks on fresh connections land on both processes, each
    keeps its answers; a membership cancelled through one process, then granted in this one, is
    seen by every check after, whichever process answers it."""
    ada = person(engine, "ada")
    kind = membership_type(engine, "fixed", 30, ["reports"])
    first = granted(engine, ada.id, kind)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}
    env.update(BILLFOLD_DATABASE_URL=engine.url.render_as_string(hide_password=False), BILLFOLD_DATA_DIR=str(tmp_path / "data"),
               BILLFOLD_WORKER="off", BILLFOLD_PUBLIC_URL=f"http://127.0.0.1:{port}")
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen([cli.BILLFOLD, "serve", "--port", str(port), "--workers", "2", "--no-access-log"],
                                  env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def checks(n: int = 30) -> set[bool]:
        seen = set()
        for _ in range(n):  # a connection each: the two processes take turns accepting them
            answer = httpx.get(f"{base}/v1/me/entitlements/reports", headers={"authorization": f"Bearer {ada.token}"}, timeout=30)
            assert answer.status_code == 200, answer.text
            seen.add(answer.json()["allowed"])
        return seen

    try:
        wait_for_health(server, base, log)
        assert checks() == {True}
        cancelled = httpx.post(f"{base}/v1/memberships/{first}/cancel", json={}, headers={"authorization": f"Bearer {admin_token}"}, timeout=30)
        assert cancelled.status_code == 200, cancelled.text
        assert checks() == {False}
        granted(engine, ada.id, kind)
        assert checks() == {True}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.every_database
def test_plain_sql_on_a_watched_table_moves_every_mark_also_behind_a_cte(engine: Engine, backend: str, tmp_path: Path) -> None:
    """A kept answer is read again after any INSERT, UPDATE or DELETE on a table answers are read
    from, whoever's rows it touched, also one that starts with WITH (where the database has it)."""
    ada, bob = person(engine, "ada"), person(engine, "bob")
    kind = membership_type(engine, "fixed", 30, ["reports"])
    granted(engine, ada.id, kind)
    app = create_app(Settings(database_url=engine.url.render_as_string(hide_password=False), data_dir=tmp_path), engine)
    statements = Statements(engine)
    writes = ["UPDATE user_memberships SET auto_renew = auto_renew WHERE user_id = :bob"]
    if backend != "mariadb":  # MariaDB has no WITH before an UPDATE
        writes.append("WITH them AS (SELECT id FROM users WHERE id = :bob) UPDATE user_memberships SET auto_renew = auto_renew "
                      "WHERE user_id IN (SELECT id FROM them)")
    try:
        for write in writes:
            statements.during(app, "/v1/me/entitlements/reports", ada.token)
            assert statements.during(app, "/v1/me/entitlements/reports", ada.token)[0] == 0, "kept"
            with engine.begin() as connection:
                connection.execute(sa.text(write), {"bob": bob.id})
            asked, answer = statements.during(app, "/v1/me/entitlements/reports", ada.token)
            assert asked >= 1 and answer.json()["allowed"] is True, write
    finally:
        statements.close()


def test_a_process_keeps_a_bounded_number_of_answers_forgetting_the_oldest(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asking about ever more features (an attacker's random names, or a large shop) keeps at most
    ``KEPT_AT_MOST`` answers a process: the oldest are forgotten and read again, the latest stay."""
    monkeypatch.setattr(door, "KEPT_AT_MOST", 16)
    ada = person(engine, "ada")
    app = create_app(Settings(database_url=engine.url.render_as_string(hide_password=False), data_dir=tmp_path), engine)
    [kept] = [d for d in app.doors if isinstance(d, door.EntitlementDoor)]
    statements = Statements(engine)
    try:
        for n in range(40):
            assert statements.during(app, f"/v1/me/entitlements/feature{n}", ada.token)[1].json()["allowed"] is False
            assert len(kept._answers) <= 16
        assert statements.during(app, "/v1/me/entitlements/feature39", ada.token)[0] == 0, "the latest is kept"
        assert statements.during(app, "/v1/me/entitlements/feature0", ada.token)[0] >= 1, "the oldest was forgotten"
    finally:
        statements.close()
