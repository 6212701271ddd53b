"""What the accounts API takes and gives. Requests refuse unknown fields; responses never carry
a password hash, a TOTP key, a token or a key after it was first shown."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, HttpUrl

from billfold.accounts.security import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from billfold.kit.inputs import SingleLine
from billfold.models import AuthSession, User


class In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _https(url: HttpUrl) -> HttpUrl:
    if url.scheme != "https":
        raise ValueError("the picture must be an https URL")
    return url


Name = Annotated[str, Field(min_length=1, max_length=255), SingleLine]
Password = Annotated[str, Field(min_length=1, max_length=1024)]
NewPassword = Annotated[str, Field(min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH, description="10 to 1024 characters.")]
Email = Annotated[EmailStr, Field(max_length=254)]
Phone = Annotated[str, Field(pattern=r"^\+[1-9][0-9]{6,14}$", description="E.164, such as +4930123456")]


class RegisterIn(In):
    email: Email
    password: NewPassword
    name: Name
    last_name: Name
    user_type: Literal["individual", "business"] = "individual"


class CustomerIn(In):
    """A customer made by the merchant's backend: no password and no email; they can claim the
    account later with a password reset to this address."""

    email: Email
    name: Name
    last_name: Name
    user_type: Literal["individual", "business"] = "individual"
    phone: Phone | None = None


class TokenIn(In):
    token: str = Field(min_length=1, max_length=4096)


class SignInIn(In):
    email: Email
    password: Password
    transport: Literal["bearer", "cookie"] = Field(
        "bearer", description="bearer: the token is returned for an Authorization header; cookie: set as an HTTP-only cookie."
    )


class PasswordResetIn(In):
    email: Email


class PasswordResetConfirmIn(In):
    token: str = Field(min_length=1, max_length=4096)
    new_password: NewPassword


SecondFactorCode = Annotated[
    str,
    Field(
        min_length=6, max_length=32, pattern=r"^\s*[A-Za-z0-9][A-Za-z0-9 -]{4,30}[A-Za-z0-9]\s*$",
        description="Instead of the password, with two-factor on: the code the authenticator app shows now, or an unused recovery code.",
    ),
]


class Reauthentication(In):
    """What proves, beyond a session, that the account's owner asks: the current password, or a
    fresh second factor (a code in this same request)."""

    current_password: Password | None = Field(None, description="The current password (or give `code`).")
    code: SecondFactorCode | None = None


class PasswordChangeIn(Reauthentication):
    new_password: NewPassword


class EmailChangeIn(Reauthentication):
    email: Email = Field(description="The new sign-in address. It is used once it confirms the token mailed to it.")


class RecoveryEmailIn(Reauthentication):
    recovery_email: Email | None = Field(
        description="The new recovery address (used once it confirms the token mailed to it), or null to remove it."
    )


class ProfileIn(In):
    name: Name | None = None
    last_name: Name | None = None
    user_name: Annotated[str, Field(min_length=2, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")] | None = None
    phone: Phone | None = None
    picture: Annotated[HttpUrl, AfterValidator(_https)] | None = None


class UserOut(BaseModel):
    id: str
    email: str
    name: str
    last_name: str
    user_type: str
    user_name: str | None
    picture: str | None
    phone: str | None
    recovery_email: str | None
    is_verified: bool
    is_locked: bool
    first_time: bool
    two_factor_enabled: bool
    passkeys: int = Field(description="How many passkeys the user has.")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(
            id=user.id, email=user.email, name=user.name, last_name=user.last_name, user_type=user.user_type,
            user_name=user.user_name, picture=user.picture, phone=user.phone, recovery_email=user.recovery_email,
            is_verified=user.is_verified, is_locked=user.is_locked, first_time=user.first_time,
            two_factor_enabled=bool((user.two_factor or {}).get("totp", {}).get("confirmed")),
            passkeys=len(user.passkeys or []), created_at=user.created_at, updated_at=user.updated_at,
        )


class SessionOut(BaseModel):
    id: str
    transport: str
    user_agent: str | None
    ip_address: str | None
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    current: bool = False

    @classmethod
    def of(cls, auth_session: AuthSession, current_id: str | None = None) -> SessionOut:
        return cls(
            id=auth_session.id, transport=auth_session.transport, user_agent=auth_session.user_agent,
            ip_address=auth_session.ip_address, created_at=auth_session.created_at,
            last_used_at=auth_session.last_used_at, expires_at=auth_session.expires_at,
            current=auth_session.id == current_id,
        )


class SignInOut(BaseModel):
    """A completed sign-in (``user`` and ``session`` set), or, for an account with two-factor
    authentication on, the password step's answer: ``second_factor_required`` with a challenge to
    send with a code to ``POST /v1/auth/sign-in/second-factor``, and no session yet."""

    user: UserOut | None = Field(None, description="Set once the sign-in is complete.")
    session: SessionOut | None = Field(None, description="Set once the sign-in is complete.")
    first_time: bool = Field(False, description="True on the user's first completed sign-in.")
    token: str | None = Field(None, description="bearer sign-ins: send as `Authorization: Bearer <token>`.")
    csrf_token: str | None = Field(None, description="cookie sign-ins: send as `X-CSRF-Token` on every write.")
    second_factor_required: bool = Field(False, description="True: the password was right; now send a code with the challenge.")
    challenge: str | None = Field(None, description="Single-use, for the second step only. Shown this once.")
    challenge_expires_at: datetime | None = None


class Message(BaseModel):
    detail: str


class ApiKeyIn(In):
    name: Name
    scopes: list[Literal["read", "write"]] = Field(min_length=1, max_length=2)


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    key_prefix: str = Field(description="The key's first characters, to tell keys apart.")
    scopes: list[str]
    created_by_user_id: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(BaseModel):
    api_key: ApiKeyOut
    secret: str = Field(description="The key itself. Shown this once; Billfold keeps only its hash.")
