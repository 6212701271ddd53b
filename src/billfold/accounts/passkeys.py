"""Passkeys (WebAuthn): registering them, signing in with them, naming and removing them.

What is kept in ``users.passkeys``, one entry per passkey (see docs/two-factor.md)::

    [{"id": "pk_…", "name": "Laptop", "credential_id": "<base64url>", "public_key": "<base64url COSE key>",
      "sign_count": 7, "aaguid": "…", "transports": ["internal"], "backed_up": false,
      "created_at": "…", "last_used_at": "…"}]

Every ceremony starts with options holding a random challenge, kept server-side in
``auth_challenges`` under its SHA-256 for five minutes, and used once: the answer names its
challenge inside ``clientDataJSON``, which the library checks against the one we kept.

Passkeys are discoverable and need user verification (a PIN or biometric on the device), so a
passkey sign-in proves possession and the user together and needs no password or second factor;
the user is found by the passkey's user handle, which is the user's id.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import bytes_to_base64url, options_to_json_dict
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.parse_authentication_credential_json import parse_authentication_credential_json
from webauthn.helpers.parse_registration_credential_json import parse_registration_credential_json
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from billfold.accounts import sessions
from billfold.accounts.two_factor import service as two_factor
from billfold.accounts.security import Security
from billfold.audit import audit
from billfold.kit import clock
from billfold.kit.errors import Conflict, InvalidInput, NotFound
from billfold.kit.ids import new_id
from billfold.models import User

RP_NAME = "Billfold"
CHALLENGE_LIFETIME = timedelta(minutes=5)
REGISTRATION, SIGN_IN = "passkey_registration", "passkey_sign_in"
MAX_PASSKEYS = 20
# What parsing and checking an untrusted credential can raise: each means the input is bad.
MALFORMED = (WebAuthnException, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError)
_USER_ID = re.compile(r"[a-z0-9]{1,8}_[0-9A-Z]{26}")  # what a user handle must look like before it is queried
PASSKEY_SIGN_IN_FAILED = "The passkey was not accepted, or the sign-in has expired. Ask for new options and try again."


class ChallengeInvalid(InvalidInput):
    code = "challenge_invalid"
    title = "Unknown, used or expired challenge"


class PasskeyRejected(InvalidInput):
    code = "passkey_rejected"
    title = "Passkey not accepted"


class PasskeyExists(Conflict):
    code = "passkey_exists"
    title = "Passkey already registered"


class TooManyPasskeys(Conflict):
    code = "too_many_passkeys"
    title = "Too many passkeys"


class PasskeyNotFound(NotFound):
    code = "passkey_not_found"


def relying_party(security: Security) -> tuple[str, str]:
    """The relying party id (the host of ``public_url``) and the origin browsers report."""
    parts = urlsplit(security.settings.public_url)
    if not parts.hostname:
        raise ValueError(f"public_url {security.settings.public_url!r} has no host")
    return parts.hostname, f"{parts.scheme}://{parts.netloc}"


def passkeys_of(user: User) -> list[dict[str, Any]]:
    return list(user.passkeys or [])


def get_passkey(user: User, passkey_id: str) -> dict[str, Any]:
    for entry in passkeys_of(user):
        if entry["id"] == passkey_id:
            return entry
    raise PasskeyNotFound(f"no passkey {passkey_id}")


def registration_options(session: Session, security: Security, user: User, password: str) -> dict[str, Any]:
    """Options for ``navigator.credentials.create()``; the user's passkeys are excluded so one
    device is not registered twice. Needs the password: a passkey outlives a password change."""
    two_factor.require_password(user, password)
    if len(passkeys_of(user)) >= MAX_PASSKEYS:
        raise TooManyPasskeys(f"a user may have {MAX_PASSKEYS} passkeys; remove one first")
    rp_id, _ = relying_party(security)
    options = generate_registration_options(
        rp_id=rp_id,
        rp_name=RP_NAME,
        user_id=user.id.encode(),
        user_name=user.email,
        user_display_name=f"{user.name} {user.last_name}".strip(),
        timeout=int(CHALLENGE_LIFETIME.total_seconds() * 1000),
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED, user_verification=UserVerificationRequirement.REQUIRED
        ),
        exclude_credentials=[
            PublicKeyCredentialDescriptor(id=_unb64(entry["credential_id"])) for entry in passkeys_of(user)
        ],
    )
    sessions.open_challenge(
        session, REGISTRATION, user_id=user.id, lifetime=CHALLENGE_LIFETIME, secret=bytes_to_base64url(options.challenge)
    )
    return options_to_json_dict(options)


def register(session: Session, security: Security, user: User, *, name: str, credential: dict[str, Any]) -> dict[str, Any]:
    """Verify the answer to registration options and keep the new passkey."""
    try:
        parsed = parse_registration_credential_json(credential)
        challenge = _challenge_in(parsed.response.client_data_json)
    except MALFORMED as error:
        raise PasskeyRejected(f"the credential is malformed: {error}", errors=[{"field": "credential", "message": "malformed"}]) from error
    row = sessions.find_challenge(session, REGISTRATION, challenge)
    if row is None or row.user_id != user.id:
        raise ChallengeInvalid("the challenge is unknown, used or expired; ask for new registration options")
    rp_id, origin = relying_party(security)
    try:
        verified = verify_registration_response(
            credential=parsed, expected_challenge=_unb64(challenge), expected_rp_id=rp_id,
            expected_origin=origin, require_user_verification=True,
        )
    except MALFORMED as error:
        raise PasskeyRejected(f"the passkey could not be verified: {error}", errors=[{"field": "credential", "message": str(error)}]) from error
    credential_id = bytes_to_base64url(verified.credential_id)
    existing = passkeys_of(user)
    if any(entry["credential_id"] == credential_id for entry in existing):
        raise PasskeyExists("this passkey is already registered")
    if len(existing) >= MAX_PASSKEYS:
        raise TooManyPasskeys(f"a user may have {MAX_PASSKEYS} passkeys; remove one first")
    if not sessions.claim_challenge(session, row):
        raise ChallengeInvalid("the challenge is unknown, used or expired; ask for new registration options")
    entry = {
        "id": new_id("pk"),
        "name": name,
        "credential_id": credential_id,
        "public_key": bytes_to_base64url(verified.credential_public_key),
        "sign_count": verified.sign_count,
        "aaguid": verified.aaguid,
        "transports": [t.value for t in parsed.response.transports or []],  # only the ones WebAuthn defines
        "backed_up": verified.credential_backed_up,
        "created_at": clock.now().isoformat(),
        "last_used_at": None,
    }
    user.passkeys = [*existing, entry]
    audit(session, "user", user.id, "passkey_added", passkey_id=entry["id"])
    two_factor.tell(session, user, "A passkey was added", f"The passkey {name!r} can now sign in to your Billfold account.")
    return entry


def rename(session: Session, user: User, passkey_id: str, name: str) -> dict[str, Any]:
    entry = get_passkey(user, passkey_id)
    renamed = {**entry, "name": name}
    user.passkeys = [renamed if e["id"] == passkey_id else e for e in passkeys_of(user)]
    return renamed


def remove(session: Session, user: User, passkey_id: str) -> None:
    get_passkey(user, passkey_id)
    user.passkeys = [e for e in passkeys_of(user) if e["id"] != passkey_id] or None
    audit(session, "user", user.id, "passkey_removed", passkey_id=passkey_id)


def sign_in_options(session: Session, security: Security) -> dict[str, Any]:
    """Options for ``navigator.credentials.get()``. No user is named: the browser offers the
    passkeys it has for this site, so the answer says nothing about who has an account."""
    rp_id, _ = relying_party(security)
    options = generate_authentication_options(
        rp_id=rp_id,
        timeout=int(CHALLENGE_LIFETIME.total_seconds() * 1000),
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    sessions.open_challenge(session, SIGN_IN, user_id=None, lifetime=CHALLENGE_LIFETIME, secret=bytes_to_base64url(options.challenge))
    return options_to_json_dict(options)


def sign_in(
    session: Session, security: Security, *, credential: dict[str, Any], transport: str, address: str | None, user_agent: str | None
) -> sessions.SignIn:
    """Complete a sign-in with a passkey's assertion. Every failure looks the same, uses up the
    challenge, and counts toward the client address's throttle; a passkey whose signature counter
    went backwards (a cloned authenticator) is refused and the refusal audited."""
    sessions.check_throttles(session, security, email=None, address=address)
    failed = sessions.record_failed_sign_in
    try:
        parsed = parse_authentication_credential_json(credential)
        challenge = _challenge_in(parsed.response.client_data_json)
        user_id = (parsed.response.user_handle or b"").decode()
    except MALFORMED:
        return failed(session, security, email=None, address=address, user=None)
    row = sessions.find_challenge(session, SIGN_IN, challenge)
    if row is None or not sessions.claim_challenge(session, row):
        return failed(session, security, email=None, address=address, user=None)
    user = sessions.locked_user(session, user_id) if _USER_ID.fullmatch(user_id) else None
    credential_id = bytes_to_base64url(parsed.raw_id)
    entry = next((e for e in passkeys_of(user) if e["credential_id"] == credential_id), None) if user else None
    if user is None or user.is_locked or entry is None:
        return failed(session, security, email=None, address=address, user=None)
    rp_id, origin = relying_party(security)
    try:
        # The counter is compared below, once the signature is known to be the passkey's own.
        verified = verify_authentication_response(
            credential=parsed, expected_challenge=_unb64(challenge), expected_rp_id=rp_id, expected_origin=origin,
            credential_public_key=_unb64(entry["public_key"]), credential_current_sign_count=0,
            require_user_verification=True,
        )
    except MALFORMED:  # a bad signature, origin, flag or encoding
        return failed(session, security, email=None, address=address, user=None)
    stored = int(entry["sign_count"])
    if (verified.new_sign_count or stored) and verified.new_sign_count <= stored:
        # A counter that does not move forward means a second copy of the key exists somewhere.
        audit(session, "user", user.id, "passkey_sign_count_regressed", passkey_id=entry["id"], stored=stored, sent=verified.new_sign_count)
        return failed(session, security, email=None, address=address, user=None)
    used = {**entry, "sign_count": verified.new_sign_count, "last_used_at": clock.now().isoformat()}
    user.passkeys = [used if e["id"] == entry["id"] else e for e in passkeys_of(user)]
    return sessions.finish_sign_in(session, security, user, transport=transport, address=address, user_agent=user_agent)


def _challenge_in(client_data_json: bytes) -> str:
    """The challenge (base64url, as the options gave it) that a ``clientDataJSON`` answers."""
    challenge = json.loads(client_data_json)["challenge"]
    if not isinstance(challenge, str) or not challenge:
        raise ValueError("clientDataJSON has no challenge")
    return challenge


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

