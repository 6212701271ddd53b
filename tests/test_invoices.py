"""Invoices over real HTTP on each database: a paid order gets exactly one paid invoice with its
lines and a gapless number; who sees which invoices; the state machine through the admin
endpoints; the PDF document; numbering under concurrent transactions."""

from __future__ import annotations

import io
import re
import threading
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from pypdf import PdfReader
from sqlalchemy.engine import Engine

from billfold.invoices import service
from billfold.invoices.service import LineIn, issue_invoice
from billfold.kit import clock
from billfold.kit.db import session_factory, transaction
from billfold.kit.money import Money
from billfold.states import IllegalTransition
from billfold.models import Invoice, Order, PaymentEvent, WebhookDelivery, WebhookEndpoint
from tests import factories as make
from tests.accounts import Api
from tests.test_checkout import HOME, checkout, customer, order, product
from tests.test_organizations import add_member, assert_problem, create_organization, person

NUMBER = re.compile(r"^INV-\d{4}-\d{6}$")


def pdf_text(content: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(content)).pages)


def invoice_events(engine: Engine, invoice_id: str) -> list[str]:
    with session_factory(engine)() as session:
        return list(
            session.scalars(
                sa.select(PaymentEvent.event_type).where(PaymentEvent.entity_id == invoice_id).order_by(PaymentEvent.id)
            )
        )


def open_invoice(engine: Engine, user_id: str | None = None, organization_id: str | None = None, **extra: object) -> str:
    with transaction(session_factory(engine)) as session:
        made = issue_invoice(
            session, currency="USD", user_id=user_id, organization_id=organization_id, due_in=timedelta(days=14),
            lines=[LineIn("Consulting, November", 12000, quantity=3), LineIn("Goodwill credit", -2000, kind="credit")],
            **extra,  # type: ignore[arg-type]
        )
        return made.id


def test_paying_an_order_issues_one_paid_invoice_with_its_lines(api: Api, engine: Engine, admin_token: str) -> None:
    ada = customer(api, engine)
    book, pen = product(engine, 1999, name="Difference Engine manual"), product(engine, 350, name="Fountain pen")
    made = order(api, ada.token, (book, 2), (pen, 3))
    with api.client(ada.token) as client:
        assert client.get("/v1/invoices", params={"order_id": made["id"]}).json()["data"] == [], "unpaid: no invoice"
        paid = checkout(client, made["id"])
        assert paid.status_code == 200, paid.text
        assert_problem(checkout(client, made["id"]), 409, "order_not_payable")
        found = client.get("/v1/invoices", params={"order_id": made["id"]}).json()
    [invoice] = found["data"]
    assert NUMBER.match(invoice["invoice_number"]), invoice["invoice_number"]
    assert invoice["status"] == "paid" and invoice["paid_date"] and invoice["user_id"] == ada.id
    assert (invoice["amount_cents"], invoice["discount_cents"], invoice["tax_cents"], invoice["total_cents"]) == (5048, 0, 1010, 6058)
    assert invoice["currency"] == "USD" and invoice["provider_id"] == "sandbox"
    assert invoice["billing_address_id"] == made["billing_address"]["id"]
    assert [(l["position"], l["kind"], l["description"], l["quantity"], l["unit_amount_cents"], l["amount_cents"], l["product_id"]) for l in invoice["lines"]] == [
        (1, "item", "Difference Engine manual", 2, 1999, 3998, book),
        (2, "item", "Fountain pen", 3, 350, 1050, pen),
    ]
    assert invoice_events(engine, invoice["id"]) == ["invoice.draft", "invoice.open", "invoice.paid"]

    with api.client(ada.token) as client:
        one = client.get(f"/v1/invoices/{invoice['id']}")
        assert one.status_code == 200 and one.json() == invoice
        document = client.get(invoice["pdf_url"])
    assert document.status_code == 200
    assert document.headers["content-type"] == "application/pdf"
    assert document.headers["content-disposition"] == f'attachment; filename="{invoice["invoice_number"]}.pdf"'
    text = pdf_text(document.content)
    for expected in (invoice["invoice_number"], "Ada Lovelace", "SW1Y 4JH", "Difference Engine manual", "Fountain pen",
                     "$19.99", "$39.98", "$10.50", "$50.48", "$10.10", "$60.58", "PAID", "Billfold Demo Shop Ltd"):
        assert expected in text, expected

    with api.client(admin_token) as admin:  # a refund keeps the invoice (corrections are credit notes)
        payment = paid.json()["payment"]["id"]
        assert admin.post(f"/v1/payments/{payment}/refunds", json={}).status_code == 201
        assert [i["id"] for i in admin.get("/v1/invoices", params={"order_id": made["id"]}).json()["data"]] == [invoice["id"]]
        assert_problem(admin.post(f"/v1/invoices/{invoice['id']}/void"), 409, "illegal_transition")
    with session_factory(engine)() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Invoice).where(Invoice.order_id == made["id"])) == 1


def test_invoice_for_order_is_idempotent(engine: Engine) -> None:
    with transaction(session_factory(engine)) as session:
        buyer = make.user(session)
        item = make.product(session, product_type="digital", is_recurring=False, billing_interval=None, price_cents=700)
        row = make.order(session, user=buyer, subtotal_cents=700, total_cents=700, status="pending")
        from billfold.models import OrderItem

        session.add(OrderItem(order_id=row.id, product_id=item.id, quantity=1, unit_price_cents=700, total_cents=700))
        session.flush()
        first = service.invoice_for_order(session, row)
        assert first.status == "open", "an unpaid order's invoice is open"
        assert service.invoice_for_order(session, row) is first
        row.status = "paid"
        service.issue_for_paid_order(session, row)
        service.issue_for_paid_order(session, row)
        assert first.status == "paid" and first.paid_date is not None
        assert session.scalar(sa.select(sa.func.count()).select_from(Invoice).where(Invoice.order_id == row.id)) == 1


def test_organization_members_see_its_invoices_and_nobody_else_does(api: Api, engine: Engine, admin_token: str) -> None:
    owner, member, outsider = (person(engine, n) for n in ("owner", "member", "outsider"))
    organization = create_organization(api, owner)
    add_member(api, owner, organization, member, "member")
    with api.client(owner.token) as client:
        assert client.post(f"/v1/organizations/{organization}/addresses", json=HOME).status_code == 201
    made = order(api, owner.token, (product(engine), 1), organization_id=organization)
    with api.client(owner.token) as client:
        assert checkout(client, made["id"]).status_code == 200
        [invoice] = client.get("/v1/invoices", params={"order_id": made["id"]}).json()["data"]
    assert invoice["organization_id"] == organization and invoice["user_id"] is None
    mine = open_invoice(engine, user_id=outsider.id)
    with api.client(member.token) as client:
        assert client.get(f"/v1/invoices/{invoice['id']}").status_code == 200
        assert client.get(f"/v1/invoices/{invoice['id']}/pdf").status_code == 200
        assert invoice["id"] in client.get("/v1/invoices", params={"limit": 100}).text
        assert_problem(client.get(f"/v1/invoices/{mine}"), 404, "not_found")
        assert_problem(client.post(f"/v1/invoices/{invoice['id']}/void"), 403, "forbidden")
    with api.client(outsider.token) as client:
        assert_problem(client.get(f"/v1/invoices/{invoice['id']}"), 404, "not_found")
        assert_problem(client.get(f"/v1/invoices/{invoice['id']}/pdf"), 404, "not_found")
        listed = client.get("/v1/invoices", params={"limit": 100}).json()["data"]
        assert [i["id"] for i in listed] == [mine], "only their own"
        assert_problem(client.get("/v1/invoices/inv_nothing"), 404, "not_found")
    with api.client(admin_token) as admin:
        assert admin.get(f"/v1/invoices/{invoice['id']}").status_code == 200
        assert admin.get(f"/v1/invoices/{mine}").status_code == 200


def test_admins_void_and_mark_uncollectible_by_the_state_machine(api: Api, engine: Engine, admin_token: str) -> None:
    ada = person(engine, "ada")
    first, second = open_invoice(engine, user_id=ada.id), open_invoice(engine, user_id=ada.id)
    with api.client(ada.token) as client:
        assert_problem(client.post(f"/v1/invoices/{first}/mark-uncollectible"), 403, "forbidden")
        listed = client.get("/v1/invoices", params={"status": "open"}).json()["data"]
        assert [i["id"] for i in listed] == [first, second]
        assert listed[0]["status"] == "open" and (listed[0]["amount_cents"], listed[0]["total_cents"]) == (10000, 10000)
        assert [l["kind"] for l in listed[0]["lines"]] == ["item", "credit"]
        assert listed[0]["lines"][0]["unit_amount_cents"] == 4000
    with api.client(admin_token) as admin:
        moved = admin.post(f"/v1/invoices/{first}/mark-uncollectible")
        assert moved.status_code == 200 and moved.json()["status"] == "uncollectible"
        assert admin.post(f"/v1/invoices/{first}/mark-uncollectible").json()["status"] == "uncollectible", "already there"
        assert admin.post(f"/v1/invoices/{first}/void").json()["status"] == "void"
        assert admin.post(f"/v1/invoices/{first}/void").json()["status"] == "void", "already there"
        problem = assert_problem(admin.post(f"/v1/invoices/{first}/mark-uncollectible"), 409, "illegal_transition")
        assert (problem["status"], problem["current"], problem["wanted"]) == (409, "void", "uncollectible")
        assert_problem(admin.post("/v1/invoices/inv_nothing/void"), 404, "not_found")
        text = pdf_text(admin.get(f"/v1/invoices/{first}/pdf").content)
        assert "VOID" in text and "voided" in text
    assert invoice_events(engine, first) == ["invoice.draft", "invoice.open", "invoice.uncollectible", "invoice.void"]
    with transaction(session_factory(engine)) as session:
        row = session.get(Invoice, second)
        assert service.mark_uncollectible(session, row) and service.mark_paid(session, row), "uncollectible → paid"
        assert not service.mark_paid(session, row)
        with pytest.raises(IllegalTransition):
            service.void(session, row)
    with api.client(admin_token) as admin:
        assert_problem(admin.post(f"/v1/invoices/{second}/void"), 409, "illegal_transition")
        assert admin.get(f"/v1/invoices/{second}").json()["status"] == "paid"


def test_an_invoice_in_another_currency_prints_in_it(session) -> None:  # type: ignore[no-untyped-def]
    from billfold.config import Settings
    from billfold.invoices import pdf

    buyer = make.user(session, name="Zoë", last_name="Łukasiewicz")
    yen = issue_invoice(session, currency="JPY", user_id=buyer.id, lines=[LineIn("Matcha, 1 kg", 1200)])
    dinar = issue_invoice(session, currency="KWD", user_id=buyer.id, lines=[LineIn("Ünïcödé widget", 1234)], tax_cents=0)
    settings = Settings(seller_name="Société Générale d'Exemple", seller_address="Rue de l'Église 1\\n75001 Paris")
    text = pdf_text(pdf.document(session, settings, yen))
    for expected in ("¥1,200", "Zoë Łukasiewicz", "Matcha, 1 kg", yen.invoice_number, "Société Générale d'Exemple", "75001 Paris", "OPEN"):
        assert expected in text, expected
    assert "KWD1.234" in pdf_text(pdf.document(session, settings, dinar))
    assert pdf.document(session, settings, yen) == pdf.document(session, settings, yen), "deterministic"


def test_without_its_font_the_pdf_falls_back_and_never_fails(session, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from billfold.config import Settings
    from billfold.invoices import pdf

    monkeypatch.setattr(pdf, "FONT_DIRS", ("/nonexistent",))
    buyer = make.user(session, name="Łukasz", last_name="Zoë")
    made = issue_invoice(session, currency="EUR", user_id=buyer.id, lines=[LineIn("Część zamienna 日本", 2500)])
    text = pdf_text(pdf.document(session, Settings(), made))
    assert made.invoice_number in text and "?ukasz Zoë" in text and "Cz??" in text


@pytest.mark.parametrize("bad", [
    {"lines": [LineIn("credit", -100, kind="credit")]},
    {"lines": [LineIn("x", 100)], "discount_cents": 101},
    {"lines": [LineIn("x", 100)], "tax_cents": -1},
    {"lines": [LineIn("x", 100, quantity=3, unit_amount_cents=30)]},
    {"lines": [LineIn("x", 100, kind="gift")]},
    {"lines": [LineIn("x", 100, quantity=0)]},
    {"lines": [LineIn(" ", 100)]},
    {"lines": []},
    {"lines": [LineIn("x", 100)], "currency": "XYZ"},
])
def test_a_bad_invoice_is_refused_and_takes_no_number(session, bad: dict) -> None:  # type: ignore[no-untyped-def]
    from billfold.kit.errors import InvalidInput
    from billfold.models import NumberSeries

    def last() -> int | None:
        return session.scalar(sa.select(NumberSeries.last_value).where(NumberSeries.series == f"invoice-{clock.now().year}"))

    before = last()
    with pytest.raises(InvalidInput):
        issue_invoice(session, **{"currency": "USD", **bad})
    assert last() == before


@pytest.mark.every_database
def test_numbers_are_gapless_and_unique_under_concurrent_issuing(backend: str, engine: Engine) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite runs one writer at a time: there is no concurrency to test")
    sessions = session_factory(engine)
    year = 2037  # a series no other test uses (MariaDB TIMESTAMP ends in 2038)
    errors: list[BaseException] = []
    start = threading.Barrier(20)

    def issue() -> None:
        try:
            start.wait()
            with transaction(sessions) as session:
                issue_invoice(session, currency="USD", lines=[LineIn("Seat", 1000)])
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    with clock.using(clock.FrozenClock(datetime(year, 3, 1, tzinfo=clock.UTC))):
        threads = [threading.Thread(target=issue) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        with pytest.raises(RuntimeError), transaction(sessions) as session:  # a rollback gives its number back
            issue_invoice(session, currency="USD", lines=[LineIn("Seat", 1000)])
            raise RuntimeError("the transaction fails after numbering")
        with transaction(sessions) as session:
            last = issue_invoice(session, currency="USD", lines=[LineIn("Seat", 1000)]).invoice_number
    with sessions() as session:
        numbers = sorted(session.scalars(sa.select(Invoice.invoice_number).where(Invoice.invoice_number.like(f"INV-{year}-%"))))
    assert numbers == [f"INV-{year}-{n:06d}" for n in range(1, 22)]
    assert last == f"INV-{year}-000021"


def test_an_order_paid_elsewhere_gets_its_invoice_through_the_on_paid_hook(engine: Engine) -> None:
    from billfold.orders import events

    assert service.issue_for_paid_order in events._PAID, "billfold.wiring.wire() attaches the reaction"
    with transaction(session_factory(engine)) as session:
        buyer = make.user(session)
        row = make.order(session, user=buyer, subtotal_cents=0, total_cents=0, status="paid")
        item = make.product(session, product_type="digital", is_recurring=False, billing_interval=None, price_cents=0)
        from billfold.models import OrderItem

        session.add(OrderItem(order_id=row.id, product_id=item.id, quantity=1, unit_price_cents=0, total_cents=0))
        session.flush()
        events.order_paid(session, row)
        invoice = session.scalars(sa.select(Invoice).where(Invoice.order_id == row.id)).one()
        assert invoice.status == "paid" and invoice.total_cents == 0
        assert session.get(Order, row.id) is row


def _last_credit_note_number(engine: Engine, year: int) -> int:
    from billfold.models import NumberSeries

    with session_factory(engine)() as session:
        return session.scalar(sa.select(NumberSeries.last_value).where(NumberSeries.series == f"credit-note-{year}")) or 0


def test_a_refund_issues_a_numbered_credit_note_and_the_invoice_shows_what_was_credited(
    api: Api, engine: Engine, admin_token: str
) -> None:
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine, 1999, name="Analytical Engine manual"), 2))
    with api.client(ada.token) as client:
        paid = checkout(client, made["id"])
        assert paid.status_code == 200, paid.text
        [invoice] = client.get("/v1/invoices", params={"order_id": made["id"]}).json()["data"]
    payment = paid.json()["payment"]["id"]
    total = invoice["total_cents"]
    assert (invoice["credited_cents"], invoice["credit_status"], invoice["credit_notes"]) == (0, "none", [])
    year = clock.now().year
    before = _last_credit_note_number(engine, year)
    with api.client(admin_token) as admin:
        part = admin.post(f"/v1/payments/{payment}/refunds", json={"amount_cents": 1000, "reason": "scuffed cover"})
        assert part.status_code == 201, part.text
    with api.client(ada.token) as client:
        shown = client.get(f"/v1/invoices/{invoice['id']}").json()
        [note] = client.get("/v1/credit-notes", params={"invoice_id": invoice["id"]}).json()["data"]
        assert client.get(f"/v1/credit-notes/{note['id']}").json() == note
        document = client.get(note["pdf_url"])
    assert note["credit_note_number"] == f"CN-{year}-{before + 1:06d}", "the next number of its own series"
    assert (note["invoice_id"], note["invoice_number"], note["amount_cents"], note["currency"], note["reason"]) == (
        invoice["id"], invoice["invoice_number"], 1000, "USD", "scuffed cover"
    )
    assert note["refund_id"] == part.json()["id"]
    assert (shown["status"], shown["credited_cents"], shown["credit_status"]) == ("paid", 1000, "partially_credited")
    assert [n["credit_note_number"] for n in shown["credit_notes"]] == [note["credit_note_number"]]
    assert document.status_code == 200 and document.headers["content-type"] == "application/pdf"
    assert document.headers["content-disposition"] == f'attachment; filename="{note["credit_note_number"]}.pdf"'
    text = pdf_text(document.content)
    for expected in ("CREDIT NOTE", note["credit_note_number"], invoice["invoice_number"], "$10.00", "Ada Lovelace", "scuffed cover"):
        assert expected in text, expected

    with api.client(admin_token) as admin:
        rest = admin.post(f"/v1/payments/{payment}/refunds", json={})
        assert rest.status_code == 201, rest.text
        shown = admin.get(f"/v1/invoices/{invoice['id']}").json()
        invoice_pdf = pdf_text(admin.get(invoice["pdf_url"]).content)
    numbers = [n["credit_note_number"] for n in shown["credit_notes"]]
    assert numbers == [f"CN-{year}-{before + 1:06d}", f"CN-{year}-{before + 2:06d}"]
    assert [n["amount_cents"] for n in shown["credit_notes"]] == [1000, total - 1000]
    assert (shown["status"], shown["credited_cents"], shown["credit_status"]) == ("paid", total, "credited"), "credited in full"
    for expected in ("PAID, CREDITED IN FULL", *numbers, "$10.00", Money(total - 1000, "USD").format()):
        assert expected in invoice_pdf, expected
    assert invoice_events(engine, invoice["id"])[-2:] == ["invoice.credited", "invoice.credited"]

    stranger = person(engine, "stranger")
    with api.client(stranger.token) as client:
        assert_problem(client.get(f"/v1/credit-notes/{note['id']}"), 404, "not_found")
        assert_problem(client.get(f"/v1/credit-notes/{note['id']}/pdf"), 404, "not_found")
        assert client.get("/v1/credit-notes", params={"invoice_id": invoice["id"]}).json()["data"] == []


def test_a_refund_that_fails_after_succeeding_voids_its_credit_note_once_keeps_its_number_and_tells_the_merchant(
    api: Api, engine: Engine, admin_token: str
) -> None:
    # A merchant's endpoint asking for what this tells (written directly: the shared server refuses
    # an address that resolves to this machine; nothing is sent, the outbox's rows are read).
    with transaction(session_factory(engine)) as session:
        endpoint = WebhookEndpoint(url="https://hooks.example.com/billfold", secret="unused", is_active=True,
                                   event_types=["refund.failed", "invoice.credited", "invoice.credit_voided"])
        session.add(endpoint)
        session.flush()
        endpoint_id = endpoint.id
    try:
        _voided_once_and_told(api, engine, admin_token, endpoint_id)
    finally:
        with transaction(session_factory(engine)) as session:
            session.execute(sa.delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id))
            session.execute(sa.delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id))


def _told(engine: Engine, endpoint_id: str) -> list[tuple[str, str]]:
    with session_factory(engine)() as session:
        return [tuple(row) for row in session.execute(
            sa.select(WebhookDelivery.event_type, WebhookDelivery.entity_key)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
        )]


def _voided_once_and_told(api: Api, engine: Engine, admin_token: str, endpoint_id: str) -> None:
    from billfold.providers.base import WebhookEvent
    from tests.test_webhooks_processing import deliver, events_of, process, sandbox, webhook

    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine, 1999, name="Babbage's notes"), 2))
    with api.client(ada.token) as client:
        paid = checkout(client, made["id"])
        assert paid.status_code == 200, paid.text
        [invoice] = client.get("/v1/invoices", params={"order_id": made["id"]}).json()["data"]
    payment = paid.json()["payment"]["id"]
    year = clock.now().year
    before = _last_credit_note_number(engine, year)
    with api.client(admin_token) as admin:
        failing = admin.post(f"/v1/payments/{payment}/refunds", json={"amount_cents": 1000, "reason": "lost parcel"})
        standing = admin.post(f"/v1/payments/{payment}/refunds", json={"amount_cents": 500})
        assert failing.status_code == standing.status_code == 201, failing.text + standing.text
        assert admin.get(f"/v1/invoices/{invoice['id']}").json()["credited_cents"] == 1500
    assert _told(engine, endpoint_id) == [("invoice.credited", f"invoice:{invoice['id']}")] * 2

    failed = sandbox(api).fail_refund(failing.json()["provider_refund_id"])
    [event] = events_of(api, failed.id, "refund.failed")
    first = deliver(api, event)
    process(engine, api.data_dir)
    assert webhook(engine, first).processed
    with api.client(ada.token) as client:
        shown = client.get(f"/v1/invoices/{invoice['id']}").json()
        void, kept = client.get("/v1/credit-notes", params={"invoice_id": invoice["id"]}).json()["data"]
        note_pdf = pdf_text(client.get(void["pdf_url"]).content)
        invoice_pdf = pdf_text(client.get(invoice["pdf_url"]).content)
    assert [void["credit_note_number"], kept["credit_note_number"]] == [f"CN-{year}-{before + n:06d}" for n in (1, 2)]
    assert (void["refund_id"], void["status"], void["amount_cents"]) == (failing.json()["id"], "void", 1000)
    assert void["voided_at"] and "after succeeding" in void["void_reason"]
    assert (kept["status"], kept["voided_at"], kept["void_reason"]) == ("issued", None, None)
    assert (shown["credited_cents"], shown["credit_status"]) == (500, "partially_credited"), "only the standing note credits"
    assert [n["status"] for n in shown["credit_notes"]] == ["void", "issued"], "the void note stays listed"
    assert "CREDIT NOTE - VOID" in note_pdf and "nothing was credited" in note_pdf
    assert "refunded to the original payment method" not in note_pdf
    assert f"Credited: {kept['credit_note_number']}" in invoice_pdf and f"Credited: {void['credit_note_number']}" not in invoice_pdf
    assert f"VOID: credit note {void['credit_note_number']}" in invoice_pdf
    assert "PARTLY CREDITED" in invoice_pdf and Money(shown["total_cents"] - 500, "USD").format() in invoice_pdf, "paid less credited"

    # The same failure delivered again (a new delivery id, as a provider's retry): nothing changes.
    again = deliver(api, WebhookEvent(event.id + "_again", event.type, event.object_type, event.object_id, event.created, {}))
    process(engine, api.data_dir)
    assert webhook(engine, again).processed
    with api.client(ada.token) as client:
        assert client.get(f"/v1/credit-notes/{void['id']}").json() == void
    assert invoice_events(engine, invoice["id"]).count("invoice.credit_voided") == 1
    # Told once each, whatever the provider repeats: the refund's failure and the void.
    assert sorted(_told(engine, endpoint_id)) == [
        ("invoice.credit_voided", f"invoice:{invoice['id']}"), *[("invoice.credited", f"invoice:{invoice['id']}")] * 2,
        ("refund.failed", f"refund:{failing.json()['id']}"),
    ]

    # The rest refunded: the next number follows, no gap; the void note never counts again.
    with api.client(admin_token) as admin:
        rest = admin.post(f"/v1/payments/{payment}/refunds", json={})
        assert rest.status_code == 201, rest.text
        shown = admin.get(f"/v1/invoices/{invoice['id']}").json()
    assert shown["credit_notes"][-1]["credit_note_number"] == f"CN-{year}-{before + 3:06d}"
    assert (shown["credited_cents"], shown["credit_status"]) == (shown["total_cents"], "credited")


@pytest.mark.every_database  # the months' queries compare dates bound as parameters
def test_a_voided_credit_note_gives_its_revenue_back_in_the_month_it_is_voided(engine: Engine) -> None:
    from billfold.analytics import recognition
    from billfold.kit.ids import new_id
    from billfold.models import CreditNote, Payment, Refund

    def at(month: int, day: int) -> datetime:
        return datetime(2031, month, day, tzinfo=clock.UTC)

    def credited(session, invoice: Invoice, cents: int, issued: datetime, voided: datetime) -> None:  # type: ignore[no-untyped-def]
        buyer_order = make.order(session, user=buyer, total_cents=invoice.total_cents)
        charged = Payment(order_id=buyer_order.id, user_id=buyer.id, provider_id="sandbox", provider_payment_id=new_id("ch"),
                          amount_cents=invoice.total_cents, currency="USD", status="completed")
        session.add(charged)
        session.flush()
        refund = Refund(payment_id=charged.id, provider_id="sandbox", amount_cents=cents, currency="USD", status="failed")
        session.add(refund)
        session.flush()
        session.add(CreditNote(credit_note_number=new_id("cnx"), invoice_id=invoice.id, refund_id=refund.id, amount_cents=cents,
                               currency="USD", issue_date=issued, voided_at=voided, void_reason="failed after succeeding"))

    with transaction(session_factory(engine)) as session:
        buyer = make.user(session)
        make.provider(session)
        with clock.using(clock.FrozenClock(at(1, 10))):
            # A one-time item paid 10 January; a 40.00 credit note of 20 January, voided 5 March.
            item = issue_invoice(session, currency="USD", user_id=buyer.id, lines=[LineIn("Brass gears", 10000)])
            service.mark_paid(session, item)
        # A month of service (31 days at 10.00 a day) paid 1 January; the unused 10 days credited
        # 22 January, the note voided 10 February.
        with clock.using(clock.FrozenClock(at(1, 1))):
            plan = issue_invoice(session, currency="USD", user_id=buyer.id,
                                 lines=[LineIn("Engine time", 31000, period_start=at(1, 1), period_end=at(2, 1))])
            service.mark_paid(session, plan)
        credited(session, item, 4000, at(1, 20), at(3, 5))
        credited(session, plan, 10000, at(1, 22), at(2, 10))
        ids = (item.id, plan.id)

    with session_factory(engine)() as session:
        months = {month: recognition.recognised(session, 2031, month).get("USD") for month in (1, 2, 3, 4)}
    by_month = {month: tuple((found.by_invoice.get(i, (0, 0)) if found else (0, 0)) for i in ids) for month, found in months.items()}
    assert by_month == {
        1: ((6000, 0), (21000, 0)),  # the notes stand at January's end: 100 − 40; 21 days, the rest credited
        2: ((0, 0), (10000, 0)),  # the plan's note is voided: its 10 days are earned after all
        3: ((4000, 0), (0, 0)),  # the item's note is voided: its 40.00 comes back
        4: ((0, 0), (0, 0)),
    }
    assert [sum(month[n][0] for month in by_month.values()) for n in (0, 1)] == [10000, 31000], "in all, as if never credited"
