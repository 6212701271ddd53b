"""Complete checkouts over HTTP against `billfold serve` on PostgreSQL, beside the database's own
ceiling for the same work, measured in the same run.

A complete checkout is what a merchant's backend does for one sale: ``POST /v1/orders`` (two
items, for a customer with a billing address) then ``POST /v1/orders/{id}/checkout`` with the
token ``tok_sandbox_visa``, each with its own ``Idempotency-Key``, authenticated by an API key.
N client threads (httpx, keep-alive) do them back to back; the pair is timed.

Steps, all in one run:
1. a fresh database (dropped first), migrated and seeded: customers with addresses, products, the
   sandbox provider row and an API key;
2. trace: one checkout through the app in-process, counting its transactions and statements
   (what the pgbench script below must match);
3. `billfold serve --workers W --no-access-log` as a subprocess, warmed up, then the clients;
   printed: checkouts/s, p50/p95/p99 of a complete checkout, errors, the server's peak RSS, and
   the CPU seconds per checkout of the server, PostgreSQL and the load generator;
4. the ceiling issue 13 names, right after each of Billfold's runs: a bare FastAPI + psycopg app
   (bench/bare_checkout.py) doing the pgbench script's statements behind the same endpoints, with
   the same workers, clients, sale (two requests or one) and duration as that run; printed like
   Billfold's run, with the ratio Billfold / bare app (``--no-bare`` skips it; it needs
   ``psycopg-pool``, in the ``dev`` extra);
5. the database's ceiling: pgbench with a script doing the same transactions and the same writes
   as a checkout (one script run = one checkout's database work), the same client count, for a
   fixed time, on the same database; printed with the ratio ours / ceiling;
6. optionally (``--profile SECONDS``) py-spy samples the server's workers (Billfold's and the bare
   app's) during the timed runs.

``--provider-latency-ms L --provider-jitter-ms J`` slow the server's sandbox down to a remote
provider's pace (``BILLFOLD_SANDBOX_LATENCY_MS``: each call waits L ms plus up to J more). During
every timed run a prober asks ``GET /healthz`` every 100 ms on a connection of its own, and its
p50/p99/max are printed: what a load balancer's health check sees while the threads are busy.

    .venv/bin/python bench/checkout.py --clients 16 --checkouts 2000 --workers 2
    .venv/bin/python bench/checkout.py --clients 16 --checkouts 1000 --profile 20 --profile-out /tmp/checkout.txt
    .venv/bin/python bench/checkout.py --clients 512 --checkouts 5000 --provider-latency-ms 250 --provider-jitter-ms 50
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from billfold.kit.db import create_engine, session_factory, transaction  # noqa: E402
from billfold.models import Address, PaymentProvider, Product, User  # noqa: E402
from tests import databases  # noqa: E402

try:
    import psutil
except ImportError:  # RSS from /proc then, and no CPU split
    psutil = None  # type: ignore[assignment]

DATABASE = "billfold_bench_checkout"
SECRET_KEY = "bench-" + "k" * 40
BILLFOLD = str(Path(sys.executable).with_name("billfold"))


# ---- the database ------------------------------------------------------------------------------


def setup_database(server: str, customers: int, name: str = DATABASE) -> tuple[sa.Engine, dict[str, Any]]:
    databases.SERVER_URLS["postgresql"] = server
    engine = create_engine(databases.fresh_database("postgresql", name, Path(tempfile.gettempdir())))
    databases.migrate(engine)
    from billfold.accounts.api_keys import create_api_key

    with transaction(session_factory(engine)) as session:
        session.add(PaymentProvider(id="sandbox", display_name="Sandbox", supports_subscriptions=True))
        products = [
            Product(name=f"Bench product {n}", product_type="digital", is_recurring=False, price_cents=price, currency="USD")
            for n, price in enumerate((1999, 350, 4900, 1250))
        ]
        session.add_all(products)
        users = [User(name="Bench", last_name=f"Customer {n}", email=f"bench{n}@example.com", user_type="individual")
                 for n in range(customers)]
        session.add_all(users)
        session.flush()
        session.add_all(
            Address(user_id=u.id, address_type="both", name=f"Customer {n}", line1="12 St James's Square",
                    city="London", postal_code="SW1Y 4JH", country="GB", is_default=True)
            for n, u in enumerate(users)
        )
        _, secret = create_api_key(session, name="bench", scopes=["read", "write"], created_by=None)
        seeds = {"products": [p.id for p in products], "customers": [u.id for u in users], "api_key": secret}
    return engine, seeds


def order_body(seeds: dict[str, Any], n: int) -> dict[str, Any]:
    products = seeds["products"]
    return {
        "user_id": seeds["customers"][n % len(seeds["customers"])],
        "items": [{"product_id": products[n % len(products)], "quantity": 1},
                  {"product_id": products[(n + 1) % len(products)], "quantity": 2}],
    }


def one_checkout(client: httpx.Client, seeds: dict[str, Any], n: int, one_request: bool = False) -> str | None:
    """A complete checkout; None if it went as it should, else what went wrong. ``one_request``:
    the same sale as one ``POST /v1/checkouts`` (the order's fields and the token together)."""
    if one_request:
        bought = client.post("/v1/checkouts", json={**order_body(seeds, n), "token": "tok_sandbox_visa"},
                             headers={"Idempotency-Key": str(uuid.uuid4())})
        return None if bought.status_code == 200 else f"one-request checkout {bought.status_code}: {bought.text[:200]}"
    made = client.post("/v1/orders", json=order_body(seeds, n), headers={"Idempotency-Key": str(uuid.uuid4())})
    if made.status_code != 201:
        return f"order {made.status_code}: {made.text[:200]}"
    paid = client.post(f"/v1/orders/{made.json()['id']}/checkout", json={"token": "tok_sandbox_visa"},
                       headers={"Idempotency-Key": str(uuid.uuid4())})
    if paid.status_code != 200:
        return f"checkout {paid.status_code}: {paid.text[:200]}"
    return None


# ---- 2. trace: what one checkout asks of the database ------------------------------------------


def trace(engine: sa.Engine, seeds: dict[str, Any], data_dir: Path, one_request: bool = False) -> list[list[str]]:
    """The statements of one complete checkout (after one to warm up), grouped by transaction;
    a group whose first entry is "-" ran outside a transaction we began (pre-ping)."""
    from fastapi.testclient import TestClient

    from billfold.api import create_app
    from billfold.config import Settings

    traced = create_engine(engine.url)
    groups: list[list[str]] = []
    recording = False

    @sa.event.listens_for(traced, "begin")
    def _begin(connection: sa.Connection) -> None:
        if recording:
            groups.append([])

    @sa.event.listens_for(traced, "before_cursor_execute")
    def _statement(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        if recording:
            if not groups or groups[-1] and groups[-1][-1] in ("COMMIT", "ROLLBACK"):
                groups.append(["-"])
            groups[-1].append(" ".join(statement.split()))

    for name in ("commit", "rollback"):
        sa.event.listen(traced, name, lambda connection, name=name: recording and groups[-1].append(name.upper()))

    settings = Settings(database_url=engine.url.render_as_string(hide_password=False), data_dir=data_dir,
                        secret_key=SECRET_KEY)
    app = create_app(settings, traced)
    with TestClient(app, headers={"Authorization": f"Bearer {seeds['api_key']}"}) as client:
        assert one_checkout(client, seeds, 0, one_request) is None
        recording = True
        assert one_checkout(client, seeds, 1, one_request) is None
        recording = False
    traced.dispose()
    return groups


def summarise(groups: list[list[str]]) -> str:
    committed = [g for g in groups if g and g[-1] == "COMMIT"]
    statements = [s for g in groups for s in g if s not in ("-", "COMMIT", "ROLLBACK")]
    kinds = collections.Counter(s.split()[0].upper() for s in statements)
    return (f"{len(committed)} committed transactions, {len(groups) - len(committed)} rolled back or read-only, "
            f"{len(statements)} statements ({', '.join(f'{n} {k}' for k, n in kinds.most_common())})")


# ---- 3. the server and the clients -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(url: str, data_dir: Path, workers: int, latency_ms: int = 0,
          jitter_ms: int = 0) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}
    env.update(BILLFOLD_DATABASE_URL=url, BILLFOLD_DATA_DIR=str(data_dir), BILLFOLD_SECRET_KEY=SECRET_KEY,
               BILLFOLD_PUBLIC_URL=f"http://127.0.0.1:{port}", BILLFOLD_SANDBOX_LATENCY_MS=str(latency_ms),
               BILLFOLD_SANDBOX_LATENCY_JITTER_MS=str(jitter_ms))
    command = [BILLFOLD, "serve", "--port", str(port), "--workers", str(workers), "--no-access-log"]
    with run_server("billfold serve", command, env, port, data_dir / "serve.log") as served:
        yield served


@contextlib.contextmanager
def serve_bare(url: str, data_dir: Path, workers: int) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """bench/bare_checkout.py under uvicorn with ``workers`` workers, on the same database."""
    engine = create_engine(url)
    with engine.connect() as c:  # the number rows Billfold's orders and invoices use
        series = c.scalar(sa.text("SELECT series FROM number_series WHERE series LIKE 'order-%' LIMIT 1"))
        invoice_series = c.scalar(sa.text("SELECT series FROM number_series WHERE series LIKE 'invoice-%' LIMIT 1"))
    engine.dispose()
    port = free_port()
    env = {**os.environ, "BARE_DATABASE_URL": sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
           "BARE_SERIES": series, "BARE_INVOICE_SERIES": invoice_series}
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(__file__).resolve().parent), "bare_checkout:app",
               "--port", str(port), "--workers", str(workers), "--no-access-log"]
    with run_server("the bare app", command, env, port, data_dir / "bare.log") as served:
        yield served


@contextlib.contextmanager
def run_server(name: str, command: list[str], env: dict[str, str], port: int,
               log_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    log = open(log_path, "wb")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"{name} exited: {log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start in 60 s")
            time.sleep(0.1)
        yield server, base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def server_processes(server: subprocess.Popen[bytes]) -> list[Any]:
    parent = psutil.Process(server.pid)
    return [parent, *parent.children(recursive=True)]


def server_pids(server: subprocess.Popen[bytes]) -> list[int]:
    if psutil is not None:
        return [p.pid for p in server_processes(server)]
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children")
    return [server.pid, *(int(p) for p in children.read_text().split())] if children.exists() else [server.pid]


def peak_rss_mib(pids: list[int]) -> float:
    """VmHWM (the high-water mark of resident memory) summed over the processes."""
    return sum(peak_rss_each(pids)) / 1024


def peak_rss_each(pids: list[int]) -> list[int]:
    """Each process's VmHWM in KiB (0 for one that is gone)."""
    peaks = []
    for pid in pids:
        peak = 0
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = int(line.split()[1])
        peaks.append(peak)
    return peaks


class CpuMeter:
    """CPU seconds (user + system) used by groups of processes between start() and stop()."""

    def __init__(self, engine: sa.Engine, server: subprocess.Popen[bytes]) -> None:
        self.engine, self.server = engine, server
        self.before: dict[int, float] = {}

    def _groups(self) -> dict[str, list[int]]:
        with self.engine.connect() as c:
            backends = list(c.scalars(sa.text("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                              "AND pid <> pg_backend_pid()")))
        return {"server": server_pids(self.server), "postgres": backends, "clients": [os.getpid()]}

    @staticmethod
    def _cpu(pid: int) -> float:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            return t.user + t.system
        return 0.0

    def start(self) -> None:
        self.before = {pid: self._cpu(pid) for pids in self._groups().values() for pid in pids}
        self.machine = psutil.cpu_times()

    def stop(self) -> dict[str, float]:
        used = {name: sum(self._cpu(p) - self.before.get(p, 0.0) for p in pids) for name, pids in self._groups().items()}
        now = psutil.cpu_times()
        busy = lambda t: t.user + t.nice + t.system + t.irq + t.softirq + t.steal  # noqa: E731
        used["machine"] = busy(now) - busy(self.machine)
        return used


class WaitSampler(threading.Thread):
    """Samples what the server's PostgreSQL sessions are doing, every 20 ms: running a statement,
    waiting for a lock (which one), idle in a transaction (the app holds it open while Python
    works), or idle in the pool."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(daemon=True)
        self.engine, self.done = engine, threading.Event()
        self.counts: collections.Counter[str] = collections.Counter()
        self.samples = 0

    def run(self) -> None:
        query = sa.text("SELECT state, wait_event_type, wait_event, left(query, 60) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        with self.engine.connect() as c:
            while not self.done.wait(0.02):
                for state, kind, event, query_text in c.execute(query):
                    if state == "active":
                        what = f"waiting: {kind}/{event} on {query_text.split(' WHERE')[0]}" if kind == "Lock" else \
                               f"active{f' ({kind}/{event})' if kind else ''}"
                    else:
                        what = state
                    self.counts[what] += 1
                self.samples += 1
                c.rollback()

    def stop(self) -> list[tuple[str, float]]:
        self.done.set()
        self.join()
        return [(what, n / max(self.samples, 1)) for what, n in self.counts.most_common(8)]


_PROBER = r"""
import json, sys, threading, time
import httpx
stop, latencies, failures = threading.Event(), [], 0
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
with httpx.Client(base_url=sys.argv[1], timeout=30) as client:
    while not stop.wait(0.1):
        t0 = time.perf_counter()
        try:
            ok = client.get("/healthz").status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            latencies.append(time.perf_counter() - t0)
        else:
            failures += 1
print(json.dumps({"latencies": latencies, "failures": failures}))
"""


class HealthProber:
    """``GET /healthz`` every 100 ms on a connection of its own, timed, until stopped: in a process
    of its own, so that its timings are the server's and not the wait for this process's
    interpreter, which hundreds of client threads share (in a thread here, max 370 ms, p99 95 ms;
    docs/performance.md)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen([sys.executable, "-c", _PROBER, self.base], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)

    def stop(self) -> str:
        assert self._process is not None
        out, _ = self._process.communicate("", timeout=120)
        found = json.loads(out)
        ms, failures = sorted(x * 1000 for x in found["latencies"]), found["failures"]
        if not ms:
            return f"no answer ({failures} failures)"
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        return (f"p50 {statistics.median(ms):.1f} ms  p99 {p99:.1f} ms  max {ms[-1]:.1f} ms  "
                f"({len(ms)} probes, {failures} failed; a process of its own)")


_TLS = ssl.create_default_context()
"""One TLS context for every client: httpx builds one per client otherwise, though they speak plain
HTTP: ~60 ms of CPU each, on the server's two cores and inside the measured run (512 clients spent
about 30 s of CPU on them, a third of the machine's CPU a sale)."""


def run_clients(
    base: str, seeds: dict[str, Any], clients: int, checkouts: int, one_request: bool = False,
    seconds: float | None = None,
) -> tuple[float, list[float], list[str]]:
    """``checkouts`` sales, or as many as ``seconds`` allow (each client starts none after them)."""
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(checkouts)) if seconds is None else itertools.count()
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {seeds['api_key']}"}
    go = threading.Barrier(clients + 1)

    def client_loop() -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=120, verify=_TLS) as client:
            client.get("/healthz")  # connect before the clock starts
            go.wait()
            stop_at = time.perf_counter() + seconds if seconds is not None else float("inf")
            while time.perf_counter() < stop_at:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                t0 = time.perf_counter()
                try:
                    error = one_checkout(client, seeds, n, one_request)
                except httpx.HTTPError as failure:
                    error = f"{type(failure).__name__}: {failure}"
                elapsed = time.perf_counter() - t0
                with lock:
                    (errors.append(error) if error else latencies.append(elapsed))

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    go.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - started, latencies, errors


# ---- 4. the ceiling ----------------------------------------------------------------------------

# One script run = one complete checkout's database work, transaction for transaction and
# statement for statement as the trace prints it (PostgreSQL, two items, a customer with a default
# address and a purchase before, an API key the server has seen): 6 transactions, 39 statements
# (2026-12-07, seventh session: a transaction's events, analytics events and mail written at its
# commit, one INSERT each; no sum of an order paid by one payment; an invoice written numbered;
# 46 in the sixth, 48 in the
# fifth, 8 transactions and 59 before it), the
# same rows written, the same rows locked (the order's and the invoice's number rows included). No
# Python. Two small lookup tables (bench_customers, bench_products) turn pgbench's random numbers
# into seeded ids.
PGBENCH_SCRIPT = r"""
\set c random(1, :customers)
\set p random(1, 4)
\set q 1 + (:p % 4)
BEGIN;
INSERT INTO idempotency_keys (id, scope, idem_key, request_method, request_path, request_hash, recovery_point, lock_token, locked_at, last_run_at, created_at, response_code, response_body)
  VALUES ('idk_' || md5(random()::text), :api_key_id, md5(random()::text), 'POST', '/v1/orders', md5(random()::text), 'started', md5(random()::text), now(), now(), now(), NULL, NULL) RETURNING id AS k1 \gset
COMMIT;
BEGIN;
SELECT u.* FROM users u JOIN bench_customers b ON b.user_id = u.id WHERE b.n = :c \gset u_
SELECT p.*, EXISTS (SELECT 1 FROM products v WHERE v.parent_product_id = p.id AND v.is_active IS true) AS sold_as_variants
  FROM products p WHERE p.id IN ((SELECT product_id FROM bench_products WHERE n = :p), (SELECT product_id FROM bench_products WHERE n = :q));
SELECT * FROM addresses WHERE user_id = :u_id AND organization_id IS NULL AND is_default IS true ORDER BY id \gset a_
INSERT INTO orders (id, order_number, user_id, organization_id, status, subtotal_cents, tax_cents, discount_cents, total_cents, currency, billing_address_id, shipping_address_id, metadata, created_at, updated_at, completed_at)
  VALUES ('ord_' || md5(random()::text), 'pending-' || md5(random()::text), :u_id, NULL, 'pending', 2699, 540, 0, 3239, 'USD', :a_id, :a_id,
          '{"billing_address": {"id": "x", "name": "Customer", "line1": "12 St James''s Square", "city": "London", "postal_code": "SW1Y 4JH", "country": "GB"}}', now(), now(), NULL) RETURNING id AS o \gset
INSERT INTO order_items (id, order_id, product_id, quantity, unit_price_cents, total_cents, metadata, created_at) VALUES
  ('oit_' || md5(random()::text), :o, (SELECT product_id FROM bench_products WHERE n = :p), 1, 1999, 1999, '{"name": "Bench product"}', now()),
  ('oit_' || md5(random()::text), :o, (SELECT product_id FROM bench_products WHERE n = :q), 2, 350, 700, '{"name": "Bench product"}', now());
INSERT INTO number_series (series, last_value) VALUES (:series, 1) ON CONFLICT (series) DO UPDATE SET last_value = number_series.last_value + 1 RETURNING last_value \gset
UPDATE orders SET order_number = 'PGB-' || :last_value::text, updated_at = now() WHERE id = :o;
UPDATE idempotency_keys SET recovery_point = 'finished', lock_token = NULL, locked_at = NULL, last_run_at = now(), response_code = 201,
  response_body = '{"id": "ord", "items": [{}, {}], "payments": [], "status": "pending", "total_cents": 3239}' WHERE id = :k1 AND recovery_point != 'finished';
INSERT INTO payment_events (id, entity_type, entity_id, event_type, data, created_at) VALUES ('evt_' || md5(random()::text), 'order', :o, 'order.pending', '{"to": "pending", "by": "key"}', now());
COMMIT;
BEGIN;
INSERT INTO idempotency_keys (id, scope, idem_key, request_method, request_path, request_hash, recovery_point, lock_token, locked_at, last_run_at, created_at, response_code, response_body)
  VALUES ('idk_' || md5(random()::text), :api_key_id, md5(random()::text), 'POST', '/v1/orders/x/checkout', md5(random()::text), 'started', md5(random()::text), now(), now(), now(), NULL, NULL) RETURNING id AS k2 \gset
COMMIT;
BEGIN;
SELECT * FROM orders WHERE id = :o FOR UPDATE;
SELECT * FROM payments WHERE order_id = :o AND status = 'pending' ORDER BY id DESC LIMIT 1;
SELECT * FROM addresses WHERE id = :a_id;
SELECT order_items.*, products.* FROM order_items JOIN products ON products.id = order_items.product_id WHERE order_items.order_id = :o ORDER BY order_items.id;
SELECT * FROM payment_routing_rules WHERE is_active ORDER BY position, id;
SELECT * FROM payment_providers WHERE id = 'sandbox';
INSERT INTO payments (id, order_id, subscription_id, user_id, organization_id, payment_method_id, provider_id, provider_payment_id, amount_cents, currency, status, error_message, metadata, created_at, updated_at, completed_at)
  VALUES ('pay_' || md5(random()::text), :o, NULL, :u_id, NULL, NULL, 'sandbox', NULL, 3239, 'USD', 'pending', NULL, '{"provider_status": "created", "token": "tok_sandbox_visa"}', now(), now(), NULL) RETURNING id AS pay \gset
UPDATE idempotency_keys SET recovery_point = 'payment:' || :pay, locked_at = now(), last_run_at = now() WHERE id = :k2 AND recovery_point != 'finished';
INSERT INTO payment_events (id, entity_type, entity_id, event_type, data, created_at) VALUES ('evt_' || md5(random()::text), 'payment', :pay, 'payment.pending', '{"to": "pending", "by": "key"}', now());
COMMIT;
BEGIN;
SELECT * FROM payments WHERE id IN (:pay) ORDER BY id FOR UPDATE;
UPDATE payments SET provider_payment_id = 'ch_' || md5(random()::text), status = 'completed', metadata = '{"provider_status": "succeeded", "token": "tok_sandbox_visa"}', updated_at = now(), completed_at = now() WHERE id = :pay;
SELECT * FROM orders WHERE id = :o FOR UPDATE;
SELECT id, event_types FROM webhook_endpoints WHERE is_active = true;
UPDATE orders SET status = 'paid', updated_at = now(), completed_at = now() WHERE id = :o;
SELECT * FROM invoices WHERE order_id = :o ORDER BY created_at, id LIMIT 1;
SELECT order_items.*, products.* FROM order_items JOIN products ON products.id = order_items.product_id WHERE order_items.order_id = :o ORDER BY order_items.id;
INSERT INTO number_series (series, last_value) VALUES (:invoice_series, 1) ON CONFLICT (series) DO UPDATE SET last_value = number_series.last_value + 1 RETURNING last_value AS inv_number \gset
INSERT INTO invoices (id, invoice_number, order_id, subscription_id, user_id, organization_id, status, amount_cents, tax_cents, discount_cents, total_cents, currency, issue_date, due_date, paid_date, billing_address_id, provider_id, provider_invoice_id, created_at, updated_at)
  VALUES ('inv_' || md5(random()::text), 'INV-PGB-' || :inv_number::text, :o, NULL, :u_id, NULL, 'paid', 2699, 540, 0, 3239, 'USD', now(), now(), now(), :a_id, 'sandbox', NULL, now(), now()) RETURNING id AS inv \gset
INSERT INTO invoice_lines (id, invoice_id, position, kind, description, product_id, quantity, unit_amount_cents, amount_cents, period_start, period_end, created_at) VALUES
  ('inl_' || md5(random()::text), :inv, 1, 'item', 'Bench product', (SELECT product_id FROM bench_products WHERE n = :p), 1, 1999, 1999, NULL, NULL, now()),
  ('inl_' || md5(random()::text), :inv, 2, 'item', 'Bench product', (SELECT product_id FROM bench_products WHERE n = :q), 2, 350, 700, NULL, NULL, now());
SELECT * FROM users WHERE id = :u_id;
SELECT * FROM payments p LEFT JOIN refunds r ON r.payment_id = p.id WHERE p.order_id IN (:o) ORDER BY p.id, r.id;
UPDATE idempotency_keys SET recovery_point = 'finished', lock_token = NULL, locked_at = NULL, last_run_at = now(), response_code = 200,
  response_body = '{"order": {"id": "ord", "items": [{}, {}], "payments": [{}], "status": "paid"}, "payment": {"status": "completed"}}' WHERE id = :k2 AND recovery_point != 'finished';
INSERT INTO payment_events (id, entity_type, entity_id, event_type, data, created_at) VALUES
  ('evt_' || md5(random()::text), 'payment', :pay, 'payment.completed', '{"to": "completed", "by": "key"}', now()),
  ('evt_' || md5(random()::text), 'order', :o, 'order.paid', '{"to": "paid", "by": "key"}', now()),
  ('evt_' || md5(random()::text), 'invoice', :inv, 'invoice.draft', '{"to": "draft", "by": "system"}', now()),
  ('evt_' || md5(random()::text), 'invoice', :inv, 'invoice.open', '{"to": "open", "by": "system"}', now()),
  ('evt_' || md5(random()::text), 'invoice', :inv, 'invoice.paid', '{"to": "paid", "by": "system"}', now());
INSERT INTO analytics_events (id, user_id, session_id, event_type, event_category, entity_type, entity_id, properties, revenue_cents, currency, created_at)
  VALUES ('aev_' || md5(random()::text), :u_id, NULL, 'payment_completed', 'revenue', 'payment', :pay, '{"provider_id": "sandbox"}', 3239, 'USD', now());
INSERT INTO mail_outbox (id, to_address, subject, body, status, attempts, next_attempt_at, last_error, sent_at, created_at, updated_at)
  VALUES ('mail_' || md5(random()::text), 'bench@example.com', 'Your receipt', repeat('x', 400), 'pending', 0, now() + interval '5 minutes', NULL, NULL, now(), now()) RETURNING id AS mail \gset
SELECT user_id, cohort_type FROM user_cohorts WHERE user_id IN (:u_id);
INSERT INTO user_cohorts (id, user_id, cohort_month, cohort_type, created_at) VALUES ('coh_' || md5(random()::text), :u_id, date_trunc('month', now())::date, 'first_purchase', now()) ON CONFLICT DO NOTHING;
COMMIT;
BEGIN;
UPDATE mail_outbox SET status = 'sent', attempts = 1, next_attempt_at = NULL, last_error = NULL, sent_at = now(), updated_at = now() WHERE id = :mail AND status = 'pending';
COMMIT;
"""
PGBENCH_STATEMENTS = 39  # checked against the trace in main()


def pgbench(url: sa.URL, clients: int, seconds: int, customers: int, seeds: dict[str, Any], folder: Path) -> tuple[float, float, str]:
    """pgbench's transactions/s (one = one checkout's database work) and mean latency (ms)."""
    with create_engine(url).begin() as c:
        api_key_id = c.scalar(sa.text("SELECT id FROM api_keys LIMIT 1"))
        # the series the app used: the same rows, the same locks
        series = c.scalar(sa.text("SELECT series FROM number_series WHERE series LIKE 'order-%' LIMIT 1"))
        invoice_series = c.scalar(sa.text("SELECT series FROM number_series WHERE series LIKE 'invoice-%' LIMIT 1"))
        c.execute(sa.text("CREATE TABLE bench_customers (n int PRIMARY KEY, user_id varchar(35) NOT NULL)"))
        c.execute(sa.text("CREATE TABLE bench_products (n int PRIMARY KEY, product_id varchar(35) NOT NULL)"))
        c.execute(sa.text("INSERT INTO bench_customers SELECT row_number() OVER (ORDER BY id), id FROM users"))
        c.execute(sa.text("INSERT INTO bench_products SELECT row_number() OVER (ORDER BY id), id FROM products"))
    script = folder / "checkout.sql"
    script.write_text(PGBENCH_SCRIPT)
    command = [
        shutil.which("pgbench") or "pgbench", "-n", "-M", "prepared", "-c", str(clients),
        "-j", "2", "-T", str(seconds), "-f", str(script),
        "-D", f"customers={customers}", "-D", f"api_key_id={api_key_id}", "-D", f"series={series}", "-D", f"invoice_series={invoice_series}",
        "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "postgres", url.database or "",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PGPASSWORD": url.password or ""})
    if done.returncode != 0:
        raise RuntimeError(f"pgbench failed: {done.stderr[-2000:]}")
    tps = float(re.search(r"tps = ([\d.]+)", done.stdout).group(1))
    latency = float(re.search(r"latency average = ([\d.]+) ms", done.stdout).group(1))
    failed = re.search(r"number of failed transactions: (\d+)", done.stdout)
    if failed and int(failed.group(1)):
        raise RuntimeError(f"pgbench: {failed.group(0)}")
    return tps, latency, done.stdout


# ---- main --------------------------------------------------------------------------------------


def measure(
    engine: sa.Engine, seeds: dict[str, Any], data_dir: Path, args: argparse.Namespace, one_request: bool = False,
    bare_seconds: float | None = None,
) -> dict[str, Any]:
    """One timed run of Billfold (``args.checkouts`` sales), or with ``bare_seconds`` of the bare
    app (as many sales as it does in that time: Billfold's run's duration)."""
    url = engine.url.render_as_string(hide_password=False)
    server_context = serve_bare(url, data_dir, args.workers) if bare_seconds is not None else \
        serve(url, data_dir, args.workers, args.provider_latency_ms, args.provider_jitter_ms)
    with server_context as (server, base):
        warm = run_clients(base, seeds, args.clients, args.warmup, one_request)
        if warm[2]:
            raise RuntimeError(f"warm-up failed: {warm[2][:3]}")
        meter = CpuMeter(engine, server) if psutil is not None else None
        if meter:
            meter.start()
        profiler = None
        if args.profile:
            py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            pids = server_pids(server)[1:] or server_pids(server)
            gil = ["--gil"] if args.profile_gil else []
            profiler = [subprocess.Popen([py_spy, "record", "--format", "raw", "--rate", "200", "--nonblocking", *gil,
                                          "--duration", str(args.profile), "--pid", str(pid),
                                          "--output", f"{args.profile_out}.{pid}"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for pid in pids]
            print(f"       profiling {'the bare app' if bare_seconds is not None else 'Billfold'}: "
                  f"{args.profile_out}.<pid>, pids {' '.join(map(str, pids))}")
        sampler = WaitSampler(engine)
        sampler.start()
        prober = HealthProber(base)
        prober.start()
        elapsed, latencies, errors = run_clients(base, seeds, args.clients, args.checkouts, one_request, bare_seconds)
        health = prober.stop()
        cpu = meter.stop() if meter else {}
        waits = sampler.stop()
        for p in profiler or []:
            p.wait()
        peaks = peak_rss_each(server_pids(server))
        rss = sum(peaks) / 1024
        worker_rss = max(peaks[1:] or peaks) / 1024  # the supervisor first, then its workers
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    done = len(latencies)
    return {"rate": done / elapsed, "done": done, "p50": q[49] * 1000, "p95": q[94] * 1000, "p99": q[98] * 1000,
            "errors": errors, "rss": rss, "worker_rss": worker_rss, "cpu": {k: v / max(done, 1) * 1000 for k, v in cpu.items()},
            "cpu_total": cpu, "elapsed": elapsed, "waits": waits, "health": health}


def report(run: int, args: argparse.Namespace, r: dict[str, Any], label: str) -> None:
    cpu = "  ".join(f"{k} {v:.2f}" for k, v in r["cpu"].items())
    print(f"run {run + 1}{f' ({label})' if label else ''}: {args.clients} clients, {args.workers} workers, {r['done']} checkouts: "
          f"{r['rate']:7.1f} checkouts/s   p50 {r['p50']:6.1f} ms   p95 {r['p95']:6.1f} ms   "
          f"p99 {r['p99']:6.1f} ms   errors {len(r['errors'])}   peak RSS {r['rss']:.0f} MiB "
          f"(the largest API worker {r['worker_rss']:.0f} MiB)")
    if cpu:
        print(f"       CPU ms per checkout: {cpu}")
    print(f"       GET /healthz during the run: {r['health']}")
    print("       PostgreSQL sessions of the server, on average: " +
          "; ".join(f"{n:.1f} {what}" for what, n in r["waits"]))
    for error in collections.Counter(r["errors"]).most_common(3):
        print(f"       error x{error[1]}: {error[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default=databases.SERVER_URLS["postgresql"], help="PostgreSQL server URL")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--checkouts", type=int, default=2000, help="complete checkouts to time")
    parser.add_argument("--warmup", type=int, default=200, help="checkouts before the clock starts")
    parser.add_argument("--workers", type=int, default=2, help="`billfold serve --workers`")
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--runs", type=int, default=1, help="measure this many times (same server setup each time)")
    parser.add_argument("--pgbench-seconds", type=int, default=15, help="0: skip the ceiling")
    parser.add_argument("--profile", type=int, default=0, metavar="SECONDS", help="py-spy the server's workers")
    parser.add_argument("--profile-out", default=str(Path(tempfile.gettempdir()) / "billfold-checkout-profile"))
    parser.add_argument("--profile-gil", action="store_true",
                        help="sample only the thread holding the GIL (where the CPU goes), not every thread (where requests wait)")
    parser.add_argument("--trace", action="store_true", help="print every statement of one checkout")
    parser.add_argument("--one-request", action="store_true",
                        help="also time the same sale as one POST /v1/checkouts, in each run after the two-request sale (the baseline)")
    parser.add_argument("--provider-latency-ms", type=int, default=0,
                        help="the server's sandbox waits this long per call (BILLFOLD_SANDBOX_LATENCY_MS)")
    parser.add_argument("--provider-jitter-ms", type=int, default=0, help="and up to this much more, at random")
    parser.add_argument("--database-name", default=DATABASE, help="the database this run drops and creates")
    parser.add_argument("--no-bare", dest="bare", action="store_false",
                        help="skip the bare app (bench/bare_checkout.py) timed after each of Billfold's runs")
    args = parser.parse_args()
    if args.provider_latency_ms or args.provider_jitter_ms:
        print(f"sandbox latency: {args.provider_latency_ms} ms + up to {args.provider_jitter_ms} ms per call")

    print(f"load before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} on {os.cpu_count()} cores")
    engine, seeds = setup_database(args.database, args.customers, args.database_name)
    try:
        with tempfile.TemporaryDirectory(prefix="billfold-bench-") as folder:
            data_dir = Path(folder)
            groups = trace(engine, seeds, data_dir)
            print(f"one complete checkout: {summarise(groups)}")
            traced = sum(1 for g in groups for x in g if x not in ("-", "COMMIT", "ROLLBACK"))
            if traced != PGBENCH_STATEMENTS:
                print(f"WARNING: the pgbench script has {PGBENCH_STATEMENTS} statements, a checkout now {traced}: update it")
            if args.trace:
                for n, group in enumerate(groups, 1):
                    print(f"  transaction {n}:")
                    for statement in group:
                        print(f"    {statement}")
            if args.one_request:
                print(f"one checkout in one request: {summarise(trace(engine, seeds, data_dir, one_request=True))}")
            results = []
            single: list[dict[str, Any]] = []
            bare: dict[bool, list[tuple[dict[str, Any], dict[str, Any]]]] = {False: [], True: []}
            for run in range(args.runs):
                for one_request in (False, True) if args.one_request else (False,):
                    r = measure(engine, seeds, data_dir, args, one_request)
                    (single if one_request else results).append(r)
                    label = "one request" if one_request else "two requests" if args.one_request else ""
                    report(run, args, r, label)
                    if args.bare:  # right after, for as long, with the same clients and the same sale
                        b = measure(engine, seeds, data_dir, args, one_request, bare_seconds=r["elapsed"])
                        bare[one_request].append((r, b))
                        report(run, args, b, f"bare app{f', {label}' if label else ''}")
                        print(f"       Billfold / bare app, this run: {r['rate'] / b['rate']:.1%} of its sales/s"
                              + (f", {r['cpu']['server'] / b['cpu']['server']:.1f}x its server CPU a sale" if b["cpu"] else ""))
            best = max(r["rate"] for r in results)
            rates = sorted(r["rate"] for r in results)
            print(f"ours: best {best:.1f} checkouts/s, spread {rates[0]:.1f}–{rates[-1]:.1f} over {len(rates)} runs")
            if single:
                one = sorted(r["rate"] for r in single)
                p50 = (statistics.median(r["p50"] for r in results), statistics.median(r["p50"] for r in single))
                print(f"one request: best {one[-1]:.1f} checkouts/s, spread {one[0]:.1f}–{one[-1]:.1f} over {len(one)} runs; "
                      f"best one request / best two requests: {one[-1] / best:.2f}; median p50 {p50[1]:.1f} ms against {p50[0]:.1f} ms")
            for one_request, pairs in bare.items():
                if not pairs:
                    continue
                rates = sorted(b["rate"] for _, b in pairs)
                ours = max(r["rate"] for r, _ in pairs)
                ratios = ", ".join(f"{r['rate'] / b['rate']:.1%}" for r, b in pairs)
                cpu = ", ".join(f"{r['cpu']['server']:.1f} / {b['cpu']['server']:.1f}" for r, b in pairs if b["cpu"])
                print(f"ceiling: the bare app (bench/bare_checkout.py: FastAPI + psycopg_pool, the pgbench script's "
                      f"statements{', one request' if one_request else ''}), {args.clients} clients, {args.workers} workers: "
                      f"best {rates[-1]:.1f} checkouts/s, spread {rates[0]:.1f}–{rates[-1]:.1f}; "
                      f"p50 {statistics.median(b['p50'] for _, b in pairs):.1f} ms, "
                      f"p99 {statistics.median(b['p99'] for _, b in pairs):.1f} ms (medians)")
                print(f"ratio Billfold / bare app{' (one request)' if one_request else ''}: best / best {ours / rates[-1]:.1%}; "
                      f"run by run {ratios}" + (f"; server CPU ms a sale, Billfold / bare, run by run: {cpu}" if cpu else ""))
            if args.pgbench_seconds:
                pg_clients = min(args.clients, 32)  # PostgreSQL's max_connections is 100, shared with others
                tps, latency, _ = pgbench(engine.url, pg_clients, args.pgbench_seconds, args.customers, seeds, data_dir)
                print(f"ceiling: pgbench, the same database work per checkout, {pg_clients} clients, "
                      f"{args.pgbench_seconds} s: {tps:.1f} checkouts/s (latency average {latency:.1f} ms)")
                print(f"ratio ours / ceiling: {best / tps:.1%}"
                      + (f"; bare app / pgbench: {max(b['rate'] for _, b in bare[False]) / tps:.1%}" if bare[False] else ""))
            if args.profile:
                print(f"profile: {args.profile_out}.<pid> (py-spy raw stacks)")
            print(f"load after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    finally:
        engine.dispose()
        databases.drop_database("postgresql", engine.url)


if __name__ == "__main__":
    main()
