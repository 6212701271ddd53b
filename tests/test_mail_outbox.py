"""Mail that is never lost: every email is written to the outbox (``mail_outbox``) with the change
that causes it and delivered by the worker (the ``mail.deliver`` sweep), or by the API right after
its commit, with retries. The worker here is the real one (``worker.make_context`` and
``worker.catch_up``, as ``billfold worker --catch-up`` and ``billfold clock advance`` run it), with
none of the after-commit hooks the API has; the shop is the real app over HTTP. Receipts and
dunning mails name the plan and the amount and link to the shop's public URL."""

from __future__ import annotations

import email
import email.policy
import os
import signal
import smtplib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from sqlalchemy.engine import Engine

from billfold import worker
from billfold.config import Settings
from billfold.kit import clock
from billfold import mailer
from billfold.kit.db import session_factory, transaction
from billfold.kit.sweeps import Context
from billfold.kit.money import Money
from billfold.models import OutboxEmail, Payment, Product, Subscription, User
from tests.accounts import PASSWORD, Api
from tests.cli import BILLFOLD
from tests.server import free_port, serving
from tests.subscribing import Customer, Shop
from tests.test_checkout import HOME, checkout, order
from tests.test_checkout import product as one_time_product

PUBLIC_URL = "https://pay.shop.example"
DAY = timedelta(days=1)
MINUTE = timedelta(minutes=1)


def worker_context(engine: Engine, data_dir: Path, **settings: Any) -> Context:
    """The context ``billfold worker`` builds: its own sessions, no after-commit delivery."""
    configured = Settings(
        database_url=engine.url.render_as_string(hide_password=False), data_dir=data_dir, public_url=PUBLIC_URL, **settings
    )
    return worker.make_context(configured, engine)


def catch_up(context: Context) -> dict[str, int]:
    worker.load_sweeps()
    return worker.catch_up(context)


def outbox(engine: Engine, address: str) -> list[OutboxEmail]:
    with session_factory(engine)() as session:
        return list(session.scalars(sa.select(OutboxEmail).where(OutboxEmail.to_address == address).order_by(OutboxEmail.id)))


def body(message: email.message.EmailMessage) -> str:
    return message.get_content()


@pytest.fixture
def shop(engine: Engine, tmp_path: Path) -> Iterator[Shop]:
    """The app over HTTP on a frozen clock, its public URL a proxy's, and the real worker's context."""
    start = clock.SystemClock().now().replace(microsecond=0)
    with clock.using(clock.FrozenClock(start)), serving(
        engine, tmp_path, sign_in_attempts_per_address=1000, session_days=3650, public_url=PUBLIC_URL
    ) as url:
        yield Shop(Api(url, tmp_path), engine, worker_context(engine, tmp_path))
        with transaction(session_factory(engine)) as session:  # leave nothing due for the next test
            session.execute(sa.update(Payment).where(Payment.subscription_id.is_not(None), Payment.status == "pending").values(status="failed"))
            session.execute(sa.update(Subscription).where(Subscription.status != "cancelled").values(status="cancelled"))


def cardless(shop: Shop, label: str) -> Customer:
    """A customer with an address and no saved card."""
    from billfold.accounts.sessions import open_session
    from billfold.kit.ids import new_id

    with transaction(session_factory(shop.engine)) as session:
        user = User(name=label.title(), last_name="Tester", email=f"{label}.{new_id('p').lower()}@example.com",
                    user_type="individual", is_verified=True)
        session.add(user)
        session.flush()
        _, bearer = open_session(session, user, transport="bearer", address=None, user_agent="tests", days=3650)
        user_id, address = user.id, user.email
    with shop.client(bearer) as client:
        assert client.post("/v1/me/addresses", json=HOME).status_code == 201
    return Customer(user_id, address, bearer, "")


def plan_named(shop: Shop, product_id: str) -> str:
    with session_factory(shop.engine)() as session:
        return session.get(Product, product_id).name


def only(messages: list[email.message.EmailMessage], subject: str) -> email.message.EmailMessage:
    found = [m for m in messages if m["Subject"] == subject]
    assert len(found) == 1, [m["Subject"] for m in messages]
    return found[0]


def assert_links_on_the_public_url(text: str) -> None:
    assert f"{PUBLIC_URL}/v1/" in text
    assert "127.0.0.1" not in text and ":8000" not in text


def test_the_worker_sends_the_trial_end_receipt_dunning_and_trial_cancelled_mails(shop: Shop) -> None:
    trial = shop.product(1250, trial_days=14)
    plan = plan_named(shop, trial)
    ada = shop.customer("ada")  # a good card: charged at the trial's end
    bob = shop.customer("bob", token="tok_sandbox_insufficient_funds")  # declined at the trial's end
    cy = cardless(shop, "cy")  # no card: the trial ends in a cancellation
    for someone in (ada, bob, cy):
        assert shop.subscribe(someone, trial)["status"] == "trialing"

    clock.get_clock().advance(14 * DAY + MINUTE)
    done = catch_up(shop.context)
    assert done["subscriptions.trials"] >= 3 and done["mail.deliver"] >= 3

    receipt = only(shop.api.mails_to(ada.email), f"Your receipt for {plan}")
    assert "$12.50" in body(receipt) and plan in body(receipt)
    assert_links_on_the_public_url(body(receipt))
    declined = only(shop.api.mails_to(bob.email), "Your payment of $12.50 did not go through")
    assert plan in body(declined) and "insufficient funds" in body(declined)
    assert_links_on_the_public_url(body(declined))
    ended = only(shop.api.mails_to(cy.email), "Your trial has ended")
    assert plan in body(ended) and "sub_" not in body(ended).split(PUBLIC_URL)[0], "the plan by name, not an id"
    for someone in (ada, bob, cy):
        assert [row.status for row in outbox(shop.engine, someone.email)] == ["sent"]

    clock.get_clock().advance(3 * DAY)  # bob's first retry, declined again: one more mail, the same once
    assert catch_up(shop.context)["subscriptions.dunning"] >= 1
    assert len([m for m in shop.api.mails_to(bob.email) if m["Subject"] == "Your payment of $12.50 did not go through"]) == 2
    assert len(shop.api.mails_to(ada.email)) == 1 and len(shop.api.mails_to(cy.email)) == 1, "nothing sent twice"


def test_receipts_for_a_checkout_and_for_a_renewal_name_what_was_bought_and_the_amount(shop: Shop) -> None:
    buyer = shop.customer("buyer")
    mug = one_time_product(shop.engine, 1999)
    made = order(shop.api, buyer.token, (mug, 2))
    with shop.client(buyer.token) as client:
        assert checkout(client, made["id"], payment_method_id=buyer.card).status_code == 200
    receipt = only(shop.api.mails_to(buyer.email), f"Your receipt for order {made['order_number']}")
    text = body(receipt)
    mug_name = plan_named(shop, mug)
    assert f"2 × {mug_name}: $39.98" in text and f"Total: {Money(made['total_cents'], 'USD').format()}" in text
    assert_links_on_the_public_url(text)
    assert f"{PUBLIC_URL}/v1/invoices/" in text and text.count("/pdf") == 1

    monthly = shop.product(4200)
    plan = plan_named(shop, monthly)
    subscribed = shop.subscribe(buyer, monthly)
    assert subscribed["status"] == "active"
    first = only(shop.api.mails_to(buyer.email), f"Your receipt for {plan}")
    assert "$42.00" in body(first)

    clock.get_clock().advance(31 * DAY)  # the period ends: the worker renews, and sends the receipt
    assert catch_up(shop.context)["subscriptions.renew"] >= 1
    receipts = [m for m in shop.api.mails_to(buyer.email) if m["Subject"] == f"Your receipt for {plan}"]
    assert len(receipts) == 2
    renewal = body(receipts[-1])
    assert "We charged $42.00 for the renewal of " + plan in renewal
    assert_links_on_the_public_url(renewal)


# --- SMTP that refuses, and a crash ------------------------------------------------------------------


@dataclass
class Moody:
    """An SMTP server that refuses every message (451, try later) until told to take them."""

    refusing: bool = True
    received: list[email.message.EmailMessage] | None = None

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001, N802 (aiosmtpd's hook)
        if self.refusing:
            return "451 4.3.0 Try again later"
        assert self.received is not None
        self.received.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"


@pytest.fixture
def moody() -> Iterator[tuple[Moody, int]]:
    server, port = Moody(received=[]), free_port()
    controller = Controller(server, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield server, port
    finally:
        controller.stop()


def test_a_refusing_mail_server_leaves_the_mail_in_the_outbox_and_a_later_round_sends_it_once(
    engine: Engine, tmp_path: Path, moody: tuple[Moody, int], address: str
) -> None:
    server, port = moody
    smtp = {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_starttls": False}
    with clock.using(clock.FrozenClock(clock.SystemClock().now().replace(microsecond=0))) as frozen:
        with serving(engine, tmp_path, **smtp) as url:
            api = Api(url, tmp_path)
            with api.client() as client:
                registered = client.post(
                    "/v1/auth/register", json={"email": address, "password": PASSWORD, "name": "Ada", "last_name": "Lovelace"}
                )
            assert registered.status_code == 202, "the request stands"
        [row] = outbox(engine, address)
        assert (row.status, row.attempts, row.sent_at) == ("pending", 1, None) and "451" in (row.last_error or "")
        assert row.next_attempt_at == frozen.now() + mailer.BACKOFF[0]
        assert [m for m in server.received if m["To"] == address] == []

        context = worker_context(engine, tmp_path, **smtp)
        catch_up(context)
        assert [m for m in server.received if m["To"] == address] == [], "not before its backoff"
        frozen.advance(mailer.BACKOFF[0])
        catch_up(context)  # still refused: the second attempt, a longer wait
        [row] = outbox(engine, address)
        assert (row.status, row.attempts, row.next_attempt_at) == ("pending", 2, frozen.now() + mailer.BACKOFF[1])

        server.refusing = False
        frozen.advance(mailer.BACKOFF[1])
        catch_up(context)
        [message] = [m for m in server.received if m["To"] == address]
        assert message["Subject"] == "Confirm your email address"
        [row] = outbox(engine, address)
        assert (row.status, row.attempts, row.sent_at) == ("sent", 3, frozen.now())

        frozen.advance(DAY)
        catch_up(context)
        assert len([m for m in server.received if m["To"] == address]) == 1, "sent once"


@pytest.fixture
def silent_smtp() -> Iterator[int]:
    """A port that takes connections and never says a word: a mail server hanging mid-greeting."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in held:
            connection.close()
        listener.close()


@pytest.mark.slow
def test_a_server_killed_after_the_commit_and_before_sending_loses_no_mail(
    engine: Engine, tmp_path: Path, silent_smtp: int, address: str
) -> None:
    import httpx

    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}
    environment.update(
        BILLFOLD_DATABASE_URL=engine.url.render_as_string(hide_password=False), BILLFOLD_DATA_DIR=str(tmp_path / "data"),
        BILLFOLD_PORT=str(port), BILLFOLD_WORKER="off", BILLFOLD_SMTP_HOST="127.0.0.1",
        BILLFOLD_SMTP_PORT=str(silent_smtp), BILLFOLD_SMTP_STARTTLS="false", BILLFOLD_PUBLIC_URL=PUBLIC_URL,
    )
    server = subprocess.Popen([BILLFOLD, "serve", "--no-access-log"], env=environment, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and server.poll() is None, "the server did not start"
                time.sleep(0.1)

        def register() -> None:
            try:
                httpx.post(f"http://127.0.0.1:{port}/v1/auth/register", timeout=60,
                           json={"email": address, "password": PASSWORD, "name": "Ada", "last_name": "Lovelace"})
            except httpx.HTTPError:
                pass  # the server dies under it

        request = threading.Thread(target=register, daemon=True)
        request.start()
        deadline = time.monotonic() + 30
        while not outbox(engine, address):  # committed; the server now waits on the mail server
            assert time.monotonic() < deadline, "the registration never committed"
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
    request.join(timeout=30)

    [row] = outbox(engine, address)
    assert (row.status, row.sent_at) == ("pending", None), "written with the account, never sent"
    context = worker_context(engine, tmp_path / "worker")  # the worker's mail goes to its folder
    catch_up(context)
    folder = Api("", tmp_path / "worker")
    assert folder.mails_to(address) == [], "the dead server's lease still holds"
    with clock.using(clock.FrozenClock(row.next_attempt_at)):
        catch_up(context)
    [message] = folder.mails_to(address)
    assert message["Subject"] == "Confirm your email address" and f"{PUBLIC_URL}/v1/auth/verify-email" in body(message)
    assert [r.status for r in outbox(engine, address)] == ["sent"]


def test_erasing_a_customer_deletes_the_mail_written_to_them(api: Api, engine: Engine, address: str) -> None:
    from billfold.accounts.erasure import erase_customer

    api.sign_up(address)
    assert len(outbox(engine, address)) == 1 and len(api.mails_to(address)) == 1
    with session_factory(engine)() as session:
        user_id = session.scalar(sa.select(User.id).where(User.email == address))
    with transaction(session_factory(engine)) as session:
        erase_customer(session, user_id)
    assert outbox(engine, address) == [], "the outbox names the person no more"


class Counting:
    """A mailer that counts what it is given, slowly enough for two workers to overlap."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.lock = threading.Lock()

    def send(self, message: mailer.Email) -> None:
        time.sleep(0.01)
        with self.lock:
            self.sent.append(message.to)


@pytest.mark.every_database
def test_two_workers_delivering_at_once_send_each_message_once(engine: Engine, address: str) -> None:
    sessions = session_factory(engine)
    with transaction(sessions) as session:
        for n in range(40):
            mailer.queue(session, mailer.Email(f"{n}.{address}", "Your receipt", "Thank you."))
    counting = Counting()
    errors: list[BaseException] = []

    def deliver() -> None:
        try:
            while mailer.deliver_due(sessions, counting, limit=5):
                pass
        except BaseException as error:  # noqa: BLE001  (reported below)
            errors.append(error)

    workers = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=120)
    assert errors == []
    mine = sorted(to for to in counting.sent if to.endswith(f".{address}"))
    assert mine == sorted(f"{n}.{address}" for n in range(40)), "each once"
    with sessions() as session:
        statuses = session.scalars(sa.select(OutboxEmail.status).where(OutboxEmail.to_address.like(f"%.{address}"))).all()
    assert statuses == ["sent"] * 40


class Refusing:
    """A mail server that takes every message but those to one address."""

    def __init__(self, refused: str) -> None:
        self.refused, self.sent = refused, list[str]()

    def send(self, message: mailer.Email) -> None:
        if message.to == self.refused:
            raise smtplib.SMTPRecipientsRefused({message.to: (450, b"mailbox busy")})
        self.sent.append(message.to)


@pytest.mark.every_database
def test_a_batch_is_marked_in_a_statement_for_the_sent_and_one_for_the_refused(engine: Engine, address: str) -> None:
    sessions = session_factory(engine)
    with transaction(sessions) as session:
        for n in range(mailer.BATCH):
            mailer.queue(session, mailer.Email(f"{n}.{address}", "Your receipt", "Thank you."))
    marks: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("UPDATE mail_outbox") and "mail_outbox.id IN" in statement:  # the marks, not the lease
            marks.append(statement)

    refusing = Refusing(f"7.{address}")
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        while mailer.deliver_due(sessions, refusing, limit=mailer.BATCH):
            if len(refusing.sent) == mailer.BATCH - 1:
                break
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    with sessions() as session:
        found = dict(session.execute(
            sa.select(OutboxEmail.to_address, OutboxEmail.status).where(OutboxEmail.to_address.like(f"%.{address}"))
        ).all())
    assert found == {f"{n}.{address}": "pending" if n == 7 else "sent" for n in range(mailer.BATCH)}
    assert sorted(refusing.sent) == sorted(f"{n}.{address}" for n in range(mailer.BATCH) if n != 7)
    assert len(marks) == 2, marks


@pytest.mark.parametrize("subject, to, body", [
    ("Your receipt for order ORD-2026-000123", "ada@example.com", "Hello Ada,\n\nWe charged €12.00 — thank you.\n"),
    ("Reset your Billfold password", "ada@example.com", "a\r\nb\rc\n" + "x" * 200 + "\n=3D and = signs \n"),
    ("Zoë's receipt", "Zoë <zoe@example.com>", ""),
    ("A subject long enough to be folded over more than one line of a message header, " * 2, "ada@example.com", "short"),
])
def test_the_folder_mailer_writes_what_the_email_package_would(tmp_path: Path, subject: str, to: str, body: str) -> None:
    """The .eml a developer (or a test) reads: the same headers and text as the email package's own
    message, also where the folder mailer writes it without that package (short ASCII headers)."""
    sent = mailer.Email(to, subject, body, "mail_01JD5Z3Q8V6W7X8Y9Z0ABCDEFG", clock.now())
    mailer.FolderMailer(tmp_path, "Shop <shop@example.com>").send(sent)
    written = email.message_from_bytes((tmp_path / f"{sent.id}.eml").read_bytes(), policy=email.policy.default)
    expected = email.message_from_bytes(bytes(mailer._message(sent, "Shop <shop@example.com>")), policy=email.policy.default)
    for header in ("From", "To", "Subject", "Date", "Message-ID", "Content-Type"):
        assert str(written[header]) == str(expected[header]), header
    assert written.get_content() == expected.get_content()
    assert written["Subject"] == subject and written["To"] == to


@pytest.mark.parametrize("header", ["subject", "to"])
def test_a_line_break_in_a_header_is_refused_for_good(tmp_path: Path, header: str) -> None:
    fields = {"to": "ada@example.com", "subject": "Receipt", header: "Receipt\r\nBcc: eve@example.com"}
    with pytest.raises(mailer.PermanentFailure):
        mailer.FolderMailer(tmp_path, "Shop <shop@example.com>").send(mailer.Email(fields["to"], fields["subject"], "body"))
    assert not list(tmp_path.glob("*.eml"))
