"""Webhook events verified and stored per second over HTTP (`POST /v1/webhooks/{provider_id}`),
beside the database's own ceiling for the same rows, measured in the same run.

1. A fresh, migrated database with an active sandbox provider.
2. E signed sandbox deliveries made before the clock starts (Standard Webhooks headers, as the
   sandbox signs them), each a distinct event.
3. `billfold serve --workers W --no-access-log` as a subprocess; C client threads post the
   deliveries; printed: events/s, p50/p95/p99 latency, answers by status.
4. A tenth of the events delivered again: each must be answered as a duplicate and add no row.
5. The ceiling: C threads, each on its own connection, insert the same number of rows into
   `payment_webhooks` with one INSERT and one commit per event (what storing an event needs of
   the database, without HTTP, verification or Python's app), and the ratio of the two.

    .venv/bin/python bench/webhooks.py --database postgresql://postgres@127.0.0.1/postgres
    .venv/bin/python bench/webhooks.py --events 5000 --clients 32 --workers 2

The load generator runs on the same two cores as the server and the database.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from checkout import serve, server_pids  # noqa: E402

from billfold.kit.db import create_engine, session_factory  # noqa: E402
from billfold.models import PaymentProvider, PaymentWebhook  # noqa: E402
from billfold.providers import standard_webhooks  # noqa: E402
from billfold.providers.sandbox.provider import DEFAULT_WEBHOOK_SECRET  # noqa: E402
from tests import databases  # noqa: E402

PROVIDER = "sandbox"


def deliveries(count: int) -> list[tuple[bytes, dict[str, str]]]:
    """``count`` distinct, signed sandbox events about charges (bodies as the sandbox writes them)."""
    made = []
    now = datetime.now(UTC)
    for _ in range(count):
        event_id = f"evt_sandbox_{uuid.uuid4().hex}"
        body = json.dumps({
            "id": event_id, "type": "charge.succeeded", "timestamp": now.isoformat(),
            "data": {"object_type": "charge", "object_id": f"ch_sandbox_{uuid.uuid4().hex}", "object": {}},
        }, separators=(",", ":"), sort_keys=True).encode()
        made.append((body, {**standard_webhooks.sign(DEFAULT_WEBHOOK_SECRET, event_id, body), "content-type": "application/json"}))
    return made


def post_all(base: str, work: list[tuple[bytes, dict[str, str]]], clients: int) -> tuple[float, list[float], collections.Counter[str]]:
    latencies: list[float] = []
    statuses: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    shares = [work[i::clients] for i in range(clients)]

    def client(share: list[tuple[bytes, dict[str, str]]]) -> None:
        mine, seen = [], collections.Counter()
        with httpx.Client(base_url=base, timeout=60) as http:
            for body, headers in share:
                started = time.perf_counter()
                answer = http.post(f"/v1/webhooks/{PROVIDER}", content=body, headers=headers)
                mine.append(time.perf_counter() - started)
                seen[f"{answer.status_code}{' duplicate' if answer.status_code == 200 and answer.json().get('duplicate') else ''}"] += 1
        with lock:
            latencies.extend(mine)
            statuses.update(seen)

    threads = [threading.Thread(target=client, args=(share,)) for share in shares]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies, statuses


def ceiling(engine: sa.Engine, count: int, clients: int) -> float:
    """Rows like the inbox's, one INSERT and one commit each, from ``clients`` connections."""
    table = PaymentWebhook.__table__
    per = count // clients

    def insert() -> None:
        with engine.connect() as connection:
            for _ in range(per):
                event_id = f"evt_ceiling_{uuid.uuid4().hex}"
                connection.execute(table.insert().values(
                    id=f"whk_{uuid.uuid4().hex[:26]}", provider_id=PROVIDER, event_type="charge.succeeded",
                    payload={"id": event_id, "type": "charge.succeeded"}, processed=False, provider_event_id=event_id,
                ))
                connection.commit()

    threads = [threading.Thread(target=insert) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return per * clients / (time.perf_counter() - started)


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU seconds used so far by these processes (from /proc, as `ps` reads it)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def percentile(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100)[int(p) - 1] if len(values) >= 2 else (values[0] if values else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    backend = "postgresql" if args.database.startswith("postgres") else "mariadb" if "maria" in args.database or "mysql" in args.database else "sqlite"
    if backend != "sqlite":
        databases.SERVER_URLS[backend] = args.database
    data_dir = Path(tempfile.mkdtemp(prefix="billfold-bench-webhooks-"))
    url = databases.fresh_database(backend, "billfold_bench_webhooks", data_dir)
    engine = create_engine(url, pool_size=args.clients, max_overflow=0)
    databases.migrate(engine)
    with session_factory(engine).begin() as session:
        session.add(PaymentProvider(id=PROVIDER, display_name="Sandbox", is_active=True, config={"kind": "sandbox"}))

    work = deliveries(args.events)
    warm = deliveries(200)
    with serve(url.render_as_string(hide_password=False), data_dir, args.workers) as (server, base):
        post_all(base, warm, min(args.clients, 8))
        before = cpu_seconds(server_pids(server))
        elapsed, latencies, statuses = post_all(base, work, args.clients)
        server_ms = (cpu_seconds(server_pids(server)) - before) * 1000 / args.events
        again = work[: max(1, args.events // 10)]
        _, _, repeated = post_all(base, again, args.clients)
    with engine.connect() as connection:
        stored = connection.scalar(sa.select(sa.func.count()).select_from(PaymentWebhook))
    rate = args.events / elapsed
    best = ceiling(engine, args.events, args.clients)

    print(f"database {backend}, {args.events} events, {args.clients} clients, {args.workers} server workers")
    print(f"over HTTP: {rate:,.0f} events/s in {elapsed:.1f} s; latency p50 {percentile(latencies, 50) * 1000:.1f} ms, "
          f"p95 {percentile(latencies, 95) * 1000:.1f} ms, p99 {percentile(latencies, 99) * 1000:.1f} ms")
    print(f"server CPU per event: {server_ms:.2f} ms (all its processes; {1000 / server_ms:,.0f} events/s per core at most)")
    print(f"answers: {dict(statuses)}; the same {len(again)} again: {dict(repeated)}")
    print(f"rows stored: {stored} for {args.events + len(warm)} distinct events")
    print(f"ceiling (INSERT + COMMIT per row, {args.clients} connections): {best:,.0f} rows/s; HTTP is {rate / best:.0%} of it")
    engine.dispose()
    databases.drop_database(backend, url)


if __name__ == "__main__":
    main()
