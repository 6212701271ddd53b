"""The database kit: UTC timestamps that read back as written, upserts and row locks that behave
the same on each database, and updated_at filled from Billfold's own clock."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from billfold.kit import clock
from billfold.kit.db import changes, create_engine, insert_at_commit, insert_rows, parse_database_url, session_factory, transaction
from billfold.kit.db.dialects import for_update, insert_ignore, upsert
from billfold.kit.errors import ConfigurationError, InvalidInput
from billfold.kit.ids import new_id
from billfold.models import AnalyticsEvent, Order, PaymentProvider, User
from tests import factories as make

pytestmark = pytest.mark.every_database


def test_plain_urls_get_billfolds_drivers() -> None:
    assert parse_database_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert parse_database_url("mariadb://u@h/db").drivername == "mariadb+pymysql"
    assert parse_database_url("mysql://u@h/db").query["charset"] == "utf8mb4"
    assert parse_database_url("sqlite:///x.db").drivername == "sqlite+pysqlite"
    with pytest.raises(ConfigurationError, match="unsupported database 'mssql'"):
        parse_database_url("mssql://u@h/db")


def test_an_aware_time_reads_back_in_utc_to_the_second(session: Session) -> None:
    tokyo = timezone(timedelta(hours=9))
    written = datetime(2026, 3, 1, 8, 15, 30, 987654, tzinfo=tokyo)
    with clock.using(clock.FrozenClock(written)):
        ada = make.user(session)
    session.expire_all()
    stored = session.get(User, ada.id).created_at
    assert stored == datetime(2026, 2, 28, 23, 15, 30, tzinfo=timezone.utc)
    assert stored.tzinfo == timezone.utc


def test_a_naive_time_is_refused(session: Session) -> None:
    with pytest.raises(sa.exc.StatementError) as refused:
        make.user(session, created_at=datetime(2026, 1, 1))
    assert isinstance(refused.value.orig, InvalidInput) and "no time zone" in str(refused.value.orig)
    session.rollback()


def test_the_orm_stamps_rows_with_the_clock_and_moves_updated_at_with_it(session: Session, frozen_clock: clock.FrozenClock) -> None:
    created = frozen_clock.now().replace(microsecond=0)
    ada = make.user(session)
    frozen_clock.advance("3h")
    ada.phone = "+15555550123"
    session.flush()
    session.expire_all()
    stored = session.get(User, ada.id)
    assert stored.created_at == created
    assert stored.updated_at == created + timedelta(hours=3)


def test_upsert_inserts_then_overwrites_on_the_key(session: Session) -> None:
    table = PaymentProvider.__table__
    row = {"id": "acme", "display_name": "Acme Pay", "created_at": clock.now(), "updated_at": clock.now()}
    upsert(session, table, [row], key=["id"], update=["display_name"])
    upsert(session, table, [{**row, "display_name": "Acme Payments"}], key=["id"], update=["display_name"])
    names = session.execute(sa.select(table.c.display_name).where(table.c.id == "acme")).scalars().all()
    assert names == ["Acme Payments"]


def test_insert_ignore_counts_only_new_rows_and_keeps_the_first(session: Session) -> None:
    table = PaymentProvider.__table__
    now = clock.now()
    first = [{"id": "one", "display_name": "First", "created_at": now, "updated_at": now}]
    assert insert_ignore(session, table, first, key=["id"]) == 1
    again = [
        {"id": "one", "display_name": "Second", "created_at": now, "updated_at": now},
        {"id": "two", "display_name": "Two", "created_at": now, "updated_at": now},
    ]
    assert insert_ignore(session, table, again, key=["id"]) == 1
    rows = dict(session.execute(sa.select(table.c.id, table.c.display_name).where(table.c.id.in_(["one", "two"]))).all())
    assert rows == {"one": "First", "two": "Two"}


def test_insert_ignore_still_refuses_a_row_that_breaks_another_rule(session: Session) -> None:
    now = clock.now()
    with pytest.raises(sa.exc.IntegrityError):
        insert_ignore(session, PaymentProvider.__table__, [{"id": "x", "display_name": None, "created_at": now, "updated_at": now}], key=["id"])
    session.rollback()


@pytest.fixture
def committed_providers(engine: Engine) -> list[str]:
    """Rows another transaction can see, removed again after the test."""
    ids = ["lock-a", "lock-b", "lock-c"]
    with session_factory(engine).begin() as session:
        session.add_all(PaymentProvider(id=i, display_name=i) for i in ids)
    yield ids
    with session_factory(engine).begin() as session:
        session.execute(sa.delete(PaymentProvider).where(PaymentProvider.id.in_(ids)))


def test_skip_locked_lets_two_workers_claim_different_rows(backend: str, engine: Engine, committed_providers: list[str]) -> None:
    query = sa.select(PaymentProvider.id).where(PaymentProvider.id.in_(committed_providers)).order_by(PaymentProvider.id).limit(2)
    sessions = session_factory(engine)
    if backend == "sqlite":  # no row locks: one writer at a time holds the whole database
        with sessions() as session:
            assert for_update(query, session, skip_locked=True) is query
        return
    with sessions() as first, sessions() as second:
        claimed_first = first.scalars(for_update(query, first, skip_locked=True)).all()
        claimed_second = second.scalars(for_update(query, second, skip_locked=True)).all()
        first.rollback()
        second.rollback()
    assert claimed_first == ["lock-a", "lock-b"]
    assert claimed_second == ["lock-c"], "the second worker passes over the rows the first holds"


def test_a_row_lock_makes_the_second_writer_wait(backend: str, engine: Engine, committed_providers: list[str]) -> None:
    sessions = session_factory(engine)
    order: list[str] = []
    query = sa.select(PaymentProvider).where(PaymentProvider.id == "lock-a")
    if backend == "sqlite":  # no row locks: the database-wide write lock serialises writers instead
        with sessions() as session:
            assert "FOR UPDATE" not in str(for_update(query, session).compile(engine))
        return
    with sessions() as first:
        first.scalars(for_update(query, first)).one()
        def second_writer() -> None:
            with sessions() as second:
                second.scalars(for_update(query, second)).one()
                order.append("second")
                second.rollback()
        thread = threading.Thread(target=second_writer)
        thread.start()
        thread.join(timeout=0.5)
        order.append("first")
        first.rollback()
    thread.join(timeout=10)
    assert order == ["first", "second"]


def test_sqlite_files_use_wal_and_enforce_foreign_keys(tmp_path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_a_pooled_connection_killed_while_idle_is_replaced_and_a_busy_one_is_not_pinged(
    backend: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ping at a checkout right after a checkin (a sale checks out about eight times); a
    connection idle past IDLE_BEFORE_PING_SECONDS that the server has dropped is replaced unseen."""
    if backend == "sqlite":
        pytest.skip("an embedded database has no server to drop a connection")
    import billfold.kit.db as kit_db

    pool_engine = create_engine(engine.url)
    pings: list[object] = []
    original_ping = pool_engine.dialect.do_ping
    monkeypatch.setattr(pool_engine.dialect, "do_ping", lambda connection: pings.append(connection) or original_ping(connection))
    try:
        with pool_engine.connect() as connection:
            own_id = connection.scalar(sa.text("SELECT pg_backend_pid()" if backend == "postgresql" else "SELECT CONNECTION_ID()"))
        for _ in range(3):  # back a moment ago: handed out as it is
            with pool_engine.connect() as connection:
                assert connection.scalar(sa.text("SELECT 1")) == 1
        assert pings == []

        with engine.connect() as admin:  # the server drops the idle connection
            admin.execute(sa.text(f"SELECT pg_terminate_backend({own_id})" if backend == "postgresql" else f"KILL {own_id}"))
            if backend == "postgresql":
                admin.commit()
        monkeypatch.setattr(kit_db, "IDLE_BEFORE_PING_SECONDS", 0.0)
        with pool_engine.connect() as connection:
            assert connection.scalar(sa.text("SELECT 1")) == 1
            new_id = connection.scalar(sa.text("SELECT pg_backend_pid()" if backend == "postgresql" else "SELECT CONNECTION_ID()"))
        assert len(pings) == 1 and new_id != own_id
    finally:
        pool_engine.dispose()


@pytest.mark.every_database
def test_rows_inserted_with_core_are_the_sessions_own_as_a_flush_would_leave_them(engine: Engine) -> None:
    """``insert_rows``: one INSERT for new objects, their defaults filled, then persistent (a change
    flushes as an UPDATE), a watched row's mark moved after the commit (and not every mark), and
    inside a savepoint the ORM's own way, so its rollback forgets them."""
    sessions = session_factory(engine)
    now = clock.SystemClock().now().replace(microsecond=0)
    marks = changes.marks_for(engine.url)
    before = marks.snapshot()
    with clock.using(clock.FrozenClock(now)), transaction(sessions) as session:
        person = User(name="Ada", last_name="Lovelace", email=f"{new_id('x')}@example.com", user_type="individual")
        insert_rows(session, [person])
        orders = [Order(order_number=new_id("num"), user_id=person.id, subtotal_cents=n, total_cents=n) for n in (100, 250)]
        insert_rows(session, orders)
        assert [o.id[:4] for o in orders] == ["ord_", "ord_"] and orders[0].id != orders[1].id
        assert [(o.status, o.currency, o.tax_cents, o.created_at, o.completed_at) for o in orders] == [("pending", "USD", 0, now, None)] * 2
        orders[1].status = "paid"
        session.flush()
        # None where the type writes NULL is left out, as the ORM leaves it: the database's default
        # (read when asked for); rows that leave out different columns are flushed the ORM's way.
        defaulted = Order(order_number=new_id("num"), user_id=person.id, subtotal_cents=5, total_cents=5, currency=None)
        insert_rows(session, [defaulted])
        assert defaulted.currency == "USD"
        mixed = [Order(order_number=new_id("num"), user_id=person.id, subtotal_cents=n, total_cents=n, metadata_=meta)
                 for n, meta in ((7, {"gift": True}), (8, None))]
        insert_rows(session, mixed)
        with session.begin_nested() as savepoint:
            gone = Order(order_number=new_id("num"), user_id=person.id, subtotal_cents=1, total_cents=1)
            insert_rows(session, [gone])
            savepoint.rollback()
        assert gone not in session
    after = marks.snapshot()
    assert marks.at(after, changes.slot(f"user:{person.id}")) > marks.at(before, changes.slot(f"user:{person.id}"))
    assert marks.at(after, 0) == marks.at(before, 0), "a new row named its own mark, not every mark"
    table = Order.__table__
    with sessions() as session:
        stored = session.execute(
            sa.select(table.c.total_cents, table.c.status, table.c.metadata.is_(None)).where(table.c.user_id == person.id)
            .order_by(table.c.total_cents)
        ).all()
    assert [tuple(row) for row in stored] == [
        (5, "pending", True), (7, "pending", False), (8, "pending", True), (100, "pending", True), (250, "paid", True),
    ], "metadata never set, or set to None: SQL NULL, as the ORM writes it"


@pytest.mark.every_database
def test_rows_kept_for_the_commit_are_written_once_after_the_rows_they_refer_to(engine: Engine) -> None:
    """``insert_at_commit``: append-only rows written at the commit, one INSERT a table however
    often the session flushed; after the session's last flush, so a row naming a user added in the
    same transaction finds it (a foreign key); seen by an ORM read in the transaction; a
    savepoint's own row rolled back with it; none for a transaction rolled back."""
    sessions = session_factory(engine)
    inserts: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO analytics_events"):
            inserts.append(statement)

    def event(user_id: str, kind: str) -> dict[str, Any]:
        return {"id": new_id("aev"), "user_id": user_id, "session_id": None, "event_type": kind, "event_category": "engagement",
                "entity_type": None, "entity_id": None, "properties": None, "revenue_cents": 0, "currency": None,
                "created_at": clock.now()}

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        with transaction(sessions) as session:
            person = User(name="Ada", last_name="Lovelace", email=f"{new_id('x')}@example.com", user_type="individual")
            session.add(person)
            session.flush()
            insert_at_commit(session, AnalyticsEvent, event(person.id, "first"))
            with session.begin_nested() as savepoint:
                insert_at_commit(session, AnalyticsEvent, event(person.id, "rolled_back"))
                savepoint.rollback()
            session.flush()
            assert inserts == [], "nothing written at a flush"
            later = User(id=new_id("usr"), name="Grace", last_name="Hopper", email=f"{new_id('x')}@example.com",
                         user_type="individual")
            session.add(later)  # not flushed yet when the commit comes
            insert_at_commit(session, AnalyticsEvent, event(later.id, "second"))
        assert len(inserts) == 1, "two rows, one statement, at the commit"
        with transaction(sessions) as session:
            insert_at_commit(session, AnalyticsEvent, event(person.id, "read_back"))
            found = session.scalars(sa.select(AnalyticsEvent.event_type).where(AnalyticsEvent.user_id == person.id)).all()
            assert sorted(found) == ["first", "read_back"], "an ORM read sees the rows kept so far"
        with pytest.raises(RuntimeError), transaction(sessions) as session:
            insert_at_commit(session, AnalyticsEvent, event(person.id, "never"))
            raise RuntimeError("the request failed")
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    with sessions() as session:
        stored = session.execute(
            sa.select(AnalyticsEvent.user_id, AnalyticsEvent.event_type).where(AnalyticsEvent.user_id.in_([person.id, later.id]))
        ).all()
    assert sorted(kind for _, kind in stored) == ["first", "read_back", "second"]
    assert {user_id for user_id, kind in stored if kind == "second"} == {later.id}
