"""Card data never enters, over real HTTP on each database: a card number in any field of any
request (names, addresses, product texts and metadata, refund and cancel reasons, API key names,
invitation emails, provider names and config, a checkout token), in any encoding the app reads
(a UTF-8 byte-order mark, UTF-16, a form, a query string, a stored header), is refused with 422
``card_data_refused`` naming the field, and afterwards no table, email or sandbox file holds its
digits. Tokens are checked against the provider's token shape before any provider call, and
request bodies over ``max_request_bytes`` are refused with 413 before they are read whole."""

from __future__ import annotations

import email
import email.policy
import json
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.config import Settings
from billfold.kit.ids import new_id
from tests.accounts import Api
from tests.server import serving
from tests.test_checkout import HOME, checkout, customer, order, product, sandbox_charges
from tests.test_payment_methods import make_provider
from tests.test_organizations import Person, assert_problem, create_organization

CARDS = ("4242 4242 4242 4242", "4111-1111-1111-1111", "378282246310005")
DIGITS = ("4242424242424242", "4111111111111111", "378282246310005")


def traces(engine: Engine, data_dir: Path) -> list[str]:
    """Where a test card's digits are: any column of any table, any email, any sandbox file."""
    found = []
    with engine.connect() as connection:
        for table in sa.inspect(connection).get_table_names():
            for row in connection.execute(sa.text(f"SELECT * FROM {table}")):
                for value in row:
                    text = re.sub(r"[\s\-]", "", str(value))
                    found += [f"{table}: {d}" for d in DIGITS if d in text]
    for path in sorted((data_dir / "mail").glob("*.eml")) if (data_dir / "mail").exists() else []:
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        text = " ".join(f"{k}: {v}" for k, v in message.items()) + " ".join(
            str(part.get_content()) for part in message.walk() if not part.is_multipart()
        )
        found += [f"mail {path.name}: {d}" for d in DIGITS if d in re.sub(r"[\s\-]", "", text)]
    for path in data_dir.glob("sandbox*"):
        raw = path.read_bytes().decode("utf-8", "replace")
        found += [f"{path.name}: {d}" for d in DIGITS if d in re.sub(r"[\s\-]", "", raw)]
    return found


def refused(answer: httpx.Response, field: str) -> None:
    assert_problem(answer, 422, "card_data_refused", field)
    assert not any(d in re.sub(r"[\s\-]", "", answer.text) for d in DIGITS), "the number is not echoed"


@pytest.fixture
def shop(api: Api, engine: Engine, admin_token: str) -> dict:
    """A customer with an address and an organization, a paid order and a pending one."""
    ada = customer(api, engine, "ada")
    book = product(engine, 1999)
    paid, pending = order(api, ada.token, (book, 1)), order(api, ada.token, (book, 1))
    with api.client(ada.token) as client:
        payment = checkout(client, paid["id"]).json()["payment"]
    return {"ada": ada, "organization": create_organization(api, ada), "payment": payment["id"], "pending": pending["id"]}


def cases(shop: dict, card: str) -> list[tuple[str, str, str, dict, dict, str]]:
    """(who, method, path, body with the card, the same body without it, the field named)."""
    slug = "sb_" + new_id("x")[-10:].lower()
    product = {"name": "Field guide", "product_type": "digital", "is_recurring": False, "price_cents": 500, "currency": "USD"}
    return [
        ("ada", "PATCH", "/v1/me", {"name": f"Ada {card}"}, {"name": "Ada"}, "name"),
        ("ada", "POST", "/v1/me/addresses", {**HOME, "line2": f"card {card} exp 12/29"}, {**HOME, "line2": "Flat 2"}, "line2"),
        ("admin", "POST", "/v1/products", {**product, "description": f"Pay with {card}"}, product, "description"),
        ("admin", "POST", "/v1/products", {**product, "metadata": {"note": card}}, {**product, "metadata": {"note": "ISBN 978-3-16-148410-0"}}, "metadata.note"),
        ("admin", "POST", "/v1/payments/{payment}/refunds", {"amount_cents": 100, "reason": f"refund to {card}"},
         {"amount_cents": 100, "reason": "damaged"}, "reason"),
        ("ada", "POST", "/v1/orders/{pending}/cancel", {"reason": card}, {"reason": "changed my mind"}, "reason"),
        ("admin", "POST", "/v1/api-keys", {"name": f"key {card}", "scopes": ["read"]}, {"name": "reporting", "scopes": ["read"]}, "name"),
        ("ada", "POST", "/v1/organizations/{organization}/invitations", {"email": f"{card.replace(' ', '')}@example.com"},
         {"email": f"friend.{slug}@example.com"}, "email"),
        ("admin", "POST", "/v1/payment-providers", {"id": slug, "kind": "sandbox", "display_name": f"Cards {card}"},
         {"id": slug, "kind": "sandbox", "display_name": "Cards"}, "display_name"),
        ("admin", "POST", "/v1/payment-providers", {"id": slug + "c", "kind": "sandbox", "display_name": "S", "config": {"region": card}},
         {"id": slug + "c", "kind": "sandbox", "display_name": "S", "config": {"region": "eu"}}, "config.region"),
    ]


@pytest.mark.parametrize("card", CARDS)
def test_a_card_number_in_any_field_is_refused_and_leaves_no_trace(
    api: Api, engine: Engine, admin_token: str, shop: dict, card: str
) -> None:
    ada: Person = shop["ada"]
    for who, method, path, carded, plain, field in cases(shop, card):
        with api.client(ada.token if who == "ada" else admin_token) as client:
            url = path.format(**shop)
            refused(client.request(method, url, json=carded), field)
            accepted = client.request(method, url, json=plain)
            assert accepted.status_code in (200, 201), f"{method} {url}: the same request without the card passes: {accepted.text}"
    assert traces(engine, api.data_dir) == []


def test_a_card_number_sent_as_a_checkout_token_never_reaches_the_provider(api: Api, engine: Engine, shop: dict) -> None:
    ada: Person = shop["ada"]
    bom = b"\xef\xbb\xbf" + json.dumps({"token": "4242424242424242"}).encode()
    with api.client(ada.token) as client:
        url = f"/v1/orders/{shop['pending']}/checkout"
        refused(client.post(url, content=bom, headers={"Content-Type": "application/json"}), "token")
        refused(client.post(url, json={"token": "4111111111111111"}), "token")
        assert client.get(f"/v1/orders/{shop['pending']}").json()["payments"] == [], "no payment was started"
        paid = checkout(client, shop["pending"])
        assert paid.status_code == 200, paid.text
    assert len(sandbox_charges(api, paid.json()["payment"]["id"])) == 1
    assert traces(engine, api.data_dir) == []


def test_whatever_the_encoding_the_guard_reads_what_the_app_reads(api: Api, engine: Engine, admin_token: str, shop: dict) -> None:
    """A byte-order mark, UTF-16 and UTF-32, a form, a percent-encoded query, a repeated key, a
    number, a key, a stored header: each is read as the app would read it."""
    ada: Person = shop["ada"]
    provider = {"id": "sb_" + new_id("x")[-10:].lower(), "kind": "sandbox", "display_name": "Sandbox",
                "config": {"card_number": "4242424242424242", "cvc": "123"}}
    json_type = {"Content-Type": "application/json"}
    with api.client(admin_token) as admin:
        answer = admin.post("/v1/payment-providers", content=b"\xef\xbb\xbf" + json.dumps(provider).encode(), headers=json_type)
        refused(answer, "config.card_number")
        assert "config.cvc" in {e["field"] for e in answer.json()["errors"]}
    with api.client(ada.token) as client:
        for encoding in ("utf-8-sig", "utf-16", "utf-32"):
            refused(client.patch("/v1/me", content=json.dumps({"name": "4242 4242 4242 4242"}).encode(encoding), headers=json_type), "name")
        refused(client.patch("/v1/me", content=b'{"name": "\\u0034242424242424242"}', headers=json_type), "name")
        refused(client.patch("/v1/me", content=b'{"name": "4242424242424242", "name": "Ada"}', headers=json_type), "name")
        refused(client.post("/v1/me/addresses", data={**HOME, "line1": "4242 4242 4242 4242"}), "line1")
        refused(client.post("/v1/me/addresses", content=b"4111-1111-1111-1111", headers={"Content-Type": "text/plain"}), "body")
        refused(client.post("/v1/me/addresses", content=b'{"line1": "4111 1111 1111 1111"', headers=json_type), "body")
        refused(client.get("/v1/orders", params={"status": "4242 4242 4242 4242"}), "status")
        refused(client.get("/v1/orders?status=%34%32%34%32%34%32%34%32%34%32%34%32%34%32%34%32"), "status")
        refused(client.get("/v1/orders/4242424242424242"), "path")
        refused(client.post("/v1/me/addresses", json={**HOME, "4242424242424242": "x"}), "****************")
        refused(client.post("/v1/me/addresses", json=HOME, headers={"Idempotency-Key": "4242424242424242"}), "idempotency-key")
        refused(client.patch("/v1/me", json={"name": "Ada"}, headers={"User-Agent": "card 4242 4242 4242 4242"}), "user-agent")
    with api.client(admin_token) as admin:
        body = {"name": "Numbers", "product_type": "digital", "is_recurring": False, "price_cents": 500, "metadata": {"ref": 4242424242424242}}
        refused(admin.post("/v1/products", json=body), "metadata.ref")
    assert traces(engine, api.data_dir) == []


def test_legitimate_numbers_pass(api: Api, engine: Engine, admin_token: str) -> None:
    """Dates, phone numbers, postal codes, ISBNs, amounts, ids, last fours and long numbers that
    fail the Luhn check are not card numbers."""
    text = ("ISBN 978-3-16-148410-0, call +44 20 7946 0958 or 0800 123 4567, order 2026-12-06 2026-12-07, "
            "SW1Y 4JH, card ending 4242, ref 4242424242424241, build 12345678901234567890123")
    body = {"name": "Numbers", "description": text, "product_type": "digital", "is_recurring": False,
            "price_cents": 123456789, "metadata": {"ids": "ord_01M96M1X2D8GAMD5QZPVTMD8RC", "n": "1234567890123"}}
    with api.client(admin_token) as admin:
        made = admin.post("/v1/products", json=body, headers={"Idempotency-Key": "0f8fad5b-d9cb-469f-a165-70867728950e"})
        assert made.status_code == 201, made.text
        assert made.json()["description"] == text


def test_a_token_that_is_not_the_providers_is_refused_before_any_call(api: Api, engine: Engine, shop: dict) -> None:
    ada: Person = shop["ada"]
    saving = make_provider(engine)
    with api.client(ada.token) as client:
        for token in ("tok_visa", "hello_world", "4242424242424241"):
            for answer in (
                client.post("/v1/me/payment-methods", json={"provider_id": saving, "token": token}),
                checkout(client, shop["pending"], token=token),
            ):
                assert answer.status_code == 422, answer.text
                assert answer.json()["code"] in ("invalid_token", "card_data_refused"), answer.text
                assert token not in answer.text
        assert client.get("/v1/me/payment-methods").json()["data"] == []
        assert client.post("/v1/me/payment-methods", json={"provider_id": saving, "token": "tok_sandbox_amex"}).status_code == 201
        assert client.get(f"/v1/orders/{shop['pending']}").json()["payments"] == [], "no payment was started"
    with engine.connect() as connection:
        metadata = connection.execute(sa.text("SELECT metadata FROM payments")).scalars().all()
    assert not any("tok_visa" in str(m) or "hello_world" in str(m) for m in metadata)


def raw_request(url: str, head: bytes, body: bytes = b"") -> bytes:
    """Send ``head`` (and ``body``) on a socket and read what comes back until the server closes or
    stops answering; the body need not be complete."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head + body)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _length(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def _length(answer: bytes) -> int:
    found = re.search(rb"(?im)^content-length:\s*(\d+)", answer.partition(b"\r\n\r\n")[0])
    return int(found.group(1)) if found else 0


def _problem(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_body_over_the_limit_is_refused_before_it_is_read(api: Api, shop: dict) -> None:
    """The default limit is 1 MiB: a Content-Length over it is answered 413 at once, while the
    client has sent none of the body."""
    ada: Person = shop["ada"]
    head = (f"PATCH /v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ada.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {1024 * 1024 + 1}\r\n\r\n").encode()
    status, problem = _problem(raw_request(api.url, head))
    assert (status, problem["code"], problem["status"]) == (413, "request_too_large", 413)
    exactly = b'{"name": "' + b"a" * (1024 * 1024 - 12) + b'"}'
    assert len(exactly) == 1024 * 1024
    with api.client(ada.token) as client:
        at_the_limit = client.patch("/v1/me", content=exactly, headers={"Content-Type": "application/json"})
    assert at_the_limit.status_code == 422 and at_the_limit.json()["code"] == "invalid_input", "read, then found too long a name"


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(engine: Engine, tmp_path: Path) -> None:
    """No Content-Length: the body is counted as it arrives; the answer comes while the client is
    still sending (the body's end is never sent)."""
    with serving(engine, tmp_path, max_request_bytes=2048) as url:
        head = b"POST /v1/auth/sign-in HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b'{"email": "' + b"a" * 3000
        status, problem = _problem(raw_request(url, head, f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"))
        assert (status, problem["code"]) == (413, "request_too_large")
        with httpx.Client(base_url=url) as client:
            small = client.post("/v1/auth/sign-in", json={"email": "nobody@example.com", "password": "x" * 12})
        assert small.status_code != 413 and small.status_code < 500, small.text


def test_the_limit_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().max_request_bytes == 1024 * 1024
    monkeypatch.setenv("BILLFOLD_MAX_REQUEST_BYTES", "65536")
    assert Settings().max_request_bytes == 65536
