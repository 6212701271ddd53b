"""PayPal (REST: Orders v2, Payments v2, Vault v3, webhook verification) over httpx."""

from billfold.providers.paypal.provider import PayPalProvider

__all__ = ["PayPalProvider"]
