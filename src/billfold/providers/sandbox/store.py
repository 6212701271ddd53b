"""The sandbox provider's own "remote" state, in one SQLite file (or in memory).

This is the pretend provider's database, not Billfold's. Several processes on one machine share
the file: WAL lets readers go on while one writer works, ``BEGIN IMMEDIATE`` takes the write lock
before reading anything a write depends on (so two same-key charges cannot both see "no such
key"), and ``busy_timeout`` makes the others wait instead of failing. Each thread of a process
keeps its own connection to the file (opening one per call cost more than the charge).

Writers queue for the file on an ``flock`` of ``<file>.lock`` before ``BEGIN IMMEDIATE``: the
kernel wakes the next one the moment the last lets go, where SQLite's busy handler would have it
sleep and poll (1, 2, 5 … 100 ms): under 32 concurrent writers that left the lock idle between
writers and kept some callers of a 0.2 ms charge waiting seconds (``bench/sandbox.py``). Commits use ``synchronous = OFF``: the state survives
a crash of any process (the OS has the pages), not of the machine, which is all a pretend
provider needs, and neither commits nor WAL checkpoints wait for an fsync.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from billfold.kit import clock

if sys.platform != "win32":
    import fcntl
else:  # no flock: writers wait in SQLite's busy handler instead
    fcntl = None

BUSY_TIMEOUT_MS = 30_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    id TEXT PRIMARY KEY, email TEXT, name TEXT, metadata TEXT NOT NULL, created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS payment_methods (
    id TEXT PRIMARY KEY, customer_id TEXT NOT NULL REFERENCES customers(id), token TEXT NOT NULL,
    brand TEXT NOT NULL, last4 TEXT NOT NULL, exp_month INTEGER NOT NULL, exp_year INTEGER NOT NULL,
    detached INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS charges (
    id TEXT PRIMARY KEY, token TEXT NOT NULL, customer_id TEXT, payment_method_id TEXT,
    currency TEXT NOT NULL, amount INTEGER NOT NULL, amount_captured INTEGER NOT NULL,
    amount_refunded INTEGER NOT NULL, status TEXT NOT NULL, provider_status TEXT NOT NULL,
    capture INTEGER NOT NULL, off_session INTEGER NOT NULL, description TEXT, metadata TEXT NOT NULL,
    next_action TEXT, failure_code TEXT, failure_message TEXT,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    CHECK (amount_refunded <= amount_captured AND amount_captured <= amount)
);
CREATE INDEX IF NOT EXISTS charges_created ON charges (created_at);
CREATE TABLE IF NOT EXISTS refunds (
    id TEXT PRIMARY KEY, charge_id TEXT NOT NULL REFERENCES charges(id), currency TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0), status TEXT NOT NULL, reason TEXT,
    metadata TEXT NOT NULL, created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS refunds_created ON refunds (created_at);
CREATE TABLE IF NOT EXISTS disputes (
    id TEXT PRIMARY KEY, charge_id TEXT NOT NULL REFERENCES charges(id), currency TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0), status TEXT NOT NULL, reason TEXT, created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    operation TEXT NOT NULL, key TEXT NOT NULL, request_hash TEXT NOT NULL, outcome TEXT NOT NULL,
    created_at TEXT NOT NULL, PRIMARY KEY (operation, key)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, type TEXT NOT NULL,
    object_type TEXT NOT NULL, object_id TEXT NOT NULL, data TEXT NOT NULL, created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_created ON events (created_at);
"""


def stamp(at: datetime | None = None) -> str:
    """A UTC time as fixed-width text, so text order is time order."""
    return clock.ensure_utc(at or clock.now()).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _use_wal(db: sqlite3.Connection) -> None:
    """Put the file in WAL mode (a setting kept in the file). The switch needs the file to itself,
    and SQLite does not always wait for that with the busy timeout, so several processes opening
    a new file at once retry here until the timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


class SandboxStore:
    """Transactions on the sandbox's state. ``path=None`` keeps it in this process's memory."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._lock = threading.RLock()  # serialises use of the one in-memory connection
        self._memory: sqlite3.Connection | None = None
        self._local = threading.local()  # this thread's connection to the file, and the process it was opened in
        if path is None:
            self._memory = self._open(":memory:")
        self._create_schema()

    def _open(self, target: str) -> sqlite3.Connection:
        db = sqlite3.connect(target, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA foreign_keys = ON")
        if target != ":memory:":
            db.execute("PRAGMA synchronous = OFF")
        return db

    def _create_schema(self) -> None:
        with self._connection() as db:
            if self.path is not None:
                _use_wal(db)
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in filter(str.strip, SCHEMA.split(";")):
                    db.execute(statement)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        if self._memory is not None:
            with self._lock:
                yield self._memory
            return
        # A connection per thread, never shared with another thread or inherited across a fork.
        assert self.path is not None
        db = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():
            db = self._open(self.path)
            self._local.db, self._local.pid = db, os.getpid()
            self._local.lock = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600) if fcntl else None
        yield db

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the write lock from its first statement."""
        with self._connection() as db:
            lock = None if self._memory is not None else self._local.lock
            if lock is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)  # queue here, woken at once, not in SQLite's sleeping busy handler
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            finally:
                if lock is not None:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """One consistent snapshot for reading."""
        with self._connection() as db:
            db.execute("BEGIN")
            try:
                yield db
            finally:
                db.execute("ROLLBACK")

    def close(self) -> None:
        """Close the in-memory database, or this thread's connection to the file."""
        if self._memory is not None:
            self._memory.close()
        db = getattr(self._local, "db", None)
        if db is not None and self._local.pid == os.getpid():
            db.close()
            if self._local.lock is not None:
                os.close(self._local.lock)
        self._local.db = self._local.lock = None
