"""API keys for the merchant's backend: made by an admin, shown once, kept as a SHA-256, scoped,
revocable."""

from __future__ import annotations

from sqlalchemy.orm import Session

from billfold.audit import audit
from billfold.accounts.sessions import API_KEY_PREFIX
from billfold.kit import clock
from billfold.kit.crypto import hash_token, random_token
from billfold.kit.errors import Forbidden, InvalidInput
from billfold.models import ApiKey

API_KEY_SCOPES = ("read", "write")


class ScopeNotHeld(Forbidden):
    code = "scope_not_held"
    title = "Scope not held"


def create_api_key(
    session: Session, *, name: str, scopes: list[str], created_by: str | None, by_key: ApiKey | None = None
) -> tuple[ApiKey, str]:
    """A new API key: the returned secret is shown once and never stored. A key made by another
    key (``by_key``) gets no scope that key lacks, so a key can never widen its own reach."""
    unknown = sorted(set(scopes) - set(API_KEY_SCOPES))
    if unknown or not scopes:
        detail = f"scopes must be some of {', '.join(API_KEY_SCOPES)}" + (f", not {', '.join(unknown)}" if unknown else "")
        raise InvalidInput(detail, errors=[{"field": "scopes", "message": detail}])
    if by_key is not None and (missing := sorted(set(scopes) - set(by_key.scopes))):
        detail = f"an API key may only make keys with scopes it has itself; this one lacks {', '.join(missing)}"
        raise ScopeNotHeld(detail, errors=[{"field": "scopes", "message": detail}])
    if not name.strip():
        raise InvalidInput("an API key needs a name", errors=[{"field": "name", "message": "must not be blank"}])
    secret = random_token(API_KEY_PREFIX)
    key = ApiKey(
        name=name.strip(), key_prefix=secret[:12], key_hash=hash_token(secret),
        scopes=sorted(set(scopes)), created_by_user_id=created_by,
    )
    session.add(key)
    session.flush()
    audit(session, "api_key", key.id, "created", scopes=key.scopes, created_by=created_by, **({"by_key": by_key.id} if by_key else {}))
    return key, secret


def revoke_api_key(session: Session, key: ApiKey) -> None:
    if key.revoked_at is None:
        key.revoked_at = clock.now()
        audit(session, "api_key", key.id, "revoked")
