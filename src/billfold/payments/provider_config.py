"""``payment_providers`` rows, and the adapters that speak to them.

A row's ``config`` JSON holds the adapter's ``kind`` (``config["kind"]``; the spec has no column
for it) and its settings. Secret settings (see ``is_secret``) are encrypted at rest with
``kit.crypto.encrypt``, bound to the provider and the key, and are never shown again: the API
answers ``{"set": true}`` in their place. Services never commit; every change writes an audit row.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.accounts.security import Security
from billfold.audit import audit
from billfold.kit import crypto
from billfold.kit.errors import BillfoldError, Conflict, InvalidInput, NotFound
from billfold.models import PaymentProvider
from billfold.providers import registry
from billfold.providers.base import Capabilities, ProviderAdapter
from billfold.providers.errors import ProviderUnavailable

SECRET_KEYS = frozenset(
    {"secret_key", "api_key", "webhook_secret", "password", "client_secret", "transaction_key", "private_key"}
)
SECRET_SUFFIXES = ("_secret", "_key", "_password", "_token")
ENCRYPTED = "$encrypted"  # a stored secret: {"$encrypted": "v1.…"}
SHOWN_SECRET: dict[str, Any] = {"set": True}  # what the API shows in a secret's place
SANDBOX_STATE_FILE = "sandbox.sqlite3"


class ProviderExists(Conflict):
    code = "provider_exists"
    title = "A payment provider with this id exists"


class ProviderInactive(Conflict):
    code = "provider_inactive"
    title = "The payment provider is not active"


class ProviderMisconfigured(Conflict):
    code = "provider_misconfigured"
    title = "The payment provider's configuration does not work"


class NoProvider(Conflict):
    code = "no_provider"
    title = "No payment provider to use"


class InvalidProviderConfig(InvalidInput):
    code = "invalid_provider_config"
    title = "Invalid provider configuration"


def is_secret(key: str) -> bool:
    """Whether a config key holds a secret: a known name, or one ending in _secret, _key,
    _password or _token."""
    lowered = key.lower()
    return lowered in SECRET_KEYS or lowered.endswith(SECRET_SUFFIXES)


def _context(provider_id: str, key: str) -> str:
    return f"provider-config:{provider_id}:{key}"


def _sealed(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {ENCRYPTED} and isinstance(value[ENCRYPTED], str)


def seal_config(security: Security, provider_id: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The config as stored: every secret value encrypted (as JSON, so any JSON value works)."""
    stored: dict[str, Any] = {}
    for key, value in config.items():
        if is_secret(key) and value is not None and not _sealed(value):
            plaintext = json.dumps(value).encode()
            value = {ENCRYPTED: crypto.encrypt(security.keyring, plaintext, _context(provider_id, key))}
        stored[key] = value
    return stored


def open_config(security: Security, provider_id: str, stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config with its secrets decrypted, for the adapter only."""
    opened: dict[str, Any] = {}
    for key, value in (stored or {}).items():
        if _sealed(value):
            try:
                value = json.loads(crypto.decrypt(security.keyring, value[ENCRYPTED], _context(provider_id, key)))
            except Exception as error:  # wrong secret key, or a ciphertext moved from elsewhere
                raise ProviderMisconfigured(
                    f"provider {provider_id}: the secret {key!r} cannot be decrypted with this installation's "
                    "secret key; set it again",
                    provider_id=provider_id,
                ) from error
        opened[key] = value
    return opened


def shown_config(stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config as the API shows it: secrets replaced by ``{"set": true}``; no ``kind``."""
    return {
        key: dict(SHOWN_SECRET) if (_sealed(value) or (is_secret(key) and value is not None)) else value
        for key, value in (stored or {}).items()
        if key != "kind"
    }


def kind_of(provider: PaymentProvider) -> str:
    return registry.kind_of(provider.id, provider.config)


# Reading providers


def get_provider(session: Session, provider_id: str, *, field: str | None = None, lock: bool = False) -> PaymentProvider:
    """The provider row; NotFound (naming ``field`` when it came from a request body)."""
    provider = None
    if isinstance(provider_id, str) and provider_id and "\x00" not in provider_id:
        if lock:
            statement = sa.select(PaymentProvider).where(PaymentProvider.id == provider_id)
            statement = statement.with_for_update() if session.get_bind().dialect.name != "sqlite" else statement
            provider = session.scalars(statement).one_or_none()
        else:  # a transaction that has read the row already (routing, then its adapter) reads it once
            provider = session.get(PaymentProvider, provider_id)
    if provider is None:
        detail = f"no payment provider {provider_id}"
        raise NotFound(detail, **({"errors": [{"field": field, "message": detail}]} if field else {}))
    return provider


def active_provider(session: Session, provider_id: str, *, field: str | None = None) -> PaymentProvider:
    provider = get_provider(session, provider_id, field=field)
    if not provider.is_active:
        detail = f"the payment provider {provider_id} is not active"
        raise ProviderInactive(detail, **({"errors": [{"field": field, "message": detail}]} if field else {}))
    return provider


def default_provider(session: Session, security: Security | None = None) -> PaymentProvider:
    """The provider to use when a caller names none: ``BILLFOLD_DEFAULT_PROVIDER`` (default
    ``sandbox``) if it is active, else the only active provider; NoProvider otherwise."""
    from billfold.config import get_settings

    settings = security.settings if security is not None else get_settings()
    named = settings.default_provider
    provider = session.get(PaymentProvider, named) if named else None
    if provider is not None and provider.is_active:
        return provider
    active = session.scalars(sa.select(PaymentProvider).where(PaymentProvider.is_active.is_(True)).limit(2)).all()
    if len(active) == 1:
        return active[0]
    raise NoProvider(
        f"name a provider_id: the default provider {named!r} is not an active provider, and "
        f"{'several' if active else 'no'} other providers are active",
        errors=[{"field": "provider_id", "message": "required here"}],
    )


# Adapters


_cache: dict[tuple[str, str], tuple[str, ProviderAdapter]] = {}
_cache_lock = threading.Lock()


def _adapter_config(security: Security, provider: PaymentProvider) -> dict[str, Any]:
    config = open_config(security, provider.id, provider.config)
    if kind_of(provider) == "sandbox" and not config.get("state_path"):
        data_dir = Path(security.settings.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        config["state_path"] = str(data_dir.resolve() / SANDBOX_STATE_FILE)
    if kind_of(provider) == "sandbox":
        # The installation's default latency (a whole server slowed for a bench); a provider's own wins.
        settings = security.settings
        if settings.sandbox_latency_ms and "latency_ms" not in config:
            config["latency_ms"] = settings.sandbox_latency_ms
        if settings.sandbox_latency_jitter_ms and "latency_jitter_ms" not in config:
            config["latency_jitter_ms"] = settings.sandbox_latency_jitter_ms
    return config


def build_adapter(provider_id: str, config: Mapping[str, Any]) -> ProviderAdapter:
    """A new adapter, or ProviderMisconfigured (never a bare exception) if the config does not work."""
    try:
        return registry.adapter_for(provider_id, config)
    except (TimeoutError, ConnectionError, sqlite3.OperationalError) as error:
        if isinstance(error, sqlite3.OperationalError) and not _is_busy(error):
            raise ProviderMisconfigured(
                f"provider {provider_id}: the adapter refused its configuration ({error})", provider_id=provider_id
            ) from error
        # Busy for a moment (the sandbox's store locked by a burst): not a configuration fault,
        # and nothing was asked of the provider, so the same request can be retried.
        raise ProviderUnavailable(f"provider {provider_id} is busy; retry shortly", provider_id=provider_id) from error
    except BillfoldError as error:
        raise ProviderMisconfigured(f"provider {provider_id}: {error.detail}", provider_id=provider_id) from error
    except Exception as error:  # an adapter refusing its config: a bad secret, an unknown option
        raise ProviderMisconfigured(
            f"provider {provider_id}: the adapter refused its configuration ({type(error).__name__}: {error})",
            provider_id=provider_id,
        ) from error


def _is_busy(error: sqlite3.OperationalError) -> bool:
    text = str(error).lower()
    return "locked" in text or "busy" in text


def adapter_for_provider(
    session: Session, security: Security, provider_id: str, *, require_active: bool = True
) -> ProviderAdapter:
    """The adapter for an active provider row (409 ``provider_inactive`` otherwise), its secrets
    decrypted. ``require_active=False`` is for winding down: detaching a saved method of a provider
    that was switched off. Adapters are kept per process, keyed by the provider and a digest of its
    stored row, so a change takes effect at once."""
    provider = active_provider(session, provider_id) if require_active else get_provider(session, provider_id)
    settings = security.settings  # the sandbox's latency defaults are part of what an adapter is built from
    digest = hashlib.sha256(
        json.dumps([provider.config, str(provider.updated_at), settings.sandbox_latency_ms,
                    settings.sandbox_latency_jitter_ms], sort_keys=True, default=str).encode()
    ).hexdigest()
    key = (provider.id, _resolved(str(security.settings.data_dir)))
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None and cached[0] == digest:
            return cached[1]
    adapter = build_adapter(provider.id, _adapter_config(security, provider))
    with _cache_lock:
        _cache[key] = (digest, adapter)
    return adapter


@functools.lru_cache(maxsize=64)
def _resolved(data_dir: str) -> str:
    return str(Path(data_dir).resolve())


DELIVERY_CACHE_SECONDS = 1.0
"""How long a process verifies a provider's webhook deliveries with the adapter it built, without
reading the provider's row again. A change made in this process takes effect at once (``forget``);
one made in another process, within this long."""

_deliveries: dict[tuple[str, str, str], tuple[float, ProviderAdapter]] = {}


def adapter_for_delivery(session: Session, security: Security, provider_id: str) -> ProviderAdapter:
    """``adapter_for_provider`` for verifying a provider's webhook delivery (switched off or not),
    reusing the adapter built in the last ``DELIVERY_CACHE_SECONDS``: a provider delivering hundreds
    of events a second is read once a second, not once an event."""
    started = time.monotonic()  # an age, not a time of day: the one clock is for business time
    adapter = recent_delivery_adapter(security, provider_id)
    if adapter is None:
        adapter = adapter_for_provider(session, security, provider_id, require_active=False)
        with _cache_lock:
            _deliveries[_delivery_key(security, provider_id)] = (started, adapter)
    return adapter


def recent_delivery_adapter(security: Security, provider_id: str) -> ProviderAdapter | None:
    """The adapter ``adapter_for_delivery`` built in the last ``DELIVERY_CACHE_SECONDS``, if any:
    found without the database (the API's webhook door asks in the event loop)."""
    with _cache_lock:
        recent = _deliveries.get(_delivery_key(security, provider_id))
    if recent is not None and time.monotonic() - recent[0] < DELIVERY_CACHE_SECONDS:
        return recent[1]
    return None


def _delivery_key(security: Security, provider_id: str) -> tuple[str, str, str]:
    return provider_id, _resolved(str(security.settings.data_dir)), str(security.settings.database_url)


def forget(provider_id: str) -> None:
    """Drop what this process keeps of a provider's deliveries' adapter (its row changed)."""
    with _cache_lock:
        for key in [k for k in _deliveries if k[0] == provider_id]:
            del _deliveries[key]


def capabilities_of(kind: str, provider_id: str, config: Mapping[str, Any]) -> Capabilities:
    """The capabilities an adapter of ``kind`` would have with this (opened) config; built
    without the sandbox's state file, so checking a config touches nothing."""
    trial = {k: v for k, v in config.items() if k != "state_path"}
    adapter = build_adapter(provider_id, {**trial, "kind": kind})
    close = getattr(adapter, "close", None)
    if callable(close):
        close()
    return adapter.capabilities


# Changing providers


def _check_config(kind: str, config: Mapping[str, Any]) -> None:
    if "kind" in config:
        detail = "give the adapter's kind as the field `kind`, not inside config"
        raise InvalidProviderConfig(detail, errors=[{"field": "config.kind", "message": detail}])
    if kind not in registry.registered_kinds():
        detail = f"kind must be one of {', '.join(registry.registered_kinds())}"
        raise InvalidProviderConfig(detail, errors=[{"field": "kind", "message": detail}])
    if "state_path" in config and not isinstance(config["state_path"], str):
        detail = "state_path must be text: the path of the sandbox's state file"
        raise InvalidProviderConfig(detail, errors=[{"field": "config.state_path", "message": detail}])


def _refuse(error: ProviderMisconfigured) -> InvalidProviderConfig:
    return InvalidProviderConfig(error.detail, errors=[{"field": "config", "message": error.detail}])


def create_provider(session: Session, security: Security, fields: dict[str, Any]) -> PaymentProvider:
    """A new provider row. ``fields``: id, kind, display_name, picture, is_active,
    supports_subscriptions and supports_saved_methods (default: what the adapter can do), config."""
    provider_id, kind = fields["id"], fields["kind"]
    config = dict(fields.get("config") or {})
    _check_config(kind, config)
    if session.get(PaymentProvider, provider_id) is not None:
        raise ProviderExists(
            f"a payment provider {provider_id} exists already; change it with PATCH",
            errors=[{"field": "id", "message": "taken"}],
        )
    try:
        capabilities = capabilities_of(kind, provider_id, config)
    except ProviderMisconfigured as error:
        raise _refuse(error) from error
    provider = PaymentProvider(
        id=provider_id,
        display_name=fields["display_name"],
        picture=fields.get("picture"),
        is_active=fields.get("is_active", True),
        supports_saved_methods=_default(fields.get("supports_saved_methods"), capabilities.saved_methods),
        supports_subscriptions=_default(
            fields.get("supports_subscriptions"), capabilities.saved_methods and capabilities.off_session_charges
        ),
        config=seal_config(security, provider_id, {"kind": kind, **config}),
    )
    session.add(provider)
    session.flush()
    forget(provider.id)
    audit(session, "payment_provider", provider.id, "created", kind=kind, is_active=provider.is_active,
          config_keys=sorted(config))
    return provider


def _default(given: bool | None, default: bool) -> bool:
    return default if given is None else given


def update_provider(session: Session, security: Security, provider_id: str, changes: dict[str, Any]) -> PaymentProvider:
    """Change a provider. ``config`` is merged key by key: a key given replaces the stored value
    (a secret is encrypted again), a key given as null is removed, a key left out is kept."""
    provider = get_provider(session, provider_id, lock=True)
    changed: list[str] = []
    if "kind" in changes or "config" in changes:
        stored = dict(provider.config or {})
        kind = changes["kind"] if changes.get("kind") is not None else registry.kind_of(provider.id, stored)
        patch = dict(changes.get("config") or {})
        _check_config(kind, patch)
        merged = {k: v for k, v in stored.items() if k != "kind"}
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        try:
            capabilities_of(kind, provider.id, open_config(security, provider.id, merged))
        except ProviderMisconfigured as error:
            raise _refuse(error) from error
        new = seal_config(security, provider.id, {"kind": kind, **merged})
        if changes.get("kind") and changes["kind"] != registry.kind_of(provider.id, stored):
            changed.append("kind")
        if patch:
            changed += [f"config.{key}" for key in sorted(patch)]
        provider.config = new
    for field in ("display_name", "picture", "is_active", "supports_subscriptions", "supports_saved_methods"):
        if field in changes and getattr(provider, field) != changes[field]:
            if field != "picture" and changes[field] is None:
                continue
            setattr(provider, field, changes[field])
            changed.append(field)
    if changed:
        session.flush()
        forget(provider.id)
        audit(session, "payment_provider", provider.id, "updated", fields=changed, is_active=provider.is_active)
    return provider
