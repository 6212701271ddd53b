from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session

from billfold.accounts import security
from billfold.kit import clock
from billfold.kit.db import create_engine
from billfold.wiring import wire
from tests import databases
from tests.accounts import Api
from tests.server import serving

DATABASES = databases.selected()

wire()  # the test process is an entry point too: tests pay orders through the services directly

# Passwords hashed in this process (the in-process servers, the CLI through Click's runner) use
# Argon2id with the smallest work factors: the production parameters cost ~0.15 s of CPU per hash
# and check (four threads each), and the suite signs people up and in thousands of times, the
# fuzzer most of all. The algorithm and code path are the same; the production parameters are
# kept by every `billfold` process a test starts (tests/test_serve.py checks a stored hash's
# parameters), and by tests that compare timings (`production_password_hashing`).
PRODUCTION_HASHER, PRODUCTION_DUMMY_HASH = security._hasher, security._DUMMY_HASH
_CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
security._hasher, security._DUMMY_HASH = _CHEAP_HASHER, _CHEAP_HASHER.hash("billfold-no-such-user")


# Every clock a test moves would otherwise have the worker's nightly sweep take an analytics
# snapshot of each day it passed (about a quarter of the time of the clock-moving tests); the tests
# of analytics turn it on (`analytics_nightly`). BILLFOLD_ANALYTICS_NIGHTLY=true runs all with it.
os.environ.setdefault("BILLFOLD_ANALYTICS_NIGHTLY", "false")


@pytest.fixture
def analytics_nightly(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's nightly analytics snapshots on, for Settings made during the test."""
    monkeypatch.setenv("BILLFOLD_ANALYTICS_NIGHTLY", "true")


@pytest.fixture
def production_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Passwords hashed and checked with the production Argon2 parameters during the test."""
    monkeypatch.setattr(security, "_hasher", PRODUCTION_HASHER)
    monkeypatch.setattr(security, "_DUMMY_HASH", PRODUCTION_DUMMY_HASH)


def worker_id() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def pytest_report_header(config: pytest.Config) -> str:
    return f"billfold databases: {', '.join(DATABASES)} (a test not marked every_database runs on one of them)"


class MigratedDatabases:
    """Migrated databases per backend for this worker, made on first use: a shared one that
    HTTP tests commit to, and a clean one where every test's work is rolled back, so tests that
    need an empty database (the demo loader) never see another test's rows."""

    def __init__(self, tmp: Path, run_dir: Path) -> None:
        self.tmp = tmp
        self.run_dir = run_dir
        self.engines: dict[tuple[str, str], Engine] = {}

    def engine(self, backend: str, kind: str = "shared") -> Engine:
        if (backend, kind) not in self.engines:
            name = f"billfold_test_{worker_id()}" if kind == "shared" else f"billfold_{kind}_{worker_id()}"
            self.engines[backend, kind] = create_engine(self.copy(backend, name))
        return self.engines[backend, kind]

    def copy(self, backend: str, name: str) -> URL:
        """A new database called ``name``, migrated (a copy of the run's migrated template)."""
        return databases.migrated_copy(backend, name, self.tmp, self.run_dir)

    def close(self) -> None:
        for engine in self.engines.values():
            engine.dispose()


@pytest.fixture(scope="session")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MigratedDatabases]:
    base = tmp_path_factory.getbasetemp()
    run_dir = base.parent if worker_id() != "main" else base  # under xdist, every worker's basetemp is in the run's folder
    holder = MigratedDatabases(tmp_path_factory.mktemp("sqlite"), run_dir)
    yield holder
    holder.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "every_database: depends on the database itself (constraints, schema, locking, dialect SQL, "
        "concurrency): runs on every selected database; other tests run once",
    )
    config.addinivalue_line(
        "markers", "slow: real processes killed, bursts, the fuzzer, demo histories: left out of the quick tier"
    )
    config.addinivalue_line("markers", "quick: every test not marked slow (`bash scripts/test -m quick`)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    if any("backend" in m.args[0] for m in metafunc.definition.iter_markers("parametrize")):
        return  # the test names its own databases
    metafunc.parametrize("backend", DATABASES, indirect=True)


def runs_here(item: pytest.Item) -> bool:
    """A test marked ``every_database`` runs on every selected database. Any other test runs
    once, on the database its name picks (its name and parameters without the database), so each
    database still serves about an equal share of the behaviour tests and their SQL."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "backend" not in params or item.get_closest_marker("every_database") or len(DATABASES) == 1:
        return True
    name = item.nodeid.replace(params["backend"], "")
    return params["backend"] == DATABASES[zlib.crc32(name.encode()) % len(DATABASES)]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items[:] = [item for item in items if runs_here(item)]
    for item in items:
        if not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.quick)


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def shared_servers(migrated: MigratedDatabases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Api]]:
    """One Billfold served over HTTP per database for the whole run of this worker, started on
    first use: starting and stopping a server per test cost about 0.2 s each."""
    servers: dict[str, Api] = {}
    with ExitStack() as stack:

        def server(backend: str) -> Api:
            if backend not in servers:
                data_dir = tmp_path_factory.mktemp(f"server-{backend}")
                # The fuzzer signs in thousands of times from 127.0.0.1; throttling has tests of its own.
                limits = {"sign_in_attempts_per_address": 100000, "sign_in_attempts_per_account": 100000}
                url = stack.enter_context(serving(migrated.engine(backend), data_dir, **limits))
                servers[backend] = Api(url, data_dir)
            return servers[backend]

        yield server


@pytest.fixture
def api(shared_servers: Callable[[str], Api], backend: str) -> Api:
    """Billfold served over HTTP on the test's database (shared by the tests of this worker: use
    addresses and names of the test's own), its mail in ``api.data_dir / "mail"``."""
    return shared_servers(backend)


@pytest.fixture
def address(request: pytest.FixtureRequest, backend: str) -> str:
    """An email address no other test uses (the test databases outlive a test)."""
    name = "".join(c for c in request.node.name if c.isalnum())[:40].lower()
    return f"{name}.{backend}@example.com"
