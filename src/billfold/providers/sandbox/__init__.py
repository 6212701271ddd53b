"""The sandbox payment provider: every protocol call, no network, outcomes chosen by test tokens."""

from billfold.providers.sandbox.provider import DEFAULT_WEBHOOK_SECRET, EVENT_TYPES, SandboxProvider, sandbox_capabilities
from billfold.providers.sandbox.tokens import TEST_CARDS, Behaviour, TestCard

__all__ = [
    "DEFAULT_WEBHOOK_SECRET", "EVENT_TYPES", "TEST_CARDS", "Behaviour", "SandboxProvider", "TestCard",
    "sandbox_capabilities",
]
