"""The Stripe provider (``kind = "stripe"``): PaymentIntents through the official SDK."""

from billfold.providers.stripe.provider import API_VERSION, StripeProvider, stripe_capabilities

__all__ = ["API_VERSION", "StripeProvider", "stripe_capabilities"]
