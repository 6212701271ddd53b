"""Entitlement checks per second over HTTP (issue 13), beside a bare ASGI app's ceiling in the same run.

1. A fresh, migrated database populated as ``bench/entitlements.py`` does (N users with
   memberships, organizations of five with one bought by an order); a session token (bearer) for
   S of the users and one admin API key with the ``read`` scope, made before the clock starts.
2. The server: uvicorn with W worker processes on ``billfold.api:create_app`` (what
   ``billfold serve --workers W`` runs), or with ``--route fastapi`` the same app without its
   entitlement door (the FastAPI endpoints: the route as it was before issue 13).
3. The load: ``wrk`` (one thread, C connections, for T seconds) cycling pre-made requests: half
   ``GET /v1/me/entitlements/{feature}`` with a user's session token (half of those with
   ``?organization_id=`` the user's organization), half ``GET /v1/users/{id}/entitlements/{feature}``
   with the API key. Two runs on the same server: the first asks checks no worker has answered
   before (each one read from the database), then, after ``--warm-seconds`` of the same load
   unmeasured, the second (``--kept-seconds``, a minute by default, so that it holds one note of
   each credential's last use) asks checks both workers have answered before: what the door keeps
   (``BILLFOLD_ENTITLEMENT_CACHE``) answers them while nothing they depend on changes. Printed for
   each: checks/s, latency p50/p90/p99, non-2xx answers (must be 0), the server's CPU per check
   (its processes, from /proc), the database's transactions per check, and how often the change
   marks moved (none: the load writes nothing a check depends on).
4. The ceiling: a bare ASGI app answering a constant JSON on uvicorn with the same workers, loaded
   by wrk alike; and the ratio.

    .venv/bin/python bench/entitlements_http.py                     # PostgreSQL on 127.0.0.1
    .venv/bin/python bench/entitlements_http.py --route fastapi     # today's route, for comparison
    .venv/bin/python bench/entitlements_http.py -n 10000 --seconds 10 --clients 64 --workers 2

The load generator runs on the same cores as the server and the database.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from checkout import SECRET_KEY, free_port, server_pids  # noqa: E402
from entitlements import FEATURES, populate  # noqa: E402
from webhooks import cpu_seconds  # noqa: E402

from billfold.accounts.api_keys import create_api_key  # noqa: E402
from billfold.accounts.sessions import open_session  # noqa: E402
from billfold.kit.db import create_engine, session_factory  # noqa: E402
from billfold.kit.db.changes import marks_for  # noqa: E402
from billfold.models import User  # noqa: E402
from tests import databases  # noqa: E402

APPS = '''
from billfold.api import create_app
from billfold.memberships.door import EntitlementDoor


def without_door():
    """The app with its entitlement door taken out: the checks go through FastAPI."""
    app = create_app()
    app.doors = tuple(door for door in app.doors if not isinstance(door, EntitlementDoor))
    return app


async def bare(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b'{"feature":"reports","allowed":true,"membership_id":"umem_01KBARE00000000000000000","until":null,"via":"membership","organization_id":null}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
'''

WRK_SCRIPT = r"""
-- Pre-made checks, two lines each (path with its query, Authorization header), cycled.
local requests, next_one = {}, 0
function init(args)
  local file = io.open(args[1])
  while true do
    local path = file:read("*l")
    if not path then break end
    local authorization = file:read("*l")
    requests[#requests + 1] = wrk.format("GET", path, {["authorization"] = authorization})
  end
  file:close()
end
function request()
  next_one = next_one % #requests + 1
  return requests[next_one]
end
"""


def credentials(engine: sa.Engine, user_ids: list[str], sessions: int) -> tuple[dict[str, str], str]:
    """Session tokens (bearer) for ``sessions`` of the users, and an admin API key that may read."""
    tokens = {}
    with session_factory(engine).begin() as session:
        for user in session.scalars(sa.select(User).where(User.id.in_(user_ids[:sessions]))):
            _, tokens[user.id] = open_session(session, user, transport="bearer", address=None, user_agent="bench", days=30)
        _, key = create_api_key(session, name="bench", scopes=["read"], created_by=None)
    return tokens, key


def checks(tokens: dict[str, str], key: str, organization_of: dict[str, str], count: int, rng: random.Random) -> list[tuple[str, str]]:
    users = list(tokens)
    made = []
    for i in range(count):
        user, feature = rng.choice(users), rng.choice(FEATURES)
        if i % 2:
            made.append((f"/v1/users/{user}/entitlements/{feature}", f"Bearer {key}"))
        elif i % 4 == 0 and user in organization_of:
            made.append((f"/v1/me/entitlements/{feature}?organization_id={organization_of[user]}", f"Bearer {tokens[user]}"))
        else:
            made.append((f"/v1/me/entitlements/{feature}", f"Bearer {tokens[user]}"))
    return made


def sessions_opened(engine: sa.Engine) -> int:
    """Connections (sessions) the database has opened so far (PostgreSQL 14+'s statistics)."""
    return database_counts(engine)[0]


def moves(engine: sa.Engine) -> tuple[int, int]:
    """How often the database's change marks (``kit.db.changes``) have moved so far: any, and
    the one that stands for everything (a write no mark names)."""
    snapshot = marks_for(engine.url).snapshot()
    values = memoryview(snapshot).cast("Q")
    return sum(values), values[0]


def database_counts(engine: sa.Engine) -> tuple[int, int]:
    """Connections opened and transactions committed so far in the database (PostgreSQL 14+'s
    statistics; a check answered from the database commits one transaction, a kept one none)."""
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        row = connection.execute(sa.text("SELECT sessions, xact_commit FROM pg_stat_database WHERE datname = current_database()")).one()
        return int(row[0]), int(row[1])


def start(target: str, folder: Path, env: dict[str, str], workers: int, factory: bool = True) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", target, *(["--factory"] if factory else []), "--port", str(port), "--workers", str(workers), "--no-access-log", "--log-level", "warning"],
        cwd=folder, env={**env, "BILLFOLD_PUBLIC_URL": f"http://127.0.0.1:{port}"},
        stdout=open(folder / f"serve-{port}.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {(folder / f'serve-{port}.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return server, base
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not start in 60 s")
        time.sleep(0.1)


def stop(server: subprocess.Popen[bytes]) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait()


def load(base: str, folder: Path, clients: int, seconds: float) -> tuple[int, dict[str, float], int]:
    """wrk's requests, latency percentiles (ms) and non-2xx answers."""
    result = subprocess.run(
        ["wrk", "-t", "1", "-c", str(clients), "-d", f"{max(1, round(seconds))}s", "--latency", "--timeout", "30s",
         "-s", str(folder / "checks.lua"), base, "--", str(folder / "checks.txt")],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed: {result.stderr or result.stdout}")
    text = result.stdout
    total = int(re.search(r"(\d+) requests in", text).group(1))
    latency = {label: float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
               for label, value, unit in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)}
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if errors := re.search(r"Socket errors: .*", text):
        print(f"wrk: {errors.group(0)}")
    return total, latency, int(failed.group(1)) if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--route", choices=("door", "fastapi"), default="door")
    parser.add_argument("-n", "--users", type=int, default=10_000)
    parser.add_argument("--sessions", type=int, default=1_000, help="users signed in (each check names one of them)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warm-seconds", type=float, default=40.0,
                        help="after the first run (checks never asked before), wrk goes on this long unmeasured, "
                        "then a second run measures checks each worker has answered before")
    parser.add_argument("--kept-seconds", type=float, default=60.0,
                        help="the second run's length: a minute holds one note of each credential's last use")
    args = parser.parse_args()

    backend = "postgresql" if args.database.startswith("postgres") else "mariadb"
    databases.SERVER_URLS[backend] = args.database
    folder = Path(tempfile.mkdtemp(prefix="billfold-bench-entitlements-http-"))
    url = databases.fresh_database(backend, "billfold_bench_entitlements_http", folder)
    engine = create_engine(url)
    databases.migrate(engine)
    rng = random.Random(7)
    user_ids, organization_of = populate(engine, args.users, rng)
    tokens, key = credentials(engine, user_ids, args.sessions)
    work = checks(tokens, key, organization_of, 20_000, rng)
    (folder / "checks.txt").write_text("".join(f"{path}\n{authorization}\n" for path, authorization in work))
    (folder / "checks.lua").write_text(WRK_SCRIPT)
    (folder / "bench_apps.py").write_text(APPS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}
    env.update(BILLFOLD_DATABASE_URL=url.render_as_string(hide_password=False), BILLFOLD_DATA_DIR=str(folder),
               BILLFOLD_SECRET_KEY=SECRET_KEY, PYTHONPATH=str(folder))

    target = "billfold.api:create_app" if args.route == "door" else "bench_apps:without_door"
    server, base = start(target, folder, env, args.workers)
    try:
        with httpx.Client(base_url=base) as client:  # every kind of check answers 200, warming both workers
            for path, authorization in work[:200]:
                answer = client.get(path, headers={"authorization": authorization})
                assert answer.status_code == 200, (path, answer.status_code, answer.text)
        runs = []
        for phase in ("first asked", "asked before"):
            if phase == "asked before":
                load(base, folder, args.clients, args.warm_seconds)
            before, (opened, committed) = cpu_seconds(server_pids(server)), database_counts(engine)
            moved = moves(engine)
            seconds = args.seconds if phase == "first asked" else args.kept_seconds
            sent, latency, failed = load(base, folder, args.clients, seconds)
            server_cpu = cpu_seconds(server_pids(server)) - before
            now_opened, now_committed = database_counts(engine)
            moved = tuple(after - first for after, first in zip(moves(engine), moved))
            runs.append((phase, seconds, sent, latency, failed, server_cpu, now_opened - opened, now_committed - committed, moved))
    finally:
        stop(server)
    bare_server, bare_base = start("bench_apps:bare", folder, env, args.workers, factory=False)
    try:
        bare_sent, bare_latency, _ = load(bare_base, folder, args.clients, args.seconds)
    finally:
        stop(bare_server)
    bare = bare_sent / args.seconds  # wrk runs for exactly that long
    print(f"database {backend}, route {args.route}, {args.users} users ({len(tokens)} signed in), {len(set(work))} different checks, "
          f"{args.clients} connections, {args.workers} server workers, runs of {args.seconds:.0f} s and {args.kept_seconds:.0f} s")
    for phase, seconds, sent, latency, failed, server_cpu, opened, committed, moved in runs:
        rate = sent / seconds
        print(f"{phase}: {rate:,.0f} checks/s ({sent} requests, {failed} not 2xx); latency p50 {latency.get('50', 0):.2f} ms, "
              f"p90 {latency.get('90', 0):.2f} ms, p99 {latency.get('99', 0):.2f} ms; server CPU per check "
              f"{server_cpu * 1000 / max(sent, 1):.3f} ms (all its processes); database transactions {committed / max(sent, 1):.2f} "
              f"a check, connections opened {opened}; change marks moved {moved[0]} (all of them: {moved[1]}); "
              f"{rate / bare:.0%} of the ceiling")
    print(f"ceiling, a bare ASGI app answering a constant on uvicorn, {args.workers} workers, wrk alike: {bare:,.0f} requests/s "
          f"(p50 {bare_latency.get('50', 0):.2f} ms, p99 {bare_latency.get('99', 0):.2f} ms)")
    engine.dispose()
    databases.drop_database(backend, url)


if __name__ == "__main__":
    main()
