"""Users: registration, email verification, passwords and their reset, locking.

Services take a session and never commit. Emails are queued on the session and leave only if
the transaction commits.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from sqlalchemy.orm import Session

from billfold.accounts.security import Security, check_new_password, hash_password
from billfold.audit import audit
from billfold.kit import clock
from billfold import mailer
from billfold.kit.crypto import read_signed_token, signed_token
from billfold.kit.db.dialects import for_update
from billfold.kit.errors import Conflict, InvalidInput, NotFound, Unauthorized
from billfold.models import AuthChallenge, AuthSession, SignInThrottle, User

VERIFY_LIFETIME = timedelta(days=2)
RESET_LIFETIME = timedelta(hours=1)
SELF_SERVICE_USER_TYPES = ("individual", "business")
# Changes of address waiting for the new address to confirm them (auth_challenges.purpose).
EMAIL_CHANGE, RECOVERY_EMAIL_CHANGE = "email_change", "recovery_email_change"
PENDING_CHANGES = (EMAIL_CHANGE, RECOVERY_EMAIL_CHANGE)


def normalize_email(raw: str, field: str = "email") -> str:
    """The address as Billfold stores it: validated, lower-cased, so one person has one account."""
    try:
        return validate_email(raw.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as error:
        raise InvalidInput(f"{raw!r} is not an email address: {error}", errors=[{"field": field, "message": str(error)}]) from error


def user_by_email(session: Session, email: str) -> User | None:
    return session.scalars(sa.select(User).where(User.email == email)).one_or_none()


def get_user(session: Session, user_id: str, *, lock: bool = False) -> User:
    statement = sa.select(User).where(User.id == user_id)
    user = session.scalars(for_update(statement, session) if lock else statement).one_or_none()
    if user is None:
        raise NotFound(f"no user {user_id}")
    return user


def register(
    session: Session, security: Security, *, email: str, password: str, name: str, last_name: str, user_type: str = "individual"
) -> User | None:
    """Open an account and email a verification link. For an address that already has an account
    nothing is created and its owner is told by email instead, so the answer cannot be used to
    find out who has an account. Returns the new user, or None."""
    email = normalize_email(email)
    check_new_password(password)
    if user_type not in SELF_SERVICE_USER_TYPES:
        detail = f"user_type must be one of {', '.join(SELF_SERVICE_USER_TYPES)}"
        raise InvalidInput(detail, errors=[{"field": "user_type", "message": detail}])
    existing = user_by_email(session, email)
    if existing is not None:
        hash_password(password)  # the work a new account costs, so the answer's timing tells nothing either
        mailer.queue(session, mailer.Email(
            email, "Someone tried to sign up with your address",
            "An account already exists for this address. If it was you, sign in, or reset your password at "
            f"{security.settings.public_url}/v1/auth/password-reset.\n"
            + ("" if existing.is_verified else
               "The address was never confirmed: if you did not open this account, a reset gives it to you and "
               "removes everything set on it before.\n")
            + "If it was not you, you can ignore this email.",
        ))
        return None
    user = User(email=email, name=name.strip(), last_name=last_name.strip(), user_type=user_type, password_hash=hash_password(password))
    session.add(user)
    session.flush()
    send_verification(session, security, user)
    audit(session, "user", user.id, "registered")
    return user


class EmailTaken(Conflict):
    code = "email_taken"
    title = "Email address taken"


def create_customer(
    session: Session, *, email: str, name: str, last_name: str, user_type: str = "individual",
    phone: str | None = None, by: str,
) -> User:
    """A customer made by the merchant (an admin or an API key): no password, not verified, no
    email sent; audited as ``created_by_merchant``, naming ``by``. Signing in needs a password
    reset to the address first, which proves it is theirs."""
    email = normalize_email(email)
    if user_type not in SELF_SERVICE_USER_TYPES:
        detail = f"user_type must be one of {', '.join(SELF_SERVICE_USER_TYPES)}"
        raise InvalidInput(detail, errors=[{"field": "user_type", "message": detail}])
    if user_by_email(session, email) is not None:
        raise EmailTaken(
            f"a user with the address {email} exists; find it with GET /v1/users?email=",
            errors=[{"field": "email", "message": "taken"}],
        )
    user = User(email=email, name=name.strip(), last_name=last_name.strip(), user_type=user_type, phone=phone)
    session.add(user)
    session.flush()
    audit(session, "user", user.id, "created_by_merchant", by=by)
    return user


def send_verification(session: Session, security: Security, user: User) -> None:
    token = signed_token(security.keyring, "verify-email", {"uid": user.id, "email": user.email}, VERIFY_LIFETIME)
    mailer.queue(session, mailer.Email(
        user.email, "Confirm your email address",
        f"Hello {user.name},\n\nConfirm your address for Billfold with this token (valid for two days):\n\n{token}\n\n"
        f"POST it to {security.settings.public_url}/v1/auth/verify-email as {{\"token\": \"...\"}}.\n",
    ))


def verify_email(session: Session, security: Security, token: str) -> User:
    payload = read_signed_token(security.keyring, "verify-email", token)
    user = session.get(User, payload["uid"])
    if user is None or user.email != payload["email"]:
        raise InvalidInput("the token is not valid", field="token")
    mark_verified(session, user)
    return user


def mark_verified(session: Session, user: User, *, keep_session_id: str | None = None, by: str = "token") -> None:
    """The account's address is proven (a token mailed to it came back). The first time, whoever
    held the account before (anyone can register any address) loses what they set on it: see
    ``clear_what_was_set_before``."""
    if user.is_verified:
        return
    user.is_verified = True
    cleared = clear_what_was_set_before(session, user, keep_session_id=keep_session_id)
    audit(session, "user", user.id, "email_verified", by=by, cleared=cleared)


def clear_what_was_set_before(session: Session, user: User, *, keep_session_id: str | None = None) -> list[str]:
    """Take away every way back in that an earlier holder of the account could have left: the
    recovery address, changes of address waiting for confirmation, passkeys, two-factor, and
    every session but ``keep_session_id``. What was cleared, by name."""
    held = {"recovery_email": user.recovery_email, "two_factor": user.two_factor, "passkeys": user.passkeys}
    cleared = [name for name, value in held.items() if value]
    user.recovery_email = None
    user.two_factor = None
    user.passkeys = None
    if cancel_pending_changes(session, user.id):
        cleared.append("pending_changes")
    if _end_sessions(session, user.id, keep_session_id):
        cleared.append("sessions")
    return cleared


def cancel_pending_changes(session: Session, user_id: str, purposes: tuple[str, ...] = PENDING_CHANGES) -> int:
    """Void every change of address still waiting for its confirmation; how many there were."""
    table = AuthChallenge.__table__
    return session.execute(
        sa.update(table)
        .where(table.c.user_id == user_id, table.c.purpose.in_(purposes), table.c.used_at.is_(None))
        .values(used_at=clock.now())
    ).rowcount or 0


def _end_sessions(session: Session, user_id: str, keep_session_id: str | None) -> int:
    revoke = sa.update(AuthSession).where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
    if keep_session_id:
        revoke = revoke.where(AuthSession.id != keep_session_id)
    return session.execute(revoke.values(revoked_at=clock.now())).rowcount or 0


def _password_fingerprint(user: User) -> str:
    # Changes with every new password (so a reset token works once) and with the address.
    return hashlib.sha256(f"{user.password_hash or ''}|{user.email}".encode()).hexdigest()[:16]


def request_password_reset(session: Session, security: Security, email: str) -> None:
    """Email a single-use reset token to the account's address, and to its recovery address once
    the account's own address is confirmed, if there is such an account. The answer is the same
    either way."""
    user = user_by_email(session, normalize_email(email))
    if user is None:
        return
    token = signed_token(
        security.keyring, "reset-password", {"uid": user.id, "pw": _password_fingerprint(user)}, RESET_LIFETIME
    )
    recovery = user.recovery_email if user.is_verified else None
    for address in dict.fromkeys(a for a in (user.email, recovery) if a):
        mailer.queue(session, mailer.Email(
            address, "Reset your Billfold password",
            f"Hello {user.name},\n\nReset your password with this token within the hour:\n\n{token}\n\n"
            f"POST it to {security.settings.public_url}/v1/auth/password-reset/confirm with your new password.\n"
            "If you did not ask for this, ignore this email: your password stays as it is.\n",
        ))


def reset_password(session: Session, security: Security, token: str, new_password: str) -> User:
    """Set a new password from a reset token: unlocks the account and signs out every session."""
    payload = read_signed_token(security.keyring, "reset-password", token)
    check_new_password(new_password, "new_password")
    user = session.get(User, payload["uid"])
    if user is None or payload["pw"] != _password_fingerprint(user):
        raise InvalidInput("the token is not valid or has been used", field="token")
    was_verified = user.is_verified
    _set_password(session, user, new_password, keep_session_id=None)
    user.is_locked = False
    session.execute(sa.delete(SignInThrottle).where(SignInThrottle.key == f"user:{user.id}"))
    if was_verified:
        # Whoever reset may be taking the account back: nothing set before leads the way back in.
        cleared = ["recovery_email"] if user.recovery_email else []
        user.recovery_email = None
        if cancel_pending_changes(session, user.id):
            cleared.append("pending_changes")
    else:
        # An unconfirmed account's reset token went to its own address only: that proves it.
        mark_verified(session, user, by="password_reset")
        cleared = []
    audit(session, "user", user.id, "password_reset", cleared=cleared)
    tell(session, user, "Your Billfold password was reset",
         "Your password was reset and every session signed out. Any recovery address and any change of address "
         "waiting for confirmation were removed: set them again once signed in.")
    return user


def change_password(session: Session, user: User, new: str, keep_session_id: str | None) -> None:
    """Change a signed-in user's password (the caller checked the current one, or a second
    factor); every other session of theirs is signed out."""
    check_new_password(new, "new_password")
    _set_password(session, user, new, keep_session_id)
    audit(session, "user", user.id, "password_changed")
    tell(session, user, "Your Billfold password was changed", "Your password was changed and your other sessions signed out.")


def tell(session: Session, user: User, subject: str, what: str, *, to: str | None = None) -> None:
    """Tell the account's owner, at its address (or ``to``), of a change to how it is reached."""
    mailer.queue(session, mailer.Email(
        to or user.email, subject,
        f"Hello {user.name},\n\n{what}\n\nIf it was not you, reset your password now at "
        "POST /v1/auth/password-reset: a reset signs out every session and cancels changes waiting for confirmation.\n",
    ))


def _set_password(session: Session, user: User, password: str, keep_session_id: str | None) -> None:
    user.password_hash = hash_password(password)
    _end_sessions(session, user.id, keep_session_id)


def unlock(session: Session, user_id: str) -> User:
    user = get_user(session, user_id)
    user.is_locked = False
    session.execute(sa.delete(SignInThrottle).where(SignInThrottle.key == f"user:{user.id}"))
    audit(session, "user", user.id, "unlocked")
    return user
