"""Typed errors: one class per kind of failure, each with its HTTP status and a stable code.

The API turns a ``BillfoldError`` into an RFC 9457 problem document; the CLI prints its
message on one line and exits non-zero. Nothing else should need to know how to report it.
"""

from __future__ import annotations

from typing import Any


class BillfoldError(Exception):
    """Base of every error Billfold raises on purpose."""

    status: int = 400
    code: str = "bad_request"
    title: str = "Bad request"
    # Seconds after which a retry may succeed: sent as the Retry-After header (every 503 and 429).
    retry_after: int | None = None

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def retry_in(self) -> int | None:
        """The Retry-After of the answer: ``retry_after``, and a second for any 503 without one."""
        return self.retry_after or (1 if self.status == 503 else None)

    def to_problem(self) -> dict[str, Any]:
        """The RFC 9457 problem document for this error."""
        return {
            **self.extra,  # never over the standard members (an extra "status" would break the document)
            "type": f"https://billfold.dev/problems/{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }


class InvalidInput(BillfoldError):
    status = 422
    code = "invalid_input"
    title = "Invalid input"


class UnknownCurrency(InvalidInput):
    code = "unknown_currency"
    title = "Unknown currency"


class CurrencyMismatch(InvalidInput):
    code = "currency_mismatch"
    title = "Currencies do not match"


class InvalidAmount(InvalidInput):
    code = "invalid_amount"
    title = "Invalid amount"


class NotFound(BillfoldError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(BillfoldError):
    status = 409
    code = "conflict"
    title = "Conflict"


class ConfigurationError(BillfoldError):
    """The operator's settings are wrong (a malformed database URL, an unknown driver)."""

    status = 500
    code = "configuration_error"
    title = "Configuration error"


class DatabaseUnavailable(BillfoldError):
    """The database cannot be reached, or is too busy to answer now (a full connection pool, a
    lock or deadlock timeout): nothing was done, and the same request may be retried."""

    status = 503
    code = "database_unavailable"
    title = "Database unavailable"
    retry_after = 1


class RequestTooLarge(BillfoldError):
    """A request body over the ``max_request_bytes`` setting."""

    status = 413
    code = "request_too_large"
    title = "Request too large"


class Unauthorized(BillfoldError):
    """Not signed in, or the credentials are wrong."""

    status = 401
    code = "unauthorized"
    title = "Unauthorized"


class Forbidden(BillfoldError):
    """Signed in, but not allowed to do this."""

    status = 403
    code = "forbidden"
    title = "Forbidden"


class TooManyRequests(BillfoldError):
    status = 429
    code = "too_many_requests"
    title = "Too many requests"

    def __init__(self, detail: str, retry_after: int, **extra: object) -> None:
        super().__init__(detail, retry_after=retry_after, **extra)
        self.retry_after = retry_after
