"""The sandbox provider's store alone: charges per second through ``SandboxProvider.charge`` on a
state file, beside the bare SQLite ceiling measured in the same run.

Each charge is ``tok_sandbox_visa`` with a key of its own (what checkout asks of the sandbox).
Two shapes: one thread in one process, then P processes x T threads sharing one state file (the
API's uvicorn workers and their threadpools). The ceiling is the same shapes doing the least a
shared-file writer can do: ``BEGIN IMMEDIATE``, one INSERT, ``COMMIT`` on a file with the store's
pragmas. Printed: charges/s and p50/p99 of one call, for each.

    .venv/bin/python bench/sandbox.py [--charges 3000] [--processes 2] [--threads 16] [--latency-ms 0]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from billfold.kit.money import Money  # noqa: E402
from billfold.providers.sandbox import SandboxProvider  # noqa: E402
from billfold.providers.sandbox.store import BUSY_TIMEOUT_MS  # noqa: E402


def _raw_worker(path: str, count: int, out: list[float]) -> None:
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA synchronous = NORMAL")
    for _ in range(count):
        started = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (id, v) VALUES (?, ?)", (uuid.uuid4().hex, "x" * 200))
        db.execute("COMMIT")
        out.append(time.perf_counter() - started)
    db.close()


def _store_worker(path: str, count: int, out: list[float], latency_ms: int) -> None:
    provider = SandboxProvider("sandbox", {"state_path": path, "latency_ms": latency_ms} if latency_ms else
                               {"state_path": path})
    amount = Money(1999, "USD")
    for _ in range(count):
        started = time.perf_counter()
        provider.charge(amount=amount, token="tok_sandbox_visa", idempotency_key=f"bench-{uuid.uuid4().hex}")
        out.append(time.perf_counter() - started)


def _process(kind: str, path: str, threads: int, per_thread: int, latency_ms: int, start: object, results: object) -> None:
    latencies: list[float] = []
    target = _raw_worker if kind == "raw" else _store_worker
    extra = () if kind == "raw" else (latency_ms,)
    workers = [threading.Thread(target=target, args=(path, per_thread, latencies, *extra)) for _ in range(threads)]
    start.wait()  # type: ignore[attr-defined]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.put(latencies)  # type: ignore[attr-defined]


def prepare(kind: str, folder: Path) -> str:
    path = str(folder / f"{kind}-{uuid.uuid4().hex[:8]}.sqlite3")
    if kind == "raw":
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT NOT NULL)")
        db.close()
    else:
        SandboxProvider("sandbox", {"state_path": path}).close()
    return path


def run(kind: str, folder: Path, processes: int, threads: int, charges: int, latency_ms: int) -> tuple[float, list[float]]:
    path = prepare(kind, folder)
    per_thread = max(1, charges // (processes * threads))
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    children = [context.Process(target=_process, args=(kind, path, threads, per_thread, latency_ms, start, results))
                for _ in range(processes)]
    for child in children:
        child.start()
    time.sleep(1.0)  # let the children import and open their files before the clock starts
    began = time.perf_counter()
    start.set()
    latencies: list[float] = []
    for _ in children:
        latencies.extend(results.get())
    elapsed = time.perf_counter() - began
    for child in children:
        child.join()
    return len(latencies) / elapsed, latencies


def line(label: str, rate: float, latencies: list[float]) -> str:
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (f"{label:<56} {rate:7.0f}/s  p50 {statistics.median(ms):6.2f} ms  p99 {p99:7.2f} ms"
            f"  max {ms[-1]:7.1f} ms  (n={len(ms)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--charges", type=int, default=3000, help="charges per shape")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16, help="threads per process in the concurrent shape")
    parser.add_argument("--latency-ms", type=int, default=0, help="the sandbox's latency_ms for the store's runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="billfold-bench-sandbox-") as folder:
        for label, processes, threads in (("1 process x 1 thread", 1, 1),
                                          (f"{args.processes} processes x {args.threads} threads", args.processes,
                                           args.threads)):
            rate, latencies = run("raw", Path(folder), processes, threads, args.charges, 0)
            print(line(f"ceiling (BEGIN IMMEDIATE, INSERT, COMMIT), {label}", rate, latencies), flush=True)
            rate, latencies = run("store", Path(folder), processes, threads, args.charges, args.latency_ms)
            print(line(f"sandbox charge, {label}", rate, latencies), flush=True)


if __name__ == "__main__":
    main()
