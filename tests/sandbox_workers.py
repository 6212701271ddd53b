"""Work for other processes in the sandbox concurrency tests (spawned: importable, top level)."""

from __future__ import annotations

from billfold.kit.money import Money
from billfold.providers import ProviderUnavailable
from billfold.providers.sandbox import SandboxProvider


def charge_once(state_path: str, key: str, token: str = "tok_sandbox_visa") -> str:
    """Charge $10 with ``key`` in this process; the charge id (retrying a timeout with the same key)."""
    sandbox = SandboxProvider("sandbox", {"state_path": state_path})
    try:
        try:
            return sandbox.charge(amount=Money(1000, "USD"), token=token, idempotency_key=key).id
        except ProviderUnavailable:
            return sandbox.charge(amount=Money(1000, "USD"), token=token, idempotency_key=key).id
    finally:
        sandbox.close()
