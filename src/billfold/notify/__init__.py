"""Webhooks out, to the merchant's own systems (docs/operations.md#webhooks-out).

- ``outbox``: the audit trail's hook; an event worth telling becomes one ``webhook_deliveries``
  row per active endpoint that wants it, in the transaction of the change;
- ``targets``: which URLs may be called (no private, loopback or link-local address unless a setting allows it);
- ``endpoints``: registering, changing, rotating and listing (services: they never commit);
- ``delivery``: the ``webhooks.deliver`` sweep, signing (Standard Webhooks), retries, disabling;
- ``api``: the admin routes under /v1/webhook-endpoints and /v1/webhook-deliveries.
"""
