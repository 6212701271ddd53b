"""Changing the addresses an account is reached at: its sign-in email and its recovery email.

A change is asked for by the signed-in user with the current password (or a fresh second factor),
and waits, as a single-use challenge in ``auth_challenges``, until the new address confirms it
with the token mailed to it: an address is never used (to sign in, or to receive a reset) before
it has proven it reaches someone. The account's own address is told of every change. A password
reset, and the first confirmation of an account's address, void the changes still waiting.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.accounts.security import Security
from billfold.accounts.service import (
    EMAIL_CHANGE,
    PENDING_CHANGES,
    RECOVERY_EMAIL_CHANGE,
    VERIFY_LIFETIME,
    cancel_pending_changes,
    mark_verified,
    normalize_email,
    tell,
    user_by_email,
)
from billfold.audit import audit
from billfold.accounts.sessions import claim_challenge, locked_user, open_challenge
from billfold.kit import clock
from billfold import mailer
from billfold.kit.crypto import hash_token
from billfold.kit.errors import Conflict, InvalidInput
from billfold.models import AuthChallenge, User

TOKEN_PREFIX = "bfe"  # tokens of address changes; a verify-email token is a signed token with a dot


class EmailTaken(Conflict):
    code = "email_taken"
    title = "Email address taken"


def is_change_token(token: str) -> bool:
    return token.startswith(f"{TOKEN_PREFIX}_")


def request_email_change(session: Session, security: Security, user: User, new: str) -> None:
    """Mail a confirmation token to ``new`` and tell the current address. Nothing changes until the
    token comes back. An address another account uses gets a note instead, and the answer is the
    same, so this cannot be used to find out who has an account."""
    new = normalize_email(new)
    if new == user.email:
        raise InvalidInput("that is already the account's address", errors=[{"field": "email", "message": "unchanged"}])
    cancel_pending_changes(session, user.id, (EMAIL_CHANGE,))
    if user_by_email(session, new) is not None:
        mailer.queue(session, mailer.Email(
            new, "Someone tried to move a Billfold account to your address",
            "Another Billfold account asked to use this address, which already has an account. Nothing was changed.\n",
        ))
    else:
        _mail_token(session, security, user, EMAIL_CHANGE, new, "sign-in address")
    audit(session, "user", user.id, "email_change_requested")
    tell(session, user, "A change of your Billfold sign-in address",
         f"Someone signed in to your account asked to change its sign-in address to {new}. It changes once "
         "that address confirms it.")


def request_recovery_email_change(session: Session, security: Security, user: User, new: str | None) -> None:
    """Set the recovery address once it confirms (a token is mailed to it), or remove it now
    (``None``). The account's address is told either way."""
    cancel_pending_changes(session, user.id, (RECOVERY_EMAIL_CHANGE,))
    if new is None:
        if user.recovery_email is not None:
            user.recovery_email = None
            audit(session, "user", user.id, "recovery_email_removed")
            tell(session, user, "Your Billfold recovery address was removed", "Password resets now go to this address only.")
        return
    new = normalize_email(new, "recovery_email")
    if new == user.email:
        detail = "the recovery address must differ from the account's address"
        raise InvalidInput(detail, errors=[{"field": "recovery_email", "message": detail}])
    _mail_token(session, security, user, RECOVERY_EMAIL_CHANGE, new, "recovery address")
    audit(session, "user", user.id, "recovery_email_change_requested")
    tell(session, user, "A new recovery address for your Billfold account",
         f"Someone signed in to your account asked to make {new} its recovery address, where password resets "
         "are also sent. It is used once that address confirms it.")


def _mail_token(session: Session, security: Security, user: User, purpose: str, address: str, what: str) -> None:
    token, _ = open_challenge(
        session, purpose, user_id=user.id, lifetime=VERIFY_LIFETIME, token_prefix=TOKEN_PREFIX, data={"email": address}
    )
    mailer.queue(session, mailer.Email(
        address, f"Confirm your new Billfold {what}",
        f"Hello {user.name},\n\nConfirm this address as your Billfold {what} with this token (valid for two days):\n\n"
        f"{token}\n\nPOST it to {security.settings.public_url}/v1/auth/verify-email as {{\"token\": \"...\"}}.\n"
        "If you did not ask for this, ignore this email: nothing changes.\n",
    ))


def confirm(session: Session, token: str) -> User:
    """Apply the change that ``token`` (mailed to the new address) confirms."""
    row = session.scalars(sa.select(AuthChallenge).where(AuthChallenge.secret_hash == hash_token(token))).one_or_none()
    invalid = InvalidInput("the token is not valid, has expired or was used", errors=[{"field": "token", "message": "not valid"}])
    if (
        row is None or row.purpose not in PENDING_CHANGES or row.user_id is None or row.used_at is not None
        or row.expires_at <= clock.now() or not isinstance(row.data, dict)
    ):
        raise invalid
    user = locked_user(session, row.user_id)
    data: dict[str, Any] = row.data
    if user is None or not claim_challenge(session, row):
        raise invalid
    new = data["email"]
    if row.purpose == EMAIL_CHANGE:
        if user_by_email(session, new) is not None:
            raise EmailTaken(f"{new} has an account now", errors=[{"field": "token", "message": "address taken"}])
        old = user.email
        try:
            with session.begin_nested():  # an account opened on the address since the check above
                user.email = new
                session.flush()
        except sa.exc.IntegrityError as error:
            raise EmailTaken(f"{new} has an account now", errors=[{"field": "token", "message": "address taken"}]) from error
        mark_verified(session, user, by="email_change")
        audit(session, "user", user.id, "email_changed")
        tell(session, user, "Your Billfold sign-in address was changed", f"Your account now signs in with {new}.", to=old)
    else:
        user.recovery_email = new
        audit(session, "user", user.id, "recovery_email_set")
        tell(session, user, "Your Billfold recovery address is set", f"Password resets are now also sent to {new}.")
    return user
