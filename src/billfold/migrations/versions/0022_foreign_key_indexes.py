"""Indexes on the foreign keys a sale, a renewal or a customer's lists read by: an order's items,
invoice and memberships; a subscription's payments and memberships; an organization's orders,
invoices and payments; a user's invoices and organizations; an owner's customer at a provider.
PostgreSQL and SQLite index no foreign key by themselves, so each of these reads scanned the table
(a sale read by them eight times: its PostgreSQL CPU grew with the tables, docs/performance.md
"The bare-app ceiling"). Not in the spec's indexes; docs/schema.md lists them.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

INDEXES = (
    ("idx_order_items_order_id", "order_items", "order_id", "fk_order_items_order_id_orders"),
    ("idx_invoices_order_id", "invoices", "order_id", "fk_invoices_order_id_orders"),
    ("idx_invoices_user_id", "invoices", "user_id", "fk_invoices_user_id_users"),
    ("idx_invoices_organization_id", "invoices", "organization_id", "fk_invoices_organization_id_organizations"),
    ("idx_user_memberships_order_id", "user_memberships", "order_id", "fk_user_memberships_order_id_orders"),
    ("idx_user_memberships_subscription_id", "user_memberships", "subscription_id",
     "fk_user_memberships_subscription_id_subscriptions"),
    ("idx_payments_subscription_id", "payments", "subscription_id", "fk_payments_subscription_id_subscriptions"),
    ("idx_payments_organization_id", "payments", "organization_id", "fk_payments_organization_id_organizations"),
    ("idx_orders_organization_id", "orders", "organization_id", "fk_orders_organization_id_organizations"),
    ("idx_organization_users_user_id", "organization_users", "user_id", "fk_organization_users_user_id_users"),
    ("idx_provider_customers_user_id", "provider_customers", "user_id", "fk_provider_customers_user_id_users"),
    ("idx_provider_customers_organization_id", "provider_customers", "organization_id",
     "fk_provider_customers_organization_id_organizations"),
)


def upgrade() -> None:
    # (MariaDB indexed each of these keys itself and drops its own index when ours comes.)
    for name, table, column, _ in INDEXES:
        op.create_index(name, table, [column])


def downgrade() -> None:
    # MariaDB refuses to drop our index while its foreign key needs one: its own comes back first.
    mariadb = op.get_bind().dialect.name in ("mysql", "mariadb")
    for name, table, column, foreign_key in reversed(INDEXES):
        if mariadb:
            op.create_index(foreign_key, table, [column])
        op.drop_index(name, table_name=table)
