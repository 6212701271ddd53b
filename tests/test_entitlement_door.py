"""The entitlement door (``billfold.memberships.door``): checks answered in front of FastAPI with
the endpoints' rules and answers. A revoked API key and a signed-out session are refused on the
very next check; a membership granted or cancelled is seen by the very next check, also by
another app on the same database; and the door answers every request it takes (and lets the odd
ones through) exactly as the FastAPI endpoints do."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio
import httpx
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.engine import Engine

from billfold.api import create_app
from billfold.config import Settings
from billfold.kit import clock
from billfold.kit.db import session_factory, transaction
from billfold.models import AuthSession, User
from billfold.memberships.door import EntitlementDoor
from tests.accounts import Api
from tests.test_memberships import membership_type
from tests.test_organizations import api_key, assert_problem, person


def in_process(app: Any, *requests: tuple[str, str, dict[str, str]]) -> list[httpx.Response]:
    """``requests`` (method, path, headers) answered by the ASGI ``app`` in this process, in order."""

    async def ask() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://billfold.test") as client:
            return [await client.request(method, path, headers=headers) for method, path, headers in requests]

    return anyio.run(ask)


def test_a_revoked_key_and_a_signed_out_session_are_refused_on_the_next_check(api: Api, engine: Engine, admin_token: str) -> None:
    ada = person(engine, "ada")
    key = api_key(api, admin_token, "read")
    with api.client(key) as backend:
        assert backend.get(f"/v1/users/{ada.id}/entitlements/reports").json()["allowed"] is False
    with api.client(admin_token) as admin:
        [made] = [k for k in admin.get("/v1/api-keys", params={"limit": 100}).json()["data"] if key.startswith(k["key_prefix"])]
        assert admin.delete(f"/v1/api-keys/{made['id']}").status_code == 200
    with api.client(key) as backend:
        assert_problem(backend.get(f"/v1/users/{ada.id}/entitlements/reports"), 401, "unauthorized")
    with api.client(ada.token) as client:
        assert client.get("/v1/me/entitlements/reports").status_code == 200
        assert client.post("/v1/auth/sign-out").status_code == 204
        assert_problem(client.get("/v1/me/entitlements/reports"), 401, "unauthorized")


def test_a_membership_change_is_seen_by_the_next_check_in_any_app(
    api: Api, engine: Engine, admin_token: str, tmp_path: Path
) -> None:
    ada = person(engine, "ada")
    kind = membership_type(engine, "fixed", 30, ["reports"])
    other = create_app(Settings(database_url=engine.url.render_as_string(hide_password=False), data_dir=tmp_path), engine)
    mine = {"authorization": f"Bearer {ada.token}"}
    with api.client(ada.token) as client:
        assert client.get("/v1/me/entitlements/reports").json()["allowed"] is False
        with api.client(admin_token) as admin:
            granted = admin.post(f"/v1/users/{ada.id}/memberships", json={"membership_type_id": kind})
            assert granted.status_code == 201, granted.text
        assert client.get("/v1/me/entitlements/reports").json()["allowed"] is True
        [seen] = in_process(other, ("GET", "/v1/me/entitlements/reports", mine))
        assert seen.json()["membership_id"] == granted.json()["id"], "another app on the database sees it at once"
        with api.client(admin_token) as admin:
            assert admin.post(f"/v1/memberships/{granted.json()['id']}/cancel", json={}).status_code == 200
        [seen] = in_process(other, ("GET", "/v1/me/entitlements/reports", mine))
        assert seen.json()["allowed"] is False
        assert client.get("/v1/me/entitlements/reports").json()["allowed"] is False


def test_the_door_answers_as_the_endpoints_do(api: Api, engine: Engine, admin_token: str, tmp_path: Path) -> None:
    """Each request through the app (door first) and through FastAPI alone: the same status,
    document and headers; the plain checks go through the door, the odd ones do not."""
    ada = person(engine, "ada")
    key = api_key(api, admin_token, "read")
    write_only = api_key(api, admin_token, "write")
    with api.client(admin_token) as admin:
        granted = admin.post(f"/v1/users/{ada.id}/memberships", json={"membership_type_id": membership_type(engine, "fixed", 30, ["reports"])})
        assert granted.status_code == 201, granted.text
    locked, expired = person(engine, "locked"), person(engine, "expired")
    with transaction(session_factory(engine)) as session:
        session.execute(sa.update(User).where(User.id == locked.id).values(is_locked=True))
        session.execute(sa.update(AuthSession).where(AuthSession.user_id == expired.id).values(expires_at=clock.now() - timedelta(seconds=1)))
    app = create_app(Settings(database_url=engine.url.render_as_string(hide_password=False), data_dir=tmp_path), engine)
    [door] = [d for d in app.doors if isinstance(d, EntitlementDoor)]

    async def without_doors(scope, receive, send):  # type: ignore[no-untyped-def]
        await FastAPI.__call__(app, scope, receive, send)

    cases = [  # (credential, path, whether the door takes it)
        (ada.token, "/v1/me/entitlements/reports", True),
        (ada.token, "/v1/me/entitlements/payroll", True),
        (ada.token, "/v1/me/entitlements/reports?organization_id=org_nothing", True),
        (ada.token, "/v1/me/entitlements/reports?organization_id=", False),
        (ada.token, "/v1/me/entitlements/reports?organization_id=org_a&organization_id=org_b", False),
        (ada.token, "/v1/me/entitlements/reports?colour=blue", False),
        (ada.token, "/v1/me/entitlements/" + "x" * 101, False),
        (ada.token, "/v1/me/entitlements/4111%201111%201111%201111", False),
        (ada.token, f"/v1/users/{ada.id}/entitlements/reports", True),
        (key, f"/v1/users/{ada.id}/entitlements/reports", True),
        (key, "/v1/users/usr_nothing/entitlements/reports", True),
        (key, "/v1/users/someone/entitlements/reports", True),
        (write_only, f"/v1/users/{ada.id}/entitlements/reports", True),
        (key, "/v1/me/entitlements/reports", True),
        (admin_token, f"/v1/users/{ada.id}/entitlements/reports?organization_id=org_nothing", True),
        ("bfk_nothing", "/v1/me/entitlements/reports", True),
        ("bfs_nothing", "/v1/me/entitlements/reports", True),
        (locked.token, "/v1/me/entitlements/reports", True),
        (expired.token, "/v1/me/entitlements/reports", True),
        ("", "/v1/me/entitlements/reports", True),
        (None, "/v1/me/entitlements/reports", False),
    ]
    asked = [("GET", path, {} if credential is None else {"authorization": f"Bearer {credential}".rstrip()}) for credential, path, _ in cases]
    basic = ("GET", "/v1/me/entitlements/reports", {"authorization": "Basic YWRhOnB3"})
    head = ("HEAD", "/v1/me/entitlements/reports", {"authorization": f"Bearer {ada.token}"})
    through_door = in_process(app, *asked, basic, head)
    through_fastapi = in_process(without_doors, *asked, basic, head)
    for (_, path, headers), taken, one, other in zip(asked + [basic, head], [c[2] for c in cases] + [True, False], through_door, through_fastapi):
        assert one.status_code == other.status_code and one.content == other.content, path
        for name in ("content-type", "content-length", "cache-control", "x-content-type-options", "retry-after"):
            assert one.headers.get(name) == other.headers.get(name), (path, name)
        raw, _, query = path.partition("?")
        scope = {"type": "http", "method": one.request.method, "path": unquote(raw), "query_string": query.encode(),
                 "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
        assert door.takes(scope) is taken, path
    assert [a.status_code for a in through_door[-2:]] == [401, 200] and through_door[-1].content == b""
    assert through_door[0].json()["allowed"] is True and through_door[0].json()["membership_id"] == granted.json()["id"]
