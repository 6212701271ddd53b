"""`billfold purge` deletes ended sign-in state and nothing that can still be used, on each database."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.kit import clock
from billfold.kit.db import session_factory, transaction
from billfold.kit.ids import new_id
from billfold.models import AuthChallenge, AuthSession, OrganizationInvitation, SignInThrottle
from tests import factories as make
from tests.cli import assert_one_line_error, run

pytestmark = pytest.mark.every_database


def _digest() -> str:
    return new_id("h").lower().ljust(64, "0")[:64]


def test_purge_deletes_ended_sign_in_state_and_keeps_what_is_live(engine: Engine) -> None:
    now = clock.now()
    day = timedelta(days=1)
    with transaction(session_factory(engine)) as session:
        user = make.user(session)
        organization = make.organization(session, user)

        def challenge(label: str, expires: timedelta, used: bool = False) -> str:
            row = AuthChallenge(
                user_id=None if label == "anonymous" else user.id,
                purpose="passkey_sign_in",
                secret_hash=_digest(),
                expires_at=now + expires,
                used_at=now if used else None,
            )
            session.add(row)
            session.flush()
            return row.id

        def auth_session(expires: timedelta, revoked: timedelta | None = None) -> str:
            row = AuthSession(
                user_id=user.id,
                token_hash=_digest(),
                transport="bearer",
                last_used_at=now,
                expires_at=now + expires,
                revoked_at=now + revoked if revoked is not None else None,
            )
            session.add(row)
            session.flush()
            return row.id

        def invitation(expires: timedelta) -> str:
            row = OrganizationInvitation(
                organization_id=organization.id, email=f"{new_id('i').lower()}@example.com", role="member",
                token_hash=_digest(), expires_at=now + expires,
            )
            session.add(row)
            session.flush()
            return row.id

        gone = {
            challenge("anonymous", -timedelta(seconds=1)),
            challenge("used", timedelta(minutes=4), used=True),
            auth_session(-31 * day),
            auth_session(day, revoked=-31 * day),
            invitation(-31 * day),
        }
        kept = {
            challenge("live", timedelta(minutes=4)),
            auth_session(day),
            auth_session(day, revoked=-day),  # still listed in the account's history
            invitation(6 * day),
            invitation(-day),
        }
        keys = {f"address:{new_id('a')}": now - timedelta(minutes=16), f"address:{new_id('b')}": now - timedelta(minutes=5), f"user:{user.id}": now - 300 * day}
        session.add_all(SignInThrottle(key=k, failures=3, window_started_at=t) for k, t in keys.items())

    done = run("purge", database_url=engine.url.render_as_string(hide_password=False))
    assert done.code == 0, done.stderr
    assert "auth_challenges" in done.stdout and "deleted" in done.stdout

    with session_factory(engine)() as session:
        ids = set()
        for table in (AuthChallenge, AuthSession, OrganizationInvitation):
            ids |= set(session.scalars(sa.select(table.id).where(table.id.in_(gone | kept))))
        left = set(session.scalars(sa.select(SignInThrottle.key).where(SignInThrottle.key.in_(keys))))
    assert ids == kept
    assert left == set(keys) - {next(iter(keys))}, "the closed window goes; an open one and an account's failures stay"


def test_purge_on_an_unmigrated_database_is_refused_in_one_line(tmp_path) -> None:
    assert_one_line_error(run("purge", database_url=f"sqlite:///{tmp_path}/empty.db"), "billfold db upgrade")
