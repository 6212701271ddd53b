"""The spec's schema: all 21 tables, their constraints and recommended indexes, and the triggers
that keep ``updated_at`` current and enforce on MariaDB the CHECKs it cannot express.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Tables with an updated_at column, in creation order.
TOUCHED_TABLES = (
    "users",
    "organizations",
    "organization_users",
    "addresses",
    "payment_providers",
    "provider_customers",
    "payment_methods",
    "product_categories",
    "products",
    "orders",
    "subscriptions",
    "payments",
    "invoices",
    "membership_types",
    "user_memberships",
    "analytics_snapshots",
)

PG_NOW = "date_trunc('second', timezone('UTC', CURRENT_TIMESTAMP))"
MYSQL_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    mysql = dialect in ("mysql", "mariadb")
    now = sa.text(PG_NOW if dialect == "postgresql" else "CURRENT_TIMESTAMP")
    now_on_update = sa.text("CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP") if mysql else now
    false, true, zero = sa.false(), sa.true(), sa.text("0")

    def s(length: int) -> sa.String:
        return sa.String(length)

    def key(name: str = "id") -> sa.Column:
        return sa.Column(name, s(255), primary_key=True)

    def ref(name: str, target: str, ondelete: str, nullable: bool = True, length: int = 255) -> sa.Column:
        return sa.Column(name, s(length), sa.ForeignKey(target, ondelete=ondelete), nullable=nullable)

    def created() -> sa.Column:
        return sa.Column("created_at", sa.TIMESTAMP(), nullable=False, server_default=now)

    def updated() -> sa.Column:
        return sa.Column("updated_at", sa.TIMESTAMP(), nullable=False, server_default=now_on_update)

    def owner_check(*, mariadb_needs_trigger: bool = False) -> list[sa.CheckConstraint]:
        if mysql and mariadb_needs_trigger:
            return []
        return [sa.CheckConstraint("user_id IS NOT NULL OR organization_id IS NOT NULL", name="owner")]

    def table(name: str, *items: object) -> None:
        op.create_table(name, *items, **MYSQL_OPTIONS)

    # --- Core tables -------------------------------------------------------------------------
    table(
        "users",
        key(),
        sa.Column("name", s(255), nullable=False),
        sa.Column("last_name", s(255), nullable=False),
        sa.Column("email", s(255), nullable=False),
        sa.Column("user_type", s(255), nullable=False),
        sa.Column("picture", sa.Text()),
        sa.Column("user_name", s(255)),
        sa.Column("password_hash", sa.Text()),
        sa.Column("salt", s(255)),
        sa.Column("recovery_email", s(255)),
        sa.Column("phone", s(50)),
        sa.Column("is_verified", sa.Boolean(), nullable=False, server_default=false),
        sa.Column("is_locked", sa.Boolean(), nullable=False, server_default=false),
        sa.Column("two_factor", sa.JSON()),
        sa.Column("passkeys", sa.JSON()),
        sa.Column("first_time", sa.Boolean(), nullable=False, server_default=true),
        created(),
        updated(),
        sa.UniqueConstraint("email"),
        sa.UniqueConstraint("user_name"),
    )
    table(
        "organizations",
        key(),
        sa.Column("name", s(255), nullable=False),
        ref("owner_user_id", "users.id", "CASCADE", nullable=False),
        sa.Column("business_email", s(255)),
        sa.Column("business_phone", s(50)),
        sa.Column("tax_id", s(100)),
        sa.Column("address", sa.Text()),
        created(),
        updated(),
    )
    table(
        "organization_users",
        key(),
        ref("organization_id", "organizations.id", "CASCADE", nullable=False),
        ref("user_id", "users.id", "CASCADE", nullable=False),
        sa.Column("role", s(50), nullable=False, server_default="member"),
        created(),
        updated(),
        sa.UniqueConstraint("organization_id", "user_id"),
    )
    table(
        "addresses",
        key(),
        ref("user_id", "users.id", "CASCADE"),
        ref("organization_id", "organizations.id", "CASCADE"),
        sa.Column("address_type", s(50), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False, server_default=false),
        sa.Column("name", s(255)),
        sa.Column("line1", s(255), nullable=False),
        sa.Column("line2", s(255)),
        sa.Column("city", s(255), nullable=False),
        sa.Column("state", s(255)),
        sa.Column("postal_code", s(50), nullable=False),
        sa.Column("country", s(2), nullable=False),
        sa.Column("phone", s(50)),
        sa.Column("email", s(255)),
        created(),
        updated(),
        *owner_check(),
    )

    # --- Payment provider integration --------------------------------------------------------
    table(
        "payment_providers",
        sa.Column("id", s(50), primary_key=True),
        sa.Column("display_name", s(255), nullable=False),
        sa.Column("picture", s(255)),
        sa.Column("is_active", sa.Boolean(), nullable=False, server_default=true),
        sa.Column("supports_subscriptions", sa.Boolean(), nullable=False, server_default=false),
        sa.Column("supports_saved_methods", sa.Boolean(), nullable=False, server_default=false),
        sa.Column("config", sa.JSON()),
        created(),
        updated(),
    )
    table(
        "provider_customers",
        key(),
        ref("user_id", "users.id", "CASCADE"),
        ref("organization_id", "organizations.id", "CASCADE"),
        ref("provider_id", "payment_providers.id", "CASCADE", nullable=False, length=50),
        sa.Column("provider_customer_id", s(255), nullable=False),
        sa.Column("metadata", sa.JSON()),
        created(),
        updated(),
        sa.UniqueConstraint("provider_id", "provider_customer_id"),
        *owner_check(),
    )
    table(
        "payment_methods",
        key(),
        ref("user_id", "users.id", "CASCADE"),
        ref("organization_id", "organizations.id", "CASCADE"),
        ref("provider_id", "payment_providers.id", "CASCADE", nullable=False, length=50),
        sa.Column("provider_payment_method_id", s(255), nullable=False),
        sa.Column("payment_type", s(50), nullable=False),
        sa.Column("last_four", s(4)),
        sa.Column("expiry_month", s(2)),
        sa.Column("expiry_year", s(4)),
        sa.Column("card_brand", s(50)),
        sa.Column("is_default", sa.Boolean(), nullable=False, server_default=false),
        ref("billing_address_id", "addresses.id", "SET NULL"),
        created(),
        updated(),
        *owner_check(),
    )

    # --- Transaction tables ------------------------------------------------------------------
    table(
        "product_categories",
        key(),
        sa.Column("name", s(255), nullable=False),
        sa.Column("description", sa.Text()),
        ref("parent_id", "product_categories.id", "SET NULL"),
        sa.Column("image", s(255)),
        sa.Column("is_active", sa.Boolean(), nullable=False, server_default=true),
        sa.Column("sort_order", sa.Integer(), nullable=False, server_default=zero),
        created(),
        updated(),
    )
    table(
        "products",
        key(),
        sa.Column("name", s(255), nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("product_type", s(50), nullable=False),
        sa.Column("is_recurring", sa.Boolean(), nullable=False, server_default=false),
        sa.Column("price_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", s(3), nullable=False, server_default="USD"),
        sa.Column("billing_interval", s(20)),
        sa.Column("trial_days", sa.Integer(), server_default=zero),
        sa.Column("image", s(255)),
        sa.Column("gallery", sa.JSON()),
        ref("category_id", "product_categories.id", "SET NULL"),
        ref("parent_product_id", "products.id", "SET NULL"),
        sa.Column("variations", sa.JSON()),
        sa.Column("metadata", sa.JSON()),
        sa.Column("is_active", sa.Boolean(), nullable=False, server_default=true),
        created(),
        updated(),
    )
    table(
        "orders",
        key(),
        sa.Column("order_number", s(255), nullable=False),
        ref("user_id", "users.id", "SET NULL"),
        ref("organization_id", "organizations.id", "SET NULL"),
        sa.Column("status", s(50), nullable=False, server_default="pending"),
        sa.Column("subtotal_cents", sa.BigInteger(), nullable=False),
        sa.Column("tax_cents", sa.BigInteger(), nullable=False, server_default=zero),
        sa.Column("discount_cents", sa.BigInteger(), nullable=False, server_default=zero),
        sa.Column("total_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", s(3), nullable=False, server_default="USD"),
        ref("billing_address_id", "addresses.id", "SET NULL"),
        ref("shipping_address_id", "addresses.id", "SET NULL"),
        sa.Column("metadata", sa.JSON()),
        created(),
        updated(),
        sa.Column("completed_at", sa.TIMESTAMP()),
        sa.UniqueConstraint("order_number"),
        *owner_check(mariadb_needs_trigger=True),
    )
    table(
        "order_items",
        key(),
        ref("order_id", "orders.id", "CASCADE", nullable=False),
        ref("product_id", "products.id", "RESTRICT", nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("unit_price_cents", sa.BigInteger(), nullable=False),
        sa.Column("total_cents", sa.BigInteger(), nullable=False),
        sa.Column("metadata", sa.JSON()),
        created(),
    )
    table(
        "subscriptions",
        key(),
        ref("user_id", "users.id", "CASCADE"),
        ref("organization_id", "organizations.id", "CASCADE"),
        ref("product_id", "products.id", "RESTRICT", nullable=False),
        ref("payment_method_id", "payment_methods.id", "SET NULL"),
        ref("provider_id", "payment_providers.id", "CASCADE", nullable=False, length=50),
        sa.Column("provider_subscription_id", s(255)),
        sa.Column("status", s(50), nullable=False),
        sa.Column("current_period_start", sa.TIMESTAMP(), nullable=False),
        sa.Column("current_period_end", sa.TIMESTAMP(), nullable=False),
        sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False, server_default=false),
        sa.Column("trial_end", sa.TIMESTAMP()),
        sa.Column("price_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", s(3), nullable=False, server_default="USD"),
        sa.Column("metadata", sa.JSON()),
        created(),
        updated(),
        *owner_check(),
    )
    table(
        "payments",
        key(),
        ref("order_id", "orders.id", "SET NULL"),
        ref("subscription_id", "subscriptions.id", "SET NULL"),
        ref("user_id", "users.id", "SET NULL"),
        ref("organization_id", "organizations.id", "SET NULL"),
        ref("payment_method_id", "payment_methods.id", "SET NULL"),
        ref("provider_id", "payment_providers.id", "CASCADE", nullable=False, length=50),
        sa.Column("provider_payment_id", s(255)),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", s(3), nullable=False, server_default="USD"),
        sa.Column("status", s(50), nullable=False),
        sa.Column("error_message", sa.Text()),
        sa.Column("metadata", sa.JSON()),
        created(),
        updated(),
        sa.Column("completed_at", sa.TIMESTAMP()),
        *(
            []
            if mysql
            else [sa.CheckConstraint("order_id IS NOT NULL OR subscription_id IS NOT NULL", name="purpose")]
        ),
    )
    table(
        "invoices",
        key(),
        sa.Column("invoice_number", s(255), nullable=False),
        ref("order_id", "orders.id", "SET NULL"),
        ref("subscription_id", "subscriptions.id", "SET NULL"),
        ref("user_id", "users.id", "SET NULL"),
        ref("organization_id", "organizations.id", "SET NULL"),
        sa.Column("status", s(50), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("tax_cents", sa.BigInteger(), nullable=False, server_default=zero),
        sa.Column("discount_cents", sa.BigInteger(), nullable=False, server_default=zero),
        sa.Column("total_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", s(3), nullable=False, server_default="USD"),
        sa.Column("issue_date", sa.TIMESTAMP(), nullable=False),
        sa.Column("due_date", sa.TIMESTAMP(), nullable=False),
        sa.Column("paid_date", sa.TIMESTAMP()),
        ref("billing_address_id", "addresses.id", "SET NULL"),
        ref("provider_id", "payment_providers.id", "SET NULL", length=50),
        sa.Column("provider_invoice_id", s(255)),
        created(),
        updated(),
        sa.UniqueConstraint("invoice_number"),
    )
    table(
        "payment_webhooks",
        key(),
        ref("provider_id", "payment_providers.id", "CASCADE", nullable=False, length=50),
        sa.Column("event_type", s(100), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("processed", sa.Boolean(), nullable=False, server_default=false),
        created(),
        sa.Column("processed_at", sa.TIMESTAMP()),
    )
    table(
        "payment_events",
        key(),
        sa.Column("entity_type", s(50), nullable=False),
        sa.Column("entity_id", s(255), nullable=False),
        sa.Column("event_type", s(100), nullable=False),
        sa.Column("data", sa.JSON()),
        created(),
    )

    # --- Membership system -------------------------------------------------------------------
    table(
        "membership_types",
        key(),
        sa.Column("name", s(255), nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("duration_type", s(50), nullable=False),
        sa.Column("duration_days", sa.Integer()),
        sa.Column("price_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", s(3), nullable=False, server_default="USD"),
        sa.Column("features", sa.JSON()),
        sa.Column("is_active", sa.Boolean(), nullable=False, server_default=true),
        created(),
        updated(),
    )
    table(
        "user_memberships",
        key(),
        ref("user_id", "users.id", "CASCADE", nullable=False),
        ref("membership_type_id", "membership_types.id", "RESTRICT", nullable=False),
        ref("subscription_id", "subscriptions.id", "SET NULL"),
        ref("order_id", "orders.id", "SET NULL"),
        sa.Column("status", s(50), nullable=False),
        sa.Column("start_date", sa.TIMESTAMP(), nullable=False),
        sa.Column("end_date", sa.TIMESTAMP()),
        sa.Column("auto_renew", sa.Boolean(), nullable=False, server_default=false),
        sa.Column("addons", sa.JSON()),
        created(),
        updated(),
    )

    # --- Analytics ---------------------------------------------------------------------------
    table(
        "analytics_snapshots",
        key(),
        sa.Column("snapshot_date", sa.Date(), nullable=False),
        sa.Column("metric_type", s(50), nullable=False),
        sa.Column("metric_value", sa.Numeric(20, 2), nullable=False),
        sa.Column("currency", s(3)),
        sa.Column("breakdown", sa.JSON()),
        sa.Column("calculation_method", s(50), server_default="scheduled"),
        sa.Column("calculation_duration_ms", sa.Integer()),
        sa.Column("data_freshness", s(50), server_default="historical"),
        created(),
        updated(),
        sa.UniqueConstraint("snapshot_date", "metric_type", "currency", name="unique_snapshot"),
    )
    table(
        "analytics_events",
        key(),
        ref("user_id", "users.id", "SET NULL"),
        sa.Column("session_id", s(255)),
        sa.Column("event_type", s(50), nullable=False),
        sa.Column("event_category", s(50)),
        sa.Column("entity_type", s(50)),
        sa.Column("entity_id", s(255)),
        sa.Column("properties", sa.JSON()),
        sa.Column("revenue_cents", sa.BigInteger(), server_default=zero),
        sa.Column("currency", s(3)),
        created(),
    )
    table(
        "user_cohorts",
        key(),
        ref("user_id", "users.id", "CASCADE", nullable=False),
        sa.Column("cohort_month", sa.Date(), nullable=False),
        sa.Column("cohort_type", s(50), nullable=False),
        created(),
        sa.UniqueConstraint("user_id", "cohort_type", name="unique_user_cohort"),
    )

    # --- Recommended indexes -----------------------------------------------------------------
    for name, table_name, columns in RECOMMENDED_INDEXES:
        op.create_index(name, table_name, list(columns))

    # --- Triggers ----------------------------------------------------------------------------
    if dialect == "postgresql":
        _postgresql_triggers()
    elif dialect == "sqlite":
        _sqlite_triggers()
    else:
        _mariadb_triggers()


RECOMMENDED_INDEXES = (
    ("idx_users_email", "users", ("email",)),
    ("idx_users_user_name", "users", ("user_name",)),
    ("idx_addresses_user_id", "addresses", ("user_id",)),
    ("idx_addresses_organization_id", "addresses", ("organization_id",)),
    ("idx_addresses_type", "addresses", ("address_type",)),
    ("idx_payment_methods_user_id", "payment_methods", ("user_id",)),
    ("idx_payment_methods_organization_id", "payment_methods", ("organization_id",)),
    ("idx_payment_methods_provider_id", "payment_methods", ("provider_id",)),
    ("idx_orders_status", "orders", ("status",)),
    ("idx_orders_user_id", "orders", ("user_id",)),
    ("idx_payments_status", "payments", ("status",)),
    ("idx_payments_order_id", "payments", ("order_id",)),
    ("idx_subscriptions_status", "subscriptions", ("status",)),
    ("idx_subscriptions_user_id", "subscriptions", ("user_id",)),
    ("idx_user_memberships_user_id", "user_memberships", ("user_id",)),
    ("idx_user_memberships_status", "user_memberships", ("status",)),
    ("idx_membership_types_is_active", "membership_types", ("is_active",)),
    ("idx_payment_webhooks_processed", "payment_webhooks", ("processed",)),
    ("idx_payment_events_entity_type_entity_id", "payment_events", ("entity_type", "entity_id")),
    ("idx_analytics_snapshots_date_type", "analytics_snapshots", ("snapshot_date", "metric_type")),
    ("idx_analytics_snapshots_currency", "analytics_snapshots", ("currency",)),
    ("idx_analytics_events_user_id", "analytics_events", ("user_id",)),
    ("idx_analytics_events_type", "analytics_events", ("event_type",)),
    ("idx_user_cohorts_month", "user_cohorts", ("cohort_month",)),
)


def _postgresql_triggers() -> None:
    # An update that leaves updated_at alone gets the current time; one that sets it keeps
    # its value (as MariaDB's ON UPDATE CURRENT_TIMESTAMP does).
    op.execute(
        f"""
        CREATE FUNCTION billfold_touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
                NEW.updated_at := {PG_NOW};
            END IF;
            RETURN NEW;
        END
        $$
        """
    )
    for table_name in TOUCHED_TABLES:
        op.execute(
            f"CREATE TRIGGER trg_{table_name}_updated_at BEFORE UPDATE ON {table_name} "
            "FOR EACH ROW EXECUTE FUNCTION billfold_touch_updated_at()"
        )


def _sqlite_triggers() -> None:
    for table_name in TOUCHED_TABLES:
        op.execute(
            f"CREATE TRIGGER trg_{table_name}_updated_at AFTER UPDATE ON {table_name} "
            "FOR EACH ROW WHEN NEW.updated_at IS OLD.updated_at "
            f"BEGIN UPDATE {table_name} SET updated_at = CURRENT_TIMESTAMP WHERE id = NEW.id; END"
        )


# MariaDB: ER_CONSTRAINT_FAILED, so a refused row reads like any failed CHECK.
_REFUSE = "SIGNAL SQLSTATE '23000' SET MYSQL_ERRNO = 4025, MESSAGE_TEXT = "


def _mariadb_triggers() -> None:
    """MariaDB refuses ``CHECK (user_id IS NOT NULL OR organization_id IS NOT NULL)`` on orders and
    ``CHECK (order_id IS NOT NULL OR subscription_id IS NOT NULL)`` on payments, because those
    columns' foreign keys are ON DELETE SET NULL (error 1901). Triggers enforce both rules:
    on insert and update of the rows themselves, and before a delete whose cascade would leave
    such a row without either reference (InnoDB's cascades fire no triggers on the child rows,
    so the guard sits on the parent that is being deleted)."""
    order_owner = "'CONSTRAINT ck_orders_owner failed: an order belongs to a user or an organization'"
    payment_purpose = "'CONSTRAINT ck_payments_purpose failed: a payment is for an order or a subscription'"
    for timing in ("INSERT", "UPDATE"):
        op.execute(
            f"CREATE TRIGGER trg_orders_owner_{timing.lower()} BEFORE {timing} ON orders FOR EACH ROW "
            "BEGIN IF NEW.user_id IS NULL AND NEW.organization_id IS NULL THEN "
            f"{_REFUSE}{order_owner}; END IF; END"
        )
        op.execute(
            f"CREATE TRIGGER trg_payments_purpose_{timing.lower()} BEFORE {timing} ON payments FOR EACH ROW "
            "BEGIN IF NEW.order_id IS NULL AND NEW.subscription_id IS NULL THEN "
            f"{_REFUSE}{payment_purpose}; END IF; END"
        )
    owned = "(SELECT id FROM organizations WHERE owner_user_id = OLD.id)"
    guards = {
        # Deleting a user nulls orders.user_id and cascades to the organizations they own
        # (nulling orders.organization_id) and to their and those organizations' subscriptions.
        "users": (
            "SELECT 1 FROM orders WHERE (user_id = OLD.id OR user_id IS NULL) "
            f"AND (organization_id IS NULL OR organization_id IN {owned})",
            "SELECT 1 FROM payments WHERE order_id IS NULL AND subscription_id IN "
            f"(SELECT id FROM subscriptions WHERE user_id = OLD.id OR organization_id IN {owned})",
        ),
        "organizations": (
            "SELECT 1 FROM orders WHERE organization_id = OLD.id AND user_id IS NULL",
            "SELECT 1 FROM payments WHERE order_id IS NULL AND subscription_id IN "
            "(SELECT id FROM subscriptions WHERE organization_id = OLD.id)",
        ),
        "orders": (None, "SELECT 1 FROM payments WHERE order_id = OLD.id AND subscription_id IS NULL"),
        "subscriptions": (None, "SELECT 1 FROM payments WHERE subscription_id = OLD.id AND order_id IS NULL"),
        # Deleting a provider deletes its payments and subscriptions; another provider's
        # payment for one of those subscriptions would be left with neither reference.
        "payment_providers": (
            None,
            "SELECT 1 FROM payments WHERE order_id IS NULL AND provider_id <> OLD.id AND subscription_id IN "
            "(SELECT id FROM subscriptions WHERE provider_id = OLD.id)",
        ),
    }
    for table_name, (orders_query, payments_query) in guards.items():
        body = ""
        if orders_query:
            body += f"IF EXISTS ({orders_query}) THEN {_REFUSE}{order_owner}; END IF; "
        body += f"IF EXISTS ({payments_query}) THEN {_REFUSE}{payment_purpose}; END IF; "
        op.execute(f"CREATE TRIGGER trg_{table_name}_delete_guard BEFORE DELETE ON {table_name} FOR EACH ROW BEGIN {body}END")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        for table_name in TOUCHED_TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS trg_{table_name}_updated_at ON {table_name}")
        op.execute("DROP FUNCTION IF EXISTS billfold_touch_updated_at()")
    # SQLite and MariaDB drop a table's triggers with the table.
    for table_name in (
        "user_cohorts",
        "analytics_events",
        "analytics_snapshots",
        "user_memberships",
        "membership_types",
        "payment_events",
        "payment_webhooks",
        "invoices",
        "payments",
        "subscriptions",
        "order_items",
        "orders",
        "products",
        "product_categories",
        "payment_methods",
        "provider_customers",
        "payment_providers",
        "addresses",
        "organization_users",
        "organizations",
        "users",
    ):
        op.drop_table(table_name)
