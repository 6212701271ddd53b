"""Webhook endpoints: registered, changed, disabled, deleted and their secrets rotated by admins;
their deliveries listed and redelivered. Services: they never commit, and every change writes an
audit row (``webhook_endpoint`` entity). The secret (``whsec_…``) is made here, returned once to
the caller, and kept encrypted at rest (``kit.crypto``, bound to the endpoint), like a provider's."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.accounts.security import Security
from billfold.audit import audit
from billfold.kit import clock, crypto
from billfold.kit.db.dialects import for_update
from billfold.kit.errors import Conflict, InvalidInput, NotFound
from billfold.kit.ids import new_id
from billfold.models.notify import WebhookDelivery, WebhookEndpoint
from billfold.notify import outbox, targets
from billfold.providers import standard_webhooks

SECRET_BYTES = 24


class EndpointDisabled(Conflict):
    code = "webhook_endpoint_disabled"
    title = "The webhook endpoint is disabled"


def _context(endpoint_id: str) -> str:
    return f"webhook-endpoint:{endpoint_id}:secret"


def _seal(security: Security, endpoint_id: str) -> tuple[str, str]:
    """A new secret and its stored (encrypted) form."""
    secret = standard_webhooks.make_secret(secrets.token_bytes(SECRET_BYTES))
    return secret, crypto.encrypt(security.keyring, secret.encode(), _context(endpoint_id))


def open_secret(security: Security, endpoint_id: str, stored: str) -> str:
    """The endpoint's secret, for signing only."""
    return crypto.decrypt(security.keyring, stored, _context(endpoint_id)).decode()


def event_types(given: Iterable[str], field: str = "event_types") -> list[str]:
    """The event types asked for, checked: known ones, each once, or ``["*"]`` for all."""
    wanted = list(given)
    if not wanted:
        raise InvalidInput("name at least one event type, or \"*\" for all", errors=[{"field": field, "message": "empty"}])
    unknown = [t for t in wanted if t != outbox.ALL and t not in outbox.EVENT_TYPES]
    if unknown:
        detail = f"unknown event type {unknown[0]!r}; one of {', '.join(outbox.EVENT_TYPES)}, or \"*\""
        raise InvalidInput(detail, errors=[{"field": field, "message": detail}])
    if outbox.ALL in wanted and len(wanted) > 1:
        detail = "\"*\" (every type) stands alone"
        raise InvalidInput(detail, errors=[{"field": field, "message": detail}])
    return list(dict.fromkeys(wanted))


def get_endpoint(session: Session, endpoint_id: str, *, lock: bool = False) -> WebhookEndpoint:
    """The endpoint; ``lock``: locked for a change (an endpoint is always locked before its
    deliveries, as the delivery sweep does, so the two never deadlock)."""
    row = None
    if endpoint_id and "\x00" not in endpoint_id:
        statement = sa.select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)
        row = session.scalars(for_update(statement, session) if lock else statement).one_or_none()
    if row is None:
        raise NotFound(f"no webhook endpoint {endpoint_id}")
    return row


def create_endpoint(
    session: Session, security: Security, *, url: str, types: Sequence[str], description: str | None = None,
    is_active: bool = True,
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its secret (shown this once)."""
    targets.check(url, security.settings.webhook_targets_allow)
    endpoint_id = new_id("we")
    secret, sealed = _seal(security, endpoint_id)
    now = clock.now()
    row = WebhookEndpoint(
        id=endpoint_id, url=url, description=description, event_types=event_types(types), secret=sealed,
        is_active=is_active, consecutive_failures=0, created_at=now, updated_at=now,
    )
    session.add(row)
    session.flush()
    outbox.forget_endpoints(session)
    audit(session, "webhook_endpoint", row.id, "created", url=url, event_types=row.event_types, is_active=is_active)
    return row, secret


def update_endpoint(session: Session, security: Security, endpoint_id: str, changes: dict[str, Any]) -> WebhookEndpoint:
    """Change url, description, event_types or is_active. Turning an endpoint back on clears why
    it was disabled and its failure streak; turning it off cancels its pending deliveries."""
    row = get_endpoint(session, endpoint_id, lock=True)
    changed = []
    if "url" in changes and changes["url"] != row.url:
        targets.check(changes["url"], security.settings.webhook_targets_allow)
        row.url = changes["url"]
        changed.append("url")
    if "description" in changes and changes["description"] != row.description:
        row.description = changes["description"]
        changed.append("description")
    if "event_types" in changes:
        wanted = event_types(changes["event_types"])
        if wanted != row.event_types:
            row.event_types = wanted
            changed.append("event_types")
    if "is_active" in changes and changes["is_active"] != row.is_active:
        changed.append("is_active")
        if changes["is_active"]:
            targets.check(row.url, security.settings.webhook_targets_allow)
            row.is_active, row.disabled_reason, row.consecutive_failures, row.failing_since = True, None, 0, None
        else:
            disable(session, row, "disabled by an admin")
    if changed:
        row.updated_at = clock.now()
        outbox.forget_endpoints(session)
        audit(session, "webhook_endpoint", row.id, "updated", fields=changed, is_active=row.is_active)
    session.flush()
    return row


def rotate_secret(session: Session, security: Security, endpoint_id: str) -> tuple[WebhookEndpoint, str]:
    """A new secret (shown this once); the old one signs nothing from now on."""
    row = get_endpoint(session, endpoint_id, lock=True)
    secret, row.secret = _seal(security, row.id)
    row.updated_at = clock.now()
    session.flush()
    audit(session, "webhook_endpoint", row.id, "secret_rotated")
    return row, secret


def delete_endpoint(session: Session, endpoint_id: str) -> None:
    """Delete the endpoint with its deliveries and their attempts."""
    row = get_endpoint(session, endpoint_id, lock=True)
    url = row.url
    session.delete(row)
    session.flush()
    outbox.forget_endpoints(session)
    audit(session, "webhook_endpoint", endpoint_id, "deleted", url=url)


def disable(session: Session, row: WebhookEndpoint, reason: str) -> int:
    """Switch the endpoint off for ``reason`` and cancel its pending deliveries; how many."""
    now = clock.now()
    row.is_active, row.disabled_reason, row.updated_at = False, reason[:500], now
    cancelled = session.execute(
        sa.update(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == row.id, WebhookDelivery.status == "pending")
        .values(status="cancelled", next_attempt_at=None, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    outbox.forget_endpoints(session)
    audit(session, "webhook_endpoint", row.id, "disabled", reason=reason[:500], cancelled=cancelled)
    return cancelled


def get_delivery(session: Session, delivery_id: str) -> WebhookDelivery:
    row = session.get(WebhookDelivery, delivery_id) if delivery_id and "\x00" not in delivery_id else None
    if row is None:
        raise NotFound(f"no webhook delivery {delivery_id}")
    return row


def redeliver(session: Session, delivery_id: str) -> WebhookDelivery:
    """Send the delivery again, whatever became of it: pending and due at once, with the same
    ``webhook-id``, for the worker's next round (an older pending delivery of the same entity to
    the same endpoint still goes first). 409 when its endpoint is disabled."""
    endpoint = get_endpoint(session, get_delivery(session, delivery_id).endpoint_id, lock=True)
    row = get_delivery(session, delivery_id)
    if not endpoint.is_active:
        raise EndpointDisabled(
            f"webhook endpoint {endpoint.id} is disabled ({endpoint.disabled_reason or 'no reason given'}); "
            "turn it on again (PATCH is_active: true) first"
        )
    now = clock.now()
    row.status, row.next_attempt_at, row.delivered_at, row.updated_at = "pending", now, None, now
    session.flush()
    audit(session, "webhook_delivery", row.id, "redelivery_requested", endpoint_id=endpoint.id)
    return row
