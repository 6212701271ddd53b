"""Change marks: counters in shared memory that every process on this host moves after it commits
a change, so that a process keeping answers in memory can tell, without asking the database,
whether what an answer was read from may have changed since.

A mark is one of ``SLOTS`` 64-bit counters in a file mapped into every process that uses the
same database on this host (``/dev/shm`` where there is one). A change is named by keys
("user:usr_…", "org:org_…", …), each hashed to a slot; ``EVERYTHING`` (slot 0) stands for any
change, and every answer depends on it. What moves which mark:

- an ORM flush: each object of a watched class (``watch``) that was inserted, changed or deleted
  gives the keys its ``keys`` function names (``billfold.models.changes``); the marks move right
  after the session commits;
- any other INSERT, UPDATE, DELETE, REPLACE or TRUNCATE that names a watched table (a Core
  statement, raw SQL on an engine, a test's set-up) moves ``EVERYTHING``: it is not known whose
  rows it changed. A statement run with ``execution_options(billfold_changes=keys)`` names its
  keys instead (an empty tuple: it changes nothing a reader keeps, like a credential's note of its
  last use).

The order is what makes a kept answer safe: a reader copies the marks *before* it reads the
database (``snapshot``), and a writer moves them *after* its commit. So an answer kept with the
marks it was read under is given again only while no commit that could change it has finished
since; a commit racing with the read moves a mark the answer was kept under, and the answer is
read again. A writer's own request is answered after its marks have moved, so the next request
anyone makes sees the change.

Only processes on one host share the file. Processes on other hosts writing the same database do
not move these marks: a deployment that writes from several hosts turns the caches that rely on
them off (``BILLFOLD_ENTITLEMENT_CACHE=false``; docs/operations.md).
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import mmap
import os
import re
import socket
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session

SLOTS = 1 << 14
EVERYTHING = "*"
_SIZE = SLOTS * 8
OPTION = "billfold_changes"


def slot(key: str) -> int:
    """The counter a key moves (slot 0 is ``EVERYTHING``'s alone)."""
    if key == EVERYTHING:
        return 0
    return 1 + zlib.crc32(key.encode()) % (SLOTS - 1)


class Marks:
    """The counters of one database on this host."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_size < _SIZE:
                    os.ftruncate(fd, _SIZE)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            self._map = mmap.mmap(fd, _SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.pid = os.getpid()
        self._view = memoryview(self._map).cast("Q")
        self._lock = threading.Lock()

    def snapshot(self) -> bytes:
        """Every counter as it is now (take it before reading what the answer is made of)."""
        return self._map[:_SIZE]

    def at(self, snapshot: bytes, index: int) -> int:
        return int.from_bytes(snapshot[index * 8:index * 8 + 8], "little")

    def still(self, marks: tuple[tuple[int, int], ...]) -> bool:
        """Whether none of ``(slot, value)`` has moved."""
        view = self._view
        return all(view[index] == value for index, value in marks)

    def move(self, keys: Iterable[str]) -> None:
        slots = sorted({slot(key) for key in keys})
        if not slots:
            return
        with self._lock:  # one writer of this process at a time, and flock for the others
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                for index in slots:
                    self._view[index] += 1
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)


_marks: dict[str, Marks] = {}
_marks_lock = threading.Lock()


def _identity(url: URL) -> str:
    """The database a URL names, the same whichever spelling of its host (127.0.0.1 or
    localhost) or of its SQLite file a process was given."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database or ""
        return f"sqlite:{os.path.realpath(database) if database and database != ':memory:' else f':memory:{os.getpid()}'}"
    host = url.host or "local"
    try:
        host = socket.gethostbyname(host) if url.host else host
    except OSError:
        pass
    return f"{backend}:{host}:{url.port or ''}:{url.database or ''}:{url.query.get('unix_socket', '')}"


def _directory() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def marks_for(url: URL) -> Marks:
    """The marks of the database ``url`` names (an engine's ``url``)."""
    identity = _identity(url)
    found = _marks.get(identity)
    if found is None or found.pid != os.getpid():
        with _marks_lock:
            found = _marks.get(identity)
            if found is None or found.pid != os.getpid():  # a forked child opens its own (flock is per open file)
                name = hashlib.sha256(f"{os.getuid()}:{identity}".encode()).hexdigest()[:24]
                found = _marks[identity] = Marks(_directory() / f"billfold-changes-{name}")
    return found


# --- what a process keeps -------------------------------------------------------------------


class Kept:
    """Something a process keeps, the change marks it was read under, and the time it holds for:
    from ``since`` (the clock before it was read: a clock set back before it, as a test's may be,
    reads it again) until ``until`` (when time alone may change it; None: never)."""

    __slots__ = ("value", "marks", "since", "until")

    def __init__(self, value: Any, marks: tuple[tuple[int, int], ...], since: datetime, until: datetime | None) -> None:
        self.value, self.marks, self.since, self.until = value, marks, since, until


class Keeper:
    """Values read from the database, kept by a key while none of the marks they were read under
    has moved and their time holds (``Kept``); a bounded number, the oldest eighth forgotten past
    ``at_most``. Take the snapshot (``Marks.snapshot`` and the clock) *before* reading the value."""

    def __init__(self) -> None:
        self._kept: dict[Any, Kept] = {}
        self._lock = threading.Lock()  # keeping from several threads (eviction iterates)

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, key: Any, now: datetime, marks: Marks) -> Any:
        """What is kept under ``key``, if time has not yet changed it and none of its marks has moved."""
        kept = self._kept.get(key)
        if kept is None or now < kept.since or (kept.until is not None and now >= kept.until) or not marks.still(kept.marks):
            return None
        return kept.value

    def keep(
        self, key: Any, value: Any, keys: Iterable[str], until: datetime | None, snapshot: tuple[datetime, bytes],
        marks: Marks, *, at_most: int,
    ) -> None:
        """Keep ``value``, read after ``snapshot`` = (the clock, ``marks.snapshot()``), as long as
        none of the marks of ``keys`` moves and the clock is before ``until``."""
        since, taken = snapshot
        slots = sorted({slot(name) for name in keys})
        entry = Kept(value, tuple((index, marks.at(taken, index)) for index in slots), since, until)
        with self._lock:
            kept = self._kept
            if len(kept) >= at_most:
                for oldest in list(itertools.islice(kept, max(1, at_most // 8))):
                    kept.pop(oldest, None)
            kept[key] = entry

    def forget(self, key: Any) -> None:
        self._kept.pop(key, None)


# --- what moves the marks -------------------------------------------------------------------

_watched: dict[type, Callable[[Any, str], Iterable[str]]] = {}
_tables: set[str] = set()
_table_pattern: re.Pattern[str] | None = None
_PENDING = "billfold_changed_keys"
# A write, also one behind a WITH (a CTE): a SELECT … FOR UPDATE behind one counts too, which only
# moves marks that did not need to move.
_WRITE = re.compile(r"\s*(?:WITH\b.*?\b)?(?:INSERT|UPDATE|DELETE|REPLACE|TRUNCATE)\b", re.IGNORECASE | re.DOTALL)
_verdicts: dict[str, bool] = {}


def watch(model: type, keys: Callable[[Any, str], Iterable[str]]) -> None:
    """Have an ORM flush that inserts, changes or deletes ``model``'s rows move the marks
    ``keys(row, kind)`` names (``kind``: "new", "dirty" or "deleted") (``history_values`` and ``changed`` help it name the values an
    update replaced, or nothing for an update that does not matter), and any other write to its
    table move ``EVERYTHING``."""
    global _table_pattern
    _watched[model] = keys
    _tables.add(model.__table__.name)  # type: ignore[attr-defined]
    _table_pattern = re.compile(r"\b(?:" + "|".join(sorted(map(re.escape, _tables))) + r")\b", re.IGNORECASE)
    _verdicts.clear()
    _listen()


def new_keys(rows: Iterable[Any]) -> tuple[str, ...]:
    """The marks new ``rows`` (not yet written) move, as an ORM flush inserting them would name
    them: for a statement that writes them itself (``execution_options(billfold_changes=...)``)."""
    found: set[str] = set()
    for row in rows:
        keys = _watched.get(type(row))
        if keys is not None:
            found.update(keys(row, "new"))
    return tuple(sorted(found))


def _writes_watched(statement: str) -> bool:
    verdict = _verdicts.get(statement)
    if verdict is None:
        verdict = bool(_WRITE.match(statement)) and _table_pattern is not None and _table_pattern.search(statement) is not None
        if len(_verdicts) > 4096:
            _verdicts.clear()
        _verdicts[statement] = verdict
    return verdict


_listening = False


def _listen() -> None:
    global _listening
    if _listening:
        return
    _listening = True
    event.listen(Engine, "before_cursor_execute", _before_cursor_execute)
    event.listen(Engine, "begin", _connection_begins)
    event.listen(sa.pool.Pool, "checkin", _checked_in)
    event.listen(Session, "do_orm_execute", _orm_execute)
    event.listen(Session, "after_flush", _after_flush)
    event.listen(Session, "after_commit", _after_commit)
    event.listen(Session, "after_soft_rollback", _after_rollback)


def _named(options: Any) -> set[str]:
    named = options.get(OPTION)
    return {EVERYTHING} if named is None else set(named)


def _before_cursor_execute(conn: sa.Connection, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
    """A write outside the ORM's unit of work (which runs with its mapper's ``compiled_cache``
    and is named in ``_after_flush``, or, for the ORM's bulk statements, ``_orm_execute``).
    Kept on the connection until its transaction is over (``_settle``)."""
    if not _writes_watched(statement):
        return
    options = context.execution_options if context is not None else {}
    if options.get("compiled_cache") is not None:
        return
    keys = _named(options)
    if keys:
        conn.info.setdefault(_PENDING, {}).setdefault(conn.engine.url, set()).update(keys)


def _connection_begins(conn: sa.Connection) -> None:
    _settle(conn.info)


def _checked_in(dbapi_connection: Any, record: Any) -> None:
    _settle(record.info)


def _settle(info: dict[str, Any]) -> None:
    """A connection's transaction is over (it went back to the pool, or the next one begins):
    move the marks its writes named. Moved after a rollback too, which costs a reader only a read."""
    pending = info.pop(_PENDING, None)
    for url, keys in (pending or {}).items():
        marks_for(url).move(keys)


def _orm_execute(state: Any) -> None:
    if (state.is_insert or state.is_update or state.is_delete) and _table_pattern is not None:
        table = getattr(state.statement, "table", None)
        if getattr(table, "name", None) in _tables:
            keys = _named({**state.statement.get_execution_options(), **state.local_execution_options})
            if keys:
                state.session.info.setdefault(_PENDING, set()).update(keys)


def _after_flush(session: Session, context: Any) -> None:
    found: set[str] = set()
    for rows, kind in ((session.new, "new"), (session.dirty, "dirty"), (session.deleted, "deleted")):
        for row in rows:
            keys = _watched.get(type(row))
            if keys is not None and (kind != "dirty" or session.is_modified(row, include_collections=False)):
                found.update(keys(row, kind))
    if found:
        session.info.setdefault(_PENDING, set()).update(found)


def _after_commit(session: Session) -> None:
    keys = session.info.pop(_PENDING, None)
    if keys:
        marks_for(session.get_bind().engine.url).move(keys)


def _after_rollback(session: Session, previous_transaction: Any) -> None:
    if previous_transaction.parent is None:  # the outermost transaction: nothing it flushed stays
        session.info.pop(_PENDING, None)


def history_values(row: Any, attribute: str) -> list[Any]:
    """An attribute's value now and, if this flush changed it, the value it replaced."""
    state = sa.inspect(row)
    value = getattr(row, attribute)
    if attribute not in state.committed_state:  # not set since it was loaded: no history to read
        return [] if value is None else [value]
    values = [value, *(state.attrs[attribute].history.deleted or ())]
    return [value for value in values if value is not None]


def changed(row: Any, *attributes: str) -> bool:
    """Whether this flush changed any of ``attributes`` of a row that was already stored."""
    state = sa.inspect(row)
    return any(state.attrs[name].history.has_changes() for name in attributes)
