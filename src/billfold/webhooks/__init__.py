"""Webhooks: events the payment providers send us (``inbound``), received over ``api``."""
