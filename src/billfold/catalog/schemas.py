"""What the catalog API takes and gives. Requests refuse unknown fields; an update may leave out a
field the database requires, but not set it to null. Rules between fields (a subscription
recurs; a fixed-term membership has a length) are the services' to check, since an update is
checked against what is stored."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, StrictBool

from billfold.accounts.organizations.schemas import keep
from billfold.accounts.schemas import In
from billfold.kit.inputs import CONTROL_CHARACTERS, Integer, MultiLineOrBlank, SingleLine
from billfold.kit.money import CURRENCIES, is_currency, normalize_currency
from billfold.models import MembershipType, Product, ProductCategory

ProductType = Literal["physical", "digital", "service", "subscription"]
BillingInterval = Literal["monthly", "yearly"]
DurationType = Literal["recurring", "fixed", "lifetime"]

# Names and labels: one line with something besides spaces in it; descriptions may break lines
# (kit/inputs: no control characters, which would reach email headers, PDFs and logs).
Name = Annotated[str, Field(min_length=1, max_length=255), SingleLine]
Label = Annotated[str, Field(min_length=1, max_length=100), SingleLine]
Description = Annotated[str, Field(max_length=5000), MultiLineOrBlank]
HttpsUrl = Annotated[
    str,
    Field(max_length=255, pattern=rf"^https://[^\s{CONTROL_CHARACTERS}/?#][^\s{CONTROL_CHARACTERS}]*$", description="An https URL."),
]

# JSON integers only (kit/inputs.Integer): 12.0, "12" and true are refused rather than read.
MAX_BIGINT = 2**63 - 1
PriceCents = Annotated[
    Integer, Field(ge=0, le=MAX_BIGINT, description="In the currency's minor unit: 1999 is $19.99, 1200 is ¥1,200.")
]
SortOrder = Annotated[Integer, Field(ge=-(2**31), le=2**31 - 1, description="Lower first; ties by name, then id.")]
TrialDays = Annotated[Integer, Field(ge=0, le=730, description="Free days before the first charge; recurring only.")]
DurationDays = Annotated[Integer, Field(ge=1, le=36500)]
MetadataKey = Annotated[str, Field(min_length=1, max_length=40), SingleLine]
MetadataValue = Annotated[str, Field(max_length=500), MultiLineOrBlank]
Metadata = Annotated[
    dict[MetadataKey, MetadataValue],
    Field(max_length=50, description="Your own keys and text values (at most 50), such as a SKU."),
]

_LOWER_CURRENCIES = tuple(code.lower() for code in CURRENCIES)


def _currency_schema(schema: dict[str, Any]) -> None:
    schema["enum"] = [*CURRENCIES, *_LOWER_CURRENCIES]
    schema.pop("default", None)


def _currency(code: str) -> str:
    if not is_currency(code):
        raise ValueError(f"{code!r} is not an ISO 4217 currency code, such as USD, EUR or JPY")
    return normalize_currency(code)


Currency = Annotated[
    str,
    Field(description="ISO 4217, upper or lower case (usd or USD); kept upper-case.", json_schema_extra=_currency_schema),
    AfterValidator(_currency),
]


UNIQUE = {"uniqueItems": True}


def _distinct(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError("must not repeat a value")
    return values


class Variation(In):
    """One way the product varies, such as size with options S, M and L."""

    name: Label
    options: Annotated[list[Label], Field(min_length=1, max_length=50, json_schema_extra=UNIQUE), AfterValidator(_distinct)]


def _distinct_variations(variations: list[Variation]) -> list[Variation]:
    _distinct([v.name for v in variations])
    return variations


Variations = Annotated[
    list[Variation],
    Field(max_length=10, description="The options the product comes in; variants are products under it."),
    AfterValidator(_distinct_variations),
]
Gallery = Annotated[list[HttpsUrl], Field(max_length=20, description="More images, https URLs.")]
Features = Annotated[
    list[Name],
    Field(max_length=100, description="What the membership includes, one line each.", json_schema_extra=UNIQUE),
    AfterValidator(_distinct),
]


def _times(row: ProductCategory | Product | MembershipType) -> dict[str, datetime]:
    # The database keeps whole seconds; answer a write with what a later read will show.
    return {"created_at": row.created_at.replace(microsecond=0), "updated_at": row.updated_at.replace(microsecond=0)}


# Categories


class CategoryIn(In):
    name: Name
    description: Description | None = None
    parent_id: Name | None = Field(None, description="The parent category; none for a top-level one.")
    image: HttpsUrl | None = None
    is_active: StrictBool = True
    sort_order: SortOrder = 0


class CategoryUpdate(In):
    name: Name = keep()
    description: Description | None = None
    parent_id: Name | None = Field(None, description="Move it: another category, or null for the top level.")
    image: HttpsUrl | None = None
    is_active: StrictBool = keep()
    sort_order: SortOrder = keep()


class CategoryOut(BaseModel):
    id: str
    name: str
    description: str | None
    parent_id: str | None
    image: str | None
    is_active: bool
    sort_order: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, category: ProductCategory) -> CategoryOut:
        return cls(
            id=category.id,
            name=category.name,
            description=category.description,
            parent_id=category.parent_id,
            image=category.image,
            is_active=category.is_active,
            sort_order=category.sort_order,
            **_times(category),
        )


class CategoryNode(CategoryOut):
    children: list[CategoryNode] = Field(description="Sub-categories, in order.")


class CategoryTree(BaseModel):
    data: list[CategoryNode] = Field(description="Top-level categories in order (sort_order, name, id).")


class CategoryDeleted(BaseModel):
    id: str
    children_moved_to: str | None = Field(
        description="Where its sub-categories went: its own parent, or null for the top level."
    )
    children_moved: int
    products_uncategorised: int = Field(description="Products that were in it and now have no category.")


# Products


class ProductIn(In):
    name: Name
    description: Description | None = None
    product_type: ProductType
    is_recurring: StrictBool | None = Field(
        None, description="Default: true for a subscription or when billing_interval is given."
    )
    price_cents: PriceCents
    currency: Currency = "USD"
    billing_interval: BillingInterval | None = Field(None, description="Recurring products only.")
    trial_days: TrialDays = 0
    image: HttpsUrl | None = None
    gallery: Gallery | None = None
    category_id: Name | None = None
    parent_product_id: Name | None = Field(
        None, description="Makes this a variant of that product, which must not itself be a variant."
    )
    variations: Variations | None = None
    metadata: Metadata | None = None
    is_active: StrictBool = True


class ProductUpdate(In):
    name: Name = keep()
    description: Description | None = None
    product_type: ProductType = keep()
    is_recurring: StrictBool = keep()
    price_cents: PriceCents = keep()
    currency: Currency = None  # type: ignore[assignment]  # optional, not nullable (see _currency_schema)
    billing_interval: BillingInterval | None = None
    trial_days: TrialDays = keep()
    image: HttpsUrl | None = None
    gallery: Gallery | None = None
    category_id: Name | None = None
    parent_product_id: Name | None = None
    variations: Variations | None = None
    metadata: Metadata | None = None
    is_active: StrictBool = keep()


class ProductOut(BaseModel):
    id: str
    name: str
    description: str | None
    product_type: ProductType
    is_recurring: bool
    price_cents: int
    currency: str
    billing_interval: BillingInterval | None
    trial_days: int
    image: str | None
    gallery: list[str]
    category_id: str | None
    parent_product_id: str | None = Field(description="Set on a variant: the product it is a variant of.")
    variations: list[Variation]
    metadata: dict[str, Any]
    is_active: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, product: Product) -> ProductOut:
        return cls(
            id=product.id,
            name=product.name,
            description=product.description,
            product_type=product.product_type,  # type: ignore[arg-type]
            is_recurring=product.is_recurring,
            price_cents=product.price_cents,
            currency=product.currency,
            billing_interval=product.billing_interval,  # type: ignore[arg-type]
            trial_days=product.trial_days or 0,
            image=product.image,
            gallery=product.gallery or [],
            category_id=product.category_id,
            parent_product_id=product.parent_product_id,
            variations=[Variation.model_validate(v) for v in product.variations or []],
            metadata=product.metadata_ or {},
            is_active=product.is_active,
            **_times(product),
        )


# Membership types


class MembershipTypeIn(In):
    name: Name
    description: Description | None = None
    duration_type: DurationType = Field(
        description="recurring: renews every duration_days; fixed: ends after duration_days; lifetime: never ends."
    )
    duration_days: DurationDays | None = Field(None, description="Required for recurring and fixed; none for lifetime.")
    price_cents: PriceCents
    currency: Currency = "USD"
    features: Features = Field(default_factory=list)
    is_active: StrictBool = True


class MembershipTypeUpdate(In):
    name: Name = keep()
    description: Description | None = None
    duration_type: DurationType = keep()
    duration_days: DurationDays | None = None
    price_cents: PriceCents = keep()
    currency: Currency = None  # type: ignore[assignment]  # optional, not nullable
    features: Features | None = Field(None, description="null: none.")
    is_active: StrictBool = keep()


class MembershipTypeOut(BaseModel):
    id: str
    name: str
    description: str | None
    duration_type: DurationType
    duration_days: int | None
    price_cents: int
    currency: str
    features: list[str]
    is_active: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, membership_type: MembershipType) -> MembershipTypeOut:
        return cls(
            id=membership_type.id,
            name=membership_type.name,
            description=membership_type.description,
            duration_type=membership_type.duration_type,  # type: ignore[arg-type]
            duration_days=membership_type.duration_days,
            price_cents=membership_type.price_cents,
            currency=membership_type.currency,
            features=list(membership_type.features or []),
            is_active=membership_type.is_active,
            **_times(membership_type),
        )
