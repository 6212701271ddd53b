"""The worker's side of orders: checkout payments whose outcome nobody heard (the request crashed,
or the provider timed out) are settled by the payment engine, asking the provider what their key
made (``engine.ask``, see checkout.py), so an order charged at the provider is paid in our books
without waiting for the customer to come back."""

from __future__ import annotations

import logging
from datetime import timedelta

from billfold.kit.db import reading, transaction
from billfold.kit.errors import BillfoldError
from billfold.kit.sweeps import Context, sweep
from billfold.orders import checkout
from billfold.payments import engine
from billfold.payments.engine import Result

BATCH = 50
SYSTEM = "system"
log = logging.getLogger("billfold.orders")


@sweep("orders.settle_payments", every=timedelta(minutes=1))
def settle_unknown_order_payments(context: Context) -> int:
    """Order payments pending ``engine.STALE_AFTER`` whose outcome was not heard
    (``checkout.unknown_outcomes``): each settled by the provider's answer (paid, declined, or failed
    when no charge was made; one still waiting for the customer is stamped and asked again later).
    How many were settled; one the provider does not answer about stays for the next run."""
    # A plain read, no claim: settling is idempotent (each payment is locked while its answer is
    # recorded, and one recorded already is left alone), so two workers at once do no harm.
    with reading(context.sessions) as session:
        payment_ids = checkout.unknown_outcomes(session, BATCH)
    settled = 0
    for payment_id in payment_ids:
        try:
            outcome = engine.settle_charge(
                context.sessions, context.security, context.settings, payment_id, engine.ask, by=SYSTEM
            )
        except BillfoldError as error:  # the provider is switched off, or refused to look: try again later
            log.warning("order payment %s left pending: %s", payment_id, error.detail)
            continue
        except Exception as error:  # noqa: BLE001  (one payment must not hold back the others)
            log.warning("order payment %s left pending: %s: %s", payment_id, type(error).__name__, error)
            continue
        if outcome.result is Result.UNKNOWN:  # the provider did not answer: try again later
            detail = outcome.error.detail if isinstance(outcome.error, BillfoldError) else outcome.error
            log.warning("order payment %s left pending: %s", payment_id, detail)
            continue
        if outcome.result is Result.PENDING:  # still waiting for the customer: asked again later
            with transaction(context.sessions) as session:
                checkout.asked(session, payment_id)
            continue
        settled += 1
    return settled
