"""API keys kept in the API process (``accounts.auth._bearer_principal``): a merchant's backend
sends its key with every request, and a key asked again is taken from memory, with no transaction.
A key revoked or narrowed, by the API or by any other process on the host, is refused by the very
next request; its last use is still noted once a minute."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from billfold.api import create_app
from billfold.config import Settings
from billfold.kit import clock
from billfold.kit.db import session_factory
from billfold.models import ApiKey
from tests.test_entitlement_cache import elsewhere
from tests.test_organizations import assert_problem


class Reads:
    """Counts the statements an engine runs that name the ``api_keys`` table."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        self._engine = engine
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "api_keys" in statement:
            self.count += 1

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._seen)


def ask(app: Any, *requests: tuple[str, str, str | None, Any]) -> list[httpx.Response]:
    """``requests`` (method, path, bearer token, JSON body) answered by ``app`` in this process."""

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://billfold.test") as client:
            answers = []
            for method, path, token, body in requests:
                headers = {"authorization": f"Bearer {token}"} if token else {}
                answers.append(await client.request(method, path, headers=headers, json=body))
            return answers

    return anyio.run(run)


@pytest.fixture
def app(engine: Engine, tmp_path: Path) -> Any:
    return create_app(Settings(database_url=engine.url.render_as_string(hide_password=False), data_dir=tmp_path), engine)


def made_key(app: Any, admin_token: str, *scopes: str) -> tuple[str, str]:
    [made] = ask(app, ("POST", "/v1/api-keys", admin_token, {"name": "backend", "scopes": list(scopes)}))
    assert made.status_code == 201, made.text
    return made.json()["api_key"]["id"], made.json()["secret"]


def test_a_key_asked_again_is_not_read_and_its_revocation_is_refused_next(app: Any, engine: Engine, admin_token: str) -> None:
    key_id, secret = made_key(app, admin_token, "read", "write")
    reads = Reads(engine)
    try:
        [first] = ask(app, ("GET", "/v1/orders", secret, None))
        assert first.status_code == 200, first.text
        assert reads.count >= 1
        before = reads.count
        answers = ask(app, *[("GET", "/v1/orders", secret, None)] * 5)
        assert [a.status_code for a in answers] == [200] * 5
        assert reads.count == before, "a key asked again is taken from memory"
        [revoked] = ask(app, ("DELETE", f"/v1/api-keys/{key_id}", admin_token, None))
        assert revoked.status_code == 200, revoked.text
        [refused] = ask(app, ("GET", "/v1/orders", secret, None))
        assert_problem(refused, 401, "unauthorized")
    finally:
        reads.close()


@pytest.mark.parametrize("how", ["orm", "sql"])
def test_a_key_changed_by_another_process_is_seen_by_the_next_request(app: Any, engine: Engine, admin_token: str, how: str) -> None:
    key_id, secret = made_key(app, admin_token, "read", "write")
    answers = ask(app, *[("GET", "/v1/orders", secret, None)] * 2)
    assert [a.status_code for a in answers] == [200, 200]
    if how == "orm":  # the key loses its write scope
        elsewhere(engine, f"session.get(ApiKey, {key_id!r}).scopes = ['read']")
        [narrowed] = ask(app, ("POST", "/v1/api-keys", secret, {"name": "wider", "scopes": ["read"]}))
        assert_problem(narrowed, 403, "forbidden")
        [still] = ask(app, ("GET", "/v1/orders", secret, None))
        assert still.status_code == 200
    else:  # revoked by plain SQL
        elsewhere(engine, f"session.execute(sa.text(\"UPDATE api_keys SET revoked_at = created_at WHERE id = '{key_id}'\"))")
        [refused] = ask(app, ("GET", "/v1/orders", secret, None))
        assert_problem(refused, 401, "unauthorized")


def test_a_kept_key_still_has_its_last_use_noted_every_minute(
    frozen_clock: clock.FrozenClock, app: Any, engine: Engine, admin_token: str
) -> None:
    key_id, secret = made_key(app, admin_token, "read")
    sessions = session_factory(engine)

    def last_used() -> Any:
        with sessions() as session:
            return session.scalar(sa.select(ApiKey.last_used_at).where(ApiKey.id == key_id))

    assert ask(app, ("GET", "/v1/orders", secret, None))[0].status_code == 200
    noted = last_used()
    assert noted is not None
    frozen_clock.advance(timedelta(seconds=30))
    assert ask(app, ("GET", "/v1/orders", secret, None))[0].status_code == 200
    assert last_used() == noted, "noted at most once a minute"
    frozen_clock.advance(timedelta(seconds=31))
    assert ask(app, ("GET", "/v1/orders", secret, None))[0].status_code == 200
    assert last_used() == noted + timedelta(seconds=61)
