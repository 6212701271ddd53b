"""The ``webhooks.deliver`` sweep: due deliveries POSTed to their endpoints as JSON, signed with
the Standard Webhooks scheme (``webhook-id`` = the event's id, the same on every attempt,
``webhook-timestamp`` from ``billfold.kit.clock``, ``webhook-signature``).

A round claims due deliveries (``claim_batch``: FOR UPDATE SKIP LOCKED) and leases them, then
sends them with no transaction open, then records each attempt in a transaction of its own:

- in order per entity: a delivery is not due while an older one about the same entity
  (``entity_key``) to the same endpoint is still pending;
- the URL is checked again (``targets.check``) and the request goes to the address checked, with
  the host's name in ``Host`` and TLS SNI, so a name re-pointed to a private address is refused;
  no redirect is followed, proxies from the environment are not used, and only the first KB of
  the answer is read;
- 2xx: delivered. 410 Gone: the endpoint is disabled and its pending deliveries cancelled. Any
  other answer, or none: tried again after ``SCHEDULE`` (about three days in all), then ``failed``.
  A delivery given up when the endpoint has answered nothing but failures since before that
  delivery's first attempt disables the endpoint, and every admin is emailed (the mail outbox).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from billfold import __version__, mailer
from billfold.kit import clock
from billfold.kit.db import transaction
from billfold.kit.db.dialects import for_update
from billfold.kit.db.types import UTCDateTime
from billfold.kit.sweeps import Context, backoff, claim_batch, sweep
from billfold.models import User
from billfold.models.notify import WebhookDelivery, WebhookDeliveryAttempt, WebhookEndpoint
from billfold.notify import endpoints, targets
from billfold.providers import standard_webhooks

log = logging.getLogger("billfold.notify")

SCHEDULE = (
    timedelta(seconds=30), timedelta(minutes=2), timedelta(minutes=10), timedelta(minutes=30), timedelta(hours=1),
    timedelta(hours=3), timedelta(hours=6), timedelta(hours=12), timedelta(hours=24), timedelta(hours=24),
)
"""The wait after each failed attempt in turn: 70 h 42 min 30 s in all, then the delivery is failed."""
MAX_ATTEMPTS = len(SCHEDULE) + 1
BATCH = 20
LEASE = timedelta(minutes=10)  # a claimed delivery is not claimed again before this, should its worker die
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
EXCERPT = 1024  # bytes of the answer kept
USER_AGENT = f"Billfold-Webhooks/{__version__}"


@dataclass(frozen=True)
class Job:
    delivery_id: str
    endpoint_id: str
    url: str
    secret: str
    event_id: str
    body: bytes


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None
    latency_ms: int
    excerpt: str | None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def body_of(payload: object) -> bytes:
    """The JSON body: the same bytes on every attempt."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def due(now: datetime) -> sa.Select[tuple[WebhookDelivery]]:
    older = aliased(WebhookDelivery)
    held = (
        sa.select(older.id)
        .where(
            older.endpoint_id == WebhookDelivery.endpoint_id, older.entity_key == WebhookDelivery.entity_key,
            older.status == "pending", older.id < WebhookDelivery.id,
        )
        .exists()
    )
    return (
        sa.select(WebhookDelivery)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now, ~held)
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
    )


@sweep("webhooks.deliver", every=timedelta(seconds=5))
def deliver_webhooks(context: Context, *, limit: int = BATCH) -> int:
    """The due deliveries, each POSTed to its endpoint; how many were tried."""
    now = clock.now()
    jobs: list[Job] = []
    with transaction(context.sessions) as session:
        claimed = claim_batch(session, due(now), limit)
        if not claimed:
            return 0
        hooks = {
            row.id: row for row in session.scalars(
                sa.select(WebhookEndpoint).where(WebhookEndpoint.id.in_({d.endpoint_id for d in claimed}))
            )
        }
        for row in claimed:
            row.next_attempt_at = now + LEASE
            endpoint = hooks[row.endpoint_id]
            try:
                secret = endpoints.open_secret(context.security, endpoint.id, endpoint.secret)
            except Exception:  # noqa: BLE001  (another installation's key: nothing is signed until the secret is rotated)
                log.error("webhook endpoint %s: its secret cannot be decrypted with this installation's key", endpoint.id)
                row.next_attempt_at = now + backoff(max(row.attempts, 1), SCHEDULE)
                continue
            jobs.append(Job(row.id, endpoint.id, endpoint.url, secret, row.event_id, body_of(row.payload)))
    started, tried = time.monotonic(), 0
    for job in jobs:
        if time.monotonic() - started > LEASE.total_seconds() / 2:
            _release(context, [j.delivery_id for j in jobs[tried:]])  # slow endpoints: the rest wait for the next round
            break
        attempted_at = clock.now()
        outcome = send(context, job)
        try:
            _record(context, job, attempted_at, outcome)
        except Exception as error:  # noqa: BLE001  (the lease runs out and the delivery is tried again)
            log.error("webhook delivery %s: the attempt could not be recorded: %s", job.delivery_id, error)
        tried += 1
    return tried


def send(context: Context, job: Job) -> Outcome:
    """POST the job's body to its endpoint, signed; the answer, or why there was none. Never raises."""
    started = time.monotonic()

    def took() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        target = targets.check(job.url, context.settings.webhook_targets_allow)
    except targets.TargetRefused as refused:
        return Outcome(None, f"refused: {refused.detail}", took(), None)
    try:
        url = httpx.URL(job.url)
        pinned = url.copy_with(host=str(target.addresses[0]))
        headers = {
            **standard_webhooks.sign(job.secret, job.event_id, job.body),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "host": url.netloc.decode("ascii"),
        }
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        with httpx.Client(timeout=TIMEOUT, follow_redirects=False, trust_env=False) as client:
            request = client.build_request("POST", pinned, content=job.body, headers=headers, extensions=extensions)
            response = client.send(request, stream=True)
            try:
                read = b""
                for chunk in response.iter_bytes():
                    read += chunk
                    if len(read) >= EXCERPT:
                        break
            finally:
                response.close()
    except httpx.TimeoutException as error:
        return Outcome(None, f"timed out ({type(error).__name__})", took(), None)
    except httpx.ConnectError as error:
        return Outcome(None, f"could not connect: {error}"[:1000], took(), None)
    except Exception as error:  # noqa: BLE001  (whatever went wrong is this attempt's outcome, never the round's)
        return Outcome(None, f"{type(error).__name__}: {error}"[:1000], took(), None)
    excerpt = read[:EXCERPT].decode("utf-8", errors="replace")
    return Outcome(response.status_code, None, took(), excerpt)


def _release(context: Context, delivery_ids: list[str]) -> None:
    with transaction(context.sessions) as session:
        session.execute(
            sa.update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(delivery_ids), WebhookDelivery.status == "pending")
            .values(next_attempt_at=clock.now())
        )


def _record(context: Context, job: Job, attempted_at: datetime, outcome: Outcome) -> None:
    with transaction(context.sessions) as session:
        # The endpoint first, locked: every recorder of its deliveries takes the same locks in the
        # same order (endpoint, then delivery), so two workers recording side by side never deadlock.
        endpoint = session.scalars(
            for_update(sa.select(WebhookEndpoint).where(WebhookEndpoint.id == job.endpoint_id), session)
        ).one_or_none()
        delivery = session.scalars(
            for_update(sa.select(WebhookDelivery).where(WebhookDelivery.id == job.delivery_id), session)
        ).one_or_none()
        if delivery is None or endpoint is None:  # deleted with its endpoint while it was being sent
            return
        session.add(
            WebhookDeliveryAttempt(
                delivery_id=job.delivery_id, attempted_at=attempted_at, status_code=outcome.status_code,
                error=outcome.error, latency_ms=outcome.latency_ms, response_excerpt=outcome.excerpt,
            )
        )
        now = clock.now()
        delivery.attempts += 1
        delivery.last_status_code, delivery.last_error, delivery.updated_at = outcome.status_code, outcome.error, now
        if delivery.status != "pending":  # cancelled (its endpoint was disabled) while it was being sent
            return
        if outcome.delivered:
            delivery.status, delivery.delivered_at, delivery.next_attempt_at = "delivered", now, None
            session.execute(
                sa.update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint.id)
                .values(consecutive_failures=0, failing_since=None)
                .execution_options(synchronize_session=False)
            )
            return
        session.execute(
            sa.update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint.id)
            .values(
                consecutive_failures=WebhookEndpoint.consecutive_failures + 1,
                failing_since=sa.func.coalesce(WebhookEndpoint.failing_since, sa.literal(attempted_at, UTCDateTime())),
            )
            .execution_options(synchronize_session=False)
        )
        session.refresh(endpoint)
        if outcome.status_code == 410:
            delivery.status, delivery.next_attempt_at = "failed", None
            if endpoint.is_active:
                endpoints.disable(session, endpoint, f"the endpoint answered 410 Gone on {attempted_at:%Y-%m-%d %H:%M:%S} UTC")
            return
        if delivery.attempts < MAX_ATTEMPTS:
            delivery.next_attempt_at = now + backoff(delivery.attempts, SCHEDULE)
            return
        delivery.status, delivery.next_attempt_at = "failed", None
        first = session.scalars(
            sa.select(sa.func.min(WebhookDeliveryAttempt.attempted_at)).where(WebhookDeliveryAttempt.delivery_id == delivery.id)
        ).one()
        if endpoint.is_active and endpoint.failing_since is not None and first is not None and endpoint.failing_since <= first:
            reason = (
                f"every attempt failed since {endpoint.failing_since:%Y-%m-%d %H:%M:%S} UTC "
                f"({endpoint.consecutive_failures} in a row); delivery {delivery.id} was given up"
            )
            endpoints.disable(session, endpoint, reason)
            tell_admins(session, endpoint, reason)


def tell_admins(session: Session, endpoint: WebhookEndpoint, reason: str) -> int:
    """Email every admin that ``endpoint`` was disabled; how many were written to."""
    addresses = session.scalars(sa.select(User.email).where(User.user_type == "admin").order_by(User.email)).all()
    base = mailer.public_url(session)
    for address in addresses:
        mailer.queue(session, mailer.Email(
            to=address,
            subject="A webhook endpoint was disabled",
            body=(
                f"Billfold stopped sending webhooks to {endpoint.url} (endpoint {endpoint.id}).\n\n"
                f"Why: {reason}.\n\n"
                "Its pending deliveries were cancelled. Once the endpoint answers again, turn it back on "
                f"(PATCH {base}/v1/webhook-endpoints/{endpoint.id} with is_active: true) and redeliver what it "
                f"missed (POST {base}/v1/webhook-deliveries/<id>/redeliver).\n"
            ),
        ))
    return len(addresses)


DELIVERIES_KEPT = timedelta(days=30)
"""How long a delivery that ended (delivered, failed or cancelled) stays listed, with its attempts,
for an admin to look at or redeliver; ``purge`` deletes it after that."""

ENDED = ("delivered", "failed", "cancelled")


def purge(session: Session) -> int:
    """Delete the deliveries that ended more than ``DELIVERIES_KEPT`` ago, and their attempts (the
    foreign key cascades); how many deliveries went. A pending one is never deleted, however old."""
    deleted = session.execute(
        sa.delete(WebhookDelivery).where(
            WebhookDelivery.status.in_(ENDED), WebhookDelivery.updated_at <= clock.now() - DELIVERIES_KEPT
        )
    )
    return deleted.rowcount or 0


@sweep("webhooks.purge", every=timedelta(hours=1))
def purge_deliveries(context: Context) -> int:
    """``purge`` in a transaction of its own."""
    with transaction(context.sessions) as session:
        return purge(session)
