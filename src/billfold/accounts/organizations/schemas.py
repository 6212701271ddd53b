"""What the organizations, members and addresses API takes and gives. Requests refuse unknown
fields; an update may leave out a field the database requires, but not set it to null."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

import email_validator
from pydantic import AfterValidator, BaseModel, Field, StrictBool

from billfold.accounts.addresses import COUNTRY_CODES
from billfold.accounts.schemas import Email, In, Name, NewPassword, Phone
from billfold.kit.inputs import MultiLine, SingleLine
from billfold.models import Address, Organization, OrganizationUser, User

Role = Literal["owner", "admin", "billing", "member"]
AddressType = Literal["billing", "shipping", "both"]
Kind = Literal["billing", "shipping"]


# Text with something in it besides spaces, and no control characters (kit/inputs). The schema
# says so, so that a request the schema calls valid is one Billfold accepts.
Line = Annotated[str, Field(min_length=1, max_length=255), SingleLine]
PostalCode = Annotated[str, Field(min_length=1, max_length=50), SingleLine]
TaxId = Annotated[str, Field(min_length=1, max_length=100), SingleLine]
Paragraph = Annotated[str, Field(min_length=1, max_length=2000), MultiLine]


def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


# email-validator refuses special-use domains (.test, .invalid, localhost, ...) that `format: email`
# allows; the pattern tells clients and fuzzers so. It belongs on accounts.schemas.Email.
_SPECIAL_USE_DOMAINS = "|".join(_any_case(domain) for domain in email_validator.SPECIAL_USE_DOMAIN_NAMES)
ContactEmail = Annotated[
    Email, Field(json_schema_extra={"pattern": rf"^(?!.*[@.]({_SPECIAL_USE_DOMAINS})\.?$)"})
]


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def keep(description: str | None = None) -> Any:
    """An update's field for a column the database requires: it may be left out (the value stays)
    but not set to null; the schema shows it as optional and not nullable."""
    return Field(None, description=description, json_schema_extra=_no_default)


_LOWER_CODES = tuple(code.lower() for code in COUNTRY_CODES)


def _country(value: str) -> str:
    if value not in COUNTRY_CODES and value not in _LOWER_CODES:
        raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-2 country code, such as GB, US or DE")
    return value.upper()


def _country_schema(schema: dict[str, Any]) -> None:
    schema["enum"] = [*COUNTRY_CODES, *_LOWER_CODES]
    _no_default(schema)


Country = Annotated[
    str,
    Field(
        description="ISO 3166-1 alpha-2, upper or lower case (GB or gb); kept upper-case.",
        json_schema_extra=_country_schema,
    ),
    AfterValidator(_country),
]


# Organizations


class OrganizationIn(In):
    name: Line
    business_email: ContactEmail | None = None
    business_phone: Phone | None = None
    tax_id: TaxId | None = None
    address: Paragraph | None = Field(None, description="The business address as free text, for invoices.")
    owner_user_id: Line | None = Field(
        None, description="Admins and API keys only: the user who will own it. Default: the signed-in user."
    )


class OrganizationUpdate(In):
    name: Line = keep()
    business_email: ContactEmail | None = None
    business_phone: Phone | None = None
    tax_id: TaxId | None = None
    address: Paragraph | None = None


class OrganizationOut(BaseModel):
    id: str
    name: str
    owner_user_id: str = Field(description="The primary owner.")
    business_email: str | None
    business_phone: str | None
    tax_id: str | None
    address: str | None
    role: Role | None = Field(description="The caller's role in the organization; null when not a member.")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, organization: Organization, role: str | None) -> OrganizationOut:
        return cls(
            id=organization.id,
            name=organization.name,
            owner_user_id=organization.owner_user_id,
            business_email=organization.business_email,
            business_phone=organization.business_phone,
            tax_id=organization.tax_id,
            address=organization.address,
            role=role,  # type: ignore[arg-type]
            created_at=organization.created_at,
            updated_at=organization.updated_at,
        )


class OrganizationDeleted(BaseModel):
    id: str
    outcome: Literal["deleted", "anonymised"] = Field(
        description="anonymised: orders, payments or invoices name the organization, so it is kept without "
        "members, contact details, payment methods or unused addresses."
    )
    kept: dict[str, int] = Field(description="Financial records kept, by table.")


class TransferIn(In):
    user_id: Line = Field(description="A member, who becomes the primary owner.")


# Members


class MemberIn(In):
    email: ContactEmail = Field(description="The address of an existing, confirmed Billfold account.")
    role: Role = "member"


class MemberUpdate(In):
    role: Role


class MemberOut(BaseModel):
    id: str
    organization_id: str
    user_id: str
    email: str
    name: str
    last_name: str
    role: Role
    is_primary_owner: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, member: OrganizationUser, user: User, primary_owner_id: str) -> MemberOut:
        return cls(
            id=member.id,
            organization_id=member.organization_id,
            user_id=member.user_id,
            email=user.email,
            name=user.name,
            last_name=user.last_name,
            role=member.role,  # type: ignore[arg-type]
            is_primary_owner=member.user_id == primary_owner_id,
            created_at=member.created_at,
            updated_at=member.updated_at,
        )


# Addresses


class AddressIn(In):
    address_type: AddressType = Field(description="both: a billing and a shipping address.")
    is_default: StrictBool = Field(
        False,
        description="Make it the default for its kind(s). The first address of a kind becomes the default anyway.",
    )
    name: Line
    line1: Line
    line2: Line | None = None
    city: Line
    state: Line | None = None
    postal_code: PostalCode
    country: Country
    phone: Phone | None = None
    email: ContactEmail | None = None


class AddressUpdate(In):
    address_type: AddressType = keep()
    is_default: StrictBool = keep(
        "true makes it the default; to change the default, make another address the default."
    )
    name: Line = keep()
    line1: Line = keep()
    line2: Line | None = None
    city: Line = keep()
    state: Line | None = None
    postal_code: PostalCode = keep()
    country: Country = None  # type: ignore[assignment]  # optional, not nullable (see _country_schema)
    phone: Phone | None = None
    email: ContactEmail | None = None


class AddressOut(BaseModel):
    id: str
    user_id: str | None
    organization_id: str | None
    address_type: AddressType
    is_default: bool
    default_for: list[Kind] = Field(
        description="The kinds this address is the default for: a billing default wins over a 'both' default "
        "for billing, and a shipping default for shipping."
    )
    name: str | None
    line1: str
    line2: str | None
    city: str
    state: str | None
    postal_code: str
    country: str
    phone: str | None
    email: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, address: Address, defaults: dict[str, str]) -> AddressOut:
        return cls(
            id=address.id,
            user_id=address.user_id,
            organization_id=address.organization_id,
            address_type=address.address_type,
            is_default=address.is_default,  # type: ignore[arg-type]
            default_for=[kind for kind, chosen in defaults.items() if chosen == address.id],  # type: ignore[misc]
            name=address.name,
            line1=address.line1,
            line2=address.line2,
            city=address.city,
            state=address.state,
            postal_code=address.postal_code,
            country=address.country,
            phone=address.phone,
            email=address.email,
            created_at=address.created_at,
            updated_at=address.updated_at,
        )


__all__ = [
    "AddressIn",
    "AddressOut",
    "AddressUpdate",
    "MemberIn",
    "MemberOut",
    "MemberUpdate",
    "OrganizationDeleted",
    "OrganizationIn",
    "OrganizationOut",
    "OrganizationUpdate",
    "TransferIn",
]


# Invitations


class InvitationIn(In):
    email: ContactEmail = Field(description="The address to invite; it need not have an account yet.")
    role: Role = "member"


class InvitationOut(BaseModel):
    id: str
    organization_id: str
    email: str
    role: Role
    status: Literal["pending", "accepted", "revoked", "expired"]
    invited_by_user_id: str | None
    created_at: datetime
    expires_at: datetime
    accepted_at: datetime | None
    accepted_by_user_id: str | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, invitation: Any, status: str) -> InvitationOut:
        return cls(
            id=invitation.id,
            organization_id=invitation.organization_id,
            email=invitation.email,
            role=invitation.role,
            status=status,  # type: ignore[arg-type]
            invited_by_user_id=invitation.invited_by_user_id,
            created_at=invitation.created_at,
            expires_at=invitation.expires_at,
            accepted_at=invitation.accepted_at,
            accepted_by_user_id=invitation.accepted_by_user_id,
            revoked_at=invitation.revoked_at,
        )


class AcceptInvitationIn(In):
    token: str = Field(min_length=1, max_length=512, description="The token from the invitation email.")
    password: NewPassword | None = Field(None, description="To open an account, when not signed in.")
    name: Name | None = Field(None, description="To open an account, when not signed in.")
    last_name: Name | None = Field(None, description="To open an account, when not signed in.")


class InvitationAccepted(BaseModel):
    organization_id: str
    user_id: str
    email: str
    role: Role
    account_created: bool = Field(description="True when accepting opened the account; sign in next.")
