"""What a browser, a proxy and a monitoring probe see on every answer: pages that cannot be framed
and run only their own scripts, answers whose type is never guessed, secrets that no cache keeps,
and HEAD wherever GET is served. Over real HTTP against the real app."""

from __future__ import annotations

import base64
import hashlib
import re
import uuid

import httpx
import pyotp
import pytest

from billfold.kit import clock
from tests.accounts import PASSWORD, Api

PAGES = ["/", "/docs"]


def _directives(policy: str) -> dict[str, list[str]]:
    return {name: rest for name, *rest in (part.split() for part in policy.split(";") if part.strip())}


def _inline(html: str, tag: str) -> list[str]:
    pattern = rf"<{tag}(?P<attributes>(?:\s[^>]*)?)>(?P<content>.*?)</{tag}>"
    return [m["content"] for m in re.finditer(pattern, html, re.S | re.I) if "src=" not in m["attributes"]]


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@pytest.mark.parametrize("path", PAGES)
def test_pages_cannot_be_framed_and_run_only_their_own_and_their_assets_scripts(api: Api, path: str) -> None:
    page = httpx.get(api.url + path, timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["x-frame-options"] == "DENY"
    policy = _directives(page.headers["content-security-policy"])
    assert policy["frame-ancestors"] == ["'none'"] and policy["default-src"] == ["'none'"]
    scripts = policy.get("script-src", [])
    assert "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts
    for script in _inline(page.text, "script"):
        assert _sha256(script) in scripts, "the page's own inline script may run"
    for source in re.findall(r'<script src="(https://[^/"]+)', page.text):
        assert source in scripts, f"{path} loads its assets from {source}"
    for style in _inline(page.text, "style"):
        styles = policy["style-src"]
        assert _sha256(style) in styles or "'unsafe-inline'" in styles
    for sheet in re.findall(r'<link[^>]+href="(https://[^/"]+)[^"]*"[^>]*stylesheet|<link[^>]+stylesheet[^>]+href="(https://[^/"]+)', page.text):
        assert next(s for s in sheet if s) in policy["style-src"]
    if path == "/docs":
        assert "/openapi.json" in page.text and "'self'" in policy["connect-src"], "Swagger UI fetches the document"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/healthz", 200), ("GET", "/openapi.json", 200), ("GET", "/v1/products", 200),
     ("GET", "/no/such/page", 404), ("GET", "/v1/me", 401), ("POST", "/v1/auth/sign-in", 422)],
)
def test_every_api_answer_says_nosniff(api: Api, method: str, path: str, status: int) -> None:
    answer = httpx.request(method, api.url + path, json={} if method == "POST" else None, timeout=30)
    assert answer.status_code == status
    assert answer.headers["x-content-type-options"] == "nosniff"
    if path.startswith("/v1/"):
        assert answer.headers["cache-control"] == "no-store"


def test_answers_that_carry_a_secret_are_never_stored(api: Api, admin_token: str) -> None:
    with api.client(admin_token) as admin:
        key = admin.post("/v1/api-keys", json={"name": "backend", "scopes": ["read"]})
    assert key.status_code == 201 and key.json()["secret"].startswith("bfk_")
    assert key.headers["cache-control"] == "no-store"

    address = f"secret-{uuid.uuid4().hex[:10]}@example.com"
    api.sign_up(address)
    with api.client() as client:
        signed_in = client.post("/v1/auth/sign-in", json={"email": address, "password": PASSWORD})
    assert signed_in.status_code == 200 and signed_in.json()["token"]
    assert signed_in.headers["cache-control"] == "no-store"

    with api.client(signed_in.json()["token"]) as client:
        enrolment = client.post("/v1/me/two-factor/totp", json={"password": PASSWORD})
        assert enrolment.status_code == 201 and enrolment.json()["secret"]
        assert enrolment.headers["cache-control"] == "no-store"
        code = pyotp.TOTP(enrolment.json()["secret"]).at(clock.now())
        confirmed = client.post("/v1/me/two-factor/totp/confirm", json={"code": code})
    assert confirmed.status_code == 200 and confirmed.json()["recovery_codes"]
    assert confirmed.headers["cache-control"] == "no-store"


def test_head_answers_wherever_get_does_with_the_same_headers_and_no_body(api: Api, admin_token: str) -> None:
    """Every GET path of the OpenAPI document without parameters, and the pages."""
    document = httpx.get(api.url + "/openapi.json", timeout=30).json()
    paths = [p for p, operations in document["paths"].items() if "get" in operations and "{" not in p]
    assert len(paths) > 10
    with api.client(admin_token) as client:
        for path in [*PAGES, "/openapi.json", *paths]:
            try:
                got, head = client.get(path), client.head(path)
            except httpx.HTTPError as error:
                raise AssertionError(f"{path}: {error!r}") from error
            assert head.status_code == got.status_code, path
            assert head.content == b"", path
            assert head.headers["content-type"] == got.headers["content-type"], path
            if "content-length" in got.headers and path not in ("/healthz", "/v1/admin/clock"):  # these move
                assert head.headers["content-length"] == got.headers["content-length"], path
            for name in ("x-content-type-options", "cache-control", "content-security-policy"):
                assert head.headers.get(name) == got.headers.get(name), (path, name)


def test_a_method_a_path_does_not_serve_names_the_ones_it_does_including_head(api: Api) -> None:
    answer = httpx.put(api.url + "/v1/products", timeout=30)
    assert answer.status_code == 405
    assert answer.headers["allow"] == "GET, HEAD, POST"
    only_post = httpx.head(api.url + "/v1/auth/sign-in", timeout=30)
    assert only_post.status_code == 405 and only_post.headers["allow"] == "POST"
    one = httpx.put(api.url + "/v1/products/prd_none", timeout=30)
    assert one.status_code == 405 and one.headers["allow"] == "DELETE, GET, HEAD, PATCH"
