"""FastAPI dependencies that say who a request acts as.

Credentials: ``Authorization: Bearer <token>`` with a session token (``bfs_…``) or an API key
(``bfk_…``), or the ``billfold_session`` cookie. A write authenticated by the cookie must carry
the session's CSRF token in ``X-CSRF-Token``; bearer credentials need none, since a browser never
sends them by itself.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from billfold.accounts.security import Principal, Security
from billfold.accounts.sessions import csrf_token, principal_for_token
from billfold.kit.errors import BillfoldError, Forbidden, Unauthorized
from billfold.kit.http import DbSession

SESSION_COOKIE = "billfold_session"
CSRF_COOKIE = "billfold_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class CsrfFailed(Forbidden):
    code = "csrf_failed"


def security_of(request: Request) -> Security:
    return request.app.state.security


SecurityDep = Annotated[Security, Depends(security_of)]


def optional_principal(request: Request, session: DbSession, security: SecurityDep) -> Principal | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if header:
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("use `Authorization: Bearer <token>`")
        principal = principal_for_token(session, security, token.strip())
        if principal is None:
            raise Unauthorized("the token is not valid, has expired or was revoked")
        return principal
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    principal = principal_for_token(session, security, cookie)
    if principal is None or principal.auth_session is None or principal.auth_session.transport != "cookie":
        raise Unauthorized("the session has expired or was signed out; sign in again")
    if request.method not in SAFE_METHODS:
        # Compared as bytes: a header may carry any byte (Starlette reads it as Latin-1), and
        # compare_digest refuses str with non-ASCII characters.
        sent = request.headers.get(CSRF_HEADER, "").encode("latin-1")
        if not hmac.compare_digest(sent, csrf_token(security, principal.auth_session).encode()):
            raise CsrfFailed(f"a write signed in by cookie must send the session's {CSRF_HEADER} header")
    return principal


def required_principal(principal: Annotated[Principal | None, Depends(optional_principal)]) -> Principal:
    if principal is None:
        raise Unauthorized("sign in, or send an API key")
    return principal


def signed_in_user(principal: Annotated[Principal, Depends(required_principal)]) -> Principal:
    if principal.user is None:
        raise Forbidden("this needs a signed-in user, not an API key")
    return principal


def admin(request: Request, principal: Annotated[Principal, Depends(required_principal)]) -> Principal:
    principal.require_admin()
    principal.require_scope("read" if request.method in SAFE_METHODS else "write")
    return principal


Anyone = Annotated[Principal | None, Depends(optional_principal)]
Authenticated = Annotated[Principal, Depends(required_principal)]
User = Annotated[Principal, Depends(signed_in_user)]
Admin = Annotated[Principal, Depends(admin)]

__all__ = ["Admin", "Anyone", "Authenticated", "BillfoldError", "SecurityDep", "User"]
