"""Worlds for tests/test_provider_scenarios.py: each real payment adapter (Stripe, PayPal,
Authorize.net) configured in a served Billfold through the admin API against its fake, with the
hooks a scenario needs: a one-time payment source that succeeds or declines, one that waits for
the customer, an answer lost after the provider did the work, the provider down, saved methods for
renewals, and the provider's own record of what it charged (read from the fake, never our rows).

The fakes are started once per test session by the fixtures at the bottom of this file."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from billfold.kit.ids import new_id
from billfold.payments.engine import provider_key
from billfold.providers.authorizenet import AuthorizeNetProvider, opaque_token, short_reference
from billfold.providers.base import ProviderAdapter
from billfold.providers.paypal import PayPalProvider
from billfold.providers.stripe import StripeProvider
from tests.accounts import Api
from tests.authorizenet_fake import AuthorizeNetFake, running
from tests.paypal_fake import Buyer, PayPalFake, serving
from tests.stripe_fake import SECRET_KEY, LocalStripe, LosingProxy, closed_port, losing_answers, running_localstripe

PROVIDERS = ["stripe", "paypal", "authorizenet"]
GOOD, GENERIC, INSUFFICIENT = "good", "generic_decline", "insufficient_funds"

STRIPE_WEBHOOK_SECRET = "whsec_billfold_scenarios_0123456789abcdef"
PAYPAL = {"client_id": "AbScenarioClientId01", "client_secret": "EKscenario-client-secret-never-shown-01",
          "webhook_id": "2JE4291016473214D"}
ANET = {"api_login_id": "scenario-login-7Qz", "transaction_key": "tk-scenario-0a1b2c3d4e",
        "signature_key": "0F1E2D3C4B5A69788796A5B4C3D2E1F0" * 4}
TIMEOUT = 10  # seconds: the read timeout of each provider's config, but for a lost answer's scenario
IMPATIENT = 1.0  # the read timeout while an answer is being lost (each fake stalls longer: STALL)
STALL = 2.5


def add_provider(api: Api, admin_token: str, prefix: str, kind: str, config: dict[str, Any]) -> str:
    provider_id = f"{prefix}_{new_id('x')[-10:].lower()}"
    with api.client(admin_token) as admin:
        made = admin.post("/v1/payment-providers", json={
            "id": provider_id, "kind": kind, "display_name": f"{kind} (its fake)", "config": config,
        })
    assert made.status_code == 201, made.text
    return provider_id


def patch_config(api: Api, admin_token: str, provider_id: str, **config: Any) -> None:
    with api.client(admin_token) as admin:
        changed = admin.patch(f"/v1/payment-providers/{provider_id}", json={"config": config})
    assert changed.status_code == 200, changed.text


@dataclass
class World:
    """One provider, as a shop and its customers meet it; ``provider_id`` names its row in ``api``."""

    name: str = field(init=False, default="")
    api: Api
    admin_token: str
    provider_id: str = ""
    currency: str = "USD"
    cannot: dict[str, str] = field(default_factory=dict)  # scenario -> why this provider has no counterpart

    # ---- set up ----------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def kind(self) -> str:
        return self.name

    def add_to(self, api: Api, admin_token: str) -> str:
        """Configure this provider in a (served) Billfold through its admin API; its id."""
        return add_provider(api, admin_token, self.name[:6], self.kind(), self.config())

    def skip_unless(self, scenario: str) -> None:
        if scenario in self.cannot:
            pytest.skip(f"{self.name}: {self.cannot[scenario]}")

    def adapter(self) -> ProviderAdapter:
        raise NotImplementedError

    # ---- paying ----------------------------------------------------------------------------------

    def checkout(self, client: httpx.Client, order_id: str, outcome: str = GOOD) -> httpx.Response:
        """The customer pays with a one-time source of ``outcome``: the answer a customer finally
        sees (for PayPal after approving at PayPal and the shop confirming)."""
        raise NotImplementedError

    def start_waiting(self, client: httpx.Client, order_id: str) -> httpx.Response:
        """A checkout the customer must act on (3-D Secure, PayPal's approval): the 202."""
        raise NotImplementedError

    def customer_acts(self, payment: dict[str, Any]) -> None:
        """The customer authenticates / approves, at the provider."""
        raise NotImplementedError

    def retry(self, client: httpx.Client, order_id: str, payment: dict[str, Any]) -> httpx.Response:
        """The customer's retry after a 503: the same checkout again."""
        return self.checkout(client, order_id)

    def saved_token(self, outcome: str = GOOD) -> str:
        """A token to save as a method (POST /v1/me/payment-methods) whose charges have ``outcome``."""
        raise NotImplementedError

    def before_refunds(self) -> None:
        """What must happen at the provider before a captured charge can be refunded in part."""

    # ---- faults ----------------------------------------------------------------------------------

    @contextmanager
    def losing_the_next_answer(self) -> Iterator[None]:
        """The next money-moving call does its work at the provider, and its answer is lost."""
        raise NotImplementedError
        yield

    def api_base(self) -> str:
        raise NotImplementedError

    def closed_api_base(self) -> str:
        return closed_port()

    @contextmanager
    def down(self) -> Iterator[None]:
        """The provider's address points at a closed port (connecting is refused), then back."""
        patch_config(self.api, self.admin_token, self.provider_id, api_base=self.closed_api_base())
        try:
            yield
        finally:
            patch_config(self.api, self.admin_token, self.provider_id, api_base=self.api_base())

    @contextmanager
    def impatient(self) -> Iterator[None]:
        patch_config(self.api, self.admin_token, self.provider_id, timeout_seconds=IMPATIENT)
        try:
            yield
        finally:
            patch_config(self.api, self.admin_token, self.provider_id, timeout_seconds=TIMEOUT)

    # ---- the provider's own books ----------------------------------------------------------------

    def captures(self, payment_id: str) -> list[str]:
        """Every time money moved at the provider for our payment (ids of its charges/captures)."""
        raise NotImplementedError

    def attempts(self, payment_id: str) -> int:
        """How many charge objects the provider holds for our payment, whatever their outcome."""
        raise NotImplementedError


def _body(token: str | None, provider_id: str) -> dict[str, Any]:
    return {"provider_id": provider_id, **({"token": token} if token else {})}


# ---- Stripe (localstripe, behind a proxy that can lose an answer) ----------------------------------


STRIPE_CARDS = {GOOD: "4242424242424242", GENERIC: "4000000000000341", "3ds": "4000002500003155"}


@dataclass
class StripeWorld(World):
    localstripe: LocalStripe | None = None
    proxy: LosingProxy | None = None

    def __post_init__(self) -> None:
        self.name = "stripe"
        self.cannot = {
            INSUFFICIENT: "localstripe declines a charge only as card_declined with no decline_code (its 9995 card "
                          "is declined when saved, not when charged); Stripe's insufficient_funds decline_code is "
                          "mapped in test_providers_stripe.py on Stripe's own error answer",
        }

    def config(self) -> dict[str, Any]:
        return {"secret_key": SECRET_KEY, "webhook_secret": STRIPE_WEBHOOK_SECRET, "api_base": self.api_base(),
                "localstripe": True, "timeout_seconds": TIMEOUT}

    def api_base(self) -> str:
        assert self.proxy is not None
        return self.proxy.url

    def adapter(self) -> StripeProvider:
        assert self.localstripe is not None
        return StripeProvider(self.provider_id, {**self.config(), "api_base": self.localstripe.url})

    def card(self, outcome: str) -> str:
        assert self.localstripe is not None
        return self.localstripe.card(STRIPE_CARDS[outcome])

    def checkout(self, client: httpx.Client, order_id: str, outcome: str = GOOD) -> httpx.Response:
        return client.post(f"/v1/orders/{order_id}/checkout", json=_body(self.card(outcome), self.provider_id))

    def start_waiting(self, client: httpx.Client, order_id: str) -> httpx.Response:
        return client.post(f"/v1/orders/{order_id}/checkout", json=_body(self.card("3ds"), self.provider_id))

    def customer_acts(self, payment: dict[str, Any]) -> None:
        assert self.localstripe is not None
        self.localstripe.authenticate(payment["provider_payment_id"])

    def saved_token(self, outcome: str = GOOD) -> str:
        return self.card(outcome)  # 0341 saves, then declines when charged

    @contextmanager
    def losing_the_next_answer(self) -> Iterator[None]:
        assert self.proxy is not None
        self.proxy.lose = "/confirm"  # the PaymentIntent's confirm moves the money; its answer is dropped
        try:
            yield
            assert self.proxy.lost, "no confirm went through the proxy"
        finally:
            self.proxy.lose = None
            self.proxy.lost.clear()

    def _intents(self, payment_id: str) -> list[dict[str, Any]]:
        assert self.localstripe is not None
        return self.localstripe.payment_intents_with("payment_id", payment_id)

    def captures(self, payment_id: str) -> list[str]:
        assert self.localstripe is not None
        return [c["id"] for intent in self._intents(payment_id) for c in self.localstripe.charges_of(intent["id"])
                if c["status"] == "succeeded"]

    def attempts(self, payment_id: str) -> int:
        return len(self._intents(payment_id))


# ---- PayPal (the contract-checked fake; the buyer approves at PayPal) ------------------------------


PAYPAL_DECLINES = {GENERIC: "INSTRUMENT_DECLINED"}


@dataclass
class PayPalWorld(World):
    fake: PayPalFake | None = None
    buyer: Buyer | None = None
    losing: bool = False

    def __post_init__(self) -> None:
        self.name = "paypal"
        self.cannot = {
            INSUFFICIENT: "PayPal's Orders v2 document lists no INSUFFICIENT_FUNDS issue for a capture (the fake "
                          "answers only documented issues), so there is no insufficient-funds counterpart",
        }

    def config(self) -> dict[str, Any]:
        return {**PAYPAL, "api_base": self.api_base(), "timeout_seconds": TIMEOUT}

    def api_base(self) -> str:
        assert self.fake is not None
        return self.fake.url

    def adapter(self) -> PayPalProvider:
        return PayPalProvider(self.provider_id, self.config())

    def checkout(self, client: httpx.Client, order_id: str, outcome: str = GOOD) -> httpx.Response:
        assert self.buyer is not None
        waiting = client.post(f"/v1/orders/{order_id}/checkout", json=_body(None, self.provider_id))
        if waiting.status_code != 202:
            return waiting
        payment = waiting.json()["payment"]
        self.buyer.approve(payment["provider_payment_id"], decline=PAYPAL_DECLINES.get(outcome))
        if not self.losing:
            return client.post(f"/v1/payments/{payment['id']}/confirm")
        with self.impatient():  # only the capture is to time out, not the calls before it
            self.buyer.fail_next("/capture", "timeout")  # captured, the answer later than the timeout
            return client.post(f"/v1/payments/{payment['id']}/confirm")

    def start_waiting(self, client: httpx.Client, order_id: str) -> httpx.Response:
        return client.post(f"/v1/orders/{order_id}/checkout", json=_body(None, self.provider_id))

    def customer_acts(self, payment: dict[str, Any]) -> None:
        assert self.buyer is not None
        self.buyer.approve(payment["provider_payment_id"])

    def retry(self, client: httpx.Client, order_id: str, payment: dict[str, Any]) -> httpx.Response:
        """The buyer approved already and the capture's answer was lost: the shop confirms again."""
        return client.post(f"/v1/payments/{payment['id']}/confirm")

    def saved_token(self, outcome: str = GOOD) -> str:
        assert self.buyer is not None
        return self.buyer.setup_token(f"buyer.{new_id('p').lower()}@example.com")

    def decline_saved(self, payment_method_id: str) -> None:
        """Every later charge of this vault payment token is refused by PayPal."""
        assert self.buyer is not None
        self.buyer.decline_payment_token(payment_method_id, PAYPAL_DECLINES[GENERIC])

    @contextmanager
    def losing_the_next_answer(self) -> Iterator[None]:
        self.losing = True  # the next checkout's capture (see checkout)
        try:
            yield
        finally:
            self.losing = False

    def _orders(self, payment_id: str) -> list[str]:
        assert self.fake is not None
        with self.fake._lock:  # noqa: SLF001 - the fake's own state, read as PayPal's books
            return [order_id for order_id, record in self.fake.state.orders.items()
                    if record.order["purchase_units"][0].get("custom_id") == payment_id]

    def captures(self, payment_id: str) -> list[str]:
        assert self.buyer is not None
        orders = set(self._orders(payment_id))
        return [c["capture_id"] for c in self.buyer.captured() if c["order_id"] in orders]

    def attempts(self, payment_id: str) -> int:
        return len(self._orders(payment_id))


# ---- Authorize.net (its fake; Accept.js opaque tokens name the outcome) ---------------------------


ANET_VALUES = {GOOD: "approve", GENERIC: "decline2"}


@dataclass
class AuthorizeNetWorld(World):
    fake: AuthorizeNetFake | None = None

    def __post_init__(self) -> None:
        self.name = "authorizenet"
        self.cannot = {
            INSUFFICIENT: "Authorize.net has no insufficient-funds reason code: such a card is its general "
                          "decline (reason 2), which the generic decline covers",
            "3ds": "Authorize.net has no customer action: charges complete or decline at once (confirm is refused)",
        }

    def config(self) -> dict[str, Any]:
        return {**ANET, "api_base": self.api_base(), "timeout_seconds": TIMEOUT}

    def api_base(self) -> str:
        assert self.fake is not None
        return self.fake.api_base

    def closed_api_base(self) -> str:
        return closed_port() + "/xml/v1/request.api"

    def adapter(self) -> AuthorizeNetProvider:
        return AuthorizeNetProvider(self.provider_id, self.config())

    def checkout(self, client: httpx.Client, order_id: str, outcome: str = GOOD) -> httpx.Response:
        token = opaque_token(ANET_VALUES[outcome])
        return client.post(f"/v1/orders/{order_id}/checkout", json=_body(token, self.provider_id))

    def saved_token(self, outcome: str = GOOD) -> str:
        return opaque_token(ANET_VALUES[outcome])  # saved as a profile; charging a decline2 profile declines

    def before_refunds(self) -> None:
        assert self.fake is not None
        assert httpx.post(self.fake.url + "/_fake/settle").status_code == 200  # only settled charges are refunded

    @contextmanager
    def losing_the_next_answer(self) -> Iterator[None]:
        assert self.fake is not None
        with self.impatient():
            httpx.post(self.fake.url + "/_fake/fail", json={"mode": "timeout", "when": "after"}).raise_for_status()
            yield

    def _transactions(self, payment_id: str) -> list[dict[str, Any]]:
        assert self.fake is not None
        reference = short_reference(provider_key(payment_id, "charge"))
        with self.fake._lock:  # noqa: SLF001
            return [dict(t) for t in self.fake.transactions.values() if t["order"]["invoiceNumber"] == reference]

    def captures(self, payment_id: str) -> list[str]:
        return [t["transId"] for t in self._transactions(payment_id) if t["responseCode"] == 1]

    def attempts(self, payment_id: str) -> int:
        return len(self._transactions(payment_id))


# ---- the fakes, once per session -----------------------------------------------------------------


@pytest.fixture(scope="session")
def scenario_localstripe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStripe]:
    with running_localstripe(tmp_path_factory.mktemp("localstripe-scenarios") / "localstripe.log") as server:
        yield server


@pytest.fixture(scope="session")
def scenario_stripe_proxy(scenario_localstripe: LocalStripe) -> Iterator[LosingProxy]:
    with losing_answers(scenario_localstripe.url) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def scenario_paypal() -> Iterator[PayPalFake]:
    fake = PayPalFake(PAYPAL["client_id"], PAYPAL["client_secret"], PAYPAL["webhook_id"], hang_seconds=STALL)
    with serving(fake):
        yield fake


@pytest.fixture(scope="session")
def scenario_authorizenet() -> Iterator[AuthorizeNetFake]:
    with running(ANET["api_login_id"], ANET["transaction_key"], ANET["signature_key"], stall_seconds=STALL) as served:
        yield served


def make_world(name: str, api: Api, admin_token: str, request: pytest.FixtureRequest) -> World:
    world: World
    if name == "stripe":
        world = StripeWorld(api, admin_token, localstripe=request.getfixturevalue("scenario_localstripe"),
                            proxy=request.getfixturevalue("scenario_stripe_proxy"))
    elif name == "paypal":
        fake = request.getfixturevalue("scenario_paypal")
        world = PayPalWorld(api, admin_token, fake=fake, buyer=Buyer(fake))
        request.addfinalizer(world.buyer.http.close)  # type: ignore[union-attr]

        before = len(fake.state.violations)

        def no_violations() -> None:
            assert fake.state.violations[before:] == [], "PayPal's contract was broken"

        request.addfinalizer(no_violations)
    else:
        world = AuthorizeNetWorld(api, admin_token, fake=request.getfixturevalue("scenario_authorizenet"))
    world.provider_id = world.add_to(api, admin_token)
    return world
