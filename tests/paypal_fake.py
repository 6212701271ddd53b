"""A stateful PayPal fake, held to PayPal's own OpenAPI documents.

A small Starlette app, served by uvicorn on a free 127.0.0.1 port in a thread, that does what the
PayPal adapter asks of PayPal (OAuth2 client credentials, Orders v2, Payments v2, Vault v3 payment
tokens, verify-webhook-signature) with its state in memory. Every request to a PayPal path, and
every answer the fake gives, is validated with openapi-core against the documents in
``tests/fixtures/paypal/`` (copied from PayPal's published specifications, Apache-2.0, see the
LICENSE there): a request that breaks the contract is answered 500 and recorded in
``violations``, and so is an answer of the fake's own that breaks it, so a test fails however the
adapter or the fake drifts from PayPal (the ``paypal`` fixture asserts no violations).

Not in those documents, so checked by hand: ``POST /v1/oauth2/token`` (its form and Basic auth).
Where the documents contradict PayPal's own usage, ``AMENDMENTS`` says what is changed and why.

Test hooks, under ``/_fake/`` and not validated: approve an order as the buyer (optionally with a
funding instrument that will be declined), approve a vault setup token, make a vault payment
token's later captures be declined, make the next matching
call fail with a 500 (nothing done) or time out (done, the answer never arrives), revoke the
issued access tokens, list what was captured, and deliver a webhook event to a URL.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import functools
import hashlib
import hmac
import json
import secrets
import string
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from billfold.kit import clock
from tests.server import free_port

FIXTURES = Path(__file__).parent / "fixtures" / "paypal"
PAYPAL_SERVER = "https://api-m.sandbox.paypal.com"  # the documents' server: requests are validated as if sent there
DOCUMENTS = {
    "/v2/checkout/": "checkout_orders_v2",
    "/v2/payments/": "payments_payment_v2",
    "/v3/vault/": "vault_payment_tokens_v3",
    "/v1/notifications/": "notifications_webhooks_v1",
    "/v1/customer/disputes": "customer_disputes_v1",
    "/v1/reporting/": "reporting_transactions_v1",
}
UNDOCUMENTED = ("/v1/oauth2/token",)

AMENDMENTS = (
    # (document, where, why)
    ("vault_payment_tokens_v3", "token_id_request.type enum += SETUP_TOKEN",
     "the published document lists only BILLING_AGREEMENT, but PayPal's vault flow (and its guides) make a "
     "payment token from a setup token with type SETUP_TOKEN"),
    ("notifications_webhooks_v1", "event: readOnly dropped from its properties",
     "verify-webhook-signature takes the event as delivered (the operation's own example sends id, "
     "create_time, event_type, resource ...), which a strict readOnly check would refuse"),
    ("reporting_transactions_v1", "servers: https://api-m.paypal.com/v1/reporting -> https://api-m.sandbox.paypal.com",
     "its paths already begin with /v1/reporting; PayPal serves them at {api}/v1/reporting/transactions"),
)

WHOLE_UNITS = frozenset({"HUF", "JPY", "TWD"})
ALPHABET = string.ascii_uppercase + string.digits
UNPROCESSABLE = "The requested action could not be performed, semantically incorrect, or failed business validation."
EXPIRES_IN = 32400  # PayPal's access tokens live nine hours


def _amend(name: str, document: dict[str, Any]) -> dict[str, Any]:
    schemas = document["components"]["schemas"]
    if name == "vault_payment_tokens_v3":
        kind = schemas["token_id_request"]["properties"]["type"]
        kind["enum"] = [*kind["enum"], "SETUP_TOKEN"]
    if name == "reporting_transactions_v1":
        document["servers"] = [{"url": PAYPAL_SERVER}]
    if name == "notifications_webhooks_v1":
        for prop in schemas["event"]["properties"].values():
            prop.pop("readOnly", None)
    return document


@functools.cache
def documents() -> dict[str, dict[str, Any]]:
    return {name: _amend(name, json.loads((FIXTURES / f"{name}.json").read_text())) for name in DOCUMENTS.values()}


@functools.cache
def contracts() -> dict[str, OpenAPI]:
    """The documents, loaded once per process (the checks of the documents themselves are off:
    PayPal's documents use formats and patterns the strict meta-schema check refuses)."""
    return {name: OpenAPI.from_dict(copy.deepcopy(document), config=Config(spec_validator_cls=None))
            for name, document in documents().items()}


def described(document: str, schema: str, issue: str) -> str:
    """The description the document fixes for ``issue`` in the error schema ``schema`` (PayPal's
    error schemas list each issue with its one description)."""
    for item in documents()[document]["components"]["schemas"][schema]["properties"]["details"]["items"]["anyOf"]:
        if item.get("title") == issue:
            return str(item["properties"]["description"].get("enum", [issue])[0])
    raise KeyError(f"{document} {schema} documents no issue {issue}")


def paypal_id(length: int = 17) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def stamp() -> str:
    return clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")


def minor(money: dict[str, Any]) -> Decimal:
    return Decimal(money["value"])


def money(value: Decimal, currency: str) -> dict[str, str]:
    return {"currency_code": currency, "value": str(value)}


class Answer(Exception):
    """An error answer: (status, body)."""

    def __init__(self, status: int, body: dict[str, Any] | None) -> None:
        super().__init__(status)
        self.status, self.body = status, body


def unprocessable(issue: str, where: tuple[str, str]) -> Answer:
    """A 422 with ``issue`` as ``where`` = (document, error schema) documents it."""
    return Answer(422, {"name": "UNPROCESSABLE_ENTITY", "message": UNPROCESSABLE, "debug_id": paypal_id(13).lower(),
                        "details": [{"issue": issue, "description": described(*where, issue)}]})


def not_found(document: str) -> Answer:
    schemas = documents()[document]["components"]["schemas"]
    description = described(document, "404", "INVALID_RESOURCE_ID") if "404" in schemas else "Specified resource ID does not exist."
    return Answer(404, {"name": "RESOURCE_NOT_FOUND", "message": "The specified resource does not exist.",
                        "debug_id": paypal_id(13).lower(),
                        "details": [{"issue": "INVALID_RESOURCE_ID", "description": description}]})


ORDERS, PAYMENTS, VAULT = "checkout_orders_v2", "payments_payment_v2", "vault_payment_tokens_v3"
CREATE_422, CAPTURE_422, AUTHORIZE_422 = (ORDERS, "422"), (ORDERS, "orders.capture-422"), (ORDERS, "orders.authorize-422")
PAYMENTS_422, VOID_422, REFUND_422 = (PAYMENTS, "422"), (PAYMENTS, "authorizations.void-422"), (PAYMENTS, "captures.refund-422")


@dataclass
class OrderRecord:
    order: dict[str, Any]
    vault_id: str | None = None
    decline: str | None = None  # the buyer's funding will be refused with this issue


@dataclass
class Fault:
    mode: str  # "500": answered 500, nothing done; "timeout": done, but the answer comes too late
    match: str  # a substring of "METHOD /path"


@dataclass
class FakeState:
    orders: dict[str, OrderRecord] = field(default_factory=dict)
    authorizations: dict[str, str] = field(default_factory=dict)  # authorization id -> order id
    captures: dict[str, str] = field(default_factory=dict)  # capture id -> order id
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    setup_tokens: dict[str, str] = field(default_factory=dict)  # approved setup token -> payer email
    payment_tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted_tokens: set[str] = field(default_factory=set)
    declining_tokens: dict[str, str] = field(default_factory=dict)  # payment token -> the issue its charges meet
    disputes: dict[str, dict[str, Any]] = field(default_factory=dict)
    transactions: list[dict[str, Any]] = field(default_factory=list)  # what Transaction Search lists
    replies: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)  # (path, request id) -> answer
    calls: list[dict[str, Any]] = field(default_factory=list)
    captured: list[dict[str, Any]] = field(default_factory=list)  # every capture made, in order
    faults: list[Fault] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    token_requests: int = 0


class PayPalFake:
    """The fake's state and app; ``url`` is set once served."""

    def __init__(self, client_id: str, client_secret: str, webhook_id: str, *, hang_seconds: float = 1.5) -> None:
        self.client_id, self.client_secret, self.webhook_id = client_id, client_secret, webhook_id
        self.hang_seconds = hang_seconds
        self.url = ""
        self.state = FakeState()
        self.tokens: dict[str, Any] = {}  # access token -> expiry (a datetime on billfold's clock)
        self.refuse_tokens = False  # every bearer token refused (the app's access was withdrawn)
        self._signing_key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self.app = Starlette(routes=[
            Route("/{path:path}", self.endpoint, methods=["GET", "POST", "PATCH", "DELETE", "PUT"]),
        ])

    def reset(self) -> None:
        with self._lock:
            self.state = FakeState()
            self.refuse_tokens = False

    # ---- the endpoint ---------------------------------------------------------------------------

    async def endpoint(self, request: Request) -> Response:
        path, method = request.url.path, request.method
        body = await request.body()
        if path.startswith("/_fake/"):
            return await self.hook(method, path, body)
        if path in UNDOCUMENTED:
            return self._token_endpoint(request, body)
        name = next((doc for prefix, doc in DOCUMENTS.items() if path.startswith(prefix)), None)
        rid = request.headers.get("paypal-request-id")
        with self._lock:
            self.state.calls.append({"method": method, "path": path, "request_id": rid})
        if name is None:
            return self._violation(f"{method} {path}: no PayPal document has this path")
        contract = contracts()[name]
        headers = dict(request.headers)
        mock = MockRequest(PAYPAL_SERVER, method, path, args=dict(request.query_params), headers=headers,
                           data=body or None, content_type=request.headers.get("content-type") or "application/json")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Unsupported scheme type": the fake checks the bearer token itself
            try:
                contract.validate_request(mock)
            except Exception as error:  # noqa: BLE001 - any validation failure is the adapter's drift
                return self._violation(f"request {method} {path}: {_explain(error)}")
        if not self._authorized(headers.get("authorization", "")):
            status, answer = 401, {"name": "AUTHENTICATION_FAILURE", "message": "Authentication failed due to missing authorization header, or invalid authentication credentials.", "debug_id": paypal_id(13).lower()}
            return self._answer(contract, mock, status, answer)
        fault = self._fault(f"{method} {path}")
        if fault is not None and fault.mode == "500":
            answer = {"name": "INTERNAL_SERVER_ERROR", "message": "An internal server error occurred.", "debug_id": paypal_id(13).lower()}
            return self._answer(contract, mock, 500, answer)
        replay_key = (path, rid) if rid and method in ("POST", "DELETE") else None
        with self._lock:
            replay = self.state.replies.get(replay_key) if replay_key else None
            if replay is None:
                try:
                    parsed = json.loads(body) if body else {}
                    status, answer = self.dispatch(method, path, parsed, dict(request.query_params))
                except Answer as error:
                    status, answer = error.status, error.body
                if replay_key and status < 500:
                    self.state.replies[replay_key] = (status, answer)
            else:
                status, answer = replay
        response = self._answer(contract, mock, status, answer)
        if fault is not None and fault.mode == "timeout":
            await asyncio.sleep(self.hang_seconds)
        return response

    def _answer(self, contract: OpenAPI, mock: MockRequest, status: int, answer: Any) -> Response:
        data = json.dumps(answer).encode() if answer is not None else b""
        checked = MockResponse(data, status_code=status, content_type="application/json" if answer is not None else "")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                contract.validate_response(mock, checked)
            except Exception as error:  # noqa: BLE001
                return self._violation(f"answer {status} to {mock.method.upper()} {mock.path}: {_explain(error)}")
        if answer is None:
            return Response(status_code=status)
        return JSONResponse(answer, status_code=status)

    def _violation(self, text: str) -> Response:
        with self._lock:
            self.state.violations.append(text)
        return JSONResponse({"name": "CONTRACT_VIOLATION", "message": text}, status_code=500)

    def _fault(self, call: str) -> Fault | None:
        with self._lock:
            for fault in self.state.faults:
                if fault.match in call:
                    self.state.faults.remove(fault)
                    return fault
        return None

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        expires = self.tokens.get(token)
        return not self.refuse_tokens and scheme == "Bearer" and expires is not None and clock.now() < expires

    def _token_endpoint(self, request: Request, body: bytes) -> Response:
        with self._lock:
            self.state.token_requests += 1
        expected = "Basic " + base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        form = dict(pair.split("=", 1) for pair in body.decode().split("&") if "=" in pair)
        if request.method != "POST" or form.get("grant_type") != "client_credentials":
            with self._lock:
                self.state.violations.append(f"token request: {request.method} with form {form}")
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        if not hmac.compare_digest(request.headers.get("authorization", ""), expected):
            return JSONResponse({"error": "invalid_client", "error_description": "Client Authentication failed"}, status_code=401)
        token = "A21AA" + secrets.token_urlsafe(24)
        self.tokens[token] = clock.now() + timedelta(seconds=EXPIRES_IN)
        return JSONResponse({
            "scope": "https://uri.paypal.com/services/payments/payment", "access_token": token,
            "token_type": "Bearer", "app_id": "APP-80W284485P519543T", "expires_in": EXPIRES_IN, "nonce": paypal_id(20),
        })

    # ---- PayPal's operations ---------------------------------------------------------------------

    def dispatch(self, method: str, path: str, body: dict[str, Any], query: dict[str, str]) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        match (method, parts):
            case ("POST", ["v2", "checkout", "orders"]):
                return 201, self.create_order(body)
            case ("GET", ["v2", "checkout", "orders", order_id]):
                return 200, self._record(order_id).order
            case ("POST", ["v2", "checkout", "orders", order_id, "capture"]):
                return 201, self.capture_order(order_id)
            case ("POST", ["v2", "checkout", "orders", order_id, "authorize"]):
                return 201, self.authorize_order(order_id)
            case ("GET", ["v2", "payments", "authorizations", authorization_id]):
                return 200, self._authorization(authorization_id)[1]
            case ("POST", ["v2", "payments", "authorizations", authorization_id, "capture"]):
                return 201, self.capture_authorization(authorization_id, body)
            case ("POST", ["v2", "payments", "authorizations", authorization_id, "void"]):
                self.void(authorization_id)
                return 204, None
            case ("GET", ["v2", "payments", "captures", capture_id]):
                return 200, self._capture_out(*self._capture(capture_id))
            case ("POST", ["v2", "payments", "captures", capture_id, "refund"]):
                return 201, self.refund(capture_id, body)
            case ("GET", ["v2", "payments", "refunds", refund_id]):
                if refund_id not in self.state.refunds:
                    raise not_found(PAYMENTS)
                return 200, self.state.refunds[refund_id]
            case ("POST", ["v3", "vault", "payment-tokens"]):
                return 201, self.make_payment_token(body)
            case ("GET", ["v3", "vault", "payment-tokens", token_id]):
                if token_id not in self.state.payment_tokens:
                    raise not_found(VAULT)
                return 200, self.state.payment_tokens[token_id]
            case ("DELETE", ["v3", "vault", "payment-tokens", token_id]):
                if token_id not in self.state.payment_tokens and token_id not in self.state.deleted_tokens:
                    raise Answer(400, {"name": "INVALID_REQUEST", "message": "Request is not well-formed, syntactically incorrect, or violates schema.",
                                       "debug_id": paypal_id(13).lower(), "details": [{"issue": "INVALID_PARAMETER_VALUE", "description": "unknown payment token"}]})
                self.state.payment_tokens.pop(token_id, None)
                self.state.deleted_tokens.add(token_id)
                return 204, None
            case ("GET", ["v1", "customer", "disputes", dispute_id]):
                if dispute_id not in self.state.disputes:
                    raise Answer(404, {"name": "RESOURCE_NOT_FOUND", "message": "The specified resource does not exist.",
                                       "debug_id": paypal_id(13).lower()})
                return 200, self.state.disputes[dispute_id]
            case ("GET", ["v1", "reporting", "transactions"]):
                return 200, self.search(query)
            case ("POST", ["v1", "notifications", "verify-webhook-signature"]):
                return 200, {"verification_status": "SUCCESS" if self.verified(body) else "FAILURE"}
        raise not_found(ORDERS)

    def _record(self, order_id: str) -> OrderRecord:
        record = self.state.orders.get(order_id)
        if record is None:
            raise not_found(ORDERS)
        return record

    def create_order(self, body: dict[str, Any]) -> dict[str, Any]:
        unit = body["purchase_units"][0]
        amount = unit["amount"]
        decimals = Decimal(amount["value"]).as_tuple().exponent
        if amount["currency_code"] in WHOLE_UNITS and isinstance(decimals, int) and decimals < 0:
            raise unprocessable("DECIMAL_PRECISION", CREATE_422)
        if isinstance(decimals, int) and decimals < -2:
            raise unprocessable("DECIMAL_PRECISION", CREATE_422)
        vault_id = ((body.get("payment_source") or {}).get("paypal") or {}).get("vault_id")
        if vault_id is not None and vault_id not in self.state.payment_tokens:
            raise unprocessable("PAYMENT_SOURCE_CANNOT_BE_USED", CREATE_422)
        order_id = paypal_id()
        now = stamp()
        out_unit = {k: v for k, v in unit.items() if k in ("reference_id", "amount", "custom_id", "invoice_id", "description")}
        out_unit.setdefault("reference_id", "default")
        order: dict[str, Any] = {
            "id": order_id, "intent": body["intent"], "status": "CREATED", "purchase_units": [out_unit],
            "create_time": now, "update_time": now,
            "links": [{"href": f"{self.url}/v2/checkout/orders/{order_id}", "rel": "self", "method": "GET"}],
        }
        if vault_id:
            order["payment_source"] = {"paypal": {"attributes": {"vault": {"id": vault_id, "status": "VAULTED"}}}}
        else:
            order["links"].append({"href": f"{self.url}/checkoutnow?token={order_id}", "rel": "approve", "method": "GET"})
        self.state.orders[order_id] = OrderRecord(order, vault_id, self.state.declining_tokens.get(vault_id or ""))
        return order

    def _ready(self, record: OrderRecord, intent: str) -> None:
        order = record.order
        where = CAPTURE_422 if intent == "CAPTURE" else AUTHORIZE_422
        if order["status"] == "COMPLETED":
            issue = "ORDER_ALREADY_CAPTURED" if intent == "CAPTURE" else "ORDER_ALREADY_AUTHORIZED"
            raise unprocessable(issue, where)
        if order["intent"] != intent:
            raise unprocessable("ACTION_DOES_NOT_MATCH_INTENT" if intent == "AUTHORIZE" else "INCOMPATIBLE_PARAMETER_VALUE", where)
        if order["status"] != "APPROVED" and record.vault_id is None:
            raise unprocessable("ORDER_NOT_APPROVED", where)
        if record.decline:
            raise unprocessable(record.decline, where)

    def capture_order(self, order_id: str) -> dict[str, Any]:
        record = self._record(order_id)
        self._ready(record, "CAPTURE")
        order = record.order
        unit = order["purchase_units"][0]
        capture = self._new_capture(order_id, unit["amount"])
        unit["payments"] = {"captures": [capture]}
        order["status"] = "COMPLETED"
        order["update_time"] = stamp()
        order["links"] = [link for link in order["links"] if link["rel"] != "approve"]
        return order

    def _new_capture(self, order_id: str, amount: dict[str, Any]) -> dict[str, Any]:
        capture_id = paypal_id()
        capture = {
            "id": capture_id, "status": "COMPLETED", "amount": dict(amount), "final_capture": True,
            "create_time": stamp(), "update_time": stamp(),
            "links": [{"href": f"{self.url}/v2/payments/captures/{capture_id}", "rel": "self", "method": "GET"},
                      {"href": f"{self.url}/v2/checkout/orders/{order_id}", "rel": "up", "method": "GET"}],
        }
        self.state.captures[capture_id] = order_id
        self._transaction(capture_id, order_id, "T0006", amount, capture["create_time"])
        self.state.captured.append({"capture_id": capture_id, "order_id": order_id, "amount": dict(amount)})
        return capture

    def authorize_order(self, order_id: str) -> dict[str, Any]:
        record = self._record(order_id)
        self._ready(record, "AUTHORIZE")
        order = record.order
        unit = order["purchase_units"][0]
        authorization_id = paypal_id()
        unit["payments"] = {"authorizations": [{
            "id": authorization_id, "status": "CREATED", "amount": dict(unit["amount"]),
            "create_time": stamp(), "update_time": stamp(),
            "links": [{"href": f"{self.url}/v2/payments/authorizations/{authorization_id}", "rel": "self", "method": "GET"}],
        }]}
        self.state.authorizations[authorization_id] = order_id
        order["status"] = "COMPLETED"
        order["links"] = [link for link in order["links"] if link["rel"] != "approve"]
        return order

    def _authorization(self, authorization_id: str) -> tuple[OrderRecord, dict[str, Any]]:
        order_id = self.state.authorizations.get(authorization_id)
        if order_id is None:
            raise not_found(PAYMENTS)
        record = self.state.orders[order_id]
        return record, record.order["purchase_units"][0]["payments"]["authorizations"][0]

    def capture_authorization(self, authorization_id: str, body: dict[str, Any]) -> dict[str, Any]:
        record, authorization = self._authorization(authorization_id)
        if authorization["status"] != "CREATED":
            raise unprocessable("AUTHORIZATION_VOIDED" if authorization["status"] == "VOIDED" else "AUTHORIZATION_ALREADY_CAPTURED",
                                PAYMENTS_422)
        amount = body.get("amount") or authorization["amount"]
        if minor(amount) > minor(authorization["amount"]):
            raise unprocessable("MAX_CAPTURE_AMOUNT_EXCEEDED", PAYMENTS_422)
        payments = record.order["purchase_units"][0]["payments"]
        capture = self._new_capture(record.order["id"], amount)
        payments.setdefault("captures", []).append(capture)
        authorization["status"] = "CAPTURED" if minor(amount) == minor(authorization["amount"]) else "PARTIALLY_CAPTURED"
        return self._capture_out(record, capture)

    def void(self, authorization_id: str) -> None:
        _, authorization = self._authorization(authorization_id)
        if authorization["status"] in ("CAPTURED", "PARTIALLY_CAPTURED"):
            raise unprocessable("PREVIOUSLY_CAPTURED", VOID_422)
        if authorization["status"] == "VOIDED":
            raise unprocessable("PREVIOUSLY_VOIDED", VOID_422)
        authorization["status"] = "VOIDED"

    def _capture(self, capture_id: str) -> tuple[OrderRecord, dict[str, Any]]:
        order_id = self.state.captures.get(capture_id)
        if order_id is None:
            raise not_found(PAYMENTS)
        record = self.state.orders[order_id]
        capture = next(c for c in record.order["purchase_units"][0]["payments"]["captures"] if c["id"] == capture_id)
        return record, capture

    def _capture_out(self, record: OrderRecord, capture: dict[str, Any]) -> dict[str, Any]:
        return {**copy.deepcopy(capture), "supplementary_data": {"related_ids": {"order_id": record.order["id"]}}}

    def refund(self, capture_id: str, body: dict[str, Any]) -> dict[str, Any]:
        record, capture = self._capture(capture_id)
        payments = record.order["purchase_units"][0]["payments"]
        currency = capture["amount"]["currency_code"]
        done = sum((minor(r["amount"]) for r in payments.get("refunds", []) if self._refund_capture(r["id"]) == capture_id),
                   Decimal(0))
        left = minor(capture["amount"]) - done
        if left <= 0:
            raise unprocessable("CAPTURE_FULLY_REFUNDED", REFUND_422)
        amount = minor(body["amount"]) if body.get("amount") else left
        if body.get("amount") and body["amount"]["currency_code"] != currency:
            raise unprocessable("REFUND_CAPTURE_CURRENCY_MISMATCH", REFUND_422)
        if amount > left:
            raise unprocessable("REFUND_AMOUNT_EXCEEDED", REFUND_422)
        refund_id = paypal_id()
        refund = {
            "id": refund_id, "status": "COMPLETED", "amount": money(amount, currency),
            "create_time": stamp(), "update_time": stamp(),
            "links": [{"href": f"{self.url}/v2/payments/refunds/{refund_id}", "rel": "self", "method": "GET"},
                      {"href": f"{self.url}/v2/payments/captures/{capture_id}", "rel": "up", "method": "GET"}],
        }
        if body.get("note_to_payer"):
            refund["note_to_payer"] = body["note_to_payer"]
        if body.get("custom_id"):
            refund["custom_id"] = body["custom_id"]
        self.state.refunds[refund_id] = refund
        self._transaction(refund_id, record.order["id"], "T1107", money(-amount, currency), refund["create_time"])
        payments.setdefault("refunds", []).append(refund)
        capture["status"] = "REFUNDED" if amount == left else "PARTIALLY_REFUNDED"
        return refund

    def _transaction(self, transaction_id: str, order_id: str, code: str, amount: dict[str, Any], at: str) -> None:
        self.state.transactions.append({
            "transaction_id": transaction_id, "paypal_reference_id": order_id, "paypal_reference_id_type": "ODR",
            "transaction_event_code": code, "transaction_initiation_date": at, "transaction_updated_date": at,
            "transaction_amount": dict(amount), "transaction_status": "S",
        })

    def search(self, query: dict[str, str]) -> dict[str, Any]:
        """Transaction Search: the transactions in [start_date, end_date], a page at a time."""
        start, end = _parse(query["start_date"]), _parse(query["end_date"])
        if end - start > timedelta(days=31):
            raise Answer(400, {"name": "INVALID_REQUEST", "message": "Request is not well-formed, syntactically incorrect, or violates schema.",
                               "debug_id": paypal_id(13).lower(), "details": [{"issue": "INVALID_DATE_RANGE", "description": "The date range is more than 31 days."}]})
        found = [t for t in self.state.transactions if start <= _parse(t["transaction_initiation_date"]) <= end]
        size, page = int(query.get("page_size", 100)), int(query.get("page", 1))
        pages = max(1, -(-len(found) // size))
        answer: dict[str, Any] = {"account_number": "FAKE123", "start_date": query["start_date"], "end_date": query["end_date"],
                                  "page": page, "total_items": len(found), "total_pages": pages}
        chosen = found[(page - 1) * size:page * size]
        if chosen:  # the document wants at least one item in transaction_details when it is there
            answer["transaction_details"] = [{"transaction_info": t} for t in chosen]
        return answer

    def _refund_capture(self, refund_id: str) -> str:
        up = next(link["href"] for link in self.state.refunds[refund_id]["links"] if link["rel"] == "up")
        return up.rsplit("/", 1)[-1]

    def make_payment_token(self, body: dict[str, Any]) -> dict[str, Any]:
        token = body["payment_source"].get("token") or {}
        email = self.state.setup_tokens.pop(token.get("id", ""), None)
        if token.get("type") != "SETUP_TOKEN" or email is None:
            raise not_found(VAULT)
        token_id = paypal_id(8).lower() + paypal_id(4).lower()
        made: dict[str, Any] = {
            "id": token_id, "customer": {"id": (body.get("customer") or {}).get("id") or paypal_id(10)},
            "payment_source": {"paypal": {"email_address": email}},
            "links": [{"href": f"{self.url}/v3/vault/payment-tokens/{token_id}", "rel": "self", "method": "GET"}],
        }
        self.state.payment_tokens[token_id] = made
        return made

    # ---- webhooks ----------------------------------------------------------------------------

    def _signature(self, transmission_id: str, transmission_time: str, webhook_id: str, event: Any) -> str:
        message = "|".join([transmission_id, transmission_time, webhook_id, json.dumps(event, sort_keys=True)])
        return hmac.new(self._signing_key, message.encode(), hashlib.sha256).hexdigest()

    def verified(self, body: dict[str, Any]) -> bool:
        if body["webhook_id"] != self.webhook_id:
            return False
        expected = self._signature(body["transmission_id"], body["transmission_time"], body["webhook_id"], body["webhook_event"])
        return hmac.compare_digest(expected, body["transmission_sig"])

    def build_webhook(self, event_type: str, resource: dict[str, Any], resource_type: str = "capture") -> tuple[bytes, dict[str, str]]:
        """An event as PayPal delivers it: the JSON body and its PAYPAL-* transmission headers."""
        event = {
            "id": "WH-" + paypal_id(17) + "-" + paypal_id(17), "event_version": "1.0", "create_time": stamp(),
            "resource_type": resource_type, "event_type": event_type, "summary": f"{event_type} (fake)",
            "resource": resource,
        }
        transmission_id, transmission_time = secrets.token_hex(16), stamp()
        headers = {
            "PAYPAL-AUTH-ALGO": "SHA256withRSA", "PAYPAL-CERT-URL": f"{self.url}/_fake/cert.pem",
            "PAYPAL-TRANSMISSION-ID": transmission_id, "PAYPAL-TRANSMISSION-TIME": transmission_time,
            "PAYPAL-TRANSMISSION-SIG": self._signature(transmission_id, transmission_time, self.webhook_id, event),
            "content-type": "application/json",
        }
        return json.dumps(event).encode(), headers

    # ---- hooks ----------------------------------------------------------------------------------

    async def hook(self, method: str, path: str, body: bytes) -> Response:
        given = json.loads(body) if body else {}
        parts = path.strip("/").split("/")[1:]
        match parts:
            case ["orders", order_id, "approve"]:
                with self._lock:
                    record = self.state.orders[order_id]
                    record.order["status"] = "APPROVED"
                    record.decline = given.get("decline")
                return JSONResponse({"status": "APPROVED"})
            case ["setup-tokens"]:
                token = paypal_id(17)
                with self._lock:
                    self.state.setup_tokens[token] = given.get("email") or "buyer@example.com"
                return JSONResponse({"id": token})
            case ["payment-tokens", token_id, "decline"]:  # the vaulted account can no longer pay
                with self._lock:
                    self.state.declining_tokens[token_id] = given["issue"]
                return JSONResponse({"issue": given["issue"]})
            case ["faults"]:
                with self._lock:
                    self.state.faults.append(Fault(given["mode"], given["match"]))
                return JSONResponse({"queued": len(self.state.faults)})
            case ["disputes"]:  # the buyer disputes a capture
                with self._lock:
                    record, capture = self._capture(given["capture_id"])
                    dispute_id = f"PP-D-{secrets.randbelow(10**6)}"
                    self.state.disputes[dispute_id] = {
                        "dispute_id": dispute_id, "create_time": stamp(), "update_time": stamp(),
                        "disputed_transactions": [{"seller_transaction_id": capture["id"]}],
                        "reason": given.get("reason", "MERCHANDISE_OR_SERVICE_NOT_RECEIVED"), "status": "OPEN",
                        "dispute_amount": given.get("amount") or capture["amount"],
                    }
                return JSONResponse({"id": dispute_id})
            case ["disputes", dispute_id, "resolve"]:
                with self._lock:
                    self.state.disputes[dispute_id]["status"] = "RESOLVED"
                    self.state.disputes[dispute_id]["dispute_outcome"] = {"outcome_code": given["outcome"]}
                return JSONResponse({"status": "RESOLVED"})
            case ["revoke-tokens"]:
                self.tokens.clear()
                self.refuse_tokens = bool(given.get("for_good"))
                return JSONResponse({"revoked": True})
            case ["captured"]:
                with self._lock:
                    return JSONResponse(list(self.state.captured))
            case ["deliver"]:
                delivery, headers = self.build_webhook(given["event_type"], given["resource"], given.get("resource_type", "capture"))
                if given.get("tamper"):
                    delivery = delivery.replace(b'"value": "', b'"value": "1')
                async with httpx.AsyncClient(timeout=10) as client:
                    sent = await client.post(given["url"], content=delivery, headers=headers)
                return JSONResponse({"status": sent.status_code, "body": sent.text})
        return JSONResponse({"error": f"no hook {method} {path}"}, status_code=404)


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _explain(error: Exception) -> str:
    parts = [f"{type(error).__name__}: {error}"]
    for inner in getattr(error, "schema_errors", None) or getattr(error.__cause__, "schema_errors", None) or []:
        parts.append(str(getattr(inner, "message", inner))[:300])
    return " | ".join(parts)[:2000]


@contextmanager
def serving(fake: PayPalFake) -> Iterator[str]:
    """Serve ``fake`` on a free 127.0.0.1 port in a thread; yields its URL."""
    contracts()  # load the documents before the first request's clock starts
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(fake.app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the PayPal fake did not start")
        time.sleep(0.02)
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake.url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class Buyer:
    """The hooks, as a test calls them (what a buyer or PayPal itself would do)."""

    def __init__(self, fake: PayPalFake) -> None:
        self.fake = fake
        self.http = httpx.Client(base_url=fake.url, timeout=10)

    def approve(self, order_id: str, *, decline: str | None = None) -> None:
        self.http.post(f"/_fake/orders/{order_id}/approve", json={"decline": decline}).raise_for_status()

    def setup_token(self, email: str = "buyer@example.com") -> str:
        answer = self.http.post("/_fake/setup-tokens", json={"email": email})
        answer.raise_for_status()
        return str(answer.json()["id"])

    def decline_payment_token(self, token_id: str, issue: str = "INSTRUMENT_DECLINED") -> None:
        """Every later capture of an order paid with this vault payment token is refused with ``issue``."""
        self.http.post(f"/_fake/payment-tokens/{token_id}/decline", json={"issue": issue}).raise_for_status()

    def fail_next(self, match: str, mode: str) -> None:
        self.http.post("/_fake/faults", json={"match": match, "mode": mode}).raise_for_status()

    def dispute(self, capture_id: str) -> str:
        answer = self.http.post("/_fake/disputes", json={"capture_id": capture_id})
        answer.raise_for_status()
        return str(answer.json()["id"])

    def resolve(self, dispute_id: str, outcome: str) -> None:
        self.http.post(f"/_fake/disputes/{dispute_id}/resolve", json={"outcome": outcome}).raise_for_status()

    def revoke_tokens(self, *, for_good: bool = False) -> None:
        """Forget the access tokens issued; ``for_good``: refuse every token from now on."""
        self.http.post("/_fake/revoke-tokens", json={"for_good": for_good}).raise_for_status()

    def captured(self) -> list[dict[str, Any]]:
        return list(self.http.get("/_fake/captured").json())

    def deliver(self, url: str, event_type: str, resource: dict[str, Any], *, resource_type: str = "capture",
                tamper: bool = False) -> dict[str, Any]:
        answer = self.http.post("/_fake/deliver", json={"url": url, "event_type": event_type, "resource": resource,
                                                        "resource_type": resource_type, "tamper": tamper})
        answer.raise_for_status()
        return dict(answer.json())


# ---- run by hand: python -m tests.paypal_fake --port 8421 ----------------------------------------

GUIDE_CLIENT_ID = "guide-client-id"
GUIDE_CLIENT_SECRET = "guide-client-secret-0123456789"
GUIDE_WEBHOOK_ID = "GUIDE0WEBHOOK0ID"


def main(argv: list[str] | None = None) -> None:
    """Serve the fake on 127.0.0.1 until Ctrl-C, after printing the provider config Billfold needs
    for it (docs/providers.md, "Getting started")."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.paypal_fake", description=main.__doc__)
    parser.add_argument("--port", type=int, default=8421)
    parser.add_argument("--client-id", default=GUIDE_CLIENT_ID)
    parser.add_argument("--client-secret", default=GUIDE_CLIENT_SECRET)
    parser.add_argument("--webhook-id", default=GUIDE_WEBHOOK_ID)
    given = parser.parse_args(argv)
    fake = PayPalFake(given.client_id, given.client_secret, given.webhook_id)
    fake.url = f"http://127.0.0.1:{given.port}"
    contracts()
    config = {"kind": "paypal", "client_id": given.client_id, "client_secret": given.client_secret,
              "webhook_id": given.webhook_id, "api_base": fake.url}
    print(f"PayPal fake on {fake.url} (Ctrl-C stops it). Billfold's provider config for it:", flush=True)
    print(json.dumps(config), flush=True)
    print(f"The buyer approves an order: POST {fake.url}/_fake/orders/<order id>/approve; "
          f"a vault setup token: POST {fake.url}/_fake/setup-tokens", flush=True)
    uvicorn.run(fake.app, host="127.0.0.1", port=given.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
