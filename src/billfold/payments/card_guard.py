"""Card data never enters: the guard in front of every endpoint.

Every request is read the way the app will read it: the body parsed by the same ``json.loads``
FastAPI uses (so a byte-order mark, UTF-16 or UTF-32 changes nothing), a body that is not JSON
read as text and as a form, the query parameters and the path decoded as Starlette decodes them,
and the two headers Billfold keeps (``Idempotency-Key``, ``User-Agent``). Any value or key that
holds a card number (a Luhn-valid run of 13 to 19 digits, single spaces or dashes allowed between
groups of three or more digits), or a field named like card data (``cvc``, ``card_number``,
``exp_month``...), refuses the whole request with 422 ``card_data_refused`` before any endpoint
runs: nothing of it is stored, logged, mailed or sent to a provider, and the value is not echoed.
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import anyio.to_thread
from starlette.datastructures import Headers, QueryParams

from billfold.kit.http import IN_LOOP_BODY_BYTES, read_body, send_problem
from billfold.kit.errors import InvalidInput


class CardDataRefused(InvalidInput):
    """A request carried what looks like card data: Billfold takes provider tokens only."""

    code = "card_data_refused"
    title = "Card data refused"


# Field names that carry a card number, a security code, track data, a PIN or a card's expiry
# (the expiry comes from the provider, never from a request). Compared without case, underscores,
# dashes or spaces.
CARD_FIELDS = frozenset(
    {
        "number", "cardnumber", "ccnumber", "pan", "primaryaccountnumber", "accountnumber",
        "cvc", "cvc2", "cvv", "cvv2", "cid", "csc", "cvn", "securitycode", "cardcode", "cardverificationcode",
        "track", "track1", "track2", "trackdata", "pin", "pinblock",
        "exp", "expmonth", "expyear", "expiry", "expirydate", "expirymonth", "expiryyear",
        "expiration", "expirationdate", "expirationmonth", "expirationyear",
    }
)
# Headers whose values Billfold stores (idempotency records, sign-in sessions).
STORED_HEADERS = ("idempotency-key", "user-agent")

_RUN = re.compile(r"[0-9]+(?:[ \-][0-9]+)*")
_SEPARATOR = re.compile(r"[ \-]")
_CANDIDATE = re.compile(r"[0-9]{3}(?:[ \-]?[0-9]){10}")  # 13 digits, maybe with separators
_BARE_NUMBER = re.compile(r"^[0-9][0-9 \-]{10,22}[0-9]$")
_DOUBLE = str.maketrans("0123456789", "0246813579")  # a doubled digit's digit sum: 7 -> 14 -> 5


def luhn_valid(digits: str) -> bool:
    plain, doubled = _luhn_sums(digits)
    return plain % 10 == 0


def _luhn_sums(digits: str) -> tuple[int, int]:
    """The Luhn sum of ``digits``, and the sum with the weights swapped (as if one more digit
    followed): so a window of groups is checked by adding up its groups' sums, never re-reading
    its digits."""
    last, before = digits[-1::-2], digits[-2::-2]
    return (sum(map(int, last)) + sum(map(int, before.translate(_DOUBLE))),
            sum(map(int, before)) + sum(map(int, last.translate(_DOUBLE))))


def holds_card_number(text: str) -> bool:
    """Is there a card number anywhere in ``text``: 13 to 19 digits passing the Luhn check, alone
    or as consecutive groups of three or more digits joined by one space or dash (``4242 4242
    4242 4242``, ``3782-822463-10005``)? A run of more than 19 digits with no separator is some
    other number; a group of one or two digits (a date's month, a phone's area code) ends a
    candidate, which keeps dates, phone numbers and ISBNs from reading as cards. Linear in the
    text: each group's sums are computed once."""
    if not _CANDIDATE.search(text):  # the common case, decided in C
        return False
    for run in _RUN.finditer(text):
        if len(run.group()) < 13:
            continue
        groups = [(len(g), *_luhn_sums(g)) if 3 <= len(g) <= 19 else (len(g), 0, 0) for g in _SEPARATOR.split(run.group())]
        for start in range(len(groups)):
            length = plain = swapped = 0
            for size, group_plain, group_swapped in groups[start:start + 7]:  # 7 groups of 3: over 19 digits
                if size < 3 or length + size > 19:
                    break
                if size % 2:  # the digits before shift by an odd count: their weights swap
                    plain, swapped = swapped + group_plain, plain + group_swapped
                else:
                    plain, swapped = plain + group_plain, swapped + group_swapped
                length += size
                if length >= 13 and plain % 10 == 0:
                    return True
    return False


def looks_like_card_number(text: str) -> bool:
    """The whole text is a card number: 13 to 19 digits (spaces and dashes allowed) passing Luhn."""
    digits = _SEPARATOR.sub("", text)
    return bool(_BARE_NUMBER.match(text)) and 13 <= len(digits) <= 19 and luhn_valid(digits)


def token_is_card_data(token: str) -> bool:
    """A token is never a bare number: 12 or more digits (with spaces or dashes) look like a card
    number, Luhn-valid or mistyped, and are refused without being echoed."""
    return bool(_BARE_NUMBER.match(token)) or holds_card_number(token)


def _number_is_card(value: int | float) -> bool:
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer() or abs(value) >= 1e19:
            return False
        value = int(value)
    digits = str(abs(value))
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _normal(name: str) -> str:
    return re.sub(r"[\s_\-\[\]]", "", name.lower())


class _Pairs(list):  # type: ignore[type-arg]
    """A JSON object as all its (key, value) pairs, a repeated key included."""


def _key_is_card_data(key: str, value: Any) -> bool:
    name = _normal(key)
    return (
        name in CARD_FIELDS
        or holds_card_number(key)
        or (name == "token" and isinstance(value, str) and token_is_card_data(value))
    )


def card_fields(document: Any) -> list[str]:
    """Where in a parsed JSON document card data is (``card.number``, ``items.0.name``), in
    document order; the walk is iterative, so depth that ``json.loads`` accepted cannot stop it."""
    found: list[str] = []
    stack: list[tuple[str, Any]] = [("", document)]
    while stack:
        path, value = stack.pop()
        inner: list[tuple[str, Any]] = []
        if isinstance(value, (_Pairs, dict)):
            for key, item in value.items() if isinstance(value, dict) else value:
                here = f"{path}.{redact(str(key))}" if path else redact(str(key))  # a key is named, never echoed
                if _key_is_card_data(str(key), item):
                    found.append(here)
                inner.append((here, item))
        elif isinstance(value, list):
            inner = [(f"{path}.{index}" if path else str(index), item) for index, item in enumerate(value)]
        elif isinstance(value, str):
            if holds_card_number(value):
                found.append(path or "body")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if _number_is_card(value):
                found.append(path or "body")
        stack.extend(reversed(inner))
    return list(dict.fromkeys(found))


def parse_json(body: bytes) -> Any:
    """The body as FastAPI's ``json.loads(body)`` reads it (encoding detected from the bytes: a
    UTF-8 byte-order mark, UTF-16 and UTF-32 are all accepted), with every key of every object."""
    return json.loads(body, object_pairs_hook=_Pairs)


def body_card_fields(body: bytes) -> list[str]:
    """Card data in a request body, whatever it is: JSON as the app parses it; anything else
    (a form, text, JSON the app will refuse) as text, raw and percent-decoded, and as form fields."""
    if not body:
        return []
    try:
        return card_fields(parse_json(body))
    except (ValueError, RecursionError):
        pass  # not JSON the app can read either: it answers 422 or 400; still, nothing passes
    try:
        text = body.decode(json.detect_encoding(body), "replace")
    except LookupError:
        text = body.decode("utf-8", "replace")
    found = [key if key and not holds_card_number(key) else "body" for key, value in parse_qsl(text, keep_blank_values=True)
             if holds_card_number(value) or _key_is_card_data(key, value)]
    if not found and (holds_card_number(text) or holds_card_number(unquote_plus(text))):
        found = ["body"]
    return list(dict.fromkeys(found))


def request_card_fields(scope: dict[str, Any]) -> list[str]:
    """Card data in the path, the query parameters or a stored header of a request."""
    found: list[str] = []
    if holds_card_number(scope.get("path", "")):
        found.append("path")
    for key, value in QueryParams(scope.get("query_string", b"")).multi_items():
        if holds_card_number(value) or _key_is_card_data(key, value):
            found.append(redact(key))
    headers = Headers(scope=scope)
    for name in STORED_HEADERS:
        # An Idempotency-Key is an opaque key the client makes (a V4 UUID, as the docs advise):
        # refused when it is a card number, not when a stretch of it reads as one (about one UUID
        # in 740 holds 13+ digits that pass Luhn, and was refused).
        check = looks_like_card_number if name.lower() == "idempotency-key" else holds_card_number
        if any(check(value) for value in headers.getlist(name)):
            found.append(name)
    return list(dict.fromkeys(found))


def card_data_refused(fields: list[str]) -> CardDataRefused:
    detail = (
        "Billfold never takes card numbers, security codes or card expiry dates: collect the card with the "
        "provider's own fields (Stripe Elements, PayPal Card Fields, Accept.js; the sandbox's test tokens) "
        "and send the token they give. Refused fields: " + ", ".join(fields)
    )
    return CardDataRefused(
        detail, errors=[{"field": f, "message": "card data is refused; send a provider token"} for f in fields]
    )


_PROVIDER_DELIVERY = re.compile(r"^/v1/webhooks/[A-Za-z0-9_.-]+$")


def _is_provider_delivery(scope: dict[str, Any]) -> bool:
    """``POST /v1/webhooks/{provider_id}``: a payment provider's signed event, the guard's one
    exception. It is not a person's input: the adapter verifies the provider's signature over the
    raw body before anything is stored, and a provider's objects describe cards the way PCI allows
    (``exp_month``, ``exp_year``, ``last4``) with ids that may hold a Luhn-valid run of digits, so
    the guard would refuse real deliveries and the provider would retry them in vain."""
    return scope.get("method") == "POST" and _PROVIDER_DELIVERY.match(scope.get("path", "")) is not None


class RefuseCardData:
    """Answers 422 ``card_data_refused`` to any request with card data anywhere in it (see the
    module's docstring), before the request reaches an endpoint; the value is neither echoed nor
    logged. The body it reads is bounded by ``LimitRequestBody`` outside it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or _is_provider_delivery(scope):
            await self.app(scope, receive, send)
            return
        body, receive = await read_body(scope, receive)

        def scan() -> list[str]:
            return request_card_fields(scope) + body_card_fields(body)

        # A large body takes a while to read through: off the event loop, so other requests go on.
        fields = scan() if len(body) < IN_LOOP_BODY_BYTES else await anyio.to_thread.run_sync(scan)
        if fields:
            await send_problem(send, card_data_refused(list(dict.fromkeys(fields))))
            return
        await self.app(scope, receive, send)


def redact(text: str) -> str:
    """``text`` with every digit of a card-number-like run replaced by ``*``."""
    def mask(run: re.Match[str]) -> str:
        return re.sub(r"[0-9]", "*", run.group()) if holds_card_number(run.group()) else run.group()

    masked = _RUN.sub(mask, text)
    decoded = unquote_plus(masked)  # a query string in a request line is percent-encoded
    return _RUN.sub(mask, decoded) if holds_card_number(decoded) else masked


class RedactCardNumbers(logging.Filter):
    """Masks card numbers in a log record's arguments (the access log's request line): a refused
    request is still logged, but never with the number it carried."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True
