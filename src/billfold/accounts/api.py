"""The accounts API: signing up and in, the signed-in user's profile and sessions, and the
admin's users and API keys."""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from fastapi import APIRouter, Body, Query, Request, Response, status
from fastapi.responses import JSONResponse

from billfold.accounts import address_changes, api_keys, service, sessions
from billfold.accounts.two_factor import service as two_factor
from billfold.accounts.auth import CSRF_COOKIE, SESSION_COOKIE, Admin, SecurityDep, User
from billfold.accounts.erasure import erase_user
from billfold.accounts.schemas import (
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyOut,
    CustomerIn,
    EmailChangeIn,
    Message,
    PasswordChangeIn,
    PasswordResetConfirmIn,
    PasswordResetIn,
    ProfileIn,
    Reauthentication,
    RecoveryEmailIn,
    RegisterIn,
    SessionOut,
    SignInIn,
    SignInOut,
    TokenIn,
    UserOut,
)
from billfold.accounts.security import Principal, Security
from billfold.kit.errors import Conflict, NotFound
from billfold.kit.http import DbSession, Page, Paging, paginate, problems
from billfold.idempotency_http import Idempotent
from billfold.models import ApiKey, AuthSession
from billfold.models import User as UserRow

router = APIRouter(prefix="/v1", responses=problems(400, 422))
auth = APIRouter(prefix="/auth", tags=["sign-in"])
me = APIRouter(prefix="/me", tags=["me"], responses=problems(401, 403))
users = APIRouter(prefix="/users", tags=["users"], responses=problems(401, 403, 404))
keys = APIRouter(prefix="/api-keys", tags=["api keys"], responses=problems(401, 403, 404))


@auth.post("/register", status_code=status.HTTP_202_ACCEPTED, response_model=Message)
def register(body: RegisterIn, session: DbSession, security: SecurityDep) -> Message:
    """Open an account. The answer is the same whether or not the address already has one; either
    way an email goes to the address (a verification token, or a note to its owner)."""
    service.register(
        session, security, email=body.email, password=body.password, name=body.name,
        last_name=body.last_name, user_type=body.user_type,
    )
    return Message(detail="Check your inbox: we sent a message to confirm the address.")


@auth.post("/verify-email", response_model=UserOut, responses=problems(409))
def verify_email(body: TokenIn, session: DbSession, security: SecurityDep) -> UserOut:
    """Confirm an address with the token mailed to it: a new account's address, or a new sign-in
    or recovery address asked for under `/v1/me`. The first confirmation of an account's address
    clears what was set on it before (recovery address, pending changes, passkeys, two-factor)
    and signs out every session: anyone can register any address, and must not keep a way in."""
    if address_changes.is_change_token(body.token):
        return UserOut.of(address_changes.confirm(session, body.token))
    return UserOut.of(service.verify_email(session, security, body.token))


@auth.post("/sign-in", response_model=SignInOut, responses=problems(401, 429))
def sign_in(body: SignInIn, request: Request, response: Response, session: DbSession, security: SecurityDep) -> SignInOut | JSONResponse:
    """Sign in with email and password. A wrong email, a wrong password and a locked account get
    the same 401; repeated failures lock the account and are throttled per address and account.
    With two-factor authentication on, the answer has `second_factor_required` and a challenge
    for `POST /v1/auth/sign-in/second-factor` instead of a session."""
    outcome = sessions.sign_in(
        session, security, email=body.email, password=body.password, transport=body.transport,
        address=request.client.host if request.client else None, user_agent=request.headers.get("user-agent"),
    )
    if outcome.second_factor_required:
        return SignInOut(second_factor_required=True, challenge=outcome.second_factor_challenge, challenge_expires_at=outcome.challenge_expires_at)
    return signed_in(outcome, response, security, sessions.SIGN_IN_FAILED)


def signed_in(outcome: sessions.SignIn, response: Response, security: Security, failure: str) -> SignInOut | JSONResponse:
    """The answer to a completed sign-in, whichever way it was made: the token in the body, or set
    as cookies with a CSRF token; or the 401 of a failed one."""
    if outcome.failed:
        # Returned, not raised: the failure must be recorded, so this transaction commits.
        problem = sessions.SignInFailed(failure).to_problem()
        return JSONResponse(problem, status_code=401, media_type="application/problem+json")
    assert outcome.user and outcome.auth_session and outcome.token
    answer = SignInOut(user=UserOut.of(outcome.user), session=SessionOut.of(outcome.auth_session, outcome.auth_session.id), first_time=outcome.first_time)
    if outcome.auth_session.transport == "cookie":
        answer.csrf_token = sessions.csrf_token(security, outcome.auth_session)
        max_age = security.settings.session_days * 86400
        secure = security.settings.cookies_secure
        response.set_cookie(SESSION_COOKIE, outcome.token, max_age=max_age, httponly=True, secure=secure, samesite="lax")
        response.set_cookie(CSRF_COOKIE, answer.csrf_token, max_age=max_age, httponly=False, secure=secure, samesite="lax")
    else:
        answer.token = outcome.token
    return answer


@auth.post("/sign-out", status_code=status.HTTP_204_NO_CONTENT, responses=problems(401, 403))
def sign_out(principal: User, session: DbSession, response: Response) -> Response:
    assert principal.auth_session is not None
    sessions.sign_out(session, principal.auth_session)
    response.status_code = status.HTTP_204_NO_CONTENT
    response.delete_cookie(SESSION_COOKIE)
    response.delete_cookie(CSRF_COOKIE)
    return response


@auth.post("/password-reset", status_code=status.HTTP_202_ACCEPTED, response_model=Message)
def request_password_reset(body: PasswordResetIn, session: DbSession, security: SecurityDep) -> Message:
    """Email a reset token, if the address has an account. The answer is the same either way."""
    service.request_password_reset(session, security, body.email)
    return Message(detail="If the address has an account, a reset token is on its way.")


@auth.post("/password-reset/confirm", response_model=Message)
def reset_password(body: PasswordResetConfirmIn, session: DbSession, security: SecurityDep) -> Message:
    """Set a new password with a reset token. Unlocks the account and signs out every session."""
    service.reset_password(session, security, body.token, body.new_password)
    return Message(detail="Password changed; sign in with the new one.")


@me.get("", response_model=UserOut)
def my_profile(principal: User) -> UserOut:
    assert principal.user is not None
    return UserOut.of(principal.user)


@me.patch("", response_model=UserOut, responses=problems(409))
def update_my_profile(body: ProfileIn, principal: User, session: DbSession) -> UserOut:
    user = principal.user
    assert user is not None
    changes = body.model_dump(exclude_unset=True)
    if "picture" in changes and changes["picture"] is not None:
        changes["picture"] = str(changes["picture"])
    if changes.get("user_name") and session.scalar(
        sa.select(UserRow.id).where(UserRow.user_name == changes["user_name"], UserRow.id != user.id)
    ):
        raise Conflict(f"the user name {changes['user_name']!r} is taken", errors=[{"field": "user_name", "message": "taken"}])
    for field, value in changes.items():
        if field in ("name", "last_name") and value is None:
            continue  # required columns: leaving them out changes nothing
        setattr(user, field, value)
    session.flush()
    return UserOut.of(user)


def _wrong_code() -> JSONResponse:
    # Returned, not raised: the failed attempt was counted, so this transaction commits.
    problem = two_factor.WrongCode("the code is wrong or was used before").to_problem()
    return JSONResponse(problem, status_code=401, media_type="application/problem+json")


def _owner(body: Reauthentication, principal: Principal, session: DbSession, security: Security, request: Request) -> UserRow | None:
    """The signed-in user's row, locked, once the body proves the owner asks (``reauthenticate``);
    None after a wrong second-factor code (counted: answer ``_wrong_code``)."""
    assert principal.user is not None
    user = sessions.locked_user(session, principal.user.id)
    assert user is not None
    address = request.client.host if request.client else None
    if not sessions.reauthenticate(session, security, user, password=body.current_password, code=body.code, address=address):
        return None
    return user


REAUTHENTICATION = problems(401, 429)


@me.delete("", response_model=Message, responses={**problems(409), **REAUTHENTICATION})
def delete_my_account(
    request: Request, principal: User, session: DbSession, security: SecurityDep, response: Response,
    body: Annotated[Reauthentication | None, Body()] = None,
) -> Message | JSONResponse:
    """Delete the account (needs the current password, or a second-factor code): personal data is
    erased, orders and invoices are kept (see docs/schema.md)."""
    user = _owner(body or Reauthentication(), principal, session, security, request)
    if user is None:
        return _wrong_code()
    erasure = erase_user(session, user.id)
    response.delete_cookie(SESSION_COOKIE)
    response.delete_cookie(CSRF_COOKIE)
    return Message(detail=f"Account {erasure.outcome}.")


@me.post("/password", status_code=status.HTTP_204_NO_CONTENT, response_class=Response, responses=REAUTHENTICATION)
def change_password(body: PasswordChangeIn, request: Request, principal: User, session: DbSession, security: SecurityDep) -> Response:
    """Change the password (needs the current one, or a second-factor code). Every other session
    is signed out; this one stays. The account's address is told."""
    assert principal.auth_session is not None
    user = _owner(body, principal, session, security, request)
    if user is None:
        return _wrong_code()
    service.change_password(session, user, body.new_password, principal.auth_session.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@me.post("/email", status_code=status.HTTP_202_ACCEPTED, response_model=Message, responses=REAUTHENTICATION)
def change_my_email(
    body: EmailChangeIn, request: Request, principal: User, session: DbSession, security: SecurityDep
) -> Message | JSONResponse:
    """Move the account to another sign-in address (needs the current password, or a
    second-factor code). A token goes to the new address, which becomes the account's once it is
    confirmed with `POST /v1/auth/verify-email`; the current address is told."""
    user = _owner(body, principal, session, security, request)
    if user is None:
        return _wrong_code()
    address_changes.request_email_change(session, security, user, body.email)
    return Message(detail="Check the new address's inbox: the change is made once it is confirmed.")


@me.post("/recovery-email", status_code=status.HTTP_202_ACCEPTED, response_model=Message, responses=REAUTHENTICATION)
def change_my_recovery_email(
    body: RecoveryEmailIn, request: Request, principal: User, session: DbSession, security: SecurityDep
) -> Message | JSONResponse:
    """Set (once the new address confirms the token mailed to it) or remove (null) the recovery
    address, where password resets also go. Needs the current password, or a second-factor code;
    the account's address is told."""
    user = _owner(body, principal, session, security, request)
    if user is None:
        return _wrong_code()
    address_changes.request_recovery_email_change(session, security, user, body.recovery_email)
    if body.recovery_email is None:
        return Message(detail="The recovery address is removed.")
    return Message(detail="Check the recovery address's inbox: it is used once it is confirmed.")


@me.get("/sessions", response_model=Page[SessionOut])
def my_sessions(principal: User, session: DbSession, paging: Paging) -> Page[SessionOut]:
    assert principal.user is not None and principal.auth_session is not None
    current = principal.auth_session.id
    return paginate(session, sessions.sessions_of(session, principal.user.id), AuthSession.id, paging, lambda s: SessionOut.of(s, current))


@me.delete("/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response, responses=problems(404))
def revoke_my_session(session_id: str, principal: User, session: DbSession) -> Response:
    assert principal.user is not None
    target = session.get(AuthSession, session_id)
    if target is None or target.user_id != principal.user.id:
        raise NotFound(f"no session {session_id}")
    sessions.sign_out(session, target)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@users.post("", status_code=status.HTTP_201_CREATED, response_model=UserOut, responses=problems(409))
def create_customer(body: CustomerIn, principal: Admin, idempotent: Idempotent) -> Any:
    """Create a customer from the merchant's backend (admins, or an API key with `write`): no
    password and no email round trip. The customer can claim the account later by resetting the
    password of this address. 409 `email_taken` when the address has an account (find it with
    `?email=`). Takes an `Idempotency-Key`."""

    def handler(session: Session) -> UserOut:
        user = service.create_customer(
            session, email=body.email, name=body.name, last_name=body.last_name, user_type=body.user_type,
            phone=body.phone, by=principal.user.id if principal.user else principal.api_key.id,  # type: ignore[union-attr]
        )
        return UserOut.of(user)

    return idempotent.respond(principal.idempotency_scope, body, handler, status_code=201)


@users.get("", response_model=Page[UserOut])
def list_users(
    principal: Admin,
    session: DbSession,
    paging: Paging,
    email: Annotated[
        str | None,
        Query(min_length=1, max_length=254, description="Only the user with this address (exact, any case).",
              json_schema_extra={"format": "email"}),
    ] = None,
) -> Page[UserOut]:
    """Every user, oldest first; with `email`, the one with that address (or none)."""
    statement = sa.select(UserRow)
    if email is not None:
        statement = statement.where(UserRow.email == service.normalize_email(email))
    return paginate(session, statement, UserRow.id, paging, UserOut.of)


@users.get("/{user_id}", response_model=UserOut)
def get_user(user_id: str, principal: Admin, session: DbSession) -> UserOut:
    return UserOut.of(service.get_user(session, user_id))


@users.post("/{user_id}/unlock", response_model=UserOut)
def unlock_user(user_id: str, principal: Admin, session: DbSession) -> UserOut:
    return UserOut.of(service.unlock(session, user_id))


@users.delete("/{user_id}/two-factor", response_model=UserOut)
def clear_two_factor(user_id: str, principal: Admin, session: DbSession) -> UserOut:
    """Turn off a user's two-factor authentication (shop admins), for someone who lost both their
    authenticator and their recovery codes. They are told by email; their passkeys stay."""
    user = service.get_user(session, user_id, lock=True)
    two_factor.disable(session, user, by_admin=principal.user.id if principal.user else principal.api_key.id)
    return UserOut.of(user)


@keys.post("", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated)
def create_api_key(body: ApiKeyIn, principal: Admin, session: DbSession) -> ApiKeyCreated:
    """Create an API key. The secret is in this answer only."""
    key, secret = api_keys.create_api_key(
        session, name=body.name, scopes=list(body.scopes), created_by=principal.user.id if principal.user else None,
        by_key=principal.api_key,
    )
    return ApiKeyCreated(api_key=ApiKeyOut.model_validate(key), secret=secret)


@keys.get("", response_model=Page[ApiKeyOut])
def list_api_keys(principal: Admin, session: DbSession, paging: Paging) -> Page[ApiKeyOut]:
    return paginate(session, sa.select(ApiKey), ApiKey.id, paging, ApiKeyOut.model_validate)


@keys.delete("/{key_id}", response_model=ApiKeyOut)
def revoke_api_key(key_id: str, principal: Admin, session: DbSession) -> ApiKeyOut:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"no API key {key_id}")
    api_keys.revoke_api_key(session, key)
    return ApiKeyOut.model_validate(key)


router.include_router(auth)
router.include_router(me)
router.include_router(users)
router.include_router(keys)
