"""The FastAPI application: the service's HTTP face.

Every ``BillfoldError`` becomes an RFC 9457 problem document; so does a request that fails
validation, naming the field that was wrong.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from html import escape
from http import HTTPStatus
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio.to_thread
import fastapi_offline
import sqlalchemy as sa
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from billfold import __version__
from billfold.accounts import api as accounts_api
from billfold.accounts.organizations import api as organizations_api
from billfold.accounts.two_factor import api as two_factor_api
from billfold.accounts.auth import AnswerWritesWithoutReading
from billfold.accounts.security import Security
from billfold.analytics import api as analytics_api
from billfold.catalog import api as catalog_api
from billfold.invoices import api as invoices_api
from billfold.memberships import api as memberships_api
from billfold.orders import api as orders_api
from billfold.payments import api as payments_api
from billfold.subscriptions import api as subscriptions_api
from billfold.webhooks import api as webhooks_api
from billfold.webhooks.door import WebhookDoor
from billfold.memberships.door import EntitlementDoor
from billfold.notify import api as notify_api
from billfold.config import Settings, get_settings
from billfold import clock_api, instance
from billfold.kit import clock
from billfold import mailer
from billfold.kit.db import DATABASE_FAILURES, create_engine, one_line, pool_options, session_factory
from billfold.kit.db.changes import Keeper
from billfold.kit.headers import API_HEADERS, HeadAsGet, ResponseHeaders
from billfold.kit.http import AdmitRequests, LimitRequestBody, Problem, RefuseNulCharacters, refuse_unknown_query_parameters, database_busy, json_bytes, send_json, send_problem
from billfold.payments.card_guard import RedactCardNumbers, RefuseCardData
from billfold.kit.errors import BillfoldError, DatabaseUnavailable, InvalidInput
from billfold.models import Organization, Product, User
from billfold.wiring import wire

PROBLEM_JSON = "application/problem+json"


def problem_response(error: BillfoldError) -> JSONResponse:
    """The problem document of ``error``, with Retry-After when a retry may succeed later."""
    retry_in = error.retry_in()
    headers = {"Retry-After": str(retry_in)} if retry_in else None
    return JSONResponse(error.to_problem(), status_code=error.status, media_type=PROBLEM_JSON, headers=headers)


class WorkerHealth(BaseModel):
    """The background worker, by its heartbeat: every round of `billfold worker` (or the embedded
    worker) writes one. Renewals, dunning and expiry happen only while it runs."""

    status: Literal["ok", "late", "never", "unknown"] = Field(
        description="ok: a round within the last 2 minutes (or 3 ticks); late: none since; never: no worker has run "
        "against this database; unknown: the heartbeat could not be read (not migrated yet)."
    )
    last_seen: datetime | None = Field(description="When a worker last finished a round (UTC).")
    lag_seconds: int | None = Field(description="Seconds since then.")


class Health(BaseModel):
    status: str
    database: str
    version: str
    worker: WorkerHealth


def health_of(engine: Engine, worker_tick: float) -> Health:
    """``GET /healthz``'s answer; DatabaseUnavailable when the database cannot be reached."""
    try:
        with engine.connect() as connection:  # one short transaction for both reads
            connection.execute(sa.text("SELECT 1"))
            worker = _worker_health(connection, worker_tick)
    except sa.exc.SQLAlchemyError as error:
        raise DatabaseUnavailable(f"cannot reach the database: {one_line(error)}") from error
    return Health(status="ok", database="ok", version=__version__, worker=worker)


class HealthDoor:
    """A plain ``GET /healthz`` answered in front of the app: the request threads may all be
    waiting for a slow provider (their number is ``api_threads``, and admission control queues
    requests for them), and a load balancer asking whether the service is up must not queue behind
    them. The same answer as the endpoint, which stays for the OpenAPI document, HEAD, and
    anything with a query string.

    The answer is that of a check made at most ``FRESH_FOR`` ago, on a thread pool of its own (two
    threads) and one database round trip. A probe finding the last check older than
    ``REFRESH_AFTER`` is answered with it and starts the next check; one finding it older than
    ``FRESH_FOR`` (or none) waits for that check. Under load a probe is then answered by the event
    loop alone: it waited for a thread, the interpreter and a pooled connection behind the
    requests (p99 123 ms at 512 clients; docs/performance.md), and a probe every 100 ms per
    balancer does not need a round trip each."""

    FRESH_FOR = 1.0  # seconds
    REFRESH_AFTER = 0.5

    def __init__(self) -> None:
        self._threads: anyio.CapacityLimiter | None = None
        self._last: tuple[float, bytes | BillfoldError] | None = None  # when (monotonic), the answer's body or problem
        self._checking: asyncio.Task[tuple[float, bytes | BillfoldError]] | None = None

    def takes(self, scope: dict[str, Any]) -> bool:
        return scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == "/healthz" \
            and not scope.get("query_string")

    async def answer(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        last = self._last
        age = time.monotonic() - last[0] if last is not None else None
        if last is None or age is None or age >= self.FRESH_FOR:
            last = await asyncio.shield(self._check(scope["app"].state))
        elif age >= self.REFRESH_AFTER:
            self._check(scope["app"].state)
        nosniff, _ = API_HEADERS  # what ResponseHeaders gives every answer outside /v1/
        _, found = last
        if isinstance(found, BillfoldError):
            await send_problem(send, found, [nosniff])
        else:
            await send_json(send, 200, found, [nosniff])

    def _check(self, state: Any) -> asyncio.Task[tuple[float, bytes | BillfoldError]]:
        """The check under way, or a new one."""
        if self._checking is None or self._checking.done():
            self._checking = asyncio.get_running_loop().create_task(self._run(state))
        return self._checking

    async def _run(self, state: Any) -> tuple[float, bytes | BillfoldError]:
        if self._threads is None:
            self._threads = anyio.CapacityLimiter(2)
        found: bytes | BillfoldError
        try:
            health = await anyio.to_thread.run_sync(health_of, state.engine, state.settings.worker_tick, limiter=self._threads)
            found = json_bytes(health.model_dump(mode="json"))
        except BillfoldError as error:
            found = error
        self._last = (time.monotonic(), found)
        return self._last


class Door(Protocol):
    """A lean route in front of the app: ``takes`` a request (a cheap look at its scope) that
    ``answer`` then answers exactly as the FastAPI endpoint of the same route would."""

    def takes(self, scope: dict[str, Any]) -> bool: ...

    async def answer(self, scope: dict[str, Any], receive: Any, send: Any) -> None: ...


class BillfoldApp(FastAPI):
    """The app, with its busiest routes answered in front of it by ``doors``, asked in order:
    providers' webhook deliveries (``webhooks.door``) and entitlement checks
    (``memberships.door``), which need none of the middleware, routing or dependency solving."""

    doors: tuple[Door, ...] = ()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        for door in self.doors:
            if door.takes(scope):
                scope["app"] = self
                await door.answer(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, engine: Engine | None = None, *, run_worker: bool = False) -> FastAPI:
    """The app. ``run_worker``: run the sweeps in a background thread while serving (the embedded
    worker of ``billfold serve``); it stops, finishing its round, when the server shuts down."""
    wire()
    settings = settings or get_settings()
    engine = engine or create_engine(settings.database_url, **pool_options(settings.api_threads))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Sandbox mode: the whole process runs on the database's billing clock while serving.
        # The endpoints' thread pool, sized with the connection pool (kit.db.pool_options).
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        current = clock.get_clock()
        previous = None
        if settings.sandbox and not (isinstance(current, clock.DatabaseClock) and current.engine is engine):
            previous = clock.set_clock(clock.DatabaseClock(engine))
        try:
            with ExitStack() as stack:
                if run_worker:
                    from billfold import worker

                    worker.load_sweeps()
                    context = worker.make_context(settings, engine)
                    stack.enter_context(worker.embedded(context, tick=settings.worker_tick))
                yield
        finally:
            if previous is not None:
                ours = clock.set_clock(previous)
                if isinstance(ours, clock.DatabaseClock):
                    ours.close()

    app = BillfoldApp(
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        title="Billfold",
        version=__version__,
        summary="Payments and billing: one-time products, subscriptions and memberships through several providers.",
        dependencies=[Depends(refuse_unknown_query_parameters)],
    )
    # The last added runs first: the size limit, then the card-data guard, then the NUL guard,
    # then admission (a request is admitted with its body read), then the trimming of answers to
    # keys that may write but not read (innermost: it sees what the endpoint answered).
    app.add_middleware(AnswerWritesWithoutReading)
    app.add_middleware(AdmitRequests, limit=settings.api_threads)
    app.add_middleware(RefuseNulCharacters)
    app.add_middleware(RefuseCardData)
    app.add_middleware(LimitRequestBody, max_bytes=settings.max_request_bytes)
    redact_access_log()
    app.add_middleware(ResponseHeaders)
    app.add_middleware(HeadAsGet)  # outermost: everything inside sees a GET, and hashes the whole page
    app.doors = (WebhookDoor(settings.max_request_bytes), EntitlementDoor(), HealthDoor())
    app.state.engine = engine
    app.state.settings = settings
    app.state.sessions = session_factory(engine)
    app.state.security = Security.from_settings(settings)
    app.state.api_keys_kept = Keeper()  # accounts.auth: the API keys this process has read
    mailer.configure(app.state.sessions, settings)
    mailer.deliver_after_commit(app.state.sessions, make_mailer(settings))
    # First: providers' deliveries are the busiest route, and routes are matched in order.
    app.include_router(webhooks_api.router)
    app.include_router(accounts_api.router)
    app.include_router(organizations_api.router)
    app.include_router(two_factor_api.router)
    app.include_router(catalog_api.router)
    app.include_router(orders_api.router)
    app.include_router(payments_api.router)
    app.include_router(subscriptions_api.router)
    app.include_router(invoices_api.router)
    app.include_router(memberships_api.router)
    app.include_router(notify_api.router)
    app.include_router(analytics_api.router)
    app.include_router(clock_api.router)

    @app.exception_handler(BillfoldError)
    async def _billfold_error(request: Request, error: BillfoldError) -> JSONResponse:
        return problem_response(error)

    async def _database_busy(request: Request, error: Exception) -> JSONResponse:
        return problem_response(database_busy(request.method, request.url.path, error))

    for failure in DATABASE_FAILURES:
        app.add_exception_handler(failure, _database_busy)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        title = HTTPStatus(error.status_code).phrase
        problem = {
            "type": "about:blank",
            "title": title,
            "status": error.status_code,
            "detail": error.detail if isinstance(error.detail, str) else title,
            "code": title.lower().replace(" ", "_"),
        }
        headers = dict(error.headers or {})
        if error.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return JSONResponse(problem, status_code=error.status_code, media_type=PROBLEM_JSON, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(part) for part in e["loc"][1:] if part != "body") or str(e["loc"][0]), "message": e["msg"]}
            for e in error.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        problem = InvalidInput(detail, errors=errors).to_problem()
        return JSONResponse(problem, status_code=422, media_type=PROBLEM_JSON)

    @app.get(
        "/healthz",
        response_model=Health,
        responses={503: {"model": Problem, "description": "The database cannot be reached.", "content": {PROBLEM_JSON: {}}}},
        tags=["operations"],
    )
    def healthz(request: Request) -> Health:
        """Is the service up, can it reach its database, and is a worker running (renewals, dunning
        and expiry happen only while one does)? A worker that is late or never ran does not make
        this fail: the API still serves. (A plain GET is answered by ``HealthDoor`` in front of the
        app, on threads of its own, so a server whose request threads all wait for a slow
        provider still answers this at once.)"""
        return health_of(request.app.state.engine, request.app.state.settings.worker_tick)

    _reference_pages(app)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def front_page(request: Request) -> HTMLResponse:
        return HTMLResponse(_front_page(_counts(request.app.state.sessions)))

    return app


def redact_access_log() -> None:
    """The access log names a refused request's path and query: with card numbers masked. Here,
    not in the CLI, so every worker process of ``billfold serve --workers N`` does it too."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactCardNumbers) for f in access.filters):
        access.addFilter(RedactCardNumbers())
def _worker_health(connection: sa.Connection, tick_seconds: float) -> WorkerHealth:
    try:
        health = instance.worker_health(connection, tick_seconds)
    except sa.exc.SQLAlchemyError:  # not migrated yet: the service itself is still up
        return WorkerHealth(status="unknown", last_seen=None, lag_seconds=None)
    return WorkerHealth(status=health.status, last_seen=health.last_seen, lag_seconds=health.lag_seconds)


DOCS_STATIC = "/static/docs"


def _reference_pages(app: FastAPI) -> None:
    """``/docs`` (Swagger UI), its script and styles served from the installed fastapi-offline
    package: the page works with no internet, and loads nothing from a CDN. (No ``/redoc``: ReDoc
    fetches its logo from its own site.)"""
    static = Path(fastapi_offline.__file__).parent / "static"
    app.mount(DOCS_STATIC, StaticFiles(directory=static), name="docs-static")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url, title="Billfold API",
            swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js", swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_STATIC}/favicon.png",
            oauth2_redirect_url=app.swagger_ui_oauth2_redirect_url,
        )

    @app.get(app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect", include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()



def _allowed_methods(request: Request) -> list[str]:
    """The methods served at this path (Starlette names only the first route's). Where several
    documented paths match, the most specific one answers for it, as the OpenAPI document lists
    them (``/v1/me/passkeys/registration-options`` is not ``/v1/me/passkeys/{passkey_id}``); a
    page left out of the document gets every method some route serves there."""
    documented = _documented_methods(request.app, request.url.path)
    if documented is not None:
        methods = documented
    else:
        methods = {
            method
            for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
            if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in request.app.router.routes)
        }
    if "GET" in methods:
        methods.add("HEAD")  # kit.headers.HeadAsGet
    return sorted(methods)


def _documented_methods(app: FastAPI, path: str) -> set[str] | None:
    templates = getattr(app.state, "path_templates", None)
    if templates is None:  # worked out once: (pattern, number of parameters, methods) per documented path
        templates = [
            (re.compile("^" + re.sub(r"\\\{[^/]*?\\\}", "[^/]+", re.escape(template)) + "$"), template.count("{"),
             {method.upper() for method in operations})
            for template, operations in app.openapi().get("paths", {}).items()
        ]
        app.state.path_templates = templates
    matching = [(params, methods) for pattern, params, methods in templates if pattern.match(path)]
    return min(matching, key=lambda m: m[0])[1] if matching else None


def make_mailer(settings: Settings) -> mailer.Mailer:
    """SMTP when configured, otherwise .eml files in data_dir/mail."""
    return mailer.mailer_for(settings)


def _counts(sessions: sessionmaker[Session]) -> dict[str, int] | None:
    try:
        with sessions() as session:
            return {
                label: session.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0
                for label, model, where in (
                    ("products", Product, ()),
                    ("customers", User, (User.user_type != "admin",)),
                    ("organizations", Organization, ()),
                )
            }
    except sa.exc.SQLAlchemyError:
        return None  # not migrated yet, or unreachable: the page still says what Billfold is


def _front_page(counts: dict[str, Any] | None) -> str:
    if counts is None:
        status = "<p class=warn>The database is not ready: run <code>billfold db upgrade</code>.</p>"
    else:
        status = "<p>This instance holds " + ", ".join(
            f"<strong>{escape(str(n))}</strong> {escape(label)}" for label, n in counts.items()
        ) + ".</p>"
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Billfold</title>
<style>
  body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 44rem; margin: 3rem auto; padding: 0 1rem; color: #1d2330; }}
  h1 {{ font-size: 2rem; margin-bottom: .25rem; }}
  .tagline {{ color: #4a5568; margin-top: 0; }}
  a {{ color: #2b5fd9; }}
  code {{ background: #f1f3f7; padding: .1rem .3rem; border-radius: 3px; }}
  ul {{ padding-left: 1.2rem; }}
  .warn {{ color: #a33; }}
  footer {{ margin-top: 2.5rem; color: #718096; font-size: .875rem; }}
</style>
</head>
<body>
<h1>Billfold</h1>
<p class="tagline">An open-source payment and billing backend.</p>
<p>Billfold sells one-time products, subscriptions and memberships to people and organizations,
through several payment providers at once (Stripe, PayPal, Authorize.net and a built-in sandbox),
and keeps every order, payment and invoice on record.</p>
{status}
<h2>Where to go next</h2>
<ul>
  <li><a href="/docs">API reference</a>: every endpoint, to read and to try.</li>
  <li><a href="/openapi.json">OpenAPI document</a>: for client generators and API tools.</li>
  <li><a href="/healthz">Health check</a>: is the service up and its database reachable?</li>
  <li>On the command line: <code>billfold --help</code>, for migrations, demo data and customer erasure.</li>
</ul>
<footer>Billfold {escape(__version__)}</footer>
</body>
</html>
"""

