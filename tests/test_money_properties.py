"""Properties of the money path, for any input hypothesis finds: order totals (integer minor units,
tax rounded half up, total = subtotal − discount + tax) and refunds (any sequence of partial
refunds never gives back more than was paid, and the books agree with the provider's)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from billfold.accounts.security import Principal, Security
from billfold.config import Settings
from billfold.kit.db import session_factory, transaction
from billfold.kit.errors import InvalidAmount
from billfold.kit.money import Money
from billfold.models import Order, Payment, Refund
from billfold import tax
from billfold.orders import checkout, service, totals
from billfold.payments import provider_config, refunds
from billfold.payments.routing import PayWith
from tests import factories as make

lines = st.lists(
    st.builds(totals.Line, st.just("prod_x"), st.integers(1, 1000), st.integers(0, 10_000_000)), min_size=1, max_size=20
)


class FixedDiscount:
    def __init__(self, share: float) -> None:
        self.share = share

    def discount(self, lines: object, subtotal_cents: int, currency: str) -> int:
        return int(subtotal_cents * self.share)


@given(lines, st.integers(0, 3000), st.floats(0, 1), st.sampled_from(["USD", "JPY", "KWD"]))
def test_totals_add_up_in_minor_units_with_tax_rounded_half_up(items: list, rate: int, share: float, currency: str) -> None:
    result = totals.compute(items, currency, "XX", tax=tax.CountryTaxTable({"XX": rate}), discount=FixedDiscount(share))
    assert result.subtotal_cents == sum(i.quantity * i.unit_price_cents for i in items)
    assert 0 <= result.discount_cents <= result.subtotal_cents
    exact = Decimal(result.subtotal_cents - result.discount_cents) * rate / 10000
    assert result.tax_cents == int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    assert result.total_cents == result.subtotal_cents - result.discount_cents + result.tax_cents
    assert all(isinstance(v, int) for v in (result.subtotal_cents, result.tax_cents, result.total_cents))


def test_a_discount_larger_than_the_subtotal_is_refused() -> None:
    with pytest.raises(InvalidAmount):
        totals.compute([totals.Line("p", 1, 100)], "USD", None, tax=tax.CountryTaxTable({}), discount=FixedDiscount(1.5))


@pytest.fixture
def paying(engine: Engine, tmp_path: Path) -> tuple:
    security = Security.from_settings(Settings(database_url="sqlite://", data_dir=tmp_path))
    with transaction(session_factory(engine)) as session:
        make.provider(session)
        provider = session.get(make.PaymentProvider, "sandbox")
        provider.config = {"kind": "sandbox"}
        admin = make.user(session, user_type="admin")
        buyer = make.user(session)
        make.address(session, user=buyer, address_type="billing", is_default=True, country="US")
        product = make.product(session, product_type="digital", is_recurring=False, billing_interval=None, price_cents=10_000)
    gateways_cache = getattr(provider_config, "_ADAPTERS", None)
    if isinstance(gateways_cache, dict):
        gateways_cache.clear()
    return security, Principal(user=admin), Principal(user=buyer), product.id


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(1, 12_000), min_size=1, max_size=6))
def test_partial_refunds_never_give_back_more_than_was_paid(engine: Engine, paying: tuple, amounts: list[int]) -> None:
    security, admin, buyer, product_id = paying
    sessions = session_factory(engine)
    with transaction(sessions) as session:
        order = service.create_order(session, security.settings, buyer, items=[service.ItemIn(product_id, 1)])
        order_id, total = order.id, order.total_cents
    outcome = checkout.checkout(sessions, security, buyer, order_id, PayWith(token="tok_sandbox_visa"))
    assert outcome.succeeded
    given_back = refused = 0
    for amount in amounts:
        try:
            refunds.refund(sessions, security, admin, outcome.payment_id, amount_cents=amount)
            given_back += amount
        except InvalidAmount:
            refused += 1
            assert amount > total - given_back, "refused only when more than what is left"
    with sessions() as session:
        payment = session.get(Payment, outcome.payment_id)
        order = session.get(Order, order_id)
        ours = refunds.refunded_cents(session, payment.id)
        adapter = provider_config.adapter_for_provider(session, security, "sandbox")
        theirs = adapter.get_charge(payment.provider_payment_id).amount_refunded
        count = session.scalar(sa.select(sa.func.count()).select_from(Refund).where(Refund.payment_id == payment.id))
    assert ours == given_back <= total
    assert theirs == Money(given_back, payment.currency), "the provider gave back what our books say"
    assert count == sum(1 for a in amounts if a > 0) - refused, "a refused refund leaves no row"
    assert (payment.status, order.status) == (("refunded", "refunded") if given_back == total else ("completed", "paid"))
