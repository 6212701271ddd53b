"""``billfold serve`` as an operator runs it: several worker processes, each answering with its own
app built from the same settings, and the access log switched off."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import argon2
import httpx
import psutil
import pytest

from tests import cli
from tests.server import free_port, wait_for_health


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_runs_the_asked_number_of_workers_without_an_access_log(tmp_path: Path, workers: int) -> None:
    url = f"sqlite:///{tmp_path / 'billfold.db'}"
    assert cli.run("db", "upgrade", database_url=url).code == 0
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}
    env.update(BILLFOLD_DATABASE_URL=url, BILLFOLD_DATA_DIR=str(tmp_path / "data"), BILLFOLD_SECRET_KEY="serve-test-" + "s" * 32)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [cli.BILLFOLD, "serve", "--port", str(port), "--workers", str(workers), "--no-access-log"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            wait_for_health(server, f"http://127.0.0.1:{port}", log)
            for _ in range(20):
                assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["database"] == "ok"
            if workers == 1:  # the suite's own processes hash with cheap parameters (tests/conftest.py); a real one does not
                signed_up = httpx.post(
                    f"http://127.0.0.1:{port}/v1/auth/register", timeout=30,
                    json={"email": "argon@example.com", "password": "correct horse battery", "name": "A", "last_name": "B"},
                )
                assert signed_up.status_code == 202, signed_up.text
                with sqlite3.connect(tmp_path / "billfold.db") as db:
                    (stored,) = db.execute("SELECT password_hash FROM users WHERE email = 'argon@example.com'").fetchone()
                assert argon2.extract_parameters(stored) == argon2.profiles.RFC_9106_LOW_MEMORY
            if workers > 1:
                # uvicorn's supervisor, and one process per worker (multiprocessing may add a helper)
                deadline = time.monotonic() + 20
                while len(psutil.Process(server.pid).children()) < workers:
                    assert time.monotonic() < deadline, "the workers did not start"
                    time.sleep(0.1)
        finally:
            os.killpg(server.pid, signal.SIGINT)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    assert '"GET /healthz' not in log.read_text(), "the access log is off"


# A port that cannot be had: one line, a non-zero exit, and nothing started (no "serving", no
# migration, no demo).


def _unmigrated(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'billfold.db'}"


def _tables(url: str) -> list[str]:
    import sqlalchemy as sa

    from billfold.kit.db import create_engine

    engine = create_engine(url, poolclass=sa.pool.NullPool)
    try:
        return sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


@pytest.mark.parametrize("command", ["serve", "up"])
@pytest.mark.parametrize("port", ["70000", "0", "-1"])
def test_a_port_out_of_range_is_one_line_before_anything_starts(tmp_path: Path, command: str, port: str) -> None:
    url = _unmigrated(tmp_path)
    if command == "serve":
        assert cli.run("db", "upgrade", database_url=url).code == 0
    tables = _tables(url)
    result = cli.run(command, f"--port={port}", database_url=url, cwd=tmp_path, process=True)
    cli.assert_one_line_error(result, f"port {port} is not a TCP port", "1 to 65535")
    assert result.stdout == "", "nothing claims to serve"
    assert _tables(url) == tables, "nothing was migrated or loaded"


@pytest.mark.parametrize("command", ["serve", "up"])
def test_a_port_out_of_range_in_the_environment_is_one_line(tmp_path: Path, command: str) -> None:
    result = cli.run(command, database_url=_unmigrated(tmp_path), cwd=tmp_path, settings={"BILLFOLD_PORT": "70000"}, process=True)
    cli.assert_one_line_error(result, "BILLFOLD_PORT", "65535")
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["serve", "up"])
def test_a_port_in_use_is_one_line_before_anything_starts(tmp_path: Path, command: str) -> None:
    import socket

    url = _unmigrated(tmp_path)
    if command == "serve":
        assert cli.run("db", "upgrade", database_url=url).code == 0
    tables = _tables(url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli.run(command, "--port", str(port), database_url=url, cwd=tmp_path, process=True)
    cli.assert_one_line_error(result, f"port {port}", "already in use", "--port")
    assert result.stdout == "", "nothing claims to serve"
    assert _tables(url) == tables, "nothing was migrated or loaded"
