"""The sandbox billing clock: kept in the database so every process agrees, moved only forward and
only in sandbox mode, from the CLI and the admin API, with every sweep catching up as it moves."""

from __future__ import annotations

import re

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold import worker
from billfold.config import Settings
from billfold.kit import clock
from billfold.kit.db import create_engine, session_factory, transaction
from billfold.kit.errors import ConfigurationError, InvalidInput
from billfold.kit.ids import new_id
from billfold.models import AuthChallenge, User
from tests.cli import assert_one_line_error, run
from tests.server import serving

pytestmark = pytest.mark.every_database

DAY = timedelta(days=1)


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'billfold.db'}"
    assert run("db", "upgrade", database_url=url).code == 0
    engine = create_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def reset_clock(engine: Engine) -> Iterator[Engine]:
    """The shared test database's billing clock, put back at real time afterwards."""
    yield engine
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE billing_clock SET offset_seconds = 0 WHERE id = 1"))


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _challenge(engine: Engine, expires_in: timedelta) -> str:
    with transaction(session_factory(engine)) as session:
        row = AuthChallenge(
            user_id=None, purpose="passkey_sign_in", secret_hash=new_id("h").lower().ljust(64, "0")[:64],
            expires_at=clock.SystemClock().now() + expires_in,
        )
        session.add(row)
        session.flush()
        return row.id


def _exists(engine: Engine, challenge_id: str) -> bool:
    with engine.connect() as connection:
        return connection.scalar(sa.select(sa.func.count()).where(AuthChallenge.id == challenge_id)) == 1


def test_every_database_clock_on_one_database_agrees_and_only_moves_forward(reset_clock: Engine) -> None:
    api, workers = clock.DatabaseClock(reset_clock), clock.DatabaseClock(reset_clock, cache_seconds=0)
    before = workers.now()
    moved = api.advance("30d")
    assert moved - before >= timedelta(days=30)
    assert workers.now() - moved < timedelta(seconds=5), "another process sees the new time at once (no cache)"
    assert workers.offset() == api.offset() >= timedelta(days=30)
    with pytest.raises(InvalidInput, match="only moves forward"):
        api.advance(timedelta(seconds=-1))
    with pytest.raises(InvalidInput, match="is not a duration"):
        api.advance("-3d")
    assert api.refresh() == workers.offset(), "refused moves changed nothing"


def test_a_database_whose_clock_moved_refuses_to_run_outside_sandbox_mode(reset_clock: Engine) -> None:
    settings = Settings(database_url=_url(reset_clock), sandbox=False)
    assert not isinstance(worker.install_clock(settings, reset_clock), clock.DatabaseClock)
    clock.DatabaseClock(reset_clock).advance("1h")
    with pytest.raises(ConfigurationError, match="runs only with BILLFOLD_SANDBOX=true"):
        worker.install_clock(settings, reset_clock)


def test_advancing_steps_through_each_day_and_catches_up_at_each(reset_clock: Engine) -> None:
    seen: list[datetime] = []

    def watch(context: worker.Context) -> int:
        seen.append(clock.now())
        return 0

    context = worker.make_context(Settings(database_url=_url(reset_clock), sandbox=True), reset_clock)
    sweeps = [worker.Sweep("test.watch", watch, timedelta(minutes=1))]
    moved = worker.advance_clock(context, timedelta(days=3, hours=12), sweeps=sweeps)
    assert moved.steps == 4 and moved.done == {"test.watch": 0}
    gaps = [b - a for a, b in zip([moved.before, *seen], seen)]
    assert [round(g / timedelta(hours=1)) for g in gaps] == [24, 24, 24, 12], "each day in order, then the rest"


def test_a_year_with_idle_sweeps_takes_seconds(reset_clock: Engine) -> None:
    context = worker.make_context(Settings(database_url=_url(reset_clock), sandbox=True), reset_clock)
    started = datetime.now()
    moved = worker.advance_clock(context, "365d", sweeps=[worker.Sweep("test.idle", lambda c: 0, DAY)])
    assert moved.steps == 365
    assert datetime.now() - started < timedelta(seconds=60)


def test_clock_advance_on_the_command_line_moves_time_for_every_process(sqlite_file: Engine, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("BILLFOLD_SANDBOX=true\n")
    soon = _challenge(sqlite_file, expires_in=10 * DAY)
    later = _challenge(sqlite_file, expires_in=40 * DAY)

    result = run("clock", "advance", "30d", database_url=_url(sqlite_file), cwd=tmp_path)
    assert result.code == 0, result
    assert "Clock moved 30d ahead in 30 steps" in result.stdout
    assert re.search(r"^  accounts\.purge +1$", result.stdout, re.M), "the challenge that expired on day 10 was purged on the way"
    assert not _exists(sqlite_file, soon) and _exists(sqlite_file, later)

    shown = run("clock", "show", database_url=_url(sqlite_file), cwd=tmp_path)
    assert shown.code == 0, shown
    assert "offset: 2592000s (30 days, 0:00:00 ahead of real time)" in shown.stdout
    now = datetime.fromisoformat(shown.stdout.split("now: ")[1].split()[0])
    assert abs(now - (clock.SystemClock().now() + 30 * DAY)) < timedelta(minutes=5), "another process sees the new now"
    assert "sandbox: on" in shown.stdout


def test_clock_advance_is_refused_outside_sandbox_mode(sqlite_file: Engine, tmp_path: Path) -> None:
    result = run("clock", "advance", "30d", database_url=_url(sqlite_file), cwd=tmp_path)
    assert_one_line_error(result, "the billing clock moves only in sandbox mode (BILLFOLD_SANDBOX=true)")
    assert clock.read_offset_seconds(sqlite_file) == 0


def test_clock_advance_refuses_a_malformed_duration(sqlite_file: Engine, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("BILLFOLD_SANDBOX=true\n")
    result = run("clock", "advance", "a month", database_url=_url(sqlite_file), cwd=tmp_path)
    assert_one_line_error(result, "'a month' is not a duration")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def customer_token(engine: Engine) -> str:
    from billfold.accounts.sessions import open_session

    with session_factory(engine).begin() as session:
        user = User(name="Cy", last_name="Customer", email=f"{new_id('c').lower()}@example.com", user_type="individual")
        session.add(user)
        session.flush()
        _, token = open_session(session, user, transport="bearer", address=None, user_agent="tests", days=90)
    return token


def test_admins_move_the_clock_through_the_api_and_see_what_caught_up(
    reset_clock: Engine, admin_token: str, tmp_path: Path
) -> None:
    expiring = _challenge(reset_clock, expires_in=timedelta(hours=2))
    with serving(reset_clock, tmp_path, sandbox=True) as url:
        before = httpx.get(f"{url}/v1/admin/clock", headers=_bearer(admin_token)).json()
        assert before["sandbox"] is True and before["offset_seconds"] == 0

        answer = httpx.post(
            f"{url}/v1/admin/clock/advance", json={"by": "3h"}, headers=_bearer(admin_token), timeout=120
        )
        assert answer.status_code == 200, answer.text
        moved = answer.json()
        assert moved["offset_seconds"] == 3 * 3600 and moved["steps"] == 1
        assert moved["done"]["accounts.purge"] >= 1
        assert not _exists(reset_clock, expiring)
        assert datetime.fromisoformat(moved["now"]) - datetime.fromisoformat(moved["before"]) >= timedelta(hours=3)

        after = httpx.get(f"{url}/v1/admin/clock", headers=_bearer(admin_token)).json()
        assert after["offset_seconds"] == 3 * 3600
        assert datetime.fromisoformat(after["now"]) - clock.SystemClock().now() > timedelta(hours=2, minutes=55)


def test_the_clock_api_refuses_strangers_customers_and_bad_durations(
    reset_clock: Engine, admin_token: str, customer_token: str, tmp_path: Path
) -> None:
    with serving(reset_clock, tmp_path, sandbox=True) as url:
        advance = f"{url}/v1/admin/clock/advance"
        assert httpx.post(advance, json={"by": "1d"}).status_code == 401
        assert httpx.get(f"{url}/v1/admin/clock").status_code == 401
        refused = httpx.post(advance, json={"by": "1d"}, headers=_bearer(customer_token))
        assert refused.status_code == 403, refused.text
        assert httpx.get(f"{url}/v1/admin/clock", headers=_bearer(customer_token)).status_code == 403

        bad = httpx.post(advance, json={"by": "next tuesday"}, headers=_bearer(admin_token))
        assert bad.status_code == 422
        assert bad.headers["content-type"].startswith("application/problem+json")
        assert [e["field"] for e in bad.json()["errors"]] == ["by"]
        assert "is not a duration" in bad.json()["detail"]
        too_far = httpx.post(advance, json={"by": "100000d"}, headers=_bearer(admin_token))
        assert too_far.status_code == 422 and too_far.json()["errors"][0]["field"] == "by"
    assert clock.read_offset_seconds(reset_clock) == 0


def test_the_clock_api_refuses_to_move_outside_sandbox_mode(
    reset_clock: Engine, admin_token: str, tmp_path: Path
) -> None:
    with serving(reset_clock, tmp_path) as url:
        state = httpx.get(f"{url}/v1/admin/clock", headers=_bearer(admin_token), timeout=30).json()
        assert state["sandbox"] is False
        refused = httpx.post(f"{url}/v1/admin/clock/advance", json={"by": "30d"}, headers=_bearer(admin_token), timeout=30)
        assert refused.status_code == 409
        assert refused.json()["code"] == "sandbox_only"
        assert "only in sandbox mode" in refused.json()["detail"]
    assert clock.read_offset_seconds(reset_clock) == 0
