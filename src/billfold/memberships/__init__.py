"""Memberships, add-ons, entitlements. Its reactions to paid and refunded orders are attached by
``billfold.wiring.wire()``; importing the package registers its sweep (``memberships.expire``)."""

from billfold.memberships import sweeps as sweeps  # noqa: F401  (registers memberships.expire)
from billfold.memberships.entitlements import Entitlement, entitlement, may_use
from billfold.memberships.service import grant_for_subscription

__all__ = ["Entitlement", "entitlement", "grant_for_subscription", "may_use"]
