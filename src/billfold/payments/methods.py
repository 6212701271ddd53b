"""Saved payment methods of users and organizations, made from provider tokens only.

Billfold stores the provider's id for the method, its type, and what is safe to show (brand,
last four, expiry); never a card number or CVC (docs/payments.md). Defaults: exactly one method is
the owner's default whenever the owner has methods. The first becomes the default by itself;
``make_default`` takes the default from the one before; deleting the default passes it to the
newest remaining method. Changes to one owner's methods run one at a time (the owner's row is
locked). Services never commit; every change writes an audit row in the same transaction.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.accounts.access import Owner, lock_owner
from billfold.accounts.addresses import get_address
from billfold.accounts.security import Security
from billfold.audit import audit
from billfold.kit.db.dialects import for_update
from billfold.kit.errors import Conflict, InvalidInput, NotFound
from billfold.kit.ids import has_prefix, new_id
from billfold.models import PaymentMethod, PaymentProvider, Subscription
from billfold.payments import provider_config
from billfold.payments.card_guard import CardDataRefused, token_is_card_data
from billfold.payments.customers import ensure_provider_customer
from billfold.providers.base import PaymentMethodResult
from billfold.providers.errors import NotSupported, ProviderObjectNotFound

LIVE_SUBSCRIPTION_STATUSES = ("active", "trialing", "past_due")


class DefaultRequired(Conflict):
    code = "default_required"
    title = "The owner's default payment method must stay the default"


class PaymentMethodInUse(Conflict):
    code = "payment_method_in_use"
    title = "A live subscription pays with this payment method"


def refuse_card_number_token(token: str) -> None:
    if token_is_card_data(token):
        raise CardDataRefused(
            "this looks like a card number; Billfold never takes card numbers. Collect the card with the "
            "provider's own fields (Stripe Elements, PayPal Card Fields, Accept.js) and send the token they give",
            errors=[{"field": "token", "message": "a card number is refused; send the provider's token"}],
        )


# Reading


def methods_of(owner: Owner) -> sa.Select[tuple[PaymentMethod]]:
    return sa.select(PaymentMethod).where(owner.owns(PaymentMethod))


def get_method(session: Session, owner: Owner, payment_method_id: str, *, lock: bool = False) -> PaymentMethod:
    """One of the owner's payment methods; NotFound for any other id, whoever it belongs to."""
    method = None
    if has_prefix(payment_method_id, "pm"):
        statement = methods_of(owner).where(PaymentMethod.id == payment_method_id)
        if lock:
            statement = for_update(statement, session).execution_options(populate_existing=True)
        method = session.scalars(statement).one_or_none()
    if method is None:
        raise NotFound(f"no payment method {payment_method_id}")
    return method


def method_for_charge(session: Session, owner: Owner, payment_method_id: str) -> PaymentMethod:
    """The owner's method to charge; NotFound (404) if it is not the owner's."""
    return get_method(session, owner, payment_method_id)


def default_method(session: Session, owner: Owner) -> PaymentMethod | None:
    """The owner's default payment method, or None when the owner has none."""
    return session.scalars(
        methods_of(owner).where(PaymentMethod.is_default.is_(True)).order_by(PaymentMethod.id).limit(1)
    ).first()


def _locked_methods(session: Session, owner: Owner) -> list[PaymentMethod]:
    statement = methods_of(owner).order_by(PaymentMethod.id)
    return list(session.scalars(for_update(statement, session).execution_options(populate_existing=True)))


def _settle_default(session: Session, owner: Owner, chosen: PaymentMethod | None) -> None:
    """Exactly one default when the owner has methods: ``chosen`` if given, else the current
    default (the newest if several), else the newest method."""
    rows = _locked_methods(session, owner)
    if not rows:
        return
    defaults = [m for m in rows if m.is_default]
    keep = chosen if chosen is not None else (defaults[-1] if defaults else rows[-1])
    for method in rows:
        method.is_default = method.id == keep.id
    session.flush()


def _billing_address(session: Session, owner: Owner, address_id: str) -> str:
    try:
        address = get_address(session, owner, address_id)
    except NotFound:
        address = None
    if address is None or address.address_type not in ("billing", "both"):
        detail = f"{address_id} is not a billing address of this {'organization' if owner.organization_id else 'user'}"
        raise InvalidInput(detail, errors=[{"field": "billing_address_id", "message": detail}])
    return address.id


def _expiry(result: PaymentMethodResult) -> tuple[str | None, str | None]:
    month = f"{result.exp_month:02d}" if result.exp_month and 1 <= result.exp_month <= 12 else None
    year = f"{result.exp_year:04d}" if result.exp_year and 1000 <= result.exp_year <= 9999 else None
    return month, year


def _last_four(result: PaymentMethodResult) -> str | None:
    last4 = result.last4 or None
    return last4 if last4 is not None and re.fullmatch(r"[0-9]{4}", last4) else None


# Changing


def save_method(
    session: Session,
    security: Security,
    owner: Owner,
    *,
    token: str,
    provider_id: str | None = None,
    billing_address_id: str | None = None,
    make_default: bool = False,
) -> PaymentMethod:
    """Save a method from a provider token: the owner's customer at the provider is made on first
    use, the token attached to it, and what is safe to show stored."""
    refuse_card_number_token(token)
    lock_owner(session, owner)
    provider = (
        provider_config.active_provider(session, provider_id, field="provider_id")
        if provider_id is not None
        else provider_config.default_provider(session, security)
    )
    if not provider.supports_saved_methods:
        raise NotSupported(
            f"{provider.id} does not keep saved payment methods", capability="saved_methods",
            errors=[{"field": "provider_id", "message": "this provider does not support saved methods"}],
        )
    address_id = _billing_address(session, owner, billing_address_id) if billing_address_id else None
    adapter = provider_config.adapter_for_provider(session, security, provider.id)
    adapter.capabilities.require_token(token, provider.id)
    customer = ensure_provider_customer(session, adapter, owner)
    method_id = new_id("pm")
    remote = adapter.attach_payment_method(
        customer_id=customer.provider_customer_id, token=token, idempotency_key=f"payment-method-{method_id}-attach"
    )
    month, year = _expiry(remote)
    method = PaymentMethod(
        id=method_id,
        user_id=owner.user_id,
        organization_id=owner.organization_id,
        provider_id=provider.id,
        provider_payment_method_id=remote.id,
        payment_type=(remote.type or "credit_card")[:50],
        card_brand=(remote.brand or None) and remote.brand[:50],  # type: ignore[index]
        last_four=_last_four(remote),
        expiry_month=month,
        expiry_year=year,
        is_default=False,
        billing_address_id=address_id,
    )
    session.add(method)
    session.flush()
    _settle_default(session, owner, method if make_default else None)
    audit(
        session, "payment_method", method.id, "created", provider_id=provider.id,
        payment_type=method.payment_type, is_default=method.is_default, **owner.data(),
    )
    return method


_UNSET: Any = object()


def update_method(
    session: Session,
    owner: Owner,
    payment_method_id: str,
    *,
    make_default: bool | None = None,
    billing_address_id: str | None = _UNSET,
) -> PaymentMethod:
    """``make_default=True`` makes it the default; ``False`` on the default is refused (make
    another the default instead). ``billing_address_id`` sets or (None) clears the address."""
    lock_owner(session, owner)
    method = get_method(session, owner, payment_method_id, lock=True)
    changed = []
    if make_default is False and method.is_default:
        raise DefaultRequired(
            f"{method.id} is the default payment method; to change the default, make another method the default",
            errors=[{"field": "make_default", "message": "make another method the default instead"}],
        )
    if billing_address_id is not _UNSET:
        address_id = _billing_address(session, owner, billing_address_id) if billing_address_id else None
        if address_id != method.billing_address_id:
            method.billing_address_id = address_id
            changed.append("billing_address_id")
    if make_default and not method.is_default:
        _settle_default(session, owner, method)
        changed.append("is_default")
    if changed:
        session.flush()
        audit(session, "payment_method", method.id, "updated", fields=changed, is_default=method.is_default,
              **owner.data())
    return method


def delete_method(session: Session, security: Security, owner: Owner, payment_method_id: str) -> None:
    """Detach the method at the provider, then delete it; a default passes to the newest other
    method. Refused (409) while a live subscription pays with it."""
    lock_owner(session, owner)
    method = get_method(session, owner, payment_method_id, lock=True)
    live = session.scalar(
        sa.select(sa.func.count()).select_from(Subscription).where(
            Subscription.payment_method_id == method.id, Subscription.status.in_(LIVE_SUBSCRIPTION_STATUSES)
        )
    ) or 0
    if live:
        raise PaymentMethodInUse(
            f"{method.id} pays for {live} live subscription(s); give them another payment method first"
        )
    if session.get(PaymentProvider, method.provider_id) is not None:
        adapter = provider_config.adapter_for_provider(session, security, method.provider_id, require_active=False)
        try:
            adapter.detach_payment_method(
                payment_method_id=method.provider_payment_method_id,
                idempotency_key=f"payment-method-{method.id}-detach",
            )
        except ProviderObjectNotFound:
            pass  # already gone at the provider: nothing left to detach
    was_default = method.is_default
    provider_id = method.provider_id
    session.delete(method)
    session.flush()
    if was_default:
        _settle_default(session, owner, None)
    audit(session, "payment_method", payment_method_id, "deleted", provider_id=provider_id,
          was_default=was_default, **owner.data())


# What the provider tells us


def provider_changed(session: Session, method: PaymentMethod, result: PaymentMethodResult) -> str:
    """Bring a saved method in line with the provider's ``result`` of it (a webhook said it was
    updated or detached there): new expiry, brand or last four are copied; a method detached at the
    provider is deleted here too, unless a live subscription pays with it (it is then kept, and the
    next renewal's decline asks the customer for another). What was done, as a short note."""
    owner = Owner(user_id=method.user_id if method.organization_id is None else None, organization_id=method.organization_id)
    if result.detached:
        live = session.scalar(
            sa.select(sa.func.count()).select_from(Subscription).where(
                Subscription.payment_method_id == method.id, Subscription.status.in_(LIVE_SUBSCRIPTION_STATUSES)
            )
        ) or 0
        if live:
            audit(session, "payment_method", method.id, "detached_at_provider", provider_id=method.provider_id,
                  live_subscriptions=live, **owner.data())
            return f"detached at the provider; kept, since {live} live subscription(s) pay with it"
        lock_owner(session, owner)
        was_default = method.is_default
        session.delete(method)
        session.flush()
        if was_default:
            _settle_default(session, owner, None)
        audit(session, "payment_method", method.id, "deleted", provider_id=method.provider_id, by="provider",
              was_default=was_default, **owner.data())
        return "detached at the provider; deleted"
    month, year = _expiry(result)
    changes = {"card_brand": result.brand, "last_four": _last_four(result), "expiry_month": month, "expiry_year": year}
    changed = {k: v for k, v in changes.items() if v is not None and getattr(method, k) != v}
    for key, value in changed.items():
        setattr(method, key, value)
    if changed:
        session.flush()
        audit(session, "payment_method", method.id, "updated", by="provider", fields=sorted(changed), **owner.data())
    return f"updated: {', '.join(sorted(changed))}" if changed else "unchanged"
