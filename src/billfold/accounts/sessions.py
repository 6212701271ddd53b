"""Signing in and out: throttles, account lock, sessions, and who a request's credentials name.

A sign-in answer never says whether an address has an account: an unknown address, a wrong
password and a locked account all get the same 401, and take as long.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.accounts.security import Principal, Security, password_matches
from billfold.accounts.service import audit, normalize_email, user_by_email
from billfold.kit import clock
from billfold.kit.crypto import hash_token, keyed_digest, random_token
from billfold.kit.db.dialects import insert_ignore
from billfold.kit.errors import TooManyRequests, Unauthorized
from billfold.models import ApiKey, AuthSession, SignInThrottle, User

THROTTLE_WINDOW = timedelta(minutes=15)
TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often
SESSION_PREFIX, API_KEY_PREFIX = "bfs", "bfk"
SIGN_IN_FAILED = "The email or password is wrong, or the account is locked. A password reset unlocks it."


class SignInFailed(Unauthorized):
    code = "sign_in_failed"
    title = "Sign-in failed"


@dataclass
class SignIn:
    """The outcome of a sign-in attempt. ``failed`` answers 401 after the attempt is recorded."""

    failed: bool = False
    user: User | None = None
    auth_session: AuthSession | None = None
    token: str | None = None
    first_time: bool = False


def _throttle_keys(email: str, address: str | None) -> list[str]:
    return [f"email:{email}"] + ([f"address:{address}"] if address else [])


def _retry_after(session: Session, key: str, limit: int) -> int | None:
    row = session.get(SignInThrottle, key)
    if row is None or row.failures < limit:
        return None
    remaining = row.window_started_at + THROTTLE_WINDOW - clock.now()
    return int(remaining.total_seconds()) + 1 if remaining > timedelta(0) else None


def _record_failure(session: Session, key: str, *, windowed: bool = True) -> int:
    """Count one failure under ``key`` (atomically, whatever else runs) and return the count."""
    now = clock.now()
    insert_ignore(session, SignInThrottle.__table__, [{"key": key, "failures": 0, "window_started_at": now}], key=["key"])
    table = SignInThrottle.__table__
    if windowed:
        expired = table.c.window_started_at <= now - THROTTLE_WINDOW
        values = {
            "failures": sa.case((expired, 1), else_=table.c.failures + 1),
            "window_started_at": sa.case((expired, now), else_=table.c.window_started_at),
        }
    else:
        values = {"failures": table.c.failures + 1}
    session.execute(sa.update(table).where(table.c.key == key).values(**values))
    return session.scalar(sa.select(table.c.failures).where(table.c.key == key)) or 0


def sign_in(
    session: Session,
    security: Security,
    *,
    email: str,
    password: str,
    transport: str,
    address: str | None,
    user_agent: str | None,
) -> SignIn:
    settings = security.settings
    email = normalize_email(email)
    limits = {f"email:{email}": settings.sign_in_attempts_per_account}
    if address:
        limits[f"address:{address}"] = settings.sign_in_attempts_per_address
    waits = [w for key, limit in limits.items() if (w := _retry_after(session, key, limit))]
    if waits:
        raise TooManyRequests(f"too many failed sign-ins; try again in {max(waits)} seconds", retry_after=max(waits))

    user = user_by_email(session, email)
    if user is None or user.is_locked or not password_matches(user.password_hash, password):
        for key in _throttle_keys(email, address):
            _record_failure(session, key)
        if user is not None and not user.is_locked:
            if _record_failure(session, f"user:{user.id}", windowed=False) >= settings.max_failed_sign_ins:
                user.is_locked = True
                audit(session, "user", user.id, "locked", reason="failed_sign_ins")
        return SignIn(failed=True)

    session.execute(sa.delete(SignInThrottle).where(SignInThrottle.key == f"user:{user.id}"))
    auth_session, token = open_session(session, user, transport=transport, address=address, user_agent=user_agent, days=settings.session_days)
    first_time = user.first_time
    if first_time:
        user.first_time = False
    return SignIn(user=user, auth_session=auth_session, token=token, first_time=first_time)


def open_session(
    session: Session, user: User, *, transport: str, address: str | None, user_agent: str | None, days: int
) -> tuple[AuthSession, str]:
    token = random_token(SESSION_PREFIX)
    now = clock.now()
    auth_session = AuthSession(
        user_id=user.id,
        token_hash=hash_token(token),
        transport=transport,
        ip_address=address,
        user_agent=(user_agent or "")[:255] or None,
        last_used_at=now,
        expires_at=now + timedelta(days=days),
    )
    session.add(auth_session)
    session.flush()
    audit(session, "user", user.id, "signed_in", session_id=auth_session.id, transport=transport)
    return auth_session, token


def csrf_token(security: Security, auth_session: AuthSession) -> str:
    """The value a cookie-signed-in client sends back in ``X-CSRF-Token`` on every write."""
    return keyed_digest(security.keyring, "csrf", auth_session.id)


def principal_for_token(session: Session, security: Security, token: str) -> Principal | None:
    """Who a session token or API key names, or None if it names no one (unknown, expired, revoked)."""
    now = clock.now()
    if token.startswith(f"{API_KEY_PREFIX}_"):
        key = session.scalars(sa.select(ApiKey).where(ApiKey.key_hash == hash_token(token))).one_or_none()
        if key is None or key.revoked_at is not None:
            return None
        if key.last_used_at is None or now - key.last_used_at >= TOUCH_EVERY:
            key.last_used_at = now
        return Principal(api_key=key, scopes=frozenset(key.scopes))
    if token.startswith(f"{SESSION_PREFIX}_"):
        auth_session = session.scalars(sa.select(AuthSession).where(AuthSession.token_hash == hash_token(token))).one_or_none()
        if auth_session is None or auth_session.revoked_at is not None or auth_session.expires_at <= now:
            return None
        user = session.get(User, auth_session.user_id)
        if user is None or user.is_locked:
            return None
        if now - auth_session.last_used_at >= TOUCH_EVERY:
            auth_session.last_used_at = now
            auth_session.expires_at = now + timedelta(days=security.settings.session_days)
        return Principal(user=user, auth_session=auth_session, scopes=frozenset({"read", "write"}))
    return None


def sign_out(session: Session, auth_session: AuthSession) -> None:
    if auth_session.revoked_at is None:
        auth_session.revoked_at = clock.now()
        audit(session, "user", auth_session.user_id, "signed_out", session_id=auth_session.id)


def sessions_of(session: Session, user_id: str) -> sa.Select[tuple[AuthSession]]:
    return sa.select(AuthSession).where(
        AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None), AuthSession.expires_at > clock.now()
    )
