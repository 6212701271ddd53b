"""The Authorize.net adapter: its JSON API (``createTransactionRequest`` and friends) over plain httpx.

Authorize.net has no idempotency key and no create-then-confirm object, so a retry is made safe
another way (docs/providers.md#authorizenet):

- every charge carries ``order.invoiceNumber`` (and ``refId``) = ``short_reference(idempotency_key)``,
  a 20-character digest of our key, so ``find_charge`` looks the transaction up in the unsettled
  list and the recent settled batches before anything is charged again;
- every charge asks for ``duplicateWindow`` (default 120 s): within it the gateway itself refuses
  an identical second charge (response code 3, error 11), and the adapter answers the first one;
- a charge whose answer this adapter never heard (a timeout, a 5xx) is looked up before it is sent
  again by the same adapter; Billfold's engine asks ``find_charge`` itself after a timeout;
- capture, cancel and refund read the transaction first and answer what already happened.

The adapter speaks only to Authorize.net: no database, no web framework. The constructor makes no
call. Every request has explicit connect and read timeouts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

from billfold.kit import clock
from billfold.kit.money import Money, normalize_currency
from billfold.providers.base import (
    Capabilities,
    ChargeResult,
    ChargeStatus,
    CustomerResult,
    PaymentMethodResult,
    RefundResult,
    RefundStatus,
    WebhookEvent,
)
from billfold.providers.errors import (
    Declined,
    DeclineCode,
    InvalidProviderRequest,
    ProviderObjectNotFound,
    ProviderUnavailable,
    WebhookSignatureInvalid,
)

DEFAULT_API_BASE = "https://apitest.authorize.net/xml/v1/request.api"
DEFAULT_DUPLICATE_WINDOW = 120  # seconds: Authorize.net's own default for duplicateWindow
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_LOOKUP_DAYS = 30  # how far back find_charge and refunds search the settled batches (<= 31: one call)
USER_FIELDS = 20  # merchant-defined fields a transaction may carry
REFERENCE_LENGTH = 20  # refId, order.invoiceNumber and merchantCustomerId hold at most 20 characters

# The one-time token Billfold takes is the Accept.js opaque data, in one of two forms (see
# ``opaque_token``). The compact form fits Billfold's token fields (letters, digits, underscores):
# ``anet_`` and the base64 ``dataValue`` of descriptor COMMON.ACCEPT.INAPP.PAYMENT, its ``+`` written
# ``_p``, its ``/`` written ``_s``, its ``=`` padding left off. The full form names the descriptor
# (Apple and Google Pay: COMMON.APPLE/GOOGLE.INAPP.PAYMENT): ``anet_opaque:<descriptor>:<dataValue>``.
# A bare card number can never match: it has no prefix.
ACCEPT_DESCRIPTOR = "COMMON.ACCEPT.INAPP.PAYMENT"
TOKEN_PATTERN = (r"anet_(?:[A-Za-z0-9]|_[ps]){1,8192}"
                 r"|anet_opaque:COMMON\.[A-Z]+\.INAPP\.PAYMENT:[A-Za-z0-9+/=]{1,8192}")
_FULL_TOKEN = re.compile(r"anet_opaque:(?P<descriptor>[^:]+):(?P<value>.+)")
_METHOD_ID = re.compile(r"(?P<customer>\d{1,20})-(?P<profile>\d{1,20})")

# Authorize.net's webhook event types -> ours (base.EVENT_TYPES); others keep their own type.
EVENT_MAP: dict[str, tuple[str, str]] = {
    "net.authorize.payment.authcapture.created": ("charge.succeeded", "charge"),
    "net.authorize.payment.authorization.created": ("charge.authorized", "charge"),
    "net.authorize.payment.capture.created": ("charge.succeeded", "charge"),
    "net.authorize.payment.priorAuthCapture.created": ("charge.succeeded", "charge"),
    "net.authorize.payment.refund.created": ("refund.succeeded", "refund"),
    "net.authorize.payment.void.created": ("charge.canceled", "charge"),
    "net.authorize.payment.fraud.held": ("charge.processing", "charge"),
    "net.authorize.payment.fraud.declined": ("charge.failed", "charge"),
    "net.authorize.payment.fraud.approved": ("charge.updated", "charge"),
    "net.authorize.customer.created": ("customer.created", "customer"),
    "net.authorize.customer.updated": ("customer.updated", "customer"),
    "net.authorize.customer.paymentProfile.created": ("payment_method.attached", "payment_method"),
    "net.authorize.customer.paymentProfile.updated": ("payment_method.updated", "payment_method"),
    "net.authorize.customer.paymentProfile.deleted": ("payment_method.detached", "payment_method"),
}
EVENT_TYPES = frozenset(ours for ours, _ in EVENT_MAP.values())
_ENTITY_OBJECT = {"transaction": "charge", "customerProfile": "customer", "customerPaymentProfile": "payment_method",
                  "subscription": "subscription"}

# getTransactionDetails' transactionStatus -> ours.
CHARGE_STATUS: dict[str, ChargeStatus] = {
    "authorizedPendingCapture": ChargeStatus.AUTHORIZED,
    "capturedPendingSettlement": ChargeStatus.SUCCEEDED,
    "settledSuccessfully": ChargeStatus.SUCCEEDED,
    "pendingSettlement": ChargeStatus.SUCCEEDED,
    "pendingFinalSettlement": ChargeStatus.SUCCEEDED,
    "updatingSettlement": ChargeStatus.SUCCEEDED,
    "voided": ChargeStatus.CANCELED,
    "declined": ChargeStatus.FAILED,
    "expired": ChargeStatus.FAILED,
    "generalError": ChargeStatus.FAILED,
    "communicationError": ChargeStatus.FAILED,
    "settlementError": ChargeStatus.FAILED,
    "failedReview": ChargeStatus.FAILED,
    "couldNotVoid": ChargeStatus.FAILED,
    "returnedItem": ChargeStatus.FAILED,
    "underReview": ChargeStatus.PROCESSING,
    "approvedReview": ChargeStatus.PROCESSING,
    "FDSPendingReview": ChargeStatus.PROCESSING,
    "FDSAuthorizedPendingReview": ChargeStatus.PROCESSING,
    "authorizedPendingRelease": ChargeStatus.PROCESSING,
    "chargeback": ChargeStatus.SUCCEEDED,
    "chargebackReversal": ChargeStatus.SUCCEEDED,
}
SETTLED = frozenset({"settledSuccessfully", "chargeback", "chargebackReversal"})
REFUND_STATUS: dict[str, RefundStatus] = {
    # Accepted by the gateway: it settles with the next batch and cannot be declined afterwards.
    "refundPendingSettlement": RefundStatus.SUCCEEDED,
    "refundSettledSuccessfully": RefundStatus.SUCCEEDED,
    "voided": RefundStatus.CANCELED,
    "declined": RefundStatus.FAILED,
    "generalError": RefundStatus.FAILED,
    "communicationError": RefundStatus.FAILED,
    "settlementError": RefundStatus.FAILED,
}
CHARGE_TYPES = frozenset({"authCaptureTransaction", "authOnlyTransaction", "captureOnlyTransaction",
                          "priorAuthCaptureTransaction"})

# Response reason codes (transactionResponse.errors[].errorCode) -> DeclineCode.
DECLINE_CODES: dict[str, DeclineCode] = {
    "2": DeclineCode.GENERIC_DECLINE,
    "3": DeclineCode.GENERIC_DECLINE,  # referral: call the issuer
    "4": DeclineCode.LOST_CARD,  # pick up card: lost or stolen
    "6": DeclineCode.GENERIC_DECLINE,  # invalid card number
    "7": DeclineCode.EXPIRED_CARD,  # invalid expiration date
    "8": DeclineCode.EXPIRED_CARD,
    "17": DeclineCode.CARD_NOT_SUPPORTED,
    "28": DeclineCode.CARD_NOT_SUPPORTED,
    "27": DeclineCode.GENERIC_DECLINE,  # AVS mismatch
    "44": DeclineCode.INCORRECT_CVC,
    "45": DeclineCode.INCORRECT_CVC,
    "65": DeclineCode.INCORRECT_CVC,
    "19": DeclineCode.PROCESSING_ERROR, "20": DeclineCode.PROCESSING_ERROR, "21": DeclineCode.PROCESSING_ERROR,
    "22": DeclineCode.PROCESSING_ERROR, "23": DeclineCode.PROCESSING_ERROR, "25": DeclineCode.PROCESSING_ERROR,
    "26": DeclineCode.PROCESSING_ERROR, "57": DeclineCode.PROCESSING_ERROR, "58": DeclineCode.PROCESSING_ERROR,
    "250": DeclineCode.FRAUDULENT, "251": DeclineCode.FRAUDULENT, "254": DeclineCode.FRAUDULENT,
}
DUPLICATE_TRANSACTION = "11"


def short_reference(key: str, prefix: str = "B") -> str:
    """A 20-character digest of an idempotency key (``refId``, ``invoiceNumber`` and
    ``merchantCustomerId`` allow 20): the same key always gives the same reference."""
    digest = base64.b32encode(hashlib.sha256(key.encode()).digest()).decode().rstrip("=")
    return (prefix + digest)[:REFERENCE_LENGTH]


def opaque_token(data_value: str, descriptor: str = ACCEPT_DESCRIPTOR) -> str:
    """The token Billfold takes for Accept.js opaque data: the compact form for Accept.js's own
    descriptor (what a page sends to Billfold's checkout), the full form for any other."""
    if descriptor != ACCEPT_DESCRIPTOR:
        return f"anet_opaque:{descriptor}:{data_value}"
    return "anet_" + data_value.rstrip("=").replace("+", "_p").replace("/", "_s")


def opaque_data(token: str) -> tuple[str, str]:
    """``(dataDescriptor, dataValue)`` of a token of either form (its shape checked before)."""
    full = _FULL_TOKEN.fullmatch(token)
    if full is not None:
        return full.group("descriptor"), full.group("value")
    value = token[len("anet_"):].replace("_p", "+").replace("_s", "/")
    return ACCEPT_DESCRIPTOR, value + "=" * (-len(value) % 4)


def sign_webhook(body: bytes, signature_key: str, encoding: str = "text") -> str:
    """The ``X-ANET-Signature`` value for ``body``: ``sha512=`` and the upper-case hex HMAC-SHA512."""
    return "sha512=" + hmac.new(_signature_key_bytes(signature_key, encoding), body, hashlib.sha512).hexdigest().upper()


def _signature_key_bytes(key: str, encoding: str) -> bytes:
    return bytes.fromhex(key) if encoding == "hex" else key.encode()


def _amount_text(amount: Money) -> str:
    return str(amount.to_decimal())


def _money(value: Any, currency: str) -> Money:
    if value is None or value == "":
        return Money(0, currency)
    return Money.from_decimal(Decimal(str(value)).normalize() if not isinstance(value, Decimal) else value.normalize(),
                              currency)


def _time(text: str | None) -> datetime:
    """Authorize.net's UTC times (``2026-12-07T03:16:16.123Z``, up to 7 fraction digits, or none)."""
    if not text:
        return clock.now()
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?", text.strip())
    if match is None:
        return clock.now()
    fraction = (match.group(2) or "0")[:6].ljust(6, "0")
    zone = match.group(3) or "Z"
    return datetime.fromisoformat(f"{match.group(1)}.{fraction}{'+00:00' if zone == 'Z' else zone}")


def _stamp(moment: datetime) -> str:
    return moment.astimezone(clock.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AuthorizeNetProvider:
    """The Authorize.net adapter. ``config``: ``api_login_id``, ``transaction_key`` and
    ``signature_key`` (required), ``api_base``, ``currency`` (the account's one currency, default
    USD), ``duplicate_window`` (seconds, default 120), ``timeout_seconds`` (read timeout, default 30;
    connecting waits at most 5 s), ``lookup_days`` (default 30), ``signature_key_encoding``
    (``text``, the default, or ``hex``)."""

    kind = "authorizenet"

    def __init__(self, provider_id: str = "authorizenet", config: Mapping[str, Any] | None = None) -> None:
        config = dict(config or {})
        self.provider_id = provider_id
        missing = [name for name in ("api_login_id", "transaction_key", "signature_key")
                   if not isinstance(config.get(name), str) or not config.get(name)]
        if missing:
            raise ValueError(
                f"an authorizenet provider needs {', '.join(missing)} in its config "
                "(API Login ID, Transaction Key and the Signature Key that signs its webhooks: Merchant Interface, "
                "Account, Settings, API Credentials & Keys)"
            )
        self._login: str = config["api_login_id"]
        self._transaction_key: str = config["transaction_key"]
        self._signature_key: str = config["signature_key"]
        self._key_encoding = str(config.get("signature_key_encoding") or "text")
        if self._key_encoding not in ("text", "hex"):
            raise ValueError("signature_key_encoding must be 'text' or 'hex'")
        if self._key_encoding == "hex":
            try:
                bytes.fromhex(self._signature_key)
            except ValueError:
                raise ValueError("signature_key is not hex, yet signature_key_encoding is 'hex'") from None
        self.api_base = str(config.get("api_base") or DEFAULT_API_BASE)
        try:
            url = httpx.URL(self.api_base)
        except (httpx.InvalidURL, TypeError):
            raise ValueError("api_base is not a URL") from None
        local = url.scheme == "http" and url.host in ("127.0.0.1", "localhost")
        if not (url.scheme == "https" and url.host) and not local:
            raise ValueError("api_base must be an https:// address (http:// only on 127.0.0.1 or localhost)")
        self.currency = normalize_currency(str(config.get("currency") or "USD"))
        self.duplicate_window = int(config.get("duplicate_window", DEFAULT_DUPLICATE_WINDOW))
        if not 0 <= self.duplicate_window <= 28800:
            raise ValueError("duplicate_window must be 0 to 28800 seconds")
        self.lookup_days = int(config.get("lookup_days", DEFAULT_LOOKUP_DAYS))
        if not 1 <= self.lookup_days <= 31:
            raise ValueError("lookup_days must be 1 to 31")
        read = float(config.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS))
        if not 0 < read <= 120:
            raise ValueError("timeout_seconds must be more than 0 and at most 120")
        self.timeout = httpx.Timeout(read, connect=min(5.0, read))
        self._http = httpx.Client(timeout=self.timeout, headers={"content-type": "application/json"},
                                  follow_redirects=False)
        self._unheard: set[str] = set()  # charge keys whose answer this adapter never heard
        self._lock = threading.Lock()
        self.capabilities = Capabilities(
            saved_methods=True, off_session_charges=True, separate_capture=True, partial_capture=True,
            refunds=True, partial_refunds=True, customer_actions=False, provider_subscriptions=False,
            creates_before_charging=False, disputes=False, currencies=frozenset({self.currency}),
            webhook_events=EVENT_TYPES, webhooks_checked_offline=True, token_pattern=TOKEN_PATTERN,
        )

    def close(self) -> None:
        self._http.close()

    # ---- the wire ---------------------------------------------------------------------------

    def _call(self, root: str, body: dict[str, Any], *, ref_id: str | None = None,
              allow: frozenset[str] = frozenset()) -> dict[str, Any]:
        """POST ``{root: {merchantAuthentication, refId?, **body}}``; the answer, or an error raised.

        A transaction's own refusal (``transactionResponse`` with errors) is left to the caller, and
        so is an error whose message code is in ``allow``."""
        inner: dict[str, Any] = {"merchantAuthentication": {"name": self._login, "transactionKey": self._transaction_key}}
        if ref_id is not None:
            inner["refId"] = ref_id
        inner.update(body)
        try:
            response = self._http.post(self.api_base, content=json.dumps({root: inner}).encode())
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            raise ProviderUnavailable(f"could not connect to Authorize.net ({type(error).__name__})",
                                      provider=self.provider_id, sent=False) from None
        except httpx.TimeoutException as error:
            raise ProviderUnavailable(f"Authorize.net did not answer in time ({type(error).__name__}); the outcome is "
                                      "unknown", provider=self.provider_id) from None
        except httpx.HTTPError as error:
            raise ProviderUnavailable(f"the connection to Authorize.net failed ({type(error).__name__}); the outcome is "
                                      "unknown", provider=self.provider_id) from None
        if response.status_code >= 500:
            raise ProviderUnavailable(f"Authorize.net answered HTTP {response.status_code}; the outcome is unknown",
                                      provider=self.provider_id)
        if response.status_code != 200:
            raise InvalidProviderRequest(f"Authorize.net answered HTTP {response.status_code}", code="provider_http_error")
        try:
            # The real API answers JSON after a UTF-8 byte order mark; amounts stay Decimal.
            answer = json.loads(response.content.decode("utf-8-sig"), parse_float=Decimal)
        except ValueError:
            raise ProviderUnavailable("Authorize.net answered something that is not JSON; the outcome is unknown",
                                      provider=self.provider_id) from None
        if not isinstance(answer, dict):
            raise ProviderUnavailable("Authorize.net answered an unexpected shape", provider=self.provider_id)
        messages = answer.get("messages") or {}
        if (messages.get("resultCode") != "Ok" and not (answer.get("transactionResponse") or {}).get("responseCode")
                and self._message_code(answer) not in allow):
            self._raise(messages)
        return answer

    def _raise(self, messages: Mapping[str, Any]) -> None:
        [first] = (messages.get("message") or [{"code": "E00001", "text": "An error occurred during processing."}])[:1]
        code, text = str(first.get("code")), str(first.get("text"))
        if code == "E00007":
            raise InvalidProviderRequest("Authorize.net rejected the API Login ID or Transaction Key configured for "
                                         f"provider {self.provider_id}", code="provider_credentials_rejected")
        if code == "E00040":
            raise ProviderObjectNotFound(f"Authorize.net: {text}", provider_code=code)
        raise InvalidProviderRequest(f"Authorize.net refused the request: {text} ({code})",
                                     code="provider_request_refused", provider_code=code)

    def _message_code(self, answer: Mapping[str, Any]) -> str | None:
        found = ((answer.get("messages") or {}).get("message") or [{}])[0]
        return found.get("code")

    # ---- customers and saved methods ------------------------------------------------------

    def create_customer(
        self, *, email: str | None = None, name: str | None = None,
        metadata: Mapping[str, str] | None = None, idempotency_key: str,
    ) -> CustomerResult:
        reference = short_reference(idempotency_key, "C")
        profile: dict[str, Any] = {"merchantCustomerId": reference}
        if name:
            profile["description"] = name[:255]
        if email:
            profile["email"] = email[:255]
        answer = self._call("createCustomerProfileRequest", {"profile": profile}, ref_id=reference,
                            allow=frozenset({"E00039"}))
        profile_id = str(answer.get("customerProfileId") or "")
        if not profile_id:
            # E00039 "A duplicate record with ID 1234 already exists.": the first call with this key made it.
            text = str(((answer.get("messages") or {}).get("message") or [{}])[0].get("text") or "")
            found = re.search(r"ID (\d+)", text)
            if found is None:
                raise InvalidProviderRequest("Authorize.net did not say which customer profile it made",
                                             code="provider_request_refused")
            profile_id = found.group(1)
        return CustomerResult(profile_id, email, name, clock.now(), {"merchant_customer_id": reference})

    def attach_payment_method(self, *, customer_id: str, token: str, idempotency_key: str) -> PaymentMethodResult:
        self.capabilities.require_token(token, self.provider_id)
        descriptor, value = self._opaque(token)
        body = {
            "customerProfileId": customer_id,
            "paymentProfile": {"payment": {"opaqueData": {"dataDescriptor": descriptor, "dataValue": value}}},
            "validationMode": "none",
        }
        # A duplicate (E00039: the same card on this profile, e.g. this key's first call) names the
        # existing payment profile: that one is the answer.
        answer = self._call("createCustomerPaymentProfileRequest", body, ref_id=short_reference(idempotency_key),
                            allow=frozenset({"E00039"}))
        payment_profile_id = answer.get("customerPaymentProfileId")
        if not payment_profile_id:
            raise InvalidProviderRequest("Authorize.net did not say which payment profile it made",
                                         code="provider_request_refused")
        return self._payment_method(customer_id, str(payment_profile_id))

    def _payment_method(self, customer_id: str, payment_profile_id: str, *, detached: bool = False) -> PaymentMethodResult:
        answer = self._call("getCustomerPaymentProfileRequest", {
            "customerProfileId": customer_id, "customerPaymentProfileId": payment_profile_id,
            "unmaskExpirationDate": True,
        })
        card = ((answer.get("paymentProfile") or {}).get("payment") or {}).get("creditCard") or {}
        return self._method_result(customer_id, payment_profile_id, card, detached=detached)

    def _method_result(self, customer_id: str, payment_profile_id: str, card: Mapping[str, Any], *,
                       detached: bool = False) -> PaymentMethodResult:
        number = str(card.get("cardNumber") or "")
        exp_month = exp_year = None
        expiry = re.fullmatch(r"(\d{4})-(\d{2})", str(card.get("expirationDate") or ""))
        if expiry:
            exp_year, exp_month = int(expiry.group(1)), int(expiry.group(2))
        brand = card.get("cardType")
        return PaymentMethodResult(
            f"{customer_id}-{payment_profile_id}", customer_id, "credit_card",
            str(brand).lower().replace(" ", "_") if brand else None, number[-4:] if number else None,
            exp_month, exp_year, clock.now(), detached,
        )

    def detach_payment_method(self, *, payment_method_id: str, idempotency_key: str) -> PaymentMethodResult:
        customer_id, payment_profile_id = self._method_ids(payment_method_id)
        try:
            method = self._payment_method(customer_id, payment_profile_id, detached=True)
        except ProviderObjectNotFound:
            # Gone already (an earlier detach with this key): the customer must still exist.
            self._call("getCustomerProfileRequest", {"customerProfileId": customer_id})
            return PaymentMethodResult(payment_method_id, customer_id, "credit_card", None, None, None, None,
                                       clock.now(), True)
        self._call("deleteCustomerPaymentProfileRequest", {
            "customerProfileId": customer_id, "customerPaymentProfileId": payment_profile_id,
        })
        return method

    def _method_ids(self, payment_method_id: str) -> tuple[str, str]:
        match = _METHOD_ID.fullmatch(payment_method_id or "")
        if match is None:
            raise ProviderObjectNotFound(f"{payment_method_id!r} is not an Authorize.net payment method id "
                                         "(<customerProfileId>-<customerPaymentProfileId>)")
        return match.group("customer"), match.group("profile")

    def _opaque(self, token: str) -> tuple[str, str]:
        return opaque_data(token)  # require_token checked the shape

    # ---- charges ------------------------------------------------------------------------------

    def charge(
        self, *, amount: Money, idempotency_key: str, customer_id: str | None = None,
        payment_method_id: str | None = None, token: str | None = None, off_session: bool = False,
        capture: bool = True, description: str | None = None, metadata: Mapping[str, str] | None = None,
    ) -> ChargeResult:
        self.capabilities.require_currency(amount.currency, self.provider_id)
        if not amount.is_positive():
            raise InvalidProviderRequest(f"a charge must be for a positive amount, not {amount}", code="invalid_amount")
        if (payment_method_id is None) == (token is None):
            raise InvalidProviderRequest("give exactly one of payment_method_id and token", code="invalid_payment_source")
        if token is not None and off_session:
            raise InvalidProviderRequest("an off-session charge needs a saved payment method",
                                         code="off_session_needs_saved_method")
        if not idempotency_key or len(idempotency_key) > 255:
            raise InvalidProviderRequest("an idempotency key must be 1 to 255 characters", code="invalid_idempotency_key")
        with self._lock:
            unheard = idempotency_key in self._unheard
        if unheard:  # this adapter sent it before and never heard: ask before charging again
            found = self.find_charge(idempotency_key=idempotency_key)
            if found is not None:
                with self._lock:
                    self._unheard.discard(idempotency_key)
                return self._answer(found)
        reference = short_reference(idempotency_key)
        request: dict[str, Any] = {
            "transactionType": "authCaptureTransaction" if capture else "authOnlyTransaction",
            "amount": _amount_text(amount),
        }
        if token is not None:
            self.capabilities.require_token(token, self.provider_id)
            descriptor, value = self._opaque(token)
            request["payment"] = {"opaqueData": {"dataDescriptor": descriptor, "dataValue": value}}
        else:
            profile_customer, payment_profile_id = self._method_ids(payment_method_id or "")
            if customer_id is not None and customer_id != profile_customer:
                raise InvalidProviderRequest(f"payment method {payment_method_id} belongs to another customer",
                                             code="payment_method_customer_mismatch")
            request["profile"] = {"customerProfileId": profile_customer,
                                  "paymentProfile": {"paymentProfileId": payment_profile_id}}
        request["order"] = {"invoiceNumber": reference, "description": (description or "")[:255]}
        request["transactionSettings"] = {"setting": [
            {"settingName": "duplicateWindow", "settingValue": str(self.duplicate_window)},
        ]}
        if metadata:
            request["userFields"] = _user_fields(metadata)
        try:
            answer = self._call("createTransactionRequest", {"transactionRequest": request}, ref_id=reference)
        except ProviderUnavailable as unknown:
            if unknown.sent:
                with self._lock:
                    self._unheard.add(idempotency_key)
            raise
        response = answer.get("transactionResponse") or {}
        code = str(response.get("responseCode") or "")
        errors = response.get("errors") or []
        reason = str((errors[0] if errors else {}).get("errorCode") or "")
        if code == "3" and reason == DUPLICATE_TRANSACTION:
            found = self.find_charge(idempotency_key=idempotency_key)
            if found is None:
                raise ProviderUnavailable("Authorize.net calls this charge a duplicate but the first one is not listed "
                                          "yet; ask again shortly", provider=self.provider_id)
            return self._answer(found)
        trans_id = str(response.get("transId") or "")
        if code in ("1", "4") or (trans_id and trans_id != "0"):
            charge = replace(self.get_charge(trans_id), off_session=off_session)
            return self._answer(charge)
        text = str((errors[0] if errors else {}).get("errorText") or "The transaction was refused.")
        raise InvalidProviderRequest(f"Authorize.net refused the charge: {text} (reason {reason or 'unknown'})",
                                     code="provider_request_refused", provider_code=reason)

    def _answer(self, charge: ChargeResult) -> ChargeResult:
        """A charge as the protocol answers it: a declined one raises Declined with it."""
        if charge.status is ChargeStatus.FAILED:
            raise Declined(charge.failure_message or "The card was declined.", charge.failure_code or "generic_decline",
                           charge=charge)
        return charge

    def confirm(self, *, charge_id: str, idempotency_key: str) -> ChargeResult:
        raise InvalidProviderRequest("Authorize.net charges never wait for the customer's action; nothing to confirm",
                                     code="charge_not_confirmable")

    def capture(self, *, charge_id: str, idempotency_key: str, amount: Money | None = None) -> ChargeResult:
        charge = self.get_charge(charge_id)
        if charge.status is ChargeStatus.SUCCEEDED and not charge.capture:
            return charge  # captured already (this key's first call, whose answer was lost)
        if charge.status is not ChargeStatus.AUTHORIZED:
            raise InvalidProviderRequest(f"charge {charge_id} is {charge.status}; only an authorized charge can be "
                                         "captured", code="charge_not_capturable")
        to_capture = charge.amount if amount is None else amount
        if to_capture.currency != charge.amount.currency or not to_capture.is_positive():
            raise InvalidProviderRequest(f"cannot capture {to_capture} of {charge.amount}", code="invalid_amount")
        if to_capture > charge.amount:
            raise InvalidProviderRequest(f"cannot capture {to_capture}: at most {charge.amount} is authorized",
                                         code="capture_exceeds_authorized")
        answer = self._call("createTransactionRequest", {"transactionRequest": {
            "transactionType": "priorAuthCaptureTransaction", "amount": _amount_text(to_capture), "refTransId": charge_id,
        }}, ref_id=short_reference(idempotency_key))
        self._transaction_refused(answer, "capture")
        return self.get_charge(charge_id)

    def cancel(self, *, charge_id: str, idempotency_key: str) -> ChargeResult:
        charge = self.get_charge(charge_id)
        if charge.status is ChargeStatus.CANCELED:
            return charge
        if charge.status not in (ChargeStatus.AUTHORIZED, ChargeStatus.PROCESSING):
            raise InvalidProviderRequest(f"charge {charge_id} is {charge.status}; only an authorized charge can be "
                                         "canceled (refund a succeeded one)", code="charge_not_cancelable")
        self._void(charge_id, idempotency_key)
        return self.get_charge(charge_id)

    def _void(self, charge_id: str, idempotency_key: str) -> None:
        answer = self._call("createTransactionRequest", {"transactionRequest": {
            "transactionType": "voidTransaction", "refTransId": charge_id,
        }}, ref_id=short_reference(idempotency_key))
        self._transaction_refused(answer, "void")

    def _transaction_refused(self, answer: Mapping[str, Any], what: str) -> None:
        response = answer.get("transactionResponse") or {}
        if str(response.get("responseCode")) in ("1", "4"):
            return
        errors = response.get("errors") or [{}]
        reason = str(errors[0].get("errorCode") or "")
        code = {"55": "refund_exceeds_captured", "54": "charge_not_refundable", "47": "capture_exceeds_authorized",
                "310": "charge_not_cancelable", "311": "charge_not_capturable"}.get(reason, f"{what}_refused")
        raise InvalidProviderRequest(
            f"Authorize.net refused the {what}: {errors[0].get('errorText') or 'refused'} (reason {reason or 'unknown'})",
            code=code, provider_code=reason,
        )

    # ---- refunds ------------------------------------------------------------------------------

    def refund(
        self, *, charge_id: str, idempotency_key: str, amount: Money | None = None,
        reason: str | None = None, metadata: Mapping[str, str] | None = None,
    ) -> RefundResult:
        """A settled charge is refunded (``refundTransaction``, with the card's last four); an
        unsettled one can only be voided, so a full refund of it is a void (its refund id is
        ``void-<transId>``) and a partial one is refused until it settles."""
        details = self._details(charge_id)
        charge = self._charge(details)
        tag = short_reference(idempotency_key, "R")
        refunds = self._refunds_of(charge_id, details)
        for refund in refunds:
            if refund.metadata.get("reference") == tag:
                return refund  # this key's refund, made by a call whose answer was lost
        status = str(details.get("transactionStatus"))
        if status == "voided":
            if amount is None or amount == charge.amount:
                return self._void_refund(charge, reason)
            raise InvalidProviderRequest(f"charge {charge_id} was voided; nothing is left to refund",
                                         code="charge_already_refunded")
        if charge.status is not ChargeStatus.SUCCEEDED:
            raise InvalidProviderRequest(f"charge {charge_id} is {charge.status}; only a succeeded charge can be "
                                         "refunded", code="charge_not_refundable")
        if amount is not None and (amount.currency != charge.amount.currency or not amount.is_positive()):
            raise InvalidProviderRequest(f"cannot refund {amount} of a {charge.amount.currency} charge", code="invalid_amount")
        if status not in SETTLED:
            if amount is None or amount == charge.amount_captured:
                self._void(charge_id, idempotency_key)
                return self._void_refund(self.get_charge(charge_id), reason)
            raise InvalidProviderRequest(
                f"charge {charge_id} has not settled yet: Authorize.net can only void it in full until it settles "
                "(usually within a day); refund all of it now, or this part after settlement",
                code="charge_not_refundable_yet",
            )
        refunded = sum((r.amount.amount for r in refunds if r.status is RefundStatus.SUCCEEDED), 0)
        remaining = charge.amount_captured - Money(refunded, charge.amount.currency)
        to_refund = remaining if amount is None else amount
        if remaining.is_zero():
            raise InvalidProviderRequest(f"charge {charge_id} is already fully refunded", code="charge_already_refunded")
        if to_refund > remaining:
            raise InvalidProviderRequest(f"cannot refund {to_refund}: at most {remaining} is left",
                                         code="refund_exceeds_captured")
        card = (details.get("payment") or {}).get("creditCard") or {}
        last4 = str(card.get("cardNumber") or "")[-4:]
        profile = details.get("profile") or {}
        request: dict[str, Any] = {"transactionType": "refundTransaction", "amount": _amount_text(to_refund)}
        if last4:  # the card's last four, as Authorize.net requires for a refund
            request["payment"] = {"creditCard": {"cardNumber": last4, "expirationDate": "XXXX"}}
        elif profile.get("customerProfileId"):  # no card shown: refund to the saved profile instead
            request["profile"] = {"customerProfileId": str(profile["customerProfileId"]),
                                  "paymentProfile": {"paymentProfileId": str(profile.get("customerPaymentProfileId"))}}
        request["refTransId"] = charge_id
        request["order"] = {"invoiceNumber": f"R{charge_id}"[:REFERENCE_LENGTH],
                            "description": (f"billfold refund {tag}" + (f": {reason}" if reason else ""))[:255]}
        if metadata:
            request["userFields"] = _user_fields(metadata)
        answer = self._call("createTransactionRequest", {"transactionRequest": request}, ref_id=tag)
        self._transaction_refused(answer, "refund")
        refund_id = str((answer.get("transactionResponse") or {}).get("transId"))
        return self.get_refund(refund_id)

    def _void_refund(self, charge: ChargeResult, reason: str | None) -> RefundResult:
        return RefundResult(f"void-{charge.id}", charge.id, charge.amount, RefundStatus.SUCCEEDED, "voided",
                            charge.created, reason, {"voided": "true"})

    def get_refund(self, refund_id: str) -> RefundResult:
        if refund_id.startswith("void-"):
            charge = self.get_charge(refund_id[len("void-"):])
            if charge.status is not ChargeStatus.CANCELED:
                raise ProviderObjectNotFound(f"charge {charge.id} was not voided, so there is no refund {refund_id}")
            return self._void_refund(charge, None)
        details = self._details(refund_id)
        if details.get("transactionType") != "refundTransaction":
            raise ProviderObjectNotFound(f"Authorize.net transaction {refund_id} is not a refund")
        return self._refund(details)

    def _refund(self, details: Mapping[str, Any]) -> RefundResult:
        description = str((details.get("order") or {}).get("description") or "")
        tag = re.match(r"billfold refund (R[A-Z2-7]{19})(?:: (.*))?", description)
        status = str(details.get("transactionStatus"))
        return RefundResult(
            str(details["transId"]), str(details.get("refTransId") or ""),
            _money(details.get("settleAmount") or details.get("authAmount"), self.currency),
            REFUND_STATUS.get(status, RefundStatus.PENDING), status, _time(details.get("submitTimeUTC")),
            tag.group(2) if tag else None, {**_read_user_fields(details), **({"reference": tag.group(1)} if tag else {})},
        )

    def _refunds_of(self, charge_id: str, details: Mapping[str, Any]) -> list[RefundResult]:
        """The refund transactions of a charge: refunds carry ``invoiceNumber`` ``R<transId>``, so
        they are found in the transaction lists without reading every transaction."""
        if str(details.get("transactionStatus")) not in SETTLED:
            return []  # an unsettled charge cannot have been refunded, only voided
        since = _time(details.get("submitTimeUTC"))
        invoice = f"R{charge_id}"[:REFERENCE_LENGTH]
        found = []
        for summary in self._summaries(since - timedelta(days=1)):
            if summary.get("invoiceNumber") == invoice:
                refund = self._refund(self._details(str(summary["transId"])))
                if refund.charge_id == charge_id:
                    found.append(refund)
        return found

    # ---- reading --------------------------------------------------------------------------------

    def _details(self, trans_id: str) -> dict[str, Any]:
        if not re.fullmatch(r"\d{1,20}", trans_id or ""):
            raise ProviderObjectNotFound(f"{trans_id!r} is not an Authorize.net transaction id")
        answer = self._call("getTransactionDetailsRequest", {"transId": trans_id})
        transaction = answer.get("transaction")
        if not isinstance(transaction, dict):
            raise ProviderObjectNotFound(f"Authorize.net has no transaction {trans_id}")
        return transaction

    def get_charge(self, charge_id: str) -> ChargeResult:
        details = self._details(charge_id)
        charge = self._charge(details)
        if str(details.get("transactionStatus")) in SETTLED:
            refunded = sum((r.amount.amount for r in self._refunds_of(charge_id, details)
                            if r.status is RefundStatus.SUCCEEDED), 0)
            charge = _replace_refunded(charge, Money(refunded, charge.amount.currency))
        return charge

    def _charge(self, details: Mapping[str, Any]) -> ChargeResult:
        kind = str(details.get("transactionType") or "")
        if kind not in CHARGE_TYPES:
            raise ProviderObjectNotFound(f"Authorize.net transaction {details.get('transId')} is a {kind}, not a charge")
        status_text = str(details.get("transactionStatus") or "")
        status = CHARGE_STATUS.get(status_text, ChargeStatus.PROCESSING)
        amount = _money(details.get("authAmount"), self.currency)
        captured = _money(details.get("settleAmount"), self.currency) if status is ChargeStatus.SUCCEEDED else Money(0, self.currency)
        if status is ChargeStatus.SUCCEEDED and captured.is_zero():
            captured = amount
        profile = details.get("profile") or {}
        customer_id = str(profile["customerProfileId"]) if profile.get("customerProfileId") else None
        method_id = (f"{customer_id}-{profile['customerPaymentProfileId']}"
                     if customer_id and profile.get("customerPaymentProfileId") else None)
        failure_code = failure_message = None
        if status is ChargeStatus.FAILED:
            reason = str(details.get("responseReasonCode") or "")
            failure_code = str(DECLINE_CODES.get(reason, DeclineCode.GENERIC_DECLINE))
            failure_message = str(details.get("responseReasonDescription") or "The card was declined.")
        return ChargeResult(
            id=str(details["transId"]), status=status, provider_status=status_text, amount=amount,
            amount_captured=captured, amount_refunded=Money(0, self.currency), created=_time(details.get("submitTimeUTC")),
            customer_id=customer_id, payment_method_id=method_id, capture=kind != "authOnlyTransaction",
            off_session=False, description=(details.get("order") or {}).get("description") or None,
            metadata={**_read_user_fields(details),
                      "invoice_number": str((details.get("order") or {}).get("invoiceNumber") or "")},
            failure_code=failure_code, failure_message=failure_message,
        )

    def find_charge(self, *, idempotency_key: str) -> ChargeResult | None:
        """The transaction whose ``invoiceNumber`` is this key's reference, from the unsettled list
        and the settled batches of the last ``lookup_days``; None when there is none."""
        reference = short_reference(idempotency_key)
        for summary in self._summaries(clock.now() - timedelta(days=self.lookup_days)):
            if summary.get("invoiceNumber") == reference:
                return self.get_charge(str(summary["transId"]))
        return None

    def _summaries(self, since: datetime) -> Iterator[dict[str, Any]]:
        """Transaction summaries, oldest first: the unsettled list, then the batches settled since ``since``."""
        yield from self._paged("getUnsettledTransactionListRequest", {})
        first = max(since, clock.now() - timedelta(days=31))
        batches = self._call("getSettledBatchListRequest", {
            "includeStatistics": False, "firstSettlementDate": _stamp(first), "lastSettlementDate": _stamp(clock.now()),
        }).get("batchList") or []
        for batch in batches:
            yield from self._paged("getTransactionListRequest", {"batchId": str(batch["batchId"])})

    def _paged(self, root: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        offset = 1
        while True:
            answer = self._call(root, {**body, "sorting": {"orderBy": "submitTimeUTC", "orderDescending": False},
                                       "paging": {"limit": 1000, "offset": offset}})
            page = answer.get("transactions") or []
            yield from page
            if len(page) < 1000:
                return
            offset += 1

    def list_charges(self, created_from: datetime | None = None, created_to: datetime | None = None) -> list[ChargeResult]:
        """Charges submitted in [created_from, created_to), oldest first: reads each one's details."""
        found = []
        for summary in self._summaries(created_from or clock.now() - timedelta(days=self.lookup_days)):
            created = _time(summary.get("submitTimeUTC"))
            if (created_from and created < created_from) or (created_to and created >= created_to):
                continue
            if str(summary.get("invoiceNumber") or "").startswith("R"):
                continue
            try:
                found.append(self.get_charge(str(summary["transId"])))
            except ProviderObjectNotFound:
                continue  # a refund without our invoice number
        return sorted(found, key=lambda c: (c.created, c.id))

    def list_refunds(self, created_from: datetime | None = None, created_to: datetime | None = None) -> list[RefundResult]:
        found = []
        for summary in self._summaries(created_from or clock.now() - timedelta(days=self.lookup_days)):
            created = _time(summary.get("submitTimeUTC"))
            if (created_from and created < created_from) or (created_to and created >= created_to):
                continue
            if not str(summary.get("transactionStatus") or "").startswith("refund"):
                continue
            found.append(self._refund(self._details(str(summary["transId"]))))
        return sorted(found, key=lambda r: (r.created, r.id))

    # ---- webhooks -------------------------------------------------------------------------------

    def verify_webhook(self, body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        """Check ``X-ANET-Signature: sha512=<HEX>`` (HMAC-SHA512 of the raw body with the Signature
        Key, compared in constant time whatever the hex's case), then normalise the event."""
        given = next((v for k, v in headers.items() if k.lower() == "x-anet-signature"), None)
        if not given:
            raise WebhookSignatureInvalid("the X-ANET-Signature header is missing")
        scheme, _, hex_digest = given.strip().partition("=")
        if scheme.lower() != "sha512" or not hex_digest:
            raise WebhookSignatureInvalid("the X-ANET-Signature header is not sha512=<hex>")
        expected = sign_webhook(body, self._signature_key, self._key_encoding)[len("sha512="):]
        if not hmac.compare_digest(expected.encode(), hex_digest.strip().upper().encode()):
            raise WebhookSignatureInvalid("the X-ANET-Signature does not match the body and the Signature Key")
        try:
            event = json.loads(body, parse_float=Decimal)
            event_id, event_type = str(event["notificationId"]), str(event["eventType"])
            payload = dict(event.get("payload") or {})
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise WebhookSignatureInvalid("the signed webhook body is not an Authorize.net notification") from error
        ours, object_type = EVENT_MAP.get(event_type, (event_type, _ENTITY_OBJECT.get(str(payload.get("entityName")), "charge")))
        object_id = str(payload.get("id") or "")
        if object_type == "payment_method" and payload.get("customerProfileId"):
            object_id = f"{payload['customerProfileId']}-{object_id}"
        data = json.loads(json.dumps(payload, default=str))
        return WebhookEvent(event_id, ours, object_type, object_id, _time(event.get("eventDate")), data)


def _user_fields(metadata: Mapping[str, str]) -> dict[str, list[dict[str, str]]]:
    """Our metadata as merchant-defined ``userFields`` (at most 20; names and values at most 255
    characters): Authorize.net keeps them with the transaction and shows them in its details, so a
    charge or refund whose answer was lost still names our payment or refund (reconciliation)."""
    fields = [{"name": str(k)[:255], "value": str(v)[:255]} for k, v in sorted(metadata.items()) if v is not None]
    return {"userField": fields[:USER_FIELDS]}


def _read_user_fields(details: Mapping[str, Any]) -> dict[str, str]:
    """The ``userFields`` of a transaction's details (a list, or ``{"userField": ...}``)."""
    found = details.get("userFields") or []
    if isinstance(found, dict):
        found = found.get("userField") or []
    if isinstance(found, dict):
        found = [found]
    return {str(f["name"]): str(f.get("value") or "") for f in found if isinstance(f, dict) and f.get("name")}


def _replace_refunded(charge: ChargeResult, refunded: Money) -> ChargeResult:
    return replace(charge, amount_refunded=refunded)
