"""The API's door for entitlement checks: ``GET /v1/me/entitlements/{feature}`` and
``GET /v1/users/{user_id}/entitlements/{feature}``, answered in the event loop's app before FastAPI.

A merchant's backend (or a customer's app) asks "may this user use X?" on every page or call, so
the check is the API's most frequent request. Through FastAPI each one went through seven
middleware layers, routing, dependency solving and two thread hops (authentication, then the
endpoint), several milliseconds of CPU for a millisecond of database work. Here:

- the app hands the request over before its middleware, routing and dependencies
  (``billfold.api.BillfoldApp``), matched by one regular expression;
- one hop to a worker thread (at most as many at once as the pool keeps connections, so no
  check opens a connection of its own) and one session does the whole check, each step one prebuilt
  statement of SQLAlchemy Core (no row loaded as an object): the credential
  (``sessions.credential_for_token``, ``principal_for_token``'s rules: a revoked API key, a
  signed-out, expired or locked session is refused), the user or organization named, and the
  entitlement query (``entitlements.reading``);
- the answer is the endpoint's, serialized by the same model (``EntitlementOut``);
- an answer of 200, and the credential that asked it, are kept in the process
  (``BILLFOLD_ENTITLEMENT_CACHE``, on by default) and given again, without a thread hop or a
  database round trip, while none of the change marks they were read under has moved
  (``kit.db.changes``: every process on this host moves the marks of what it changed, right
  after its commit and before it answers) and until the first instant at which time alone may
  change them (a membership's start or end, a paid period's end and its grace, an add-on's
  expiry, the session's expiry). So a revoked key, a signed-out session or a membership granted
  or cancelled is still seen by the very next check in every process on the host. The note of a
  kept credential's last use, due once a minute, is written after the answer (``_touch_later``).

Everything else is the endpoints' behaviour, unchanged: the same rules (a bearer credential, an
API key refused on ``/me``, admins and keys with the ``read`` scope on ``/users``, a user or
organization one may not see answered 404), the same problem documents, and the headers every API
answer carries (``kit.headers.API_HEADERS``). A request this door does not take goes on through the
middleware to FastAPI, whose endpoints (``billfold.memberships.api``) answer it and document the
routes: another method (HEAD), no ``Authorization`` header (a cookie, or no credential), a query
string other than one plain ``organization_id``, a feature longer than 100 characters, or anything
the guards would look at twice (a NUL, a card-number-like run of digits).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import anyio.to_thread
import sqlalchemy as sa

from billfold.accounts.security import Credential
from billfold.accounts.sessions import credential_for_token
from billfold.kit import clock
from billfold.kit.db import DATABASE_FAILURES
from billfold.kit.db.changes import EVERYTHING, Keeper, Marks, marks_for
from billfold.kit.errors import BillfoldError, Forbidden, NotFound, Unauthorized
from billfold.kit.headers import API_HEADERS
from billfold.kit.http import database_busy, end_step, send_json, send_problem, target_holds_nul
from billfold.kit.ids import has_prefix
from billfold.memberships import entitlements
from billfold.memberships.schemas import EntitlementOut
from billfold.models import Organization, OrganizationUser, User
from billfold.payments.card_guard import request_card_fields

_CHECK = re.compile(r"/v1/(?:me|users/(?P<user_id>[^/]+))/entitlements/(?P<feature>[^/]{1,100})")
_ORGANIZATION = re.compile(r"organization_id=[A-Za-z0-9_-]{1,255}")


# Answers (and, apart, credentials) a process keeps: about 1.1 KB each, so at most about 22 MB
# each (the API worker's < 200 MiB goal). Past that the oldest eighth is forgotten.
KEPT_AT_MOST = 20_000
MATES_AT_MOST = 100  # an organization's check is kept only for organizations this small (see _check)


@dataclass(frozen=True)
class _Checked:
    """A check's answer, who asked, and for keeping the answer: the marks it depends on (None:
    not to be kept) and when time alone may change it."""

    body: bytes
    who: Credential
    keys: set[str] | None
    until: datetime | None


class EntitlementDoor:
    """Answers entitlement checks (see the module's docstring) in front of the whole app: the app
    (``billfold.api.BillfoldApp``) hands it the requests it ``takes`` before any middleware."""

    def __init__(self) -> None:
        self._limiter: anyio.CapacityLimiter | None = None
        self._marks: Marks | None = None
        # Kept apart, so that a credential's note of its last use, due every minute, reads the
        # credential again and leaves the answers kept.
        self._credentials = Keeper()  # by Authorization header
        self._answers = Keeper()  # by who asks, whom, feature, organization
        self._touching: set[str] = set()  # credentials whose last use is being noted
        self._tasks: set[asyncio.Task[None]] = set()

    def takes(self, scope: dict[str, Any]) -> bool:
        if scope["type"] != "http" or scope["method"] != "GET":
            return False
        if _CHECK.fullmatch(scope["path"]) is None:
            return False
        query = scope.get("query_string", b"")
        if query and _ORGANIZATION.fullmatch(query.decode("latin-1")) is None:
            return False
        if sum(1 for name, _ in scope["headers"] if name == b"authorization") != 1:
            return False
        return not target_holds_nul(scope) and not request_card_fields(scope)

    async def answer(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        match = _CHECK.fullmatch(scope["path"])
        assert match is not None
        user_id, feature = match["user_id"], match["feature"]
        query = scope.get("query_string", b"")
        organization_id = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True)).get("organization_id") if query else None
        header = next(value for name, value in scope["headers"] if name == b"authorization").decode("latin-1")
        state = scope["app"].state
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(_connections_kept(state))
        marks = None
        try:
            if state.settings.entitlement_cache:
                marks = self._marks = self._marks or marks_for(state.engine.url)
                now = clock.now()
                who = self._credentials.get(header, now, marks)
                if who is not None:  # else the full check below reads the credential and keeps it
                    if who.touch_at is not None and now >= who.touch_at and header not in self._touching:
                        self._touch_later(state, header, marks)
                    asked = _asked(who, user_id, feature, organization_id)
                    body = self._answers.get(asked, now, marks) if asked is not None else None
                    if body is not None:
                        await send_json(send, 200, body, API_HEADERS)
                        return
            snapshot = (clock.now(), marks.snapshot()) if marks is not None else None
            checked = await anyio.to_thread.run_sync(
                _check, state, header, user_id, feature, organization_id, marks is not None, limiter=self._limiter,
            )
        except BillfoldError as error:
            await send_problem(send, error, API_HEADERS)
            return
        except DATABASE_FAILURES as error:
            await send_problem(send, database_busy("GET", scope["path"], error), API_HEADERS)
            return
        if snapshot is not None and checked.keys is not None:
            who = checked.who
            self._keep(self._credentials, header, who, _who_keys(who), who.expires_at, snapshot)
            asked = _asked(who, user_id, feature, organization_id)
            if asked is not None:
                self._keep(self._answers, asked, checked.body, checked.keys | _who_keys(who), checked.until, snapshot)
        await send_json(send, 200, checked.body, API_HEADERS)

    async def _read_credential(self, state: Any, header: str, marks: Marks) -> Credential:
        snapshot = (clock.now(), marks.snapshot())  # before the reads: a commit racing with them moves a mark after
        who = await anyio.to_thread.run_sync(_credential, state, header, limiter=self._limiter)
        self._keep(self._credentials, header, who, _who_keys(who), who.expires_at, snapshot)
        return who

    def _touch_later(self, state: Any, header: str, marks: Marks) -> None:
        """Note a kept credential's last use (due once a minute) after answering, not before: it
        changes nothing about the answer (the marks tell a revocation; the expiry is checked
        against the clock), and a check waiting for it waited for a transaction. The credential
        read with it is kept; one that fails to be read is forgotten, and read on its next use."""

        async def touch() -> None:
            try:
                await self._read_credential(state, header, marks)
            except Exception:  # a revocation, or the database busy: read again on its next use
                self._credentials.forget(header)
            finally:
                self._touching.discard(header)

        self._touching.add(header)
        task = asyncio.get_running_loop().create_task(touch())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _keep(
        self, kept: Keeper, key: Any, value: Any, keys: set[str], until: datetime | None, snapshot: tuple[datetime, bytes],
    ) -> None:
        assert self._marks is not None
        kept.keep(key, value, keys, until, snapshot, self._marks, at_most=KEPT_AT_MOST)


def _who_keys(who: Credential) -> set[str]:
    return {EVERYTHING, f"key:{who.api_key}" if who.api_key is not None else f"user:{who.user_id}"}


def _asked(who: Credential, user_id: str | None, feature: str, organization_id: str | None) -> tuple[str, str, str, str | None] | None:
    """Which kept answer a check by ``who`` may be given: None where the endpoint's rules refuse
    it (the full check then refuses it with their problem)."""
    if user_id is None:
        user_id = who.user_id
        if user_id is None:
            return None
    elif not who.is_admin or (who.api_key is not None and "read" not in who.scopes):
        return None
    return (who.api_key or who.user_id or "", user_id, feature, organization_id)


def _connections_kept(state: Any) -> int:
    """How many checks run at once: as many as the pool keeps connections open
    (``kit.db.pool_options``). A check holds its connection for a few round trips; more at once
    (the 16 threads of the API's pool) opened and closed connections beyond those kept (0.15 a
    check) and contended for the interpreter: 274 checks/s at 2.3 ms of CPU each, against 888/s
    at 1.2 ms with this limit (docs/performance.md, "over HTTP (issue 13)")."""
    size = getattr(state.engine.pool, "size", None)
    return max(1, min(size() if callable(size) else state.settings.api_threads, state.settings.api_threads))


_USER = sa.select(User.__table__.c.id).where(User.__table__.c.id == sa.bindparam("user_id", type_=sa.String))
_ou = OrganizationUser.__table__
_ORGANIZATION_AND_MEMBER = (
    sa.select(Organization.__table__.c.id, _ou.c.id.label("member"))
    .select_from(Organization.__table__.outerjoin(_ou, sa.and_(
        _ou.c.organization_id == Organization.__table__.c.id, _ou.c.user_id == sa.bindparam("user_id", type_=sa.String),
    )))
    .where(Organization.__table__.c.id == sa.bindparam("organization_id", type_=sa.String))
)
_MATES = sa.select(_ou.c.user_id).where(_ou.c.organization_id == sa.bindparam("organization_id", type_=sa.String)).limit(MATES_AT_MOST + 1)


def _bearer(header: str) -> str:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("use `Authorization: Bearer <token>`")
    return token.strip()


def _credential(state: Any, header: str) -> Credential:
    """Who the header names (``accounts.auth``'s rules), with the note of its last use when due."""
    token = _bearer(header)
    with state.sessions() as session:
        try:
            who = credential_for_token(session, state.security, token)
            if who is None:
                raise Unauthorized("the token is not valid, has expired or was revoked")
            end_step(session)
        except BaseException:
            session.rollback()
            raise
    return who


def _check(
    state: Any, header: str, user_id: str | None, feature: str, organization_id: str | None, keeping: bool,
) -> _Checked:
    """The endpoints' dependencies and body (``accounts.auth``, ``memberships.api``) in one
    session, the same checks in the same order, each one statement of SQLAlchemy Core. With
    ``keeping``: also the change marks the answer depends on (None: not to be kept) and when time
    alone may change it."""
    token = _bearer(header)
    security = state.security
    with state.sessions() as session:
        try:
            who = credential_for_token(session, security, token)
            if who is None:
                raise Unauthorized("the token is not valid, has expired or was revoked")
            if user_id is None:  # /me: a signed-in user (auth.signed_in_user)
                if who.user_id is None:
                    raise Forbidden("this needs a signed-in user, not an API key")
                user_id = who.user_id
            else:  # /users/{user_id}: the shop's admins and API keys that may read (auth.admin, access.user_owner)
                who.require_admin()
                who.require_scope("read")
                if not has_prefix(user_id, "usr") or session.execute(_USER, {"user_id": user_id}).first() is None:
                    raise NotFound(f"no user {user_id}")
            if organization_id is not None:  # organizations.access: 404 unless one's own (or an admin)
                found = None
                if has_prefix(organization_id, "org"):
                    found = session.execute(_ORGANIZATION_AND_MEMBER, {"organization_id": organization_id, "user_id": who.user_id}).first()
                if found is None or (found.member is None and not who.is_admin):
                    raise NotFound(f"no organization {organization_id}")
            grace = timedelta(days=security.settings.membership_grace_days)
            read = entitlements.reading(
                session, user_id=user_id, feature=feature, organization_id=organization_id, grace=grace,
            )
            keys: set[str] | None = None
            if keeping:
                keys = {EVERYTHING, *read.keys}
                if organization_id is not None:  # its members' memberships for it count: any of them may change
                    mates = session.execute(_MATES, {"organization_id": organization_id}).scalars().all()
                    keys = keys | {f"user:{mate}" for mate in mates} if len(mates) <= MATES_AT_MOST else None
            end_step(session)  # the credential's last use, when it is due (credential_for_token)
        except BaseException:
            session.rollback()
            raise
    return _Checked(EntitlementOut.model_validate(read.answer).model_dump_json().encode(), who, keys, read.changes_at)
