"""Payment providers (admins), payment methods (of the signed-in user, of an organization, and
for admins of any user), and refunds of payments, under /v1. The guard that refuses card data in
every request is ``billfold.payments.card_guard``. Paying (checkout, confirm, cancel) is in
orders/api.py and subscriptions/api.py."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from billfold.accounts.access import Owner, me, organization_owner, user_owner
from billfold.accounts.auth import Admin, Authenticated, SecurityDep, User
from billfold.accounts.security import Principal
from billfold.kit.http import DbSession, Page, PageQuery, Paging, paginate, problems, require
from billfold.kit.inputs import QueryDigits
from billfold.idempotency_http import Answer, Idempotent, IdempotentRequest, idempotently
from billfold.models import PaymentMethod, PaymentProvider, Refund
from billfold.orders.schemas import RefundIn, RefundOut
from billfold.payments import methods, provider_config, refunds, routing, routing_rules
from billfold.payments.engine import Outcome, Result
from billfold.payments.schemas import (
    PaymentMethodIn,
    PaymentMethodOut,
    PaymentMethodUpdate,
    ProviderIn,
    ProviderOut,
    ProviderUpdate,
    RoutingPreviewOut,
    RoutingRuleIn,
    RoutingRuleOut,
    RoutingRuleUpdate,
    MAX_AMOUNT,
)

router = APIRouter(prefix="/v1", responses=problems(400, 422))
providers = APIRouter(prefix="/payment-providers", tags=["payment providers"], responses=problems(401, 403, 404))
mine = APIRouter(prefix="/me/payment-methods", tags=["payment methods"], responses=problems(401, 403, 404))
theirs = APIRouter(
    prefix="/organizations/{organization_id}/payment-methods", tags=["payment methods"],
    responses=problems(401, 403, 404),
)
users = APIRouter(prefix="/users/{user_id}/payment-methods", tags=["payment methods"], responses=problems(401, 403, 404))
payments = APIRouter(prefix="/payments", tags=["payments"], responses=problems(401, 403, 404))
rules = APIRouter(prefix="/routing-rules", tags=["routing rules"], responses=problems(401, 403, 404))
NO_CONTENT: dict[str, Any] = {"status_code": status.HTTP_204_NO_CONTENT, "response_class": Response}


# Payment providers (admins; a read-only key may look)


@providers.get("", response_model=Page[ProviderOut])
def list_providers(principal: Admin, session: DbSession, paging: Paging) -> Page[ProviderOut]:
    require("\x00" not in (paging.starting_after or ""), "must not contain NUL characters", "starting_after")
    from sqlalchemy import select

    return paginate(session, select(PaymentProvider), PaymentProvider.id, paging, ProviderOut.of)


@providers.post("", status_code=status.HTTP_201_CREATED, response_model=ProviderOut, responses=problems(409))
def create_provider(body: ProviderIn, principal: Admin, session: DbSession, security: SecurityDep) -> ProviderOut:
    """Add a provider. Secrets in config are encrypted at rest and never shown again."""
    fields = body.model_dump(exclude_unset=True)
    fields.setdefault("id", body.id)
    return ProviderOut.of(provider_config.create_provider(session, security, fields))


@providers.get("/{provider_id}", response_model=ProviderOut)
def get_provider(provider_id: str, principal: Admin, session: DbSession) -> ProviderOut:
    return ProviderOut.of(provider_config.get_provider(session, provider_id))


@providers.patch("/{provider_id}", response_model=ProviderOut, responses=problems(409))
def update_provider(
    provider_id: str, body: ProviderUpdate, principal: Admin, session: DbSession, security: SecurityDep
) -> ProviderOut:
    """Change a provider; `is_active: false` switches it off (providers are never deleted: payments
    refer to them)."""
    changes = body.model_dump(exclude_unset=True)
    return ProviderOut.of(provider_config.update_provider(session, security, provider_id, changes))


# Routing rules (admins; a read-only key may look): which providers a payment goes to, and where
# it fails over (docs/payments.md#routing)


@rules.get("", response_model=list[RoutingRuleOut])
def list_routing_rules(principal: Admin, session: DbSession) -> list[RoutingRuleOut]:
    """Every rule, in the order routing reads them (position, then id)."""
    return [RoutingRuleOut.model_validate(rule) for rule in routing_rules.list_rules(session)]


@rules.post("", status_code=status.HTTP_201_CREATED, response_model=RoutingRuleOut)
def create_routing_rule(body: RoutingRuleIn, principal: Admin, session: DbSession) -> RoutingRuleOut:
    return RoutingRuleOut.model_validate(routing_rules.create_rule(session, body.model_dump()))


@rules.get("/preview", response_model=RoutingPreviewOut)
def preview_routing(
    principal: Admin, session: DbSession, security: SecurityDep,
    currency: Annotated[str, Query(pattern=r"^[A-Z]{3}$")],
    amount: Annotated[int, Query(ge=0, le=MAX_AMOUNT, description="Minor units of currency."), QueryDigits],
    country: Annotated[str | None, Query(pattern=r"^[A-Z]{2}$")] = None,
    product_type: Annotated[str | None, Query(pattern=r"^(physical|digital|service|subscription)$")] = None,
    key: Annotated[str | None, Query(max_length=255, pattern=r"^[A-Za-z0-9_\-]+$", description="What a weighted split hashes: an order's or invoice's id.")] = None,
) -> RoutingPreviewOut:
    """A dry run: where a payment with these facts would go. Changes nothing."""
    facts = routing.Facts(currency, amount, country, frozenset([product_type] if product_type else []), key or "")
    return RoutingPreviewOut(**routing_rules.preview(session, security, facts))


@rules.get("/{rule_id}", response_model=RoutingRuleOut)
def get_routing_rule(rule_id: str, principal: Admin, session: DbSession) -> RoutingRuleOut:
    return RoutingRuleOut.model_validate(routing_rules.get_rule(session, rule_id))


@rules.patch("/{rule_id}", response_model=RoutingRuleOut)
def update_routing_rule(rule_id: str, body: RoutingRuleUpdate, principal: Admin, session: DbSession) -> RoutingRuleOut:
    """Change a rule: a field given replaces it (null clears a condition), a field left out is kept."""
    return RoutingRuleOut.model_validate(routing_rules.update_rule(session, rule_id, body.model_dump(exclude_unset=True)))


@rules.delete("/{rule_id}", **NO_CONTENT)
def delete_routing_rule(rule_id: str, principal: Admin, session: DbSession) -> None:
    routing_rules.delete_rule(session, rule_id)


# Payment methods: the same five endpoints for the signed-in user, an organization, and (for
# admins) any user.


def _page(session: Session, owner: Owner, paging: PageQuery) -> Page[PaymentMethodOut]:
    require("\x00" not in (paging.starting_after or ""), "must not contain NUL characters", "starting_after")
    return paginate(session, methods.methods_of(owner), PaymentMethod.id, paging, PaymentMethodOut.model_validate)


def _save(
    idempotent: IdempotentRequest, principal: Principal, security: Any, owner: Owner, body: PaymentMethodIn
) -> Any:
    """Save once per Idempotency-Key: a retried POST does not save the card twice."""

    def handler(session: Session) -> PaymentMethodOut:
        return PaymentMethodOut.model_validate(
            methods.save_method(
                session, security, owner, token=body.token, provider_id=body.provider_id,
                billing_address_id=body.billing_address_id, make_default=body.make_default,
            )
        )

    return idempotent.respond(principal.idempotency_scope, body, handler, status_code=201)


def _update(session: Session, owner: Owner, payment_method_id: str, body: PaymentMethodUpdate) -> PaymentMethodOut:
    changes = body.model_dump(exclude_unset=True)
    kwargs: dict[str, Any] = {}
    if "make_default" in changes:
        kwargs["make_default"] = changes["make_default"]
    if "billing_address_id" in changes:
        kwargs["billing_address_id"] = changes["billing_address_id"]
    return PaymentMethodOut.model_validate(methods.update_method(session, owner, payment_method_id, **kwargs))


def _organization(session: Session, principal: Principal, organization_id: str, *, change: bool) -> Owner:
    """Members look; owners and the billing role change (``Permission.BILLING``)."""
    return organization_owner(session, principal, organization_id, change=change, lock=change)


CREATED: dict[str, Any] = {
    "status_code": status.HTTP_201_CREATED, "response_model": PaymentMethodOut, "responses": problems(409),
}


@mine.get("", response_model=Page[PaymentMethodOut])
def list_my_methods(principal: User, session: DbSession, paging: Paging) -> Page[PaymentMethodOut]:
    return _page(session, me(principal), paging)


@mine.post("", **CREATED)
def save_my_method(body: PaymentMethodIn, principal: User, idempotent: Idempotent, security: SecurityDep) -> Any:
    """Save a payment method from a provider token (never a card number)."""
    return _save(idempotent, principal, security, me(principal), body)


@mine.get("/{payment_method_id}", response_model=PaymentMethodOut)
def get_my_method(payment_method_id: str, principal: User, session: DbSession) -> PaymentMethodOut:
    return PaymentMethodOut.model_validate(methods.get_method(session, me(principal), payment_method_id))


@mine.patch("/{payment_method_id}", response_model=PaymentMethodOut, responses=problems(409))
def update_my_method(
    payment_method_id: str, body: PaymentMethodUpdate, principal: User, session: DbSession
) -> PaymentMethodOut:
    return _update(session, me(principal), payment_method_id, body)


@mine.delete("/{payment_method_id}", **NO_CONTENT, responses=problems(409))
def delete_my_method(payment_method_id: str, principal: User, session: DbSession, security: SecurityDep) -> Response:
    """Detach it at the provider and delete it; if it was the default, the newest other method becomes the default."""
    methods.delete_method(session, security, me(principal), payment_method_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@theirs.get("", response_model=Page[PaymentMethodOut])
def list_organization_methods(
    organization_id: str, principal: Authenticated, session: DbSession, paging: Paging
) -> Page[PaymentMethodOut]:
    """The organization's payment methods: every member may look."""
    return _page(session, _organization(session, principal, organization_id, change=False), paging)


@theirs.post("", **CREATED)
def save_organization_method(
    organization_id: str, body: PaymentMethodIn, principal: Authenticated, idempotent: Idempotent, security: SecurityDep
) -> Any:
    """Save a payment method for the organization (owners and the billing role)."""
    owner = _organization(idempotent.session, principal, organization_id, change=True)
    return _save(idempotent, principal, security, owner, body)


@theirs.get("/{payment_method_id}", response_model=PaymentMethodOut)
def get_organization_method(
    organization_id: str, payment_method_id: str, principal: Authenticated, session: DbSession
) -> PaymentMethodOut:
    owner = _organization(session, principal, organization_id, change=False)
    return PaymentMethodOut.model_validate(methods.get_method(session, owner, payment_method_id))


@theirs.patch("/{payment_method_id}", response_model=PaymentMethodOut, responses=problems(409))
def update_organization_method(
    organization_id: str, payment_method_id: str, body: PaymentMethodUpdate, principal: Authenticated,
    session: DbSession,
) -> PaymentMethodOut:
    return _update(session, _organization(session, principal, organization_id, change=True), payment_method_id, body)


@theirs.delete("/{payment_method_id}", **NO_CONTENT, responses=problems(409))
def delete_organization_method(
    organization_id: str, payment_method_id: str, principal: Authenticated, session: DbSession,
    security: SecurityDep,
) -> Response:
    owner = _organization(session, principal, organization_id, change=True)
    methods.delete_method(session, security, owner, payment_method_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@users.get("", response_model=Page[PaymentMethodOut])
def list_user_methods(user_id: str, principal: Admin, session: DbSession, paging: Paging) -> Page[PaymentMethodOut]:
    """A user's payment methods: admins and API keys."""
    return _page(session, user_owner(session, user_id), paging)


@users.post("", **CREATED)
def save_user_method(
    user_id: str, body: PaymentMethodIn, principal: Admin, idempotent: Idempotent, security: SecurityDep
) -> Any:
    return _save(idempotent, principal, security, user_owner(idempotent.session, user_id), body)


@users.get("/{payment_method_id}", response_model=PaymentMethodOut)
def get_user_method(user_id: str, payment_method_id: str, principal: Admin, session: DbSession) -> PaymentMethodOut:
    return PaymentMethodOut.model_validate(methods.get_method(session, user_owner(session, user_id), payment_method_id))


@users.patch("/{payment_method_id}", response_model=PaymentMethodOut, responses=problems(409))
def update_user_method(
    user_id: str, payment_method_id: str, body: PaymentMethodUpdate, principal: Admin, session: DbSession
) -> PaymentMethodOut:
    return _update(session, user_owner(session, user_id), payment_method_id, body)


@users.delete("/{payment_method_id}", **NO_CONTENT, responses=problems(409))
def delete_user_method(
    user_id: str, payment_method_id: str, principal: Admin, session: DbSession, security: SecurityDep
) -> Response:
    methods.delete_method(session, security, user_owner(session, user_id), payment_method_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# Refunds (the shop's admins)


@payments.post(
    "/{payment_id}/refunds",
    status_code=status.HTTP_201_CREATED,
    response_model=RefundOut,
    responses={
        **problems(409, 503),
        202: {"model": RefundOut, "description": "The provider accepted the refund and will settle it later."},
        409: {**problems(409)[409], "description": "`refund_in_progress`: only pending refunds stand in the way; "
              "`refund_failed`: the provider refused the refund (with `refund_id`), nothing was given back."},
    },
)
def refund_payment(
    payment_id: str, body: RefundIn, request: Request, principal: Authenticated, idempotent: Idempotent, security: SecurityDep
) -> JSONResponse:
    """Refund all or part of a completed payment (the shop's admins). Any number of partial refunds,
    never more than was paid; the payment and order become refunded when nothing is left. Each
    request makes a refund of its own (a retry with its Idempotency-Key drives the same one).
    201: refunded. 202: the provider will settle it later. 409 `refund_in_progress`: only pending
    refunds stand in the way. 422 `not_supported`: the provider cannot make this refund (nothing is
    written). 409 `refund_failed`: the provider refused; nothing was given back. 503: the provider
    did not answer; the refund (`refund_id`) stays pending until the retry with the same key or the
    worker asks the provider again."""

    def build(session: Session, outcome: Outcome) -> tuple[int, Any]:
        refund = session.get(Refund, outcome.refund_id)
        assert refund is not None
        if outcome.result is Result.FAILED:
            return 409, refunds.failure_problem(refund)
        return (201 if outcome.result is Result.SUCCEEDED else 202), jsonable_encoder(RefundOut.model_validate(refund))

    answer = Answer(build)
    sessions = request.app.state.sessions
    return idempotently(
        request, idempotent, principal.idempotency_scope, body, answer,
        lambda claimed: refunds.refund(
            sessions, security, principal, payment_id, amount_cents=body.amount_cents, reason=body.reason,
            claim=claimed, respond=answer,
        ),
    )


router.include_router(providers)
router.include_router(mine)
router.include_router(theirs)
router.include_router(users)
router.include_router(payments)
router.include_router(rules)
