"""Webhook events verified and stored per second over HTTP (`POST /v1/webhooks/{provider_id}`),
beside the database's own ceilings for the same rows, measured in the same run.

1. A fresh, migrated database with an active sandbox provider.
2. Signed sandbox deliveries made before the clock starts (Standard Webhooks headers, as the
   sandbox signs them), each a distinct event.
3. `billfold serve --workers W --no-access-log` as a subprocess. The load: `wrk` (C, one thread,
   C connections, for S seconds; Debian's package `wrk`), each request a different event, or with
   `--load python` C httpx client threads posting E events. Printed: events stored per second,
   latency percentiles, answers by status, the server's CPU per event, and how many commits the
   database made per event (`pg_stat_database`: the door writes the events arriving together in
   one transaction).
4. A tenth of the events delivered again: each must be answered as a duplicate and add no row.
5. The ceilings: the same rows inserted straight into `payment_webhooks` from C connections,
   (a) one INSERT and one commit per row, (b) 50 rows per INSERT and commit; what storing events
   needs of the database, without HTTP, verification or Python's app; and the ratio to each.

    .venv/bin/python bench/webhooks.py --database postgresql://postgres@127.0.0.1/postgres
    .venv/bin/python bench/webhooks.py --seconds 10 --clients 64 --workers 2
    .venv/bin/python bench/webhooks.py --load python --events 5000 --clients 32

The load generator runs on the same two cores as the server and the database.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
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

from checkout import free_port, serve, server_pids  # noqa: E402

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


WRK_SCRIPT = r"""
-- Each request a different signed event, read from the file the bench wrote (four lines each:
-- webhook-id, webhook-timestamp, webhook-signature, body); each wrk thread takes its share.
local requests, next_one = {}, 0
function setup(thread)
  thread:set("share", shares or 0)
  shares = (shares or 0) + 1
end
function init(args)
  local file, n = io.open(args[1]), 0
  local threads = tonumber(args[2])
  while true do
    local id = file:read("*l")
    if not id then break end
    local stamp, signature, body = file:read("*l"), file:read("*l"), file:read("*l")
    if n % threads == share then
      requests[#requests + 1] = wrk.format("POST", args[3], {
        ["webhook-id"] = id, ["webhook-timestamp"] = stamp, ["webhook-signature"] = signature,
        ["content-type"] = "application/json"}, body)
    end
    n = n + 1
  end
  file:close()
end
function request()
  next_one = next_one % #requests + 1
  return requests[next_one]
end
"""


def post_with_wrk(base: str, work: list[tuple[bytes, dict[str, str]]], clients: int, seconds: float,
                  folder: Path) -> tuple[int, dict[str, float], int, str]:
    """wrk's requests, latency percentiles (ms), non-2xx answers and its summary, posting ``work``
    (cycled if it runs out: those answers are duplicates, counted by the rows stored)."""
    requests = folder / "deliveries.txt"
    with requests.open("wb") as out:
        for body, headers in work:
            out.write(b"\n".join([headers["webhook-id"].encode(), headers["webhook-timestamp"].encode(),
                                   headers["webhook-signature"].encode(), body]) + b"\n")
    script = folder / "deliveries.lua"
    script.write_text(WRK_SCRIPT)
    threads = 1
    result = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{max(1, round(seconds))}s", "--latency", "--timeout", "30s",
         "-s", str(script), base, "--", str(requests), str(threads), f"/v1/webhooks/{PROVIDER}"],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed: {result.stderr or result.stdout}")
    text = result.stdout
    total = int(re.search(r"(\d+) requests in", text).group(1))
    latency = {}
    for label, value, unit in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE):
        latency[label] = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: .*", text)
    if errors:
        print(f"wrk: {errors.group(0)}")
    return total, latency, int(failed.group(1)) if failed else 0, text


BARE_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    body = b'{"id":"whk_01KBARE0000000000000000000","duplicate":false}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""


def bare_ceiling(work: list[tuple[bytes, dict[str, str]]], clients: int, seconds: float, workers: int,
                 folder: Path) -> float:
    """Requests/s of an ASGI app that reads each delivery and answers a constant, on uvicorn with
    the same workers, posted by wrk alike: what the HTTP server and the load generator allow on
    these cores, before any of Billfold's work."""
    (folder / "bare_app.py").write_text(BARE_APP)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(port), "--workers", str(workers),
         "--no-access-log", "--log-level", "warning"], cwd=folder, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the bare app did not start in 30 s") from None
                time.sleep(0.1)
        sent, _, _, _ = post_with_wrk(f"http://127.0.0.1:{port}", work, clients, seconds, folder)
        return sent / seconds
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()


def commits(engine: sa.Engine) -> int:
    """Transactions committed in the bench's database so far (PostgreSQL's statistics)."""
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        return int(connection.scalar(sa.text("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")))


def ceiling(engine: sa.Engine, count: int, clients: int, per_commit: int = 1) -> float:
    """Rows like the inbox's inserted from ``clients`` connections, ``per_commit`` rows in each
    INSERT and commit; rows per second."""
    table = PaymentWebhook.__table__
    rounds = max(1, count // clients // per_commit)

    def insert() -> None:
        with engine.connect() as connection:
            for _ in range(rounds):
                rows = []
                for _ in range(per_commit):
                    event_id = f"evt_ceiling_{uuid.uuid4().hex}"
                    rows.append({"id": f"whk_{uuid.uuid4().hex[:26]}", "provider_id": PROVIDER,
                                 "event_type": "charge.succeeded", "payload": {"id": event_id, "type": "charge.succeeded"},
                                 "processed": False, "provider_event_id": event_id})
                connection.execute(table.insert().values(rows))
                connection.commit()

    threads = [threading.Thread(target=insert) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return rounds * per_commit * clients / (time.perf_counter() - started)


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
    parser.add_argument("--load", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long wrk posts")
    parser.add_argument("--events", type=int, default=None,
                        help="distinct events made (default: 5,000 for python; 6,000 a second of wrk's run)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    events = args.events or (5000 if args.load == "python" else int(6000 * args.seconds))

    backend = "postgresql" if args.database.startswith("postgres") else "mariadb" if "maria" in args.database or "mysql" in args.database else "sqlite"
    if backend != "sqlite":
        databases.SERVER_URLS[backend] = args.database
    data_dir = Path(tempfile.mkdtemp(prefix="billfold-bench-webhooks-"))
    url = databases.fresh_database(backend, "billfold_bench_webhooks", data_dir)
    engine = create_engine(url, pool_size=args.clients, max_overflow=0)
    databases.migrate(engine)
    with session_factory(engine).begin() as session:
        session.add(PaymentProvider(id=PROVIDER, display_name="Sandbox", is_active=True, config={"kind": "sandbox"}))

    def stored() -> int:
        with engine.connect() as connection:
            return int(connection.scalar(sa.select(sa.func.count()).select_from(PaymentWebhook)))

    work = deliveries(events)
    warm = deliveries(200)
    with serve(url.render_as_string(hide_password=False), data_dir, args.workers) as (server, base):
        post_all(base, warm, min(args.clients, 8))
        rows_before = stored()
        commits_before = commits(engine) if backend == "postgresql" else 0
        before = cpu_seconds(server_pids(server))
        if args.load == "wrk":
            started = time.perf_counter()
            sent, latency, failed, summary = post_with_wrk(base, work, args.clients, args.seconds, data_dir)
            elapsed = time.perf_counter() - started
            statuses = {"sent": sent, "not 2xx": failed}
        else:
            elapsed, latencies, counted = post_all(base, work, args.clients)
            sent, statuses = len(work), dict(counted)
            latency = {label: percentile(latencies, int(label)) * 1000 for label in ("50", "90", "99")}
        server_cpu = cpu_seconds(server_pids(server)) - before
        new_rows = stored() - rows_before
        commits_made = (commits(engine) - commits_before) if backend == "postgresql" else 0
        # wrk asks its first thread's script for one request to check it, and never sends that one.
        skipped = 1 if args.load == "wrk" else 0
        again = work[skipped: skipped + max(1, min(len(work), new_rows) // 10)]
        _, _, repeated = post_all(base, again, min(args.clients, 32))
    rows_after = stored()
    bare = bare_ceiling(work, args.clients, args.seconds, args.workers, data_dir) if args.load == "wrk" else None
    rate = new_rows / elapsed
    one_by_one = ceiling(engine, max(2000, min(new_rows, 20000)), args.clients)
    grouped = ceiling(engine, max(10000, min(new_rows * 2, 100000)), args.workers, per_commit=50)

    print(f"database {backend}, load {args.load}, {args.clients} clients, {args.workers} server workers")
    print(f"over HTTP: {rate:,.0f} events stored/s ({new_rows} in {elapsed:.1f} s; {sent} requests, {statuses}); "
          f"latency p50 {latency.get('50', 0):.1f} ms, p90 {latency.get('90', 0):.1f} ms, p99 {latency.get('99', 0):.1f} ms")
    print(f"server CPU per request: {server_cpu * 1000 / max(sent, 1):.3f} ms (all its processes)")
    if backend == "postgresql":
        print(f"database commits per stored event: {commits_made / max(new_rows, 1):.3f} ({commits_made} commits)")
    print(f"{len(again)} of the first events again: {dict(repeated)}; rows after: {rows_after} (before the repeat: {rows_before + new_rows})")
    print(f"ceiling, INSERT + COMMIT per row, {args.clients} connections: {one_by_one:,.0f} rows/s; HTTP is {rate / one_by_one:.0%} of it")
    print(f"ceiling, 50 rows per INSERT + COMMIT, {args.workers} connections: {grouped:,.0f} rows/s; HTTP is {rate / grouped:.0%} of it")
    if bare is not None:
        print(f"ceiling, a bare ASGI app answering a constant on uvicorn, {args.workers} workers, wrk alike: "
              f"{bare:,.0f} requests/s; HTTP is {rate / bare:.0%} of it")
    engine.dispose()
    databases.drop_database(backend, url)


if __name__ == "__main__":
    main()
