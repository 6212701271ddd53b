"""What the payment providers and payment methods API takes and gives. Requests refuse unknown
fields (so no card number or CVC can ride along); responses never carry a provider secret."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl, StrictBool, TypeAdapter

from billfold.accounts.schemas import In
from billfold.kit.inputs import SingleLine
from billfold.models import PaymentProvider
from billfold.payments import provider_config
from billfold.providers import registry

ProviderId = Annotated[
    str,
    Field(pattern=r"^[a-z][a-z0-9_]{1,49}$", description="A slug such as sandbox, stripe or stripe_eu."),
]
DisplayName = Annotated[str, Field(min_length=1, max_length=255), SingleLine]
Token = Annotated[
    str,
    Field(
        min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_\-.:]+$",
        description="A one-time token from the provider's own card fields (Stripe pm_…, the sandbox's "
        "tok_sandbox_visa); never a card number.",
    ),
]


_URL: TypeAdapter[HttpUrl] = TypeAdapter(HttpUrl)


def _https(text: str) -> str:
    try:
        url = _URL.validate_python(text)
    except ValueError as error:
        raise ValueError("the picture must be an https URL") from error
    if url.scheme != "https":
        raise ValueError("the picture must be an https URL")
    return text


Picture = Annotated[
    str,
    Field(max_length=255, pattern=r"^https://[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]+$",
          description="An https URL of the provider's logo.",
          json_schema_extra={"format": "uri"}),
    AfterValidator(_https),
]


def _kind_schema(schema: dict[str, Any]) -> None:
    schema["enum"] = registry.registered_kinds()


Kind = Annotated[
    str,
    Field(
        description="Which adapter speaks to the provider (stored as config.kind); one of the registered kinds.",
        json_schema_extra=_kind_schema,
    ),
    SingleLine,
]


def _config_schema(schema: dict[str, Any]) -> None:
    schema["propertyNames"] = {"not": {"const": "kind"}, "pattern": r"^[^\x00]+$"}
    schema.pop("default", None)


def _config_keys(config: dict[str, Any]) -> dict[str, Any]:
    for key in config:
        if not key:
            raise ValueError("a config key must not be empty")
    return config


Config = Annotated[
    dict[str, Any],
    AfterValidator(_config_keys),
    Field(
        description="Adapter settings. Secrets (secret_key, api_key, webhook_secret, password, client_secret, "
        "transaction_key, private_key, or a key ending in _secret, _key, _password or _token) are encrypted "
        "at rest and never shown again. In an update a key replaces the stored value, null removes it, "
        "and a key left out is kept.",
        json_schema_extra=_config_schema,
    ),
]


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def keep(description: str | None = None) -> Any:
    return Field(None, description=description, json_schema_extra=_no_default)


class ProviderIn(In):
    id: ProviderId
    kind: Kind
    display_name: DisplayName
    picture: Picture | None = None
    is_active: StrictBool = True
    supports_subscriptions: StrictBool | None = Field(
        None, description="Default: the adapter can save methods and charge them off-session."
    )
    supports_saved_methods: StrictBool | None = Field(None, description="Default: what the adapter can do.")
    config: Config = Field(default_factory=dict)


class ProviderUpdate(In):
    kind: Kind = keep()
    display_name: DisplayName = keep()
    picture: Picture | None = None
    is_active: StrictBool = keep("false switches the provider off: no new payments or saved methods.")
    supports_subscriptions: StrictBool = keep()
    supports_saved_methods: StrictBool = keep()
    config: Config = keep()  # type: ignore[assignment]


class ProviderOut(BaseModel):
    id: str
    kind: str
    display_name: str
    picture: str | None
    is_active: bool
    supports_subscriptions: bool
    supports_saved_methods: bool
    config: dict[str, Any] = Field(description='Settings; each secret shown only as {"set": true}.')
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, provider: PaymentProvider) -> ProviderOut:
        return cls(
            id=provider.id,
            kind=provider_config.kind_of(provider),
            display_name=provider.display_name,
            picture=provider.picture,
            is_active=provider.is_active,
            supports_subscriptions=provider.supports_subscriptions,
            supports_saved_methods=provider.supports_saved_methods,
            config=provider_config.shown_config(provider.config),
            created_at=provider.created_at,
            updated_at=provider.updated_at,
        )


AddressId = Annotated[str, Field(min_length=1, max_length=255), SingleLine]


class PaymentMethodIn(In):
    provider_id: ProviderId | None = Field(None, description="Default: the shop's default provider.")
    token: Token
    billing_address_id: AddressId | None = Field(None, description="A billing (or both) address of the same owner.")
    make_default: StrictBool = Field(
        False, description="Make it the default. The first method becomes the default anyway."
    )


class PaymentMethodUpdate(In):
    make_default: StrictBool = keep(
        "true makes it the default; to change the default, make another method the default."
    )
    billing_address_id: AddressId | None = Field(None, description="null clears it.")


class PaymentMethodOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    user_id: str | None
    organization_id: str | None
    provider_id: str
    provider_payment_method_id: str
    payment_type: str
    card_brand: str | None
    last_four: str | None
    expiry_month: str | None = Field(description="01 to 12")
    expiry_year: str | None = Field(description="Four digits, such as 2031")
    is_default: bool
    billing_address_id: str | None
    created_at: datetime
    updated_at: datetime


# Routing rules (docs/payments.md#routing)

MAX_AMOUNT = 999_999_999_999
"""Twelve digits at most: a longer number could pass for a card number, which the card guard
refuses anywhere in a request."""

RuleName = Annotated[str, Field(min_length=1, max_length=255), SingleLine]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217, upper case: USD, EUR.")]
Country = Annotated[str, Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2, upper case: US, DE.")]
AmountBound = Annotated[int, Field(ge=0, le=MAX_AMOUNT, strict=True, description="Minor units of `currency`, inclusive.")]
RuleProductType = Annotated[
    str, Field(pattern=r"^(physical|digital|service|subscription)$", description="A product type of the catalog.")
]
Position = Annotated[int, Field(ge=0, le=1_000_000, strict=True, description="Lower first; rules of one position split by weight.")]
Weight = Annotated[int, Field(ge=0, le=1_000_000, strict=True, description="The share of payments among the matching rules of one position; 0: never picked while another has weight.")]
ProviderIds = Annotated[
    list[ProviderId],
    Field(min_length=1, max_length=20, description="The primary provider, then the fallbacks, in order."),
]


class RoutingRuleIn(In):
    name: RuleName | None = None
    position: Position = 0
    currency: Currency | None = None
    country: Country | None = None
    min_amount_cents: AmountBound | None = None
    max_amount_cents: AmountBound | None = None
    product_type: RuleProductType | None = None
    weight: Weight = 1
    provider_ids: ProviderIds
    is_active: StrictBool = True


class RoutingRuleUpdate(In):
    name: RuleName | None = None
    position: Position = keep()
    currency: Currency | None = None
    country: Country | None = None
    min_amount_cents: AmountBound | None = None
    max_amount_cents: AmountBound | None = None
    product_type: RuleProductType | None = None
    weight: Weight = keep()
    provider_ids: ProviderIds = keep()
    is_active: StrictBool = keep()


class RoutingRuleOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str | None
    position: int
    currency: str | None
    country: str | None
    min_amount_cents: int | None
    max_amount_cents: int | None
    product_type: str | None
    weight: int
    provider_ids: list[str]
    is_active: bool
    created_at: datetime
    updated_at: datetime


class RoutingPreviewOut(BaseModel):
    rule_id: str | None = Field(description="The rule the payment would follow; null: the default order.")
    provider_ids: list[str] = Field(description="The providers in the order they would be tried.")
    usable_provider_ids: list[str] = Field(description="Those of them that could take the payment now.")
