"""Orders: built from catalog items for a user or an organization, priced from the catalog at that
moment, taxed by the billing address's country, numbered gaplessly; cancelled while unpaid.

Who may buy for whom: a user for themselves; for an organization its owners and billing members
(``Permission.BILLING``); the shop's admins and write API keys for anyone they name. Everyone who
may see a customer's data sees its orders (an organization's members included).

Addresses are copied into the order (``metadata.billing_address`` / ``shipping_address``) as they
were when it was placed, so a later change to the address book never rewrites an order or its
invoice; the address ids stay as the spec has them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.accounts.organizations import service as organizations
from billfold.accounts.access import Owner, me, organization_owner, readable, require_payer, user_owner
from billfold.accounts.addresses import default_addresses, get_address
from billfold.accounts.security import Principal
from billfold.catalog.service import purchasable_products
from billfold.config import Settings
from billfold.kit import clock
from billfold.kit.db import insert_rows
from billfold.kit.db.dialects import for_update
from billfold.kit.errors import BillfoldError, Conflict, CurrencyMismatch, InvalidInput, NotFound
from billfold.kit.ids import has_prefix, new_id
from billfold.models import Address, Order, OrderItem, Payment, Product, Refund
from billfold import numbering, tax
from billfold.orders import lines as order_lines, totals
from billfold.orders.states import ORDER

MAX_ITEMS = 100
ADDRESS_FIELDS = ("name", "line1", "line2", "city", "state", "postal_code", "country", "phone", "email")


class ProductNotPurchasable(InvalidInput):
    code = "product_not_purchasable"
    title = "This product cannot be bought here"


class OrderNotPayable(Conflict):
    code = "order_not_payable"
    title = "The order cannot be paid"


class PaymentInProgress(Conflict):
    code = "payment_in_progress"
    title = "A payment is under way"


@dataclass(frozen=True)
class ItemIn:
    product_id: str
    quantity: int = 1


def actor(principal: Principal | None) -> str | None:
    """Who caused a change, for the audit trail: a user id or an API key id."""
    if principal is None:
        return None
    return organizations.actor_id(principal)


def buyer(session: Session, principal: Principal, *, user_id: str | None, organization_id: str | None) -> Owner:
    """The customer an order is for, once the principal is found to be allowed to buy for them."""
    if user_id and organization_id:
        raise InvalidInput(
            "an order is for a user or an organization, not both",
            errors=[{"field": "organization_id", "message": "give user_id or organization_id"}],
        )
    if organization_id:
        return organization_owner(session, principal, organization_id, change=True)
    principal.require_scope("write")
    if principal.user is not None and user_id in (None, principal.user.id):
        if principal.is_admin and user_id is None:
            raise InvalidInput(
                "the shop's admins buy for a customer: name user_id or organization_id",
                errors=[{"field": "user_id", "message": "required"}],
            )
        return me(principal)
    if user_id is None:
        raise InvalidInput(
            "an API key buys for a customer: name user_id or organization_id",
            errors=[{"field": "user_id", "message": "required"}],
        )
    principal.require_admin()
    try:
        return user_owner(session, user_id)
    except NotFound as error:
        raise NotFound(f"no user {user_id}", errors=[{"field": "user_id", "message": "no such user"}]) from error


def _products(session: Session, items: list[ItemIn]) -> list[Product]:
    """The items' products, read together; the first item's refusal (naming its field) raised."""
    products = []
    for n, (item, found) in enumerate(zip(items, purchasable_products(session, [i.product_id for i in items]), strict=True)):
        field = f"items.{n}.product_id"
        if isinstance(found, NotFound):
            raise NotFound(f"no product {item.product_id}", errors=[{"field": field, "message": "no such product"}])
        if isinstance(found, BillfoldError):
            raise found
        if found.is_recurring:
            raise ProductNotPurchasable(
                f"{found.name} ({found.id}) is sold by subscription, not in an order",
                errors=[{"field": field, "message": "recurring: subscribe instead"}],
            )
        products.append(found)
    return products


class _AddressBook:
    """The owner's addresses as one order asks for them: the defaults read once, each address
    once (billing and shipping are often the same one)."""

    def __init__(self, session: Session, owner: Owner) -> None:
        self.session, self.owner = session, owner
        self._defaults: dict[str, str] | None = None
        self._found: dict[str, Address] = {}

    def default(self, kind: str) -> str | None:
        if self._defaults is None:
            found = default_addresses(self.session, self.owner)  # the rows themselves: no second read
            self._found.update({address.id: address for address in found.values()})
            self._defaults = {kind: address.id for kind, address in found.items()}
        return self._defaults.get(kind)

    def get(self, address_id: str) -> Address:
        if address_id not in self._found:
            self._found[address_id] = get_address(self.session, self.owner, address_id)
        return self._found[address_id]


def _address(book: _AddressBook, address_id: str | None, kind: str, needed: bool) -> Address | None:
    field = f"{kind}_address_id"
    if address_id is None:
        address_id = book.default(kind)
        if address_id is None:
            if not needed:
                return None
            raise InvalidInput(
                f"the customer has no {kind} address: add one, or name {field}",
                errors=[{"field": field, "message": "required"}],
            )
    try:
        address = book.get(address_id)
    except NotFound as error:
        raise NotFound(
            f"the customer has no address {address_id}", errors=[{"field": field, "message": "not the customer's"}]
        ) from error
    if address.address_type not in (kind, "both"):
        raise InvalidInput(
            f"{address_id} is a {address.address_type} address, not a {kind} address",
            errors=[{"field": field, "message": f"not a {kind} address"}],
        )
    return address


def _snapshot(address: Address | None) -> dict[str, Any] | None:
    if address is None:
        return None
    return {"id": address.id, **{f: getattr(address, f) for f in ADDRESS_FIELDS if getattr(address, f) is not None}}


def create_order(
    session: Session,
    settings: Settings,
    principal: Principal,
    *,
    items: list[ItemIn],
    user_id: str | None = None,
    organization_id: str | None = None,
    billing_address_id: str | None = None,
    shipping_address_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    before_numbering: Callable[[Order], None] | None = None,
) -> Order:
    """A new ``pending`` order. ``before_numbering(order)`` does more in the same transaction once
    the order and its items are flushed, before the number's row is locked (the one-request
    checkout starts the order's payment there)."""
    owner = buyer(session, principal, user_id=user_id, organization_id=organization_id)
    if not 1 <= len(items) <= MAX_ITEMS:
        raise InvalidInput(
            f"an order has 1 to {MAX_ITEMS} items", errors=[{"field": "items", "message": "1 to 100 items"}]
        )
    products = _products(session, items)
    currencies = sorted({p.currency for p in products})
    if len(currencies) > 1:
        raise CurrencyMismatch(
            f"one order is paid in one currency; these products are priced in {', '.join(currencies)}",
            errors=[{"field": "items", "message": "mixed currencies"}],
        )
    book = _AddressBook(session, owner)
    billing = _address(book, billing_address_id, "billing", needed=True)
    physical = any(p.product_type == "physical" for p in products)
    shipping = _address(book, shipping_address_id, "shipping", needed=physical)
    lines = [totals.Line(p.id, item.quantity, p.price_cents) for p, item in zip(products, items, strict=True)]
    sums = totals.compute(lines, currencies[0], billing.country if billing else None, tax=tax.calculator(settings))
    extra = {"billing_address": _snapshot(billing), "shipping_address": _snapshot(shipping)}
    order = Order(
        order_number=f"pending-{new_id('num')}",  # unique until the real number is taken, last
        user_id=owner.user_id,
        organization_id=owner.organization_id,
        subtotal_cents=sums.subtotal_cents,
        discount_cents=sums.discount_cents,
        tax_cents=sums.tax_cents,
        total_cents=sums.total_cents,
        currency=currencies[0],
        billing_address_id=billing.id if billing else None,
        shipping_address_id=shipping.id if shipping else None,
        metadata_={**(metadata or {}), **{k: v for k, v in extra.items() if v is not None}},
    )
    insert_rows(session, [order])
    placed = [
        (OrderItem(
            order_id=order.id,
            product_id=line.product_id,
            quantity=line.quantity,
            unit_price_cents=line.unit_price_cents,
            total_cents=line.total_cents,
            metadata_={"name": product.name},
        ), product)
        for line, product in zip(lines, products, strict=True)
    ]
    insert_rows(session, [item for item, _ in placed])
    order_lines.placed(session, order.id, placed)
    if before_numbering is not None:
        before_numbering(order)
    # The number last: its row stays locked until this transaction commits (gapless numbers), so
    # the less that happens after it, the more orders per second.
    order.order_number = numbering.order_number(session, clock.now().year, settings.order_number_prefix)
    ORDER.start(session, order, "pending", by=actor(principal), order_number=order.order_number)
    session.flush()
    return order


def get_order(session: Session, principal: Principal, order_id: str, *, lock: bool = False, change: bool = False) -> Order:
    """An order the principal may see (``change``: is about to change; an API key needs ``write``,
    not ``read``); NotFound otherwise, the same answer as for no such order."""
    statement = readable(principal, Order, change=change).where(Order.id == order_id)
    if lock:  # what the lock found wins over what this session read before
        statement = for_update(statement, session).execution_options(populate_existing=True)
    order = session.scalars(statement).one_or_none()
    if order is None or not has_prefix(order_id, "ord"):
        raise NotFound(f"no order {order_id}")
    return order


def require_buyer(session: Session, principal: Principal, order: Order) -> None:
    """Paying or cancelling needs the right to buy for the order's customer (seeing it is not enough)."""
    require_payer(session, principal, order, "only the customer who placed the order may do this")


# Built once: a sale runs each of these (docs/performance.md, "statements built once").
_ITEMS_OF = sa.select(OrderItem).where(OrderItem.order_id.in_(sa.bindparam("ids", expanding=True))).order_by(OrderItem.id)


def items_of(session: Session, order_ids: list[str]) -> dict[str, list[OrderItem]]:
    grouped: dict[str, list[OrderItem]] = {order_id: [] for order_id in order_ids}
    unread = []
    for order_id in order_ids:  # an order this transaction has placed or read the lines of: taken from it
        lines = order_lines.known(session, order_id)
        if lines is None:
            unread.append(order_id)
        else:
            grouped[order_id] = [item for item, _ in lines]
    rows = session.scalars(_ITEMS_OF, {"ids": unread}).all() if unread else []
    for row in rows:
        grouped[row.order_id].append(row)
    return grouped


_PAYMENTS_WITH_REFUNDS = (
    sa.select(Payment, Refund).outerjoin(Refund, Refund.payment_id == Payment.id)
    .where(Payment.order_id.in_(sa.bindparam("ids", expanding=True))).order_by(Payment.id, Refund.id)
)


def payments_of(session: Session, order_ids: list[str]) -> dict[str, list[tuple[Payment, list[Refund]]]]:
    """Each order's payments, oldest first, each with its refunds: one statement for all."""
    grouped: dict[str, list[tuple[Payment, list[Refund]]]] = {order_id: [] for order_id in order_ids}
    if order_ids:
        for payment, refund in session.execute(_PAYMENTS_WITH_REFUNDS, {"ids": order_ids}):
            paid = grouped[payment.order_id]
            if not paid or paid[-1][0] is not payment:
                paid.append((payment, []))
            if refund is not None:
                paid[-1][1].append(refund)
    return grouped


def cancel_order(session: Session, principal: Principal, order_id: str, reason: str | None = None) -> Order:
    """Cancel an unpaid order. A paid one can only be refunded; one whose payment is under way
    (with the provider, or waiting for the customer's action) waits for that payment to end."""
    order = get_order(session, principal, order_id, lock=True, change=True)
    require_buyer(session, principal, order)
    if order.status == "paid":
        raise OrderNotPayable(
            f"order {order.order_number} is paid: refund it instead of cancelling (POST /v1/payments/{{id}}/refunds)"
        )
    in_flight = session.scalar(
        sa.select(sa.func.count()).select_from(Payment).where(Payment.order_id == order.id, Payment.status == "pending")
    )
    if in_flight and order.status == "pending":
        raise PaymentInProgress(
            f"order {order.order_number} has a payment under way; cancel that payment or wait for it to end"
        )
    ORDER.move(session, order, "cancelled", by=actor(principal), reason=reason)
    session.flush()
    return order
