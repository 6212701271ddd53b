"""The real app served by uvicorn on a free local port, in a thread, for tests that speak HTTP."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import APIRouter
from sqlalchemy.engine import Engine

from billfold.api import create_app
from billfold.config import Settings


def wait_for_health(process: subprocess.Popen[bytes], base: str, log: Path, seconds: float = 60) -> None:
    """Wait until the server ``process`` (its output in ``log``) answers ``GET /healthz`` with 200."""
    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(
    engine: Engine, data_dir: Path | None = None, routers: Sequence[APIRouter] = (), **settings: Any
) -> Iterator[str]:
    """Serve the app on ``engine``'s database, keeping its files (mail, key) in ``data_dir``, with
    any test-only ``routers`` added; yields the base URL. Links in its mail go to the served URL
    unless ``public_url`` says otherwise (a shop behind a proxy)."""
    port = free_port()
    configured = Settings(
        database_url=engine.url.render_as_string(hide_password=False),
        data_dir=data_dir or Path(tempfile.mkdtemp(prefix="billfold-")),
        **{"public_url": f"http://127.0.0.1:{port}", **settings},
    )
    app = create_app(configured, engine)
    for router in routers:
        app.include_router(router)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
