"""The Stripe adapter: PaymentIntents through the official SDK, with a pinned API version.

A charge is a PaymentIntent, made in two steps (``CreatesBeforeCharging``): ``create_charge`` makes
it unconfirmed, with our idempotency key in its metadata, and answers ``CREATED``; Billfold stores
its id; ``confirm`` moves the money. Asked again (a timeout, a crash), Billfold fetches the stored
PaymentIntent and confirms it only while it is still unconfirmed, so a retry never relies on
Stripe honouring the ``Idempotency-Key`` (still sent on every write). ``charge`` is create, then
confirm, for callers that keep no id in between.

Every adapter has its own ``stripe.StripeClient`` (several Stripe accounts may coexist), explicit
connect and read timeouts, and no retries of the SDK's own: a timeout or a 5xx is
``ProviderUnavailable`` and the outcome is settled later by ``get_charge``, never by charging again.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import httpx
import stripe

from billfold.kit import clock
from billfold.kit.errors import ConfigurationError
from billfold.kit.money import Money
from billfold.providers.base import (
    part_of,
    text_metadata,
    FEATURES,
    Capabilities,
    ChargeResult,
    ChargeStatus,
    CustomerResult,
    DisputeResult,
    PaymentMethodResult,
    RefundResult,
    WebhookEvent,
)
from billfold.providers.errors import (
    Declined,
    IdempotencyMismatch,
    InvalidProviderRequest,
    ProviderObjectNotFound,
    ProviderUnavailable,
    WebhookSignatureInvalid,
)
from billfold.providers.stripe import mapping, signature
from billfold.providers.stripe.mapping import KEY_FIELD, OFF_SESSION_FIELD

API_VERSION = "2026-10-28.endive"
"""The Stripe API version every request names (``Stripe-Version``): the one stripe-python 16.1 is
generated from. Changing it is a deliberate upgrade, tested against the new objects."""

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 30.0

FIND_CHARGE_WINDOW = timedelta(days=2)  # Stripe forgets idempotency keys after 24 h; look a little further
FIND_CHARGE_LIMIT = 1000  # PaymentIntents read at most when find_charge falls back to listing
STRIPE_REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})
MAX_STRIPE_KEY = 255

TOKEN_PATTERN = r"(pm|seti)_[A-Za-z0-9_]{1,250}"


def stripe_capabilities() -> Capabilities:
    features = dict.fromkeys(FEATURES, True)
    features["provider_subscriptions"] = False  # Billfold runs the billing schedule itself
    return Capabilities(**features, currencies=None, webhook_events=mapping.WEBHOOK_EVENTS,
                        webhooks_checked_offline=True, token_pattern=TOKEN_PATTERN)


class StripeProvider:
    """The Stripe adapter. ``config``: ``secret_key`` (``sk_…``/``rk_…``, required),
    ``webhook_secret`` (``whsec_…``, required), ``api_base`` (another API address, e.g. a
    localstripe), ``publishable_key``, ``connect_timeout_seconds`` (10), ``timeout_seconds`` (read,
    30), ``localstripe`` (true: leave out the parameters localstripe refuses; see docs/providers.md).
    Building one makes no network call."""

    kind = "stripe"

    def __init__(self, provider_id: str = "stripe", config: Mapping[str, Any] | None = None) -> None:
        config = dict(config or {})
        self.provider_id = provider_id
        secret_key = config.get("secret_key")
        if not isinstance(secret_key, str) or not secret_key.startswith(("sk_", "rk_")) or len(secret_key) < 8:
            raise ConfigurationError(f"Stripe provider {provider_id!r} needs config 'secret_key': the account's "
                                     "secret API key (sk_… or a restricted rk_…)")
        webhook_secret = config.get("webhook_secret")
        if not isinstance(webhook_secret, str) or not webhook_secret.startswith("whsec_") or len(webhook_secret) < 16:
            raise ConfigurationError(f"Stripe provider {provider_id!r} needs config 'webhook_secret': the signing "
                                     "secret (whsec_…) of the webhook endpoint Stripe delivers to, so that its "
                                     "events can be verified")
        self.webhook_secret: str = webhook_secret
        self.publishable_key: str | None = config.get("publishable_key")
        api_base = config.get("api_base")
        if api_base is not None and (not isinstance(api_base, str) or not api_base.startswith(("http://", "https://"))):
            raise ConfigurationError(f"Stripe provider {provider_id!r}: 'api_base' must be an http(s) address")
        connect = _seconds(config, "connect_timeout_seconds", DEFAULT_CONNECT_TIMEOUT, provider_id)
        read = _seconds(config, "timeout_seconds", DEFAULT_READ_TIMEOUT, provider_id)
        self.localstripe = config.get("localstripe") in (True, "true")
        self._http = stripe.HTTPXClient(timeout=httpx.Timeout(read, connect=connect), allow_sync_methods=True)
        self._client = stripe.StripeClient(
            secret_key, stripe_version=API_VERSION, max_network_retries=0, http_client=self._http,
            base_addresses={"api": api_base.rstrip("/")} if api_base else None,
        )
        self.capabilities = stripe_capabilities()
        self.page_size = 100  # Stripe's largest page; lists read every page

    def close(self) -> None:
        self._http.close()

    # ---- customers and saved methods -------------------------------------------------------

    def create_customer(
        self, *, email: str | None = None, name: str | None = None,
        metadata: Mapping[str, str] | None = None, idempotency_key: str,
    ) -> CustomerResult:
        params: dict[str, Any] = {"metadata": text_metadata(metadata)}
        if email is not None:
            params["email"] = email
        if name is not None:
            params["name"] = name
        with self._translated():
            customer = self._client.v1.customers.create(params, self._options(idempotency_key, "customer"))
        return mapping.customer_from(customer.to_dict())

    def create_setup_intent(self, *, customer_id: str, idempotency_key: str) -> dict[str, Any]:
        """A SetupIntent for saving a method for later (off-session) charges: the browser confirms it
        with its ``client_secret`` (Stripe.js runs 3-D Secure if the card asks for it), then
        ``attach_payment_method(token=<its seti_ id>)`` saves the method it collected."""
        params = {"customer": customer_id, "usage": "off_session", "payment_method_types": ["card"]}
        with self._translated():
            setup_intent = self._client.v1.setup_intents.create(params, self._options(idempotency_key, "setup"))
        return mapping.setup_intent_from(setup_intent.to_dict())

    def attach_payment_method(self, *, customer_id: str, token: str, idempotency_key: str) -> PaymentMethodResult:
        """Save ``token`` on the customer: a ``pm_…`` from Stripe.js, or a succeeded SetupIntent's
        ``seti_…`` (its method). A method already on this customer is answered as it is."""
        self.capabilities.require("saved_methods", self.provider_id)
        self.capabilities.require_token(token, "Stripe")
        if token.startswith("seti_"):
            token = self._setup_intent_method(customer_id, token)
        with self._translated():
            method = self._client.v1.payment_methods.retrieve(token).to_dict()
        owner = mapping.id_of(method.get("customer"))
        if method.get("id") == token and owner == customer_id:
            return mapping.payment_method_from(method)
        if method.get("id") == token and owner is not None:
            raise InvalidProviderRequest(f"payment method {token} belongs to another customer",
                                         code="payment_method_customer_mismatch")
        with self._translated():
            method = self._client.v1.payment_methods.attach(
                token, {"customer": customer_id}, self._options(idempotency_key, "attach")).to_dict()
        return mapping.payment_method_from(method)

    def _setup_intent_method(self, customer_id: str, setup_intent_id: str) -> str:
        with self._translated():
            setup_intent = self._client.v1.setup_intents.retrieve(setup_intent_id).to_dict()
        if setup_intent.get("status") != "succeeded" or not setup_intent.get("payment_method"):
            raise InvalidProviderRequest(f"setup intent {setup_intent_id} is {setup_intent.get('status')}; the customer "
                                         "must finish it first", code="setup_intent_not_succeeded")
        owner = mapping.id_of(setup_intent.get("customer"))
        if owner is not None and owner != customer_id:
            raise InvalidProviderRequest(f"setup intent {setup_intent_id} belongs to another customer",
                                         code="payment_method_customer_mismatch")
        return str(mapping.id_of(setup_intent["payment_method"]))

    def detach_payment_method(self, *, payment_method_id: str, idempotency_key: str) -> PaymentMethodResult:
        with self._translated():
            method = self._client.v1.payment_methods.detach(
                payment_method_id, None, self._options(idempotency_key, "detach")).to_dict()
        return mapping.payment_method_from(method, detached=True)

    # ---- charges ------------------------------------------------------------------------------

    def charge(
        self, *, amount: Money, idempotency_key: str, customer_id: str | None = None,
        payment_method_id: str | None = None, token: str | None = None, off_session: bool = False,
        capture: bool = True, description: str | None = None, metadata: Mapping[str, str] | None = None,
    ) -> ChargeResult:
        """Create, then confirm. A caller that can store the PaymentIntent's id in between should
        call ``create_charge`` and ``confirm`` itself: only that survives a lost answer safely."""
        created = self.create_charge(
            amount=amount, idempotency_key=idempotency_key, customer_id=customer_id,
            payment_method_id=payment_method_id, token=token, off_session=off_session, capture=capture,
            description=description, metadata=metadata,
        )
        if created.status is not ChargeStatus.CREATED:
            return created
        return self.confirm(charge_id=created.id, idempotency_key=idempotency_key)

    def create_charge(
        self, *, amount: Money, idempotency_key: str, customer_id: str | None = None,
        payment_method_id: str | None = None, token: str | None = None, off_session: bool = False,
        capture: bool = True, description: str | None = None, metadata: Mapping[str, str] | None = None,
    ) -> ChargeResult:
        """An unconfirmed PaymentIntent (no money moves): ``CREATED``, our key in its metadata."""
        self._check_charge(amount, payment_method_id, token, off_session, capture)
        params: dict[str, Any] = {
            "amount": amount.amount, "currency": amount.currency.lower(),
            "capture_method": "automatic" if capture else "manual", "payment_method_types": ["card"],
            "payment_method": payment_method_id or token,
            "metadata": {**text_metadata(metadata), KEY_FIELD: idempotency_key,
                         OFF_SESSION_FIELD: "true" if off_session else "false"},
            "expand": ["latest_charge"],
        }
        if customer_id is not None:
            params["customer"] = customer_id
        if description and not self.localstripe:
            params["description"] = description
        with self._translated():
            intent = self._client.v1.payment_intents.create(params, self._options(idempotency_key, "create"))
        return mapping.charge_from_payment_intent(intent.to_dict())

    def _check_charge(self, amount: Money, payment_method_id: str | None, token: str | None,
                      off_session: bool, capture: bool) -> None:
        """Refuse, before any call, what Stripe would refuse or what Billfold must not ask."""
        self.capabilities.require_currency(amount.currency, self.provider_id)
        if not amount.is_positive():
            raise InvalidProviderRequest(f"a charge must be for a positive amount, not {amount}", code="invalid_amount")
        if (payment_method_id is None) == (token is None):
            raise InvalidProviderRequest("give exactly one of payment_method_id and token", code="invalid_payment_source")
        if token is not None:
            if off_session:
                raise InvalidProviderRequest("an off-session charge needs a saved payment method",
                                             code="off_session_needs_saved_method")
            if not token.startswith("pm_"):
                self.capabilities.require_token(token, "Stripe")
                raise InvalidProviderRequest("charge a pm_… payment method; a setup intent saves a method",
                                             code="invalid_payment_source")
        if not capture:
            self.capabilities.require("separate_capture", self.provider_id)

    def confirm(self, *, charge_id: str, idempotency_key: str) -> ChargeResult:
        """Move the money of a PaymentIntent still unconfirmed; any other is answered as it is now
        (after 3-D Secure Stripe confirms by itself), a failed one by raising ``Declined`` again."""
        intent = self._payment_intent(charge_id)
        if intent.get("status") == "requires_confirmation":
            params: dict[str, Any] = {"expand": ["latest_charge"]}
            if (intent.get("metadata") or {}).get(OFF_SESSION_FIELD) == "true" and not self.localstripe:
                params["off_session"] = True
            try:
                with self._translated():
                    intent = self._client.v1.payment_intents.confirm(
                        charge_id, params, self._options(idempotency_key, "confirm")).to_dict()
            except Declined as declined:  # Stripe answers a decline with an error: read what it recorded
                charge = mapping.charge_from_payment_intent(self._payment_intent(charge_id))
                raise Declined(declined.detail, charge.failure_code or declined.decline_code, charge=charge) from None
        charge = mapping.charge_from_payment_intent(intent)
        if charge.status is ChargeStatus.FAILED:
            raise Declined(charge.failure_message or "The payment was declined.",
                           charge.failure_code or "generic_decline", charge=charge)
        return charge

    def capture(self, *, charge_id: str, idempotency_key: str, amount: Money | None = None) -> ChargeResult:
        self.capabilities.require("separate_capture", self.provider_id)
        intent = self._payment_intent(charge_id)
        if intent.get("status") == "succeeded" and intent.get("capture_method") == "manual":
            return mapping.charge_from_payment_intent(intent)  # captured already (a retried capture)
        if intent.get("status") != "requires_capture":
            raise InvalidProviderRequest(f"charge {charge_id} is {intent.get('status')}; only an authorized charge "
                                         "can be captured", code="charge_not_capturable")
        authorized = mapping.money(intent.get("amount_capturable") or intent.get("amount"), str(intent["currency"]))
        params: dict[str, Any] = {"expand": ["latest_charge"]}
        if amount is not None:
            params["amount_to_capture"] = part_of(amount, authorized, "capture").amount
        with self._translated():
            intent = self._client.v1.payment_intents.capture(
                charge_id, params, self._options(idempotency_key, "capture")).to_dict()
        return mapping.charge_from_payment_intent(intent)

    def cancel(self, *, charge_id: str, idempotency_key: str) -> ChargeResult:
        intent = self._payment_intent(charge_id)
        status = intent.get("status")
        if status == "canceled":
            return mapping.charge_from_payment_intent(intent)
        if status not in ("requires_capture", "requires_action", "requires_confirmation", "requires_payment_method"):
            raise InvalidProviderRequest(f"charge {charge_id} is {status}; only an authorized charge or one not yet "
                                         "paid can be canceled (refund a succeeded one)", code="charge_not_cancelable")
        with self._translated():
            intent = self._client.v1.payment_intents.cancel(
                charge_id, {"expand": ["latest_charge"]}, self._options(idempotency_key, "cancel")).to_dict()
        return mapping.charge_from_payment_intent(intent)

    def refund(
        self, *, charge_id: str, idempotency_key: str, amount: Money | None = None,
        reason: str | None = None, metadata: Mapping[str, str] | None = None,
    ) -> RefundResult:
        """A refund of the PaymentIntent. A refund already made with this key (found by its metadata
        among the PaymentIntent's refunds) is answered instead of refunding twice."""
        self.capabilities.require("refunds", self.provider_id)
        charge = self.get_charge(charge_id)
        made = self._refund_with_key(charge_id, idempotency_key)
        if made is not None:
            if amount is not None and made.amount != amount:
                raise IdempotencyMismatch(f"idempotency key {idempotency_key!r} made a refund of {made.amount}, "
                                          f"not {amount}", idempotency_key=idempotency_key)
            return made
        if charge.status is not ChargeStatus.SUCCEEDED:
            raise InvalidProviderRequest(f"charge {charge_id} is {charge.status}; only a succeeded charge can be "
                                         "refunded", code="charge_not_refundable")
        remaining = charge.amount_refundable
        if not remaining.is_positive():
            raise InvalidProviderRequest(f"charge {charge_id} is already fully refunded", code="charge_already_refunded")
        to_refund = part_of(amount, remaining, "refund")
        if to_refund != charge.amount_captured:
            self.capabilities.require("partial_refunds", self.provider_id)
        meta = {**text_metadata(metadata), KEY_FIELD: idempotency_key}
        params: dict[str, Any] = {"payment_intent": charge_id, "amount": to_refund.amount, "metadata": meta}
        if reason:
            if reason in STRIPE_REFUND_REASONS and not self.localstripe:
                params["reason"] = reason
            else:  # Stripe takes three reasons only; ours is kept beside the refund
                meta["billfold_reason"] = reason[:500]
        with self._translated():
            refund = self._client.v1.refunds.create(params, self._options(idempotency_key, "refund"))
        return mapping.refund_from(refund.to_dict())

    def _refund_with_key(self, charge_id: str, idempotency_key: str) -> RefundResult | None:
        with self._translated():
            refunds = self._client.v1.refunds.list({"payment_intent": charge_id, "limit": self.page_size})
            for refund in refunds.auto_paging_iter():
                data = refund.to_dict()
                if (data.get("metadata") or {}).get(KEY_FIELD) == idempotency_key:
                    return mapping.refund_from(data)
        return None

    # ---- reading --------------------------------------------------------------------------------

    def get_charge(self, charge_id: str) -> ChargeResult:
        return mapping.charge_from_payment_intent(self._payment_intent(charge_id))

    def _payment_intent(self, charge_id: str) -> dict[str, Any]:
        if not charge_id.startswith("pi_"):
            raise ProviderObjectNotFound(f"{charge_id!r} is not a Stripe PaymentIntent id")
        with self._translated():
            return self._client.v1.payment_intents.retrieve(charge_id, {"expand": ["latest_charge"]}).to_dict()

    def find_charge(self, *, idempotency_key: str) -> ChargeResult | None:
        """The PaymentIntent whose metadata holds this key: Stripe's search first (it lags by up to
        a minute, and localstripe has none), then the PaymentIntents of the last two days, at most
        ``FIND_CHARGE_LIMIT`` of them (localstripe: all it holds, newest unknown)."""
        found = self._search(idempotency_key) if not self.localstripe else []
        if not found:
            since = None if self.localstripe else clock.now() - FIND_CHARGE_WINDOW
            found = [intent for intent in self._intents(since, None, FIND_CHARGE_LIMIT)
                     if (intent.get("metadata") or {}).get(KEY_FIELD) == idempotency_key]
        if not found:
            return None
        first = min(found, key=lambda intent: (intent.get("created") or 0, str(intent["id"])))
        return self.get_charge(str(first["id"]))

    def _search(self, idempotency_key: str) -> list[dict[str, Any]]:
        escaped = idempotency_key.replace("\\", "\\\\").replace("'", "\\'")
        try:
            with self._translated():
                page = self._client.v1.payment_intents.search({"query": f"metadata['{KEY_FIELD}']:'{escaped}'"})
                return [intent.to_dict() for intent in page.auto_paging_iter()]
        except InvalidProviderRequest:  # search not offered (a fake, a region): fall back to listing
            return []

    def _intents(self, start: datetime | None, end: datetime | None, limit: int | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": self.page_size, "expand": ["data.latest_charge"]}
        if not self.localstripe and (start or end):  # localstripe lists PaymentIntents without filters
            params["created"] = _created(start, end)
        return self._collect(lambda p: self._client.v1.payment_intents.list(p), params, start, end, limit)

    def get_refund(self, refund_id: str) -> RefundResult:
        with self._translated():
            return mapping.refund_from(self._client.v1.refunds.retrieve(refund_id).to_dict())

    def get_dispute(self, dispute_id: str) -> DisputeResult:
        with self._translated():
            return mapping.dispute_from(self._client.v1.disputes.retrieve(dispute_id).to_dict())

    def list_charges(self, created_from: datetime | None = None, created_to: datetime | None = None) -> list[ChargeResult]:
        """PaymentIntents created in [created_from, created_to), oldest first, every page read."""
        intents = self._intents(created_from, created_to)
        return [mapping.charge_from_payment_intent(intent) for intent in _oldest_first(intents)]

    def list_refunds(self, created_from: datetime | None = None, created_to: datetime | None = None) -> list[RefundResult]:
        params: dict[str, Any] = {"limit": self.page_size}
        if not self.localstripe and (created_from or created_to):
            params["created"] = _created(created_from, created_to)
        refunds = self._collect(lambda p: self._client.v1.refunds.list(p), params, created_from, created_to)
        if self.localstripe:  # what a partial capture released shows there as a refund of the bare charge
            refunds = [refund for refund in refunds if refund.get("payment_intent")]
        return [mapping.refund_from(refund) for refund in _oldest_first(refunds)]

    def _collect(self, list_call: Callable[[dict[str, Any]], Any], params: dict[str, Any],
                 start: datetime | None, end: datetime | None, limit: int | None = None) -> list[dict[str, Any]]:
        """Every page of a list, kept to [start, end) at Stripe's precision: ``created`` is whole
        seconds, so an object of the second ``start`` or ``end`` falls in is kept (one created at
        12:00:05.3 says 12:00:05, and is in a window ending at 12:00:05.6)."""
        low = int(start.timestamp()) if start else None
        high = math.ceil(end.timestamp()) if end else None
        found: list[dict[str, Any]] = []
        with self._translated():
            for index, item in enumerate(list_call(params).auto_paging_iter()):
                if limit is not None and index >= limit:
                    break
                data = item.to_dict()
                created = int(data.get("created") or 0)
                if (low is None or created >= low) and (high is None or created < high):
                    found.append(data)
        return found

    # ---- webhooks -------------------------------------------------------------------------------

    def build_webhook(self, event: Mapping[str, Any], at: datetime | None = None) -> tuple[bytes, dict[str, str]]:
        """A Stripe event's body and ``Stripe-Signature`` as Stripe would deliver them now (or ``at``)."""
        body = json.dumps(dict(event), separators=(",", ":")).encode()
        return body, signature.sign(self.webhook_secret, body, at)

    def verify_webhook(self, body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        signature.verify(self.webhook_secret, body, headers)
        try:
            payload = json.loads(body)
            if payload.get("object") != "event":
                raise ValueError("not an event")
            return mapping.event_from(payload)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise WebhookSignatureInvalid("the signed webhook body is not a Stripe event") from error

    # ---- machinery ------------------------------------------------------------------------------

    def _options(self, idempotency_key: str, operation: str) -> stripe.RequestOptions:
        return {"idempotency_key": stripe_idempotency_key(idempotency_key, operation)}

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """Stripe's errors as Billfold's; a message never carries the secret key."""
        try:
            yield
        except stripe.CardError as error:
            body = _error_body(error)
            code = mapping.decline_code(body.get("decline_code"), error.code)
            raise Declined(error.user_message or "The card was declined.", code) from None
        except stripe.IdempotencyError as error:
            raise IdempotencyMismatch(f"Stripe refused a reused idempotency key: {error.user_message}") from None
        except stripe.InvalidRequestError as error:
            message = error.user_message or "Stripe refused the request"
            if error.code == "resource_missing" or error.http_status == 404:
                raise ProviderObjectNotFound(f"Stripe has no such object ({message})",
                                             provider=self.provider_id) from None
            raise InvalidProviderRequest(f"Stripe refused the request: {message}",
                                         provider=self.provider_id, stripe_code=error.code) from None
        except (stripe.AuthenticationError, stripe.PermissionError):
            raise InvalidProviderRequest(f"Stripe rejected the credentials of provider {self.provider_id}; check its "
                                         "secret_key", code="provider_credentials_rejected") from None
        except stripe.RateLimitError:
            raise ProviderUnavailable("Stripe is rate limiting requests; retry with the same key",
                                      provider=self.provider_id) from None
        except stripe.APIConnectionError as error:
            sent = not _never_connected(error)
            raise ProviderUnavailable(
                "Stripe did not answer in time; the outcome is unknown, ask before retrying" if sent
                else "Stripe could not be reached; nothing was sent", provider=self.provider_id, sent=sent,
            ) from None
        except stripe.StripeError as error:  # APIError (5xx) and the rest: the outcome is unknown
            status = error.http_status or 0
            if status == 404:
                raise ProviderObjectNotFound("Stripe has no such object", provider=self.provider_id) from None
            if 400 <= status < 500:
                raise InvalidProviderRequest(f"Stripe refused the request (HTTP {status})",
                                             provider=self.provider_id) from None
            raise ProviderUnavailable(f"Stripe answered with an error (HTTP {error.http_status}); the outcome is "
                                      "unknown", provider=self.provider_id) from None


def stripe_idempotency_key(key: str, operation: str) -> str:
    """Stripe scopes keys to the account, Billfold per operation: the operation goes into the key."""
    scoped = f"{key}:{operation}"
    if len(scoped) <= MAX_STRIPE_KEY:
        return scoped
    return f"billfold-{hashlib.sha256(scoped.encode()).hexdigest()}:{operation}"


def _never_connected(error: BaseException) -> bool:
    """Whether the request certainly never reached Stripe (refused or no connection made)."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, httpx.ConnectError | httpx.ConnectTimeout):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _error_body(error: stripe.StripeError) -> dict[str, Any]:
    body = error.json_body if isinstance(error.json_body, dict) else {}
    inner = body.get("error")
    return inner if isinstance(inner, dict) else {}


def _seconds(config: Mapping[str, Any], name: str, default: float, provider_id: str) -> float:
    value = config.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 300:
        raise ConfigurationError(f"Stripe provider {provider_id!r}: {name!r} must be a number of seconds, 0 to 300")
    return float(value)


def _created(start: datetime | None, end: datetime | None) -> dict[str, int]:
    created: dict[str, int] = {}
    if start is not None:
        created["gte"] = int(start.timestamp())
    if end is not None:
        created["lt"] = int(end.timestamp()) + 1  # whole seconds: the exact bound is applied after
    return created


def _oldest_first(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(items, key=lambda item: (int(item.get("created") or 0), str(item.get("id"))))


