"""Payment providers: one protocol, one adapter per provider (no database and no FastAPI in here).

- ``base``: the ``ProviderAdapter`` protocol, ``Capabilities`` and the normalised results.
- ``errors``: ``Declined``, ``ProviderUnavailable``, ``InvalidProviderRequest`` and the rest.
- ``registry``: ``register(kind, factory)`` and ``adapter_for(provider_id, config)``.
- ``sandbox``: the built-in provider with test tokens; ``standard_webhooks``: signing helpers.
"""

from billfold.providers.base import (
    Capabilities,
    ChargeResult,
    ChargeStatus,
    CustomerResult,
    PaymentMethodResult,
    ProviderAdapter,
    RefundResult,
    RefundStatus,
    WebhookEvent,
)
from billfold.providers.errors import (
    Declined,
    DeclineCode,
    IdempotencyMismatch,
    InvalidProviderRequest,
    NotSupported,
    ProviderError,
    ProviderObjectNotFound,
    ProviderUnavailable,
    WebhookSignatureInvalid,
)
from billfold.providers.registry import adapter_for, register, registered_kinds

__all__ = [
    "Capabilities", "ChargeResult", "ChargeStatus", "CustomerResult", "DeclineCode", "Declined",
    "IdempotencyMismatch", "InvalidProviderRequest", "NotSupported", "PaymentMethodResult", "ProviderAdapter",
    "ProviderError", "ProviderObjectNotFound", "ProviderUnavailable", "RefundResult", "RefundStatus",
    "WebhookEvent", "WebhookSignatureInvalid", "adapter_for", "register", "registered_kinds",
]
