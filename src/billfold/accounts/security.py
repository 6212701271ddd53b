"""The installation's security context (settings and keys), passwords, and the principal a
request acts as."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from billfold.config import Settings
from billfold.kit.crypto import Keyring, load_secret
from billfold.kit.errors import Forbidden, InvalidInput
from billfold.models import ApiKey, AuthSession, User

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024

_hasher = PasswordHasher()  # Argon2id with argon2-cffi's recommended parameters (RFC 9106)
# Checked against when the email is unknown, so a wrong email costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("billfold-no-such-user")


@dataclass
class Security:
    settings: Settings
    keyring: Keyring

    @classmethod
    def from_settings(cls, settings: Settings) -> Security:
        configured = settings.secret_key.get_secret_value() if settings.secret_key else None
        return cls(settings, Keyring(load_secret(configured, settings.data_dir)))


def check_new_password(password: str, field: str = "password") -> None:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        detail = f"a password needs {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters"
        raise InvalidInput(detail, errors=[{"field": field, "message": detail}])


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def password_matches(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


class Requirements:
    """What an endpoint may require of whoever asks: to be one of the shop's admins, to hold a
    scope (an API key's; a signed-in user holds them all)."""

    api_key: object | None
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        raise NotImplementedError

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("only the shop's admins may do this")

    def require_scope(self, scope: str) -> None:
        if self.api_key is not None and scope not in self.scopes:
            raise Forbidden(f"this API key lacks the {scope!r} scope")


@dataclass(frozen=True)
class Credential(Requirements):
    """Who a bearer credential names, read without loading its rows as objects
    (``sessions.credential_for_token``): for a request that needs only to know who asks and what
    they may do (the entitlement door). ``api_key``: the key's id. ``expires_at``: when a
    session stops naming its user unless used again (None: an API key); ``touch_at``: when its
    last use is next due to be noted (``sessions.TOUCH_EVERY`` after the last note)."""

    user_id: str | None
    user_type: str | None
    api_key: str | None
    scopes: frozenset[str]
    expires_at: datetime | None = None
    touch_at: datetime | None = None

    @property
    def is_admin(self) -> bool:
        return self.api_key is not None or self.user_type == "admin"


@dataclass
class Principal(Requirements):
    """Who a request acts as: a signed-in user (by session) or the merchant's backend (by API key)."""

    user: User | None = None
    auth_session: AuthSession | None = None
    api_key: ApiKey | None = None  # type: ignore[assignment]
    scopes: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_admin(self) -> bool:
        """Admin users and API keys run the shop and see everything."""
        return self.api_key is not None or (self.user is not None and self.user.user_type == "admin")

    @property
    def idempotency_scope(self) -> str:
        """Whose ``Idempotency-Key``s these are: the API key's id, or the signed-in user's."""
        if self.api_key is not None:
            return self.api_key.id
        assert self.user is not None, "a principal is an API key or a user"
        return self.user.id
