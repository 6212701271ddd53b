"""Payment providers over HTTP, on each database: admins add and change them, secrets in their
config are encrypted at rest and never come back, and the adapters follow the rows."""

from __future__ import annotations

import json
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.accounts.security import Security
from billfold.config import Settings
from billfold.kit.db import session_factory, transaction
from billfold.kit.ids import new_id
from billfold.kit.money import Money
from billfold.models import PaymentEvent, PaymentProvider
from billfold.payments import provider_config
from billfold.providers import standard_webhooks
from tests.accounts import Api
from tests.test_organizations import api_key, assert_problem, person

WEBHOOK_SECRET = standard_webhooks.make_secret(b"a webhook secret for these tests!")
API_KEY = "sk_test_" + "s3cr3t" * 6


def slug() -> str:
    return "sb_" + new_id("x")[-12:].lower()


def test_an_admin_adds_a_provider_whose_secrets_never_come_back(api: Api, engine: Engine, admin_token: str) -> None:
    provider_id = slug()
    body = {
        "id": provider_id, "kind": "sandbox", "display_name": "Sandbox EU",
        "picture": "https://example.com/sandbox.svg",
        "config": {"webhook_secret": WEBHOOK_SECRET, "api_key": API_KEY, "region": "eu"},
    }
    answers = []
    with api.client(admin_token) as admin:
        made = admin.post("/v1/payment-providers", json=body)
        assert made.status_code == 201, made.text
        shown = made.json()
        assert shown["kind"] == "sandbox" and shown["is_active"] is True
        assert shown["supports_saved_methods"] is True and shown["supports_subscriptions"] is True
        assert shown["config"] == {"webhook_secret": {"set": True}, "api_key": {"set": True}, "region": "eu"}
        answers.append(made.text)
        answers.append(admin.get(f"/v1/payment-providers/{provider_id}").text)
        answers.append(admin.get("/v1/payment-providers", params={"limit": 100}).text)
        assert provider_id in answers[-1]
        changed = admin.patch(
            f"/v1/payment-providers/{provider_id}",
            json={"display_name": "Sandbox Europe", "config": {"api_key": API_KEY + "2", "region": None}},
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["config"] == {"webhook_secret": {"set": True}, "api_key": {"set": True}}
        assert changed.json()["display_name"] == "Sandbox Europe"
        answers.append(changed.text)
        assert_problem(admin.post("/v1/payment-providers", json=body), 409, "provider_exists", "id")
    for answer in answers:
        assert WEBHOOK_SECRET not in answer and "s3cr3t" not in answer
    with engine.connect() as connection:
        raw = connection.execute(sa.text("SELECT config FROM payment_providers WHERE id = :id"), {"id": provider_id}).scalar_one()
    raw_text = raw if isinstance(raw, str) else json.dumps(raw)
    assert WEBHOOK_SECRET not in raw_text and "s3cr3t" not in raw_text and "$encrypted" in raw_text
    # The adapter gets the secrets decrypted (with the server's key, kept in its data_dir), and a
    # change of the row reaches it.
    security = Security.from_settings(Settings(database_url="sqlite://", data_dir=api.data_dir))
    with transaction(session_factory(engine)) as session:
        adapter = provider_config.adapter_for_provider(session, security, provider_id)
        assert adapter.webhook_secret == WEBHOOK_SECRET  # type: ignore[attr-defined]
        assert provider_config.open_config(security, provider_id, session.get(PaymentProvider, provider_id).config)["api_key"] == API_KEY + "2"
        assert provider_config.adapter_for_provider(session, security, provider_id) is adapter
        events = session.scalars(
            sa.select(PaymentEvent.event_type).where(PaymentEvent.entity_type == "payment_provider", PaymentEvent.entity_id == provider_id)
        ).all()
        assert sorted(events) == ["created", "updated"]
    other = standard_webhooks.make_secret(b"another webhook secret for tests")
    with api.client(admin_token) as admin:
        assert admin.patch(f"/v1/payment-providers/{provider_id}", json={"config": {"webhook_secret": other}}).status_code == 200
    with transaction(session_factory(engine)) as session:
        assert provider_config.adapter_for_provider(session, security, provider_id).webhook_secret == other  # type: ignore[attr-defined]


def test_only_admins_manage_providers_and_a_read_key_may_look(api: Api, engine: Engine, admin_token: str) -> None:
    provider_id = slug()
    customer = person(engine, "customer")
    read, write = api_key(api, admin_token, "read"), api_key(api, admin_token, "write")
    body = {"id": provider_id, "kind": "sandbox", "display_name": "Sandbox"}
    with api.client(customer.token) as client:
        assert client.post("/v1/payment-providers", json=body).status_code == 403
        assert client.get("/v1/payment-providers").status_code == 403
    with api.client(read) as client:
        assert client.post("/v1/payment-providers", json=body).status_code == 403
    with api.client(write) as client:
        assert client.post("/v1/payment-providers", json=body).status_code == 201
        assert client.get(f"/v1/payment-providers/{provider_id}").status_code == 403
    with api.client(read) as client:
        assert client.get(f"/v1/payment-providers/{provider_id}").json()["id"] == provider_id


def test_a_provider_that_cannot_work_is_refused_naming_the_field(api: Api, admin_token: str) -> None:
    with api.client(admin_token) as admin:
        def post(**fields: object) -> object:
            return admin.post("/v1/payment-providers", json={"id": slug(), "kind": "sandbox", "display_name": "S", **fields})

        assert_problem(post(kind="stripe_classic"), 422, "invalid_provider_config", "kind")
        assert_problem(post(id="Not A Slug"), 422, "invalid_input", "id")
        assert_problem(post(picture="http://example.com/logo.png"), 422, "invalid_input", "picture")
        assert_problem(post(config={"kind": "sandbox"}), 422, "invalid_provider_config", "config.kind")
        bad_secret = post(config={"webhook_secret": "not-a-whsec-secret-xyz"})
        assert_problem(bad_secret, 422, "invalid_provider_config", "config")
        assert "not-a-whsec-secret-xyz" not in bad_secret.text
        assert_problem(post(unknown=1), 422, "invalid_input", "unknown")
        assert_problem(admin.get("/v1/payment-providers/nothing_here"), 404, "not_found")
        assert_problem(admin.patch("/v1/payment-providers/nothing_here", json={"is_active": False}), 404, "not_found")
        # Saved methods default to what the adapter can do.
        made = post(config={"disable": ["saved_methods"]})
        assert made.status_code == 201, made.text
        assert made.json()["supports_saved_methods"] is False and made.json()["supports_subscriptions"] is False


def test_a_switched_off_provider_gives_no_adapter_and_the_default_follows_the_setting(
    engine: Engine, tmp_path: Path
) -> None:
    provider_id = slug()
    security = Security.from_settings(Settings(database_url="sqlite://", data_dir=tmp_path, default_provider=provider_id))
    with transaction(session_factory(engine)) as session:
        provider_config.create_provider(session, security, {"id": provider_id, "kind": "sandbox", "display_name": "S"})
    with transaction(session_factory(engine)) as session:
        assert provider_config.default_provider(session, security).id == provider_id
        adapter = provider_config.adapter_for_provider(session, security, provider_id)
        assert Path(adapter.store.path) == (tmp_path / "sandbox.sqlite3").resolve()  # type: ignore[attr-defined]
        provider_config.update_provider(session, security, provider_id, {"is_active": False})
    with transaction(session_factory(engine)) as session:
        try:
            provider_config.adapter_for_provider(session, security, provider_id)
        except provider_config.ProviderInactive as error:
            assert error.status == 409
        else:
            raise AssertionError("an inactive provider gave an adapter")


def test_a_sandbox_with_latency_is_that_slow_and_a_bad_latency_is_refused(
    api: Api, engine: Engine, admin_token: str, tmp_path: Path
) -> None:
    """The latency knob (docs/providers.md): a charge waits at least latency_ms, given in the
    provider's config or, for a whole server, by BILLFOLD_SANDBOX_LATENCY_MS. Adds about 0.4 s."""
    slow, plain = slug(), slug()
    with api.client(admin_token) as admin:
        def post(provider_id: str, config: dict) -> object:
            return admin.post("/v1/payment-providers",
                              json={"id": provider_id, "kind": "sandbox", "display_name": "S", "config": config})

        for bad in ({"latency_ms": -1}, {"latency_ms": "250"}, {"latency_ms": True}, {"latency_ms": 2.5},
                    {"latency_jitter_ms": 60_001}):
            refused = post(slug(), bad)
            assert_problem(refused, 422, "invalid_provider_config", "config")
            assert "milliseconds" in refused.json()["detail"]
        assert post(slow, {"latency_ms": 150, "latency_jitter_ms": 50}).status_code == 201
        assert post(plain, {}).status_code == 201
        assert_problem(admin.patch(f"/v1/payment-providers/{plain}", json={"config": {"latency_ms": -5}}),
                       422, "invalid_provider_config", "config")
    security = Security.from_settings(Settings(database_url="sqlite://", data_dir=tmp_path))
    server_wide = Security.from_settings(Settings(database_url="sqlite://", data_dir=tmp_path, sandbox_latency_ms=150))
    with transaction(session_factory(engine)) as session:  # kept by the process, but not for other settings
        provider_config.adapter_for_provider(session, security, plain)
    for provider_id, where in ((slow, security), (plain, server_wide)):
        with transaction(session_factory(engine)) as session:
            adapter = provider_config.adapter_for_provider(session, where, provider_id)
        started = time.perf_counter()
        charge = adapter.charge(amount=Money(500, "USD"), token="tok_sandbox_visa", idempotency_key=new_id("key"))
        assert charge.status == "succeeded"
        assert time.perf_counter() - started >= 0.15
