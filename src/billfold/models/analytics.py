"""Spec § Analytics Tables: analytics_snapshots, analytics_events, user_cohorts; and Billfold's own
analytics_mrr_movers (docs/schema.md)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db.base import Base, created_at_column, id_column, table_args, updated_at_column
from billfold.kit.db.types import JSONType, UTCDateTime


class AnalyticsSnapshot(Base):
    __tablename__ = "analytics_snapshots"
    __table_args__ = table_args(
        sa.UniqueConstraint("snapshot_date", "metric_type", "currency", name="unique_snapshot"),
        sa.Index("idx_analytics_snapshots_date_type", "snapshot_date", "metric_type"),
        sa.Index("idx_analytics_snapshots_currency", "currency"),
    )

    id: Mapped[str] = id_column("snap")
    snapshot_date: Mapped[date] = mapped_column(sa.Date, nullable=False)
    metric_type: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    metric_value: Mapped[Decimal] = mapped_column(sa.Numeric(20, 2), nullable=False)
    currency: Mapped[str | None] = mapped_column(sa.String(3))
    breakdown: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    calculation_method: Mapped[str | None] = mapped_column(
        sa.String(50), default="scheduled", server_default="scheduled"
    )
    calculation_duration_ms: Mapped[int | None] = mapped_column(sa.Integer)
    data_freshness: Mapped[str | None] = mapped_column(sa.String(50), default="historical", server_default="historical")
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class AnalyticsMrrMover(Base):
    """Not in the spec (migration 0020): a snapshot day's customers whose MRR moved that day, with
    their MRR at the day's start and end, written with the day's snapshot rows; the 30-day churn
    window is read from these (docs/analytics.md "## Snapshots")."""

    __tablename__ = "analytics_mrr_movers"
    __table_args__ = table_args()

    snapshot_date: Mapped[date] = mapped_column(sa.Date, primary_key=True)
    currency: Mapped[str] = mapped_column(sa.String(3), primary_key=True)
    customer_id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    before_cents: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    after_cents: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)


class AnalyticsEvent(Base):
    __tablename__ = "analytics_events"
    __table_args__ = table_args(
        sa.Index("idx_analytics_events_user_id", "user_id"),
        sa.Index("idx_analytics_events_type", "event_type"),
    )

    id: Mapped[str] = id_column("aev")
    user_id: Mapped[str | None] = mapped_column(sa.String(255), sa.ForeignKey("users.id", ondelete="SET NULL"))
    session_id: Mapped[str | None] = mapped_column(sa.String(255))
    event_type: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    event_category: Mapped[str | None] = mapped_column(sa.String(50))
    entity_type: Mapped[str | None] = mapped_column(sa.String(50))
    entity_id: Mapped[str | None] = mapped_column(sa.String(255))
    properties: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    revenue_cents: Mapped[int | None] = mapped_column(sa.BigInteger, default=0, server_default=sa.text("0"))
    currency: Mapped[str | None] = mapped_column(sa.String(3))
    created_at: Mapped[datetime] = created_at_column()


class UserCohort(Base):
    __tablename__ = "user_cohorts"
    __table_args__ = table_args(
        sa.UniqueConstraint("user_id", "cohort_type", name="unique_user_cohort"),
        sa.Index("idx_user_cohorts_month", "cohort_month"),
    )

    id: Mapped[str] = id_column("coh")
    user_id: Mapped[str] = mapped_column(sa.String(255), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    cohort_month: Mapped[date] = mapped_column(sa.Date, nullable=False)
    cohort_type: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    created_at: Mapped[datetime] = created_at_column()


class AnalyticsCohortMonth(Base):
    """One finished month's column of the retention matrix (``billfold.analytics.cohorts``, beyond
    the spec: docs/schema.md): per cohort type, currency and cohort month, what the month adds.
    Each month taken has one more row, the mark (``cohort_type`` ``MONTH_TAKEN``), so a month with
    no payments at all is known to be taken."""

    __tablename__ = "analytics_cohort_months"
    __table_args__ = table_args(
        sa.UniqueConstraint("month", "cohort_type", "currency", "cohort_month", name="unique_analytics_cohort_month"),
    )

    id: Mapped[str] = id_column("cohm")
    month: Mapped[date] = mapped_column(sa.Date, nullable=False)
    cohort_type: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    currency: Mapped[str] = mapped_column(sa.String(3), nullable=False)
    cohort_month: Mapped[date] = mapped_column(sa.Date, nullable=False)
    joined: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    customers: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    revenue_cents: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    through: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """NULL: the whole month (settled); else the month as it was at this moment (not over then)."""
    created_at: Mapped[datetime] = created_at_column()
