"""The ``memberships.expire`` sweep: stores where each membership stands (DESIGN.md rule 7).

Entitlement checks never wait for it (they compute from dates and the subscription), so it only
keeps ``user_memberships.status`` and ``end_date`` honest for lists, reports and webhooks: a fixed
membership past its end becomes ``expired``; one that follows a subscription becomes ``expired``
beyond the dunning grace, ``active`` again when the subscription pays, ``cancelled`` once a
cancelled subscription's paid period is over, and its ``end_date`` follows the paid period's end
(``entitlements.paid_until``).
Rows are claimed with ``FOR UPDATE SKIP LOCKED`` in batches, one transaction per batch; running it
again changes nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from billfold.kit import clock
from billfold.kit.db import transaction
from billfold.kit.sweeps import Context, sweep
from billfold.memberships import service

BATCH = 500


@sweep("memberships.expire", every=timedelta(minutes=1))
def expire(context: Context, *, at: datetime | None = None) -> int:
    """Bring every due membership up to date; how many changed."""
    at = at or clock.now()
    grace = timedelta(days=context.settings.membership_grace_days)
    done = 0
    for _ in range(10_000):  # a bound, not a limit anyone reaches: each batch changes what it claims
        with transaction(context.sessions) as session:
            changed = service.bring_up_to_date(session, at=at, grace=grace, limit=BATCH)
        done += changed
        if changed < BATCH:
            break
    return done
