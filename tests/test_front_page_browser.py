"""The front page in a real browser: ``billfold up`` on a fresh SQLite file (migrate, load the demo,
serve), then the system's Chromium, driven by Playwright, looks at it as a visitor would.

Chromium is Debian's ``/usr/bin/chromium``; Playwright never downloads a browser here. Without
Chromium these tests fail, saying how to install it; they do not skip.

The browser may only talk to the test server: every other request is aborted and recorded, and
none may be made. The API reference (/docs) gets Swagger UI from Billfold
itself, so the test sees the rendered reference, with its operations, offline.

Screenshot: ``BILLFOLD_SCREENSHOT=docs/front-page.png pytest tests/test_front_page_browser.py``
saves the front page with the demo data, 1200×800, to that path (relative to the repository).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa

from billfold.kit.db import create_engine
from billfold.models import Organization, Product, User
from tests.server import free_port

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1200, "height": 800}
REPOSITORY = Path(__file__).resolve().parents[1]
BILLFOLD = str(Path(sys.executable).with_name("billfold"))
STARTUP_SECONDS = 60


@dataclass
class Server:
    url: str
    database_url: str
    log: Path

    def counts(self) -> dict[str, int]:
        """What the database holds, read directly, in the front page's words."""
        engine = create_engine(self.database_url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as connection:
                customers = sa.select(sa.func.count()).select_from(User).where(User.user_type != "admin")
                return {
                    "products": connection.scalar(sa.select(sa.func.count()).select_from(Product)),
                    "customers": connection.scalar(customers),
                    "organizations": connection.scalar(sa.select(sa.func.count()).select_from(Organization)),
                }
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``billfold up`` as a subprocess on a free port, terminated when the module is done."""
    folder = tmp_path_factory.mktemp("front-page")
    database_url = f"sqlite:///{folder / 'billfold.db'}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}
    env |= {"BILLFOLD_DATABASE_URL": database_url, "COLUMNS": "200"}
    log = folder / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [BILLFOLD, "up", "--host", "127.0.0.1", "--port", str(port), "--demo-months", "1"],
            cwd=folder, env=env, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_healthy(process, url, log)
        yield Server(url, database_url, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_until_healthy(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        if process.poll() is not None:
            pytest.fail(f"`billfold up` exited with {process.returncode} before serving:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"`billfold up` did not answer {url}/healthz within {STARTUP_SECONDS} s:\n{log.read_text()}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}; these browser tests need it. "
            "Install it with `apt-get install chromium` (never `playwright install`)."
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Visit:
    page: object  # playwright.sync_api.Page
    blocked: list[str]
    console: list[str]  # what the browser said, such as a refusal by the page's Content-Security-Policy

    def refused_by_policy(self) -> list[str]:
        return [line for line in self.console if "Content Security Policy" in line]


@pytest.fixture
def visit(browser, server: Server) -> Iterator[Visit]:
    """A fresh page that may reach the test server and nothing else."""
    context = browser.new_context(viewport=VIEWPORT, locale="en-US")
    blocked: list[str] = []

    def only_the_server(route) -> None:
        if route.request.url.startswith(server.url + "/"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_server)
    page = context.new_page()
    page.set_default_timeout(15_000)
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    try:
        yield Visit(page, blocked, console)
    finally:
        context.close()


def test_the_front_page_shows_what_the_database_holds(visit: Visit, server: Server) -> None:
    page = visit.page
    response = page.goto(server.url + "/")
    assert response is not None and response.status == 200
    assert page.title() == "Billfold"
    assert page.locator("h1").inner_text() == "Billfold"

    status = page.locator("p", has_text="This instance holds").inner_text()
    shown = {label: int(n) for n, label in re.findall(r"(\d+) (\w+)", status)}
    held = server.counts()
    assert shown == held, f"the page says {status!r}; the database holds {held}"
    assert held["products"] > 0 and held["customers"] > 0 and held["organizations"] > 0, "the demo was loaded"
    assert visit.blocked == [], "the front page needs nothing from outside"
    assert visit.refused_by_policy() == [], "its security policy lets the page show itself (its inline style)"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]

    screenshot = os.environ.get("BILLFOLD_SCREENSHOT")
    if screenshot:
        save_screenshot(page, REPOSITORY / screenshot)


def test_the_api_reference_link_opens_swagger_ui(visit: Visit, server: Server) -> None:
    page = visit.page
    page.goto(server.url + "/")
    with page.expect_response(lambda r: urlsplit(r.url).path == "/docs") as docs:
        page.get_by_role("link", name="API reference").click()
    page.wait_for_url(server.url + "/docs")
    assert docs.value.status == 200
    assert page.title() == "Billfold API"
    # Swagger UI ran (its script came from this server) and drew the operations of /openapi.json.
    page.locator(".opblock-summary-path").first.wait_for(timeout=30_000)
    assert page.get_by_text("/v1/orders/{order_id}/checkout").count() >= 1
    assert visit.blocked == [], "nothing is fetched from anywhere but Billfold"
    assert visit.refused_by_policy() == [], visit.console
    assert "frame-ancestors 'none'" in docs.value.headers["content-security-policy"]


def test_the_openapi_document_is_json_titled_billfold(visit: Visit, server: Server) -> None:
    page = visit.page
    page.goto(server.url + "/")
    with page.expect_response(lambda r: urlsplit(r.url).path == "/openapi.json") as info:
        page.get_by_role("link", name="OpenAPI document").click()
    response = info.value
    assert response.status == 200
    assert response.headers["content-type"].startswith("application/json")
    document = response.json()
    assert document["info"]["title"] == "Billfold"
    assert document["openapi"].startswith("3.")
    assert "/healthz" in document["paths"]


def save_screenshot(page, path: Path) -> None:
    """The page as shown at 1200×800, saved as a PNG at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size(VIEWPORT)
    page.screenshot(path=str(path), full_page=False)
