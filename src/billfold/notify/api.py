"""Webhook endpoints of the merchant's own systems (admins): register, list, change, rotate the
secret, delete; their deliveries with every attempt, and redelivery. See docs/api.md#webhooks-out."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel, Field, StrictBool

from billfold.accounts.auth import Admin, SecurityDep
from billfold.accounts.schemas import In
from billfold.kit.http import DbSession, Page, Paging, paginate, problems, require
from billfold.kit.inputs import SingleLine
from billfold.models.notify import WebhookDelivery, WebhookDeliveryAttempt, WebhookEndpoint
from billfold.notify import endpoints, outbox, targets

router = APIRouter(prefix="/v1", responses=problems(400, 422))
hooks = APIRouter(prefix="/webhook-endpoints", tags=["webhooks out"], responses=problems(401, 403, 404))
sent = APIRouter(prefix="/webhook-deliveries", tags=["webhooks out"], responses=problems(401, 403, 404))

EventType = Literal[
    "*", "order.paid", "payment.failed", "refund.succeeded", "refund.failed", "subscription.created",
    "subscription.renewed", "subscription.past_due", "subscription.cancelled", "invoice.paid", "invoice.credited",
    "invoice.credit_voided", "membership.started", "membership.expired",
]
assert set(EventType.__args__) == {outbox.ALL, *outbox.EVENT_TYPES}  # type: ignore[attr-defined]
Url = Annotated[
    str,
    Field(
        min_length=1, max_length=targets.MAX_URL, pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s@#]+$",
        description="Where events are POSTed: an https (or http) URL with no user name or password, whose host "
        "resolves to public addresses only (unless BILLFOLD_WEBHOOK_TARGETS_ALLOW allows others).",
        json_schema_extra={"format": "uri"},
    ),
]
Description = Annotated[str, Field(min_length=1, max_length=500), SingleLine]
EventTypes = Annotated[
    list[EventType],
    Field(min_length=1, max_length=len(outbox.EVENT_TYPES), description='The events to send, or ["*"] for all of them.'),
]


class EndpointIn(In):
    url: Url
    event_types: EventTypes
    description: Description | None = None
    is_active: StrictBool = True


class EndpointUpdate(In):
    url: Url = None  # type: ignore[assignment]
    event_types: EventTypes = None  # type: ignore[assignment]
    description: Description | None = None
    is_active: StrictBool = Field(
        None, description="false disables the endpoint (its pending deliveries are cancelled); true turns it back on.",
    )  # type: ignore[assignment]


class EndpointOut(BaseModel):
    id: str = Field(description="`we_…`")
    url: str
    description: str | None
    event_types: list[str]
    is_active: bool
    disabled_reason: str | None = Field(description="Why it was disabled (410 Gone, failing for days, an admin).")
    consecutive_failures: int = Field(description="Failed attempts since its last success.")
    failing_since: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: WebhookEndpoint) -> EndpointOut:
        return cls(
            id=row.id, url=row.url, description=row.description, event_types=list(row.event_types),
            is_active=row.is_active, disabled_reason=row.disabled_reason, consecutive_failures=row.consecutive_failures,
            failing_since=row.failing_since, created_at=row.created_at, updated_at=row.updated_at,
        )


class EndpointWithSecret(EndpointOut):
    secret: str = Field(
        description="The signing secret (`whsec_…`, Standard Webhooks). Shown this once: keep it; "
        "POST …/rotate-secret makes a new one."
    )


class AttemptOut(BaseModel):
    attempted_at: datetime
    status_code: int | None = Field(description="The endpoint's answer; null when there was none (see error).")
    error: str | None
    latency_ms: int
    response_excerpt: str | None = Field(description="The first KB of the answer's body.")


class DeliveryOut(BaseModel):
    id: str = Field(description="`whd_…`")
    endpoint_id: str
    event_id: str = Field(description="The `webhook-id` header: the same on every attempt and redelivery.")
    event_type: str
    entity_key: str = Field(description="What the event is about (`order:ord_…`); its events are delivered in order.")
    payload: Any
    status: Literal["pending", "delivered", "failed", "cancelled"]
    attempts_made: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime
    attempts: list[AttemptOut]

    @classmethod
    def of(cls, row: WebhookDelivery, attempts: list[WebhookDeliveryAttempt]) -> DeliveryOut:
        return cls(
            id=row.id, endpoint_id=row.endpoint_id, event_id=row.event_id, event_type=row.event_type,
            entity_key=row.entity_key, payload=row.payload, status=row.status,  # type: ignore[arg-type]
            attempts_made=row.attempts, next_attempt_at=row.next_attempt_at, last_status_code=row.last_status_code,
            last_error=row.last_error, delivered_at=row.delivered_at, created_at=row.created_at,
            attempts=[
                AttemptOut(attempted_at=a.attempted_at, status_code=a.status_code, error=a.error,
                           latency_ms=a.latency_ms, response_excerpt=a.response_excerpt)
                for a in attempts
            ],
        )


def _with_secret(row: WebhookEndpoint, secret: str) -> EndpointWithSecret:
    return EndpointWithSecret(**EndpointOut.of(row).model_dump(), secret=secret)


@hooks.get("", response_model=Page[EndpointOut])
def list_webhook_endpoints(principal: Admin, session: DbSession, paging: Paging) -> Page[EndpointOut]:
    """The endpoints, oldest first; secrets are never shown."""
    require("\x00" not in (paging.starting_after or ""), "must not contain NUL characters", "starting_after")
    return paginate(session, sa.select(WebhookEndpoint), WebhookEndpoint.id, paging, EndpointOut.of)


@hooks.post("", status_code=status.HTTP_201_CREATED, response_model=EndpointWithSecret)
def create_webhook_endpoint(body: EndpointIn, principal: Admin, session: DbSession, security: SecurityDep) -> EndpointWithSecret:
    """Register an endpoint. The answer carries its signing secret, shown this once. A URL whose
    host is, or resolves to, a private, loopback or link-local address is refused (422
    `webhook_target_refused`) unless the installation allows that kind."""
    row, secret = endpoints.create_endpoint(
        session, security, url=body.url, types=body.event_types, description=body.description, is_active=body.is_active,
    )
    return _with_secret(row, secret)


@hooks.get("/{endpoint_id}", response_model=EndpointOut)
def get_webhook_endpoint(endpoint_id: str, principal: Admin, session: DbSession) -> EndpointOut:
    return EndpointOut.of(endpoints.get_endpoint(session, endpoint_id))


@hooks.patch("/{endpoint_id}", response_model=EndpointOut)
def update_webhook_endpoint(
    endpoint_id: str, body: EndpointUpdate, principal: Admin, session: DbSession, security: SecurityDep
) -> EndpointOut:
    """Change the URL, description or event types; `is_active` false disables it, true turns it on
    again (clearing why it was disabled)."""
    changes = body.model_dump(exclude_unset=True)
    for field in ("url", "event_types", "is_active"):
        require(changes.get(field, "") is not None, "must not be null (leave it out to keep it)", field)
    return EndpointOut.of(endpoints.update_endpoint(session, security, endpoint_id, changes))


@hooks.delete("/{endpoint_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def delete_webhook_endpoint(endpoint_id: str, principal: Admin, session: DbSession) -> Response:
    """Delete the endpoint with its deliveries and their attempts (PATCH `is_active: false` keeps them)."""
    endpoints.delete_endpoint(session, endpoint_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@hooks.post("/{endpoint_id}/rotate-secret", response_model=EndpointWithSecret)
def rotate_webhook_secret(endpoint_id: str, principal: Admin, session: DbSession, security: SecurityDep) -> EndpointWithSecret:
    """A new signing secret, shown this once; every delivery from now on (retries too) is signed with it."""
    row, secret = endpoints.rotate_secret(session, security, endpoint_id)
    return _with_secret(row, secret)


@hooks.get("/{endpoint_id}/deliveries", response_model=Page[DeliveryOut])
def list_webhook_deliveries(
    endpoint_id: str,
    principal: Admin,
    session: DbSession,
    paging: Paging,
    status_: Annotated[
        Literal["pending", "delivered", "failed", "cancelled"] | None,
        Query(alias="status", description="Only deliveries in this state."),
    ] = None,
) -> Page[DeliveryOut]:
    """The endpoint's deliveries, oldest first, each with its attempts."""
    require("\x00" not in (paging.starting_after or ""), "must not contain NUL characters", "starting_after")
    endpoint = endpoints.get_endpoint(session, endpoint_id)
    statement = sa.select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
    if status_ is not None:
        statement = statement.where(WebhookDelivery.status == status_)
    page = paginate(session, statement, WebhookDelivery.id, paging, lambda row: row)
    tried = _attempts(session, [row.id for row in page.data])
    return Page[DeliveryOut](data=[DeliveryOut.of(row, tried.get(row.id, [])) for row in page.data], has_more=page.has_more)


def _attempts(session: DbSession, delivery_ids: list[str]) -> dict[str, list[WebhookDeliveryAttempt]]:
    found: dict[str, list[WebhookDeliveryAttempt]] = {}
    if delivery_ids:
        for row in session.scalars(
            sa.select(WebhookDeliveryAttempt).where(WebhookDeliveryAttempt.delivery_id.in_(delivery_ids))
            .order_by(WebhookDeliveryAttempt.attempted_at, WebhookDeliveryAttempt.id)
        ):
            found.setdefault(row.delivery_id, []).append(row)
    return found


@sent.post("/{delivery_id}/redeliver", response_model=DeliveryOut, responses=problems(409))
def redeliver_webhook(delivery_id: str, principal: Admin, session: DbSession) -> DeliveryOut:
    """Send the delivery again, whatever became of it (delivered, failed or cancelled): it is
    pending and due at once for the worker's next round, with the same `webhook-id`. 409 when its
    endpoint is disabled."""
    row = endpoints.redeliver(session, delivery_id)
    return DeliveryOut.of(row, _attempts(session, [row.id]).get(row.id, []))


router.include_router(hooks)
router.include_router(sent)
