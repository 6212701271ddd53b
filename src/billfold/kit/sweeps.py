"""Background work: sweeps that find due rows in the database and do them (DESIGN.md rule 7).

A domain package registers its sweeps at import time::

    @sweep("subscriptions.renew", every=timedelta(minutes=1))
    def renew_due(context: Context) -> int:
        ...  # claim due rows (FOR UPDATE SKIP LOCKED), do them, commit; return how many were done

A sweep takes its own transactions (it is a job boundary, like a request), claims rows so that
several workers on several machines never do the same row twice, and returns how much it did, so
a catch-up (after ``billfold clock advance``) can run every sweep until none has work left.
The runner (``billfold worker``, the in-process embedded worker, Dramatiq) lives in
``billfold.worker``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.sql import Select

from billfold.kit.db.dialects import for_update

T = TypeVar("T")

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from billfold.accounts.security import Security
    from billfold.config import Settings


@dataclass(frozen=True)
class Context:
    """What a sweep may use: sessions to open its transactions, the settings, and the security
    (keyring) for provider adapters."""

    sessions: sessionmaker[Session]
    settings: Settings
    security: Security


@dataclass(frozen=True)
class Sweep:
    """``drain``: a sweep of a backlog claimed a batch at a time with ``FOR UPDATE SKIP LOCKED``,
    which the worker runs again at once while it reports work (several at once where the database
    allows: ``worker.drain``), instead of once per ``every``."""

    name: str
    run: Callable[[Context], int]
    every: timedelta
    drain: bool = False


_SWEEPS: dict[str, Sweep] = {}


def sweep(name: str, *, every: timedelta, drain: bool = False) -> Callable[[Callable[[Context], int]], Callable[[Context], int]]:
    """Register ``run`` as the sweep ``name``, due every ``every`` (see ``Sweep`` for ``drain``)."""

    def register(run: Callable[[Context], int]) -> Callable[[Context], int]:
        _SWEEPS[name] = Sweep(name, run, every, drain)
        return run

    return register


def sweeps() -> list[Sweep]:
    """Every registered sweep, by name."""
    return [_SWEEPS[name] for name in sorted(_SWEEPS)]


def of(run: Callable[[Context], int]) -> Sweep:
    """The sweep ``run`` was registered as (with ``@sweep``); ValueError for a plain function."""
    for registered in _SWEEPS.values():
        if registered.run is run:
            return registered
    raise ValueError(f"{getattr(run, '__qualname__', run)!r} is not a sweep: decorate it with @sweep(name, every=...)")


def get(name: str) -> Sweep:
    """The sweep registered as ``name``; KeyError names the ones there are."""
    try:
        return _SWEEPS[name]
    except KeyError:
        raise KeyError(f"no sweep named {name!r}; registered: {', '.join(sorted(_SWEEPS)) or 'none'}") from None


def unregister(name: str) -> None:
    """Forget the sweep ``name`` (tests register sweeps of their own for a while)."""
    _SWEEPS.pop(name, None)


RETRY_BACKOFF = (timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=15), timedelta(hours=1), timedelta(hours=3))
"""How long a row a sweep failed on waits before the next try: after each failed attempt in turn,
then the last wait again (mail in the outbox, webhook events in the inbox)."""


def backoff(attempts: int, schedule: Sequence[timedelta] = RETRY_BACKOFF) -> timedelta:
    """The wait after the ``attempts``-th failed attempt, by ``schedule`` (default: the sweeps'
    one, ``RETRY_BACKOFF``; webhooks out have a longer one)."""
    return schedule[min(max(attempts, 1), len(schedule)) - 1]


def claim_batch(session: Session, statement: Select[Any], limit: int) -> Sequence[Any]:
    """Claim up to ``limit`` due rows for this transaction: the rows ``statement`` selects (order it,
    oldest due first), locked ``FOR UPDATE SKIP LOCKED`` on PostgreSQL and MariaDB, so another
    worker running the same sweep passes over them and takes the next ones. On SQLite the engine
    begins every transaction ``IMMEDIATE`` (one writer at a time), so the plain select is a claim.

    Returns the first column of each row (the ORM entity for ``select(Model)``). Do the work and
    change each row so it is no longer due before the transaction commits; the locks go then.

        with transaction(context.sessions) as session:
            due = claim_batch(session, select(Subscription).where(...).order_by(...), 100)
    """
    if limit < 1:
        raise ValueError("claim at least one row")
    return session.scalars(for_update(statement.limit(limit), session, skip_locked=True)).all()
