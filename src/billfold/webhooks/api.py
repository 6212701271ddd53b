"""``POST /v1/webhooks/{provider_id}``: where a payment provider delivers its events."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from billfold.accounts.auth import Admin, SecurityDep
from billfold.kit.errors import NotFound
from billfold.kit.http import DbSession, Page, Paging, paginate, problems, require
from billfold.kit.inputs import QueryBoolean
from billfold.models import PaymentWebhook
from billfold.webhooks import inbound

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class WebhookReceived(BaseModel):
    id: str = Field(description="The stored event (`whk_…`).")
    duplicate: bool = Field(description="The event was already stored by an earlier delivery; stored once all the same.")


async def raw_body(request: Request) -> bytes:
    return await request.body()


@router.post(
    "/{provider_id}",
    response_model=WebhookReceived,
    responses=problems(400, 404, 422),
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}},
)
def receive_webhook(
    provider_id: str, request: Request, session: DbSession, security: SecurityDep, body: bytes = Depends(raw_body)
) -> WebhookReceived:
    """An event from the payment provider `provider_id`, signed by it (the sandbox: Standard
    Webhooks headers `webhook-id`, `webhook-timestamp`, `webhook-signature` over the raw body).
    No credentials: the signature is checked instead, and a body or timestamp that does not verify
    answers 400 with nothing stored. Each event is stored once, however often it is delivered."""
    received = inbound.receive_webhook(session, security, provider_id, body, request.headers)
    return WebhookReceived(id=received.webhook_id, duplicate=received.duplicate)


class WebhookEventOut(BaseModel):
    """A stored event and how its processing went."""

    id: str = Field(description="The stored event (`whk_…`).")
    provider_id: str
    provider_event_id: str | None = Field(description="The provider's own id of the event.")
    event_type: str
    payload: Any = Field(description="The event as the provider sent it (never trusted: processing asks the provider).")
    processed: bool
    processed_at: datetime | None
    created_at: datetime
    attempts: int = Field(description="How many times processing it failed.")
    last_error: str | None = Field(description="Why the last attempt failed; null once processed.")
    next_attempt_at: datetime | None = Field(description="When the worker may try it next (null: at once, or processed).")
    note: str | None = Field(description="What processing did: the payment or refund it settled, or why nothing changed.")

    @classmethod
    def of(cls, row: PaymentWebhook) -> WebhookEventOut:
        return cls(
            id=row.id, provider_id=row.provider_id, provider_event_id=row.provider_event_id, event_type=row.event_type,
            payload=row.payload, processed=row.processed, processed_at=row.processed_at, created_at=row.created_at,
            attempts=row.attempts or 0, last_error=row.last_error, next_attempt_at=row.next_attempt_at, note=row.note,
        )


@router.get("/events", response_model=Page[WebhookEventOut], responses=problems(401, 403, 422))
def list_webhook_events(
    principal: Admin,
    session: DbSession,
    paging: Paging,
    processed: Annotated[
        bool | None, Query(description="Only processed (true) or unprocessed (false) events."), QueryBoolean
    ] = None,
    provider_id: Annotated[str | None, Query(max_length=50, description="Only this provider's events.")] = None,
) -> Page[WebhookEventOut]:
    """The stored events, oldest first (admins, and API keys with the `read` scope)."""
    require("\x00" not in (paging.starting_after or ""), "must not contain NUL characters", "starting_after")
    require("\x00" not in (provider_id or ""), "must not contain NUL characters", "provider_id")
    statement = sa.select(PaymentWebhook)
    if processed is not None:
        statement = statement.where(PaymentWebhook.processed == processed)
    if provider_id is not None:
        statement = statement.where(PaymentWebhook.provider_id == provider_id)
    return paginate(session, statement, PaymentWebhook.id, paging, WebhookEventOut.of)


@router.post("/events/{webhook_id}/replay", response_model=WebhookEventOut, responses=problems(401, 403, 404))
def replay_webhook_event(webhook_id: str, principal: Admin, session: DbSession) -> WebhookEventOut:
    """Process the event again: it is marked unprocessed, due at once, for the worker's next round
    (admins, and API keys with the `write` scope). Processing asks the provider, so a replay never
    moves a payment or refund backwards."""
    row = session.get(PaymentWebhook, webhook_id) if "\x00" not in webhook_id else None
    if row is None:
        raise NotFound(f"no webhook event {webhook_id}")
    row.processed, row.processed_at, row.next_attempt_at = False, None, None
    session.flush()
    return WebhookEventOut.of(row)
