"""Two-factor authentication (TOTP and recovery codes) and passkeys (WebAuthn).

Read with docs/two-factor.md. Secrets (the TOTP key, recovery codes, challenges) appear only in
the answer that makes them.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse

from billfold.accounts import passkeys, sessions
from billfold.accounts.two_factor import service as two_factor
from billfold.accounts.api import signed_in
from billfold.accounts.auth import SecurityDep, User
from billfold.accounts.schemas import SignInOut
from billfold.accounts.two_factor.schemas import (
    CodeIn,
    PasskeyIn,
    PasskeyList,
    PasskeyOut,
    PasskeyRenameIn,
    PasskeySignInIn,
    PasswordIn,
    RecoveryCodesOut,
    SecondFactorIn,
    TotpEnrolmentOut,
    TwoFactorOut,
    WebAuthnOptions,
)
from billfold.kit.http import DbSession, problems
from billfold.models import User as UserRow

router = APIRouter(prefix="/v1", responses=problems(400, 422))
sign_in = APIRouter(prefix="/auth", tags=["sign-in"])
mfa = APIRouter(prefix="/me/two-factor", tags=["two-factor"], responses=problems(401, 403))
keys = APIRouter(prefix="/me/passkeys", tags=["passkeys"], responses=problems(401, 403))


def _address(request: Request) -> str | None:
    return request.client.host if request.client else None


def _me(principal: User, session: DbSession) -> UserRow:
    """The signed-in user's row, locked for the change the request makes."""
    assert principal.user is not None
    user = sessions.locked_user(session, principal.user.id)
    assert user is not None
    return user


def _wrong_code() -> JSONResponse:
    # Returned, not raised: the failed attempt was counted, so this transaction commits.
    problem = two_factor.WrongCode("the code is wrong or was used before").to_problem()
    return JSONResponse(problem, status_code=401, media_type="application/problem+json")


@sign_in.post("/sign-in/second-factor", response_model=SignInOut, responses=problems(401, 429))
def complete_sign_in(body: SecondFactorIn, request: Request, response: Response, session: DbSession, security: SecurityDep) -> SignInOut | JSONResponse:
    """The second step of a sign-in with two-factor authentication on: the challenge from the
    password step and a code from the authenticator app (or a recovery code). The session is made
    as the password step asked (bearer or cookie). Every failure gets the same 401; wrong codes
    count toward the lock and the throttles as wrong passwords do."""
    outcome = sessions.complete_second_factor(
        session, security, challenge=body.challenge, code=body.code, address=_address(request),
        user_agent=request.headers.get("user-agent"),
    )
    return signed_in(outcome, response, security, sessions.SECOND_FACTOR_FAILED)


@sign_in.post("/passkey/options", response_model=WebAuthnOptions)
def passkey_sign_in_options(session: DbSession, security: SecurityDep) -> dict:
    """Options for `navigator.credentials.get()`, with a challenge valid once for five minutes.
    No account is named: the browser offers the passkeys it holds for this site."""
    return passkeys.sign_in_options(session, security)


@sign_in.post("/passkey", response_model=SignInOut, responses=problems(401, 429))
def passkey_sign_in(body: PasskeySignInIn, request: Request, response: Response, session: DbSession, security: SecurityDep) -> SignInOut | JSONResponse:
    """Sign in with a passkey: no password, and no second factor (a passkey with user
    verification is two factors already). Every failure gets the same 401."""
    outcome = passkeys.sign_in(
        session, security, credential=body.credential, transport=body.transport, address=_address(request),
        user_agent=request.headers.get("user-agent"),
    )
    return signed_in(outcome, response, security, passkeys.PASSKEY_SIGN_IN_FAILED)


@mfa.get("", response_model=TwoFactorOut)
def two_factor_status(principal: User) -> TwoFactorOut:
    assert principal.user is not None
    totp = (principal.user.two_factor or {}).get("totp") or {}
    return TwoFactorOut(
        enabled=two_factor.enabled(principal.user), pending=bool(totp) and not totp.get("confirmed"),
        confirmed_at=totp.get("confirmed_at"), recovery_codes_left=two_factor.recovery_codes_left(principal.user),
    )


@mfa.post("/totp", status_code=status.HTTP_201_CREATED, response_model=TotpEnrolmentOut, responses=problems(409))
def enrol_totp(body: PasswordIn, principal: User, session: DbSession, security: SecurityDep) -> TotpEnrolmentOut:
    """Start enrolling an authenticator app (needs the password): a new key, shown this once.
    Nothing changes at sign-in until it is confirmed with a code from the app."""
    enrolment = two_factor.begin_enrolment(security, _me(principal, session), body.password)
    return TotpEnrolmentOut(secret=enrolment.secret, otpauth_uri=enrolment.otpauth_uri)


@mfa.post("/totp/confirm", response_model=RecoveryCodesOut, responses=problems(409))
def confirm_totp(body: CodeIn, principal: User, session: DbSession, security: SecurityDep) -> RecoveryCodesOut:
    """Turn two-factor authentication on with the app's current code (401 `wrong_code` if it does
    not match). The answer holds ten recovery codes, shown this once."""
    return RecoveryCodesOut(recovery_codes=two_factor.confirm_enrolment(session, security, _me(principal, session), body.code))


@mfa.post("/recovery-codes", response_model=RecoveryCodesOut, responses=problems(409, 429))
def regenerate_recovery_codes(body: CodeIn, request: Request, principal: User, session: DbSession, security: SecurityDep) -> RecoveryCodesOut | JSONResponse:
    """Replace all recovery codes with ten new ones; needs a current code. A wrong code counts as
    a failed sign-in."""
    user = _me(principal, session)
    if not two_factor.enabled(user):
        raise two_factor.TwoFactorNotEnrolled("two-factor authentication is off")
    if not sessions.check_second_factor(session, security, user, body.code, address=_address(request)):
        return _wrong_code()
    return RecoveryCodesOut(recovery_codes=two_factor.regenerate_recovery_codes(session, security, user))


@mfa.post("/disable", status_code=status.HTTP_204_NO_CONTENT, response_class=Response, responses=problems(409, 429))
def disable_two_factor(body: CodeIn, request: Request, principal: User, session: DbSession, security: SecurityDep) -> Response:
    """Turn two-factor authentication off with a current code from the app or a recovery code
    (the session alone is not enough). A wrong code counts as a failed sign-in."""
    user = _me(principal, session)
    if not two_factor.enabled(user):
        raise two_factor.TwoFactorNotEnrolled("two-factor authentication is off")
    if not sessions.check_second_factor(session, security, user, body.code, address=_address(request)):
        return _wrong_code()
    two_factor.disable(session, user)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@keys.get("", response_model=PasskeyList)
def list_passkeys(principal: User) -> PasskeyList:
    assert principal.user is not None
    return PasskeyList(data=[PasskeyOut.of(entry) for entry in passkeys.passkeys_of(principal.user)])


@keys.post("/registration-options", response_model=WebAuthnOptions, responses=problems(409))
def passkey_registration_options(body: PasswordIn, principal: User, session: DbSession, security: SecurityDep) -> dict:
    """Options for `navigator.credentials.create()` (needs the password), with a challenge valid
    once for five minutes."""
    assert principal.user is not None
    return passkeys.registration_options(session, security, principal.user, body.password)


@keys.post("", status_code=status.HTTP_201_CREATED, response_model=PasskeyOut, responses=problems(409))
def add_passkey(body: PasskeyIn, principal: User, session: DbSession, security: SecurityDep) -> PasskeyOut:
    """Register a passkey: the browser's answer to the registration options, and a name."""
    return PasskeyOut.of(passkeys.register(session, security, _me(principal, session), name=body.name, credential=body.credential))


@keys.patch("/{passkey_id}", response_model=PasskeyOut, responses=problems(404))
def rename_passkey(passkey_id: str, body: PasskeyRenameIn, principal: User, session: DbSession) -> PasskeyOut:
    return PasskeyOut.of(passkeys.rename(session, _me(principal, session), passkey_id, body.name))


@keys.delete("/{passkey_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response, responses=problems(404))
def remove_passkey(passkey_id: str, principal: User, session: DbSession) -> Response:
    passkeys.remove(session, _me(principal, session), passkey_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


router.include_router(sign_in)
router.include_router(mfa)
router.include_router(keys)
