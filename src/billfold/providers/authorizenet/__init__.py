"""Authorize.net over plain httpx against its JSON API (see docs/providers.md#authorizenet)."""

from billfold.providers.authorizenet.provider import (
    DEFAULT_API_BASE,
    EVENT_TYPES,
    TOKEN_PATTERN,
    AuthorizeNetProvider,
    opaque_data,
    opaque_token,
    short_reference,
    sign_webhook,
)

__all__ = [
    "DEFAULT_API_BASE", "EVENT_TYPES", "TOKEN_PATTERN", "AuthorizeNetProvider", "opaque_data", "opaque_token", "short_reference",
    "sign_webhook",
]
