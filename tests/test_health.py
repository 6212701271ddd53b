"""``/healthz`` tells an operator whether a worker runs: on PostgreSQL or MariaDB nothing renews,
retries or expires unless ``billfold worker`` runs, so its heartbeat (written every round) and
how late it is are part of the answer, which stays 200 whatever the worker does."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.api import HealthDoor
from billfold.kit import clock
from billfold.kit.db import create_engine
from tests import cli, databases
from tests.conftest import MigratedDatabases, worker_id
from tests.server import serving


@pytest.fixture
def fresh(backend: str, migrated: MigratedDatabases) -> Iterator[Engine]:
    url = migrated.copy(backend, f"billfold_health_{worker_id()}")
    engine = create_engine(url)
    yield engine
    engine.dispose()
    databases.drop_database(backend, url)


def _worker(url: str) -> dict[str, object]:
    answer = httpx.get(f"{url}/healthz", timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "ok" and answer.json()["database"] == "ok"
    return answer.json()["worker"]


def test_health_reports_the_workers_heartbeat_never_ok_and_late(fresh: Engine, tmp_path: Path) -> None:
    database_url = fresh.url.render_as_string(hide_password=False)
    with serving(fresh) as url:
        assert _worker(url) == {"status": "never", "last_seen": None, "lag_seconds": None}

        env = {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}
        env.update(BILLFOLD_DATABASE_URL=database_url, BILLFOLD_WORKER_TICK="0.2", BILLFOLD_DATA_DIR=str(tmp_path))
        loop = subprocess.Popen([cli.BILLFOLD, "worker"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while _worker(url)["status"] == "never":
                assert loop.poll() is None, loop.communicate()
                assert time.monotonic() < deadline, "no heartbeat from a running worker"
                time.sleep(0.1)
            seen = _worker(url)
        finally:
            loop.send_signal(signal.SIGTERM)
            loop.communicate(timeout=60)
        assert seen["status"] == "ok" and 0 <= int(seen["lag_seconds"]) <= 5  # type: ignore[call-overload]
        assert abs(datetime.fromisoformat(str(seen["last_seen"])) - clock.SystemClock().now()) < timedelta(minutes=1)

        with fresh.begin() as connection:  # the worker stopped ten minutes ago
            ago = clock.SystemClock().now().replace(tzinfo=None, microsecond=0) - timedelta(minutes=10)
            connection.execute(sa.text("UPDATE instance_marks SET at = :at WHERE name = 'worker_heartbeat'"), {"at": ago})
        time.sleep(HealthDoor.FRESH_FOR)  # an answer is of a check made at most this long ago
        late = _worker(url)
        assert late["status"] == "late" and 600 <= int(late["lag_seconds"]) < 700  # type: ignore[call-overload]

        once = cli.run("worker", "--once", database_url=database_url, cwd=tmp_path)  # as cron runs it
        assert once.code == 0, once
        time.sleep(HealthDoor.FRESH_FOR)
        assert _worker(url)["status"] == "ok"


def test_health_answers_200_on_a_database_not_migrated_yet(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        with serving(engine) as url:
            assert _worker(url)["status"] == "unknown"
    finally:
        engine.dispose()


def test_the_openapi_document_describes_the_workers_health(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        with serving(engine) as url:
            document = httpx.get(f"{url}/openapi.json", timeout=60).json()  # built on first ask: seconds on a busy machine
    finally:
        engine.dispose()
    schema = document["components"]["schemas"]["WorkerHealth"]
    assert set(schema["properties"]) == {"status", "last_seen", "lag_seconds"}
    assert set(schema["properties"]["status"]["enum"]) == {"ok", "late", "never", "unknown"}


def test_health_answers_while_every_request_thread_waits_for_a_slow_provider(engine: Engine, tmp_path: Path) -> None:
    """A plain GET /healthz is answered in front of the app on threads of its own (api.HealthDoor):
    with the one request thread of this server held by a checkout whose provider takes 3 s, a load
    balancer's check is answered before that checkout is (through FastAPI it queued behind it)."""
    import threading

    from tests.accounts import Api
    from tests.test_checkout import checkout, customer, order, product

    with serving(engine, tmp_path, api_threads=1, sandbox_latency_ms=3000) as url:
        api = Api(url, tmp_path)
        buyer = customer(api, engine)
        made = order(api, buyer.token, (product(engine), 1))
        paid: list[int] = []

        def slow_checkout() -> None:
            with api.client(buyer.token) as client:
                paid.append(checkout(client, made["id"]).status_code)

        slow = threading.Thread(target=slow_checkout)
        slow.start()
        time.sleep(1)  # the checkout holds the request thread, waiting out the provider's 3 s
        health = httpx.get(f"{url}/healthz", timeout=30)
        answered_first = not paid
        slow.join(timeout=30)
    assert health.status_code == 200 and health.json()["database"] == "ok", health.text
    assert health.headers["x-content-type-options"] == "nosniff"
    assert answered_first, "the health check waited for the checkout's request thread"
    assert paid == [200]


def test_probes_in_a_burst_are_answered_from_one_check_at_most_a_second_old(engine: Engine, tmp_path: Path) -> None:
    """A balancer probing every few milliseconds costs one database round trip per half second:
    the probes between are answered with the last check (api.HealthDoor), never one older than
    ``HealthDoor.FRESH_FOR``."""
    statements: list[str] = []

    def seen(*args: object) -> None:  # the check's own statement (other tests' servers share the engine)
        if str(args[2]).strip() == "SELECT 1":
            statements.append(str(args[2]))

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        with serving(engine) as url, httpx.Client(base_url=url, timeout=30) as client:
            first = client.get("/healthz")
            asked = len(statements)
            assert first.status_code == 200 and asked == 1
            burst = [client.get("/healthz") for _ in range(20)]
            assert [a.status_code for a in burst] == [200] * 20 and all(a.content == first.content for a in burst)
            assert len(statements) <= 2, "at most one more check in the burst"
            time.sleep(HealthDoor.FRESH_FOR)
            before = len(statements)
            assert client.get("/healthz").status_code == 200
            assert len(statements) == before + 1, "a probe after a quiet second waits for a new check"
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
