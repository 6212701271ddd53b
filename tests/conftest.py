from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from billfold.kit import clock
from billfold.kit.db import create_engine
from billfold.wiring import wire
from tests import databases
from tests.accounts import Api
from tests.server import serving

DATABASES = databases.selected()

wire()  # the test process is an entry point too: tests pay orders through the services directly


def worker_id() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def pytest_report_header(config: pytest.Config) -> str:
    return f"billfold databases: {', '.join(DATABASES)}"


class MigratedDatabases:
    """Migrated databases per backend for this worker, made on first use: a shared one that
    HTTP tests commit to, and a clean one where every test's work is rolled back, so tests that
    need an empty database (the demo loader) never see another test's rows."""

    def __init__(self, tmp: os.PathLike[str]) -> None:
        self.tmp = tmp
        self.engines: dict[tuple[str, str], Engine] = {}

    def engine(self, backend: str, kind: str = "shared") -> Engine:
        if (backend, kind) not in self.engines:
            name = f"billfold_test_{worker_id()}" if kind == "shared" else f"billfold_{kind}_{worker_id()}"
            url = databases.fresh_database(backend, name, self.tmp)
            engine = create_engine(url)
            databases.migrate(engine)
            self.engines[backend, kind] = engine
        return self.engines[backend, kind]

    def close(self) -> None:
        for engine in self.engines.values():
            engine.dispose()


@pytest.fixture(scope="session")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MigratedDatabases]:
    holder = MigratedDatabases(tmp_path_factory.mktemp("sqlite"))
    yield holder
    holder.close()


@pytest.fixture(params=DATABASES)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def engine(migrated: MigratedDatabases, backend: str) -> Engine:
    return migrated.engine(backend)


@pytest.fixture
def clean_engine(migrated: MigratedDatabases, backend: str) -> Engine:
    """The migrated database no test commits to."""
    return migrated.engine(backend, "clean")


@pytest.fixture
def connection(clean_engine: Engine) -> Iterator[sa.Connection]:
    """A connection inside a transaction that is rolled back after the test: each test starts
    from the freshly migrated, empty schema."""
    with clean_engine.connect() as connection:
        transaction = connection.begin()
        try:
            yield connection
        finally:
            if transaction.is_active:
                transaction.rollback()


@pytest.fixture
def session(connection: sa.Connection) -> Iterator[Session]:
    """An ORM session on the test's connection; its commits become savepoints."""
    with Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False) as session:
        yield session


@pytest.fixture
def frozen_clock() -> Iterator[clock.FrozenClock]:
    from datetime import datetime

    with clock.using(clock.FrozenClock(datetime(2026, 1, 31, 9, 30, tzinfo=clock.UTC))) as frozen:
        yield frozen


@pytest.fixture
def admin_token(engine: Engine) -> str:
    """A bearer token of a signed-in admin user, made directly in the database."""
    from billfold.accounts.security import hash_password
    from billfold.accounts.sessions import open_session
    from billfold.kit.db import session_factory
    from billfold.kit.ids import new_id
    from billfold.models import User

    with session_factory(engine).begin() as session:
        admin = User(
            name="Ada", last_name="Admin", email=f"{new_id('adm').lower()}@shop.example",
            user_type="admin", password_hash=hash_password("admin password 1"), is_verified=True,
        )
        session.add(admin)
        session.flush()
        _, token = open_session(session, admin, transport="bearer", address=None, user_agent="tests", days=1)
    return token


@pytest.fixture
def api(engine: Engine, tmp_path: Path) -> Iterator[Api]:
    """Billfold served over HTTP on the test's database, its mail in ``tmp_path/mail``."""
    with serving(engine, tmp_path, sign_in_attempts_per_address=1000) as url:
        yield Api(url, tmp_path)


@pytest.fixture
def address(request: pytest.FixtureRequest, backend: str) -> str:
    """An email address no other test uses (the test databases outlive a test)."""
    name = "".join(c for c in request.node.name if c.isalnum())[:40].lower()
    return f"{name}.{backend}@example.com"
