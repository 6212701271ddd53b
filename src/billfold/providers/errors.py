"""The errors every provider adapter raises, whatever the provider said underneath.

A decline and a failed customer authentication are final answers from the provider: the call
raises ``Declined``, which carries the failed charge so the caller can record it. "Requires
action" (3-D Secure) is not an error: it is a charge status, since the flow goes on with
``confirm``. ``ProviderUnavailable`` means *we do not know* whether the call took effect; the
caller retries with the same idempotency key and gets the first outcome, never a second charge.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

from billfold.kit.errors import BillfoldError, InvalidInput

if TYPE_CHECKING:
    from billfold.providers.base import ChargeResult


class ProviderError(BillfoldError):
    """Base of the errors a provider adapter raises on purpose."""

    status = 502
    code = "provider_error"
    title = "Payment provider error"

    def __init__(self, detail: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(detail, **extra)
        if code is not None:
            self.code = code  # a finer, still stable, code for this instance


class DeclineCode(StrEnum):
    """Why a charge was declined, as one normalised reason."""

    GENERIC_DECLINE = "generic_decline"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    EXPIRED_CARD = "expired_card"
    INCORRECT_CVC = "incorrect_cvc"
    LOST_CARD = "lost_card"
    STOLEN_CARD = "stolen_card"
    FRAUDULENT = "fraudulent"
    CARD_NOT_SUPPORTED = "card_not_supported"
    AUTHENTICATION_REQUIRED = "authentication_required"
    AUTHENTICATION_FAILED = "authentication_failed"
    PROCESSING_ERROR = "processing_error"


# Retrying these with the same method can never succeed (and card networks penalise merchants
# who try): the customer must give another method.
HARD_DECLINES = frozenset(
    {
        DeclineCode.EXPIRED_CARD,
        DeclineCode.LOST_CARD,
        DeclineCode.STOLEN_CARD,
        DeclineCode.FRAUDULENT,
        DeclineCode.CARD_NOT_SUPPORTED,
        DeclineCode.INCORRECT_CVC,
    }
)


class Declined(ProviderError):
    """The provider refused the payment. Final for this idempotency key.

    ``decline_code`` says why; ``hard`` says whether retrying the same method is pointless (a
    soft decline such as insufficient funds may succeed on a later dunning attempt).
    ``charge`` is the failed charge as the provider recorded it, when it recorded one.
    """

    status = 402
    code = "payment_declined"
    title = "Payment declined"

    def __init__(self, detail: str, decline_code: DeclineCode | str, *, charge: ChargeResult | None = None) -> None:
        decline = _decline_code(decline_code)
        hard = decline in HARD_DECLINES
        super().__init__(
            detail,
            decline_code=str(decline),
            hard_decline=hard,
            charge_id=charge.id if charge is not None else None,
        )
        self.decline_code = decline
        self.hard = hard
        self.charge = charge


def _decline_code(value: DeclineCode | str) -> DeclineCode:
    try:
        return DeclineCode(value)
    except ValueError:
        return DeclineCode.GENERIC_DECLINE


class ProviderUnavailable(ProviderError):
    """Network failure, timeout or a 5xx: the outcome is unknown. Retry with the SAME key."""

    status = 503
    code = "provider_unavailable"
    title = "Payment provider unavailable"
    retry_after = 2

    def __init__(self, detail: str, *, code: str | None = None, sent: bool = True, **extra: Any) -> None:
        super().__init__(detail, code=code, **extra)
        # False only when the request certainly never reached the provider (the connection was
        # refused, or could not be made): nothing can have happened there, so the payment may go
        # to another provider at once. True (the default) means the outcome is unknown.
        self.sent = sent


class InvalidProviderRequest(ProviderError):
    """The provider refused the request itself (bad parameters, wrong state, reused key)."""

    status = 400
    code = "invalid_provider_request"
    title = "Invalid request to the payment provider"


class InvalidToken(InvalidInput):
    """A payment token that does not have the provider's token shape; refused before any call."""

    code = "invalid_token"
    title = "Not a payment token of this provider"


class IdempotencyMismatch(InvalidProviderRequest):
    """An idempotency key was reused with other parameters."""

    status = 409
    code = "idempotency_mismatch"
    title = "Idempotency key reused with other parameters"


class ProviderObjectNotFound(InvalidProviderRequest):
    """The provider has no customer, method, charge or refund with this id."""

    status = 404
    code = "provider_object_not_found"
    title = "Not found at the payment provider"


class NotSupported(ProviderError):
    """The provider lacks the capability; refused before any call is made."""

    status = 422
    code = "not_supported"
    title = "Not supported by this payment provider"


class WebhookSignatureInvalid(ProviderError):
    """A webhook's signature, or its timestamp, did not verify."""

    status = 400
    code = "webhook_signature_invalid"
    title = "Webhook signature invalid"
