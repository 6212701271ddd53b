"""Which provider a payment goes through, and whether it can: the route from how the customer pays
(a saved method or a one-time token) to the provider, its adapter and the currency check, for a
checkout and for subscribing; and every capability check the engine makes, in one place, before
any row is written."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from billfold.accounts.addresses import Owner
from billfold.accounts.security import Security
from billfold.kit.errors import BillfoldError, InvalidInput
from billfold.models import Payment, PaymentMethod, PaymentProvider
from billfold.payments import methods, provider_config
from billfold.providers.base import Capabilities, ProviderAdapter


@dataclass(frozen=True)
class PayWith:
    """How the customer pays: a saved method, or a one-time provider token; and through which
    provider (the method's, or the default)."""

    payment_method_id: str | None = None
    token: str | None = None
    provider_id: str | None = None


@dataclass(frozen=True)
class Route:
    """Where a payment goes: the saved method it charges (None for a token, or a trial without
    one), the provider, and the provider's adapter."""

    method: PaymentMethod | None
    provider: PaymentProvider
    adapter: ProviderAdapter


def route(
    session: Session,
    security: Security,
    owner: Owner,
    currency: str,
    pay: PayWith,
    *,
    without_method: str | None,
    provider_field: str | None = "provider_id",
) -> Route:
    """The route of a payment of ``currency`` by ``owner``: the method named (404 unless the
    owner's) or the owner's default, unless a token is given; its provider, or the one named, or
    the default provider; and what that provider can do (``require_charge``).

    ``without_method``: what to ask for (422 naming ``payment_method_id``) when the customer has
    no saved method and gave no token; None when paying needs no method yet (a trial).
    ``provider_field``: the request's field that names a provider, named in a refusal of it."""
    if pay.payment_method_id and pay.token:
        raise InvalidInput(
            "pay with a saved payment method or a token, not both",
            errors=[{"field": "token", "message": "give payment_method_id or token"}],
        )
    method = None
    if pay.token is None and not pay.payment_method_id and pay.provider_id and approves(session, security, pay.provider_id):
        pass  # the customer approves the payment on the provider's page: no token or method needed
    elif pay.token is None:
        method = (
            methods.method_for_charge(session, owner, pay.payment_method_id)
            if pay.payment_method_id
            else methods.default_method(session, owner)
        )
        if method is None and without_method is not None:
            raise InvalidInput(
                f"the customer has no saved payment method: {without_method}",
                errors=[{"field": "payment_method_id", "message": "required"}],
            )
    if method and pay.provider_id and pay.provider_id != method.provider_id:
        raise InvalidInput(
            f"payment method {method.id} belongs to provider {method.provider_id}, not {pay.provider_id}",
            errors=[{"field": "provider_id", "message": "not the method's provider"}],
        )
    provider_id = method.provider_id if method else pay.provider_id
    provider = (
        provider_config.active_provider(session, provider_id, field=provider_field)
        if provider_id
        else provider_config.default_provider(session, security)
    )
    adapter = provider_config.adapter_for_provider(session, security, provider.id)
    require_charge(adapter.capabilities, provider.id, currency, token=pay.token)
    return Route(method, provider, adapter)


def approves(session: Session, security: Security, provider_id: str) -> bool:
    """Whether ``provider_id`` is an active provider paid by the customer's approval on its own page."""
    try:
        adapter = provider_config.adapter_for_provider(session, security, provider_id)
    except BillfoldError:
        return False  # refused with its own reason below, where the provider is looked up
    return adapter.capabilities.buyer_approval


def require_charge(capabilities: Capabilities, provider_id: str, currency: str, *, token: str | None = None) -> None:
    """NotSupported (422) unless the provider takes ``currency``; InvalidToken (422) unless
    ``token`` has the provider's token shape."""
    capabilities.require_currency(currency, provider_id)
    if token is not None:
        capabilities.require_token(token, provider_id)


def require_refund(capabilities: Capabilities, payment: Payment, amount_cents: int) -> None:
    """NotSupported (422) unless the provider can refund ``amount_cents`` of this payment."""
    capabilities.require("refunds", payment.provider_id)
    if amount_cents != payment.amount_cents:
        capabilities.require("partial_refunds", payment.provider_id)
    capabilities.require_currency(payment.currency, payment.provider_id)
