"""The composition root (``billfold.wiring``): a paid order's invoice and memberships come from
``wire()``, not from whichever modules a process happened to import; a process that never wired
cannot mark an order paid at all (``orders.events.NotWired``), so nothing is silently left out.

Each case runs in a fresh Python process that imports the order services only, on its own SQLite
database, so no import made by the test suite (or by ``tests/conftest.py``, which wires) counts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from billfold.orders import events

SCRIPT = r"""
import json, sys
from pathlib import Path

from billfold.orders import checkout, service  # the order services, nothing else of ours
from billfold.payments.routing import PayWith

imported = sorted(m for m in sys.modules if m.startswith(("billfold.invoices", "billfold.memberships", "billfold.api", "billfold.worker")))
assert not imported, f"the order services import {imported}"

import sqlalchemy as sa
from alembic import command

from billfold.accounts.security import Principal, Security
from billfold.config import Settings
from billfold.kit.db import create_engine, session_factory, transaction
from billfold.migrations import alembic_config
from billfold.models import Address, Invoice, MembershipType, Order, PaymentProvider, Product, User, UserMembership

folder = Path(sys.argv[1])
settings = Settings(database_url=f"sqlite:///{folder / 'billfold.db'}", data_dir=folder / "data")
engine = create_engine(settings.database_url)
command.upgrade(alembic_config(engine), "head")
sessions = session_factory(engine)
with transaction(sessions) as session:
    user = User(name="Ada", last_name="Lovelace", email="ada@example.com", user_type="individual")
    session.add(user)
    session.add(PaymentProvider(id="sandbox", display_name="Sandbox", is_active=True, config={"kind": "sandbox"}))
    kind = MembershipType(name="Pass", duration_type="fixed", duration_days=30, price_cents=1000)
    session.add(kind)
    session.flush()
    session.add(Address(user_id=user.id, address_type="billing", name="Ada Lovelace", line1="12 St James's Square",
                        city="London", postal_code="SW1Y 4JH", country="GB", is_default=True))
    product = Product(name="Pass", product_type="digital", is_recurring=False, price_cents=1000,
                      metadata_={"membership_type_id": kind.id})
    session.add(product)
    session.flush()
    user_id, product_id = user.id, product.id

if sys.argv[2] == "wired":
    from billfold.wiring import wire

    wire()
    wire()  # idempotent

with sessions() as session:
    principal = Principal(user=session.get(User, user_id))
    session.expunge(principal.user)
with transaction(sessions) as session:
    order_id = service.create_order(session, settings, principal, items=[service.ItemIn(product_id)]).id
try:
    outcome = checkout.checkout(sessions, Security.from_settings(settings), principal, order_id,
                                PayWith(token="tok_sandbox_visa"))
    answer = {"result": str(outcome.result)}
except Exception as error:
    answer = {"error": type(error).__name__, "code": getattr(error, "code", None), "detail": str(error)}
with sessions() as session:
    answer["order"] = session.get(Order, order_id).status
    answer["invoices"] = session.scalar(sa.select(sa.func.count()).select_from(Invoice).where(Invoice.order_id == order_id))
    answer["memberships"] = session.scalar(
        sa.select(sa.func.count()).select_from(UserMembership).where(UserMembership.order_id == order_id))
print(json.dumps(answer))
"""


def pay_in_a_fresh_process(folder: Path, mode: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(folder), mode], capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(folder)}, cwd=folder,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_process_that_wires_and_pays_an_order_gets_its_invoice_and_membership(tmp_path: Path) -> None:
    answer = pay_in_a_fresh_process(tmp_path, "wired")
    assert answer == {"result": "succeeded", "order": "paid", "invoices": 1, "memberships": 1}


def test_a_process_that_never_wired_cannot_mark_an_order_paid(tmp_path: Path) -> None:
    answer = pay_in_a_fresh_process(tmp_path, "unwired")
    assert answer["error"] == "NotWired" and answer["code"] == "not_wired"
    assert "billfold.wiring.wire()" in answer["detail"]
    # The transaction that would have marked it paid rolled back: no order paid without its invoice.
    assert (answer["order"], answer["invoices"], answer["memberships"]) == ("pending", 0, 0)


def test_importing_attaches_nothing_and_wire_is_idempotent() -> None:
    code = (
        "import billfold.api, billfold.worker, billfold.cli, billfold.demo.shop, billfold.demo.history, billfold.invoices, billfold.memberships\n"
        "from billfold.orders import events\n"
        "assert not events.attached() and events._PAID == ()\n"
        "from billfold.wiring import wire\n"
        "wire(); first = events._PAID; wire()\n"
        "assert events.attached() and events._PAID == first and len(first) == 3\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_test_process_is_wired() -> None:
    assert events.attached(), "tests/conftest.py calls billfold.wiring.wire()"


@pytest.mark.parametrize("entry", ["billfold.api:create_app", "billfold.worker:make_context", "billfold.cli:main", "billfold.demo.shop:load_demo"])
def test_every_entry_point_wires(entry: str) -> None:
    import importlib
    import inspect

    module, name = entry.split(":")
    source = inspect.getsource(getattr(importlib.import_module(module), name))
    assert "wire()" in source, f"{entry} must call billfold.wiring.wire()"
