"""Strict input over real HTTP on each database: every integer in a request body is a JSON integer
and nothing else; integer query parameters are digits; a query parameter a route does not declare
is refused; one-line text (names, reasons) holds no line break or other control character; no
header value makes a 5xx. Each refusal is a 422 (403 for a bad CSRF token) naming what was wrong,
and leaves the database as it was.

The walks read the real OpenAPI document, so a field or route added later is covered by itself.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.kit.db import session_factory
from billfold.models import Base, Order, Payment, Product, Refund
from tests.accounts import PASSWORD, Api
from tests.test_checkout import checkout, customer, order, product, sandbox_charges
from tests.test_organizations import assert_problem, create_organization, person

BAD_INTEGERS = [True, False, "1", "10", 1.0, 10.0, 1.5, "1_0", "1e1"]
BAD_BOOLEANS = [1, 0, "true", "false", "yes"]
BAD_QUERY_BOOLEANS = ["yes", "no", "1", "0", "on", "True", "TRUE", " true", ""]
BAD_QUERY_INTEGERS = ["1_0", "1e1", "10.0", " 10", "10 ", "+10", "１０", "ten", "true"]
# One-line text with a control character in it: line breaks of every kind, a tab, an escape.
BAD_LINES = ["Acme\r\nBcc: mallory@example.com", "Acme\nLtd", "Acme\u2028Ltd", "Acme\x85Ltd", "Acme\tLtd", "Acme\x1b[31mLtd"]
# String fields where line breaks (or anything) belong: secrets and tokens that are never shown,
# mailed or logged, free text that is written as a paragraph, and patterns that refuse them already.
MULTI_LINE_FIELDS = {"description", "address", "password", "new_password", "current_password", "token", "challenge"}


def database_state(engine: Engine) -> str:
    """A digest of every row of every table."""
    digest = hashlib.sha256()
    with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            ordering = list(table.primary_key.columns) or list(table.columns)
            for row in connection.execute(sa.select(table).order_by(*ordering)):
                digest.update(repr(tuple(row)).encode())
    return digest.hexdigest()


@pytest.fixture
def document(api: Api) -> dict[str, Any]:
    with api.client() as client:
        return client.get("/openapi.json").json()


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _fields(document: dict[str, Any], schema: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """Every leaf of a request schema: (path, schema); "0" is a list's first item, "k" a map's key."""
    schema = _resolve(document, schema)
    for alternative in schema.get("anyOf", []) + schema.get("oneOf", []) + schema.get("allOf", []):
        yield from _fields(document, alternative, path)
    if "properties" in schema:
        for name, sub in schema["properties"].items():
            yield from _fields(document, sub, (*path, name))
    elif isinstance(schema.get("additionalProperties"), dict):
        yield from _fields(document, schema["additionalProperties"], (*path, "k"))
    elif schema.get("type") == "array" and "items" in schema:
        yield from _fields(document, schema["items"], (*path, "0"))
    elif "type" in schema:
        yield path, schema


def _body(path: tuple[str, ...], value: object) -> object:
    if not path:
        return value
    head, rest = path[0], path[1:]
    return [_body(rest, value)] if head == "0" else {head: _body(rest, value)}


def _url(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x_1", path)


def _objects(document: dict[str, Any], schema: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The path of every object with named fields in a request schema (maps such as metadata are not)."""
    schema = _resolve(document, schema)
    for alternative in schema.get("anyOf", []) + schema.get("oneOf", []) + schema.get("allOf", []):
        yield from _objects(document, alternative, path)
    if "properties" in schema:
        yield path
        for name, sub in schema["properties"].items():
            yield from _objects(document, sub, (*path, name))
    elif schema.get("type") == "array" and "items" in schema:
        yield from _objects(document, schema["items"], (*path, "0"))


def body_fields(document: dict[str, Any], kind: str) -> list[tuple[str, str, tuple[str, ...], dict[str, Any]]]:
    """(method, path, field, schema) for every field of type ``kind`` in a POST, PATCH or PUT body."""
    found = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method not in {"post", "patch", "put"} or "requestBody" not in operation:
                continue
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            for field, leaf in _fields(document, schema):
                if leaf.get("type") == kind:
                    found[method, path, field] = leaf
    return [(method, path, field, leaf) for (method, path, field), leaf in found.items()]


def refused_fields(answer: httpx.Response) -> set[str]:
    assert answer.status_code == 422, f"{answer.status_code} {answer.text}"
    assert answer.headers["content-type"] == "application/problem+json"
    return {e["field"] for e in answer.json()["errors"]}


def test_every_integer_of_every_request_body_must_be_a_json_integer(api: Api, engine: Engine, admin_token: str, document: dict[str, Any]) -> None:
    integers = body_fields(document, "integer")
    named = {field[-1] for _, _, field, _ in integers}
    assert {"amount_cents", "quantity", "price_cents", "trial_days", "duration_days", "sort_order"} <= named, named
    before = database_state(engine)
    with api.client(admin_token) as admin:
        for method, path, field, _ in integers:
            for bad in BAD_INTEGERS:
                answer = admin.request(method, _url(path), json=_body(field, bad))
                assert ".".join(field) in refused_fields(answer), (method, path, field, bad, answer.text)
    assert database_state(engine) == before, "refused requests changed the database"


def test_every_boolean_of_every_request_body_must_be_a_json_boolean(api: Api, engine: Engine, admin_token: str, document: dict[str, Any]) -> None:
    booleans = body_fields(document, "boolean")
    assert {"at_period_end", "refund", "is_active", "is_default"} <= {field[-1] for _, _, field, _ in booleans}
    before = database_state(engine)
    with api.client(admin_token) as admin:
        for method, path, field, _ in booleans:
            for bad in BAD_BOOLEANS:
                answer = admin.request(method, _url(path), json=_body(field, bad))
                assert ".".join(field) in refused_fields(answer), (method, path, field, bad, answer.text)
    assert database_state(engine) == before


def test_integer_query_parameters_are_digits(api: Api, engine: Engine, admin_token: str, document: dict[str, Any]) -> None:
    before = database_state(engine)
    with api.client(admin_token) as admin:
        assert admin.get("/v1/users", params={"limit": "1"}).status_code == 200
        assert len(admin.get("/v1/users", params={"limit": "0002"}).json()["data"]) <= 2
        checked = 0
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                for parameter in operation.get("parameters", []):
                    if parameter["in"] == "query" and _resolve(document, parameter["schema"]).get("type") == "integer":
                        for bad in BAD_QUERY_INTEGERS:
                            answer = admin.request(method, _url(path), params={parameter["name"]: bad})
                            assert parameter["name"] in refused_fields(answer), (method, path, bad)
                        checked += 1
    assert checked > 20
    assert database_state(engine) == before


def test_boolean_query_parameters_are_true_or_false(api: Api, engine: Engine, admin_token: str, document: dict[str, Any]) -> None:
    before = database_state(engine)
    with api.client(admin_token) as admin:
        assert admin.get("/v1/products", params={"include_inactive": "true", "is_recurring": "false"}).status_code == 200
        checked = 0
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                for parameter in operation.get("parameters", []):
                    schema = _resolve(document, parameter["schema"])
                    kinds = {schema.get("type")} | {_resolve(document, s).get("type") for s in schema.get("anyOf", [])}
                    if parameter["in"] == "query" and "boolean" in kinds:
                        for bad in BAD_QUERY_BOOLEANS:
                            answer = admin.request(method, _url(path), params={parameter["name"]: bad})
                            assert parameter["name"] in refused_fields(answer), (method, path, bad, answer.text)
                        checked += 1
    assert checked >= 3
    assert database_state(engine) == before


def test_a_query_parameter_no_route_declares_is_refused_by_name(api: Api, engine: Engine, admin_token: str, document: dict[str, Any]) -> None:
    with api.client(admin_token) as admin:
        admin.get("/v1/users")
        before = database_state(engine)
        # It used to be ignored: asking for one customer by a filter that does not exist (`email`
        # exists now; `mail` never did) listed every user.
        answer = admin.get("/v1/users", params={"mail": "ada@example.com"})
        assert refused_fields(answer) == {"mail"}
        assert "mail" in answer.json()["detail"]
        assert admin.get("/v1/users", params={"limit": "5", "starting_after": "usr_0"}).status_code == 200
        for path, operations in document["paths"].items():
            for method in operations:
                answer = admin.request(method, _url(path), params={"expand": "all", "limit_": "1"})
                assert refused_fields(answer) == {"expand", "limit_"}, (method, path)
    with api.client() as anyone:
        assert refused_fields(anyone.get("/v1/products", params={"price_cents": "0"})) == {"price_cents"}
        assert anyone.get("/", params={"utm_source": "newsletter"}).status_code == 200, "web pages are not the API"
    assert database_state(engine) == before


def test_a_body_field_no_schema_declares_is_refused_by_name(api: Api, engine: Engine, admin_token: str, document: dict[str, Any]) -> None:
    before = database_state(engine)
    checked = set()
    with api.client(admin_token) as admin:
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                if "requestBody" not in operation:
                    continue
                for where in set(_objects(document, operation["requestBody"]["content"]["application/json"]["schema"])):
                    answer = admin.request(method, _url(path), json=_body((*where, "unexpected"), "x"))
                    assert ".".join((*where, "unexpected")) in refused_fields(answer), (method, path, where, answer.text)
                    checked.add((method, path, where))
    assert ("post", "/v1/products", ("variations", "0")) in checked
    assert ("post", "/v1/admin/clock/advance", ()) in checked
    assert database_state(engine) == before


def test_every_one_line_text_field_refuses_line_breaks_and_control_characters(api: Api, engine: Engine, admin_token: str, document: dict[str, Any]) -> None:
    texts = [
        (method, path, field, leaf) for method, path, field, leaf in body_fields(document, "string")
        if "enum" not in leaf and "format" not in leaf and field[-1] not in MULTI_LINE_FIELDS and field[-2:-1] != ("metadata",)
    ]
    named = {part for _, _, field, _ in texts for part in field}
    assert {"name", "last_name", "display_name", "reason", "line1", "city", "tax_id", "feature", "options"} <= named, named
    before = database_state(engine)
    with api.client(admin_token) as admin:
        for method, path, field, _ in texts:
            for bad in (BAD_LINES[0], BAD_LINES[3], BAD_LINES[5]):  # CR LF, NEL (C1), ESC (C0)
                answer = admin.request(method, _url(path), json=_body(field, bad))
                assert ".".join(field) in refused_fields(answer), (method, path, field, bad, answer.text)
    assert database_state(engine) == before


def test_an_organization_name_that_would_break_its_invitation_email_is_refused(api: Api, engine: Engine, admin_token: str, address: str) -> None:
    """It was stored; inviting someone then answered 500 after the invitation was committed, and
    the email was never sent."""
    ada = person(engine, "ada")
    before = database_state(engine)
    with api.client(ada.token) as client:
        for bad in BAD_LINES:
            assert refused_fields(client.post("/v1/organizations", json={"name": bad})) == {"name"}
    assert database_state(engine) == before
    organization = create_organization(api, ada, "Acme Ltd")
    with api.client(ada.token) as client:
        before = database_state(engine)
        assert refused_fields(client.patch(f"/v1/organizations/{organization}", json={"name": "Acme\r\nBcc: x@example.com"})) == {"name"}
        assert database_state(engine) == before
        invited = client.post(f"/v1/organizations/{organization}/invitations", json={"email": address})
        assert invited.status_code == 201, invited.text
    [mail] = api.mails_to(address)
    assert mail["Subject"] == "You are invited to join Acme Ltd" and mail["Bcc"] is None


def test_a_name_that_reaches_an_email_header_is_one_line(api: Api, engine: Engine, address: str) -> None:
    with api.client() as client:
        refused = client.post("/v1/auth/register", json={
            "email": address, "password": PASSWORD, "name": "Grace\r\nBcc: x@example.com", "last_name": "Hop\u2028per",
        })
        assert refused_fields(refused) == {"name", "last_name"}
    assert api.mails_to(address) == []
    api.sign_up(address, name="Grace", last_name="Hopper")
    token = api.sign_in(address)
    with api.client(token) as client:
        assert refused_fields(client.patch("/v1/me", json={"name": "Grace\nHopper"})) == {"name"}
        assert client.get("/v1/me").json()["name"] == "Grace"
        assert client.patch("/v1/me", json={"name": "Grace Brewster Murray"}).status_code == 200, "spaces are fine"


def test_money_and_counts_are_not_read_from_booleans_strings_or_floats(api: Api, engine: Engine, admin_token: str) -> None:
    """`{"amount_cents": true}` refunded 1 cent and `"1_0"` ordered 10 units."""
    ada = customer(api, engine)
    book = product(engine, 1999)
    with session_factory(engine)() as session:
        orders_before = session.scalar(sa.select(sa.func.count()).select_from(Order))
    with api.client(ada.token) as client:
        for quantity in ["1_0", "10", 10.0, True]:
            assert refused_fields(client.post("/v1/orders", json={"items": [{"product_id": book, "quantity": quantity}]})) == {"items.0.quantity"}
    with session_factory(engine)() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Order)) == orders_before
    made = order(api, ada.token, (book, 1))
    with api.client(ada.token) as client:
        paid = checkout(client, made["id"])
        assert paid.status_code == 200, paid.text
    payment = paid.json()["payment"]["id"]
    with api.client(admin_token) as admin:
        for amount in [True, "1_0", "100", 100.0]:
            refused = admin.post(f"/v1/payments/{payment}/refunds", json={"amount_cents": amount}, headers={"Idempotency-Key": f"k-{amount!r}"})
            assert refused_fields(refused) == {"amount_cents"}
        refused = admin.post("/v1/products", json={
            "name": "Course", "product_type": "service", "price_cents": 1999.0, "currency": "USD",
        })
        assert refused_fields(refused) == {"price_cents"}
        refused = admin.patch(f"/v1/products/{book}", json={"trial_days": "7", "price_cents": "1_000"})
        assert refused_fields(refused) == {"trial_days", "price_cents"}
    with session_factory(engine)() as session:
        assert session.get(Payment, payment).status == "completed"
        assert session.scalars(sa.select(Refund).where(Refund.payment_id == payment)).all() == []
        assert session.get(Product, book).price_cents == 1999
    [charge] = sandbox_charges(api, payment)
    assert charge.amount_refunded.amount == 0, "the provider refunded nothing"


def test_a_header_with_non_ascii_bytes_is_refused_not_a_500(api: Api, engine: Engine, address: str) -> None:
    """A non-ASCII X-CSRF-Token made the CSRF check raise (500)."""
    api.sign_up(address)
    with api.client() as client:
        signed_in = client.post("/v1/auth/sign-in", json={"email": address, "password": PASSWORD, "transport": "cookie"})
        assert signed_in.status_code == 200, signed_in.text
        before = database_state(engine)
        for token in ["é".encode(), "\xe9".encode("latin-1"), signed_in.json()["csrf_token"].encode() + "é".encode()]:
            forged = client.patch("/v1/me", json={"name": "Mallory"}, headers={"X-CSRF-Token": token})
            assert_problem(forged, 403, "csrf_failed")
        assert database_state(engine) == before
        assert client.get("/v1/me").json()["name"] == "Grace"
    with api.client() as anyone:
        for name, value in [
            ("Authorization", "Bearer bfs_é".encode()),
            ("Authorization", "Bearer bfk_é".encode()),
            ("Authorization", "Bearér x".encode()),
            ("Cookie", "billfold_session=bfs_é".encode()),
        ]:
            assert anyone.get("/v1/me", headers={name: value}).status_code == 401, (name, value)
    with api.client(api.sign_in(address)) as client:
        keyed = client.post("/v1/orders", json={"items": []}, headers={"Idempotency-Key": "clé".encode()})
        assert "Idempotency-Key" in refused_fields(keyed)
