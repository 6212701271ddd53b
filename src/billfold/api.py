"""The FastAPI application: the service's HTTP face.

Every ``BillfoldError`` becomes an RFC 9457 problem document; so does a request that fails
validation, naming the field that was wrong.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from html import escape
from http import HTTPStatus
from typing import Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from billfold import __version__
from billfold.accounts import api as accounts_api
from billfold.accounts import organizations_api, two_factor_api
from billfold.accounts.security import Security
from billfold.catalog import api as catalog_api
from billfold.invoices import api as invoices_api
from billfold.memberships import api as memberships_api
from billfold.orders import api as orders_api
from billfold.payments import api as payments_api
from billfold.subscriptions import api as subscriptions_api
from billfold.config import Settings, get_settings
from billfold import worker_api
from billfold.kit import clock, mailer
from billfold.kit.db import create_engine, one_line, session_factory
from billfold.kit.http import Problem, RefuseNulCharacters, refuse_unknown_query_parameters
from billfold.kit.errors import BillfoldError, DatabaseUnavailable, InvalidInput, TooManyRequests
from billfold.models import Organization, Product, User

PROBLEM_JSON = "application/problem+json"


class Health(BaseModel):
    status: str
    database: str
    version: str


def create_app(settings: Settings | None = None, engine: Engine | None = None, *, run_worker: bool = False) -> FastAPI:
    """The app. ``run_worker``: run the sweeps in a background thread while serving (the embedded
    worker of ``billfold serve``); it stops, finishing its round, when the server shuts down."""
    settings = settings or get_settings()
    engine = engine or create_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Sandbox mode: the whole process runs on the database's billing clock while serving.
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
                clock.set_clock(previous)

    app = FastAPI(
        lifespan=lifespan,
        title="Billfold",
        version=__version__,
        summary="Payments and billing: one-time products, subscriptions and memberships through several providers.",
        dependencies=[Depends(refuse_unknown_query_parameters)],
    )
    app.add_middleware(payments_api.RefuseCardData)
    app.add_middleware(RefuseNulCharacters)
    app.state.engine = engine
    app.state.settings = settings
    app.state.sessions = session_factory(engine)
    app.state.security = Security.from_settings(settings)
    mailer.deliver_after_commit(app.state.sessions, make_mailer(settings))
    app.include_router(accounts_api.router)
    app.include_router(organizations_api.router)
    app.include_router(two_factor_api.router)
    app.include_router(catalog_api.router)
    app.include_router(orders_api.router)
    app.include_router(payments_api.router)
    app.include_router(subscriptions_api.router)
    app.include_router(invoices_api.router)
    app.include_router(memberships_api.router)
    app.include_router(worker_api.router)

    @app.exception_handler(BillfoldError)
    async def _billfold_error(request: Request, error: BillfoldError) -> JSONResponse:
        headers = {"Retry-After": str(error.retry_after)} if isinstance(error, TooManyRequests) else None
        return JSONResponse(error.to_problem(), status_code=error.status, media_type=PROBLEM_JSON, headers=headers)

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
        """Is the service up and can it reach its database?"""
        try:
            with request.app.state.engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError as error:
            raise DatabaseUnavailable(f"cannot reach the database: {one_line(error)}") from error
        return Health(status="ok", database="ok", version=__version__)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def front_page(request: Request) -> HTMLResponse:
        return HTMLResponse(_front_page(_counts(request.app.state.sessions)))

    return app


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE and isinstance(route, APIRoute):
            methods |= route.methods or set()
    return sorted(methods)


def make_mailer(settings: Settings) -> mailer.Mailer:
    """SMTP when configured, otherwise .eml files in data_dir/mail."""
    if settings.smtp_host:
        return mailer.SmtpMailer(
            settings.smtp_host, settings.smtp_port, settings.mail_from, settings.smtp_username,
            settings.smtp_password.get_secret_value() if settings.smtp_password else None, settings.smtp_starttls,
        )
    return mailer.FolderMailer(settings.data_dir / "mail", settings.mail_from)


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

