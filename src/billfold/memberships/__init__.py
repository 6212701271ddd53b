"""Memberships, add-ons, entitlements. Importing the package registers its reaction to paid
orders (``orders.events.on_paid``) and its sweep (``memberships.expire``)."""

from billfold.memberships import service as service  # noqa: F401  (registers grant_for_order)
from billfold.memberships import sweeps as sweeps  # noqa: F401  (registers memberships.expire)
from billfold.memberships.entitlements import Entitlement, entitlement, may_use
from billfold.memberships.service import grant_for_subscription

__all__ = ["Entitlement", "entitlement", "grant_for_subscription", "may_use"]
