"""A stateful fake of Authorize.net's JSON API, served by uvicorn on a free 127.0.0.1 port in a thread.

One POST endpoint (``/xml/v1/request.api``) dispatches on the request's root key, as the real
API does, and answers the documented JSON shapes after a UTF-8 byte order mark, as the real API
does. It knows:

- ``createTransactionRequest``: ``authCaptureTransaction``, ``authOnlyTransaction``,
  ``priorAuthCaptureTransaction`` (a lower amount captures part), ``voidTransaction`` (unsettled
  only), ``refundTransaction`` (settled only, the card's last four must match, never more than
  settled minus refunded: error 55); the duplicate window (``transactionSettings``
  ``duplicateWindow``, default 120 s): the same type, amount, card or profile and invoice number
  within the window is refused with response code 3, error 11, and nothing is made;
- ``userFields`` of a charge or refund, kept and shown in its details;
- ``getTransactionDetailsRequest``, ``getUnsettledTransactionListRequest``,
  ``getSettledBatchListRequest``, ``getTransactionListRequest`` (paging by page number);
- ``createCustomerProfileRequest`` (E00039 on a second ``merchantCustomerId``),
  ``getCustomerProfileRequest``, ``createCustomerPaymentProfileRequest`` (E00039 for the same card
  on the same profile, naming it), ``getCustomerPaymentProfileRequest``,
  ``deleteCustomerPaymentProfileRequest``; E00040 for what it does not have, E00007 for wrong
  credentials.

Accept.js opaque data values name the outcome (the descriptor is not checked):

- ``approve`` (a Visa ending 1111), ``approvemc`` (a Mastercard ending 4444);
- ``decline<reason>``, e.g. ``decline65``: declined with that response reason code (2 general, 3
  referral, 4 pick up card, 8 expired card with response code 3, 44/45/65 card code mismatch, ...);
- ``review``: held for review (response code 4, reason 253);
- anything else: ``E00114`` "Invalid OTS Token.".

(Base64 ``=`` padding on a value is ignored: the compact token form leaves it off.)

Test hooks, under ``/_fake/``: ``POST settle`` (a new batch settles every captured charge and
refund), ``POST fail {"mode": "timeout"|"500", "when": "before"|"after", "count": 1, "root": null}`` (the next
calls, or the next calls of that root, e.g. ``createTransactionRequest``, stall past the client's
timeout or answer 500, having done their work or not),
``POST decline {"reason": 65}`` (the next transaction declines with it), ``GET transactions``,
``GET events``, ``POST deliver {"url", "notificationId"}`` (a recorded event, signed with
X-ANET-Signature and POSTed to ``url``; answers the status and body).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from billfold.kit import clock
from billfold.providers.authorizenet import sign_webhook
from tests.server import free_port

API_PATH = "/xml/v1/request.api"
BOM = "\ufeff".encode()

REASONS = {
    1: "This transaction has been approved.",
    2: "This transaction has been declined.",
    3: "This transaction has been declined.",
    4: "The code returned from the processor indicating that the card used needs to be picked up.",
    8: "The credit card has expired.",
    11: "A duplicate transaction has been submitted.",
    16: "The transaction cannot be found.",
    44: "This transaction has been declined.",
    45: "This transaction has been declined.",
    47: "The amount requested for settlement cannot be greater than the original amount authorized.",
    54: "The referenced transaction does not meet the criteria for issuing a credit.",
    55: "The sum of credits against the referenced transaction would exceed original debit amount.",
    65: "This transaction has been declined.",
    253: "The transaction was accepted and was authorized, but is being held for merchant review.",
    310: "This transaction has already been voided.",
    311: "This transaction has already been captured.",
}
RESPONSE_CODE = {8: "3"}  # reasons answered with response code 3 (an error) rather than 2 (declined)
CARDS = {"approve": ("XXXX1111", "Visa"), "approvemc": ("XXXX4444", "MasterCard")}


def _stamp(moment: datetime) -> str:
    return moment.astimezone(clock.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _dumps(document: dict[str, Any]) -> bytes:
    """JSON with amounts as plain numbers (12.50), as the real API writes them."""
    def marked(value: Any) -> Any:
        if isinstance(value, Decimal):
            return f"@@{value:.2f}@@"
        raise TypeError(type(value).__name__)
    text = json.dumps(document, default=marked)
    return BOM + re.sub(r'"@@([0-9.]+)@@"', r"\1", text).encode()


class AuthorizeNetFake:
    """The fake's state and its ASGI app; ``url`` is set once it is served."""

    def __init__(self, login: str, transaction_key: str, signature_key: str, stall_seconds: float = 2.0) -> None:
        self.login, self.transaction_key, self.signature_key = login, transaction_key, signature_key
        self.stall_seconds = stall_seconds
        self.transactions: dict[str, dict[str, Any]] = {}
        self.customers: dict[str, dict[str, Any]] = {}
        self.batches: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.failures: list[tuple[str, str, str | None]] = []  # (mode, when, only this root or any)
        self.next_decline: int | None = None
        self.requests: list[str] = []
        self._ids = itertools.count(60000000001)
        self._lock = threading.Lock()
        self.url = ""
        self.app = Starlette(routes=[
            Route(API_PATH, self.api, methods=["POST"]),
            Route("/_fake/settle", self.hook_settle, methods=["POST"]),
            Route("/_fake/fail", self.hook_fail, methods=["POST"]),
            Route("/_fake/decline", self.hook_decline, methods=["POST"]),
            Route("/_fake/transactions", self.hook_transactions, methods=["GET"]),
            Route("/_fake/events", self.hook_events, methods=["GET"]),
            Route("/_fake/deliver", self.hook_deliver, methods=["POST"]),
        ])

    @property
    def api_base(self) -> str:
        return self.url + API_PATH

    def new_id(self) -> str:
        return str(next(self._ids))

    # ---- the API --------------------------------------------------------------------------

    async def api(self, request: Request) -> Response:
        raw = await request.body()
        try:
            document = json.loads(raw.decode("utf-8-sig"), parse_float=Decimal)
            [(root, body)] = document.items()
        except (ValueError, AttributeError):
            return self._answer({"messages": _error("E00003", "An error occurred while parsing the request.")})
        with self._lock:
            self.requests.append(root)
            failure = next((f for f in self.failures if f[2] in (None, root)), None)
            if failure is not None:
                self.failures.remove(failure)
        if failure is not None and failure[1] == "before":
            return await self._fail(failure[0], None)
        auth = body.get("merchantAuthentication") or {}
        if auth.get("name") != self.login or auth.get("transactionKey") != self.transaction_key:
            answer = {"messages": _error("E00007", "User authentication failed due to invalid authentication values.")}
        else:
            handler = getattr(self, "do_" + root, None)
            with self._lock:
                answer = handler(body) if handler else {"messages": _error("E00045", "The root node does not reference "
                                                                          "a valid XML namespace.")}
        if "refId" in body:
            answer = {"refId": body["refId"], **answer}
        if failure is not None:
            return await self._fail(failure[0], answer)
        return self._answer(answer)

    async def _fail(self, mode: str, answer: dict[str, Any] | None) -> Response:
        if mode == "timeout":
            await asyncio.sleep(self.stall_seconds)
            return self._answer(answer or {"messages": _error("E00001", "An error occurred during processing.")})
        return Response(b"<html>500 Internal Server Error</html>", status_code=500)

    def _answer(self, answer: dict[str, Any]) -> Response:
        return Response(_dumps(answer), media_type="application/json; charset=utf-8")

    def do_createTransactionRequest(self, body: dict[str, Any]) -> dict[str, Any]:
        request = body.get("transactionRequest") or {}
        kind = request.get("transactionType")
        if kind in ("authCaptureTransaction", "authOnlyTransaction"):
            return self._charge(kind, request)
        if kind == "priorAuthCaptureTransaction":
            return self._prior_auth_capture(request)
        if kind == "voidTransaction":
            return self._void(request)
        if kind == "refundTransaction":
            return self._refund(request)
        return {"messages": _error("E00003", f"The transactionType '{kind}' is not supported by this fake.")}

    def _charge(self, kind: str, request: dict[str, Any]) -> dict[str, Any]:
        amount = Decimal(str(request["amount"]))
        order = request.get("order") or {}
        if "payment" in request:
            value = request["payment"]["opaqueData"]["dataValue"].rstrip("=")
            source, profile = f"opaque:{value}", None
        else:
            wanted = request["profile"]
            customer = self.customers.get(str(wanted["customerProfileId"]))
            method = (customer or {}).get("payment_profiles", {}).get(str(wanted["paymentProfile"]["paymentProfileId"]))
            if method is None:
                return {"messages": _error("E00040", "The record cannot be found.")}
            value = method["dataValue"]
            source = f"profile:{wanted['customerProfileId']}/{wanted['paymentProfile']['paymentProfileId']}"
            profile = {"customerProfileId": str(wanted["customerProfileId"]),
                       "customerPaymentProfileId": str(wanted["paymentProfile"]["paymentProfileId"])}
        if not (value in CARDS or value == "review" or re.fullmatch(r"decline\d+", value)):
            return {"messages": _error("E00114", "Invalid OTS Token.")}
        window = _setting(request, "duplicateWindow", 120)
        now = clock.now()
        duplicate_key = (kind, amount, source, order.get("invoiceNumber"))
        for earlier in self.transactions.values():
            if earlier.get("duplicate_key") == duplicate_key and now - earlier["submitted"] < timedelta(seconds=window):
                return _transaction_answer("3", "0", 11, error=True)
        card, brand = CARDS.get(value, ("XXXX1111", "Visa"))
        reason, code = 1, "1"
        status = "capturedPendingSettlement" if kind == "authCaptureTransaction" else "authorizedPendingCapture"
        if self.next_decline is not None or value.startswith("decline"):
            reason = self.next_decline if self.next_decline is not None else int(value[len("decline"):])
            self.next_decline = None
            code, status = RESPONSE_CODE.get(reason, "2"), "declined"
        elif value == "review":
            reason, code = 253, "4"
            status = "FDSPendingReview" if kind == "authCaptureTransaction" else "FDSAuthorizedPendingReview"
        trans_id = self.new_id()
        self.transactions[trans_id] = {
            "transId": trans_id, "transactionType": kind, "transactionStatus": status, "responseCode": int(code),
            "responseReasonCode": reason, "responseReasonDescription": REASONS.get(reason, "Declined."),
            "authCode": "ABC123" if code == "1" else "", "AVSResponse": "Y", "submitted": now,
            "authAmount": amount, "settleAmount": amount if status == "capturedPendingSettlement" else Decimal(0),
            "order": {"invoiceNumber": order.get("invoiceNumber", ""), "description": order.get("description", "")},
            "card": card, "brand": brand, "profile": profile, "duplicate_key": duplicate_key,
            "userFields": _user_fields(request),
        }
        if code == "1":
            self._event("net.authorize.payment.authcapture.created" if kind == "authCaptureTransaction"
                        else "net.authorize.payment.authorization.created", trans_id, amount)
        elif code == "4":
            self._event("net.authorize.payment.fraud.held", trans_id, amount)
        return _transaction_answer(code, trans_id, reason, error=code not in ("1", "4"), card=card, brand=brand)

    def _prior_auth_capture(self, request: dict[str, Any]) -> dict[str, Any]:
        original = self.transactions.get(str(request.get("refTransId")))
        if original is None:
            return _transaction_answer("3", "0", 16, error=True)
        if original["transactionStatus"] != "authorizedPendingCapture":
            return _transaction_answer("3", "0", 311, error=True)
        amount = Decimal(str(request.get("amount") or original["authAmount"]))
        if amount > original["authAmount"]:
            return _transaction_answer("3", "0", 47, error=True)
        original.update(transactionStatus="capturedPendingSettlement", settleAmount=amount)
        self._event("net.authorize.payment.priorAuthCapture.created", original["transId"], amount)
        return _transaction_answer("1", original["transId"], 1, card=original["card"], brand=original["brand"])

    def _void(self, request: dict[str, Any]) -> dict[str, Any]:
        original = self.transactions.get(str(request.get("refTransId")))
        if original is None:
            return _transaction_answer("3", "0", 16, error=True)
        if original["transactionStatus"] not in ("authorizedPendingCapture", "capturedPendingSettlement",
                                                 "refundPendingSettlement", "FDSPendingReview",
                                                 "FDSAuthorizedPendingReview"):
            return _transaction_answer("3", "0", 310 if original["transactionStatus"] == "voided" else 16, error=True)
        original.update(transactionStatus="voided", settleAmount=Decimal(0))
        self._event("net.authorize.payment.void.created", original["transId"], original["authAmount"])
        return _transaction_answer("1", original["transId"], 1, card=original["card"], brand=original["brand"])

    def _refund(self, request: dict[str, Any]) -> dict[str, Any]:
        original = self.transactions.get(str(request.get("refTransId")))
        if original is None:
            return _transaction_answer("3", "0", 16, error=True)
        last4 = str(((request.get("payment") or {}).get("creditCard") or {}).get("cardNumber") or "")
        if original["transactionStatus"] != "settledSuccessfully" or last4[-4:] != original["card"][-4:]:
            return _transaction_answer("3", "0", 54, error=True)
        amount = Decimal(str(request["amount"]))
        refunded = sum((t["authAmount"] for t in self.transactions.values()
                        if t.get("refTransId") == original["transId"] and t["transactionStatus"].startswith("refund")),
                       Decimal(0))
        if refunded + amount > original["settleAmount"]:
            return _transaction_answer("3", "0", 55, error=True)
        order = request.get("order") or {}
        trans_id = self.new_id()
        self.transactions[trans_id] = {
            "transId": trans_id, "refTransId": original["transId"], "transactionType": "refundTransaction",
            "transactionStatus": "refundPendingSettlement", "responseCode": 1, "responseReasonCode": 1,
            "responseReasonDescription": REASONS[1], "authCode": "", "AVSResponse": "P", "submitted": clock.now(),
            "authAmount": amount, "settleAmount": amount,
            "order": {"invoiceNumber": order.get("invoiceNumber", ""), "description": order.get("description", "")},
            "card": original["card"], "brand": original["brand"], "profile": original["profile"],
            "userFields": _user_fields(request),
        }
        self._event("net.authorize.payment.refund.created", trans_id, amount)
        return _transaction_answer("1", trans_id, 1, card=original["card"], brand=original["brand"])

    def do_getTransactionDetailsRequest(self, body: dict[str, Any]) -> dict[str, Any]:
        found = self.transactions.get(str(body.get("transId")))
        if found is None:
            return {"messages": _error("E00040", "The record cannot be found.")}
        return {"transaction": self._details(found), "messages": _ok()}

    def _details(self, t: dict[str, Any]) -> dict[str, Any]:
        details = {
            "transId": t["transId"], "submitTimeUTC": _stamp(t["submitted"]),
            "transactionType": t["transactionType"], "transactionStatus": t["transactionStatus"],
            "responseCode": t["responseCode"], "responseReasonCode": t["responseReasonCode"],
            "responseReasonDescription": t["responseReasonDescription"], "authCode": t["authCode"],
            "AVSResponse": t["AVSResponse"], "order": t["order"], "authAmount": t["authAmount"],
            "settleAmount": t["settleAmount"], "taxExempt": False,
            "payment": {"creditCard": {"cardNumber": t["card"], "expirationDate": "XXXX", "cardType": t["brand"]}},
            "recurringBilling": False, "product": "Card Not Present", "marketType": "eCommerce",
        }
        if t.get("refTransId"):
            details["refTransId"] = t["refTransId"]
        if t.get("profile"):
            details["profile"] = t["profile"]
        if t.get("batch"):
            details["batch"] = t["batch"]
        if t.get("userFields"):
            details["userFields"] = [dict(f) for f in t["userFields"]]
        return details

    def _summary(self, t: dict[str, Any]) -> dict[str, Any]:
        summary = {
            "transId": t["transId"], "submitTimeUTC": _stamp(t["submitted"]), "transactionStatus": t["transactionStatus"],
            "invoiceNumber": t["order"]["invoiceNumber"], "accountType": t["brand"], "accountNumber": t["card"],
            "settleAmount": t["settleAmount"], "marketType": "eCommerce", "product": "Card Not Present",
        }
        if t.get("profile"):
            summary["profile"] = t["profile"]
        return summary

    def _page(self, transactions: list[dict[str, Any]], body: dict[str, Any]) -> dict[str, Any]:
        transactions = sorted(transactions, key=lambda t: (t["submitted"], t["transId"]),
                              reverse=bool((body.get("sorting") or {}).get("orderDescending")))
        paging = body.get("paging") or {}
        limit, offset = int(paging.get("limit") or 1000), int(paging.get("offset") or 1)
        page = transactions[(offset - 1) * limit: offset * limit]
        return {"transactions": [self._summary(t) for t in page], "totalNumInResultSet": len(transactions),
                "messages": _ok()}

    def do_getUnsettledTransactionListRequest(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._page([t for t in self.transactions.values() if not t.get("batch")], body)

    def do_getSettledBatchListRequest(self, body: dict[str, Any]) -> dict[str, Any]:
        first = _parse(body["firstSettlementDate"])
        last = _parse(body["lastSettlementDate"])
        if last - first > timedelta(days=31):
            return {"messages": _error("E00009", "The date range cannot exceed 31 days.")}
        batches = [b for b in self.batches if first <= b["settled"] <= last + timedelta(seconds=1)]
        return {"batchList": [{"batchId": b["batchId"], "settlementTimeUTC": _stamp(b["settled"]),
                               "settlementState": "settledSuccessfully", "paymentMethod": "creditCard",
                               "marketType": "eCommerce", "product": "Card Not Present"} for b in batches],
                "messages": _ok()}

    def do_getTransactionListRequest(self, body: dict[str, Any]) -> dict[str, Any]:
        batch_id = str(body.get("batchId"))
        if not any(b["batchId"] == batch_id for b in self.batches):
            return {"messages": _error("E00040", "The record cannot be found.")}
        return self._page([t for t in self.transactions.values()
                           if (t.get("batch") or {}).get("batchId") == batch_id], body)

    def do_createCustomerProfileRequest(self, body: dict[str, Any]) -> dict[str, Any]:
        profile = body.get("profile") or {}
        merchant_id = profile.get("merchantCustomerId")
        for customer_id, customer in self.customers.items():
            if merchant_id and customer["merchantCustomerId"] == merchant_id:
                return {"customerPaymentProfileIdList": [], "customerShippingAddressIdList": [],
                        "validationDirectResponseList": [],
                        "messages": _error("E00039", f"A duplicate record with ID {customer_id} already exists.")}
        customer_id = str(500000 + len(self.customers) + 1)
        self.customers[customer_id] = {"merchantCustomerId": merchant_id, "email": profile.get("email"),
                                       "description": profile.get("description"), "payment_profiles": {}}
        self._event("net.authorize.customer.created", customer_id, None, entity="customerProfile")
        return {"customerProfileId": customer_id, "customerPaymentProfileIdList": [], "customerShippingAddressIdList": [],
                "validationDirectResponseList": [], "messages": _ok()}

    def do_getCustomerProfileRequest(self, body: dict[str, Any]) -> dict[str, Any]:
        customer = self.customers.get(str(body.get("customerProfileId")))
        if customer is None:
            return {"messages": _error("E00040", "The record cannot be found.")}
        return {"profile": {"customerProfileId": str(body["customerProfileId"]),
                            "merchantCustomerId": customer["merchantCustomerId"], "email": customer["email"],
                            "paymentProfiles": [{"customerPaymentProfileId": pid} for pid in customer["payment_profiles"]]},
                "messages": _ok()}

    def do_createCustomerPaymentProfileRequest(self, body: dict[str, Any]) -> dict[str, Any]:
        customer_id = str(body.get("customerProfileId"))
        customer = self.customers.get(customer_id)
        if customer is None:
            return {"messages": _error("E00040", "The record cannot be found.")}
        value = body["paymentProfile"]["payment"]["opaqueData"]["dataValue"].rstrip("=")
        if not (value in CARDS or value == "review" or re.fullmatch(r"decline\d+", value)):
            return {"messages": _error("E00114", "Invalid OTS Token.")}
        for pid, method in customer["payment_profiles"].items():
            if method["dataValue"] == value:
                return {"customerProfileId": customer_id, "customerPaymentProfileId": pid,
                        "messages": _error("E00039", "A duplicate customer payment profile already exists.")}
        pid = str(700000 + sum(len(c["payment_profiles"]) for c in self.customers.values()) + 1)
        card, brand = CARDS.get(value, ("XXXX0002", "Visa"))
        customer["payment_profiles"][pid] = {"dataValue": value, "card": card, "brand": brand, "expiry": "2031-12"}
        self._event("net.authorize.customer.paymentProfile.created", pid, None, entity="customerPaymentProfile",
                    customerProfileId=int(customer_id))
        return {"customerProfileId": customer_id, "customerPaymentProfileId": pid, "messages": _ok()}

    def do_getCustomerPaymentProfileRequest(self, body: dict[str, Any]) -> dict[str, Any]:
        customer = self.customers.get(str(body.get("customerProfileId"))) or {}
        method = customer.get("payment_profiles", {}).get(str(body.get("customerPaymentProfileId")))
        if method is None:
            return {"messages": _error("E00040", "The record cannot be found.")}
        expiry = method["expiry"] if body.get("unmaskExpirationDate") else "XXXX"
        return {"paymentProfile": {
            "customerProfileId": str(body["customerProfileId"]),
            "customerPaymentProfileId": str(body["customerPaymentProfileId"]),
            "payment": {"creditCard": {"cardNumber": method["card"], "expirationDate": expiry, "cardType": method["brand"]}},
        }, "messages": _ok()}

    def do_deleteCustomerPaymentProfileRequest(self, body: dict[str, Any]) -> dict[str, Any]:
        customer = self.customers.get(str(body.get("customerProfileId"))) or {}
        pid = str(body.get("customerPaymentProfileId"))
        if pid not in customer.get("payment_profiles", {}):
            return {"messages": _error("E00040", "The record cannot be found.")}
        del customer["payment_profiles"][pid]
        self._event("net.authorize.customer.paymentProfile.deleted", pid, None, entity="customerPaymentProfile",
                    customerProfileId=int(str(body["customerProfileId"])))
        return {"messages": _ok()}

    def _event(self, event_type: str, object_id: str, amount: Decimal | None, entity: str = "transaction",
               **extra: Any) -> None:
        payload: dict[str, Any] = {"entityName": entity, "id": object_id, **extra}
        if amount is not None:
            transaction = self.transactions[object_id]
            payload.update(responseCode=transaction["responseCode"], authCode=transaction["authCode"],
                           avsResponse=transaction["AVSResponse"], authAmount=amount,
                           invoiceNumber=transaction["order"]["invoiceNumber"])
        self.events.append({"notificationId": str(uuid.uuid4()), "eventType": event_type,
                            "eventDate": _stamp(clock.now())[:-1] + "0000Z", "webhookId": "fake-webhook", "payload": payload})

    # ---- test hooks -----------------------------------------------------------------------

    async def hook_settle(self, request: Request) -> Response:
        with self._lock:
            now = clock.now()
            batch = {"batchId": self.new_id(), "settled": now}
            settled = 0
            for t in self.transactions.values():
                if t.get("batch") or t["transactionStatus"] in ("authorizedPendingCapture", "FDSPendingReview",
                                                                "FDSAuthorizedPendingReview"):
                    continue
                t["transactionStatus"] = {"capturedPendingSettlement": "settledSuccessfully",
                                          "refundPendingSettlement": "refundSettledSuccessfully"}.get(
                    t["transactionStatus"], t["transactionStatus"])
                t["batch"] = {"batchId": batch["batchId"], "settlementTimeUTC": _stamp(now),
                              "settlementState": "settledSuccessfully"}
                settled += 1
            self.batches.append(batch)
        return JSONResponse({"batchId": batch["batchId"], "transactions": settled})

    async def hook_fail(self, request: Request) -> Response:
        wanted = await request.json()
        with self._lock:
            self.failures.extend([(wanted.get("mode", "timeout"), wanted.get("when", "after"), wanted.get("root"))]
                                 * int(wanted.get("count", 1)))
        return JSONResponse({"queued": len(self.failures)})

    async def hook_decline(self, request: Request) -> Response:
        with self._lock:
            self.next_decline = int((await request.json())["reason"])
        return JSONResponse({"reason": self.next_decline})

    async def hook_transactions(self, request: Request) -> Response:
        with self._lock:
            return Response(_dumps({"transactions": [self._details(t) for t in self.transactions.values()]})[len(BOM):],
                            media_type="application/json")

    async def hook_events(self, request: Request) -> Response:
        with self._lock:
            return Response(_dumps({"events": list(self.events)})[len(BOM):], media_type="application/json")

    async def hook_deliver(self, request: Request) -> Response:
        wanted = await request.json()
        with self._lock:
            [event] = [e for e in self.events if e["notificationId"] == wanted["notificationId"]]
        body = _dumps(event)[len(BOM):]
        headers = {"X-ANET-Signature": sign_webhook(body, self.signature_key), "content-type": "application/json"}
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.post(wanted["url"], content=body, headers=headers)
        return JSONResponse({"status": answer.status_code, "body": answer.text})


def _ok() -> dict[str, Any]:
    return {"resultCode": "Ok", "message": [{"code": "I00001", "text": "Successful."}]}


def _error(code: str, text: str) -> dict[str, Any]:
    return {"resultCode": "Error", "message": [{"code": code, "text": text}]}


def _user_fields(request: dict[str, Any]) -> list[dict[str, str]]:
    """A request's merchant-defined fields (``userFields.userField``: one or a list), kept as sent."""
    fields = (request.get("userFields") or {}).get("userField") or []
    return [fields] if isinstance(fields, dict) else list(fields)


def _setting(request: dict[str, Any], name: str, default: int) -> int:
    settings = (request.get("transactionSettings") or {}).get("setting") or []
    if isinstance(settings, dict):
        settings = [settings]
    for setting in settings:
        if setting.get("settingName") == name:
            return int(setting["settingValue"])
    return default


def _transaction_answer(code: str, trans_id: str, reason: int, *, error: bool = False, card: str = "",
                        brand: str = "") -> dict[str, Any]:
    response: dict[str, Any] = {
        "responseCode": code, "authCode": "ABC123" if code == "1" else "", "avsResultCode": "Y" if code == "1" else "P",
        "cvvResultCode": "M" if code == "1" else "", "transId": trans_id, "refTransID": "", "transHash": "",
        "testRequest": "0", "accountNumber": card, "accountType": brand, "transHashSha2": "",
    }
    if code in ("1", "4"):
        response["messages"] = [{"code": str(reason), "description": REASONS.get(reason, "")}]
    else:
        response["errors"] = [{"errorCode": str(reason), "errorText": REASONS.get(reason, "Declined.")}]
    messages = _error("E00027", "The transaction was unsuccessful.") if error else _ok()
    return {"transactionResponse": response, "messages": messages}


@contextmanager
def running(login: str, transaction_key: str, signature_key: str, stall_seconds: float = 2.0) -> Iterator[AuthorizeNetFake]:
    """The fake served on a free 127.0.0.1 port for the block's duration."""
    fake = AuthorizeNetFake(login, transaction_key, signature_key, stall_seconds)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(fake.app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the Authorize.net fake did not start")
        time.sleep(0.02)
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# ---- run by hand: python -m tests.authorizenet_fake --port 8422 -----------------------------------

GUIDE_LOGIN = "guide-login"
GUIDE_TRANSACTION_KEY = "guide-transaction-key"
GUIDE_SIGNATURE_KEY = "0123456789ABCDEF" * 8  # 128 hex characters, as the Merchant Interface shows one


def main(argv: list[str] | None = None) -> None:
    """Serve the fake on 127.0.0.1 until Ctrl-C, after printing the provider config Billfold needs
    for it (docs/providers.md, "Getting started")."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.authorizenet_fake", description=main.__doc__)
    parser.add_argument("--port", type=int, default=8422)
    parser.add_argument("--api-login-id", default=GUIDE_LOGIN)
    parser.add_argument("--transaction-key", default=GUIDE_TRANSACTION_KEY)
    parser.add_argument("--signature-key", default=GUIDE_SIGNATURE_KEY)
    given = parser.parse_args(argv)
    fake = AuthorizeNetFake(given.api_login_id, given.transaction_key, given.signature_key)
    fake.url = f"http://127.0.0.1:{given.port}"
    config = {"kind": "authorizenet", "api_login_id": given.api_login_id, "transaction_key": given.transaction_key,
              "signature_key": given.signature_key, "api_base": fake.api_base}
    print(f"Authorize.net fake on {fake.url} (Ctrl-C stops it). Billfold's provider config for it:", flush=True)
    print(json.dumps(config), flush=True)
    print(f"Settle the day's batch: POST {fake.url}/_fake/settle; its webhooks: GET {fake.url}/_fake/events, "
          f"POST {fake.url}/_fake/deliver", flush=True)
    uvicorn.run(fake.app, host="127.0.0.1", port=given.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
