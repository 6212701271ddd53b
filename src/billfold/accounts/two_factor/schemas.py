"""What the two-factor and passkey endpoints take and give. A TOTP secret and recovery codes
appear only in the answer that creates them; a passkey is shown by id, name and dates only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from billfold.accounts.schemas import In, Password
from billfold.kit.inputs import SingleLine

Code = Annotated[
    str,
    Field(
        min_length=6, max_length=32, pattern=r"^\s*[A-Za-z0-9][A-Za-z0-9 -]{4,30}[A-Za-z0-9]\s*$",
        description="The 6-digit code the authenticator app shows now, or an unused recovery code (XXXX-XXXX-XXXX-XXXX).",
    ),
]
PasskeyName = Annotated[str, Field(min_length=1, max_length=100), SingleLine]
Credential = Annotated[
    dict[str, Any],
    Field(description="The PublicKeyCredential from the browser, as its toJSON() gives it (binary fields base64url)."),
]
Transport = Annotated[
    Literal["bearer", "cookie"],
    Field(description="bearer: the token is returned for an Authorization header; cookie: set as an HTTP-only cookie."),
]


class CodeIn(In):
    code: Code


class PasswordIn(In):
    password: Password = Field(description="The user's current password: a session alone cannot change how its user signs in.")


class TotpEnrolmentOut(BaseModel):
    secret: str = Field(description="Base32 key for the authenticator app. Shown this once.")
    otpauth_uri: str = Field(description="The same key as an otpauth:// URI, for a QR code. Shown this once.")


class RecoveryCodesOut(BaseModel):
    recovery_codes: list[str] = Field(description="Ten single-use codes for when the app is not at hand. Shown this once.")


class TwoFactorOut(BaseModel):
    enabled: bool = Field(description="Whether signing in with a password asks for a code too.")
    pending: bool = Field(description="An enrolment was started and awaits its first code.")
    confirmed_at: datetime | None
    recovery_codes_left: int


class SecondFactorIn(In):
    challenge: str = Field(min_length=1, max_length=255, description="The challenge from the password step.")
    code: Code


class PasskeyOut(BaseModel):
    id: str
    name: str
    created_at: datetime
    last_used_at: datetime | None

    @classmethod
    def of(cls, entry: dict[str, Any]) -> PasskeyOut:
        return cls(id=entry["id"], name=entry["name"], created_at=entry["created_at"], last_used_at=entry.get("last_used_at"))


class PasskeyList(BaseModel):
    data: list[PasskeyOut]
    has_more: bool = Field(False, description="Always false: a user has at most twenty passkeys.")


class PasskeyIn(In):
    name: PasskeyName = Field(description="A name to tell it apart, such as the device.")
    credential: Credential


class PasskeyRenameIn(In):
    name: PasskeyName


class PasskeySignInIn(In):
    credential: Credential
    transport: Transport = "bearer"


WebAuthnOptions = Annotated[
    dict[str, Any],
    Field(description="Options for navigator.credentials.create() or .get(), in their JSON form (binary fields base64url)."),
]
