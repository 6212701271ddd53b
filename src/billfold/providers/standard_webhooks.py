"""Standard Webhooks signatures (https://www.standardwebhooks.com), made by the ``standardwebhooks``
package.

Headers: ``webhook-id``, ``webhook-timestamp`` (unix seconds), ``webhook-signature`` (a
space-separated list of ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, so a secret can be
rolled). The secret is ``whsec_`` followed by base64 of the key bytes.

The package's ``Webhook.sign`` makes every signature, ours and the one a delivery is checked
against. Its ``Webhook.verify`` is not used: it holds the timestamp against the machine's own
time, read inside the package, with no way to give it another, while Billfold's time is ``billfold.kit.clock``
(moved by tests, and running ahead of real time on the sandbox billing clock), and it lets a
malformed header escape as ``ValueError``. So ``verify`` checks the headers and the 5-minute window
itself, against ``clock.now()``, then compares each offered signature with the package's, in
constant time. The package is not told the secret until ``secret_key`` has checked it (it would
take any base64 and any length).
"""

from __future__ import annotations

import base64
import functools
import binascii
import hmac
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone

from standardwebhooks import Webhook

from billfold.kit import clock
from billfold.kit.errors import ConfigurationError
from billfold.providers.errors import WebhookSignatureInvalid

TOLERANCE = timedelta(minutes=5)
SECRET_PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a ``whsec_…`` secret."""
    encoded = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ConfigurationError("a webhook secret must be 'whsec_' followed by base64") from error
    if len(key) < 16:
        raise ConfigurationError("a webhook secret must hold at least 16 bytes of key")
    return key


def make_secret(key: bytes) -> str:
    return SECRET_PREFIX + base64.b64encode(key).decode()


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature over ``id.timestamp.body`` (a UTF-8 body, as JSON is)."""
    at = datetime.fromtimestamp(timestamp, timezone.utc)
    return _webhook(secret).sign(msg_id, at, body.decode("utf-8"))


@functools.lru_cache(maxsize=256)
def _webhook(secret: str) -> Webhook:
    return Webhook(secret_key(secret))  # a provider signs every delivery with the same secret


def sign(secret: str, msg_id: str, body: bytes, at: datetime | None = None) -> dict[str, str]:
    """The three headers for delivering ``body`` as message ``msg_id`` now (or ``at``)."""
    timestamp = int((at or clock.now()).timestamp())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, msg_id, timestamp, body),
    }


def verify(secret: str, body: bytes, headers: Mapping[str, str], tolerance: timedelta = TOLERANCE) -> str:
    """Check the signature over the raw ``body`` and that the timestamp is within ``tolerance``
    of ``clock.now()`` (either way); returns the message id or raises WebhookSignatureInvalid."""
    lower = {key.lower(): value for key, value in headers.items()}
    msg_id, stamp, signatures = (lower.get(name) for name in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not msg_id or not stamp or not signatures:
        raise WebhookSignatureInvalid("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookSignatureInvalid("webhook-timestamp is not a whole number of seconds") from None
    now = clock.now().timestamp()
    if abs(now - timestamp) > tolerance.total_seconds():
        raise WebhookSignatureInvalid("webhook-timestamp is outside the tolerance window", code="webhook_timestamp_stale")
    try:
        expected = signature(secret, msg_id, timestamp, body).encode()
    except UnicodeDecodeError:
        raise WebhookSignatureInvalid("the webhook body is not UTF-8") from None
    for candidate in signatures.split():
        if candidate.startswith("v1,") and hmac.compare_digest(candidate.encode(), expected):
            return msg_id
    raise WebhookSignatureInvalid("no webhook signature matches")
