"""Stripe's objects (plain dicts, as the API sends them) to Billfold's normalised results.

Pure functions, no network: tested on Stripe's own example objects (tests/fixtures/stripe) and on
what localstripe answers. ``ChargeResult.id`` is the PaymentIntent's id; the Charge underneath
(``latest_charge``, expanded) gives what was captured and refunded.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from billfold.kit.money import Money
from billfold.providers.base import (
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
from billfold.providers.errors import DeclineCode

# What Billfold writes into a PaymentIntent's metadata besides the caller's own keys.
KEY_FIELD = "billfold_key"  # the idempotency key of the charge call: find_charge looks it up
OFF_SESSION_FIELD = "billfold_off_session"  # "true": nobody is there to authenticate
INTERNAL_FIELDS = frozenset({KEY_FIELD, OFF_SESSION_FIELD})

# Stripe's decline codes (and error codes) to ours; anything else is a generic decline.
DECLINE_CODES: dict[str, DeclineCode] = {
    "card_declined": DeclineCode.GENERIC_DECLINE,
    "generic_decline": DeclineCode.GENERIC_DECLINE,
    "do_not_honor": DeclineCode.GENERIC_DECLINE,
    "insufficient_funds": DeclineCode.INSUFFICIENT_FUNDS,
    "card_velocity_exceeded": DeclineCode.INSUFFICIENT_FUNDS,
    "withdrawal_count_limit_exceeded": DeclineCode.INSUFFICIENT_FUNDS,
    "expired_card": DeclineCode.EXPIRED_CARD,
    "incorrect_cvc": DeclineCode.INCORRECT_CVC,
    "invalid_cvc": DeclineCode.INCORRECT_CVC,
    "lost_card": DeclineCode.LOST_CARD,
    "stolen_card": DeclineCode.STOLEN_CARD,
    "pickup_card": DeclineCode.STOLEN_CARD,
    "fraudulent": DeclineCode.FRAUDULENT,
    "merchant_blacklist": DeclineCode.FRAUDULENT,
    "card_not_supported": DeclineCode.CARD_NOT_SUPPORTED,
    "currency_not_supported": DeclineCode.CARD_NOT_SUPPORTED,
    "authentication_required": DeclineCode.AUTHENTICATION_REQUIRED,
    "authentication_not_handled": DeclineCode.AUTHENTICATION_REQUIRED,
    "payment_intent_authentication_failure": DeclineCode.AUTHENTICATION_FAILED,
    "processing_error": DeclineCode.PROCESSING_ERROR,
}

PAYMENT_INTENT_EVENTS = {
    "payment_intent.succeeded": "charge.succeeded",
    "payment_intent.payment_failed": "charge.failed",
    "payment_intent.requires_action": "charge.requires_action",
    "payment_intent.canceled": "charge.canceled",
    "payment_intent.processing": "charge.processing",
    "payment_intent.amount_capturable_updated": "charge.authorized",
}
CHARGE_EVENTS = {
    "charge.succeeded": "charge.succeeded",
    "charge.captured": "charge.succeeded",
    "charge.failed": "charge.failed",
    "charge.pending": "charge.processing",
    "charge.expired": "charge.canceled",
    "charge.refunded": "charge.refunded",
    "charge.updated": "charge.updated",
}
DISPUTE_EVENTS = {
    "charge.dispute.created": "dispute.opened",
    "charge.dispute.updated": "dispute.updated",
    "charge.dispute.funds_withdrawn": "dispute.updated",
    "charge.dispute.funds_reinstated": "dispute.updated",
    "charge.dispute.closed": "dispute.closed",
}
PAYMENT_METHOD_EVENTS = {
    "payment_method.attached": "payment_method.attached",
    "payment_method.updated": "payment_method.updated",
    "payment_method.automatically_updated": "payment_method.updated",
    "payment_method.detached": "payment_method.detached",
}
SUBSCRIPTION_EVENTS = {
    "customer.subscription.created": "subscription.created",
    "customer.subscription.updated": "subscription.updated",
    "customer.subscription.deleted": "subscription.canceled",
}
CUSTOMER_EVENTS = {"customer.created": "customer.created", "customer.updated": "customer.updated"}

WEBHOOK_EVENTS = frozenset(
    {*PAYMENT_INTENT_EVENTS.values(), *CHARGE_EVENTS.values(), *DISPUTE_EVENTS.values(),
     *PAYMENT_METHOD_EVENTS.values(), *SUBSCRIPTION_EVENTS.values(), *CUSTOMER_EVENTS.values(),
     "refund.succeeded", "refund.failed", "refund.updated"}
)
"""The normalised event types this adapter answers."""


def timestamp(value: int | float | None) -> datetime:
    return datetime.fromtimestamp(int(value or 0), timezone.utc)


def money(amount: int | None, currency: str) -> Money:
    return Money(int(amount or 0), currency.upper())


def id_of(value: Any) -> str | None:
    """An id whether Stripe sent the id or the expanded object."""
    if isinstance(value, Mapping):
        return value.get("id")
    return value if isinstance(value, str) else None


def decline_code(*codes: str | None) -> DeclineCode:
    for code in codes:
        if code and code in DECLINE_CODES:
            return DECLINE_CODES[code]
    return DeclineCode.GENERIC_DECLINE


def charge_from_payment_intent(pi: Mapping[str, Any]) -> ChargeResult:
    """A PaymentIntent (with ``latest_charge`` expanded, when there is one) as a ChargeResult."""
    currency = str(pi["currency"])
    metadata = dict(pi.get("metadata") or {})
    off_session = metadata.get(OFF_SESSION_FIELD) == "true"
    status, failure = _status(pi, off_session)
    charge = pi.get("latest_charge")
    if isinstance(charge, Mapping):
        captured = charge.get("amount_captured")
        refunded = charge.get("amount_refunded") or 0
        if captured is None:  # localstripe: no amount_captured, and what a partial capture released is a refund
            released = sum(int(r.get("amount") or 0) for r in (charge.get("refunds") or {}).get("data") or ()
                           if not r.get("payment_intent"))
            paid = charge.get("captured") and charge.get("status") == "succeeded"
            captured = int(charge.get("amount") or 0) - released if paid else 0
            refunded -= released
    else:  # not expanded: what PaymentIntent itself says
        captured, refunded = pi.get("amount_received") or 0, 0
    next_action = pi.get("next_action") if status is ChargeStatus.REQUIRES_ACTION else None
    return ChargeResult(
        id=str(pi["id"]), status=status, provider_status=str(pi.get("status")),
        amount=money(pi.get("amount"), currency), amount_captured=money(captured, currency),
        amount_refunded=money(refunded, currency), created=timestamp(pi.get("created")),
        customer_id=id_of(pi.get("customer")), payment_method_id=id_of(pi.get("payment_method")),
        capture=pi.get("capture_method") != "manual", off_session=off_session,
        description=pi.get("description"),
        metadata={k: str(v) for k, v in metadata.items() if k not in INTERNAL_FIELDS},
        next_action=_plain(next_action) if next_action else None,
        failure_code=str(failure[0]) if failure else None, failure_message=failure[1] if failure else None,
    )


def _status(pi: Mapping[str, Any], off_session: bool) -> tuple[ChargeStatus, tuple[DeclineCode, str | None] | None]:
    raw = pi.get("status")
    error = pi.get("last_payment_error") or None
    if raw == "succeeded":
        return ChargeStatus.SUCCEEDED, None
    if raw == "requires_capture":
        return ChargeStatus.AUTHORIZED, None
    if raw == "processing":
        return ChargeStatus.PROCESSING, None
    if raw == "canceled":
        return ChargeStatus.CANCELED, None
    if raw == "requires_action":
        if off_session:  # nobody is there to authenticate: Stripe itself declines these off-session
            return ChargeStatus.FAILED, (DeclineCode.AUTHENTICATION_REQUIRED,
                                         "The card needs the customer to authenticate; charge it on-session.")
        return ChargeStatus.REQUIRES_ACTION, None
    if raw == "requires_payment_method" and error:
        code = decline_code(error.get("decline_code"), error.get("code"))
        return ChargeStatus.FAILED, (code, error.get("message"))
    # requires_confirmation, or requires_payment_method before any attempt: nothing moved yet
    return ChargeStatus.CREATED, None


def refund_from(refund: Mapping[str, Any]) -> RefundResult:
    """``charge_id`` is the PaymentIntent's id (the charge's id for a refund of a bare charge)."""
    raw = str(refund.get("status"))
    status = {
        "succeeded": RefundStatus.SUCCEEDED, "failed": RefundStatus.FAILED, "canceled": RefundStatus.CANCELED,
    }.get(raw, RefundStatus.PENDING)  # pending, requires_action
    metadata = dict(refund.get("metadata") or {})
    return RefundResult(
        id=str(refund["id"]), charge_id=str(id_of(refund.get("payment_intent")) or id_of(refund.get("charge"))),
        amount=money(refund.get("amount"), str(refund["currency"])), status=status, provider_status=raw,
        created=timestamp(refund.get("created")), reason=refund.get("reason") or metadata.get("billfold_reason"),
        metadata={k: str(v) for k, v in metadata.items() if k not in INTERNAL_FIELDS and k != "billfold_reason"},
    )


def dispute_from(dispute: Mapping[str, Any]) -> DisputeResult:
    """won (and an inquiry closed without a chargeback, or one prevented) → WON; lost → LOST;
    every other status (needs_response, under_review, warning_*) → OPEN."""
    raw = str(dispute.get("status"))
    status = {"won": DisputeStatus.WON, "warning_closed": DisputeStatus.WON, "prevented": DisputeStatus.WON,
              "lost": DisputeStatus.LOST}.get(raw, DisputeStatus.OPEN)
    return DisputeResult(
        id=str(dispute["id"]), charge_id=str(id_of(dispute.get("payment_intent")) or id_of(dispute.get("charge"))),
        amount=money(dispute.get("amount"), str(dispute["currency"])), status=status, provider_status=raw,
        created=timestamp(dispute.get("created")), reason=dispute.get("reason"),
    )


def payment_method_from(method: Mapping[str, Any], *, detached: bool = False) -> PaymentMethodResult:
    kind = method.get("type")
    details = method.get(kind) if isinstance(kind, str) and isinstance(method.get(kind), Mapping) else {}
    spec_type = {"card": "credit_card", "sepa_debit": "bank_account", "us_bank_account": "bank_account",
                 "paypal": "paypal"}.get(str(kind), str(kind))
    return PaymentMethodResult(
        id=str(method["id"]), customer_id=id_of(method.get("customer")), type=spec_type,
        brand=details.get("brand"), last4=details.get("last4"), exp_month=details.get("exp_month"),
        exp_year=details.get("exp_year"), created=timestamp(method.get("created")), detached=detached,
    )


def customer_from(customer: Mapping[str, Any]) -> CustomerResult:
    return CustomerResult(
        id=str(customer["id"]), email=customer.get("email"), name=customer.get("name"),
        created=timestamp(customer.get("created")),
        metadata={k: str(v) for k, v in (customer.get("metadata") or {}).items()},
    )


def setup_intent_from(setup_intent: Mapping[str, Any]) -> dict[str, Any]:
    """What a caller needs of a SetupIntent: the browser confirms it with ``client_secret``, and
    its ``payment_method`` is then saved with ``attach_payment_method(token=<seti_ id>)``."""
    return {
        "id": setup_intent["id"], "status": setup_intent.get("status"),
        "client_secret": setup_intent.get("client_secret"), "customer_id": id_of(setup_intent.get("customer")),
        "payment_method_id": id_of(setup_intent.get("payment_method")),
        "next_action": _plain(setup_intent.get("next_action")) if setup_intent.get("next_action") else None,
    }


def event_from(event: Mapping[str, Any]) -> WebhookEvent:
    """A Stripe event normalised: its type one of base.EVENT_TYPES where one fits, else Stripe's own."""
    stripe_type = str(event["type"])
    obj = dict(event["data"]["object"])
    object_id = str(obj.get("id"))
    if stripe_type in PAYMENT_INTENT_EVENTS:
        kind, object_type = PAYMENT_INTENT_EVENTS[stripe_type], "charge"
    elif stripe_type in DISPUTE_EVENTS:
        kind, object_type = DISPUTE_EVENTS[stripe_type], "dispute"
    elif stripe_type.startswith("refund.") or stripe_type == "charge.refund.updated":
        kind, object_type = _refund_event(obj), "refund"
    elif stripe_type.startswith("charge."):
        kind, object_type = CHARGE_EVENTS.get(stripe_type, stripe_type), "charge"
        object_id = str(id_of(obj.get("payment_intent")) or object_id)  # ChargeResult.id is the PaymentIntent
    elif stripe_type in PAYMENT_METHOD_EVENTS:
        kind, object_type = PAYMENT_METHOD_EVENTS[stripe_type], "payment_method"
    elif stripe_type in SUBSCRIPTION_EVENTS:
        kind, object_type = SUBSCRIPTION_EVENTS[stripe_type], "subscription"
    elif stripe_type.startswith("customer.") and obj.get("object") == "customer":
        kind, object_type = CUSTOMER_EVENTS.get(stripe_type, stripe_type), "customer"
    else:  # kept as Stripe named it; stored, then ignored
        kind, object_type = stripe_type, str(obj.get("object") or "unknown")
    return WebhookEvent(id=str(event["id"]), type=kind, object_type=object_type, object_id=object_id,
                        created=timestamp(event.get("created")), data=obj)


def _refund_event(refund: Mapping[str, Any]) -> str:
    status = refund.get("status")
    if status == "succeeded":
        return "refund.succeeded"
    if status in ("failed", "canceled"):
        return "refund.failed"
    return "refund.updated"


def _plain(value: Any) -> Any:
    """A plain, JSON-ready copy (dicts and lists only)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
