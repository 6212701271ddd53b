"""Stripe's webhook signature: ``Stripe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>``.

The HMAC key is the endpoint's secret as text (``whsec_…``, used as is), over ``"<t>." + raw body``.
Several ``v1`` entries may be present while a secret is rolled. The SDK's own verifier is not used:
it holds the timestamp against the machine's time, read inside the SDK, while Billfold's time is
``billfold.kit.clock`` (moved by tests). So the window is checked here against ``clock.now()``,
both ways, and each offered signature is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime, timedelta

from billfold.kit import clock
from billfold.providers.errors import WebhookSignatureInvalid

HEADER = "stripe-signature"
TOLERANCE = timedelta(seconds=300)  # Stripe's default tolerance


def compute(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, at: datetime | None = None) -> dict[str, str]:
    """The header Stripe would send with ``body`` now (or ``at``): for tests and replays."""
    timestamp = int((at or clock.now()).timestamp())
    return {"Stripe-Signature": f"t={timestamp},v1={compute(secret, timestamp, body)}"}


def verify(secret: str, body: bytes, headers: Mapping[str, str], tolerance: timedelta = TOLERANCE) -> int:
    """Check ``Stripe-Signature`` over the raw ``body``; the signed timestamp, or WebhookSignatureInvalid."""
    value = next((v for k, v in headers.items() if k.lower() == HEADER), None)
    if not value:
        raise WebhookSignatureInvalid("missing Stripe-Signature header")
    stamps: list[str] = []
    offered: list[str] = []
    for item in value.split(","):
        name, _, part = item.strip().partition("=")
        if name == "t":
            stamps.append(part)
        elif name == "v1":
            offered.append(part)
    if len(stamps) != 1 or not offered:
        raise WebhookSignatureInvalid("Stripe-Signature needs one t= and at least one v1= entry")
    try:
        timestamp = int(stamps[0])
    except ValueError:
        raise WebhookSignatureInvalid("the Stripe-Signature timestamp is not a whole number of seconds") from None
    if abs(clock.now().timestamp() - timestamp) > tolerance.total_seconds():
        raise WebhookSignatureInvalid("the Stripe-Signature timestamp is outside the tolerance window",
                                      code="webhook_timestamp_stale")
    expected = compute(secret, timestamp, body).encode()
    if not any(hmac.compare_digest(candidate.encode(), expected) for candidate in offered):
        raise WebhookSignatureInvalid("no Stripe-Signature v1 signature matches")
    return timestamp
