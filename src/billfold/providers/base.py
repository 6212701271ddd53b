"""The adapter protocol, its capabilities, and the normalised results every adapter returns.

An adapter speaks only to its provider: no database, no web framework. Amounts are ``Money``
(integer minor units), times come from ``billfold.kit.clock``, and every call that changes
something at the provider takes an ``idempotency_key`` derived from our own row (see
docs/providers.md), so a crash and a retry never charge twice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from billfold.kit.money import Money
from billfold.providers.errors import InvalidProviderRequest, InvalidToken, NotSupported


class ChargeStatus(StrEnum):
    """Our normalised charge status; the provider's own word is kept beside it."""

    SUCCEEDED = "succeeded"
    REQUIRES_ACTION = "requires_action"  # the customer must authenticate (3-D Secure), then confirm
    PROCESSING = "processing"  # accepted; the final outcome arrives later (webhook or fetch)
    AUTHORIZED = "authorized"  # funds held; capture or cancel (Stripe's requires_capture)
    FAILED = "failed"
    CANCELED = "canceled"
    # The provider's object exists but no money moved (Stripe: an unconfirmed PaymentIntent; PayPal:
    # an order not yet captured): only ``create_charge`` answers it, and ``confirm`` moves the money.
    CREATED = "created"


FINAL_CHARGE_STATUSES = frozenset({ChargeStatus.SUCCEEDED, ChargeStatus.FAILED, ChargeStatus.CANCELED})


class RefundStatus(StrEnum):
    SUCCEEDED = "succeeded"
    PENDING = "pending"
    FAILED = "failed"
    CANCELED = "canceled"


def part_of(amount: Money | None, limit: Money, verb: str) -> Money:
    """``amount`` (default: all of ``limit``) checked to be positive, in currency and within limit,
    before the provider is asked: what a capture, refund or dispute of part of a charge may take."""
    if amount is None:
        return limit
    if amount.currency != limit.currency:
        raise InvalidProviderRequest(f"cannot {verb} {amount.currency} on a {limit.currency} charge",
                                     code="currency_mismatch")
    if not amount.is_positive():
        raise InvalidProviderRequest(f"cannot {verb} {amount}: the amount must be positive", code="invalid_amount")
    if amount > limit:
        code = "refund_exceeds_captured" if verb == "refund" else "capture_exceeds_authorized"
        raise InvalidProviderRequest(f"cannot {verb} {amount}: at most {limit} is left", code=code)
    return amount


def text_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Metadata as a provider keeps it: text keys and text values."""
    return {str(k): str(v) for k, v in (metadata or {}).items()}


def _money_json(value: Money) -> dict[str, Any]:
    return {"amount": value.amount, "currency": value.currency}


def _money(value: Mapping[str, Any]) -> Money:
    return Money(int(value["amount"]), str(value["currency"]))


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


@dataclass(frozen=True, slots=True)
class CustomerResult:
    id: str
    email: str | None
    name: str | None
    created: datetime
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"object": "customer", "id": self.id, "email": self.email, "name": self.name,
                "created": self.created.isoformat(), "metadata": dict(self.metadata)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CustomerResult:
        return cls(data["id"], data.get("email"), data.get("name"), _time(data["created"]), dict(data.get("metadata") or {}))


@dataclass(frozen=True, slots=True)
class PaymentMethodResult:
    """A saved method as Billfold may store it: never a card number or CVC."""

    id: str
    customer_id: str | None
    type: str  # the spec's payment_type: 'credit_card', 'bank_account', 'paypal', ...
    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None
    created: datetime
    detached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"object": "payment_method", "id": self.id, "customer_id": self.customer_id, "type": self.type,
                "brand": self.brand, "last4": self.last4, "exp_month": self.exp_month, "exp_year": self.exp_year,
                "created": self.created.isoformat(), "detached": self.detached}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PaymentMethodResult:
        return cls(data["id"], data.get("customer_id"), data["type"], data.get("brand"), data.get("last4"),
                   data.get("exp_month"), data.get("exp_year"), _time(data["created"]), bool(data.get("detached")))


@dataclass(frozen=True, slots=True)
class ChargeResult:
    """A charge (Stripe: PaymentIntent) as the provider has it now."""

    id: str
    status: ChargeStatus
    provider_status: str  # the provider's raw status, kept beside ours
    amount: Money
    amount_captured: Money
    amount_refunded: Money
    created: datetime
    customer_id: str | None = None
    payment_method_id: str | None = None
    capture: bool = True  # False: authorise now, capture later
    off_session: bool = False
    description: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    next_action: dict[str, Any] | None = None  # for requires_action: what the customer must do
    failure_code: str | None = None
    failure_message: str | None = None

    @property
    def amount_refundable(self) -> Money:
        return self.amount_captured - self.amount_refunded

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_CHARGE_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": "charge", "id": self.id, "status": str(self.status), "provider_status": self.provider_status,
            "amount": _money_json(self.amount), "amount_captured": _money_json(self.amount_captured),
            "amount_refunded": _money_json(self.amount_refunded), "created": self.created.isoformat(),
            "customer_id": self.customer_id, "payment_method_id": self.payment_method_id, "capture": self.capture,
            "off_session": self.off_session, "description": self.description, "metadata": dict(self.metadata),
            "next_action": self.next_action, "failure_code": self.failure_code,
            "failure_message": self.failure_message,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChargeResult:
        return cls(
            id=data["id"], status=ChargeStatus(data["status"]), provider_status=data["provider_status"],
            amount=_money(data["amount"]), amount_captured=_money(data["amount_captured"]),
            amount_refunded=_money(data["amount_refunded"]), created=_time(data["created"]),
            customer_id=data.get("customer_id"), payment_method_id=data.get("payment_method_id"),
            capture=bool(data.get("capture", True)), off_session=bool(data.get("off_session", False)),
            description=data.get("description"), metadata=dict(data.get("metadata") or {}),
            next_action=data.get("next_action"), failure_code=data.get("failure_code"),
            failure_message=data.get("failure_message"),
        )


@dataclass(frozen=True, slots=True)
class RefundResult:
    id: str
    charge_id: str
    amount: Money
    status: RefundStatus
    provider_status: str
    created: datetime
    reason: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"object": "refund", "id": self.id, "charge_id": self.charge_id, "amount": _money_json(self.amount),
                "status": str(self.status), "provider_status": self.provider_status,
                "created": self.created.isoformat(), "reason": self.reason, "metadata": dict(self.metadata)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RefundResult:
        return cls(data["id"], data["charge_id"], _money(data["amount"]), RefundStatus(data["status"]),
                   data["provider_status"], _time(data["created"]), data.get("reason"), dict(data.get("metadata") or {}))


class DisputeStatus(StrEnum):
    OPEN = "open"  # the customer's bank has taken the money back for now; evidence may be sent
    WON = "won"  # decided for the merchant: the money came back
    LOST = "lost"  # decided for the customer: the money is gone, as if refunded


@dataclass(frozen=True, slots=True)
class DisputeResult:
    """A dispute (chargeback) of a charge, as the provider has it now."""

    id: str
    charge_id: str  # the disputed charge, in the adapter's own ids (ChargeResult.id)
    amount: Money
    status: DisputeStatus
    provider_status: str
    created: datetime
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"object": "dispute", "id": self.id, "charge_id": self.charge_id, "amount": _money_json(self.amount),
                "status": str(self.status), "provider_status": self.provider_status,
                "created": self.created.isoformat(), "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DisputeResult:
        return cls(data["id"], data["charge_id"], _money(data["amount"]), DisputeStatus(data["status"]),
                   data["provider_status"], _time(data["created"]), data.get("reason"))


OBJECT_TYPES = frozenset({"charge", "refund", "dispute", "payment_method", "customer", "subscription"})
"""What a normalised ``WebhookEvent`` can be about."""

EVENT_TYPES = frozenset({
    "charge.succeeded", "charge.failed", "charge.requires_action", "charge.authorized", "charge.canceled",
    "charge.processing", "charge.refunded", "charge.updated",
    "refund.succeeded", "refund.failed", "refund.updated",
    "dispute.opened", "dispute.updated", "dispute.closed",
    "payment_method.attached", "payment_method.updated", "payment_method.detached",
    "customer.created", "customer.updated",
    "subscription.created", "subscription.updated", "subscription.canceled",
})
"""The normalised event types adapters answer (``WebhookEvent.type``); a provider event with no
counterpart keeps its own type, and is stored and then ignored."""


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """An event the provider sent, verified and normalised.

    ``type`` is one of ``EVENT_TYPES`` (the provider's own word when none fits); ``object_type`` one
    of ``OBJECT_TYPES``; ``object_id`` the object's id as the adapter's results name it (for
    Stripe, a ``charge.succeeded`` is about the PaymentIntent, since ``ChargeResult.id`` is the
    PaymentIntent's id). ``id`` is the provider's event id: store events under a unique (provider, id). ``data`` is the
    object as the provider described it when the event happened; when order matters, fetch the
    object's current state instead of trusting an old snapshot.
    """

    id: str
    type: str
    object_type: str
    object_id: str
    created: datetime
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "timestamp": self.created.isoformat(),
                "data": {"object_type": self.object_type, "object_id": self.object_id, "object": self.data}}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> WebhookEvent:
        data = payload["data"]
        return cls(str(payload["id"]), str(payload["type"]), str(data["object_type"]), str(data["object_id"]),
                   _time(payload["timestamp"]), dict(data.get("object") or {}))


FEATURES = (
    "saved_methods", "off_session_charges", "separate_capture", "partial_capture", "refunds",
    "partial_refunds", "customer_actions", "provider_subscriptions", "creates_before_charging", "disputes",
    "buyer_approval",
)


DEFAULT_TOKEN_PATTERN = r"[A-Za-z][A-Za-z0-9]*_[A-Za-z0-9_\-.:]{1,250}"
"""A prefixed provider token (``pm_…``, ``tok_…``): never a bare number, never free text."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an adapter can do, as data: a request it cannot serve is refused before any call."""

    saved_methods: bool = False
    off_session_charges: bool = False
    separate_capture: bool = False  # authorise now, capture later
    partial_capture: bool = False
    refunds: bool = False
    partial_refunds: bool = False
    customer_actions: bool = False  # 3-D Secure and the like: requires_action, then confirm
    provider_subscriptions: bool = False  # the provider runs the billing schedule itself
    # The adapter has ``create_charge`` (see ``CreatesBeforeCharging``): Billfold stores the provider's
    # object id before any money moves, so a retry fetches that object and never relies on the
    # provider honouring an idempotency key.
    creates_before_charging: bool = False
    disputes: bool = False  # the adapter has ``get_dispute`` (see ``ReadsDisputes``)
    # Paid with neither a token nor a saved method: the customer approves the payment on the
    # provider's own page (PayPal's approve link, as ``next_action``), then it is confirmed.
    buyer_approval: bool = False
    # ``verify_webhook`` checks a digest over the body with a secret it holds, asking nobody (the
    # sandbox, Stripe, Authorize.net): the API checks such deliveries in its event loop. PayPal's
    # asks PayPal, so it is called on a thread.
    webhooks_checked_offline: bool = False
    currencies: frozenset[str] | None = None  # None: every currency Billfold knows
    webhook_events: frozenset[str] = frozenset()
    # What the provider's one-time tokens look like (Stripe pm_…/tok_…, the sandbox's test tokens):
    # anything else is refused before the provider is called, so text or a card number never reaches it.
    token_pattern: str = DEFAULT_TOKEN_PATTERN

    def accepts_token(self, token: str) -> bool:
        return re.fullmatch(self.token_pattern, token) is not None

    def require_token(self, token: str, provider: str = "this provider") -> None:
        """Raise InvalidToken, without echoing it, unless ``token`` has this provider's token shape."""
        if not self.accepts_token(token):
            raise InvalidToken(
                f"this is not a {provider} token; send the token the provider's own card fields gave",
                errors=[{"field": "token", "message": f"not a {provider} token"}],
            )

    def supports_currency(self, currency: str) -> bool:
        return self.currencies is None or currency.upper() in self.currencies

    def require(self, feature: str, provider: str = "this provider") -> None:
        """Raise NotSupported unless ``feature`` (one of FEATURES) is on."""
        if feature not in FEATURES:
            raise ValueError(f"unknown capability {feature!r}")
        if not getattr(self, feature):
            raise NotSupported(f"{provider} does not support {feature.replace('_', ' ')}", capability=feature)

    def require_currency(self, currency: str, provider: str = "this provider") -> None:
        if not self.supports_currency(currency):
            raise NotSupported(f"{provider} does not accept {currency}", capability="currency", currency=currency)


@runtime_checkable
class ProviderAdapter(Protocol):
    """What Billfold asks of every payment provider.

    Mutating calls take a keyword ``idempotency_key``: the same key with the same parameters
    returns the first outcome (a decline included); with other parameters it raises
    ``IdempotencyMismatch``. Keys are scoped per operation. Declines raise ``Declined`` (with the
    failed charge); an unknown outcome raises ``ProviderUnavailable``; a missing capability
    raises ``NotSupported`` before the provider is called.
    """

    provider_id: str
    kind: str
    capabilities: Capabilities

    def create_customer(
        self, *, email: str | None = None, name: str | None = None,
        metadata: Mapping[str, str] | None = None, idempotency_key: str,
    ) -> CustomerResult: ...

    def attach_payment_method(self, *, customer_id: str, token: str, idempotency_key: str) -> PaymentMethodResult:
        """Turn a one-time provider token into a method saved on the customer."""
        ...

    def detach_payment_method(self, *, payment_method_id: str, idempotency_key: str) -> PaymentMethodResult: ...

    def charge(
        self, *, amount: Money, idempotency_key: str, customer_id: str | None = None,
        payment_method_id: str | None = None, token: str | None = None, off_session: bool = False,
        capture: bool = True, description: str | None = None, metadata: Mapping[str, str] | None = None,
    ) -> ChargeResult:
        """Charge a saved method (``payment_method_id``) or a one-time ``token``.

        On-session may answer ``requires_action``; off-session (renewals) never does: a method
        that needs the customer declines with ``authentication_required`` instead.
        """
        ...

    def confirm(self, *, charge_id: str, idempotency_key: str) -> ChargeResult:
        """Go on with a charge that required action, once the customer has acted."""
        ...

    def capture(self, *, charge_id: str, idempotency_key: str, amount: Money | None = None) -> ChargeResult:
        """Capture an authorised charge, in full or (``amount``) in part; the rest is released."""
        ...

    def cancel(self, *, charge_id: str, idempotency_key: str) -> ChargeResult:
        """Void a charge that is authorised or waiting for action."""
        ...

    def refund(
        self, *, charge_id: str, idempotency_key: str, amount: Money | None = None,
        reason: str | None = None, metadata: Mapping[str, str] | None = None,
    ) -> RefundResult:
        """Refund what is left (``amount=None``) or part of it; never more than captured minus refunded."""
        ...

    def get_charge(self, charge_id: str) -> ChargeResult: ...

    def find_charge(self, *, idempotency_key: str) -> ChargeResult | None:
        """The charge a ``charge`` call with this key made, as it is now; None when the provider
        made none (the call never reached it, or it refused before charging). How Billfold asks
        about a charge whose answer it never heard (a timeout, a crash) without charging again.
        An adapter whose provider cannot look keys up finds the charge by its metadata
        (``payment_id``), e.g. Stripe's PaymentIntent search."""
        ...

    def get_refund(self, refund_id: str) -> RefundResult: ...

    def list_charges(self, created_from: datetime | None = None, created_to: datetime | None = None) -> list[ChargeResult]:
        """Charges created in [created_from, created_to), oldest first: what ``billfold reconcile``
        compares with our payments. An adapter pages through the provider's list itself."""
        ...

    def list_refunds(self, created_from: datetime | None = None, created_to: datetime | None = None) -> list[RefundResult]:
        """Refunds created in [created_from, created_to), oldest first."""
        ...

    def verify_webhook(self, body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        """Check the signature over the raw bytes and parse, or raise WebhookSignatureInvalid."""
        ...


@runtime_checkable
class CreatesBeforeCharging(Protocol):
    """Adapters with ``capabilities.creates_before_charging``: a charge in two steps.

    ``create_charge`` takes ``charge``'s arguments and makes the provider's object without moving
    money (Stripe: a PaymentIntent created unconfirmed; PayPal: an order). It answers
    ``ChargeStatus.CREATED``, or ``REQUIRES_ACTION`` when the customer must approve it first (PayPal's
    approve link, as ``next_action = {"type": "redirect_to_url", "url": ...}``). Billfold stores the
    object's id in its own transaction, then calls ``confirm(charge_id=..., idempotency_key=...)``,
    which moves the money (Stripe: confirm; PayPal: capture, or authorize when ``capture=False``).
    Asked again about a payment (a timeout, a crash), Billfold calls ``get_charge`` on the stored id
    and confirms an object still ``CREATED``; ``confirm`` on an object whose money moved already
    answers the object as it is, never a second charge. ``charge`` stays: create, then confirm.
    """

    def create_charge(
        self, *, amount: Money, idempotency_key: str, customer_id: str | None = None,
        payment_method_id: str | None = None, token: str | None = None, off_session: bool = False,
        capture: bool = True, description: str | None = None, metadata: Mapping[str, str] | None = None,
    ) -> ChargeResult: ...


@runtime_checkable
class ReadsDisputes(Protocol):
    """Adapters with ``capabilities.disputes``."""

    def get_dispute(self, dispute_id: str) -> DisputeResult: ...


@runtime_checkable
class ReadsPaymentMethods(Protocol):
    """Adapters that can say what a saved method is now (a webhook said it was updated or detached)."""

    def get_payment_method(self, payment_method_id: str) -> PaymentMethodResult: ...
