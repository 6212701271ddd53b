"""An operator interrupts ``billfold demo --months 1`` (or ``billfold up``) while it lives through its
history, with Ctrl-C or a kill -9, and runs it again: the database ends up exactly as a clean load
would leave it, never with half a history taken for data. Real processes on real databases."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from billfold.kit.db import create_engine
from billfold.models import Base
from tests import cli, databases

pytestmark = pytest.mark.slow

MONTHS = "1"
# Tables whose rows are not the shop's data: the marks, the clock, keys purged by time.
NOT_COUNTED = {"instance_marks", "billing_clock", "idempotency_keys", "auth_sessions", "sign_in_throttles"}
SNAPSHOTS = {"analytics_snapshots"}  # counted by days and metrics (see _counts)


def _url(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def _counts(url: URL) -> dict[str, int]:
    engine = create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            counted = {
                table.name: connection.scalar(sa.select(sa.func.count()).select_from(table)) or 0
                for table in Base.metadata.sorted_tables
                if table.name not in NOT_COUNTED | SNAPSHOTS
            }
            # A history is lived from the moment the command runs: an event near midnight falls on
            # one day or the next, and with it a day's breakdowns (a currency's, a plan's). So two
            # loads minutes apart take the same days and metrics, not always the same rows.
            counted["analytics_snapshots (days, metrics)"] = tuple(connection.execute(sa.text(
                "SELECT count(DISTINCT snapshot_date), count(DISTINCT metric_type) FROM analytics_snapshots"
            )).one())
            statuses = connection.execute(
                sa.text("SELECT status, count(*) FROM subscriptions GROUP BY status ORDER BY status")
            ).all()
            payments = connection.execute(
                sa.text("SELECT status, count(*), sum(amount_cents) FROM payments GROUP BY status ORDER BY status")
            ).all()
            return counted | {f"subscriptions {s}": n for s, n in statuses} | {
                f"payments {s}": (n, int(total or 0)) for s, n, total in payments  # type: ignore[misc]
            }
    finally:
        engine.dispose()


def _subscriptions(url: URL) -> int:
    engine = create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            return connection.scalar(sa.text("SELECT count(*) FROM subscriptions")) or 0
    except sa.exc.SQLAlchemyError:
        return 0
    finally:
        engine.dispose()


def _migrated(backend: str, name: str, tmp_path: Path) -> URL:
    url = databases.fresh_database(backend, name, tmp_path)
    upgraded = cli.run("db", "upgrade", database_url=_url(url), cwd=tmp_path)
    assert upgraded.code == 0, upgraded
    return url


_clean: dict[str, dict[str, int]] = {}


def _clean_load(backend: str, tmp_path: Path) -> dict[str, int]:
    if backend not in _clean:
        url = _migrated(backend, "demo_clean", tmp_path)
        try:
            made = cli.run("demo", "--months", MONTHS, database_url=_url(url), cwd=tmp_path)
            assert made.code == 0, made
            _clean[backend] = _counts(url)
        finally:
            databases.drop_database(backend, url)
    return _clean[backend]


# A kill -9 leaves what the database itself does with a dropped connection's transaction, so it runs
# on every database; Ctrl-C is the command's own handling, the same on each, so it runs on the one
# its name picks (it was the suite's second-longest test on every database).
@pytest.mark.parametrize("how", [signal.SIGINT, pytest.param(signal.SIGKILL, marks=pytest.mark.every_database)], ids=["ctrl-c", "kill-9"])
def test_a_demo_load_interrupted_mid_history_and_run_again_equals_a_clean_load(
    backend: str, tmp_path: Path, how: signal.Signals
) -> None:
    clean = _clean_load(backend, tmp_path)
    url = _migrated(backend, f"demo_cut_{how.name.lower()}", tmp_path)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}
        env.update(BILLFOLD_DATABASE_URL=_url(url), COLUMNS="200")
        loading = subprocess.Popen(
            [cli.BILLFOLD, "demo", "--if-empty", "--months", MONTHS], env=env, cwd=tmp_path,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # A shell without job control starts background jobs with Ctrl-C ignored, and Python keeps
            # it ignored: the operator's terminal delivers it, so the command must see it here too.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            deadline = time.monotonic() + 120
            while _subscriptions(url) == 0:  # the history has begun: founders subscribe on day one
                assert loading.poll() is None, loading.communicate()
                assert time.monotonic() < deadline, "the history never began"
                time.sleep(0.05)
            loading.send_signal(how)
            _, stderr = loading.communicate(timeout=60)
        finally:
            if loading.poll() is None:
                loading.kill()
                loading.wait()
        assert loading.returncode != 0, "the load was cut short"
        half = _counts(url)
        assert 0 < half["subscriptions"] and half != clean, "half a history was left behind"
        if how == signal.SIGINT:
            last = stderr.strip().splitlines()[-1]
            assert last.startswith("billfold: error: interrupted") and "run the same command again" in last, stderr

        again = cli.run("demo", "--if-empty", "--months", MONTHS, database_url=_url(url), cwd=tmp_path)
        assert again.code == 0, again
        assert "interrupted" in again.stderr and "starting over" in again.stderr
        assert "Demo shop loaded with 1 month of history" in again.stdout, again.stdout
        assert _counts(url) == clean

        once_more = cli.run("demo", "--if-empty", "--months", MONTHS, database_url=_url(url), cwd=tmp_path)
        assert once_more.code == 0 and "not loaded" in once_more.stdout, once_more
        assert _counts(url) == clean, "a finished demo is data: it is kept"
    finally:
        databases.drop_database(backend, url)


def test_a_database_with_data_but_no_demo_mark_is_never_emptied(tmp_path: Path) -> None:
    """Only the demo's own unfinished load is started over: a shop set up by hand is refused."""
    url = _migrated("sqlite", "hand_made", tmp_path)
    made = cli.run("apikey", "create", "--name", "backend", database_url=_url(url), cwd=tmp_path)
    assert made.code == 0, made
    engine = create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(
                "INSERT INTO product_categories (id, name, sort_order, is_active) VALUES ('cat_1', 'Mine', 0, 1)"
            ))
    finally:
        engine.dispose()
    before = _counts(url)
    refused = cli.run("demo", "--months", MONTHS, database_url=_url(url), cwd=tmp_path)
    cli.assert_one_line_error(refused, "already has data")
    assert _counts(url) == before
