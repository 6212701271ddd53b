"""The accounts API: signing up and in, the signed-in user's profile and sessions, and the
admin's users and API keys."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse

from billfold.accounts import api_keys, service, sessions, two_factor
from billfold.accounts.auth import CSRF_COOKIE, SESSION_COOKIE, Admin, SecurityDep, User
from billfold.accounts.erasure import erase_user
from billfold.accounts.schemas import (
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyOut,
    Message,
    PasswordChangeIn,
    PasswordResetConfirmIn,
    PasswordResetIn,
    ProfileIn,
    RegisterIn,
    SessionOut,
    SignInIn,
    SignInOut,
    TokenIn,
    UserOut,
)
from billfold.accounts.security import Security
from billfold.kit.errors import Conflict, NotFound
from billfold.kit.http import DbSession, Page, Paging, paginate, problems
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


@auth.post("/verify-email", response_model=UserOut)
def verify_email(body: TokenIn, session: DbSession, security: SecurityDep) -> UserOut:
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
    if "recovery_email" in changes and changes["recovery_email"] is not None:
        changes["recovery_email"] = service.normalize_email(changes["recovery_email"], "recovery_email")
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


@me.delete("", response_model=Message, responses=problems(409))
def delete_my_account(principal: User, session: DbSession, response: Response) -> Message:
    """Delete the account: personal data is erased, orders and invoices are kept (see docs/schema.md)."""
    assert principal.user is not None
    erasure = erase_user(session, principal.user.id)
    response.delete_cookie(SESSION_COOKIE)
    response.delete_cookie(CSRF_COOKIE)
    return Message(detail=f"Account {erasure.outcome}.")


@me.post("/password", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def change_password(body: PasswordChangeIn, principal: User, session: DbSession) -> Response:
    """Change the password. Every other session is signed out; this one stays."""
    assert principal.user is not None and principal.auth_session is not None
    service.change_password(session, principal.user, body.current_password, body.new_password, principal.auth_session.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


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


@users.get("", response_model=Page[UserOut])
def list_users(principal: Admin, session: DbSession, paging: Paging) -> Page[UserOut]:
    return paginate(session, sa.select(UserRow), UserRow.id, paging, UserOut.of)


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
    return ApiKeyCreated(api_key=ApiKeyOut.of(key), secret=secret)


@keys.get("", response_model=Page[ApiKeyOut])
def list_api_keys(principal: Admin, session: DbSession, paging: Paging) -> Page[ApiKeyOut]:
    return paginate(session, sa.select(ApiKey), ApiKey.id, paging, ApiKeyOut.of)


@keys.delete("/{key_id}", response_model=ApiKeyOut)
def revoke_api_key(key_id: str, principal: Admin, session: DbSession) -> ApiKeyOut:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"no API key {key_id}")
    api_keys.revoke_api_key(session, key)
    return ApiKeyOut.of(key)


router.include_router(auth)
router.include_router(me)
router.include_router(users)
router.include_router(keys)
