"""FastAPI dependencies that say who a request acts as.

Credentials: ``Authorization: Bearer <token>`` with a session token (``bfs_…``) or an API key
(``bfk_…``), or the ``billfold_session`` cookie. A write authenticated by the cookie must carry
the session's CSRF token in ``X-CSRF-Token``; bearer credentials need none, since a browser never
sends them by itself.
"""

from __future__ import annotations

import hmac
import json
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from billfold.accounts.security import Principal, Security
from billfold.accounts.sessions import API_KEY_PREFIX, TOUCH_EVERY, csrf_token, principal_for_token
from billfold.kit import clock
from billfold.kit.db.changes import EVERYTHING, marks_for
from billfold.kit.errors import BillfoldError, Forbidden, Unauthorized
from billfold.kit.http import DbSession, end_step
from billfold.models import ApiKey

SESSION_COOKIE = "billfold_session"
CSRF_COOKIE = "billfold_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class CsrfFailed(Forbidden):
    code = "csrf_failed"


# The dependencies that do no I/O are ``async``: FastAPI runs a plain ``def`` dependency on a
# worker thread, a hop (and a thread of the pool) for a line of code.


async def security_of(request: Request) -> Security:
    return request.app.state.security


SecurityDep = Annotated[Security, Depends(security_of)]


def optional_principal(request: Request, session: DbSession, security: SecurityDep) -> Principal | None:
    principal = _authenticate(request, session, security)
    end_step(session)  # no connection is held while the request waits for its next thread
    return principal


def _authenticate(request: Request, session: DbSession, security: Security) -> Principal | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if header:
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("use `Authorization: Bearer <token>`")
        principal = _bearer_principal(request, session, security, token.strip())
        if principal is None:
            raise Unauthorized("the token is not valid, has expired or was revoked")
        request.state.principal = principal  # for AnswerWritesWithoutReading
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


KEYS_KEPT_AT_MOST = 1_000


def _bearer_principal(request: Request, session: Session, security: Security, token: str) -> Principal | None:
    """``principal_for_token``; with ``BILLFOLD_ENTITLEMENT_CACHE`` an API key's answer is kept in
    the process (``kit.db.changes.Keeper``) and given again with no transaction, until its last use
    is due to be noted (``sessions.TOUCH_EVERY``) or its row changes (revoked, its scopes changed,
    deleted: its change mark moves, ``models.changes``). What is given is a copy of the key's row
    that belongs to no session (the request reads its id and scopes; nothing writes it)."""
    if not security.settings.entitlement_cache or not token.startswith(f"{API_KEY_PREFIX}_"):
        return principal_for_token(session, security, token)
    state = request.app.state
    marks, kept = marks_for(state.engine.url), state.api_keys_kept
    now = clock.now()
    key = kept.get(token, now, marks)
    if key is not None:
        return Principal(api_key=key, scopes=frozenset(key.scopes))
    snapshot = (now, marks.snapshot())  # before the read: a commit racing with it moves a mark after
    principal = principal_for_token(session, security, token)
    if principal is not None and (found := principal.api_key) is not None and found.last_used_at is not None:
        copy = ApiKey(**{column: getattr(found, column) for column in _KEY_COLUMNS})
        copy.scopes = list(found.scopes)
        until = found.last_used_at + TOUCH_EVERY
        kept.keep(token, copy, {EVERYTHING, f"key:{found.id}"}, until, snapshot, marks, at_most=KEYS_KEPT_AT_MOST)
    return principal


_KEY_COLUMNS = [column.key for column in ApiKey.__table__.columns]


def require_principal(principal: Principal | None) -> Principal:
    if principal is None:
        raise Unauthorized("sign in, or send an API key")
    return principal


async def required_principal(principal: Annotated[Principal | None, Depends(optional_principal)]) -> Principal:
    return require_principal(principal)


async def signed_in_user(principal: Annotated[Principal, Depends(required_principal)]) -> Principal:
    if principal.user is None:
        raise Forbidden("this needs a signed-in user, not an API key")
    return principal


def require_admin(request: Request, principal: Principal) -> Principal:
    principal.require_admin()
    principal.require_scope("read" if request.method in SAFE_METHODS else "write")
    return principal


async def admin(request: Request, principal: Annotated[Principal, Depends(required_principal)]) -> Principal:
    return require_admin(request, principal)


def ids_only(document: Any, *, top: bool = True) -> Any:
    """What a caller that may write but not read gets back of what it wrote: the ``id`` of each
    object in the answer (nested objects under their own key), and, at the top, a ``secret`` the
    write made (a new API key's, shown this once). Nothing else: no names, amounts or states."""
    if isinstance(document, list):
        items = [ids_only(item, top=False) for item in document]
        return [item for item in items if item not in ({}, [], None)]
    if not isinstance(document, dict):
        return None
    kept: dict[str, Any] = {}
    for key, value in document.items():
        if key == "id" or (top and key == "secret"):
            kept[key] = value
        elif isinstance(value, dict | list) and (inner := ids_only(value, top=False)) not in ({}, []):
            kept[key] = inner
    return kept


class AnswerWritesWithoutReading:
    """A write made with an API key that lacks the ``read`` scope answers with the ids of what it
    wrote (``ids_only``), not the resource: the key may make the change but not read its result.
    Same status; errors and empty answers pass as they are. Wraps every route, so no endpoint can
    forget it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {}
        body = bytearray()

        async def answer(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                principal = scope.get("state", {}).get("principal")
                headers = dict(message.get("headers", []))
                if (
                    principal is not None
                    and principal.api_key is not None
                    and "read" not in principal.scopes
                    and 200 <= message["status"] < 300
                    and headers.get(b"content-type", b"").startswith(b"application/json")
                ):
                    held["start"] = message
                    return
            elif message["type"] == "http.response.body" and "start" in held:
                body.extend(message.get("body", b""))
                if message.get("more_body"):
                    return
                payload = json.dumps(ids_only(json.loads(body or b"null")) or {}).encode()
                start = held.pop("start")
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                await send({**start, "headers": [*headers, (b"content-length", str(len(payload)).encode())]})
                await send({"type": "http.response.body", "body": payload})
                return
            await send(message)

        await self.app(scope, receive, answer)


Anyone = Annotated[Principal | None, Depends(optional_principal)]
Authenticated = Annotated[Principal, Depends(required_principal)]
User = Annotated[Principal, Depends(signed_in_user)]
Admin = Annotated[Principal, Depends(admin)]

__all__ = ["Admin", "Anyone", "Authenticated", "BillfoldError", "SecurityDep", "User"]
