"""The worker: sweeps run on schedule and until idle, two workers racing over the same due rows do
each row once (on every database), the embedded worker and `billfold worker` do real work, and
Dramatiq on the real Redis and RabbitMQ delivers a sweep that runs."""

from __future__ import annotations

import re

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold import worker
from billfold.config import Settings
from billfold.kit import clock
from billfold.kit import sweeps as registry
from billfold.kit.db import create_engine, session_factory, transaction
from billfold.kit.ids import new_id
from billfold.kit.sweeps import Context, Sweep, claim_batch
from billfold.models import AuthChallenge
from tests.cli import BILLFOLD, Result, assert_one_line_error, run
from tests.server import free_port

MINUTE = timedelta(minutes=1)


def _context(engine: Engine, **settings: object) -> Context:
    return worker.make_context(
        Settings(database_url=engine.url.render_as_string(hide_password=False), **settings), engine
    )


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Iterator[Engine]:
    """A migrated SQLite database in a file of this test's own, as an operator's would be."""
    url = f"sqlite:///{tmp_path / 'billfold.db'}"
    assert run("db", "upgrade", database_url=url).code == 0
    engine = create_engine(url)
    yield engine
    engine.dispose()


def _expired_challenge(engine: Engine) -> str:
    with transaction(session_factory(engine)) as session:
        row = AuthChallenge(
            user_id=None, purpose="passkey_sign_in", secret_hash=new_id("h").lower().ljust(64, "0")[:64],
            expires_at=clock.now() - MINUTE,
        )
        session.add(row)
        session.flush()
        return row.id


def _exists(engine: Engine, challenge_id: str) -> bool:
    with engine.connect() as connection:
        return connection.scalar(sa.select(sa.func.count()).where(AuthChallenge.id == challenge_id)) == 1


def _wait_for(condition: Callable[[], bool], seconds: float = 90) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_the_existing_purges_are_hourly_sweeps_the_worker_loads() -> None:
    loaded = {s.name: s for s in worker.load_sweeps()}
    assert loaded["accounts.purge"].every == timedelta(hours=1)
    assert loaded["idempotency.purge"].every == timedelta(hours=1)


def test_the_worker_lists_its_sweeps_and_leaves_none_out() -> None:
    """The list names functions it imports (a missing one fails at import, not silently), and
    every ``@sweep`` anywhere in the package is in it."""
    import importlib
    import pkgutil

    import billfold

    listed = [s.name for s in worker.load_sweeps()]
    assert len(set(listed)) == len(listed) == len(worker.SWEEPS)
    assert "orders.settle_payments" in listed, "order payments left pending are settled"
    for module in pkgutil.walk_packages(billfold.__path__, "billfold."):
        if ".migrations." not in module.name:
            importlib.import_module(module.name)
    registered = {s.name for s in registry.sweeps() if not s.name.startswith("test.")}
    assert registered == set(listed), "a @sweep the worker does not list never runs"


def test_a_sweep_runs_when_due_by_its_interval_and_catch_up_runs_until_idle(sqlite_file: Engine) -> None:
    backlog = [7]
    runs: list[int] = []

    def work(context: Context) -> int:
        done = min(3, backlog[0])
        backlog[0] -= done
        runs.append(done)
        return done

    sweeps = [Sweep("test.backlog", work, timedelta(hours=1))]
    context = _context(sqlite_file)
    schedule = worker.Schedule()
    with clock.using(clock.FrozenClock()) as frozen:
        assert worker.run_sweeps(context, sweeps=sweeps, schedule=schedule) == {"test.backlog": 3}
        assert worker.run_sweeps(context, sweeps=sweeps, schedule=schedule) == {}, "not due again for an hour"
        frozen.advance("59m")
        assert worker.run_sweeps(context, sweeps=sweeps, schedule=schedule) == {}
        frozen.advance("1m")
        assert worker.run_sweeps(context, sweeps=sweeps, schedule=schedule) == {"test.backlog": 3}
        assert worker.catch_up(context, sweeps=sweeps) == {"test.backlog": 1}
    assert runs == [3, 3, 1, 0], "catch-up stops at the first round with no work"


def test_a_failing_sweep_is_logged_and_the_others_still_run(sqlite_file: Engine, caplog: pytest.LogCaptureFixture) -> None:
    def broken(context: Context) -> int:
        raise RuntimeError("the provider is down")

    sweeps = [Sweep("test.broken", broken, MINUTE), Sweep("test.fine", lambda context: 0, MINUTE)]
    with caplog.at_level(logging.ERROR, logger="billfold.worker"):
        done = worker.run_sweeps(_context(sqlite_file), sweeps=sweeps, schedule=worker.Schedule())
        assert worker.catch_up(_context(sqlite_file), sweeps=sweeps) == {"test.broken": 0, "test.fine": 0}
    assert done == {"test.fine": 0}
    assert "sweep test.broken failed: RuntimeError: the provider is down" in caplog.text


@contextmanager
def _work_table(engine: Engine, rows: int) -> Iterator[tuple[sa.Table, sa.Table]]:
    """Two throwaway tables in the test database: due jobs, and a log of who did which."""
    suffix = uuid.uuid4().hex[:8]
    metadata = sa.MetaData()
    due = sa.Table(
        f"wrk_due_{suffix}", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("done", sa.Boolean, nullable=False, default=False),
        mysql_engine="InnoDB",
    )
    done_log = sa.Table(
        f"wrk_log_{suffix}", metadata,
        sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Integer, nullable=False),
        sa.Column("by_worker", sa.String(50), nullable=False),
        mysql_engine="InnoDB",
    )
    metadata.create_all(engine)
    try:
        with engine.begin() as connection:
            connection.execute(sa.insert(due), [{"id": i, "done": False} for i in range(rows)])
        yield due, done_log
    finally:
        metadata.drop_all(engine)


@pytest.mark.every_database
def test_two_workers_racing_over_the_same_due_rows_do_each_row_exactly_once(engine: Engine) -> None:
    rows = 120

    with _work_table(engine, rows) as (due, done_log):

        def claim_and_do(context: Context) -> int:
            done = 0
            while True:
                with transaction(context.sessions) as session:
                    ids = claim_batch(session, sa.select(due.c.id).where(due.c.done.is_(False)).order_by(due.c.id), 5)
                    if not ids:
                        return done
                    time.sleep(0.01)  # hold the claim a while, as real work would
                    me = threading.current_thread().name
                    session.execute(sa.insert(done_log), [{"job_id": i, "by_worker": me} for i in ids])
                    session.execute(sa.update(due).where(due.c.id.in_(ids)).values(done=True))
                    done += len(ids)

        sweeps = [Sweep("test.claim", claim_and_do, MINUTE)]
        start = threading.Barrier(2)
        results: dict[str, dict[str, int]] = {}

        def one_worker() -> None:
            context = _context(engine)
            start.wait()
            results[threading.current_thread().name] = worker.run_sweeps(context, sweeps=sweeps, schedule=worker.Schedule())

        threads = [threading.Thread(target=one_worker, name=f"worker-{n}") for n in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)

        with engine.connect() as connection:
            log = connection.execute(sa.select(done_log.c.job_id, done_log.c.by_worker)).all()
        assert sorted(job for job, _ in log) == list(range(rows)), "every row done, none twice"
        assert sum(r["test.claim"] for r in results.values()) == rows
        if engine.dialect.name != "sqlite":  # SQLite runs one writer at a time; the others race
            assert {who for _, who in log} == {"worker-1", "worker-2"}, "both workers took rows side by side"


def test_billfold_worker_once_runs_the_due_sweeps(sqlite_file: Engine) -> None:
    challenge = _expired_challenge(sqlite_file)
    result = run("worker", "--once", database_url=sqlite_file.url.render_as_string(hide_password=False))
    assert result.code == 0, result
    assert re.search(r"^  accounts\.purge +1$", result.stdout, re.M)
    assert not _exists(sqlite_file, challenge)


def test_billfold_worker_once_runs_every_sweep_in_the_list(sqlite_file: Engine) -> None:
    result = run("worker", "--once", database_url=sqlite_file.url.render_as_string(hide_password=False))
    assert result.code == 0, result
    listed = [s.name for s in worker.load_sweeps()]
    assert f"Ran {len(listed)} of {len(listed)} sweeps:" in result.stdout, result.stdout + result.stderr
    for name in listed:  # a sweep that failed is logged and left out of this table
        assert re.search(rf"^  {re.escape(name)} +\d+$", result.stdout, re.M), (name, result.stdout, result.stderr)


def _billfold(*args: str, engine: Engine, tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}
    environment.update(
        BILLFOLD_DATABASE_URL=engine.url.render_as_string(hide_password=False),
        BILLFOLD_DATA_DIR=str(tmp_path / "data"),
        BILLFOLD_WORKER_TICK="0.2",
        **env,
    )
    return subprocess.Popen(
        [BILLFOLD, *args], env=environment, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _stop(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=90)
    return process.returncode, stdout, stderr


@pytest.mark.slow
def test_the_worker_loop_does_work_as_it_becomes_due_and_stops_on_sigterm(sqlite_file: Engine, tmp_path: Path) -> None:
    process = _billfold("worker", engine=sqlite_file, tmp_path=tmp_path)
    try:
        first = _expired_challenge(sqlite_file)
        assert _wait_for(lambda: not _exists(sqlite_file, first)), "purged by the loop"
    finally:
        code, _, stderr = _stop(process)
    assert code == 0, stderr
    assert "SIGTERM: stopping after the work in progress" in stderr
    assert "Billfold worker stopped." in stderr
    assert "Traceback" not in stderr


def test_billfold_serve_runs_the_embedded_worker_on_sqlite(sqlite_file: Engine, tmp_path: Path) -> None:
    import httpx

    port = free_port()
    challenge = _expired_challenge(sqlite_file)
    process = _billfold("serve", engine=sqlite_file, tmp_path=tmp_path, BILLFOLD_PORT=str(port))
    try:
        assert _wait_for(lambda: not _exists(sqlite_file, challenge)), "purged by the embedded worker"
        assert _wait_for(lambda: _ready(port))
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()["status"] == "ok"
    finally:
        code, _, stderr = _stop(process)
    assert code in (0, -signal.SIGTERM), stderr  # uvicorn ends by re-raising the signal it caught
    assert "embedded worker started" in stderr
    assert stderr.index("embedded worker stopped") < stderr.index("Application shutdown complete"), "stopped cleanly"


def test_with_the_worker_off_serve_leaves_the_sweeps_to_others(sqlite_file: Engine, tmp_path: Path) -> None:
    port = free_port()
    challenge = _expired_challenge(sqlite_file)
    process = _billfold("serve", engine=sqlite_file, tmp_path=tmp_path, BILLFOLD_PORT=str(port), BILLFOLD_WORKER="off")
    try:
        assert _wait_for(lambda: _ready(port))
        time.sleep(1)
        assert _exists(sqlite_file, challenge)
    finally:
        _stop(process)


def _ready(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


BROKERS = {
    "redis": os.environ.get("BILLFOLD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    "rabbitmq": os.environ.get("BILLFOLD_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
}


@pytest.mark.slow
@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_a_sweep_sent_through_the_real_broker_is_run_by_a_dramatiq_consumer(
    broker: str, sqlite_file: Engine
) -> None:
    name = f"test.broker.{uuid.uuid4().hex[:8]}"
    queue = f"billfold_test_{os.environ.get('BILLFOLD_TEST_RUN', '')}_{uuid.uuid4().hex[:12]}"
    ran_in: list[str] = []

    def write_row(context: Context) -> int:
        with transaction(context.sessions) as session:
            session.execute(sa.text("INSERT INTO wrk_broker (sweep, thread) VALUES (:s, :t)"),
                            {"s": name, "t": threading.current_thread().name})
        ran_in.append(threading.current_thread().name)
        return 1

    with sqlite_file.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE wrk_broker (sweep VARCHAR(100) NOT NULL, thread VARCHAR(100))")
    registry.sweep(name, every=MINUTE)(write_row)
    context = _context(sqlite_file, broker_url=BROKERS[broker], broker_queue=queue)
    dramatiq = worker.dispatcher(context)
    assert dramatiq is not None
    try:
        scheduler = worker.Runner(context, tick=1, dispatch=dramatiq.send, sweeps=[registry.get(name)])
        assert scheduler.round() == {name: 1}, "sent, since it was due"
        assert scheduler.round() == {}, "not sent again before it is due"
        assert ran_in == [], "the scheduler only sends"
        with dramatiq.consuming(threads=1):

            def written() -> bool:
                with sqlite_file.connect() as connection:
                    return connection.exec_driver_sql("SELECT count(*) FROM wrk_broker").scalar_one() == 1

            assert _wait_for(written, 30), f"the message went through {broker} and the sweep ran"
        assert ran_in and ran_in[0] != threading.current_thread().name
    finally:
        registry.unregister(name)
        _delete_queue(dramatiq, broker, queue)
        dramatiq.close()


def _delete_queue(dramatiq: worker.Dramatiq, broker: str, queue: str) -> None:
    if broker == "redis":
        dramatiq.broker.flush(queue)
        return
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(BROKERS["rabbitmq"]))
    try:
        channel = connection.channel()
        for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
            channel.queue_delete(name)
    finally:
        connection.close()


def test_an_unknown_broker_scheme_is_a_one_line_error(sqlite_file: Engine, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("BILLFOLD_BROKER_URL=kafka://127.0.0.1:9092\n")
    result = run("worker", database_url=sqlite_file.url.render_as_string(hide_password=False), cwd=tmp_path, process=True)
    assert_one_line_error(result, "unsupported broker URL scheme 'kafka'", "redis://… or amqp://…")


def test_scheduler_and_consumer_roles_need_a_broker(sqlite_file: Engine) -> None:
    result = run("worker", "--dramatiq", database_url=sqlite_file.url.render_as_string(hide_password=False), process=True)
    assert_one_line_error(result, "need a broker: set BILLFOLD_BROKER_URL")


# Dramatiq is the `broker` extra: only a broker needs it.

WITHOUT_DRAMATIQ = (
    "import sys; sys.modules['dramatiq'] = None; sys.argv = ['billfold', *sys.argv[1:]]; "
    "from billfold.cli import main; main()"
)


def _run_without_dramatiq(*args: str, database_url: str, **settings: str) -> Result:
    """``billfold ARGS`` in a Python where ``import dramatiq`` fails, as without the extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}
    env.update(BILLFOLD_DATABASE_URL=database_url, COLUMNS="200", **settings)
    done = subprocess.run([sys.executable, "-c", WITHOUT_DRAMATIQ, *args], capture_output=True, text=True, env=env, timeout=120)
    return Result(done.returncode, done.stdout, done.stderr)


def test_the_api_the_cli_and_the_worker_import_no_dramatiq() -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, billfold.api, billfold.cli, billfold.worker; "
         "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dramatiq', 'redis', 'pika')))"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    assert loaded.stdout.strip() == "[]"


def test_a_worker_without_a_broker_runs_without_dramatiq(sqlite_file: Engine) -> None:
    result = _run_without_dramatiq("worker", "--once", database_url=sqlite_file.url.render_as_string(hide_password=False))
    assert result.code == 0, result
    assert "Ran " in result.stdout


@pytest.mark.parametrize("role", [(), ("--scheduler",), ("--dramatiq",)], ids=["both", "scheduler", "dramatiq"])
def test_a_broker_without_dramatiq_installed_is_a_one_line_error_naming_the_extra(
    sqlite_file: Engine, role: tuple[str, ...]
) -> None:
    result = _run_without_dramatiq(
        "worker", *role, database_url=sqlite_file.url.render_as_string(hide_password=False),
        BILLFOLD_BROKER_URL=BROKERS["redis"],
    )
    assert_one_line_error(result, "needs Dramatiq", "pip install 'billfold[broker]'")
