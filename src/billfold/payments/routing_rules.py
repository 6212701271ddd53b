"""Routing rules, as the admins change them (``/v1/routing-rules``): what a rule may say, checked
before it is stored with a clear error naming the field, and a dry run of the routing for a
payment (``preview``). How rules are applied is in routing.py; every change writes an audit row;
services never commit."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.accounts.security import Security
from billfold.audit import audit
from billfold.kit.errors import InvalidInput, NotFound
from billfold.kit.ids import has_prefix
from billfold.kit.money import CURRENCIES
from billfold.models import PaymentProvider, RoutingRule
from billfold.payments import routing

FIELDS = (
    "name", "position", "currency", "country", "min_amount_cents", "max_amount_cents", "product_type", "weight",
    "provider_ids", "is_active",
)


class InvalidRoutingRule(InvalidInput):
    code = "invalid_routing_rule"
    title = "Invalid routing rule"


def _refuse(field: str, detail: str) -> InvalidRoutingRule:
    return InvalidRoutingRule(detail, errors=[{"field": field, "message": detail}])


def get_rule(session: Session, rule_id: str, *, lock: bool = False) -> RoutingRule:
    rule = None
    if has_prefix(rule_id, "rr"):
        statement = sa.select(RoutingRule).where(RoutingRule.id == rule_id)
        if lock and session.get_bind().dialect.name != "sqlite":
            statement = statement.with_for_update()
        rule = session.scalars(statement).one_or_none()
    if rule is None:
        raise NotFound(f"no routing rule {rule_id}")
    return rule


def list_rules(session: Session) -> list[RoutingRule]:
    """Every rule, in the order routing reads them (position, then id)."""
    return list(session.scalars(sa.select(RoutingRule).order_by(RoutingRule.position, RoutingRule.id)))


def _check(session: Session, values: dict[str, Any]) -> None:
    """What a rule (as it would be stored) must satisfy beyond its fields' own shapes."""
    currency = values.get("currency")
    if currency is not None and currency not in CURRENCIES:
        raise _refuse("currency", f"{currency} is not a currency Billfold knows")
    bounded = values.get("min_amount_cents") is not None or values.get("max_amount_cents") is not None
    if bounded and currency is None:
        raise _refuse("currency", "an amount bound is in minor units of a currency: name the currency")
    low, high = values.get("min_amount_cents"), values.get("max_amount_cents")
    if low is not None and high is not None and low > high:
        raise _refuse("max_amount_cents", f"max_amount_cents ({high}) is below min_amount_cents ({low})")
    if values.get("weight", 1) < 0:
        raise _refuse("weight", "weight must not be negative")
    provider_ids = values.get("provider_ids") or []
    if not provider_ids:
        raise _refuse("provider_ids", "name at least one provider: the primary, then the fallbacks")
    if len(set(provider_ids)) != len(provider_ids):
        raise _refuse("provider_ids", "a provider is named twice")
    known = set(session.scalars(sa.select(PaymentProvider.id).where(PaymentProvider.id.in_(provider_ids))))
    for index, provider_id in enumerate(provider_ids):
        if provider_id not in known:
            raise _refuse(f"provider_ids[{index}]", f"no payment provider {provider_id}")


def create_rule(session: Session, fields: dict[str, Any]) -> RoutingRule:
    values = {name: fields.get(name) for name in FIELDS if fields.get(name) is not None}
    values.setdefault("position", 0)
    values.setdefault("weight", 1)
    values.setdefault("is_active", True)
    _check(session, values)
    rule = RoutingRule(**values)
    session.add(rule)
    session.flush()
    audit(session, "routing_rule", rule.id, "created", provider_ids=list(rule.provider_ids), position=rule.position)
    return rule


def update_rule(session: Session, rule_id: str, changes: dict[str, Any]) -> RoutingRule:
    """Change a rule: a field given replaces it (null clears a condition), a field left out is kept."""
    rule = get_rule(session, rule_id, lock=True)
    required = {"position", "weight", "provider_ids", "is_active"}
    for name in required & set(changes):
        if changes[name] is None:
            raise _refuse(name, f"{name} cannot be cleared")
    values = {name: changes[name] if name in changes else getattr(rule, name) for name in FIELDS}
    _check(session, values)
    changed = [name for name in FIELDS if name in changes and getattr(rule, name) != changes[name]]
    for name in changed:
        setattr(rule, name, changes[name])
    if changed:
        session.flush()
        audit(session, "routing_rule", rule.id, "updated", fields=changed)
    return rule


def delete_rule(session: Session, rule_id: str) -> None:
    rule = get_rule(session, rule_id, lock=True)
    session.delete(rule)
    session.flush()
    audit(session, "routing_rule", rule_id, "deleted")


def preview(session: Session, security: Security, facts: routing.Facts) -> dict[str, Any]:
    """A dry run: the rule a payment with these facts would follow (None: the default order), the
    providers in that order, and those of them that could take it now."""
    rule = routing.pick_rule(routing.active_rules(session), facts)
    return {
        "rule_id": rule.id if rule is not None else None,
        "provider_ids": routing.provider_order(session, security, facts),
        "usable_provider_ids": [p.id for p, _ in routing.usable_providers(session, security, facts)],
    }
