"""The ORM models, one module per section of the spec. Importing this package registers every
table on ``Base.metadata``."""

from billfold.kit.db.base import Base
from billfold.models.accounts import Address, Organization, OrganizationUser, User
from billfold.models.analytics import AnalyticsCohortMonth, AnalyticsEvent, AnalyticsMrrMover, AnalyticsSnapshot, UserCohort
from billfold.models.auth import ApiKey, AuthChallenge, AuthSession, OrganizationInvitation, SignInThrottle
from billfold.models.billing import CreditNote, InvoiceLine, NumberSeries, Refund
from billfold.models.catalog import Product, ProductCategory
from billfold.models.clock import BillingClock
from billfold.models.idempotency import IdempotencyKey
from billfold.models.instance import InstanceMark
from billfold.models.invoices import Invoice
from billfold.models.mail import OutboxEmail
from billfold.models.memberships import MembershipType, UserMembership
from billfold.models.notify import WebhookDelivery, WebhookDeliveryAttempt, WebhookEndpoint
from billfold.models.orders import Order, OrderItem
from billfold.models.payments import Payment
from billfold.models.providers import PaymentMethod, PaymentProvider, ProviderCustomer
from billfold.models.routing import RoutingRule
from billfold.models.subscriptions import Subscription, SubscriptionBilling
from billfold.models.webhooks import PaymentEvent, PaymentWebhook

# Which rows' changes move the change marks that kept answers are checked against (kit.db.changes).
from billfold.models import changes as _changes  # noqa: E402,F401

__all__ = [
    "ApiKey",
    "AuthChallenge",
    "AuthSession",
    "SignInThrottle",
    "Address",
    "AnalyticsCohortMonth",
    "AnalyticsEvent",
    "AnalyticsMrrMover",
    "AnalyticsSnapshot",
    "Base",
    "BillingClock",
    "IdempotencyKey",
    "InstanceMark",
    "Invoice",
    "CreditNote",
    "InvoiceLine",
    "MembershipType",
    "Order",
    "OrderItem",
    "Organization",
    "NumberSeries",
    "OrganizationInvitation",
    "OrganizationUser",
    "OutboxEmail",
    "Payment",
    "PaymentEvent",
    "PaymentMethod",
    "PaymentProvider",
    "PaymentWebhook",
    "Product",
    "ProductCategory",
    "ProviderCustomer",
    "Refund",
    "RoutingRule",
    "Subscription",
    "SubscriptionBilling",
    "User",
    "UserCohort",
    "UserMembership",
    "WebhookDelivery",
    "WebhookDeliveryAttempt",
    "WebhookEndpoint",
]
