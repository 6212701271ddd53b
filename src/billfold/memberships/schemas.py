"""What the memberships API takes and gives."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from billfold.accounts.schemas import In
from billfold.kit.clock import UTC
from billfold.kit.inputs import SingleLine, SingleLineOrBlank
from billfold.memberships.service import Described


def _in_utc(value: datetime) -> datetime:
    try:
        value.astimezone(UTC)
    except OverflowError as error:
        raise ValueError("out of range") from error
    if not 1970 <= value.year < 9000:
        raise ValueError("must be between 1970 and 9000")
    return value


Moment = Annotated[AwareDatetime, AfterValidator(_in_utc)]
Feature = Annotated[str, Field(min_length=1, max_length=100), SingleLine]
Reason = Annotated[str, Field(max_length=500), SingleLineOrBlank]


class AddonOut(BaseModel):
    feature: str
    expires_at: datetime | None = None
    source: Any = None
    active: bool = Field(description="Whether it grants its feature now (and the membership does).")


class MembershipOut(BaseModel):
    id: str
    user_id: str = Field(description="Who holds it: the customer, or the organization's primary owner when it was granted.")
    organization_id: str | None = Field(description="The organization whose order or subscription it comes from.")
    membership_type_id: str
    membership_type_name: str
    duration_type: str
    features: list[Any]
    subscription_id: str | None
    order_id: str | None
    status: str = Field(description="As stored (kept up to date by the memberships.expire sweep).")
    current_status: str = Field(description="Where it stands now, computed from its dates and subscription.")
    grants: bool = Field(description="Whether it grants its features now.")
    start_date: datetime
    end_date: datetime | None = Field(description="Null: never ends (lifetime). For a subscription: the paid period's end.")
    until: datetime | None = Field(description="When it stops granting, exclusive (the dunning grace included only while its subscription will renew); null: never.")
    auto_renew: bool = Field(description="Whether its subscription will charge another period (false once cancelled at period end, paused, or in a trial with no payment method).")
    addons: list[AddonOut]
    created_at: datetime

    @classmethod
    def of(cls, d: Described, at: datetime) -> MembershipOut:
        from billfold.memberships.entitlements import addon_until

        m, t = d.membership, d.membership_type
        addons = []
        for a in m.addons or []:
            if isinstance(a, dict):
                live, expires = addon_until(a, at)
                addons.append(AddonOut(feature=str(a.get("feature")), expires_at=expires, source=a.get("source"),
                                       active=live and d.standing.grants))
        return cls(
            id=m.id, user_id=m.user_id, organization_id=d.organization_id, membership_type_id=t.id,
            membership_type_name=t.name, duration_type=t.duration_type, features=list(t.features or []),
            subscription_id=m.subscription_id, order_id=m.order_id, status=m.status,
            current_status=d.standing.status, grants=d.standing.grants, start_date=m.start_date, end_date=m.end_date,
            until=d.standing.until, auto_renew=d.auto_renew, addons=addons, created_at=m.created_at,
        )


class EntitlementOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    feature: str
    allowed: bool
    membership_id: str | None = Field(description="The membership that allows it (the longest-lasting one).")
    until: datetime | None = Field(description="Allowed until this instant, exclusive; null: for good (or not allowed).")
    via: str | None = Field(description="`membership` (its type includes the feature) or `addon`.")
    organization_id: str | None = Field(description="Set when the membership is the organization's.")


class GrantIn(In):
    membership_type_id: Annotated[str, Field(min_length=1, max_length=255), SingleLine]
    start_date: Moment | None = Field(None, description="Default: now.")
    end_date: Moment | None = Field(
        None, description="Default: start + the type's duration_days; never for a lifetime type."
    )
    reason: Reason | None = None


class CancelIn(In):
    reason: Reason | None = None


class AddonIn(In):
    feature: Feature
    expires_at: Moment | None = Field(None, description="Exclusive; null: as long as the membership lasts.")
    source: Annotated[str, Field(max_length=100), SingleLineOrBlank] | None = Field(None, description="Where it came from: `manual` by default.")
