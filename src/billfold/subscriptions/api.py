"""The subscriptions HTTP routes under /v1. The POSTs that move money take an optional
``Idempotency-Key`` (docs/api.md); see docs/subscriptions.md for the lifecycle."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from billfold.accounts.access import readable
from billfold.accounts.auth import Authenticated, SecurityDep
from billfold.config import Settings
from billfold.kit.db import transaction
from billfold.kit.errors import BillfoldError
from billfold.kit.http import DbSession, Page, Paging, paginate, problems
from billfold.idempotency import Claim, advance, finish
from billfold.models import Payment, Refund, Subscription, SubscriptionBilling
from billfold.payments import provider_config, refunds, routing
from billfold.payments.engine import Outcome, Result
from billfold.idempotency_http import Answer, Idempotent, idempotently
from billfold.providers.errors import Declined
from billfold.subscriptions import charging, service
from billfold.subscriptions.schemas import (
    CancelIn,
    CancelOut,
    ChangeIn,
    ChangeOut,
    MigratePriceIn,
    ProrationOut,
    SubscriptionIn,
    SubscriptionOut,
)

router = APIRouter(prefix="/v1", responses=problems(400, 401, 403, 404, 422))
subscriptions = APIRouter(prefix="/subscriptions", tags=["subscriptions"])


def subscription_out(session: Session, subscription_id: str) -> SubscriptionOut:
    subscription = session.get(Subscription, subscription_id, populate_existing=True)
    assert subscription is not None
    return subscriptions_out(session, [subscription])[0]


def subscriptions_out(session: Session, rows: list[Subscription]) -> list[SubscriptionOut]:
    billing_rows = service.billing_of(session, [s.id for s in rows])
    # A subscription written without Billfold's billing row (imported, or made by hand in the
    # spec's table) reads as one seat with no credit, not as a 500 for every list it is in.
    return [
        SubscriptionOut.of(s, billing_rows.get(s.id) or SubscriptionBilling(subscription_id=s.id, quantity=1, credit_cents=0))
        for s in rows
    ]


def _settings(request: Request) -> Settings:
    return request.app.state.security.settings


DECLINED = (Result.FAILED, Result.CANCELLED)  # the payment failed: 402, whatever the provider's reason
UNFINISHED = (Result.PENDING, Result.UNKNOWN)  # 202: the worker finishes it with the same provider key


def _declined(charged: Outcome) -> tuple[int, Any]:
    error = charged.error if isinstance(charged.error, BillfoldError) else Declined("the payment was declined", "generic_decline")
    return 402, {
        **error.to_problem(), "subscription_id": charged.subscription_id, "payment_id": charged.payment_id,
        "invoice_id": charged.invoice_id,
    }


def _charge(
    request: Request, security: Any, claimed: Claim | None, answer: Answer, payment_id: str | None,
    outcome: Any, charged_outcome: Callable[[Outcome], Any], *, by: str | None,
) -> None:
    """Phases 2 and 3 when phase 1 left a payment. The answer is stored under the key in the
    transaction that records the outcome; when nothing was charged, or the provider did not
    answer (202: the renewal sweep finishes the payment later with the same provider key), in a
    transaction of its own."""
    sessions = request.app.state.sessions

    def store(session: Session, result: Any) -> None:
        status_code, body = answer(session, result)
        if claimed is not None:
            finish(session, claimed, status_code, body)

    if payment_id is None:
        with transaction(sessions) as session:
            store(session, outcome)
        return
    charged = charging.settle(
        sessions, security, _settings(request), payment_id, by=by,
        after=lambda session, result: store(session, charged_outcome(result)),
    )
    if charged.result is Result.UNKNOWN and answer.body is None:
        with transaction(sessions) as session:
            store(session, charged_outcome(charged))


@subscriptions.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SubscriptionOut,
    responses={**problems(402, 409, 503), 202: {"model": SubscriptionOut, "description": "The first charge's outcome is not known yet (the provider did not answer); the subscription is finished in the background."}},
)
def create_subscription(
    body: SubscriptionIn, request: Request, principal: Authenticated, idempotent: Idempotent, security: SecurityDep
) -> JSONResponse:
    """Subscribe yourself, an organization you buy for, or (admins) any customer to a recurring
    product. With a trial: `trialing` until `trial_end`, no charge yet. Without: the first period
    is charged now with the saved method (default: the customer's default method): 201 `active`;
    402 declined (the subscription is created and cancelled, and nothing is owed)."""
    sessions = request.app.state.sessions

    def build(session: Session, result: tuple[str, Outcome | None]) -> tuple[int, Any]:
        subscription_id, charged = result
        if charged is not None and charged.result in DECLINED:
            return _declined(charged)
        pending = charged is not None and charged.result in UNFINISHED
        return (202 if pending else 201), jsonable_encoder(subscription_out(session, subscription_id))

    answer = Answer(build)

    def work(claimed: Claim | None) -> None:
        with transaction(sessions) as session:
            started = service.subscribe(
                session, security, _settings(request), principal, product_id=body.product_id, quantity=body.quantity,
                payment_method_id=body.payment_method_id, user_id=body.user_id, organization_id=body.organization_id,
            )
        _charge(request, security, claimed, answer, started.payment_id, (started.subscription_id, None),
                lambda charged: (started.subscription_id, charged), by=service.actor(principal))

    return idempotently(request, idempotent, principal.idempotency_scope, body, answer, work)


@subscriptions.get("", response_model=Page[SubscriptionOut])
def list_subscriptions(principal: Authenticated, session: DbSession, paging: Paging) -> Page[SubscriptionOut]:
    """Your subscriptions and your organizations' (everyone's for the shop's admins), oldest first."""
    page = paginate(session, readable(principal, Subscription), Subscription.id, paging, lambda row: row)
    return Page[SubscriptionOut](data=subscriptions_out(session, list(page.data)), has_more=page.has_more)


@subscriptions.get("/{subscription_id}", response_model=SubscriptionOut)
def get_subscription(subscription_id: str, principal: Authenticated, session: DbSession) -> SubscriptionOut:
    return subscriptions_out(session, [service.get(session, principal, subscription_id)])[0]


@subscriptions.post("/{subscription_id}/change", response_model=ChangeOut, responses=problems(402, 409, 503))
def change_subscription(
    subscription_id: str, body: ChangeIn, request: Request, principal: Authenticated, idempotent: Idempotent, security: SecurityDep
) -> JSONResponse:
    """Change the plan (`product_id`), the `quantity` or the payment method. A plan or quantity
    change mid-period is prorated to the second: the unused time of the old plan is credited, the
    remaining time of the new one charged; a positive net is invoiced and charged at once (402 if
    declined: the change is undone), a negative net is kept as credit for the next invoices."""
    sessions = request.app.state.sessions

    def build(session: Session, result: tuple[service.Changed, Outcome | None]) -> tuple[int, Any]:
        changed, charged = result
        if charged is not None and charged.result in DECLINED:
            return _declined(charged)
        body_out = ChangeOut(
            subscription=subscription_out(session, changed.subscription_id),
            proration=ProrationOut.model_validate(changed.proration) if changed.proration else None,
            invoice_id=changed.invoice_id, payment_id=changed.payment_id,
        )
        return (202 if charged is not None and charged.result in UNFINISHED else 200), jsonable_encoder(body_out)

    answer = Answer(build)

    def work(claimed: Claim | None) -> None:
        with transaction(sessions) as session:
            changed = service.change(
                session, security, _settings(request), principal, subscription_id,
                product_id=body.product_id, quantity=body.quantity, payment_method_id=body.payment_method_id,
            )
        _charge(request, security, claimed, answer, changed.payment_id, (changed, None), lambda charged: (changed, charged),
                by=service.actor(principal))

    return idempotently(request, idempotent, principal.idempotency_scope, body, answer, work)


@subscriptions.post("/{subscription_id}/cancel", response_model=CancelOut, responses=problems(409, 503))
def cancel_subscription(
    subscription_id: str, body: CancelIn, request: Request, principal: Authenticated, idempotent: Idempotent, security: SecurityDep
) -> JSONResponse:
    """Cancel at the end of the paid period (default; undo with /resume), or now. Cancelling now
    with `refund` (the shop's admins) refunds the unused time of the period, prorated to the second."""
    sessions = request.app.state.sessions

    def build(session: Session, result: tuple[str, str | None, int]) -> tuple[int, Any]:
        sub_id, refund_id, cents = result
        refund = session.get(Refund, refund_id) if refund_id else None
        return 200, jsonable_encoder(CancelOut(
            subscription=subscription_out(session, sub_id), refund_id=refund_id, refund_cents=cents,
            refund_status=refund.status if refund is not None else None,
        ))

    answer = Answer(build)

    def work(claimed: Claim | None) -> tuple[str, str | None, int]:
        resumed = _cancelled_before(sessions, claimed)
        if resumed is None:
            with transaction(sessions) as session:
                done = service.cancel(session, principal, subscription_id, at_period_end=body.at_period_end, refund=body.refund)
                if done.refund_payment_id is None:
                    status_code, payload = answer(session, (done.subscription_id, None, 0))
                    if claimed is not None:
                        finish(session, claimed, status_code, payload)
                    return done.subscription_id, None, 0
                # What the provider cannot refund is refused before the cancellation is written.
                paid = session.get(Payment, done.refund_payment_id)
                assert paid is not None
                adapter = provider_config.adapter_for_provider(session, security, paid.provider_id)
                routing.require_refund(adapter.capabilities, paid, done.refund_cents)
                if claimed is not None:  # a retry refunds without cancelling twice
                    claimed = advance(session, claimed, f"{CANCELLED}{done.refund_payment_id}:{done.refund_cents}")
            payment_id, cents = done.refund_payment_id, done.refund_cents
        else:
            payment_id, cents = resumed
        refunded = refunds.refund(
            sessions, security, principal, payment_id, amount_cents=cents,
            reason="subscription cancelled: unused time", claim=claimed,
            respond=lambda session, made: answer(session, (subscription_id, made.refund_id, cents)),
        )
        return subscription_id, refunded.refund_id, cents

    return idempotently(request, idempotent, principal.idempotency_scope, body, answer, work)


CANCELLED = "cancelled:"


def _cancelled_before(sessions: Any, claimed: Claim | None) -> tuple[str, int] | None:
    """The payment and amount to refund when this key cancelled the subscription already (its
    recovery point), so its retry only finishes the refund."""
    if claimed is None:
        return None
    point = claimed.recovery_point
    if point.startswith(CANCELLED):
        payment_id, _, cents = point.removeprefix(CANCELLED).rpartition(":")
        return payment_id, int(cents)
    if point.startswith(refunds.RECOVERY_PREFIX):
        with sessions() as session:
            refund = session.get(Refund, point.removeprefix(refunds.RECOVERY_PREFIX))
            if refund is not None:
                return refund.payment_id, refund.amount_cents
    return None


def _simple(
    request: Request, principal: Any, idempotent: Any, body: Any, action: Callable[[Session], Subscription]
) -> JSONResponse:
    def handler(session: Session) -> SubscriptionOut:
        return subscription_out(session, action(session).id)

    return idempotent.respond(principal.idempotency_scope, body, handler)


@subscriptions.post("/{subscription_id}/resume", response_model=SubscriptionOut, responses=problems(409))
def resume_subscription(subscription_id: str, request: Request, principal: Authenticated, idempotent: Idempotent) -> JSONResponse:
    """Undo a cancellation at period end, before the period ends."""
    return _simple(request, principal, idempotent, None, lambda s: service.resume(s, principal, subscription_id))


@subscriptions.post("/{subscription_id}/pause", response_model=SubscriptionOut, responses=problems(409))
def pause_subscription(subscription_id: str, request: Request, principal: Authenticated, idempotent: Idempotent) -> JSONResponse:
    """Stop renewing: the paid period runs out and nothing is invoiced until /unpause."""
    return _simple(request, principal, idempotent, None, lambda s: service.pause(s, principal, subscription_id))


@subscriptions.post("/{subscription_id}/unpause", response_model=SubscriptionOut, responses=problems(409))
def unpause_subscription(subscription_id: str, request: Request, principal: Authenticated, idempotent: Idempotent) -> JSONResponse:
    """Renew again; if the paid period ended meanwhile, a new period starts now and is charged at once."""
    return _simple(request, principal, idempotent, None, lambda s: service.unpause(s, principal, subscription_id))


@subscriptions.post("/{subscription_id}/migrate-price", response_model=SubscriptionOut, responses=problems(409))
def migrate_price(
    subscription_id: str, body: MigratePriceIn, request: Request, principal: Authenticated, idempotent: Idempotent
) -> JSONResponse:
    """(The shop's admins.) Move the subscription to the catalog's current price (or `price_cents`)
    from its next invoice. Otherwise a subscription keeps the price the customer agreed to."""
    return _simple(request, principal, idempotent, body, lambda s: service.migrate_price(s, principal, subscription_id, body.price_cents))


router.include_router(subscriptions)
