"""Helpers for the subscription tests: a served shop whose sessions outlast months of frozen-clock
travel, customers with a saved card, recurring products, and the worker's sweeps run directly."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.accounts.security import Security
from billfold.accounts.sessions import open_session
from billfold.api import make_mailer
from billfold.config import Settings
from billfold import mailer
from billfold.kit.db import session_factory, transaction
from billfold.kit.ids import new_id
from billfold.kit.sweeps import Context
from billfold.models import Invoice, Payment, PaymentEvent, Subscription, User
from billfold.providers.sandbox import SandboxProvider
from billfold.subscriptions import sweeps
from tests import factories as make
from tests.accounts import Api
from tests.server import serving

US_HOME = {"address_type": "both", "name": "Grace Hopper", "line1": "1 Main St", "city": "Arlington", "postal_code": "22201", "country": "US"}
SWEEPS = {
    "renew": sweeps.renew_due_subscriptions,
    "trials": sweeps.end_due_trials,
    "dunning": sweeps.retry_past_due_subscriptions,
}


@dataclass
class Customer:
    id: str
    email: str
    token: str
    card: str  # the default saved method (tok_sandbox_visa)


@dataclass
class Shop:
    api: Api
    engine: Engine
    context: Context

    def client(self, token: str) -> httpx.Client:
        return self.api.client(token)

    def sweep(self, name: str) -> int:
        """Run a sweep as the worker would, until it has nothing left; how much it did."""
        done = 0
        for _ in range(50):
            moved = SWEEPS[name](self.context)
            if not moved:
                return done
            done += moved
        raise AssertionError(f"sweep {name} never ran out of work")

    def admin(self) -> str:
        """A bearer token of the shop's admin that outlasts the test's clock travel."""
        with transaction(session_factory(self.engine)) as session:
            user = User(name="Ada", last_name="Admin", email=f"admin.{new_id('p').lower()}@shop.example", user_type="admin", is_verified=True)
            session.add(user)
            session.flush()
            return open_session(session, user, transport="bearer", address=None, user_agent="tests", days=3650)[1]

    def customer(self, label: str = "subscriber", token: str = "tok_sandbox_visa", address: dict[str, str] = US_HOME) -> Customer:
        with transaction(session_factory(self.engine)) as session:
            provider = make.provider(session)
            provider.supports_saved_methods = provider.supports_subscriptions = True
            user = User(name=label.title(), last_name="Tester", email=f"{label}.{new_id('p').lower()}@example.com",
                        user_type="individual", is_verified=True)
            session.add(user)
            session.flush()
            _, bearer = open_session(session, user, transport="bearer", address=None, user_agent="tests", days=3650)
            user_id, email = user.id, user.email
        with self.client(bearer) as client:
            assert client.post("/v1/me/addresses", json=address).status_code == 201
        card = self.save_method(bearer, token)
        return Customer(user_id, email, bearer, card)

    def save_method(self, bearer: str, token: str, path: str = "/v1/me/payment-methods") -> str:
        with self.client(bearer) as client:
            saved = client.post(path, json={"provider_id": "sandbox", "token": token})
        assert saved.status_code == 201, saved.text
        return saved.json()["id"]

    def product(self, price: int = 1000, interval: str = "monthly", trial_days: int = 0, currency: str = "USD") -> str:
        with transaction(session_factory(self.engine)) as session:
            make.provider(session)
            return make.product(session, price_cents=price, billing_interval=interval, trial_days=trial_days, currency=currency).id

    def subscribe(self, customer: Customer, product_id: str, expect: int = 201, **body: Any) -> dict[str, Any]:
        with self.client(customer.token) as client:
            made = client.post("/v1/subscriptions", json={"product_id": product_id, **body})
        assert made.status_code == expect, made.text
        return made.json()

    def get(self, customer: Customer, subscription_id: str) -> dict[str, Any]:
        with self.client(customer.token) as client:
            found = client.get(f"/v1/subscriptions/{subscription_id}")
        assert found.status_code == 200, found.text
        return found.json()

    def post(self, customer: Customer, subscription_id: str, action: str, expect: int = 200, **body: Any) -> dict[str, Any]:
        with self.client(customer.token) as client:
            answer = client.post(f"/v1/subscriptions/{subscription_id}/{action}", json=body)
        assert answer.status_code == expect, answer.text
        return answer.json()

    def invoices(self, subscription_id: str) -> list[Invoice]:
        with session_factory(self.engine)() as session:
            return list(session.scalars(sa.select(Invoice).where(Invoice.subscription_id == subscription_id).order_by(Invoice.issue_date, Invoice.id)))

    def payments(self, subscription_id: str) -> list[Payment]:
        with session_factory(self.engine)() as session:
            return list(session.scalars(sa.select(Payment).where(Payment.subscription_id == subscription_id).order_by(Payment.id)))

    def charges(self, subscription_id: str) -> list[Any]:
        """The provider's own record of the charges made for the subscription."""
        sandbox = SandboxProvider("sandbox", {"state_path": str(Path(self.api.data_dir) / "sandbox.sqlite3")})
        return [c for c in sandbox.list_charges() if (c.metadata or {}).get("subscription_id") == subscription_id]

    def events(self, subscription_id: str) -> list[str]:
        with session_factory(self.engine)() as session:
            return list(session.scalars(
                sa.select(PaymentEvent.event_type).where(PaymentEvent.entity_id == subscription_id).order_by(PaymentEvent.created_at, PaymentEvent.id)
            ))

    def mails(self, address: str) -> list[str]:
        return [m["Subject"] for m in self.api.mails_to(address)]


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
def shop(engine: Engine, tmp_path: Path, frozen_clock: Any) -> Iterator[Shop]:
    with serving(engine, tmp_path, sign_in_attempts_per_address=1000, session_days=3650) as url:
        settings = Settings(database_url=engine.url.render_as_string(hide_password=False), data_dir=tmp_path)
        sessions = session_factory(engine)
        mailer.deliver_after_commit(sessions, make_mailer(settings))
        yield Shop(Api(url, tmp_path), engine, Context(sessions, settings, Security.from_settings(settings)))
    # Leave nothing due for the next test's sweeps (the test databases outlive a test).
    with transaction(session_factory(engine)) as session:
        session.execute(sa.update(Payment).where(Payment.subscription_id.is_not(None), Payment.status == "pending").values(status="failed"))
        session.execute(sa.update(Subscription).where(Subscription.status != "cancelled").values(status="cancelled"))
