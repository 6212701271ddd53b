"""API keys: made by an admin (or `billfold apikey create`), shown once, scoped, revocable, and
the only way besides an admin's session into the admin endpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.kit.db import session_factory
from billfold.models import ApiKey, User
from tests.accounts import Api
from tests.cli import assert_one_line_error, run
from tests.server import serving


def test_an_admin_makes_a_key_that_is_shown_once_and_works(api: Api, engine: Engine, admin_token: str) -> None:
    with api.client(admin_token) as admin:
        made = admin.post("/v1/api-keys", json={"name": "shop backend", "scopes": ["read", "write"]})
        assert made.status_code == 201
        secret, key_id = made.json()["secret"], made.json()["api_key"]["id"]
        assert secret.startswith("bfk_") and made.json()["api_key"]["key_prefix"] == secret[:12]
        listed = admin.get("/v1/api-keys").text
        assert key_id in listed and secret not in listed
    with session_factory(engine)() as session:
        stored = session.get(ApiKey, key_id)
        assert stored.key_hash != secret and secret not in str(stored.__dict__)
    with api.client(secret) as backend:
        assert backend.get("/v1/users").status_code == 200
    with session_factory(engine)() as session:
        assert session.get(ApiKey, key_id).last_used_at is not None


def test_a_read_only_key_cannot_write(api: Api, admin_token: str) -> None:
    with api.client(admin_token) as admin:
        secret = admin.post("/v1/api-keys", json={"name": "reports", "scopes": ["read"]}).json()["secret"]
    with api.client(secret) as reports:
        assert reports.get("/v1/api-keys").status_code == 200
        refused = reports.post("/v1/api-keys", json={"name": "escalate", "scopes": ["write"]})
    assert refused.status_code == 403 and "write" in refused.json()["detail"]


def test_a_revoked_key_stops_working(api: Api, admin_token: str) -> None:
    with api.client(admin_token) as admin:
        made = admin.post("/v1/api-keys", json={"name": "old", "scopes": ["read"]}).json()
        assert admin.delete(f"/v1/api-keys/{made['api_key']['id']}").json()["revoked_at"] is not None
    with api.client(made["secret"]) as old:
        assert old.get("/v1/users").status_code == 401


def test_customers_and_strangers_cannot_reach_admin_endpoints(api: Api, backend: str) -> None:
    address = f"customer.keys.{backend}@example.com"
    api.sign_up(address)
    with api.client(api.sign_in(address)) as customer:
        assert customer.get("/v1/users").status_code == 403
        assert customer.post("/v1/api-keys", json={"name": "mine", "scopes": ["read"]}).status_code == 403
    with api.client() as stranger:
        assert stranger.get("/v1/api-keys").status_code == 401
    with api.client("bfk_not-a-real-key") as forger:
        assert forger.get("/v1/users").status_code == 401


@pytest.mark.parametrize("body", [{"name": "x", "scopes": []}, {"name": "x", "scopes": ["admin"]}, {"name": "", "scopes": ["read"]}])
def test_a_bad_key_request_is_refused_and_makes_nothing(api: Api, engine: Engine, admin_token: str, body: dict) -> None:
    with session_factory(engine)() as session:
        before = session.scalar(sa.select(sa.func.count()).select_from(ApiKey))
    with api.client(admin_token) as admin:
        assert admin.post("/v1/api-keys", json=body).status_code == 422
    with session_factory(engine)() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(ApiKey)) == before


def test_the_cli_prints_a_new_key_that_the_api_accepts(tmp_path: Path) -> None:
    from billfold.kit.db import create_engine

    url = f"sqlite:///{tmp_path / 'shop.db'}"
    assert run("db", "upgrade", database_url=url).code == 0
    made = run("apikey", "create", "--name", "deploy script", "--scope", "read", database_url=url)
    assert made.code == 0, made
    secret = made.stdout.strip()
    assert secret.startswith("bfk_") and "shown only now" in made.stderr
    engine = create_engine(url)
    with serving(engine, tmp_path) as base:
        api = Api(base, tmp_path)
        with api.client(secret) as client:
            assert client.get("/v1/users").status_code == 200
            assert client.post("/v1/api-keys", json={"name": "x", "scopes": ["read"]}).status_code == 403
    engine.dispose()
    assert_one_line_error(run("apikey", "create", "--name", "x", "--scope", "root", database_url=url), "scopes must be")


def _keys(engine: Engine) -> int:
    with session_factory(engine)() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(ApiKey))


def test_a_key_makes_only_keys_with_scopes_it_has(api: Api, engine: Engine, admin_token: str) -> None:
    """A write-only key once made itself a read-and-write key."""
    with api.client(admin_token) as admin:
        writer = admin.post("/v1/api-keys", json={"name": "writer", "scopes": ["write"]}).json()["secret"]
        both = admin.post("/v1/api-keys", json={"name": "both", "scopes": ["read", "write"]}).json()["secret"]
    before = _keys(engine)
    with api.client(writer) as client:
        widened = client.post("/v1/api-keys", json={"name": "escalate", "scopes": ["read", "write"]})
        assert widened.status_code == 403 and widened.json()["code"] == "scope_not_held" and "read" in widened.json()["detail"]
        assert _keys(engine) == before, "a refused key is not made"
        same = client.post("/v1/api-keys", json={"name": "another writer", "scopes": ["write"]})
        assert same.status_code == 201
    made = same.json()
    assert made == {"api_key": {"id": made["api_key"]["id"]}, "secret": made["secret"]}, "no more than the id and the secret"
    with api.client(made["secret"]) as child:
        assert child.get("/v1/api-keys").status_code == 403, "the new key cannot read either"
    with api.client(both) as client:
        reader = client.post("/v1/api-keys", json={"name": "reports", "scopes": ["read"]})
        assert reader.status_code == 201 and reader.json()["api_key"]["scopes"] == ["read"], "a key with read sees what it made"


def test_a_write_only_key_gets_the_ids_of_what_it_writes_and_nothing_it_could_not_read(
    api: Api, engine: Engine, admin_token: str, address: str
) -> None:
    """Unlocking a user with a write-only key answered with the user's email, name and phone; making
    a category or an organization echoed it whole."""
    api.sign_up(address)
    with session_factory(engine)() as session:
        user_id = session.scalars(sa.select(User.id).where(User.email == address)).one()
    with api.client(admin_token) as admin:
        writer = admin.post("/v1/api-keys", json={"name": "writer", "scopes": ["write"]}).json()["secret"]
        spare = admin.post("/v1/api-keys", json={"name": "spare", "scopes": ["read"]}).json()["api_key"]["id"]
    with api.client(writer) as client:
        unlocked = client.post(f"/v1/users/{user_id}/unlock")
        category = client.post("/v1/categories", json={"name": "Write-only shelf", "description": "not to be echoed"})
        organization = client.post("/v1/organizations", json={"name": "Echo Ltd", "owner_user_id": user_id})
        revoked = client.delete(f"/v1/api-keys/{spare}")
    assert unlocked.status_code == 200 and unlocked.json() == {"id": user_id}
    assert address not in unlocked.text
    assert category.status_code == 201 and list(category.json()) == ["id"] and "shelf" not in category.text
    assert organization.status_code == 201 and list(organization.json()) == ["id"] and "Echo" not in organization.text
    assert revoked.status_code == 200 and revoked.json() == {"id": spare}
    assert int(category.headers["content-length"]) == len(category.content)
    with session_factory(engine)() as session:
        assert session.get(ApiKey, spare).revoked_at is not None, "the writes happened"
    with api.client(admin_token) as admin:
        assert admin.get(f"/v1/categories/{category.json()['id']}").json()["name"] == "Write-only shelf"
