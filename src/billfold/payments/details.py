"""``payments.metadata``: what Billfold keeps about a payment beyond the spec's columns, read and
written by name through one typed view, ``PaymentDetails``.

The JSON keys are the ones payments have always been stored with, so rows written before this
view read the same. A key this version does not know (or a known key holding another type of
value) is kept as it is when the details are written back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from billfold.models import Payment

WAITING_FOR_CUSTOMER = "requires_action"
"""``provider_status`` of a ``pending`` payment in the state ``waiting`` (for the customer's action,
3-D Secure): see states.py."""


@dataclass(frozen=True)
class PaymentDetails:
    """One payment's ``metadata``. Read with ``PaymentDetails.of(payment)``; change with
    ``but(...)`` and store with ``write(payment)``."""

    provider_status: str | None = None
    """The provider's own word for the charge (``created`` until it is asked), kept beside ours."""
    next_action: dict[str, Any] | None = None
    """What the customer must do before a waiting payment can be confirmed."""
    decline_code: str | None = None
    failure: str | None = None
    """The code of a refusal that failed the payment without a decline (``payment_not_made``, ...)."""
    token: str | None = None
    """The one-time provider token a checkout pays with (never a card number: refused before)."""
    provider_object_id: str | None = None
    """The provider's object made for this payment before its money moved (``create_charge``: a
    PaymentIntent, an order), stored before confirming it; ``provider_payment_id`` is set once an
    answer about it is recorded, so a payment with this and no ``provider_payment_id`` is one whose
    outcome was never heard."""
    approval: str | None = None
    """``provider``: paid with no token or saved method; the customer approves the payment on the
    provider's own page (``capabilities.buyer_approval``, PayPal)."""
    provider_payment_method_id: str | None = None
    provider_customer_id: str | None = None
    invoice_id: str | None = None
    """The invoice a subscription payment pays."""
    purpose: str | None = None
    """Why a subscription payment was made: ``first``, ``trial_end``, ``renewal``, ``retry``, ``change``."""
    revert: dict[str, Any] | None = None
    """A plan change's payment: the plan to go back to if it is declined."""
    disputes: dict[str, Any] | None = None
    """The payment's disputes at the provider: dispute id -> ``open``, ``won`` or ``lost``."""
    others: Mapping[str, Any] = field(default_factory=dict)
    """Keys this view does not read, written back as they were."""

    @classmethod
    def of(cls, payment: Payment) -> PaymentDetails:
        return cls.from_json(payment.metadata_)

    @classmethod
    def from_json(cls, stored: Any) -> PaymentDetails:
        """The view of a stored ``metadata`` value; anything but a JSON object reads as empty."""
        if not isinstance(stored, dict):
            return cls()
        known: dict[str, Any] = {}
        others: dict[str, Any] = {}
        for key, value in stored.items():
            kind = _KINDS.get(key)
            if kind is not None and isinstance(value, kind):
                known[key] = value
            else:
                others[key] = value
        return cls(**known, others=others)

    def to_json(self) -> dict[str, Any]:
        """The ``metadata`` to store: the keys that hold a value, and the others as they were."""
        stored = dict(self.others)
        for name in _KINDS:
            value = getattr(self, name)
            if value is not None:
                stored[name] = value
        return stored

    def but(self, **changes: Any) -> PaymentDetails:
        """These details with ``changes`` (None removes a key)."""
        return replace(self, **changes)

    def write(self, payment: Payment) -> None:
        payment.metadata_ = self.to_json()

    @property
    def chargeable(self) -> bool:
        """Whether there is something to charge: a one-time token, a saved method, or the customer's
        approval on the provider's page."""
        return bool(self.token or self.provider_payment_method_id or self.approval)


_KINDS: dict[str, type] = {
    f.name: dict if f.name in ("next_action", "revert", "disputes") else str for f in fields(PaymentDetails) if f.name != "others"
}
