"""Outgoing email, through a durable outbox.

A service ``queue``s an email on its session: that writes a row to ``mail_outbox`` in the same
transaction as the change that causes it, so a rolled-back request sends nothing and a committed
one cannot lose its mail. Rows are delivered two ways:

- **the worker's sweep** ``mail.deliver`` claims due rows (``FOR UPDATE SKIP LOCKED`` where the
  database has it), leases them for ``LEASE``, sends them with no transaction open, and marks each
  ``sent``; a message the server refuses is tried again with backoff (``BACKOFF``), and after
  ``MAX_ATTEMPTS`` it is ``failed`` (kept, with its last error, for the operator);
- **right after the commit**, in a process whose sessions ``deliver_after_commit`` (the API): the
  rows are written already leased to that process, which sends them as soon as the request's
  transaction has ended and its connection gone back to the pool. Should it crash or the server
  refuse, the lease runs out and the worker takes the row up.

Delivery is at least once: nothing is lost; a message is sent twice only if a process dies after
the server took it and before the row was marked. Each message keeps one Message-ID (from its
row), so a receiving server can tell a repeat.

Two mailers: SMTP when ``BILLFOLD_SMTP_HOST`` is set, otherwise a folder of ``.eml`` files
(``data_dir/mail``, one file per row, so a repeat overwrites it) that the demo, the tests and a
developer can read.
"""

from __future__ import annotations

import logging
import quopri
import re
import smtplib
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from billfold.kit import clock
from billfold.kit.db import insert_at_commit, one_line, transaction
from billfold.kit.ids import new_id
from billfold.kit.sweeps import RETRY_BACKOFF, Context, backoff, claim_batch, sweep
from billfold.models.mail import OutboxEmail

if TYPE_CHECKING:
    from billfold.config import Settings

log = logging.getLogger("billfold.mail")

LEASE = timedelta(minutes=10)
"""How long a row taken for sending is left to the process that took it."""
BACKOFF = RETRY_BACKOFF
"""The wait after each failed attempt (the sweeps' one schedule, ``kit.sweeps.backoff``)."""
MAX_ATTEMPTS = 12
"""Attempts before a message is given up (about a day and a half of trying)."""
BATCH = 20

_DELIVERS = "billfold_mail_delivers"  # a session of a process that sends right after commit
_QUEUED = "billfold_mail_queued"  # rows written in the open transaction
_COMMITTED = "billfold_mail_committed"  # rows whose transaction committed, to send when it ends
_PUBLIC_URL = "billfold_public_url"


@dataclass(frozen=True)
class Email:
    to: str
    subject: str
    body: str
    id: str | None = None  # the outbox row's: Message-ID and file name
    date: datetime | None = None  # when it was written (the change that caused it)


class Mailer(Protocol):
    def send(self, email: Email) -> None: ...


class PermanentFailure(Exception):
    """The message itself cannot be sent (a header a server would never take): no retry helps."""


def _message(email: Email, sender: str) -> EmailMessage:
    message = EmailMessage()
    try:
        message["From"] = sender
        message["To"] = email.to
        message["Subject"] = email.subject
    except ValueError as error:  # CR/LF in a header
        raise PermanentFailure(str(error)) from error
    message["Date"] = format_datetime(email.date or clock.now())
    message["Message-ID"] = f"<{email.id or new_id('mail')}@billfold.invalid>"
    message.set_content(email.body)
    return message


_PLAIN_HEADER = re.compile(r"[ -~]*")  # printable ASCII: written as it is, with no encoding or folding


def _message_bytes(email: Email, sender: str) -> bytes:
    """``bytes(_message(email, sender))``'s message, written directly when every header is short
    printable ASCII (a receipt's, a sign-in's): the email package's header parsing cost more CPU
    than the rest of a sale's mail (docs/performance.md). Anything else goes through ``_message``."""
    headers = {
        "From": sender, "To": email.to, "Subject": email.subject, "Date": format_datetime(email.date or clock.now()),
        "Message-ID": f"<{email.id or new_id('mail')}@billfold.invalid>",
    }
    if not all(len(name) + 2 + len(value) <= 78 and _PLAIN_HEADER.fullmatch(value) for name, value in headers.items()):
        return bytes(_message(replace(email, date=email.date or clock.now()), sender))
    lines = email.body.encode().splitlines()  # as the email package does: \n, \r\n and \r end a line
    encoded = b"".join(line + b"\n" for line in lines) or b"\n"
    if email.body.isascii() and all(len(line) <= 78 for line in lines):
        encoding = "7bit"
    else:
        encoding, encoded = "quoted-printable", quopri.encodestring(encoded)
    head = "".join(f"{name}: {value}\n" for name, value in headers.items())
    head += f'Content-Type: text/plain; charset="utf-8"\nContent-Transfer-Encoding: {encoding}\nMIME-Version: 1.0\n\n'
    return head.encode() + encoded


class FolderMailer:
    """Writes each email as an .eml file named after its outbox row, so they sort in the order
    written and sending one twice leaves one file."""

    def __init__(self, folder: Path, sender: str) -> None:
        self.folder = folder
        self.sender = sender

    def send(self, email: Email) -> None:
        if not self.folder.is_dir():
            self.folder.mkdir(parents=True, exist_ok=True)
        name = email.id or new_id("mail")
        temporary = self.folder / f".{name}.tmp"
        temporary.write_bytes(_message_bytes(email, self.sender))
        temporary.replace(self.folder / f"{name}.eml")  # a reader never sees half a message


class SmtpMailer:
    """Sends through an SMTP server; with ``starttls`` the connection is upgraded to TLS and the
    server's certificate is verified (against the system's CAs unless ``tls_context`` says
    otherwise) before the password is sent."""

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        username: str | None,
        password: str | None,
        starttls: bool,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.username, self.password, self.starttls = username, password, starttls
        self.tls_context = tls_context

    def send(self, email: Email) -> None:
        message = _message(email, self.sender)
        with smtplib.SMTP(self.host, self.port, timeout=30) as smtp:
            if self.starttls:
                smtp.starttls(context=self.tls_context or ssl.create_default_context())
            if self.username:
                smtp.login(self.username, self.password or "")
            smtp.send_message(message)


def mailer_for(settings: Settings, *, smtp: bool = True) -> Mailer:
    """SMTP when configured (and ``smtp``), otherwise .eml files in data_dir/mail."""
    if smtp and settings.smtp_host:
        return SmtpMailer(
            settings.smtp_host, settings.smtp_port, settings.mail_from, settings.smtp_username,
            settings.smtp_password.get_secret_value() if settings.smtp_password else None, settings.smtp_starttls,
        )
    return FolderMailer(settings.data_dir / "mail", settings.mail_from)


# --- writing -------------------------------------------------------------------------------------


def configure(sessions: sessionmaker[Session], settings: Settings) -> None:
    """Let code that writes mail on ``sessions`` but is given no settings (a reaction to a paid
    order) link to this installation's ``public_url``."""
    sessions.configure(info={**(sessions.kw.get("info") or {}), _PUBLIC_URL: settings.public_url.rstrip("/")})


def public_url(session: Session) -> str:
    """Where people reach this installation, for links in mail written on ``session``."""
    url = session.info.get(_PUBLIC_URL)
    if url:
        return str(url)
    from billfold.config import get_settings

    return get_settings().public_url.rstrip("/")


def queue(session: Session, email: Email) -> str:
    """Write ``email`` to the outbox in ``session``'s transaction; it is sent once that commits.
    Returns the row's id."""
    delivers = bool(session.info.get(_DELIVERS))
    now = clock.now()
    mail_id = new_id("mail")
    insert_at_commit(session, OutboxEmail, {  # a plain row, written with the transaction's others at its commit
        "id": mail_id, "to_address": email.to, "subject": email.subject, "body": email.body, "status": "pending",
        "attempts": 0, "last_error": None, "sent_at": None, "created_at": now, "updated_at": now,
        # A process that sends right after commit holds the row for a lease; the worker's own mail is due at once.
        "next_attempt_at": now + LEASE if delivers else now,
    })
    if delivers:
        session.info.setdefault(_QUEUED, []).append(_Leased(mail_id, email.to, email.subject, email.body, now))
    return mail_id


# --- sending ---------------------------------------------------------------------------------------


def _email(row: OutboxEmail | _Leased) -> Email:
    return Email(to=row.to_address, subject=row.subject, body=row.body, id=row.id, date=row.created_at)


def _send(mailer: Mailer, row: OutboxEmail | _Leased) -> str | None:
    """Send one row's message; None when it went, else why not (logged, never the body, which
    may carry a token)."""
    try:
        mailer.send(_email(row))
    except PermanentFailure as error:
        log.error("cannot send %r to %s, giving up: %s", row.subject, row.to_address, error)
        return f"permanent: {error}"
    except Exception as error:  # down, refused, timed out, or a bug: tried again later, never raised
        log.error("could not send %r to %s: %s", row.subject, row.to_address, one_line(error) or type(error).__name__)
        return one_line(error) or type(error).__name__
    return None


def _record(session: Session, rows: Sequence[OutboxEmail | _Leased], outcomes: dict[str, str | None]) -> None:
    """Mark each row tried sent, or due again after its backoff (failed for good after the last
    attempt); a row not tried goes back to being due now, its attempt not counted. Rows given the
    same values (those of a batch sent) are marked in one statement."""
    now = clock.now()
    marks: dict[tuple[tuple[str, Any], ...], list[str]] = {}
    for row in rows:
        values: dict[str, Any]
        if row.id not in outcomes:
            values = {"attempts": max(row.attempts - 1, 0), "next_attempt_at": now}
        elif (error := outcomes[row.id]) is None:
            values = {"attempts": row.attempts, "status": "sent", "sent_at": now, "next_attempt_at": None, "last_error": None}
        elif error.startswith("permanent: ") or row.attempts >= MAX_ATTEMPTS:
            values = {"attempts": row.attempts, "status": "failed", "next_attempt_at": None, "last_error": error[:2000]}
        else:
            values = {"attempts": row.attempts, "next_attempt_at": now + backoff(row.attempts), "last_error": error[:2000]}
        marks.setdefault(tuple(values.items()), []).append(row.id)
    for values, ids in marks.items():
        statement = _mark(tuple(name for name, _ in values))
        session.execute(statement, {"ids": ids, "set_updated_at": now, **{f"set_{name}": value for name, value in values}})


@cache
def _mark(names: tuple[str, ...]) -> Any:
    """The UPDATE that marks pending rows with ``names``, built once for each kind of mark."""
    columns = OutboxEmail.__table__.c
    return (
        sa.update(OutboxEmail.__table__)
        .where(columns.id.in_(sa.bindparam("ids", expanding=True)), columns.status == "pending")
        .values({name: sa.bindparam(f"set_{name}", type_=columns[name].type) for name in ("updated_at", *names)})
    )


def deliver_due(sessions: sessionmaker[Session], mailer: Mailer, *, limit: int = BATCH) -> int:
    """Claim up to ``limit`` due messages, send them, record each outcome; how many were tried."""
    with transaction(sessions) as session:
        now = clock.now()
        rows = claim_batch(
            session,
            sa.select(OutboxEmail)
            .where(OutboxEmail.status == "pending", OutboxEmail.next_attempt_at <= now)
            .order_by(OutboxEmail.next_attempt_at, OutboxEmail.id),
            limit,
        )
        for row in rows:  # leased: another worker passes over them until the lease runs out
            row.attempts += 1
            row.next_attempt_at = now + LEASE
    if not rows:
        return 0
    started, outcomes = time.monotonic(), dict[str, str | None]()
    for row in rows:
        if time.monotonic() - started > LEASE.total_seconds() / 2:
            break  # a slow server: leave the rest to their lease rather than risk sending twice
        outcomes[row.id] = _send(mailer, row)
    with transaction(sessions) as session:
        _record(session, rows, outcomes)
    return len(outcomes)


@sweep("mail.deliver", every=timedelta(seconds=30))
def deliver_mail(context: Context) -> int:
    """The outbox's due messages, sent with retries and backoff."""
    return deliver_due(context.sessions, mailer_for(context.settings))


def deliver_after_commit(sessions: sessionmaker[Session], mailer: Mailer) -> None:
    """Make every session from ``sessions`` send the mail it queued as soon as its transaction
    has committed and ended (the API: low latency). The outbox row stays the truth: a failure
    here leaves it to the worker."""
    sessions.configure(info={**(sessions.kw.get("info") or {}), _DELIVERS: True})

    @event.listens_for(sessions, "after_commit")
    def _committed(session: Session) -> None:
        if not session.in_nested_transaction():  # a savepoint's release is not the commit
            session.info.setdefault(_COMMITTED, []).extend(session.info.pop(_QUEUED, []))

    @event.listens_for(sessions, "after_transaction_end")
    def _ended(session: Session, ended: SessionTransaction) -> None:
        if ended.parent is not None:
            return
        session.info.pop(_QUEUED, None)  # rolled back: the rows are gone too
        committed = session.info.pop(_COMMITTED, None)
        if committed:
            _deliver_now(sessions, mailer, committed)


@dataclass
class _Leased:
    """A row this process wrote leased to itself, as it was committed: sent from memory, with no
    read of the outbox."""

    id: str
    to_address: str
    subject: str
    body: str
    created_at: datetime
    attempts: int = 1


def _deliver_now(sessions: sessionmaker[Session], mailer: Mailer, rows: list[_Leased]) -> None:
    # The request has committed: nothing here may turn it into an error. The rows are leased to
    # this process (next_attempt_at = now + LEASE), so no worker sends them meanwhile.
    try:
        outcomes = {row.id: _send(mailer, row) for row in rows}
        with transaction(sessions) as session:
            _record(session, rows, outcomes)
    except Exception as error:  # e.g. the database went away: the worker sends them after the lease
        log.error("mail %s left to the worker: %s", ", ".join(row.id for row in rows), one_line(error))
