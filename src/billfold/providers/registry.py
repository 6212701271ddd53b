"""Which adapter serves which provider: kinds registered by name, built from a plain config dict.

A ``payment_providers`` row has an id (``'sandbox'``, ``'stripe'``, ``'stripe_eu'``) and a
config JSON. The adapter's kind is ``config["kind"]`` when given, else the id itself, so the
common one-row-per-provider case needs no extra setting and two Stripe accounts can coexist.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from typing import Any

from billfold.kit.errors import ConfigurationError
from billfold.providers.base import ProviderAdapter

AdapterFactory = Callable[[str, Mapping[str, Any]], ProviderAdapter]
"""``factory(provider_id, config) -> adapter``."""

# Built-in kinds are imported on first use, so a missing optional SDK breaks only its own kind.
_BUILT_IN: dict[str, str] = {
    "sandbox": "billfold.providers.sandbox:SandboxProvider",
    "paypal": "billfold.providers.paypal:PayPalProvider",
    "authorizenet": "billfold.providers.authorizenet:AuthorizeNetProvider",
    "stripe": "billfold.providers.stripe:StripeProvider",
}

_factories: dict[str, AdapterFactory] = {}
_lock = threading.Lock()


def register(kind: str, factory: AdapterFactory, *, replace: bool = False) -> None:
    """Make ``kind`` buildable by ``adapter_for``. Registering a taken kind needs ``replace=True``."""
    if not kind or not kind.replace("_", "").isalnum() or kind != kind.lower():
        raise ValueError(f"provider kind {kind!r} must be lower-case letters, digits and underscores")
    with _lock:
        if kind in _factories and not replace:
            raise ValueError(f"provider kind {kind!r} is already registered")
        _factories[kind] = factory


def unregister(kind: str) -> None:
    with _lock:
        _factories.pop(kind, None)


def registered_kinds() -> list[str]:
    """Every kind ``adapter_for`` can build, built-in or registered."""
    with _lock:
        return sorted(set(_factories) | set(_BUILT_IN))


def kind_of(provider_id: str, config: Mapping[str, Any] | None) -> str:
    kind = (config or {}).get("kind") or provider_id
    if not isinstance(kind, str):
        raise ConfigurationError(f"provider {provider_id!r}: config 'kind' must be text")
    return kind


def adapter_for(provider_id: str, config: Mapping[str, Any] | None = None, *, kind: str | None = None) -> ProviderAdapter:
    """A new adapter for the provider row ``provider_id`` with its ``config`` dict."""
    kind = kind or kind_of(provider_id, config)
    return _factory(kind, provider_id)(provider_id, dict(config or {}))


def _factory(kind: str, provider_id: str) -> AdapterFactory:
    with _lock:
        factory = _factories.get(kind)
    if factory is not None:
        return factory
    target = _BUILT_IN.get(kind)
    if target is None:
        raise ConfigurationError(
            f"provider {provider_id!r} is of kind {kind!r}, which Billfold does not know; "
            f"known kinds: {', '.join(registered_kinds())}"
        )
    module_name, _, attribute = target.partition(":")
    built_in: AdapterFactory = getattr(importlib.import_module(module_name), attribute)
    return built_in
