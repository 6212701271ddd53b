"""``POST /v1/webhooks/{provider_id}``: where a payment provider delivers its events."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from billfold.accounts.auth import SecurityDep
from billfold.kit.http import DbSession, problems
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
