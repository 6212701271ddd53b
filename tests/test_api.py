"""The service over real HTTP: health, the OpenAPI document, the front page, and errors as RFC 9457
problem documents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine

from billfold.kit.db import create_engine, session_factory, transaction
from tests import databases
from tests import factories as make
from tests.server import serving


@pytest.fixture
def base_url(engine: Engine) -> Iterator[str]:
    with serving(engine) as url:
        yield url


def test_health_says_the_service_and_its_database_are_up(base_url: str) -> None:
    answer = httpx.get(f"{base_url}/healthz")
    assert answer.status_code == 200
    assert answer.json()["status"] == "ok" and answer.json()["database"] == "ok"


def test_health_reports_an_unreachable_database_as_a_problem() -> None:
    with serving(create_engine("postgresql://postgres@127.0.0.1:1/nothing")) as url:
        answer = httpx.get(f"{url}/healthz")
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["code"] == "database_unavailable" and problem["status"] == 503
    assert "cannot reach the database" in problem["detail"]


def test_an_unknown_path_is_a_problem_document(base_url: str) -> None:
    answer = httpx.get(f"{base_url}/no/such/page")
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == "not_found"


def test_the_openapi_document_describes_the_service(base_url: str) -> None:
    document = httpx.get(f"{base_url}/openapi.json", timeout=60).json()
    assert document["info"]["title"] == "Billfold"
    health = document["paths"]["/healthz"]["get"]["responses"]
    assert set(health) >= {"200", "503"}
    assert "swagger" in httpx.get(f"{base_url}/docs", timeout=60).text.lower()


def test_the_front_page_says_what_billfold_is_and_what_this_instance_holds(tmp_path: Path) -> None:
    url = databases.fresh_database("sqlite", "front", tmp_path)
    engine = create_engine(url)
    databases.migrate(engine)
    with transaction(session_factory(engine)) as session:
        make.product(session)
        make.product(session)
        make.user(session)
        make.user(session, user_type="admin")  # staff, not a customer
    with serving(engine) as base:
        page = httpx.get(f"{base}/", timeout=60)  # a loaded CI machine can take more than the default 5 s
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<h1>Billfold</h1>" in page.text
    assert "<strong>2</strong> products" in page.text and "<strong>1</strong> customers" in page.text
    for link in ('href="/docs"', 'href="/openapi.json"', 'href="/healthz"'):
        assert link in page.text
    engine.dispose()


def test_the_front_page_tells_how_to_migrate_an_empty_database(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with serving(engine) as base:
        page = httpx.get(f"{base}/", timeout=60)
    assert page.status_code == 200 and "billfold db upgrade" in page.text
    engine.dispose()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/auth/register", '{"email": "nul@example.com", "password": "long enough pw", "name": "A\\u0000", "last_name": "B"}'),
        ("POST", "/v1/auth/sign-in", '{"email": "nul@example.com", "password": "x\\u0000"}'),
        ("GET", "/v1/users?starting_after=usr_%00", None),
        ("DELETE", "/v1/me/sessions/ses%00", None),
    ],
    ids=["body", "password", "query", "path"],
)
def test_a_nul_character_anywhere_is_refused_as_bad_input(base_url: str, method: str, path: str, body: str | None) -> None:
    answer = httpx.request(method, f"{base_url}{path}", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"
    assert "NUL" in answer.json()["detail"]


def test_an_escaped_backslash_before_u0000_is_ordinary_text(base_url: str) -> None:
    """``"\\\\u0000"`` in JSON is a backslash and the letters u0000, not a NUL: it goes through."""
    answer = httpx.post(f"{base_url}/v1/auth/sign-in", content='{"email": "nul@example.com", "password": "a\\\\u0000"}', headers={"content-type": "application/json"})
    assert answer.status_code == 401


def test_the_doors_in_front_of_the_app_answer_an_unreachable_database_as_a_problem() -> None:
    """Provider deliveries and entitlement checks are answered before FastAPI (webhooks.door,
    memberships.door): a database they cannot reach is a 503 to retry, never a 500 or a hang."""
    with serving(create_engine("postgresql://postgres@127.0.0.1:1/nothing")) as url:
        delivery = httpx.post(f"{url}/v1/webhooks/sandbox", content=b'{"id":"evt_1"}',
                              headers={"content-type": "application/json"}, timeout=30)
        check = httpx.get(f"{url}/v1/me/entitlements/pro", headers={"Authorization": "Bearer bfs_unknown"}, timeout=30)
    for answer in (delivery, check):
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["code"] == "database_unavailable" and answer.headers["retry-after"] == "1"
