"""``Idempotency-Key``: a retried request gets the first one's answer instead of doing the work
again, and a request that died half-way resumes from where it stopped.

The design is Brandur Leach's recovery points made portable (docs/api.md#idempotency and
/work/shared/reference/providers.md §1):

1. ``claim`` inserts the key, or takes the lock of an existing one with a compare-and-set UPDATE
   (``rowcount == 1`` or someone else won), writing a fresh ``lock_token``. A finished key gives a
   ``Replay`` of its stored response; the same key with other parameters is
   ``IdempotencyKeyMismatch`` (422); a key another request holds is ``IdempotencyKeyInUse`` (409).
2. The caller does its work in atomic phases, one transaction each. ``advance`` records how far it
   got, in the phase's own transaction; ``finish`` stores the response in the last one. Both are
   fenced by the lock token: if a retry took the key over after the lock went stale, they raise
   ``LostLock`` and the phase rolls back.
3. On an exception the caller rolls back and calls ``release``, so an immediate retry resumes
   from the last recovery point, and sends a provider the same key it sent before
   (``Claim.provider_key(phase)``, derived from the row id, never from the client's key).

``run_once`` does all of this for a request that is one transaction.

Transactions: services never commit, and nothing here that takes a ``Session`` does either
(``advance``, ``finish``, ``purge`` run in the caller's transaction). ``claim``, ``release`` and
``run_once`` take a ``sessionmaker`` and commit their own short transactions on purpose: like
``kit.http.unit_of_work`` they are the request boundary's machinery, and a claim must be visible
to other requests before the work starts.

Which outcomes are stored (and replayed): every response the handler returns, and every
``BillfoldError`` it raises with a 4xx status other than 429 (a declined card, a refund larger
than the payment, a state conflict): these are final answers about this request. Not stored, so
a retry with the same key runs again: anything that fails before execution begins (a malformed
key, invalid parameters, a mismatch, a key in use) and anything that may go away by itself (429,
5xx, a lost database connection, ``LostLock``, any other exception). The latter also releases the
lock, unlike Stripe's v1 API which stores 500s too: with recovery points a retry is safe and
finishes the work.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from datetime import timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from billfold.kit import clock
from billfold.kit.db import insert_rows, transaction
from billfold.kit.errors import BillfoldError, Conflict, InvalidInput
from billfold.kit.sweeps import Context, sweep
from billfold.models.idempotency import FINISHED, STARTED, IdempotencyKey

HEADER = "Idempotency-Key"
LOCK_TIMEOUT = timedelta(seconds=90)
"""A lock older than this is presumed dead (its process crashed) and another request may take it."""
MIN_RETENTION = timedelta(hours=24)
"""Stripe's promise, and ours: a key answers the same for at least this long."""
DEFAULT_RETENTION = timedelta(hours=72)
"""What ``purge`` keeps by default: a bug found on Monday can still be fixed for Friday's requests."""
MAX_KEY_LENGTH = 255
KEY_PATTERN = r"^[!-~]([ -~]{0,253}[!-~])?$"
"""1 to 255 printable ASCII characters, not starting or ending with a space (HTTP would strip it)."""
_KEY = re.compile(KEY_PATTERN)
_PATH_LENGTH = 255
_CLAIM_ATTEMPTS = 3


class IdempotencyKeyMismatch(InvalidInput):
    code = "idempotency_error"
    title = "Idempotency key reused with other parameters"


class IdempotencyKeyInUse(Conflict):
    code = "idempotency_key_in_use"
    title = "Idempotency key in use"


class LostLock(Conflict):
    """A later request took the key over after this one's lock went stale; this one's phase must
    roll back."""

    code = "idempotency_key_in_use"
    title = "Idempotency key taken over"


@dataclass(frozen=True)
class Claim:
    """The lock on one key, held by this request. ``recovery_point`` is where the work resumes."""

    id: str
    lock_token: str
    recovery_point: str

    def provider_key(self, phase: str) -> str:
        """The idempotency key to send a provider for ``phase``: the same on every retry, and
        unique across callers since it comes from our row, not from the client's key."""
        return f"billfold-{self.id}-{phase}"


@dataclass(frozen=True)
class Replay:
    """The stored response of a finished key."""

    status: int
    body: Any


class Outcome(NamedTuple):
    status: int
    body: Any
    replayed: bool


def check_key(key: str) -> str:
    """The key itself if it is 1 to 255 printable ASCII characters, else InvalidInput."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        detail = (
            f"the {HEADER} header must be 1 to {MAX_KEY_LENGTH} printable ASCII characters, not starting or "
            "ending with a space (a V4 UUID is a good choice)"
        )
        raise InvalidInput(detail, errors=[{"field": HEADER, "message": detail}])
    return key


def request_hash(method: str, path: str, params: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of the request: sorted keys, no spaces."""
    if hasattr(params, "model_dump"):  # a Pydantic model
        params = params.model_dump(mode="json")
    canonical = json.dumps(
        {"method": method.upper(), "path": path, "params": params},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def claim(
    sessions: sessionmaker[Session], *, scope: str, key: str, method: str, path: str, params: Any
) -> Claim | Replay:
    """Take ``key`` of ``scope`` for this request, in a transaction of its own (committed here).

    Returns a ``Claim`` to do the work under (new key, or one whose earlier attempt was released
    or went stale), or a ``Replay`` of a finished key's response. Raises InvalidInput for a
    malformed key, ``IdempotencyKeyMismatch`` when the key was first used with another method,
    path or parameters, and ``IdempotencyKeyInUse`` while another request holds it."""
    check_key(key)
    digest = request_hash(method, path, params)
    refused: sa.exc.IntegrityError | None = None
    for _ in range(_CLAIM_ATTEMPTS):
        token = _token()
        now = clock.now()
        try:
            with transaction(sessions) as session:
                row = IdempotencyKey(
                    scope=scope, idem_key=key, request_method=method.upper()[:10],
                    request_path=path[:_PATH_LENGTH],
                    request_hash=digest, recovery_point=STARTED, lock_token=token, locked_at=now,
                    last_run_at=now, created_at=now,
                )
                insert_rows(session, [row])
                return Claim(row.id, token, STARTED)
        except sa.exc.IntegrityError as error:
            refused = error  # most likely the key exists: read it (a concurrent insert has committed by now)
        with transaction(sessions) as session:
            row = session.scalars(
                sa.select(IdempotencyKey).where(IdempotencyKey.scope == scope, IdempotencyKey.idem_key == key)
            ).one_or_none()
            if row is None:
                continue  # the other insert rolled back: try inserting again
            if row.request_hash != digest:
                raise IdempotencyKeyMismatch(
                    f"this {HEADER} was already used with a different method, path or parameters; "
                    "use a new key for a different request"
                )
            if row.recovery_point == FINISHED:
                return Replay(row.response_code or 200, row.response_body)
            stale = now - LOCK_TIMEOUT
            if row.locked_at is not None and row.locked_at > stale:
                raise _in_use()
            column = IdempotencyKey.lock_token
            seen = column.is_(None) if row.lock_token is None else column == row.lock_token
            taken = session.execute(
                sa.update(IdempotencyKey)
                .where(
                    IdempotencyKey.id == row.id,
                    IdempotencyKey.recovery_point != FINISHED,
                    seen,
                    sa.or_(IdempotencyKey.locked_at.is_(None), IdempotencyKey.locked_at <= stale),
                )
                .values(lock_token=token, locked_at=now, last_run_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount
            if taken != 1:
                raise _in_use()  # another retry took it between our read and our update
            return Claim(row.id, token, row.recovery_point)
    assert refused is not None
    raise refused  # the insert failed for some other reason than an existing key


def advance(session: Session, claim: Claim, recovery_point: str) -> Claim:
    """Record, in the caller's transaction, that the work reached ``recovery_point``; it commits
    with the phase's own writes. Also renews the lock. Raises ``LostLock`` if the key is no
    longer ours, so the phase rolls back."""
    if recovery_point == FINISHED:
        raise ValueError("use finish() to finish a key")
    now = clock.now()
    _fenced_update(session, claim, recovery_point=recovery_point, locked_at=now, last_run_at=now)
    return Claim(claim.id, claim.lock_token, recovery_point)


def finish(session: Session, claim: Claim, status: int, body: Any) -> None:
    """Store the response and unlock the key, in the caller's transaction (fenced like ``advance``)."""
    _fenced_update(
        session, claim, recovery_point=FINISHED, response_code=status, response_body=body,
        lock_token=None, locked_at=None, last_run_at=clock.now(),
    )


def release(sessions: sessionmaker[Session], claim: Claim) -> bool:
    """Unlock the key if it is still ours, in a transaction of its own (committed here), so an
    immediate retry can resume. Call it after rolling back the failed phase. Returns whether the
    lock was still ours."""
    with transaction(sessions) as session:
        return session.execute(
            sa.update(IdempotencyKey)
            .where(IdempotencyKey.id == claim.id, IdempotencyKey.lock_token == claim.lock_token)
            .values(lock_token=None, locked_at=None)
            .execution_options(synchronize_session=False)
        ).rowcount == 1


def purge(session: Session, older_than: timedelta = DEFAULT_RETENTION) -> int:
    """Delete keys created more than ``older_than`` ago (at least 24 hours), finished or
    abandoned, leaving any a live request holds. In the caller's transaction; returns how many."""
    if older_than < MIN_RETENTION:
        hours = MIN_RETENTION.total_seconds() / 3600
        raise InvalidInput(f"idempotency keys are kept at least {hours:.0f} hours")
    now = clock.now()
    return session.execute(
        sa.delete(IdempotencyKey)
        .where(
            IdempotencyKey.created_at < now - older_than,
            sa.or_(IdempotencyKey.locked_at.is_(None), IdempotencyKey.locked_at <= now - LOCK_TIMEOUT),
        )
        .execution_options(synchronize_session=False)
    ).rowcount


@sweep("idempotency.purge", every=timedelta(hours=1))
def purge_sweep(context: Context) -> int:
    """``purge`` with the default retention, in a transaction of its own; how many keys went."""
    with transaction(context.sessions) as session:
        return purge(session)


def is_final(error: BaseException) -> bool:
    """Whether an error the handler raised is the request's final answer, to store and replay."""
    if not isinstance(error, BillfoldError) or isinstance(error, LostLock):
        return False
    return 400 <= error.status < 500 and error.status != 429


def run_once(
    sessions: sessionmaker[Session],
    handler: Callable[[Session], tuple[int, Any]],
    *,
    scope: str,
    key: str,
    method: str,
    path: str,
    params: Any,
) -> Outcome:
    """Run a one-transaction ``handler`` at most once per key.

    Claims the key, runs ``handler(session)`` and ``finish`` in one transaction, and returns its
    ``(status, body)``. A retry gets the stored outcome back with ``replayed=True``. A final error
    (``is_final``) rolls the handler's writes back and is stored as its problem document, and
    returned like a response (``status`` >= 400). Any other exception rolls back, releases the
    key and propagates."""
    claimed = claim(sessions, scope=scope, key=key, method=method, path=path, params=params)
    if isinstance(claimed, Replay):
        return Outcome(claimed.status, claimed.body, True)
    try:
        with transaction(sessions) as session:
            status, body = handler(session)
            finish(session, claimed, status, body)
        return Outcome(status, body, False)
    except BaseException as error:
        if is_final(error):
            assert isinstance(error, BillfoldError)
            problem = error.to_problem()
            try:
                with transaction(sessions) as session:
                    finish(session, claimed, error.status, problem)
            except BaseException:
                release(sessions, claimed)
                raise
            return Outcome(error.status, problem, False)
        release(sessions, claimed)
        raise


def _fenced_update(session: Session, claim: Claim, **values: Any) -> None:
    parameters = {"fence_id": claim.id, "fence_token": claim.lock_token, **{f"set_{k}": v for k, v in values.items()}}
    if session.execute(_fenced(tuple(values)), parameters).rowcount != 1:
        raise LostLock(
            f"another request took this {HEADER} over after this one's lock went stale; "
            "this attempt's work was rolled back"
        )


@cache
def _fenced(names: tuple[str, ...]) -> Any:
    """The fenced UPDATE of ``names``, built once for each set (two: advance's and finish's)."""
    keys = IdempotencyKey.__table__.c
    return (
        sa.update(IdempotencyKey.__table__)
        .where(keys.id == sa.bindparam("fence_id"), keys.lock_token == sa.bindparam("fence_token"), keys.recovery_point != FINISHED)
        .values({name: sa.bindparam(f"set_{name}", type_=keys[name].type) for name in names})
    )


def _in_use() -> IdempotencyKeyInUse:
    return IdempotencyKeyInUse(
        f"a request with this {HEADER} is still in progress; retry after it finishes"
    )


def _token() -> str:
    return str(uuid.uuid4())


__all__ = [
    "DEFAULT_RETENTION", "HEADER", "KEY_PATTERN", "LOCK_TIMEOUT", "MIN_RETENTION", "Claim",
    "IdempotencyKeyInUse",
    "IdempotencyKeyMismatch", "LostLock", "Outcome", "Replay", "advance", "check_key", "claim",
    "finish", "is_final", "purge", "purge_sweep", "release", "request_hash", "run_once",
]
