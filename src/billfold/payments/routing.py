"""Which provider a payment goes through, and whether it can: the route from how the customer pays
(a saved method or a one-time token) to the provider, its adapter and the currency check, for a
checkout and for subscribing; and every capability check the engine makes, in one place, before
any row is written.

Routing rules (``payment_routing_rules``, docs/payments.md#routing) choose the provider when the
caller named none and no saved method fixes it: the active rules matching the payment (its
currency, the customer's billing country, its amount, the product type) with the lowest
``position`` win, one of them picked by ``weight`` from a hash of the payment's key (the order's
or the invoice's id, so a retry picks the same), and its ``provider_ids`` are the candidates in
order. Without a matching rule the candidates are the default provider, then the other active
providers by id. Candidates that are inactive, or lack the currency or a capability the payment
needs, are skipped.

Failover (``fail_over``): a payment whose charge certainly never reached its provider
(``ProviderUnavailable.sent`` False) is failed with the reason ``provider_unavailable`` and a new
payment of the same order or invoice is started with the next candidate at which the customer has
a usable saved method. Nothing else fails over: when the outcome is unknown the payment stays
pending and is settled by asking the same provider."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.accounts.access import owner_of
from billfold.accounts.addresses import Owner
from billfold.accounts.security import Security
from billfold.kit import clock
from billfold.kit.errors import BillfoldError, InvalidInput
from billfold.models import (
    Address,
    Order,
    Payment,
    PaymentMethod,
    PaymentProvider,
    Product,
    ProviderCustomer,
    RoutingRule,
    Subscription,
)
from billfold.orders.lines import lines_of
from billfold.payments import methods, provider_config
from billfold.payments.details import PaymentDetails
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
    one), the provider, and the provider's adapter; ``candidates``: the providers routing would
    try, in order (the chosen one first)."""

    method: PaymentMethod | None
    provider: PaymentProvider
    adapter: ProviderAdapter
    candidates: tuple[str, ...] = ()


@dataclass(frozen=True)
class Facts:
    """What routing rules match a payment on. ``key`` is what a weighted pick hashes (the order's
    or the invoice's id), so every attempt of one payment picks the same rule."""

    currency: str
    amount_cents: int
    country: str | None = None
    product_types: frozenset[str] = field(default_factory=frozenset)
    key: str = ""


# Rules


_ACTIVE_RULES = sa.select(RoutingRule).where(RoutingRule.is_active.is_(True)).order_by(RoutingRule.position, RoutingRule.id)


def active_rules(session: Session) -> list[RoutingRule]:
    return list(session.scalars(_ACTIVE_RULES))


def matches(rule: RoutingRule, facts: Facts) -> bool:
    """Whether every condition the rule sets holds for the payment (amount bounds inclusive, in
    the rule's currency: a rule with bounds names its currency)."""
    if rule.currency and rule.currency.upper() != facts.currency.upper():
        return False
    if rule.country and (facts.country or "").upper() != rule.country.upper():
        return False
    if rule.min_amount_cents is not None and facts.amount_cents < rule.min_amount_cents:
        return False
    if rule.max_amount_cents is not None and facts.amount_cents > rule.max_amount_cents:
        return False
    if rule.product_type and rule.product_type not in facts.product_types:
        return False
    return True


def weighted(rules: Sequence[RoutingRule], key: str) -> RoutingRule:
    """One of ``rules`` (of one position), chosen in proportion to their weights by a hash of
    ``key``: the same key always picks the same rule. All weights 0: the first."""
    total = sum(max(rule.weight, 0) for rule in rules)
    if total <= 0:
        return rules[0]
    point = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % total
    for rule in rules:
        if point < rule.weight:
            return rule
        point -= max(rule.weight, 0)
    return rules[-1]  # pragma: no cover  (the weights add up to total)


def pick_rule(rules: Sequence[RoutingRule], facts: Facts) -> RoutingRule | None:
    """The rule for the payment: among the matching rules of the lowest position, the weighted pick."""
    matching = [rule for rule in rules if matches(rule, facts)]
    if not matching:
        return None
    first = [rule for rule in matching if rule.position == matching[0].position]
    return weighted(first, facts.key)


def provider_order(session: Session, security: Security | None, facts: Facts) -> list[str]:
    """The providers to try for the payment, in order, before any is checked: the rule's list, or
    the default provider then the other active ones by id."""
    rule = pick_rule(active_rules(session), facts)
    if rule is not None:
        ordered = [p for p in rule.provider_ids if isinstance(p, str)]
    else:
        ordered = []
        try:
            ordered.append(provider_config.default_provider(session, security).id)
        except BillfoldError:  # no single default: the active providers by id
            pass
        ordered += session.scalars(
            sa.select(PaymentProvider.id).where(PaymentProvider.is_active.is_(True)).order_by(PaymentProvider.id)
        ).all()
    return list(dict.fromkeys(ordered))


def usable_providers(
    session: Session, security: Security, facts: Facts, *, token: str | None = None,
    saved_methods: bool = False, off_session: bool = False, skip: Sequence[str] = (),
) -> list[tuple[PaymentProvider, ProviderAdapter]]:
    """The candidates (``provider_order``) that can take the payment, in order: active, taking its
    currency (and ``token``'s shape, saved methods, off-session charges when asked), not in ``skip``."""
    usable = []
    for provider_id in provider_order(session, security, facts):
        if provider_id in skip:
            continue
        provider = session.get(PaymentProvider, provider_id)
        if provider is None or not provider.is_active:
            continue
        try:
            adapter = provider_config.adapter_for_provider(session, security, provider_id)
            capabilities = adapter.capabilities
            require_charge(capabilities, provider_id, facts.currency, token=token)
            if saved_methods:
                capabilities.require("saved_methods", provider_id)
            if off_session:
                capabilities.require("off_session_charges", provider_id)
        except BillfoldError:  # not this one (misconfigured, or lacking what the payment needs)
            continue
        usable.append((provider, adapter))
    return usable


def route(
    session: Session,
    security: Security,
    owner: Owner,
    currency: str,
    pay: PayWith,
    *,
    without_method: str | None,
    provider_field: str | None = "provider_id",
    facts: Facts | None = None,
) -> Route:
    """The route of a payment of ``currency`` by ``owner``: the method named (404 unless the
    owner's) or the owner's default, unless a token is given; its provider, or the one named, or
    the first usable candidate of the routing rules for ``facts`` (when given), or the default
    provider (also when no rule matches); and what that provider can do (``require_charge``).

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
    if provider_id is None and facts is not None and pick_rule(active_rules(session), facts) is not None:
        routed = usable_providers(session, security, facts, token=pay.token)
        if routed:  # else as without a rule: the default provider, or why it cannot take this
            provider, adapter = routed[0]
            return Route(method, provider, adapter, tuple(p.id for p, _ in routed))
    provider = (
        provider_config.active_provider(session, provider_id, field=provider_field)
        if provider_id
        else provider_config.default_provider(session, security)
    )
    adapter = provider_config.adapter_for_provider(session, security, provider.id)
    require_charge(adapter.capabilities, provider.id, currency, token=pay.token)
    return Route(method, provider, adapter, (provider.id,))


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


# Failover


FAILED_OVER = "provider_unavailable"
"""The failure of a payment whose provider could not be reached, made again with the next one."""


def order_facts(session: Session, order: Order) -> Facts:
    """What the rules match on for an order: its total, its billing address's country, the types
    of the products it holds; hashed by its id."""
    country = None
    if order.billing_address_id:
        address = session.get(Address, order.billing_address_id)
        country = address.country if address is not None else None
    product_types = [product.product_type for _, product in lines_of(session, order.id)]
    return Facts(order.currency, order.total_cents, country, frozenset(product_types), order.id)


def facts_of(session: Session, payment: Payment) -> Facts:
    """What the rules match on, for a payment of an order or of a subscription's invoice."""
    details = PaymentDetails.of(payment)
    country: str | None = None
    product_types: set[str] = set()
    if payment.order_id is not None:
        order = session.get(Order, payment.order_id)
        if order is not None:
            return order_facts(session, order)
        key = payment.order_id
    else:
        subscription = session.get(Subscription, payment.subscription_id)
        if subscription is not None:
            country = (subscription.metadata_ or {}).get("billing_country")
            product = session.get(Product, subscription.product_id)
            if product is not None:
                product_types.add(product.product_type)
        key = details.invoice_id or payment.subscription_id or payment.id
    return Facts(payment.currency, payment.amount_cents, country, frozenset(product_types), key)


def followed_by(payment: Payment) -> str | None:
    """The payment that took over from a payment failed over (``provider_unavailable``), if any."""
    details = PaymentDetails.of(payment)
    following = details.others.get("next_payment_id")
    return following if details.failure == FAILED_OVER and isinstance(following, str) else None


def tried_providers(payment: Payment) -> list[str]:
    """The providers this payment's chain of attempts went to, this one's last."""
    earlier = PaymentDetails.of(payment).others.get("tried_providers")
    tried = [p for p in earlier if isinstance(p, str)] if isinstance(earlier, list) else []
    return [*tried, payment.provider_id]


def _usable(method: PaymentMethod, now: datetime) -> bool:
    """Whether a saved card can be charged: not expired (a method without an expiry can)."""
    year, month = method.expiry_year or "", method.expiry_month or ""
    return not (year.isdigit() and month.isdigit()) or (int(year), int(month)) >= (now.year, now.month)


class Failover:
    """Where payments whose provider was unreachable go next, for a batch in one transaction: the
    rules, the providers, and the customers' saved methods and provider customers read once.

    ``next_attempt``: the first candidate not tried yet at which the customer has a usable saved
    method (the default one first, then the newest) and a customer record already (none is made
    here: that would ask a provider with a transaction open); None when there is none. A payment
    with a one-time token fails over to nothing: the token is its first provider's."""

    def __init__(self, session: Session, security: Security, payments: Sequence[Payment]) -> None:
        self.session, self.security = session, security
        self.rules = active_rules(session)
        self._default: list[str] | None = None
        self._capable: dict[tuple[str, str, bool], bool] = {}
        subscription_ids = {p.subscription_id for p in payments if p.subscription_id}
        self._held: list[object] = []  # referenced, so facts_of finds them in the (weak) identity map
        if subscription_ids:
            held = session.scalars(sa.select(Subscription).where(Subscription.id.in_(subscription_ids))).all()
            self._held += [*held, *session.scalars(sa.select(Product).where(Product.id.in_({s.product_id for s in held}))).all()]
        owners = {owner_of(p) for p in payments}
        self.methods: dict[tuple[Owner, str], list[PaymentMethod]] = {}
        self.customers: dict[tuple[Owner, str], str] = {}
        if owners:
            now = clock.now()
            rows = session.scalars(
                sa.select(PaymentMethod).where(sa.or_(*(owner.owns(PaymentMethod) for owner in owners)))
                .order_by(PaymentMethod.is_default.desc(), PaymentMethod.created_at.desc(), PaymentMethod.id.desc())
            )
            for method in rows:
                if _usable(method, now):
                    self.methods.setdefault((owner_of(method), method.provider_id), []).append(method)
            for customer in session.scalars(
                sa.select(ProviderCustomer).where(sa.or_(*(owner.owns(ProviderCustomer) for owner in owners)))
                .order_by(ProviderCustomer.id)
            ):
                self.customers.setdefault((owner_of(customer), customer.provider_id), customer.provider_customer_id)

    def _order(self, facts: Facts) -> list[str]:
        rule = pick_rule(self.rules, facts)
        if rule is not None:
            return list(dict.fromkeys(p for p in rule.provider_ids if isinstance(p, str)))
        if self._default is None:
            self._default = provider_order(self.session, self.security, facts)  # no rule: the same for all
        return self._default

    def _can(self, provider_id: str, currency: str, off_session: bool) -> bool:
        key = (provider_id, currency, off_session)
        if key not in self._capable:
            provider = self.session.get(PaymentProvider, provider_id)
            able = provider is not None and provider.is_active and provider.supports_saved_methods
            if able:
                try:
                    capabilities = provider_config.adapter_for_provider(self.session, self.security, provider_id).capabilities
                    require_charge(capabilities, provider_id, currency)
                    capabilities.require("saved_methods", provider_id)
                    if off_session:
                        capabilities.require("off_session_charges", provider_id)
                except BillfoldError:
                    able = False
            self._capable[key] = able
        return self._capable[key]

    def next_attempt(self, payment: Payment, *, off_session: bool) -> tuple[str, PaymentMethod, str] | None:
        """(provider id, saved method, provider customer id) of the payment's next attempt, or None."""
        if PaymentDetails.of(payment).token:
            return None
        owner, tried = owner_of(payment), tried_providers(payment)
        for provider_id in self._order(facts_of(self.session, payment)):
            if provider_id in tried or not self._can(provider_id, payment.currency, off_session):
                continue
            found = self.methods.get((owner, provider_id))
            customer_id = self.customers.get((owner, provider_id))
            if found and customer_id:
                return provider_id, found[0], customer_id
        return None
