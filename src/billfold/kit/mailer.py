"""Outgoing email. Services queue messages on their session (``queue``); they go out only after the
transaction commits and are dropped if it rolls back, so a refused request sends nothing.

Two mailers: SMTP when ``BILLFOLD_SMTP_HOST`` is set, otherwise a folder of ``.eml`` files
(``data_dir/mail``) that the demo, the tests and a developer can read.

A message that cannot be sent after the commit is logged and dropped; the request that queued it
has already succeeded. (A durable outbox with retries comes with the worker.)
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Protocol

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from billfold.kit import clock
from billfold.kit.ids import new_id

_OUTBOX = "billfold_outbox"
log = logging.getLogger("billfold.mail")


@dataclass(frozen=True)
class Email:
    to: str
    subject: str
    body: str


class Mailer(Protocol):
    def send(self, email: Email) -> None: ...


def _message(email: Email, sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = email.to
    message["Subject"] = email.subject
    message["Date"] = format_datetime(clock.now())
    message["Message-ID"] = make_msgid(domain="billfold.invalid")
    message.set_content(email.body)
    return message


class FolderMailer:
    """Writes each email as an .eml file, named so that they sort in the order sent."""

    def __init__(self, folder: Path, sender: str) -> None:
        self.folder = folder
        self.sender = sender

    def send(self, email: Email) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{new_id('mail')}.eml").write_bytes(bytes(_message(email, self.sender)))


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
        with smtplib.SMTP(self.host, self.port, timeout=30) as smtp:
            if self.starttls:
                smtp.starttls(context=self.tls_context or ssl.create_default_context())
            if self.username:
                smtp.login(self.username, self.password or "")
            smtp.send_message(_message(email, self.sender))


def queue(session: Session, email: Email) -> None:
    """Send ``email`` once ``session``'s transaction commits."""
    session.info.setdefault(_OUTBOX, []).append(email)


def deliver_after_commit(sessions: sessionmaker[Session], mailer: Mailer) -> None:
    """Make every session from ``sessions`` send its queued email after it commits."""

    @event.listens_for(sessions, "after_commit")
    def _send(session: Session) -> None:
        # The transaction has committed: a mail server that fails must not turn the request into
        # an error. The failure is logged (never the body, which may carry a token).
        for email in session.info.pop(_OUTBOX, []):
            try:
                mailer.send(email)
            except (OSError, smtplib.SMTPException) as error:
                log.error("could not send %r to %s: %s", email.subject, email.to, error)

    @event.listens_for(sessions, "after_rollback")
    def _drop(session: Session) -> None:
        session.info.pop(_OUTBOX, None)
