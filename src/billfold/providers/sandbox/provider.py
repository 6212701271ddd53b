"""The sandbox provider: the whole adapter protocol with no network, outcomes chosen by test tokens.

It behaves like a real provider where that matters to Billfold: idempotency keys are scoped per
operation and replay the first outcome (a decline included), a reused key with other
parameters is refused, state lives outside the caller (a SQLite file shared by processes and
kept across restarts), and it sends Standard-Webhooks-signed events about what happened.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from billfold.kit import clock
from billfold.kit.ids import new_id
from billfold.kit.money import CURRENCIES, Money
from billfold.providers import standard_webhooks
from billfold.providers.base import (
    part_of,
    text_metadata,
    FEATURES,
    Capabilities,
    ChargeResult,
    ChargeStatus,
    CustomerResult,
    DisputeResult,
    DisputeStatus,
    PaymentMethodResult,
    RefundResult,
    RefundStatus,
    WebhookEvent,
)
from billfold.providers.errors import (
    Declined,
    DeclineCode,
    IdempotencyMismatch,
    InvalidProviderRequest,
    ProviderObjectNotFound,
    ProviderUnavailable,
    WebhookSignatureInvalid,
)
from billfold.providers.sandbox.store import SandboxStore, stamp
from billfold.providers.sandbox.tokens import TEST_CARDS, Behaviour, TestCard

# A well-known secret for development only; configure your own ``webhook_secret``.
DEFAULT_WEBHOOK_SECRET = standard_webhooks.make_secret(b"billfold sandbox webhook secret!")

EVENT_TYPES = frozenset({
    "customer.created", "payment_method.attached", "payment_method.detached",
    "charge.succeeded", "charge.authorized", "charge.requires_action", "charge.failed", "charge.canceled",
    "charge.refunded", "refund.succeeded", "refund.failed", "dispute.opened", "dispute.closed",
    "payment_method.updated",
})

# Our status -> the sandbox's raw status (Stripe-like words, so the mapping is exercised).
RAW_STATUS = {
    ChargeStatus.SUCCEEDED: "succeeded",
    ChargeStatus.AUTHORIZED: "requires_capture",
    ChargeStatus.REQUIRES_ACTION: "requires_action",
    ChargeStatus.FAILED: "declined",
    ChargeStatus.CANCELED: "canceled",
    ChargeStatus.PROCESSING: "processing",
    ChargeStatus.CREATED: "requires_confirmation",
}

DECLINE_MESSAGES = {
    DeclineCode.GENERIC_DECLINE: "The card was declined.",
    DeclineCode.INSUFFICIENT_FUNDS: "The card has insufficient funds.",
    DeclineCode.EXPIRED_CARD: "The card has expired.",
    DeclineCode.LOST_CARD: "The card was reported lost.",
    DeclineCode.AUTHENTICATION_REQUIRED: "The card needs the customer to authenticate; charge it on-session.",
    DeclineCode.AUTHENTICATION_FAILED: "The customer did not pass authentication.",
}

MAX_KEY_LENGTH = 255


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What an operation answered, as stored under its idempotency key and replayed."""

    object: dict[str, Any]
    decline: str | None = None  # a DeclineCode: the answer is "declined", with this charge
    timeout: bool = False  # recorded, but the first caller hears ProviderUnavailable

    def to_json(self) -> str:
        return json.dumps({"object": self.object, "decline": self.decline}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> _Outcome:
        data = json.loads(text)
        return cls(data["object"], data.get("decline"))


def sandbox_capabilities(config: Mapping[str, Any]) -> Capabilities:
    """Everything on, unless ``config["disable"]`` lists features or ``config["currencies"]`` narrows
    the currencies: so other code's tests can stand in for a less able provider."""
    disabled = set(config.get("disable") or ())
    unknown = disabled - set(FEATURES)
    if unknown:
        raise ValueError(f"sandbox config 'disable' names unknown capabilities {sorted(unknown)}")
    features = {name: name not in disabled for name in FEATURES}
    features["provider_subscriptions"] = False  # the protocol has no subscription calls (yet)
    # Two-step charges (create_charge, then confirm), as Stripe's and PayPal's adapters make them:
    # off unless ``config["two_step"]``, so the engine's two paths are both run on the sandbox.
    features["creates_before_charging"] = bool(config.get("two_step")) and "creates_before_charging" not in disabled
    features["buyer_approval"] = False  # the sandbox is paid with its test tokens
    currencies = config.get("currencies")
    return Capabilities(
        **features,
        currencies=frozenset(c.upper() for c in currencies) if currencies else frozenset(CURRENCIES),
        webhook_events=EVENT_TYPES,
        webhooks_checked_offline=True,  # Standard Webhooks: an HMAC with the provider's secret
        # The shape of its tokens, as a real provider's (pm_…, tok_…): one of that shape it does not
        # know (an expired or made-up token) reaches it and is refused there, 400 unknown_token.
        token_pattern=r"tok_sandbox_[a-z0-9_]{1,64}",
    )


class SandboxProvider:
    """The sandbox adapter. ``config``: ``state_path`` (a SQLite file; absent: memory of this
    adapter only), ``webhook_secret`` (``whsec_…``), ``disable``, ``currencies`` and ``two_step``
    (see ``sandbox_capabilities``), and ``down`` (true: the provider cannot be reached, so every call
    raises ``ProviderUnavailable`` with ``sent=False``, as a refused connection would; a test
    switches a whole provider off and on with it), ``latency_ms`` and ``latency_jitter_ms`` (every
    call that reaches the provider first waits ``latency_ms`` plus up to ``latency_jitter_ms`` more,
    uniformly, in real time and outside the store's locks: a remote provider's 200-600 ms is
    ``{"latency_ms": 200, "latency_jitter_ms": 400}``; 0 by default)."""

    kind = "sandbox"

    def __init__(self, provider_id: str = "sandbox", config: Mapping[str, Any] | None = None) -> None:
        config = dict(config or {})
        path = config.get("state_path")
        self.provider_id = provider_id
        self.store = SandboxStore(None if path in (None, "", ":memory:") else str(path))
        self.webhook_secret: str = config.get("webhook_secret") or DEFAULT_WEBHOOK_SECRET
        standard_webhooks.secret_key(self.webhook_secret)  # a malformed secret fails now, not at delivery
        self.capabilities = sandbox_capabilities(config)
        down = config.get("down", False)
        if not isinstance(down, bool):
            raise ValueError("sandbox config 'down' must be true or false")
        self.down = down
        self.latency = _milliseconds(config, "latency_ms") / 1000
        self.jitter = _milliseconds(config, "latency_jitter_ms") / 1000
        # Calls of this adapter waiting out their latency now, and the most seen at once: how far a
        # caller's calls overlap (a test of the renewal sweep reads it).
        self._waiting = threading.Lock()
        self.calls_in_flight = self.most_calls_in_flight = 0

    def _reach(self) -> None:
        """A call on its way to the provider: refused if it is ``down``, else delayed by its latency."""
        self._refuse_if_down()
        if self.latency or self.jitter:
            # Real time, not the billing clock: the network's delay. No lock of the store is held here.
            with self._waiting:
                self.calls_in_flight += 1
                self.most_calls_in_flight = max(self.most_calls_in_flight, self.calls_in_flight)
            try:
                time.sleep(self.latency + random.random() * self.jitter)  # noqa: S311 (not a secret)
            finally:
                with self._waiting:
                    self.calls_in_flight -= 1

    def _refuse_if_down(self) -> None:
        """Refuse every call while the provider is ``down``: nothing reaches it, nothing happens there."""
        if self.down:
            raise ProviderUnavailable(f"the sandbox provider {self.provider_id} is down (config down: true); "
                                      "the request never reached it", provider=self.provider_id, sent=False)

    def close(self) -> None:
        self.store.close()

    # ---- customers and saved methods -------------------------------------------------------

    def create_customer(
        self, *, email: str | None = None, name: str | None = None,
        metadata: Mapping[str, str] | None = None, idempotency_key: str,
    ) -> CustomerResult:
        params = {"email": email, "name": name, "metadata": text_metadata(metadata)}

        def act(db: sqlite3.Connection) -> _Outcome:
            customer_id, now = new_id("cus"), stamp()
            db.execute("INSERT INTO customers (id, email, name, metadata, created_at) VALUES (?, ?, ?, ?, ?)",
                       (customer_id, email, name, json.dumps(params["metadata"]), now))
            customer = _customer(_get(db, "customers", customer_id))
            self._event(db, "customer.created", "customer", customer.to_dict())
            return _Outcome(customer.to_dict())

        return CustomerResult.from_dict(self._run("create_customer", idempotency_key, params, act))

    def attach_payment_method(self, *, customer_id: str, token: str, idempotency_key: str) -> PaymentMethodResult:
        self.capabilities.require("saved_methods", self.provider_id)
        params = {"customer_id": customer_id, "token": token}

        def act(db: sqlite3.Connection) -> _Outcome:
            _get(db, "customers", customer_id)
            card = _card(token)
            now = clock.now()
            exp_year = now.year - 1 if card.expired else now.year + 3
            method_id = new_id("pm")
            db.execute(
                "INSERT INTO payment_methods (id, customer_id, token, brand, last4, exp_month, exp_year, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (method_id, customer_id, token, card.brand, card.last4, 12, exp_year, stamp(now)),
            )
            method = _method(_get(db, "payment_methods", method_id))
            self._event(db, "payment_method.attached", "payment_method", method.to_dict())
            return _Outcome(method.to_dict())

        return PaymentMethodResult.from_dict(self._run("attach_payment_method", idempotency_key, params, act))

    def detach_payment_method(self, *, payment_method_id: str, idempotency_key: str) -> PaymentMethodResult:
        def act(db: sqlite3.Connection) -> _Outcome:
            _get(db, "payment_methods", payment_method_id)
            db.execute("UPDATE payment_methods SET detached = 1 WHERE id = ?", (payment_method_id,))
            method = _method(_get(db, "payment_methods", payment_method_id))
            self._event(db, "payment_method.detached", "payment_method", method.to_dict())
            return _Outcome(method.to_dict())

        params = {"payment_method_id": payment_method_id}
        return PaymentMethodResult.from_dict(self._run("detach_payment_method", idempotency_key, params, act))

    # ---- charges ------------------------------------------------------------------------------

    def charge(
        self, *, amount: Money, idempotency_key: str, customer_id: str | None = None,
        payment_method_id: str | None = None, token: str | None = None, off_session: bool = False,
        capture: bool = True, description: str | None = None, metadata: Mapping[str, str] | None = None,
    ) -> ChargeResult:
        self._refuse_if_down()  # before the checks below; _run waits out the latency
        self._check_charge(amount, payment_method_id, off_session, capture)
        params = {
            "amount": [amount.amount, amount.currency], "customer_id": customer_id,
            "payment_method_id": payment_method_id, "token": token, "off_session": off_session,
            "capture": capture, "description": description, "metadata": text_metadata(metadata),
        }

        # Ids made before the store's write lock is taken (making one costs about a third of the
        # work done under it); a replayed key wastes them, which costs nothing.
        charge_id, event_id = new_id("ch"), new_id("evt")

        def act(db: sqlite3.Connection) -> _Outcome:
            card, customer = _charge_source(db, customer_id, payment_method_id, token, off_session)
            if card.behaviour is Behaviour.UNAVAILABLE:
                raise ProviderUnavailable("the sandbox provider did not answer (test token)", provider=self.provider_id, sent=False)
            status, decline = _first_status(card, off_session, capture)
            now = stamp()
            db.execute(
                "INSERT INTO charges (id, token, customer_id, payment_method_id, currency, amount, amount_captured,"
                " amount_refunded, status, provider_status, capture, off_session, description, metadata,"
                " next_action, failure_code, failure_message, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (charge_id, card.token, customer, payment_method_id, amount.currency, amount.amount,
                 amount.amount if status is ChargeStatus.SUCCEEDED else 0, status, RAW_STATUS[status],
                 capture, off_session, description, json.dumps(params["metadata"]),
                 json.dumps(_next_action(charge_id)) if status is ChargeStatus.REQUIRES_ACTION else None,
                 decline, DECLINE_MESSAGES.get(decline) if decline else None, now, now),
            )
            charge = self._charge_changed(db, charge_id, event_id)
            return _Outcome(charge.to_dict(), decline, timeout=card.behaviour is Behaviour.TIMEOUT_AFTER_SUCCESS)

        return ChargeResult.from_dict(self._run("charge", idempotency_key, params, act))

    def create_charge(
        self, *, amount: Money, idempotency_key: str, customer_id: str | None = None,
        payment_method_id: str | None = None, token: str | None = None, off_session: bool = False,
        capture: bool = True, description: str | None = None, metadata: Mapping[str, str] | None = None,
    ) -> ChargeResult:
        """A charge made but not yet paid (``created``); ``confirm`` moves its money. Only with
        ``two_step`` on (``capabilities.creates_before_charging``)."""
        self.capabilities.require("creates_before_charging", self.provider_id)
        self._check_charge(amount, payment_method_id, off_session, capture)
        params = {
            "amount": [amount.amount, amount.currency], "customer_id": customer_id,
            "payment_method_id": payment_method_id, "token": token, "off_session": off_session,
            "capture": capture, "description": description, "metadata": text_metadata(metadata), "two_step": True,
        }

        def act(db: sqlite3.Connection) -> _Outcome:
            card, customer = _charge_source(db, customer_id, payment_method_id, token, off_session)
            if card.behaviour is Behaviour.UNAVAILABLE:
                raise ProviderUnavailable("the sandbox provider did not answer (test token)", provider=self.provider_id,
                                          sent=False)
            charge_id = new_id("ch")
            now = stamp()
            db.execute(
                "INSERT INTO charges (id, token, customer_id, payment_method_id, currency, amount, amount_captured,"
                " amount_refunded, status, provider_status, capture, off_session, description, metadata,"
                " next_action, failure_code, failure_message, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, 0, 0, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, ?, ?)",
                (charge_id, card.token, customer, payment_method_id, amount.currency, amount.amount,
                 ChargeStatus.CREATED, RAW_STATUS[ChargeStatus.CREATED], capture, off_session, description,
                 json.dumps(params["metadata"]), now, now),
            )
            return _Outcome(_charge(_get(db, "charges", charge_id)).to_dict())

        return ChargeResult.from_dict(self._run("charge", idempotency_key, params, act))

    def _check_charge(self, amount: Money, payment_method_id: str | None, off_session: bool, capture: bool) -> None:
        """Refuse, before anything is recorded, what the provider cannot or would not do."""
        self.capabilities.require_currency(amount.currency, self.provider_id)
        if off_session:
            self.capabilities.require("off_session_charges", self.provider_id)
        if payment_method_id is not None:
            self.capabilities.require("saved_methods", self.provider_id)
        if not capture:
            self.capabilities.require("separate_capture", self.provider_id)
        if not amount.is_positive():
            raise InvalidProviderRequest(f"a charge must be for a positive amount, not {amount}", code="invalid_amount")

    def confirm(self, *, charge_id: str, idempotency_key: str) -> ChargeResult:
        def act(db: sqlite3.Connection) -> _Outcome:
            row = _get(db, "charges", charge_id)
            if row["status"] == ChargeStatus.CREATED:
                return self._pay(db, row)
            if row["status"] != ChargeStatus.REQUIRES_ACTION:
                raise InvalidProviderRequest(f"charge {charge_id} is {row['status']}; only a charge that requires "
                                             "action can be confirmed", code="charge_not_confirmable")
            if TEST_CARDS[row["token"]].behaviour is Behaviour.ACTION_THEN_SUCCEED:
                status = ChargeStatus.SUCCEEDED if row["capture"] else ChargeStatus.AUTHORIZED
                captured, decline = (row["amount"] if status is ChargeStatus.SUCCEEDED else 0), None
            else:
                status, captured, decline = ChargeStatus.FAILED, 0, DeclineCode.AUTHENTICATION_FAILED
            db.execute(
                "UPDATE charges SET status = ?, provider_status = ?, amount_captured = ?, next_action = NULL,"
                " failure_code = ?, failure_message = ?, updated_at = ? WHERE id = ?",
                (status, RAW_STATUS[status], captured, decline, DECLINE_MESSAGES.get(decline) if decline else None,
                 stamp(), charge_id),
            )
            return _Outcome(self._charge_changed(db, charge_id).to_dict(), decline)

        return ChargeResult.from_dict(self._run("confirm", idempotency_key, {"charge_id": charge_id}, act))

    def _pay(self, db: sqlite3.Connection, row: sqlite3.Row) -> _Outcome:
        """Move the money of a ``created`` charge, as ``charge`` would have (test tokens included)."""
        card = TEST_CARDS[row["token"]]
        status, decline = _first_status(card, bool(row["off_session"]), bool(row["capture"]))
        db.execute(
            "UPDATE charges SET status = ?, provider_status = ?, amount_captured = ?, next_action = ?,"
            " failure_code = ?, failure_message = ?, updated_at = ? WHERE id = ?",
            (status, RAW_STATUS[status], row["amount"] if status is ChargeStatus.SUCCEEDED else 0,
             json.dumps(_next_action(row["id"])) if status is ChargeStatus.REQUIRES_ACTION else None,
             decline, DECLINE_MESSAGES.get(decline) if decline else None, stamp(), row["id"]),
        )
        charge = self._charge_changed(db, row["id"])
        return _Outcome(charge.to_dict(), decline, timeout=card.behaviour is Behaviour.TIMEOUT_AFTER_SUCCESS)

    def capture(self, *, charge_id: str, idempotency_key: str, amount: Money | None = None) -> ChargeResult:
        self.capabilities.require("separate_capture", self.provider_id)
        params = {"charge_id": charge_id, "amount": [amount.amount, amount.currency] if amount else None}

        def act(db: sqlite3.Connection) -> _Outcome:
            row = _get(db, "charges", charge_id)
            if row["status"] != ChargeStatus.AUTHORIZED:
                raise InvalidProviderRequest(f"charge {charge_id} is {row['status']}; only an authorized charge "
                                             "can be captured", code="charge_not_capturable")
            authorized = Money(row["amount"], row["currency"])
            to_capture = part_of(amount, authorized, "capture")
            if to_capture != authorized:
                self.capabilities.require("partial_capture", self.provider_id)
            db.execute(
                "UPDATE charges SET status = ?, provider_status = ?, amount_captured = ?, updated_at = ? WHERE id = ?",
                (ChargeStatus.SUCCEEDED, RAW_STATUS[ChargeStatus.SUCCEEDED], to_capture.amount, stamp(), charge_id),
            )
            return _Outcome(self._charge_changed(db, charge_id).to_dict())

        return ChargeResult.from_dict(self._run("capture", idempotency_key, params, act))

    def cancel(self, *, charge_id: str, idempotency_key: str) -> ChargeResult:
        def act(db: sqlite3.Connection) -> _Outcome:
            row = _get(db, "charges", charge_id)
            if row["status"] not in (ChargeStatus.AUTHORIZED, ChargeStatus.REQUIRES_ACTION):
                raise InvalidProviderRequest(f"charge {charge_id} is {row['status']}; only an authorized charge or "
                                             "one that requires action can be canceled (refund a succeeded one)",
                                             code="charge_not_cancelable")
            db.execute("UPDATE charges SET status = ?, provider_status = ?, next_action = NULL, updated_at = ?"
                       " WHERE id = ?", (ChargeStatus.CANCELED, RAW_STATUS[ChargeStatus.CANCELED], stamp(), charge_id))
            return _Outcome(self._charge_changed(db, charge_id).to_dict())

        return ChargeResult.from_dict(self._run("cancel", idempotency_key, {"charge_id": charge_id}, act))

    # ---- refunds ------------------------------------------------------------------------------

    def refund(
        self, *, charge_id: str, idempotency_key: str, amount: Money | None = None,
        reason: str | None = None, metadata: Mapping[str, str] | None = None,
    ) -> RefundResult:
        self.capabilities.require("refunds", self.provider_id)
        params = {"charge_id": charge_id, "amount": [amount.amount, amount.currency] if amount else None,
                  "reason": reason, "metadata": text_metadata(metadata)}

        def act(db: sqlite3.Connection) -> _Outcome:
            row = _get(db, "charges", charge_id)
            if row["status"] != ChargeStatus.SUCCEEDED:
                raise InvalidProviderRequest(f"charge {charge_id} is {row['status']}; only a succeeded charge can "
                                             "be refunded", code="charge_not_refundable")
            captured = Money(row["amount_captured"], row["currency"])
            remaining = captured - Money(row["amount_refunded"], row["currency"])
            if remaining.is_zero():
                raise InvalidProviderRequest(f"charge {charge_id} is already fully refunded",
                                             code="charge_already_refunded")
            to_refund = part_of(amount, remaining, "refund")
            if to_refund != captured:
                self.capabilities.require("partial_refunds", self.provider_id)
            refund_id, now = new_id("re"), stamp()
            db.execute("INSERT INTO refunds (id, charge_id, currency, amount, status, reason, metadata, created_at)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (refund_id, charge_id, to_refund.currency, to_refund.amount,
                       RefundStatus.SUCCEEDED, reason, json.dumps(params["metadata"]), now))
            db.execute("UPDATE charges SET amount_refunded = amount_refunded + ?, updated_at = ? WHERE id = ?",
                       (to_refund.amount, now, charge_id))
            refund = _refund(_get(db, "refunds", refund_id))
            self._event(db, "refund.succeeded", "refund", refund.to_dict())
            self._event(db, "charge.refunded", "charge", _charge(_get(db, "charges", charge_id)).to_dict())
            # A charge made with the timeout-after-success token times out after refunding too: the
            # refund is made, the first caller hears ProviderUnavailable (a crash before we record it).
            card = TEST_CARDS.get(row["token"] or "")
            return _Outcome(refund.to_dict(), timeout=card is not None and card.behaviour is Behaviour.TIMEOUT_AFTER_SUCCESS)

        return RefundResult.from_dict(self._run("refund", idempotency_key, params, act))

    # ---- reading --------------------------------------------------------------------------------

    def get_charge(self, charge_id: str) -> ChargeResult:
        self._reach()
        with self.store.read() as db:
            return _charge(_get(db, "charges", charge_id))

    def find_charge(self, *, idempotency_key: str) -> ChargeResult | None:
        self._reach()
        with self.store.read() as db:
            stored = db.execute("SELECT outcome FROM idempotency_keys WHERE operation = 'charge' AND key = ?",
                                (idempotency_key,)).fetchone()
            if stored is None:
                return None
            return _charge(_get(db, "charges", _Outcome.from_json(stored["outcome"]).object["id"]))

    def get_refund(self, refund_id: str) -> RefundResult:
        self._reach()
        with self.store.read() as db:
            return _refund(_get(db, "refunds", refund_id))

    def get_dispute(self, dispute_id: str) -> DisputeResult:
        with self.store.read() as db:
            return _dispute(_get(db, "disputes", dispute_id))

    # ---- what happens at the provider without Billfold asking (tests and the demo call these) ---

    def open_dispute(self, charge_id: str, *, amount: Money | None = None, reason: str = "fraudulent") -> DisputeResult:
        """The customer's bank disputes a succeeded charge (all of it, or ``amount``)."""
        with self.store.write() as db:
            row = _get(db, "charges", charge_id)
            if row["status"] != ChargeStatus.SUCCEEDED:
                raise InvalidProviderRequest(f"charge {charge_id} is {row['status']}; only a succeeded charge can be disputed")
            disputed = part_of(amount, Money(row["amount_captured"], row["currency"]), "dispute")
            dispute_id = new_id("dp")
            db.execute("INSERT INTO disputes (id, charge_id, currency, amount, status, reason, created_at)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (dispute_id, charge_id, disputed.currency, disputed.amount, DisputeStatus.OPEN, reason, stamp()))
            dispute = _dispute(_get(db, "disputes", dispute_id))
            self._event(db, "dispute.opened", "dispute", dispute.to_dict())
            return dispute

    def close_dispute(self, dispute_id: str, *, won: bool) -> DisputeResult:
        """The bank decides an open dispute: for the merchant (``won``) or for the customer."""
        with self.store.write() as db:
            row = _get(db, "disputes", dispute_id)
            if row["status"] != DisputeStatus.OPEN:
                raise InvalidProviderRequest(f"dispute {dispute_id} is {row['status']} already")
            status = DisputeStatus.WON if won else DisputeStatus.LOST
            db.execute("UPDATE disputes SET status = ? WHERE id = ?", (status, dispute_id))
            dispute = _dispute(_get(db, "disputes", dispute_id))
            self._event(db, "dispute.closed", "dispute", dispute.to_dict())
            return dispute

    def fail_refund(self, refund_id: str) -> RefundResult:
        """A refund that succeeded fails afterwards (the card was closed): the money stays with the
        merchant, as Stripe's ``refund.failed``."""
        with self.store.write() as db:
            row = _get(db, "refunds", refund_id)
            if row["status"] != RefundStatus.SUCCEEDED:
                raise InvalidProviderRequest(f"refund {refund_id} is {row['status']}; only a succeeded refund can fail")
            db.execute("UPDATE refunds SET status = ? WHERE id = ?", (RefundStatus.FAILED, refund_id))
            db.execute("UPDATE charges SET amount_refunded = amount_refunded - ?, updated_at = ? WHERE id = ?",
                       (row["amount"], stamp(), row["charge_id"]))
            refund = _refund(_get(db, "refunds", refund_id))
            self._event(db, "refund.failed", "refund", refund.to_dict())
            return refund

    def update_payment_method(self, payment_method_id: str, *, exp_month: int, exp_year: int) -> PaymentMethodResult:
        """The card's bank sends a new expiry date (Stripe's card updater)."""
        with self.store.write() as db:
            _get(db, "payment_methods", payment_method_id)
            db.execute("UPDATE payment_methods SET exp_month = ?, exp_year = ? WHERE id = ?",
                       (exp_month, exp_year, payment_method_id))
            method = _method(_get(db, "payment_methods", payment_method_id))
            self._event(db, "payment_method.updated", "payment_method", method.to_dict())
            return method

    def get_customer(self, customer_id: str) -> CustomerResult:
        self._reach()
        with self.store.read() as db:
            return _customer(_get(db, "customers", customer_id))

    def get_payment_method(self, payment_method_id: str) -> PaymentMethodResult:
        self._reach()
        with self.store.read() as db:
            return _method(_get(db, "payment_methods", payment_method_id))

    def list_charges(self, created_from: datetime | None = None, created_to: datetime | None = None) -> list[ChargeResult]:
        """Charges created in [created_from, created_to), oldest first (for reconciliation)."""
        return [_charge(row) for row in self._list("charges", created_from, created_to)]

    def list_refunds(self, created_from: datetime | None = None, created_to: datetime | None = None) -> list[RefundResult]:
        """Refunds created in [created_from, created_to), oldest first."""
        return [_refund(row) for row in self._list("refunds", created_from, created_to)]

    def list_refunds_of(self, charge_id: str) -> list[RefundResult]:
        self._reach()
        with self.store.read() as db:
            rows = db.execute("SELECT * FROM refunds WHERE charge_id = ? ORDER BY created_at, id", (charge_id,))
            return [_refund(row) for row in rows]

    def _list(self, table: str, start: datetime | None, end: datetime | None) -> list[sqlite3.Row]:
        self._reach()
        order = "seq" if table == "events" else "created_at, id"
        with self.store.read() as db:
            return db.execute(
                f"SELECT * FROM {table} WHERE created_at >= ? AND created_at < ? ORDER BY {order}",  # noqa: S608
                (stamp(start) if start else "", stamp(end) if end else "~"),
            ).fetchall()

    # ---- webhooks -------------------------------------------------------------------------------

    def list_events(
        self, created_from: datetime | None = None, created_to: datetime | None = None,
        *, object_id: str | None = None, type: str | None = None,
    ) -> list[WebhookEvent]:
        """The events the sandbox would have sent, in the order they happened."""
        events = [_event(row) for row in self._list("events", created_from, created_to)]
        return [e for e in events if (object_id is None or e.object_id == object_id) and (type is None or e.type == type)]

    def build_webhook(self, event: WebhookEvent, at: datetime | None = None) -> tuple[bytes, dict[str, str]]:
        """The body and Standard Webhooks headers for delivering ``event`` now (or ``at``)."""
        body = json.dumps(event.to_dict(), separators=(",", ":"), sort_keys=True).encode()
        return body, standard_webhooks.sign(self.webhook_secret, event.id, body, at)

    def verify_webhook(self, body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        msg_id = standard_webhooks.verify(self.webhook_secret, body, headers)
        try:
            event = WebhookEvent.from_dict(json.loads(body))
        except (ValueError, KeyError, TypeError) as error:
            raise WebhookSignatureInvalid("the signed webhook body is not a sandbox event") from error
        if event.id != msg_id:
            raise WebhookSignatureInvalid("the webhook-id header does not name the event in the body")
        return event

    # ---- machinery ------------------------------------------------------------------------------

    def _run(self, operation: str, key: str, params: dict[str, Any],
             act: Callable[[sqlite3.Connection], _Outcome]) -> dict[str, Any]:
        """Do ``act`` once per (operation, key): replay the stored outcome for the same parameters,
        refuse other parameters. Outcomes are stored in the same transaction as the work, so a
        crash leaves either both or neither. Refusals (InvalidProviderRequest) and
        ProviderUnavailable roll back and store nothing, so they may be retried."""
        self._reach()
        _check_key(key)
        request_hash = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
        with self.store.write() as db:
            stored = db.execute("SELECT request_hash, outcome FROM idempotency_keys WHERE operation = ? AND key = ?",
                                (operation, key)).fetchone()
            if stored is not None:
                if stored["request_hash"] != request_hash:
                    raise IdempotencyMismatch(f"idempotency key {key!r} was used for a {operation} with other "
                                              "parameters", idempotency_key=key)
                outcome = _Outcome.from_json(stored["outcome"])
            else:
                outcome = act(db)
                db.execute("INSERT INTO idempotency_keys (operation, key, request_hash, outcome, created_at)"
                           " VALUES (?, ?, ?, ?, ?)", (operation, key, request_hash, outcome.to_json(), stamp()))
        if outcome.timeout:  # only ever true on the first call: the stored outcome has no timeout
            raise ProviderUnavailable("the sandbox provider timed out (test token); the charge may have happened, "
                                      "retry with the same idempotency key", provider=self.provider_id)
        if outcome.decline:
            charge = ChargeResult.from_dict(outcome.object)
            raise Declined(charge.failure_message or "The payment was declined.", outcome.decline, charge=charge)
        return outcome.object

    def _charge_changed(self, db: sqlite3.Connection, charge_id: str, event_id: str | None = None) -> ChargeResult:
        charge = _charge(_get(db, "charges", charge_id))
        self._event(db, f"charge.{charge.status}", "charge", charge.to_dict(), event_id)
        return charge

    def _event(self, db: sqlite3.Connection, type: str, object_type: str, data: dict[str, Any],
               event_id: str | None = None) -> None:
        db.execute("INSERT INTO events (id, type, object_type, object_id, data, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                   (event_id or new_id("evt"), type, object_type, data["id"], json.dumps(data, sort_keys=True), stamp()))


# ---- helpers --------------------------------------------------------------------------------


MAX_LATENCY_MS = 60_000


def _milliseconds(config: Mapping[str, Any], name: str) -> int:
    """A delay from the config: a whole number of milliseconds, 0 to MAX_LATENCY_MS."""
    value = config.get(name, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LATENCY_MS:
        raise ValueError(f"sandbox config {name!r} must be a whole number of milliseconds from 0 to {MAX_LATENCY_MS}, "
                         f"not {value!r}")
    return value


def _check_key(key: object) -> None:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidProviderRequest(f"an idempotency key must be 1 to {MAX_KEY_LENGTH} characters",
                                     code="invalid_idempotency_key")


def _card(token: str) -> TestCard:
    card = TEST_CARDS.get(token)
    if card is None:
        raise InvalidProviderRequest(f"{token!r} is not a sandbox test token; see docs/providers.md",
                                     code="unknown_token")
    return card


def _get(db: sqlite3.Connection, table: str, object_id: str) -> sqlite3.Row:
    row = db.execute(f"SELECT * FROM {table} WHERE id = ?", (object_id,)).fetchone()  # noqa: S608
    if row is None:
        raise ProviderObjectNotFound(f"the sandbox has no {table[:-1].replace('_', ' ')} {object_id!r}")
    return row


def _charge_source(
    db: sqlite3.Connection, customer_id: str | None, payment_method_id: str | None, token: str | None,
    off_session: bool,
) -> tuple[TestCard, str | None]:
    """The card to charge and the customer it belongs to."""
    if (payment_method_id is None) == (token is None):
        raise InvalidProviderRequest("give exactly one of payment_method_id and token", code="invalid_payment_source")
    if customer_id is not None:
        _get(db, "customers", customer_id)
    if token is not None:
        if off_session:
            raise InvalidProviderRequest("an off-session charge needs a saved payment method",
                                         code="off_session_needs_saved_method")
        return _card(token), customer_id
    assert payment_method_id is not None
    method = _get(db, "payment_methods", payment_method_id)
    if method["detached"]:
        raise InvalidProviderRequest(f"payment method {payment_method_id} was detached", code="payment_method_detached")
    if customer_id is not None and method["customer_id"] != customer_id:
        raise InvalidProviderRequest(f"payment method {payment_method_id} belongs to another customer",
                                     code="payment_method_customer_mismatch")
    return TEST_CARDS[method["token"]], method["customer_id"]


def _first_status(card: TestCard, off_session: bool, capture: bool) -> tuple[ChargeStatus, DeclineCode | None]:
    if card.behaviour is Behaviour.DECLINE:
        return ChargeStatus.FAILED, card.decline_code
    if card.behaviour in (Behaviour.ACTION_THEN_SUCCEED, Behaviour.ACTION_THEN_FAIL):
        if off_session:  # no customer present to authenticate: a soft decline, bring them back on-session
            return ChargeStatus.FAILED, DeclineCode.AUTHENTICATION_REQUIRED
        return ChargeStatus.REQUIRES_ACTION, None
    return (ChargeStatus.SUCCEEDED if capture else ChargeStatus.AUTHORIZED), None


def _next_action(charge_id: str) -> dict[str, Any]:
    # Nothing to visit: in the sandbox the customer "authenticates" when the caller calls confirm().
    return {"type": "sandbox_authenticate", "charge_id": charge_id}


def _charge(row: sqlite3.Row) -> ChargeResult:
    currency = row["currency"]
    return ChargeResult(
        id=row["id"], status=ChargeStatus(row["status"]), provider_status=row["provider_status"],
        amount=Money(row["amount"], currency), amount_captured=Money(row["amount_captured"], currency),
        amount_refunded=Money(row["amount_refunded"], currency), created=_time(row["created_at"]),
        customer_id=row["customer_id"], payment_method_id=row["payment_method_id"], capture=bool(row["capture"]),
        off_session=bool(row["off_session"]), description=row["description"], metadata=json.loads(row["metadata"]),
        next_action=json.loads(row["next_action"]) if row["next_action"] else None,
        failure_code=row["failure_code"], failure_message=row["failure_message"],
    )


def _refund(row: sqlite3.Row) -> RefundResult:
    return RefundResult(row["id"], row["charge_id"], Money(row["amount"], row["currency"]), RefundStatus(row["status"]),
                        row["status"], _time(row["created_at"]), row["reason"], json.loads(row["metadata"]))


def _dispute(row: sqlite3.Row) -> DisputeResult:
    return DisputeResult(row["id"], row["charge_id"], Money(row["amount"], row["currency"]), DisputeStatus(row["status"]),
                         row["status"], _time(row["created_at"]), row["reason"])


def _customer(row: sqlite3.Row) -> CustomerResult:
    return CustomerResult(row["id"], row["email"], row["name"], _time(row["created_at"]), json.loads(row["metadata"]))


def _method(row: sqlite3.Row) -> PaymentMethodResult:
    return PaymentMethodResult(row["id"], row["customer_id"], "credit_card", row["brand"], row["last4"],
                               row["exp_month"], row["exp_year"], _time(row["created_at"]), bool(row["detached"]))


def _event(row: sqlite3.Row) -> WebhookEvent:
    return WebhookEvent(row["id"], row["type"], row["object_type"], row["object_id"], _time(row["created_at"]),
                        json.loads(row["data"]))


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)
