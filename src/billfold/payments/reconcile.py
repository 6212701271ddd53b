"""Reconciliation: the provider's charges and refunds compared with our payments and refunds
(``billfold reconcile``, docs/operations.md).

For one provider and a window [since, until) of creation times:

1. **list**, with no transaction open: the provider's charges and refunds created in the window
   (``list_charges`` / ``list_refunds``; adapters page through the provider's lists themselves).
2. **read** ours in a short read: the payments and refunds those objects name (by the provider's id
   we recorded, else by the ``payment_id`` / ``refund_id`` Billfold put in their metadata), and our
   completed or refunded payments and succeeded refunds of the window. One of ours the provider did
   not list is looked up by its id (it may lie just outside the provider's window), again with no
   transaction open.
3. **classify** each pair (``Finding.kind``): agreed; ``missing_ours`` (the provider charged or
   refunded, and our row never heard of it: a lost answer, a lost webhook); ``unknown`` (the
   provider's object names nothing of ours); ``missing_theirs`` (our completed payment or succeeded
   refund the provider does not have); ``amount`` (the amounts differ); ``status`` (the states
   differ); ``refunded`` (the charge's refunded amount is not what our refunds add up to).
4. **repair** what is safe, and only that: a pending payment (or a failed one the provider says
   succeeded) and a pending refund are settled through the payment engine, exactly as a late
   webhook settles them (``engine.run`` with the Charges and Refunds moves, which move only a
   pending record, and a failed payment to completed on a late success). The engine makes every
   money write; each repair leaves an audit row (``payment.reconciled`` / ``refund.reconciled``)
   in the transaction that records it. The ask made for a repair only reads the provider's object
   (``get_charge`` / ``get_refund`` of the object listed): reconciling never charges or refunds.
   Everything else (amounts, a completed payment the provider failed, objects of no one's) is
   reported for a person.

After repairs the repaired rows are read and compared again, so the report says what remains.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from billfold.accounts.security import Security
from billfold.audit import audit
from billfold.kit import clock
from billfold.kit.db import reading
from billfold.kit.errors import BillfoldError, InvalidInput
from billfold.kit.money import Money
from billfold.models import Payment, Refund
from billfold.payments import engine, provider_config
from billfold.payments.engine import Answer, ChargeFor, Outcome, Result
from billfold.payments.refunds import Refunds
from billfold.providers.base import (
    FINAL_CHARGE_STATUSES,
    ChargeResult,
    ChargeStatus,
    ProviderAdapter,
    RefundResult,
    RefundStatus,
)
from billfold.providers.errors import Declined, ProviderObjectNotFound

log = logging.getLogger("billfold.reconcile")

SYSTEM = "system"
CHUNK = 500  # ids per IN (...) query

Kind = Literal["missing_ours", "unknown", "missing_theirs", "amount", "status", "refunded"]
KINDS: tuple[Kind, ...] = ("missing_ours", "unknown", "missing_theirs", "amount", "status", "refunded")
Action = Literal["repaired", "repairable", "repair_failed", "reported"]

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: stage is ``"listing"``, ``"comparing"`` or ``"repairing"``."""


@dataclass(frozen=True)
class Finding:
    """One disagreement: what it is about (``object``: charge or refund), our row's id and the
    provider's object id (either may be None), what differs, and what was done about it."""

    kind: Kind
    object: Literal["charge", "refund"]
    ours: str | None
    theirs: str | None
    detail: str
    action: Action = "reported"

    @property
    def open(self) -> bool:
        """Whether a person still has to look at it (anything but a repair made)."""
        return self.action != "repaired"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "object": self.object, "ours": self.ours, "theirs": self.theirs,
                "detail": self.detail, "action": self.action}


@dataclass
class Report:
    provider_id: str
    since: datetime
    until: datetime
    dry_run: bool
    charges: int = 0  # provider objects checked
    refunds: int = 0
    agreed: int = 0  # pairs that agreed from the start
    findings: list[Finding] = field(default_factory=list)

    @property
    def repaired(self) -> list[Finding]:
        return [f for f in self.findings if f.action == "repaired"]

    @property
    def open(self) -> list[Finding]:
        return [f for f in self.findings if f.open]

    @property
    def all_agree(self) -> bool:
        """True when nothing is left for a person (what disagreed was repaired)."""
        return not self.open

    def counts(self) -> dict[str, int]:
        counted = {kind: 0 for kind in KINDS}
        for finding in self.open:
            counted[finding.kind] += 1
        return {"agreed": self.agreed, "repaired": len(self.repaired), **counted}

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider_id": self.provider_id, "since": self.since.isoformat(), "until": self.until.isoformat(),
            "dry_run": self.dry_run, "checked": {"charges": self.charges, "refunds": self.refunds},
            "all_agree": self.all_agree, "counts": self.counts(), "findings": [f.to_dict() for f in self.findings],
        }


def _quiet(stage: str, done: int, total: int) -> None:
    return None


# What we hold, read in one short read


@dataclass
class _Ours:
    payments: dict[str, Payment] = field(default_factory=dict)  # by our id
    by_charge: dict[str, str] = field(default_factory=dict)  # provider charge id -> payment id
    refunds: dict[str, Refund] = field(default_factory=dict)
    by_refund: dict[str, str] = field(default_factory=dict)  # provider refund id -> refund id
    refunded: dict[str, int] = field(default_factory=dict)  # payment id -> cents of succeeded refunds
    window_payments: list[str] = field(default_factory=list)  # completed/refunded payments of the window
    window_refunds: list[str] = field(default_factory=list)  # succeeded refunds of the window


def _chunks(values: Iterable[str]) -> Iterable[list[str]]:
    items = sorted(set(values))
    for start in range(0, len(items), CHUNK):
        yield items[start:start + CHUNK]


def _read_ours(
    session: Session, provider_id: str, since: datetime, until: datetime,
    charges: Sequence[ChargeResult], refunds: Sequence[RefundResult],
) -> _Ours:
    ours = _Ours()
    # Our columns keep whole seconds (truncated): the window's end is rounded up to the next one, so
    # a row made in the last second before ``until`` is in it.
    if until.microsecond:
        until = until.replace(microsecond=0) + timedelta(seconds=1)

    def keep_payments(statement: sa.Select[tuple[Payment]]) -> None:
        for payment in session.scalars(statement):
            ours.payments[payment.id] = payment
            if payment.provider_payment_id:
                ours.by_charge[payment.provider_payment_id] = payment.id

    def keep_refunds(statement: sa.Select[tuple[Refund]]) -> None:
        for row in session.scalars(statement):
            ours.refunds[row.id] = row
            if row.provider_refund_id:
                ours.by_refund[row.provider_refund_id] = row.id

    of_provider = sa.select(Payment).where(Payment.provider_id == provider_id)
    for chunk in _chunks(c.id for c in charges):
        keep_payments(of_provider.where(Payment.provider_payment_id.in_(chunk)))
    for chunk in _chunks(c.metadata["payment_id"] for c in charges if (c.metadata or {}).get("payment_id")):
        keep_payments(of_provider.where(Payment.id.in_(chunk)))
    in_window = of_provider.where(
        Payment.status.in_(("completed", "refunded")), Payment.created_at >= since, Payment.created_at < until
    )
    window_payments = list(session.scalars(in_window))
    ours.window_payments = [p.id for p in window_payments]
    for payment in window_payments:
        ours.payments[payment.id] = payment
        if payment.provider_payment_id:
            ours.by_charge[payment.provider_payment_id] = payment.id

    refunds_of = sa.select(Refund).where(Refund.provider_id == provider_id)
    for chunk in _chunks(r.id for r in refunds):
        keep_refunds(refunds_of.where(Refund.provider_refund_id.in_(chunk)))
    for chunk in _chunks(r.metadata["refund_id"] for r in refunds if (r.metadata or {}).get("refund_id")):
        keep_refunds(refunds_of.where(Refund.id.in_(chunk)))
    window = refunds_of.where(Refund.status == "succeeded", Refund.created_at >= since, Refund.created_at < until)
    window_refunds = list(session.scalars(window))
    ours.window_refunds = [r.id for r in window_refunds]
    for row in window_refunds:
        ours.refunds[row.id] = row
        if row.provider_refund_id:
            ours.by_refund[row.provider_refund_id] = row.id
    for chunk in _chunks(ours.payments):
        totals = session.execute(
            sa.select(Refund.payment_id, sa.func.coalesce(sa.func.sum(Refund.amount_cents), 0))
            .where(Refund.payment_id.in_(chunk), Refund.status == "succeeded")
            .group_by(Refund.payment_id)
        )
        ours.refunded.update({payment_id: int(total) for payment_id, total in totals})
    return ours


# Comparing


_AGREE = {
    "pending": frozenset(set(ChargeStatus) - FINAL_CHARGE_STATUSES),
    "completed": frozenset({ChargeStatus.SUCCEEDED}),
    # A charge voided before it settled (Authorize.net refunds so in full) is canceled: the whole
    # amount went back, which our refunds must add up to (compared below).
    "refunded": frozenset({ChargeStatus.SUCCEEDED, ChargeStatus.CANCELED}),
    "failed": frozenset({ChargeStatus.FAILED, ChargeStatus.CANCELED}),
}


def _money(cents: int, currency: str) -> str:
    return Money(cents, currency).format()


@dataclass
class _Repair:
    """A safe repair to make: settle ``ours`` (a payment or refund id) on the provider object ``theirs``."""

    object: Literal["charge", "refund"]
    ours: str
    theirs: str
    kind: Kind
    detail: str


@dataclass
class _Comparison:
    agreed: int = 0
    findings: list[Finding] = field(default_factory=list)
    repairs: list[_Repair] = field(default_factory=list)


Row = TypeVar("Row", Payment, Refund)


def _ours_for(
    provider_id: str, metadata: Mapping[str, Any] | None, by_provider: dict[str, str], rows: dict[str, Row],
    noun: str, recorded_as: Callable[[Row], str | None], unnamed: str, second: str,
) -> tuple[Row | None, str | None]:
    """Our row (payment or refund) the provider's object ``provider_id`` is: by the id recorded on
    it, else by the row its metadata names (``<noun>_id``); or None and why it is no one's."""
    found = by_provider.get(provider_id)
    if found is not None:
        return rows[found], None
    named = (metadata or {}).get(f"{noun}_id")
    if not named:
        return None, unnamed
    row = rows.get(named)
    if row is None:
        return None, f"names {noun} {named}, which Billfold does not have"
    recorded = recorded_as(row)
    if recorded and recorded != provider_id:
        return None, f"names {noun} {named}, which was {second.format(recorded)}"
    return row, None


def _payment_for(ours: _Ours, charge: ChargeResult) -> tuple[Payment | None, str | None]:
    return _ours_for(charge.id, charge.metadata, ours.by_charge, ours.payments, "payment",
                     lambda p: p.provider_payment_id, "names no payment of Billfold's", "charged as {} (a second charge)")


def _compare_charge(ours: _Ours, charge: ChargeResult, into: _Comparison) -> str | None:
    """Compare one provider charge with our payment; the payment's id when they were paired."""
    payment, why = _payment_for(ours, charge)
    if payment is None:
        into.findings.append(Finding(
            "unknown", "charge", None, charge.id,
            f"the provider's {charge.status} charge of {charge.amount.format()} {why}",
        ))
        return None
    ours_amount = Money(payment.amount_cents, payment.currency)
    if charge.amount != ours_amount:
        into.findings.append(Finding(
            "amount", "charge", payment.id, charge.id,
            f"Billfold's payment is {ours_amount.format()}, the provider charged {charge.amount.format()}",
        ))
        return payment.id  # a charge of another amount is never settled on our payment
    if charge.status in _AGREE.get(payment.status, frozenset()):
        if payment.status in ("completed", "refunded"):
            refunded = ours.refunded.get(payment.id, 0)
            theirs = charge.amount if charge.status == ChargeStatus.CANCELED else charge.amount_refunded
            if theirs.amount != refunded:
                into.findings.append(Finding(
                    "refunded", "charge", payment.id, charge.id,
                    f"the provider has refunded {theirs.format()} of it, "
                    f"Billfold's refunds add up to {_money(refunded, payment.currency)}",
                ))
                return payment.id
        into.agreed += 1
        return payment.id
    safe = (payment.status == "pending" and charge.status in FINAL_CHARGE_STATUSES) or (
        payment.status == "failed" and charge.status == ChargeStatus.SUCCEEDED
    )
    lost = payment.provider_payment_id is None and charge.status == ChargeStatus.SUCCEEDED
    kind: Kind = "missing_ours" if lost else "status"
    detail = (
        f"the provider charged {charge.amount.format()} ({charge.status}); Billfold's payment is {payment.status}"
        + (" and never heard of the charge" if payment.provider_payment_id is None else "")
    )
    if safe:
        into.repairs.append(_Repair("charge", payment.id, charge.id, kind, detail))
    else:
        into.findings.append(Finding(kind, "charge", payment.id, charge.id, detail))
    return payment.id


def _refund_for(ours: _Ours, made: RefundResult) -> tuple[Refund | None, str | None]:
    return _ours_for(made.id, made.metadata, ours.by_refund, ours.refunds, "refund",
                     lambda r: r.provider_refund_id, "names no refund of Billfold's (made at the provider itself?)",
                     "made as {} (a second refund)")


def _compare_refund(ours: _Ours, made: RefundResult, into: _Comparison) -> str | None:
    row, why = _refund_for(ours, made)
    if row is None:
        into.findings.append(Finding(
            "unknown", "refund", None, made.id,
            f"the provider's {made.status} refund of {made.amount.format()} of charge {made.charge_id} {why}",
        ))
        return None
    ours_amount = Money(row.amount_cents, row.currency)
    if made.amount != ours_amount:
        into.findings.append(Finding(
            "amount", "refund", row.id, made.id,
            f"Billfold's refund is {ours_amount.format()}, the provider refunded {made.amount.format()}",
        ))
        return row.id
    agree = {
        "pending": (RefundStatus.PENDING,), "succeeded": (RefundStatus.SUCCEEDED,),
        "failed": (RefundStatus.FAILED, RefundStatus.CANCELED),
    }
    if made.status in agree.get(row.status, ()):
        into.agreed += 1
        return row.id
    detail = f"the provider's refund of {made.amount.format()} is {made.status}; Billfold's is {row.status}" + (
        " and never heard of it" if row.provider_refund_id is None else ""
    )
    if row.status == "pending":  # the provider's answer is final (it is not pending): settle ours on it
        kind: Kind = "missing_ours" if row.provider_refund_id is None and made.status == RefundStatus.SUCCEEDED else "status"
        into.repairs.append(_Repair("refund", row.id, made.id, kind, detail))
    else:
        into.findings.append(Finding("status", "refund", row.id, made.id, detail))
    return row.id


def _compare(
    ours: _Ours, charges: Sequence[ChargeResult], refunds: Sequence[RefundResult],
    outside: dict[str, ChargeResult | RefundResult | None], progress: Progress,
) -> _Comparison:
    """Pair and compare everything; ``outside``: our window's objects the provider did not list, as
    it answered them by id (None: it has no such object)."""
    into = _Comparison()
    total = len(charges) + len(refunds) + len(outside)
    done = 0
    paired_payments: set[str] = set()
    paired_refunds: set[str] = set()
    for charge in charges:
        paired = _compare_charge(ours, charge, into)
        if paired:
            paired_payments.add(paired)
        done += 1
        progress("comparing", done, total)
    for made in refunds:
        paired = _compare_refund(ours, made, into)
        if paired:
            paired_refunds.add(paired)
        done += 1
        progress("comparing", done, total)
    for payment_id in ours.window_payments:
        if payment_id in paired_payments:
            continue
        payment = ours.payments[payment_id]
        found = outside.get(f"charge:{payment.provider_payment_id}") if payment.provider_payment_id else None
        if isinstance(found, ChargeResult):
            _compare_charge(ours, found, into)
        else:
            into.findings.append(Finding(
                "missing_theirs", "charge", payment.id, payment.provider_payment_id,
                f"Billfold's payment of {_money(payment.amount_cents, payment.currency)} is {payment.status}; "
                + ("the provider has no such charge" if payment.provider_payment_id else "it names no provider charge"),
            ))
        done += 1
        progress("comparing", done, total)
    for refund_id in ours.window_refunds:
        if refund_id in paired_refunds:
            continue
        row = ours.refunds[refund_id]
        found = outside.get(f"refund:{row.provider_refund_id}") if row.provider_refund_id else None
        if isinstance(found, RefundResult):
            _compare_refund(ours, found, into)
        else:
            into.findings.append(Finding(
                "missing_theirs", "refund", row.id, row.provider_refund_id,
                f"Billfold's refund of {_money(row.amount_cents, row.currency)} succeeded; "
                + ("the provider has no such refund" if row.provider_refund_id else "it names no provider refund"),
            ))
        done += 1
        progress("comparing", done, total)
    return into


def _look_up_outside(adapter: ProviderAdapter, ours: _Ours, charges: Sequence[ChargeResult],
                     refunds: Sequence[RefundResult]) -> dict[str, ChargeResult | RefundResult | None]:
    """Our window's completed payments and succeeded refunds the provider did not list, fetched by
    their provider ids (a charge created just before the window, say); None: it has none."""
    listed_charges = {c.id for c in charges}
    listed_refunds = {r.id for r in refunds}
    found: dict[str, ChargeResult | RefundResult | None] = {}
    for payment_id in ours.window_payments:
        charge_id = ours.payments[payment_id].provider_payment_id
        if charge_id and charge_id not in listed_charges:
            try:
                found[f"charge:{charge_id}"] = adapter.get_charge(charge_id)
            except ProviderObjectNotFound:
                found[f"charge:{charge_id}"] = None
    for refund_id in ours.window_refunds:
        provider_refund_id = ours.refunds[refund_id].provider_refund_id
        if provider_refund_id and provider_refund_id not in listed_refunds:
            try:
                found[f"refund:{provider_refund_id}"] = adapter.get_refund(provider_refund_id)
            except ProviderObjectNotFound:
                found[f"refund:{provider_refund_id}"] = None
    return found


# Repairing, through the engine


class _Settle(engine.Charges):
    """The engine's Charges move for a reconciliation: a pending payment, or a failed one (the
    engine completes it only on the provider's success), asked about by reading the provider's
    charge that was listed. Unlike ``engine.ask`` it never charges: a payment whose charge is
    found is only recorded."""

    def asks(self, row: Payment) -> bool:
        return row.status in ("pending", "failed")

    def provider(self, row: Payment) -> str | None:
        return row.provider_id


def _read_charge(charge_id: str) -> engine.Call:
    def call(adapter: ProviderAdapter | None, payment: Payment, about: ChargeFor) -> Answer:
        assert adapter is not None
        found = adapter.get_charge(payment.provider_payment_id or charge_id)
        if found.status == ChargeStatus.FAILED:
            return Answer(found, Declined(found.failure_message or "The payment was declined.",
                                          found.failure_code or "generic_decline", charge=found))
        return Answer(found)

    return call


@dataclass
class _SettleRefund(Refunds):
    """The refunds move, asking by the provider's refund that was listed (never refunding)."""

    listed: str = ""

    def ask(self, adapter: ProviderAdapter | None, row: Refund) -> Answer:
        assert adapter is not None
        return Answer(adapter.get_refund(row.provider_refund_id or self.listed))


def _repair(sessions: sessionmaker[Session], security: Security, repair: _Repair) -> Finding:
    def after(session: Session, outcomes: list[Outcome]) -> None:
        [outcome] = outcomes
        audit(session, "payment" if repair.object == "charge" else "refund", repair.ours,
              f"{'payment' if repair.object == 'charge' else 'refund'}.reconciled",
              provider_object_id=repair.theirs, finding=repair.kind, result=str(outcome.result), by=SYSTEM)

    move: engine.Move[Any]
    if repair.object == "charge":
        move = _Settle(_read_charge(repair.theirs), security.settings, SYSTEM)
    else:
        move = _SettleRefund(security.settings, SYSTEM, listed=repair.theirs)
    try:
        [outcome] = engine.run(sessions, security, move, [repair.ours], after=after)
    except BillfoldError as error:  # the provider switched off meanwhile, say
        return Finding(repair.kind, repair.object, repair.ours, repair.theirs,
                       f"{repair.detail}; not repaired: {error.detail}", "repair_failed")
    if outcome.result is Result.UNKNOWN:
        reason = outcome.error.detail if isinstance(outcome.error, BillfoldError) else "the provider did not answer"
        log.warning("reconcile: %s %s not settled: %s", repair.object, repair.ours, reason)
        return Finding(repair.kind, repair.object, repair.ours, repair.theirs,
                       f"{repair.detail}; not repaired: {reason}", "repair_failed")
    log.info("reconcile: %s %s settled on %s: %s", repair.object, repair.ours, repair.theirs, outcome.result)
    return Finding(repair.kind, repair.object, repair.ours, repair.theirs,
                   f"{repair.detail}; settled: now {outcome.result}", "repaired")


# The whole


def reconcile(
    sessions: sessionmaker[Session],
    security: Security,
    provider_id: str,
    since: datetime,
    until: datetime | None = None,
    *,
    repair: bool = True,
    progress: Progress = _quiet,
) -> Report:
    """Compare provider ``provider_id``'s charges and refunds created in [since, until) with ours,
    repair what is safe (unless ``repair`` is False: then each is reported ``repairable``), and
    report the rest. ``until`` defaults to now (the Billfold clock). Raises NotFound for an unknown
    provider, InvalidInput for an empty window, ProviderUnavailable (or ProviderMisconfigured) when
    the provider cannot be read: nothing is changed then."""
    until = clock.ensure_utc(until) if until is not None else clock.now()
    since = clock.ensure_utc(since)
    if until <= since:
        raise InvalidInput(f"the window is empty: --since {since.isoformat()} is not before --until {until.isoformat()}")
    with reading(sessions) as session:
        adapter = provider_config.adapter_for_provider(session, security, provider_id, require_active=False)
    progress("listing", 0, 2)
    charges = adapter.list_charges(since, until)
    progress("listing", 1, 2)
    refunds = adapter.list_refunds(since, until)
    progress("listing", 2, 2)
    with reading(sessions) as session:
        ours = _read_ours(session, provider_id, since, until, charges, refunds)
    outside = _look_up_outside(adapter, ours, charges, refunds)
    compared = _compare(ours, charges, refunds, outside, progress)
    report = Report(provider_id, since, until, dry_run=not repair, charges=len(charges), refunds=len(refunds),
                    agreed=compared.agreed, findings=list(compared.findings))
    if not compared.repairs:
        return report
    if not repair:
        report.findings += [Finding(r.kind, r.object, r.ours, r.theirs, r.detail, "repairable") for r in compared.repairs]
        return report
    # A charge's refunded amount is compared again once its refunds are repaired (below).
    settled = {r.charge_id for r in refunds if r.id in {one.theirs for one in compared.repairs if one.object == "refund"}}
    report.findings = [f for f in report.findings if not (f.kind == "refunded" and f.theirs in settled)]
    for number, one in enumerate(compared.repairs, 1):
        report.findings.append(_repair(sessions, security, one))
        progress("repairing", number, len(compared.repairs))
    # What the repairs left: the repaired rows compared again (a refund settled, say, may leave
    # the charge's refunded amount still different).
    again = _recheck(sessions, provider_id, since, until, charges, refunds, compared.repairs)
    seen = {(f.kind, f.object, f.ours, f.theirs) for f in report.findings}
    report.findings += [f for f in again if (f.kind, f.object, f.ours, f.theirs) not in seen]
    return report


def _recheck(
    sessions: sessionmaker[Session], provider_id: str, since: datetime, until: datetime,
    charges: Sequence[ChargeResult], refunds: Sequence[RefundResult], repairs: Sequence[_Repair],
) -> list[Finding]:
    """The findings that remain about the objects repaired (and the charges of refunds repaired),
    compared again with our rows as they are now; a repair still wanted is reported."""
    repaired = {r.theirs for r in repairs}
    refund_charges = {r.charge_id for r in refunds if r.id in repaired}
    again_charges = [c for c in charges if c.id in repaired or c.id in refund_charges]
    again_refunds = [r for r in refunds if r.id in repaired]
    with reading(sessions) as session:
        ours = _read_ours(session, provider_id, since, until, again_charges, again_refunds)
    ours.window_payments, ours.window_refunds = [], []
    compared = _compare(ours, again_charges, again_refunds, {}, _quiet)
    return compared.findings + [Finding(r.kind, r.object, r.ours, r.theirs, r.detail + "; still after the repair")
                                for r in compared.repairs]
