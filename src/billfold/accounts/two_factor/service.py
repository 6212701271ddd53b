"""Two-factor authentication: a TOTP authenticator app (RFC 6238) and single-use recovery codes.

What is kept in ``users.two_factor`` (see docs/two-factor.md)::

    {"totp": {"secret": "v1.<AES-GCM>", "confirmed": true, "created_at": "…", "confirmed_at": "…",
              "last_step": 59012345},
     "recovery_codes": [{"digest": "<HMAC-SHA256>", "used_at": null}, …]}

The TOTP secret is encrypted under the installation's key, bound to the user (``totp:<user id>``),
so a copied row is useless elsewhere. A recovery code carries 80 random bits, so a keyed SHA-256
(HMAC) is enough to keep it: no one can search 2^80 codes, and without the installation's key the
digests cannot even be tried against. Argon2 would make every attempt ten slow hashes for nothing.

The JSON column does not track changes made in place: every change assigns a new dict.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import pyotp
from sqlalchemy.orm import Session

from billfold.accounts.security import Security, password_matches
from billfold.audit import audit
from billfold.kit import clock
from billfold import mailer
from billfold.kit.crypto import decrypt, encrypt, keyed_digest
from billfold.kit.errors import Conflict, Unauthorized
from billfold.models import User

ISSUER = "Billfold"
RECOVERY_CODES = 10
TOTP_DIGITS = 6
# Codes from one step either side of now are accepted, for clocks that drift and slow typists.
TOTP_WINDOW = 1
_RECOVERY_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # 32 symbols, none easily confused
_RECOVERY_LENGTH = 16  # 16 symbols of 5 bits: 80 bits


class TwoFactorAlreadyEnabled(Conflict):
    code = "two_factor_already_enabled"
    title = "Two-factor authentication is already on"


class TwoFactorNotEnrolled(Conflict):
    code = "two_factor_not_enrolled"
    title = "No two-factor enrolment"


class WrongCode(Unauthorized):
    """A TOTP or recovery code that does not match, or was used before."""

    code = "wrong_code"
    title = "Wrong code"


def require_password(user: User, password: str) -> None:
    """Changes to how a user signs in need the password, not just a session: a stolen session must
    not be able to add its own second factor or passkey."""
    if not password_matches(user.password_hash, password):
        raise Unauthorized("the password is wrong", errors=[{"field": "password", "message": "wrong password"}])


@dataclass
class Enrolment:
    secret: str
    otpauth_uri: str


def enabled(user: User) -> bool:
    """Does signing in as ``user`` take a second factor?"""
    return bool((user.two_factor or {}).get("totp", {}).get("confirmed"))


def recovery_codes_left(user: User) -> int:
    return sum(1 for entry in (user.two_factor or {}).get("recovery_codes", []) if entry.get("used_at") is None)


def _context(user: User) -> str:
    return f"totp:{user.id}"


def _totp(security: Security, user: User) -> pyotp.TOTP:
    sealed = (user.two_factor or {})["totp"]["secret"]
    return pyotp.TOTP(decrypt(security.keyring, sealed, _context(user)).decode(), digits=TOTP_DIGITS)


def begin_enrolment(security: Security, user: User, password: str) -> Enrolment:
    """Make a new TOTP secret for the user's authenticator app. It stays off until confirmed with a
    code from the app; asking again replaces an unconfirmed secret."""
    require_password(user, password)
    if enabled(user):
        raise TwoFactorAlreadyEnabled("two-factor authentication is already on; turn it off first to enrol another app")
    secret = pyotp.random_base32(32)  # 160 bits, as RFC 4226 recommends
    user.two_factor = {
        "totp": {
            "secret": encrypt(security.keyring, secret.encode(), _context(user)),
            "confirmed": False,
            "created_at": clock.now().isoformat(),
            "confirmed_at": None,
            "last_step": None,
        }
    }
    uri = pyotp.TOTP(secret, digits=TOTP_DIGITS).provisioning_uri(name=user.email, issuer_name=ISSUER)
    return Enrolment(secret=secret, otpauth_uri=uri)


def confirm_enrolment(session: Session, security: Security, user: User, code: str) -> list[str]:
    """Turn two-factor authentication on with a first code from the app; returns the recovery
    codes, which are shown this once."""
    totp_entry = (user.two_factor or {}).get("totp")
    if totp_entry is None:
        raise TwoFactorNotEnrolled("start the enrolment first: POST /v1/me/two-factor/totp")
    if totp_entry.get("confirmed"):
        raise TwoFactorAlreadyEnabled("two-factor authentication is already on")
    step = _matching_step(security, user, code)
    if step is None:
        raise WrongCode(
            "the code does not match; check the app's clock and enter the code it shows now",
            errors=[{"field": "code", "message": "wrong code"}],
        )
    codes, entries = _new_recovery_codes(security, user)
    user.two_factor = {
        "totp": {**totp_entry, "confirmed": True, "confirmed_at": clock.now().isoformat(), "last_step": step},
        "recovery_codes": entries,
    }
    audit(session, "user", user.id, "two_factor_enabled")
    tell(session, user, "Two-factor authentication is on", "Signing in to Billfold with your password now also takes a code from your authenticator app.")
    return codes


def disable(session: Session, user: User, *, by_admin: str | None = None) -> None:
    """Turn two-factor authentication off: the user, once the caller has checked a current code,
    or a shop admin (``by_admin``, their id) for someone who lost their authenticator and their
    recovery codes. Passkeys are not touched."""
    if not enabled(user) and by_admin is None:
        return
    had = enabled(user)
    user.two_factor = None
    if by_admin is None:
        audit(session, "user", user.id, "two_factor_disabled")
    else:
        audit(session, "user", user.id, "two_factor_cleared_by_admin", by=by_admin, was_enabled=had)
    if had:
        who = "A shop administrator turned it off for you." if by_admin else ""
        tell(
            session,
            user,
            "Two-factor authentication is off",
            f"Signing in to Billfold now takes only your password. {who}".strip(),
        )


def regenerate_recovery_codes(session: Session, security: Security, user: User) -> list[str]:
    """Replace every recovery code with ten new ones (the caller has checked a current code)."""
    codes, entries = _new_recovery_codes(security, user)
    user.two_factor = {**(user.two_factor or {}), "recovery_codes": entries}
    audit(session, "user", user.id, "recovery_codes_regenerated")
    return codes


def use_code(session: Session, security: Security, user: User, code: str) -> bool:
    """Accept ``code`` as the user's second factor: a TOTP code not used before, or a recovery
    code, which is then spent. The caller holds the user's row lock, so two requests cannot both
    spend one code. False if it is neither."""
    if not enabled(user):
        return False
    cleaned = code.replace(" ", "").replace("-", "").upper()
    if cleaned.isascii() and cleaned.isdigit() and len(cleaned) == TOTP_DIGITS:
        step = _matching_step(security, user, cleaned)
        if step is None:
            return False
        two_factor = user.two_factor or {}
        user.two_factor = {**two_factor, "totp": {**two_factor["totp"], "last_step": step}}
        return True
    return _spend_recovery_code(session, security, user, cleaned)


def _matching_step(security: Security, user: User, code: str) -> int | None:
    """The time step whose code is ``code``, if it is within the window and later than the last
    step accepted: a code once accepted (or any older) is never accepted again."""
    code = code.replace(" ", "")
    if not (code.isascii() and code.isdigit() and len(code) == TOTP_DIGITS):
        return None
    totp = _totp(security, user)
    last_step = (user.two_factor or {}).get("totp", {}).get("last_step")
    now_step = totp.timecode(clock.now())
    for step in range(now_step - TOTP_WINDOW, now_step + TOTP_WINDOW + 1):
        if last_step is not None and step <= last_step:
            continue
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def _recovery_digest(security: Security, user: User, cleaned: str) -> str:
    return keyed_digest(security.keyring, "recovery-code", f"{user.id}:{cleaned}")


def _new_recovery_codes(security: Security, user: User) -> tuple[list[str], list[dict[str, Any]]]:
    codes = ["".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(_RECOVERY_LENGTH)) for _ in range(RECOVERY_CODES)]
    entries = [{"digest": _recovery_digest(security, user, code), "used_at": None} for code in codes]
    return ["-".join(code[i : i + 4] for i in range(0, _RECOVERY_LENGTH, 4)) for code in codes], entries


def _spend_recovery_code(session: Session, security: Security, user: User, cleaned: str) -> bool:
    if len(cleaned) != _RECOVERY_LENGTH:
        return False
    digest = _recovery_digest(security, user, cleaned)
    entries = (user.two_factor or {}).get("recovery_codes", [])
    for index, entry in enumerate(entries):
        if entry.get("used_at") is None and hmac.compare_digest(entry["digest"], digest):
            spent = [*entries[:index], {**entry, "used_at": clock.now().isoformat()}, *entries[index + 1 :]]
            user.two_factor = {**(user.two_factor or {}), "recovery_codes": spent}
            left = recovery_codes_left(user)
            audit(session, "user", user.id, "recovery_code_used", left=left)
            tell(session, user, "A recovery code was used", f"One of your Billfold recovery codes was just used; {left} are left.")
            return True
    return False


def tell(session: Session, user: User, subject: str, what: str) -> None:
    """Tell the user of a change to how they sign in, so one they did not make does not go unseen."""
    mailer.queue(session, mailer.Email(
        user.email, subject,
        f"Hello {user.name},\n\n{what}\n\nIf it was not you, change your password and sign out your other sessions now.\n",
    ))
