"""The PayPal adapter: Orders v2, Payments v2, Vault v3 and webhook verification, over httpx.

A charge is a PayPal order. ``create_charge`` creates it (no money moves) and Billfold stores its
id; ``confirm`` captures it, or authorizes it when ``capture=False``; asked again (a timeout, a
crash), Billfold reads the order with ``get_charge`` and confirms only an order whose money has
not moved, so a retry never captures twice. Every write carries ``PayPal-Request-Id`` (the
idempotency key), which PayPal answers with the first outcome.

Config: ``client_id`` and ``client_secret`` (the REST app's credentials), ``webhook_id`` (the id of
the webhook configured at PayPal, used to verify deliveries), ``api_base`` (default: the
sandbox, https://api-m.sandbox.paypal.com), ``timeout_seconds`` (read timeout, default 30; the
connect timeout is at most 5 s), ``return_url``/``cancel_url`` (where PayPal sends the buyer after
the approve page, optional). The constructor does not call the network.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

from billfold.kit import clock
from billfold.kit.errors import ConfigurationError
from billfold.kit.money import CURRENCIES, Money
from billfold.providers.base import (
    Capabilities,
    ChargeResult,
    ChargeStatus,
    CustomerResult,
    DisputeResult,
    DisputeStatus,
    PaymentMethodResult,
    RefundResult,
    RefundStatus,
    WebhookEvent,
)
from billfold.providers.errors import (
    Declined,
    DeclineCode,
    InvalidProviderRequest,
    ProviderObjectNotFound,
    ProviderUnavailable,
    WebhookSignatureInvalid,
)

SANDBOX_API = "https://api-m.sandbox.paypal.com"

# The currencies PayPal's REST APIs accept; HUF, JPY and TWD take no decimals at PayPal.
CURRENCIES_ACCEPTED = frozenset({
    "AUD", "BRL", "CAD", "CNY", "CZK", "DKK", "EUR", "HKD", "HUF", "ILS", "JPY", "MYR", "MXN", "TWD",
    "NZD", "NOK", "PHP", "PLN", "GBP", "SGD", "SEK", "CHF", "THB", "USD",
})
WHOLE_UNITS_ONLY = frozenset({"HUF", "JPY", "TWD"})

# A PayPal-Request-Id is at most 108 characters (the Orders v2 document).
MAX_REQUEST_ID = 108

# 422 issues that are the buyer's funding being refused: a decline, not a bad request.
DECLINE_ISSUES: dict[str, DeclineCode] = {
    "INSTRUMENT_DECLINED": DeclineCode.GENERIC_DECLINE,
    "TRANSACTION_REFUSED": DeclineCode.GENERIC_DECLINE,
    "PAYER_CANNOT_PAY": DeclineCode.GENERIC_DECLINE,
    "PAYEE_BLOCKED_TRANSACTION": DeclineCode.GENERIC_DECLINE,
    "COMPLIANCE_VIOLATION": DeclineCode.GENERIC_DECLINE,
    "MAX_NUMBER_OF_PAYMENT_ATTEMPTS_EXCEEDED": DeclineCode.GENERIC_DECLINE,
    "INSUFFICIENT_FUNDS": DeclineCode.INSUFFICIENT_FUNDS,
    "CARD_EXPIRED": DeclineCode.EXPIRED_CARD,
    "CARD_CLOSED": DeclineCode.CARD_NOT_SUPPORTED,
    "PAYER_ACTION_REQUIRED": DeclineCode.AUTHENTICATION_REQUIRED,
    "REDIRECT_PAYER_FOR_ALTERNATE_FUNDING": DeclineCode.AUTHENTICATION_REQUIRED,
}

# The order's money already moved: confirm answers the order as it is.
ALREADY_DONE_ISSUES = frozenset({"ORDER_ALREADY_CAPTURED", "ORDER_ALREADY_AUTHORIZED", "ORDER_COMPLETED_OR_VOIDED"})

CAPTURE_STATUS = {
    "COMPLETED": ChargeStatus.SUCCEEDED, "PARTIALLY_REFUNDED": ChargeStatus.SUCCEEDED,
    "REFUNDED": ChargeStatus.SUCCEEDED, "PENDING": ChargeStatus.PROCESSING,
    "DECLINED": ChargeStatus.FAILED, "FAILED": ChargeStatus.FAILED,
}
AUTHORIZATION_STATUS = {
    "CREATED": ChargeStatus.AUTHORIZED, "PENDING": ChargeStatus.PROCESSING,
    "CAPTURED": ChargeStatus.SUCCEEDED, "PARTIALLY_CAPTURED": ChargeStatus.SUCCEEDED,
    "VOIDED": ChargeStatus.CANCELED, "EXPIRED": ChargeStatus.CANCELED, "DENIED": ChargeStatus.FAILED,
}
REFUND_STATUS = {
    "COMPLETED": RefundStatus.SUCCEEDED, "PENDING": RefundStatus.PENDING,
    "FAILED": RefundStatus.FAILED, "CANCELLED": RefundStatus.CANCELED,
}
# A resolved dispute's outcome: the merchant kept the money (WON) or the buyer got it (LOST).
DISPUTE_WON = frozenset({"RESOLVED_SELLER_FAVOUR", "CANCELED_BY_BUYER", "DENIED"})
DISPUTE_LOST = frozenset({"RESOLVED_BUYER_FAVOUR", "RESOLVED_WITH_PAYOUT", "ACCEPTED"})
MOVED_CAPTURES = frozenset({"COMPLETED", "PARTIALLY_REFUNDED", "REFUNDED"})
COUNTED_REFUNDS = frozenset({"COMPLETED", "PENDING"})

# PayPal's event types -> ours (base.EVENT_TYPES) and what they are about.
EVENTS: dict[str, tuple[str, str]] = {
    "PAYMENT.CAPTURE.COMPLETED": ("charge.succeeded", "charge"),
    "PAYMENT.CAPTURE.DENIED": ("charge.failed", "charge"),
    "PAYMENT.CAPTURE.DECLINED": ("charge.failed", "charge"),
    "PAYMENT.CAPTURE.PENDING": ("charge.processing", "charge"),
    "PAYMENT.CAPTURE.REFUNDED": ("refund.succeeded", "refund"),
    "PAYMENT.CAPTURE.REVERSED": ("refund.succeeded", "refund"),
    "CHECKOUT.ORDER.APPROVED": ("charge.updated", "charge"),
    "CHECKOUT.ORDER.COMPLETED": ("charge.updated", "charge"),
    "PAYMENT.AUTHORIZATION.CREATED": ("charge.authorized", "charge"),
    "PAYMENT.AUTHORIZATION.VOIDED": ("charge.canceled", "charge"),
    "CUSTOMER.DISPUTE.CREATED": ("dispute.opened", "dispute"),
    "CUSTOMER.DISPUTE.UPDATED": ("dispute.updated", "dispute"),
    "CUSTOMER.DISPUTE.RESOLVED": ("dispute.closed", "dispute"),
    "VAULT.PAYMENT-TOKEN.CREATED": ("payment_method.attached", "payment_method"),
    "VAULT.PAYMENT-TOKEN.DELETED": ("payment_method.detached", "payment_method"),
    "BILLING.SUBSCRIPTION.CREATED": ("subscription.created", "subscription"),
    "BILLING.SUBSCRIPTION.CANCELLED": ("subscription.canceled", "subscription"),
}
RESOURCE_OBJECTS = {"refund": "refund", "dispute": "dispute", "payment_token": "payment_method", "subscription": "subscription"}
WEBHOOK_HEADERS = {
    "auth_algo": "paypal-auth-algo", "cert_url": "paypal-cert-url", "transmission_id": "paypal-transmission-id",
    "transmission_sig": "paypal-transmission-sig", "transmission_time": "paypal-transmission-time",
}

# Transaction Search: event codes T00xx are payments received, T1107 a refund; one search spans
# at most 31 days, and PayPal keeps three years.
PAYMENT_EVENT_CODES = ("T00",)
REFUND_EVENT_CODE = "T1107"
SEARCH_WINDOW = timedelta(days=31)
SEARCH_HISTORY = timedelta(days=3 * 365)

TOKEN_MARGIN = timedelta(minutes=5)  # a cached token is renewed this long before PayPal's expiry


def paypal_value(amount: Money) -> str:
    """Our minor units as PayPal's decimal string: 1234 USD -> "12.34", 500 JPY -> "500"."""
    if amount.currency in WHOLE_UNITS_ONLY and CURRENCIES[amount.currency] > 0:
        whole, rest = divmod(amount.amount, 10 ** CURRENCIES[amount.currency])
        if rest:
            raise InvalidProviderRequest(
                f"PayPal takes {amount.currency} in whole units only; {amount.to_decimal()} has a fraction",
                code="paypal_whole_units_only", currency=amount.currency,
            )
        return str(whole)
    return str(amount.to_decimal())


def from_paypal(money: Mapping[str, Any]) -> Money:
    return Money.from_decimal(Decimal(str(money["value"])), str(money["currency_code"]))


def request_id(key: str) -> str:
    """The idempotency key as a PayPal-Request-Id (a digest when it is too long)."""
    if 0 < len(key) <= MAX_REQUEST_ID:
        return key
    return "bf-" + hashlib.sha256(key.encode()).hexdigest()


def _time(value: str | None) -> datetime:
    if not value:
        return clock.now()
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _stamp(value: datetime) -> str:
    return value.astimezone(clock.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _issues(body: Any) -> list[str]:
    if not isinstance(body, Mapping):
        return []
    return [str(d.get("issue")) for d in body.get("details") or [] if isinstance(d, Mapping) and d.get("issue")]


class PayPalProvider:
    """The PayPal adapter (see the module's docstring for its config)."""

    kind = "paypal"

    def __init__(self, provider_id: str = "paypal", config: Mapping[str, Any] | None = None) -> None:
        config = dict(config or {})
        missing = [k for k in ("client_id", "client_secret", "webhook_id") if not config.get(k)]
        if missing:
            raise ConfigurationError(
                f"PayPal needs {', '.join(missing)} in its config: client_id and client_secret are the REST app's "
                "credentials, webhook_id the id PayPal gave the webhook (deliveries are verified against it)",
                provider_id=provider_id,
            )
        self.provider_id = provider_id
        self._client_id = str(config["client_id"])
        self._client_secret = str(config["client_secret"])
        self.webhook_id = str(config["webhook_id"])
        self.api_base = str(config.get("api_base") or SANDBOX_API).rstrip("/")
        seconds = float(config.get("timeout_seconds") or 30)
        if seconds <= 0:
            raise ConfigurationError("PayPal's timeout_seconds must be more than 0", provider_id=provider_id)
        self.timeout = httpx.Timeout(seconds, connect=min(seconds, 5.0))
        self._return_url = config.get("return_url")
        self._cancel_url = config.get("cancel_url")
        self._http = httpx.Client(base_url=self.api_base, timeout=self.timeout)
        self._token_lock = threading.Lock()
        self._token: str | None = None
        self._token_expires: datetime | None = None
        self.capabilities = Capabilities(
            saved_methods=True, off_session_charges=True, separate_capture=True, partial_capture=True,
            refunds=True, partial_refunds=True, customer_actions=True, provider_subscriptions=False,
            creates_before_charging=True, disputes=True, buyer_approval=True, currencies=CURRENCIES_ACCEPTED,
            webhook_events=frozenset(EVENTS),
            # A PayPal id (a vault setup token, say): upper-case letters, digits, '-' and '_'.
            token_pattern=r"[0-9A-Z][0-9A-Z_-]{5,254}",
        )

    def close(self) -> None:
        self._http.close()

    # ---- HTTP -----------------------------------------------------------------------------------

    def _access_token(self, *, renew: bool = False) -> str:
        with self._token_lock:
            now = clock.now()
            if not renew and self._token and self._token_expires and now < self._token_expires:
                return self._token
            try:
                answer = self._http.post(
                    "/v1/oauth2/token", data={"grant_type": "client_credentials"},
                    auth=(self._client_id, self._client_secret), headers={"Accept": "application/json"},
                )
            except httpx.TransportError as error:
                raise self._unavailable("POST /v1/oauth2/token", error) from None
            if answer.status_code >= 500:
                raise ProviderUnavailable(f"PayPal answered {answer.status_code} to a token request", provider=self.provider_id)
            if answer.status_code != 200:
                raise InvalidProviderRequest(
                    f"PayPal refused the client credentials of provider {self.provider_id} ({answer.status_code})",
                    code="provider_credentials_rejected", provider=self.provider_id,
                )
            body = answer.json()
            self._token = str(body["access_token"])
            lifetime = timedelta(seconds=int(body.get("expires_in") or 0))
            self._token_expires = now + max(lifetime - TOKEN_MARGIN, lifetime / 2)
            return self._token

    def _unavailable(self, what: str, error: httpx.TransportError) -> ProviderUnavailable:
        never_sent = isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout))
        return ProviderUnavailable(
            f"PayPal did not answer {what} ({type(error).__name__})", provider=self.provider_id, sent=not never_sent,
        )

    def _call(
        self, method: str, path: str, *, body: Mapping[str, Any] | None = None, key: str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One API call: (status, parsed body) for a 2xx or a 4xx this adapter reads; raises for
        the rest. A 401 renews the token once and tries again."""
        headers = {"Accept": "application/json", "Prefer": "return=representation"}
        if key is not None:
            headers["PayPal-Request-Id"] = request_id(key)
        what = f"{method} {path.split('?')[0]}"
        for attempt in (1, 2):
            headers["Authorization"] = f"Bearer {self._access_token(renew=attempt == 2)}"
            try:
                answer = self._http.request(method, path, json=body, headers=headers, params=params)
            except httpx.TransportError as error:
                raise self._unavailable(what, error) from None
            if answer.status_code != 401:
                break
        if answer.status_code == 401:
            raise InvalidProviderRequest(
                f"PayPal refused the credentials of provider {self.provider_id} after a fresh token",
                code="provider_credentials_rejected", provider=self.provider_id,
            )
        parsed: Any = None
        if answer.content:
            try:
                parsed = answer.json()
            except ValueError:
                parsed = None
        status = answer.status_code
        if status >= 500:
            raise ProviderUnavailable(f"PayPal answered {status} to {what}", provider=self.provider_id)
        if status == 404:
            raise ProviderObjectNotFound(f"PayPal has no such object ({what})", provider=self.provider_id)
        return status, parsed

    def _refused(self, what: str, status: int, body: Any) -> InvalidProviderRequest:
        issues = _issues(body)
        name = body.get("name") if isinstance(body, Mapping) else None
        return InvalidProviderRequest(
            f"PayPal refused {what} ({status}{' ' + str(name) if name else ''}"
            f"{': ' + ', '.join(issues) if issues else ''})",
            provider=self.provider_id, issues=issues,
        )

    def _write(self, what: str, method: str, path: str, *, body: Mapping[str, Any] | None = None, key: str) -> Any:
        status, parsed = self._call(method, path, body=body, key=key)
        if status >= 400:
            raise self._refused(what, status, parsed)
        return parsed

    def _order(self, order_id: str) -> dict[str, Any]:
        _check_id(order_id)
        status, body = self._call("GET", f"/v2/checkout/orders/{order_id}")
        if status >= 400:
            raise self._refused("reading the order", status, body)
        return body

    # ---- customers and saved methods (Vault v3) --------------------------------------------------

    def create_customer(
        self, *, email: str | None = None, name: str | None = None,
        metadata: Mapping[str, str] | None = None, idempotency_key: str,
    ) -> CustomerResult:
        """PayPal has no customer object to create: the vault names a customer by an id of ours,
        made here from the key (the same key gives the same id, so a retry changes nothing)."""
        customer_id = "bf" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:20]
        return CustomerResult(customer_id, email, name, clock.now(), dict(metadata or {}))

    def attach_payment_method(self, *, customer_id: str, token: str, idempotency_key: str) -> PaymentMethodResult:
        """``token`` is the vault setup token the buyer approved; PayPal turns it into a payment token."""
        self.capabilities.require_token(token, self.provider_id)
        body = {"customer": {"id": customer_id}, "payment_source": {"token": {"id": token, "type": "SETUP_TOKEN"}}}
        status, made = self._call("POST", "/v3/vault/payment-tokens", body=body, key=idempotency_key)
        if status >= 400:
            raise self._refused("saving the payment method", status, made)
        return _method(made, customer_id)

    def detach_payment_method(self, *, payment_method_id: str, idempotency_key: str) -> PaymentMethodResult:
        _check_id(payment_method_id)
        status, body = self._call("DELETE", f"/v3/vault/payment-tokens/{payment_method_id}", key=idempotency_key)
        if status >= 400:
            raise self._refused("deleting the payment method", status, body)
        return PaymentMethodResult(payment_method_id, None, "paypal", "paypal", None, None, None, clock.now(), detached=True)

    # ---- charges --------------------------------------------------------------------------------

    def create_charge(
        self, *, amount: Money, idempotency_key: str, customer_id: str | None = None,
        payment_method_id: str | None = None, token: str | None = None, off_session: bool = False,
        capture: bool = True, description: str | None = None, metadata: Mapping[str, str] | None = None,
    ) -> ChargeResult:
        """Create the order, moving no money: REQUIRES_ACTION with the approve link for a buyer
        who pays now, CREATED for a saved method (``payment_method_id``, a vault payment token)."""
        self.capabilities.require_currency(amount.currency, self.provider_id)
        if amount.amount <= 0:
            raise InvalidProviderRequest("a PayPal order needs an amount above zero", provider=self.provider_id)
        if token is not None:
            raise InvalidProviderRequest(
                "PayPal takes no one-time token for a charge: leave it out and send the buyer to the approve link",
                provider=self.provider_id,
            )
        if off_session and not payment_method_id:
            raise Declined("an off-session PayPal charge needs a saved method", DeclineCode.AUTHENTICATION_REQUIRED)
        metadata = dict(metadata or {})
        unit: dict[str, Any] = {
            "reference_id": "default",
            "amount": {"currency_code": amount.currency, "value": paypal_value(amount)},
        }
        if metadata.get("payment_id"):
            unit["custom_id"] = str(metadata["payment_id"])[:127]
        if metadata.get("invoice_id"):
            unit["invoice_id"] = str(metadata["invoice_id"])[:127]
        if description:
            unit["description"] = description[:127]
        order: dict[str, Any] = {"intent": "CAPTURE" if capture else "AUTHORIZE", "purchase_units": [unit]}
        if payment_method_id:
            _check_id(payment_method_id)
            order["payment_source"] = {"paypal": {"vault_id": payment_method_id}}
        elif self._return_url:
            context = {"return_url": self._return_url, "cancel_url": self._cancel_url or self._return_url}
            order["payment_source"] = {"paypal": {"experience_context": context}}
        made = self._write("creating the order", "POST", "/v2/checkout/orders", body=order, key=idempotency_key)
        return self._result(made, off_session=off_session, payment_method_id=payment_method_id)

    def charge(
        self, *, amount: Money, idempotency_key: str, customer_id: str | None = None,
        payment_method_id: str | None = None, token: str | None = None, off_session: bool = False,
        capture: bool = True, description: str | None = None, metadata: Mapping[str, str] | None = None,
    ) -> ChargeResult:
        """Create the order, then capture (or authorize) it at once when no buyer must approve it."""
        created = self.create_charge(
            amount=amount, idempotency_key=idempotency_key, customer_id=customer_id,
            payment_method_id=payment_method_id, token=token, off_session=off_session, capture=capture,
            description=description, metadata=metadata,
        )
        if created.status != ChargeStatus.CREATED:
            return created
        return self.confirm(charge_id=created.id, idempotency_key=f"{idempotency_key}:confirm")

    def confirm(self, *, charge_id: str, idempotency_key: str) -> ChargeResult:
        """Capture (intent CAPTURE) or authorize (AUTHORIZE) the order. An order whose money moved
        already is answered as it is; one the buyer has not approved yet stays REQUIRES_ACTION."""
        order = self._order(charge_id)
        current = self._result(order)
        if order.get("status") in ("COMPLETED", "VOIDED") or current.status == ChargeStatus.REQUIRES_ACTION:
            return current
        step = "capture" if order.get("intent") == "CAPTURE" else "authorize"
        status, body = self._call("POST", f"/v2/checkout/orders/{charge_id}/{step}", body={}, key=idempotency_key)
        if status < 400:
            return self._result(body)
        issues = _issues(body)
        if status == 422 and set(issues) & ALREADY_DONE_ISSUES:
            return self._result(self._order(charge_id))
        if status == 422 and "ORDER_NOT_APPROVED" in issues:
            return self._result(self._order(charge_id))
        declined = next((DECLINE_ISSUES[i] for i in issues if i in DECLINE_ISSUES), None)
        if status == 422 and declined is not None:
            failed = _failed(self._result(self._order(charge_id)), declined, issues)
            raise Declined(f"PayPal declined the payment ({', '.join(issues)})", declined, charge=failed)
        raise self._refused(f"the order's {step}", status, body)

    def capture(self, *, charge_id: str, idempotency_key: str, amount: Money | None = None) -> ChargeResult:
        """Capture an authorized order, in full or in part (the rest is released: final capture)."""
        order = self._order(charge_id)
        authorization = _first(order, "authorizations")
        if authorization is None:
            raise InvalidProviderRequest(f"PayPal order {charge_id} has no authorization to capture", provider=self.provider_id)
        if authorization.get("status") != "CREATED":
            return self._result(order)
        body: dict[str, Any] = {"final_capture": True}
        if amount is not None:
            body["amount"] = {"currency_code": amount.currency, "value": paypal_value(amount)}
        self._write("capturing the authorization", "POST", f"/v2/payments/authorizations/{authorization['id']}/capture",
                    body=body, key=idempotency_key)
        return self._result(self._order(charge_id))

    def cancel(self, *, charge_id: str, idempotency_key: str) -> ChargeResult:
        """Void the order's authorization. An order nobody approved cannot be voided at PayPal: it
        is left to expire, and answered CANCELED, since Billfold will never capture it."""
        order = self._order(charge_id)
        current = self._result(order)
        authorization = _first(order, "authorizations")
        if authorization is not None and authorization.get("status") == "CREATED":
            self._write("voiding the authorization", "POST", f"/v2/payments/authorizations/{authorization['id']}/void",
                        key=idempotency_key)
            return self._result(self._order(charge_id))
        if current.status in (ChargeStatus.REQUIRES_ACTION, ChargeStatus.CREATED):
            return _replace(current, status=ChargeStatus.CANCELED, provider_status=f"{order.get('status')} (abandoned)")
        if current.status == ChargeStatus.CANCELED:
            return current
        raise InvalidProviderRequest(
            f"PayPal order {charge_id} is {current.status}; it cannot be canceled (refund it instead)",
            provider=self.provider_id,
        )

    def refund(
        self, *, charge_id: str, idempotency_key: str, amount: Money | None = None,
        reason: str | None = None, metadata: Mapping[str, str] | None = None,
    ) -> RefundResult:
        order = self._order(charge_id)
        capture = next((c for c in _all(order, "captures") if c.get("status") in MOVED_CAPTURES), None)
        if capture is None:
            raise InvalidProviderRequest(f"PayPal order {charge_id} has no capture to refund", provider=self.provider_id)
        body: dict[str, Any] = {}
        if amount is not None:
            body["amount"] = {"currency_code": amount.currency, "value": paypal_value(amount)}
        if reason:
            body["note_to_payer"] = reason[:255]
        if (metadata or {}).get("refund_id"):  # so a refund whose answer was lost still names ours (reconcile)
            body["custom_id"] = str((metadata or {})["refund_id"])[:127]
        made = self._write("the refund", "POST", f"/v2/payments/captures/{capture['id']}/refund",
                           body=body, key=idempotency_key)
        return self._refund(made, charge_id, reason=reason, metadata=metadata)

    def get_charge(self, charge_id: str) -> ChargeResult:
        return self._result(self._order(charge_id))

    def find_charge(self, *, idempotency_key: str) -> ChargeResult | None:
        """PayPal cannot look an order up by its PayPal-Request-Id, so this answers None. Billfold
        stores the order's id before capturing (``create_charge``) and asks ``get_charge`` instead;
        a create that was never heard is created again with the same key, which PayPal answers
        with the same order."""
        return None

    def get_refund(self, refund_id: str) -> RefundResult:
        _check_id(refund_id)
        status, refund = self._call("GET", f"/v2/payments/refunds/{refund_id}")
        if status >= 400:
            raise self._refused("reading the refund", status, refund)
        up = next((link["href"] for link in refund.get("links") or [] if link.get("rel") == "up"), None)
        capture_id = up.rstrip("/").rsplit("/", 1)[-1] if up else None
        order_id = ""
        if capture_id:
            _check_id(capture_id)
            got, capture = self._call("GET", f"/v2/payments/captures/{capture_id}")
            if got < 400:
                order_id = ((capture.get("supplementary_data") or {}).get("related_ids") or {}).get("order_id", "")
        return self._refund(refund, order_id)

    def get_dispute(self, dispute_id: str) -> DisputeResult:
        """A dispute (Customer Disputes v1) about one of our captures, named by the capture's order."""
        _check_id(dispute_id)
        status, dispute = self._call("GET", f"/v1/customer/disputes/{dispute_id}")
        if status >= 400:
            raise self._refused("reading the dispute", status, dispute)
        raw = str(dispute.get("status") or "")
        outcome = str((dispute.get("dispute_outcome") or {}).get("outcome_code") or "")
        ours = DisputeStatus.OPEN
        if raw == "RESOLVED" and outcome in DISPUTE_WON:
            ours = DisputeStatus.WON
        elif raw == "RESOLVED" and outcome in DISPUTE_LOST:
            ours = DisputeStatus.LOST
        transaction = (dispute.get("disputed_transactions") or [{}])[0]
        charge_id = str(transaction.get("seller_transaction_id") or "")
        if charge_id:
            _check_id(charge_id)
            got, capture = self._call("GET", f"/v2/payments/captures/{charge_id}")
            if got < 400:
                charge_id = ((capture.get("supplementary_data") or {}).get("related_ids") or {}).get("order_id") or charge_id
        return DisputeResult(
            id=str(dispute["dispute_id"]), charge_id=charge_id, amount=from_paypal(dispute["dispute_amount"]),
            status=ours, provider_status=f"{raw}/{outcome}" if outcome else raw,
            created=_time(dispute.get("create_time")), reason=dispute.get("reason"),
        )

    def list_charges(self, created_from: datetime | None = None, created_to: datetime | None = None) -> list[ChargeResult]:
        """The orders with a payment (capture) in [created_from, created_to), by Transaction Search
        (``GET /v1/reporting/transactions``), each read as it is now. Transaction Search lists only
        money that moved, and PayPal says it may lag up to three hours: an order nobody paid is
        not listed."""
        orders: dict[str, None] = {}
        for info in self._transactions(created_from, created_to):
            if str(info.get("transaction_event_code") or "").startswith(PAYMENT_EVENT_CODES):
                order_id = info.get("paypal_reference_id") if info.get("paypal_reference_id_type") == "ODR" else None
                orders.setdefault(str(order_id or self._order_of_capture(str(info["transaction_id"]))), None)
        return [self.get_charge(order_id) for order_id in orders if order_id]

    def list_refunds(self, created_from: datetime | None = None, created_to: datetime | None = None) -> list[RefundResult]:
        """The refunds made in [created_from, created_to), by Transaction Search, each read as it is now."""
        return [self.get_refund(str(info["transaction_id"])) for info in self._transactions(created_from, created_to)
                if info.get("transaction_event_code") == REFUND_EVENT_CODE]

    def _transactions(self, created_from: datetime | None, created_to: datetime | None) -> list[dict[str, Any]]:
        """Transaction Search over [created_from, created_to) in windows of at most 31 days (its
        limit), every page; oldest first. No ``created_from``: as far back as PayPal keeps (3 years)."""
        end = created_to or clock.now()
        start = created_from or end - SEARCH_HISTORY
        found: list[dict[str, Any]] = []
        window_start = start
        while window_start < end:
            window_end = min(window_start + SEARCH_WINDOW, end)
            page, pages = 1, 1
            while page <= pages:
                params = {"start_date": _stamp(window_start), "end_date": _stamp(window_end),
                          "fields": "transaction_info", "page_size": "500", "page": str(page)}
                status, body = self._call("GET", "/v1/reporting/transactions", params=params)
                if status >= 400:
                    raise self._refused("searching transactions", status, body)
                found.extend(d["transaction_info"] for d in body.get("transaction_details") or [] if d.get("transaction_info"))
                pages = int(body.get("total_pages") or 1)
                page += 1
            window_start = window_end
        within = [t for t in found if start <= _time(t.get("transaction_initiation_date")) < end]
        return sorted(within, key=lambda t: _time(t.get("transaction_initiation_date")))

    def _order_of_capture(self, capture_id: str) -> str:
        _check_id(capture_id)
        status, capture = self._call("GET", f"/v2/payments/captures/{capture_id}")
        if status >= 400:
            raise self._refused("reading the capture", status, capture)
        return str(((capture.get("supplementary_data") or {}).get("related_ids") or {}).get("order_id") or "")

    # ---- webhooks -------------------------------------------------------------------------------

    def verify_webhook(self, body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        """Ask PayPal (verify-webhook-signature) whether it sent this delivery to our webhook_id."""
        lowered = {k.lower(): v for k, v in headers.items()}
        fields = {name: lowered.get(header) for name, header in WEBHOOK_HEADERS.items()}
        if not all(fields.values()):
            raise WebhookSignatureInvalid("the delivery lacks PayPal's transmission headers")
        try:
            event = json.loads(body)
        except ValueError:
            raise WebhookSignatureInvalid("the delivery is not JSON") from None
        if not isinstance(event, dict) or not event.get("id") or not event.get("event_type"):
            raise WebhookSignatureInvalid("the delivery is not a PayPal event")
        request = {**fields, "webhook_id": self.webhook_id, "webhook_event": event}
        status, answer = self._call("POST", "/v1/notifications/verify-webhook-signature", body=request)
        if status >= 400:
            raise self._refused("verifying a webhook", status, answer)
        if not isinstance(answer, Mapping) or answer.get("verification_status") != "SUCCESS":
            raise WebhookSignatureInvalid("PayPal did not verify the delivery's signature")
        return normalise_event(event)

    # ---- results --------------------------------------------------------------------------------

    def _result(self, order: Mapping[str, Any], *, off_session: bool = False,
                payment_method_id: str | None = None) -> ChargeResult:
        unit = (order.get("purchase_units") or [{}])[0]
        amount = from_paypal(unit["amount"])
        zero = Money(0, amount.currency)
        captures = _all(order, "captures")
        authorizations = _all(order, "authorizations")
        refunds = _all(order, "refunds")
        captured = sum((from_paypal(c["amount"]) for c in captures if c.get("status") in MOVED_CAPTURES), zero)
        refunded = sum((from_paypal(r["amount"]) for r in refunds if r.get("status") in COUNTED_REFUNDS), zero)
        raw = str(order.get("status") or "")
        approve = next((link["href"] for link in order.get("links") or []
                        if link.get("rel") in ("payer-action", "approve")), None)
        next_action = None
        failure_code = None
        if raw == "VOIDED":
            status = ChargeStatus.CANCELED
        elif captures:
            last = captures[-1]
            raw = f"{raw}/capture:{last.get('status')}"
            status = CAPTURE_STATUS.get(str(last.get("status")), ChargeStatus.PROCESSING)
            if status == ChargeStatus.FAILED:
                failure_code = str(DeclineCode.GENERIC_DECLINE)
        elif authorizations:
            last = authorizations[-1]
            raw = f"{raw}/authorization:{last.get('status')}"
            status = AUTHORIZATION_STATUS.get(str(last.get("status")), ChargeStatus.PROCESSING)
        elif raw == "APPROVED":
            status = ChargeStatus.CREATED
        elif raw in ("CREATED", "PAYER_ACTION_REQUIRED", "SAVED") and approve:
            status = ChargeStatus.REQUIRES_ACTION
            next_action = {"type": "redirect_to_url", "url": approve}
        elif raw in ("CREATED", "SAVED"):
            status = ChargeStatus.CREATED  # a saved method's order: nobody needs to approve it
        else:
            status = ChargeStatus.PROCESSING
        metadata = {"payment_id": unit["custom_id"]} if unit.get("custom_id") else {}
        if captures:
            metadata["paypal_capture_id"] = str(captures[-1].get("id"))
        if authorizations:
            metadata["paypal_authorization_id"] = str(authorizations[-1].get("id"))
        vault = (((order.get("payment_source") or {}).get("paypal") or {}).get("attributes") or {}).get("vault") or {}
        return ChargeResult(
            id=str(order["id"]), status=status, provider_status=raw, amount=amount,
            amount_captured=captured, amount_refunded=refunded, created=_time(order.get("create_time")),
            payment_method_id=payment_method_id or vault.get("id"), capture=order.get("intent") != "AUTHORIZE",
            off_session=off_session, description=unit.get("description"), metadata=metadata,
            next_action=next_action, failure_code=failure_code,
        )

    def _refund(self, refund: Mapping[str, Any], charge_id: str, *, reason: str | None = None,
                metadata: Mapping[str, str] | None = None) -> RefundResult:
        raw = str(refund.get("status") or "")
        return RefundResult(
            id=str(refund["id"]), charge_id=charge_id, amount=from_paypal(refund["amount"]),
            status=REFUND_STATUS.get(raw, RefundStatus.PENDING), provider_status=raw,
            created=_time(refund.get("create_time")), reason=reason or refund.get("note_to_payer"),
            metadata={**({"refund_id": str(refund["custom_id"])} if refund.get("custom_id") else {}), **(metadata or {})},
        )


def normalise_event(event: Mapping[str, Any]) -> WebhookEvent:
    """A PayPal event as ``WebhookEvent``: a capture's or authorization's event is about the
    order (``ChargeResult.id``), a refund's about the refund."""
    kind = str(event["event_type"])
    resource = dict(event.get("resource") or {})
    ours, object_type = EVENTS.get(kind, ("", ""))
    if not ours and kind.startswith("BILLING.SUBSCRIPTION."):
        ours, object_type = "subscription.updated", "subscription"
    if not ours:
        ours, object_type = kind, RESOURCE_OBJECTS.get(str(event.get("resource_type") or ""), "charge")
    if object_type == "charge":
        related = (resource.get("supplementary_data") or {}).get("related_ids") or {}
        object_id = related.get("order_id") or resource.get("id")
    elif object_type == "dispute":
        object_id = resource.get("dispute_id") or resource.get("id")
    else:
        object_id = resource.get("id")
    return WebhookEvent(str(event["id"]), ours, object_type, str(object_id or ""), _time(event.get("create_time")), resource)


def _check_id(value: str) -> None:
    """PayPal ids go into URL paths: refuse anything that is not one, before any call."""
    if not value or len(value) > 255 or not all(c.isalnum() or c in "-_" for c in value):
        raise InvalidProviderRequest("not a PayPal id", code="invalid_provider_id")


def _all(order: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for unit in order.get("purchase_units") or []:
        found.extend((unit.get("payments") or {}).get(kind) or [])
    return found


def _first(order: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    found = _all(order, kind)
    return found[0] if found else None


def _replace(result: ChargeResult, **changes: Any) -> ChargeResult:
    return ChargeResult.from_dict({**result.to_dict(), **{k: str(v) if k == "status" else v for k, v in changes.items()}})


def _failed(result: ChargeResult, code: DeclineCode, issues: list[str]) -> ChargeResult:
    return _replace(result, status=ChargeStatus.FAILED, failure_code=str(code),
                    failure_message=f"PayPal declined the payment ({', '.join(issues)})",
                    provider_status=f"{result.provider_status}/declined")


def _method(token: Mapping[str, Any], customer_id: str | None) -> PaymentMethodResult:
    source = token.get("payment_source") or {}
    card = source.get("card")
    if card:
        expiry = str(card.get("expiry") or "")
        year, _, month = expiry.partition("-")
        return PaymentMethodResult(
            str(token["id"]), customer_id, "credit_card", str(card.get("brand") or "").lower() or None,
            card.get("last_digits"), int(month) if month.isdigit() else None, int(year) if year.isdigit() else None,
            clock.now(),
        )
    return PaymentMethodResult(str(token["id"]), (token.get("customer") or {}).get("id") or customer_id,
                               "paypal", "paypal", None, None, None, clock.now())
