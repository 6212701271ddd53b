"""Signing in and out: throttles, account lock, sessions, and who a request's credentials name.

A sign-in answer never says whether an address has an account: an unknown address, a wrong
password and a locked account all get the same 401, and take as long. With two-factor
authentication on, the password step opens a single-use challenge (``auth_challenges``) that the
second step completes with a code; wrong codes count like wrong passwords. Passkey sign-in
(``passkeys``) ends in the same ``finish_sign_in``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.accounts.two_factor import service as two_factor
from billfold.accounts.security import Credential, Principal, Security, password_matches
from billfold.accounts.service import normalize_email, user_by_email
from billfold.audit import audit
from billfold.kit import clock
from billfold.kit.crypto import hash_token, keyed_digest, random_token
from billfold.kit.db.dialects import for_update, upsert_row
from billfold.kit.errors import InvalidInput, TooManyRequests, Unauthorized
from billfold.models import ApiKey, AuthChallenge, AuthSession, SignInThrottle, User

THROTTLE_WINDOW = timedelta(minutes=15)
TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often
SESSION_PREFIX, API_KEY_PREFIX = "bfs", "bfk"
SIGN_IN_FAILED = "The email or password is wrong, or the account is locked. A password reset unlocks it."
SECOND_FACTOR_FAILED = "The code is wrong, the sign-in has expired or was completed, or the account is locked."
SECOND_FACTOR, SECOND_FACTOR_LIFETIME, CHALLENGE_PREFIX = "second_factor", timedelta(minutes=5), "bfc"


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
    second_factor_challenge: str | None = None
    challenge_expires_at: datetime | None = None

    @property
    def second_factor_required(self) -> bool:
        return self.second_factor_challenge is not None


def _email_key(email: str) -> str:
    # A digest: keeps keys short whatever the address's length, and no address in this table.
    return f"email:{hash_token(email)}"


def _throttle_keys(email: str | None, address: str | None) -> list[str]:
    return ([_email_key(email)] if email else []) + ([f"address:{address}"] if address else [])


def _retry_after(session: Session, key: str, limit: int) -> int | None:
    row = session.get(SignInThrottle, key)
    if row is None or row.failures < limit:
        return None
    remaining = row.window_started_at + THROTTLE_WINDOW - clock.now()
    return int(remaining.total_seconds()) + 1 if remaining > timedelta(0) else None


def _record_failure(session: Session, key: str, *, windowed: bool = True) -> int:
    """Count one failure under ``key`` (atomically, whatever else runs) and return the count."""
    now = clock.now()
    table = SignInThrottle.__table__
    if windowed:
        expired = table.c.window_started_at <= now - THROTTLE_WINDOW
        # failures first: MariaDB sets left to right, and this reads the window's old start
        update = [
            ("failures", sa.case((expired, 1), else_=table.c.failures + 1)),
            ("window_started_at", sa.case((expired, now), else_=table.c.window_started_at)),
        ]
    else:
        update = [("failures", table.c.failures + 1)]
    fresh = {"failures": 1, "window_started_at": now}
    return int(upsert_row(session, table, {"key": key}, fresh, update, "failures"))


def check_throttles(session: Session, security: Security, *, email: str | None, address: str | None) -> None:
    """Refuse (429) a sign-in attempt from an address, or against an account, that failed too often
    in the current window."""
    settings = security.settings
    limits = {_email_key(email): settings.sign_in_attempts_per_account} if email else {}
    if address:
        limits[f"address:{address}"] = settings.sign_in_attempts_per_address
    waits = [w for key, limit in limits.items() if (w := _retry_after(session, key, limit))]
    if waits:
        raise TooManyRequests(f"too many failed sign-ins; try again in {max(waits)} seconds", retry_after=max(waits))


def record_failed_sign_in(session: Session, security: Security, *, email: str | None, address: str | None, user: User | None) -> SignIn:
    """Count a failed attempt toward the throttles and, for a known unlocked account, toward its
    lock. A wrong password and a wrong second-factor code both count."""
    for key in _throttle_keys(email, address):
        _record_failure(session, key)
    locks = security.settings.max_failed_sign_ins
    if user is not None and not user.is_locked and _record_failure(session, f"user:{user.id}", windowed=False) >= locks:
        user.is_locked = True
        audit(session, "user", user.id, "locked", reason="failed_sign_ins")
    return SignIn(failed=True)


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
    """The password step. For an account with two-factor authentication on, no session yet: the
    outcome carries a challenge for ``complete_second_factor``. The count of consecutive failures
    is kept until the second factor is given too, so a known password does not buy more guesses."""
    email = normalize_email(email)
    check_throttles(session, security, email=email, address=address)
    user = user_by_email(session, email)
    # Checked whatever the case (against a dummy hash for no account), so an unknown address or a
    # locked account costs one Argon2 verification, as a wrong password does: no timing tells them apart.
    matches = password_matches(user.password_hash if user else None, password)
    if user is None or user.is_locked or not matches:
        return record_failed_sign_in(session, security, email=email, address=address, user=user)
    if two_factor.enabled(user):
        challenge, row = open_challenge(
            session, SECOND_FACTOR, user_id=user.id, lifetime=SECOND_FACTOR_LIFETIME, token_prefix=CHALLENGE_PREFIX,
            data={"transport": transport},
        )
        return SignIn(second_factor_challenge=challenge, challenge_expires_at=row.expires_at)
    return finish_sign_in(session, security, user, transport=transport, address=address, user_agent=user_agent)


def complete_second_factor(
    session: Session, security: Security, *, challenge: str, code: str, address: str | None, user_agent: str | None
) -> SignIn:
    """The second step: a TOTP code or a recovery code for the challenge the password step gave.
    Every failure (unknown, used or expired challenge, wrong code, locked account) looks the same;
    wrong codes count toward the throttles and the lock like wrong passwords. The challenge stays
    open for another try after a wrong code, until it expires or the account locks."""
    row = find_challenge(session, SECOND_FACTOR, challenge)
    if row is None or row.user_id is None or not isinstance(row.data, dict):
        check_throttles(session, security, email=None, address=address)
        return record_failed_sign_in(session, security, email=None, address=address, user=None)
    user = locked_user(session, row.user_id)
    email = user.email if user else None
    check_throttles(session, security, email=email, address=address)
    if user is None or user.is_locked:
        return record_failed_sign_in(session, security, email=email, address=address, user=None)
    if not two_factor.use_code(session, security, user, code):
        return record_failed_sign_in(session, security, email=email, address=address, user=user)
    transport = "cookie" if row.data.get("transport") == "cookie" else "bearer"
    if not claim_challenge(session, row):
        return SignIn(failed=True)  # completed meanwhile by a request that held the lock first
    return finish_sign_in(session, security, user, transport=transport, address=address, user_agent=user_agent)


def check_second_factor(session: Session, security: Security, user: User, code: str, *, address: str | None) -> bool:
    """Check a signed-in user's code before a change to their two-factor settings. A wrong code
    counts as a failed sign-in (throttles and lock), so a stolen session cannot guess codes.
    The caller holds the user's row lock (``locked_user``)."""
    check_throttles(session, security, email=user.email, address=address)
    if two_factor.use_code(session, security, user, code):
        return True
    record_failed_sign_in(session, security, email=user.email, address=address, user=user)
    return False


def reauthenticate(
    session: Session, security: Security, user: User, *, password: str | None, code: str | None, address: str | None
) -> bool:
    """Check that a signed-in user is who the account belongs to before a change to how it is
    reached (its password, addresses) or its deletion: the current password, or a fresh second
    factor (a code from the authenticator app, or an unused recovery code, in the same request).
    A wrong password raises 401; a wrong code returns False after counting as a failed sign-in
    (the caller commits that and answers 401). The caller holds the row lock (``locked_user``)."""
    if password is not None:
        if not password_matches(user.password_hash, password):
            raise Unauthorized("the current password is wrong", errors=[{"field": "current_password", "message": "wrong password"}])
        return True
    if code is None:
        detail = "give the current password, or a code from your authenticator app"
        raise InvalidInput(detail, errors=[{"field": "current_password", "message": detail}])
    if not two_factor.enabled(user):
        detail = "two-factor authentication is off: give the current password"
        raise InvalidInput(detail, errors=[{"field": "code", "message": detail}])
    return check_second_factor(session, security, user, code, address=address)


def locked_user(session: Session, user_id: str) -> User | None:
    """The user's row, read afresh and locked until the transaction ends: a code checked and
    spent under this lock cannot be spent twice by requests side by side."""
    statement = sa.select(User).where(User.id == user_id).execution_options(populate_existing=True)
    return session.scalars(for_update(statement, session)).one_or_none()


def finish_sign_in(
    session: Session, security: Security, user: User, *, transport: str, address: str | None, user_agent: str | None
) -> SignIn:
    """Open the session of a sign-in that passed every check; the count of failures starts over."""
    session.execute(sa.delete(SignInThrottle).where(SignInThrottle.key == f"user:{user.id}"))
    auth_session, token = open_session(
        session, user, transport=transport, address=address, user_agent=user_agent, days=security.settings.session_days
    )
    first_time = user.first_time
    if first_time:
        user.first_time = False
    return SignIn(user=user, auth_session=auth_session, token=token, first_time=first_time)


def open_challenge(
    session: Session,
    purpose: str,
    *,
    user_id: str | None,
    lifetime: timedelta,
    token_prefix: str | None = None,
    secret: str | None = None,
    data: dict[str, Any] | None = None,
) -> tuple[str, AuthChallenge]:
    """Keep a single-use challenge until ``lifetime`` from now, under the SHA-256 of its secret:
    ``secret`` when the caller made it (a WebAuthn challenge), else a new random token."""
    secret = secret or random_token(token_prefix or "bfc")
    now = clock.now()
    row = AuthChallenge(user_id=user_id, purpose=purpose, secret_hash=hash_token(secret), data=data, expires_at=now + lifetime)
    session.add(row)
    session.flush()
    return secret, row


def find_challenge(session: Session, purpose: str, secret: str) -> AuthChallenge | None:
    """The open challenge for ``secret``: made for ``purpose``, not used and not expired."""
    row = session.scalars(sa.select(AuthChallenge).where(AuthChallenge.secret_hash == hash_token(secret))).one_or_none()
    if row is None or row.purpose != purpose or row.used_at is not None or row.expires_at <= clock.now():
        return None
    return row


def claim_challenge(session: Session, row: AuthChallenge) -> bool:
    """Mark the challenge used; False if another request used it first (one statement, so two
    processes cannot both succeed)."""
    table = AuthChallenge.__table__
    now = clock.now()
    claimed = session.execute(
        sa.update(table).where(table.c.id == row.id, table.c.used_at.is_(None), table.c.expires_at > now).values(used_at=now)
    ).rowcount
    if claimed:
        session.expire(row)
    return claimed == 1


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
    """Who a session token or API key names, or None if it names no one (unknown, expired, revoked).
    The rules are ``_key_usable``/``_session_usable`` and ``_touch_due``, shared with
    ``credential_for_token``."""
    now = clock.now()
    if token.startswith(f"{API_KEY_PREFIX}_"):
        key = session.scalars(sa.select(ApiKey).where(ApiKey.key_hash == hash_token(token))).one_or_none()
        if key is None or not _key_usable(key.revoked_at):
            return None
        if _touch_due(now, key.last_used_at):
            key.last_used_at = now
        return Principal(api_key=key, scopes=frozenset(key.scopes))
    if token.startswith(f"{SESSION_PREFIX}_"):
        auth_session = session.scalars(sa.select(AuthSession).where(AuthSession.token_hash == hash_token(token))).one_or_none()
        user = session.get(User, auth_session.user_id) if auth_session is not None else None
        if user is None or not _session_usable(now, auth_session.revoked_at, auth_session.expires_at, user.is_locked):
            return None
        if _touch_due(now, auth_session.last_used_at):
            auth_session.last_used_at, auth_session.expires_at = now, _renewed_until(security, now)
        return Principal(user=user, auth_session=auth_session, scopes=frozenset({"read", "write"}))
    return None


def _key_usable(revoked_at: datetime | None) -> bool:
    return revoked_at is None


def _session_usable(now: datetime, revoked_at: datetime | None, expires_at: datetime, user_locked: bool) -> bool:
    """A session names its user while it is neither revoked nor expired and the user not locked."""
    return revoked_at is None and expires_at > now and not user_locked


def _touch_due(now: datetime, last_used_at: datetime | None) -> bool:
    """A credential's last use is written at most once per ``TOUCH_EVERY``."""
    return last_used_at is None or now - last_used_at >= TOUCH_EVERY


def _renewed_until(security: Security, now: datetime) -> datetime:
    """A session in use is kept for ``session_days`` from its last use."""
    return now + timedelta(days=security.settings.session_days)


_api_keys, _auth_sessions, _users = ApiKey.__table__, AuthSession.__table__, User.__table__
_KEY_BY_DIGEST = sa.select(_api_keys.c.id, _api_keys.c.revoked_at, _api_keys.c.last_used_at, _api_keys.c.scopes).where(
    _api_keys.c.key_hash == sa.bindparam("digest", type_=sa.String)
)
_SESSION_BY_DIGEST = (
    sa.select(_auth_sessions.c.id, _auth_sessions.c.user_id, _auth_sessions.c.revoked_at, _auth_sessions.c.expires_at,
              _auth_sessions.c.last_used_at, _users.c.user_type, _users.c.is_locked)
    .select_from(_auth_sessions.join(_users, _users.c.id == _auth_sessions.c.user_id))
    .where(_auth_sessions.c.token_hash == sa.bindparam("digest", type_=sa.String))
)


def credential_for_token(session: Session, security: Security, token: str) -> Credential | None:
    """``principal_for_token``'s answer for a request that needs only to know who asks: the same
    rules (the same functions) and the same note of the credential's last use, in one statement
    of SQLAlchemy Core, no row loaded as an object."""
    now = clock.now()
    if token.startswith(f"{API_KEY_PREFIX}_"):
        key = session.execute(_KEY_BY_DIGEST, {"digest": hash_token(token)}).one_or_none()
        if key is None or not _key_usable(key.revoked_at):
            return None
        last_used = key.last_used_at
        if _touch_due(now, last_used):
            session.execute(_touched(_api_keys, key.id), {"last_used_at": now})
            last_used = now
        return Credential(
            user_id=None, user_type=None, api_key=key.id, scopes=frozenset(key.scopes), touch_at=last_used + TOUCH_EVERY,
        )
    if token.startswith(f"{SESSION_PREFIX}_"):
        row = session.execute(_SESSION_BY_DIGEST, {"digest": hash_token(token)}).one_or_none()
        if row is None or not _session_usable(now, row.revoked_at, row.expires_at, row.is_locked):
            return None
        last_used, expires = row.last_used_at, row.expires_at
        if _touch_due(now, last_used):
            last_used, expires = now, _renewed_until(security, now)
            session.execute(_touched(_auth_sessions, row.id), {"last_used_at": now, "expires_at": expires})
        return Credential(
            user_id=row.user_id, user_type=row.user_type, api_key=None, scopes=frozenset({"read", "write"}),
            expires_at=expires, touch_at=last_used + TOUCH_EVERY,
        )
    return None


def _touched(table: sa.Table, row_id: str) -> sa.Update:
    """The note of a credential's last use: it changes nothing a kept answer depends on (a
    session's expiry only moves later), so it moves no change mark (``kit.db.changes``)."""
    return sa.update(table).where(table.c.id == row_id).execution_options(billfold_changes=())


def sign_out(session: Session, auth_session: AuthSession) -> None:
    if auth_session.revoked_at is None:
        auth_session.revoked_at = clock.now()
        audit(session, "user", auth_session.user_id, "signed_out", session_id=auth_session.id)


def sessions_of(session: Session, user_id: str) -> sa.Select[tuple[AuthSession]]:
    return sa.select(AuthSession).where(
        AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None), AuthSession.expires_at > clock.now()
    )
