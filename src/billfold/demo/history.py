"""A history for the demo shop: months of a subscription business, made by running it.

``build_history`` starts the one clock ``months`` before now, loads the demo shop there
(demo/shop.py), and then lives through every day up to now: customers sign up (some for a trial, some
never adding a card), buy one-time products, add seats and remove them, buy add-ons and
memberships, cancel; cards start failing and some customers fix them in time; the shop refunds a
few orders. Everything goes through the same services the API calls, as the customer or the shop's
admin. After each day the clock steps to the next one and the worker catches up on what became
due (``worker.catch_up``, as ``billfold clock advance`` does): trials end, periods renew,
dunning retries, memberships expire, and the day's mail is delivered. The analytics snapshots
are taken after the last day, in one pass, as the nightly sweep would have taken them (see
``analytics.jobs.fill_history``), and ``user_cohorts`` is rebuilt if the live hooks left it empty. Renewals are billed on the
day they fall due, by the schedule a real installation would follow. The history's mail (receipts,
dunning, trial ends) is written to the outbox like any other and delivered to the mail folder
(``data_dir/mail``), never to an SMTP server, configured or not.

The history ends at the time it was made, so the database runs on real time afterwards (no
sandbox mode needed). The same seed gives the same history, apart from ids and the dates, which
follow today's.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold import instance, worker
from billfold.analytics import cohorts, jobs
from billfold.demo import shop as demo
from billfold.accounts.access import Owner, owner_of
from billfold.accounts.security import Principal
from billfold.kit import clock
from billfold.kit.db import transaction
from billfold.kit.errors import BillfoldError
from billfold.kit.sweeps import Context
from billfold.models import (
    Address,
    AnalyticsSnapshot,
    Invoice,
    Order,
    Organization,
    Payment,
    Product,
    Refund,
    Subscription,
    User,
    UserCohort,
    UserMembership,
)
from billfold.orders import checkout
from billfold.orders import service as orders
from billfold.payments import methods, refunds
from billfold.payments.engine import Result
from billfold.payments.routing import PayWith
from billfold.subscriptions import charging
from billfold.subscriptions import service as subscriptions
from billfold.subscriptions.periods import add_months

DAY = timedelta(days=1)
GOOD_CARDS = ("tok_sandbox_visa", "tok_sandbox_visa", "tok_sandbox_mastercard", "tok_sandbox_amex")
FAILING_CARD = "tok_sandbox_insufficient_funds"  # a card that has run dry: renewals on it are declined
DECLINED_CARD = "tok_sandbox_decline"

# Rates, per day unless said otherwise. Signups grow through the history (a young business).
SIGNUPS_FIRST_DAY, SIGNUPS_LAST_DAY = 0.35, 1.3
ORDERS_PER_DAY = 0.45  # one-time purchases by existing customers
MONTHLY_CHURN = 0.035  # subscriptions cancelled at period end, per month
MONTHLY_CANCEL_NOW = 0.004
MONTHLY_CARD_FAILS = 0.03  # a customer's card starts being declined
RECOVERS = 0.6  # of those, the share who fix their card within the dunning schedule
MONTHLY_SEATS_UP, MONTHLY_SEATS_DOWN = 0.06, 0.012
MONTHLY_ADDON = 0.01  # a Team or Business customer adds priority support
TRIAL_WITHOUT_CARD = 0.25  # of trial signups, those who never add a card
FIRST_CARD_DECLINED = 0.03
REFUNDED_ORDERS = 0.08

# (ISO country, share of signups, plans to choose from with weights, city, postal code, phone prefix)
MARKETS = [
    ("US", 0.38, {"team-plan/monthly": 6, "team-plan/yearly": 2, "community-pro": 0}, "Austin", "78701", "+1512555"),
    ("GB", 0.10, {"team-plan/monthly": 5, "team-plan/yearly": 1}, "Manchester", "M1 1AE", "+447700"),
    ("DE", 0.16, {"business-plan/monthly": 4, "business-plan/yearly": 1, "community-pro": 2}, "Köln", "50667", "+49221"),
    ("FR", 0.10, {"business-plan/monthly": 4, "community-pro": 2}, "Bordeaux", "33000", "+33556"),
    ("ES", 0.07, {"business-plan/monthly": 3, "community-pro": 2}, "Valencia", "46001", "+34963"),
    ("SE", 0.05, {"business-plan/monthly": 3, "business-plan/yearly": 1}, "Göteborg", "411 01", "+4631"),
    ("JP", 0.08, {"starter-plan-jp": 1}, "Osaka", "530-0001", "+816"),
    ("CA", 0.06, {"team-plan/monthly": 4, "team-plan/yearly": 1}, "Toronto", "M5H 2N2", "+1416555"),
]

FIRST_NAMES = {
    "US": ["Olivia", "Liam", "Ava", "Noah", "Mia", "Ethan", "Harper", "Lucas", "Amelia", "Mason", "Aria", "Logan"],
    "GB": ["George", "Isla", "Harry", "Freya", "Jack", "Poppy", "Alfie", "Florence", "Arthur", "Evie"],
    "DE": ["Lukas", "Mia", "Leon", "Hannah", "Finn", "Lea", "Paul", "Marie", "Felix", "Johanna", "Jonas", "Clara"],
    "FR": ["Léa", "Hugo", "Manon", "Louis", "Camille", "Gabriel", "Inès", "Arthur", "Zoé", "Jules"],
    "ES": ["Lucía", "Hugo", "Martina", "Mateo", "Sofía", "Pablo", "Julia", "Álvaro", "Paula", "Daniel"],
    "SE": ["Elsa", "William", "Alice", "Oscar", "Maja", "Hugo", "Astrid", "Axel", "Ebba", "Liam"],
    "JP": ["Yui", "Ren", "Himari", "Minato", "Aoi", "Sota", "Sakura", "Haruki", "Rin", "Yuto"],
    "CA": ["Charlotte", "Benjamin", "Emma", "William", "Chloé", "Nathan", "Maya", "Owen", "Léa", "Jacob"],
}
LAST_NAMES = {
    "US": ["Johnson", "Williams", "Brown", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez", "Lee", "Walker"],
    "GB": ["Smith", "Jones", "Taylor", "Davies", "Evans", "Thomas", "Roberts", "Wright", "Hughes", "Clarke"],
    "DE": ["Müller", "Schmidt", "Schneider", "Fischer", "Meyer", "Wagner", "Becker", "Schulz", "Koch", "Richter"],
    "FR": ["Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy", "Moreau", "Simon"],
    "ES": ["García", "Fernández", "González", "Rodríguez", "López", "Martínez", "Sánchez", "Pérez", "Gómez", "Ruiz"],
    "SE": ["Andersson", "Johansson", "Karlsson", "Nilsson", "Eriksson", "Larsson", "Olsson", "Persson", "Svensson"],
    "JP": ["Tanaka", "Suzuki", "Takahashi", "Watanabe", "Ito", "Yamamoto", "Nakamura", "Kobayashi", "Kato"],
    "CA": ["Tremblay", "Gagnon", "Roy", "Côté", "Bouchard", "Gauthier", "Morin", "Lavoie", "Fortin", "Smith"],
}
STREETS = ["Main Street", "Market Street", "Station Road", "Park Avenue", "Harbour Lane", "Mill Road", "High Street"]

# One-time purchases: (slug, weight, quantities); the T-shirt is bought by variant.
SHOP = [("enamel-mug", 5, (1, 1, 2)), ("sticker-pack", 6, (1, 2, 3)), ("logo-tee", 5, (1, 1, 2)),
        ("field-guide", 4, (1,)), ("billing-workshop", 2, (1,)), ("onboarding", 1, (1,)),
        ("learning-pass", 3, (1,)), ("founding-member", 1, (1,))]


PRODUCT_KEYS = {
    name: f"{slug}/{interval}" if slug in ("team-plan", "business-plan") else slug
    for _, name, _, _, _, _, interval, _, _, slug in demo.PRODUCTS
} | {demo.TSHIRT["name"]: demo.TSHIRT["slug"]}


@dataclass
class Customer:
    user_id: str
    country: str
    principal: Principal
    organization_id: str | None = None
    method_id: str | None = None
    good_method_id: str | None = None

    @property
    def owner(self) -> Owner:
        return owner_of(self)


@dataclass
class HistoryReport:
    """What the history made, for the command to print."""

    start: datetime
    end: datetime
    days: int
    actions: Counter[str] = field(default_factory=Counter)
    worker: Counter[str] = field(default_factory=Counter)
    totals: dict[str, int] = field(default_factory=dict)
    snapshot_days: int = 0


class History:
    def __init__(self, context: Context, frozen: clock.FrozenClock, seed: int) -> None:
        self.context = context
        self.sessions = context.sessions
        self.security = context.security
        self.settings = context.settings
        self.clock = frozen
        self.rng = random.Random(seed)
        self.customers: list[Customer] = []
        self.subscriptions: dict[str, Customer] = {}  # live ones, by id, with whose they are
        self.products: dict[str, Product] = {}
        self.variants: list[Product] = []
        self.admin: Principal | None = None
        self.actions: Counter[str] = Counter()
        self.worker: Counter[str] = Counter()
        self.later: list[tuple[datetime, int, Callable[[], None]]] = []  # scheduled actions, by time
        self.sequence = itertools.count()
        # Every sweep but the nightly snapshots, which are taken in one pass at the end (cheaper).
        self.sweeps = [s for s in worker.load_sweeps() if s.name != jobs.NIGHTLY]
        self.serial = itertools.count(1)

    # --- the days --------------------------------------------------------------------------------

    def live(self, start: datetime, end: datetime, on_day: Callable[[int, int, datetime], None] | None) -> int:
        days = max(1, math.ceil((end - start) / DAY))
        self.load_catalog()
        self.founders()
        for number in range(days):
            day = start + number * DAY
            until = min(day + DAY, end)
            self.plan_day(day, until, number / days)
            while self.later and self.later[0][0] < until:
                at, _, action = heapq.heappop(self.later)
                self.clock.set(max(at, self.clock.now()))
                self.act(action)
            self.clock.set(until)
            self.worker.update(worker.catch_up(self.context, sweeps=self.sweeps))
            with transaction(self.sessions) as session:  # still loading, and alive
                instance.mark_demo(session, demo.loading_mark())
            if on_day:
                on_day(number + 1, days, until)
        return days

    def at(self, moment: datetime, action: Callable[[], None]) -> None:
        heapq.heappush(self.later, (moment, next(self.sequence), action))

    def act(self, action: Callable[[], None]) -> None:
        """One customer's or the shop's action. A refusal the API would answer with a problem
        (a cancelled subscription changed, say) is counted and passed over, as a customer would."""
        try:
            action()
        except BillfoldError as refused:
            self.actions[f"refused: {refused.code}"] += 1

    def plan_day(self, day: datetime, until: datetime, progress: float) -> None:
        rng = self.rng
        span = (until - day).total_seconds()

        def sometime() -> datetime:
            return day + timedelta(seconds=rng.uniform(0, span))

        for _ in range(poisson(rng, SIGNUPS_FIRST_DAY + (SIGNUPS_LAST_DAY - SIGNUPS_FIRST_DAY) * progress)):
            self.at(sometime(), self.signup)
        for _ in range(poisson(rng, ORDERS_PER_DAY * (0.5 + progress))):
            self.at(sometime(), self.shop)
        daily = 1 / 30
        for subscription_id, customer in list(self.subscriptions.items()):
            roll = rng.random()
            for chance, action in (
                (MONTHLY_CHURN, self.cancel_at_period_end),
                (MONTHLY_CANCEL_NOW, self.cancel_now),
                (MONTHLY_CARD_FAILS, self.card_fails),
                (MONTHLY_SEATS_UP, self.seats_up),
                (MONTHLY_SEATS_DOWN, self.seats_down),
                (MONTHLY_ADDON, self.add_on),
            ):
                if roll < chance * daily:
                    self.at(sometime(), bind(action, subscription_id, customer))
                    break
                roll -= chance * daily

    # --- the shop as it starts ---------------------------------------------------------------------

    def load_catalog(self) -> None:
        with transaction(self.sessions) as session:
            for product in session.scalars(sa.select(Product).where(Product.is_active.is_(True))):
                if product.parent_product_id:
                    self.variants.append(product)
                else:
                    self.products[self.key_of(product)] = product
            admin = session.scalars(sa.select(User).where(User.user_type == "admin").order_by(User.created_at)).first()
            assert admin is not None, "the demo shop has an admin"
            self.admin = Principal(user=admin)

    @staticmethod
    def key_of(product: Product) -> str:
        """How the history names a demo product: its slug, and the interval for plans sold both ways."""
        return PRODUCT_KEYS.get(product.name, product.id)

    def founders(self) -> None:
        """The demo's own customers and organizations become the first subscribers."""
        with transaction(self.sessions) as session:
            users = {u.email.split("@")[0]: u for u in session.scalars(sa.select(User).where(User.user_type != "admin"))}
            organizations = {o.name: o for o in session.scalars(sa.select(Organization))}
            countries = {a.user_id or a.organization_id: a.country for a in session.scalars(
                sa.select(Address).where(Address.address_type == "billing", Address.is_default.is_(True)))}
        start = self.clock.now()
        people = [("emma.schneider", "community-pro"), ("james.whitfield", "team-plan/monthly"),
                  ("sofia.garcia", "business-plan/monthly"), ("haruto.sato", "starter-plan-jp"),
                  ("oliver.bennett", "team-plan/yearly")]
        for n, (handle, plan) in enumerate(people):
            user = users[handle]
            customer = Customer(user.id, countries.get(user.id, "US"), Principal(user=user))
            self.customers.append(customer)
            self.at(start + timedelta(hours=2 + 5 * n), bind(self.first_subscription, customer, plan, 1))
        teams = [("Nordlicht Software GmbH", "business-plan/yearly", 6), ("Harbor & Pine Analytics, Inc.", "team-plan/monthly", 8),
                 ("Atelier Bleu SARL", "business-plan/monthly", 2)]
        for n, (name, plan, seats) in enumerate(teams):
            organization = organizations[name]
            owner = next(u for u in users.values() if u.id == organization.owner_user_id)
            customer = Customer(owner.id, countries.get(organization.id, "US"), Principal(user=owner), organization.id)
            self.customers.append(customer)
            self.at(start + timedelta(days=1 + 3 * n, hours=10), bind(self.first_subscription, customer, plan, seats))

    # --- customers' actions ----------------------------------------------------------------------

    def signup(self) -> None:
        rng = self.rng
        country, _, plans, city, postal_code, phone = rng.choices(MARKETS, weights=[m[1] for m in MARKETS])[0]
        first, last = rng.choice(FIRST_NAMES[country]), rng.choice(LAST_NAMES[country])
        serial = next(self.serial)
        handle = f"{ascii_of(first)}.{ascii_of(last)}.{serial}"
        with transaction(self.sessions) as session:
            user = User(name=first, last_name=last, email=f"{handle}@example.net", user_type="individual",
                        phone=f"{phone}{rng.randrange(100000, 999999)}", is_verified=True, user_name=handle,
                        first_time=False)
            session.add(user)
            session.flush()
            for kind in ("billing", "shipping"):
                session.add(Address(user_id=user.id, address_type=kind, is_default=True, name=f"{first} {last}",
                                    line1=f"{rng.randrange(1, 240)} {rng.choice(STREETS)}", city=city,
                                    postal_code=postal_code, country=country, email=user.email, phone=user.phone))
        customer = Customer(user.id, country, Principal(user=user))
        self.customers.append(customer)
        self.actions["signups"] += 1
        plan = rng.choices(list(plans), weights=list(plans.values()))[0]
        if rng.random() < 0.12:  # some come for the shop, not a plan
            self.at(self.clock.now() + timedelta(minutes=rng.randrange(5, 90)), self.shop_for(customer))
            return
        self.first_subscription(customer, plan, 1)

    def save_card(self, customer: Customer, token: str) -> str:
        with transaction(self.sessions) as session:
            method = methods.save_method(session, self.security, customer.owner, token=token, make_default=True)
            return method.id

    def first_subscription(self, customer: Customer, plan: str, seats: int) -> None:
        product = self.products[plan]
        rng = self.rng
        if not (product.trial_days and rng.random() < TRIAL_WITHOUT_CARD):
            token = DECLINED_CARD if rng.random() < FIRST_CARD_DECLINED else rng.choice(GOOD_CARDS)
            customer.method_id = self.save_card(customer, token)
            if token != DECLINED_CARD:
                customer.good_method_id = customer.method_id
        with transaction(self.sessions) as session:
            started = subscriptions.subscribe(
                session, self.security, self.settings, customer.principal, product_id=product.id, quantity=seats,
                organization_id=customer.organization_id,
            )
        self.actions["subscriptions started"] += 1
        if started.payment_id:
            charged = charging.settle(self.sessions, self.security, self.settings, started.payment_id, by=customer.user_id)
            if not charged.succeeded:
                self.actions["first charges declined"] += 1
                return
        self.subscriptions[started.subscription_id] = customer

    def status(self, subscription_id: str) -> str:
        with transaction(self.sessions) as session:
            status = session.scalar(sa.select(Subscription.status).where(Subscription.id == subscription_id))
        if status == "cancelled":
            self.subscriptions.pop(subscription_id, None)
        return status or "cancelled"

    def cancel_at_period_end(self, subscription_id: str, customer: Customer) -> None:
        if self.status(subscription_id) not in ("active", "trialing"):
            return
        with transaction(self.sessions) as session:
            subscriptions.cancel(session, customer.principal, subscription_id, at_period_end=True)
        self.subscriptions.pop(subscription_id, None)
        self.actions["cancellations at period end"] += 1

    def cancel_now(self, subscription_id: str, customer: Customer) -> None:
        if self.status(subscription_id) == "cancelled":
            return
        with transaction(self.sessions) as session:
            subscriptions.cancel(session, customer.principal, subscription_id, at_period_end=False)
        self.subscriptions.pop(subscription_id, None)
        self.actions["cancellations now"] += 1

    def change(self, subscription_id: str, customer: Customer, **change: Any) -> Result | None:
        with transaction(self.sessions) as session:
            changed = subscriptions.change(
                session, self.security, self.settings, customer.principal, subscription_id, **change
            )
        if changed.payment_id:
            return charging.settle(self.sessions, self.security, self.settings, changed.payment_id, by=customer.user_id).result
        return None

    def card_fails(self, subscription_id: str, customer: Customer) -> None:
        """The customer's card runs dry: the next renewal is declined and dunning begins. Some
        customers put a working card in before the last retry; the rest are cancelled."""
        if self.status(subscription_id) != "active":
            return
        failing = self.save_card(customer, FAILING_CARD)
        self.change(subscription_id, customer, payment_method_id=failing)
        self.actions["cards that began failing"] += 1
        if self.rng.random() < RECOVERS:
            with transaction(self.sessions) as session:
                period_end = session.scalar(sa.select(Subscription.current_period_end).where(Subscription.id == subscription_id))
            assert period_end is not None
            fixed_at = period_end + timedelta(days=self.rng.uniform(0.5, 6.5))
            self.at(fixed_at, bind(self.fix_card, subscription_id, customer))

    def fix_card(self, subscription_id: str, customer: Customer) -> None:
        if self.status(subscription_id) == "cancelled":
            return
        good = self.save_card(customer, self.rng.choice(GOOD_CARDS))
        customer.method_id = customer.good_method_id = good
        self.change(subscription_id, customer, payment_method_id=good)
        self.actions["cards fixed"] += 1

    def seats_up(self, subscription_id: str, customer: Customer) -> None:
        if self.status(subscription_id) != "active" or self.plan_of(subscription_id) == "community-pro":
            return
        outcome = self.change(subscription_id, customer, quantity=self.seats(subscription_id) + self.rng.choice((1, 1, 2, 3)))
        declined = outcome in (Result.FAILED, Result.CANCELLED)
        self.actions["seat changes declined" if declined else "seats added"] += 1

    def seats_down(self, subscription_id: str, customer: Customer) -> None:
        seats = self.seats(subscription_id)
        if seats < 2 or self.status(subscription_id) != "active":
            return
        self.change(subscription_id, customer, quantity=seats - 1)
        self.actions["seats removed"] += 1

    def add_on(self, subscription_id: str, customer: Customer) -> None:
        plan = self.plan_of(subscription_id)
        if not plan.startswith("team-plan") or customer.good_method_id is None or self.status(subscription_id) != "active":
            return
        if any(c is customer and self.plan_of(s) == "priority-support" for s, c in self.subscriptions.items()):
            return
        self.first_subscription(customer, "priority-support", 1)
        self.actions["add-ons"] += 1

    def seats(self, subscription_id: str) -> int:
        with transaction(self.sessions) as session:
            return subscriptions.billing_of(session, [subscription_id])[subscription_id].quantity

    def plan_of(self, subscription_id: str) -> str:
        with transaction(self.sessions) as session:
            product_id = session.scalar(sa.select(Subscription.product_id).where(Subscription.id == subscription_id))
        return next((key for key, p in self.products.items() if p.id == product_id), "")

    def shop(self) -> None:
        individuals = [c for c in self.customers if c.organization_id is None]
        if individuals:
            self.shop_for(self.rng.choice(individuals))()

    def shop_for(self, customer: Customer) -> Callable[[], None]:
        def buy() -> None:
            rng = self.rng
            slug, _, quantities = rng.choices(SHOP, weights=[s[1] for s in SHOP])[0]
            product = rng.choice(self.variants) if slug == "logo-tee" else self.products[slug]
            if customer.good_method_id is None:
                customer.method_id = customer.good_method_id = self.save_card(customer, rng.choice(GOOD_CARDS))
            items = [orders.ItemIn(product.id, rng.choice(quantities))]
            if product.currency == "USD" and rng.random() < 0.3:
                items.append(orders.ItemIn(self.products["sticker-pack"].id, 1))
            with transaction(self.sessions) as session:
                order = orders.create_order(session, self.settings, customer.principal, items=items)
            outcome = checkout.checkout(
                self.sessions, self.security, customer.principal, order.id,
                PayWith(payment_method_id=customer.good_method_id),
            )
            self.actions["orders paid" if outcome.succeeded else "orders not paid"] += 1
            if outcome.succeeded and outcome.payment_id and rng.random() < REFUNDED_ORDERS:
                self.at(self.clock.now() + timedelta(days=rng.uniform(1, 20)), bind(self.refund, outcome.payment_id))

        return buy

    def refund(self, payment_id: str) -> None:
        """The shop gives money back: all of it, or part (a damaged mug, a late parcel)."""
        assert self.admin is not None
        with transaction(self.sessions) as session:
            paid = session.scalar(sa.select(Payment.amount_cents).where(Payment.id == payment_id)) or 0
        partial = self.rng.random() < 0.4
        amount = max(1, paid // 2) if partial else None
        reason = "Arrived damaged: half refunded" if partial else "Customer asked for a refund"
        refunds.refund(self.sessions, self.security, self.admin, payment_id, amount_cents=amount, reason=reason)
        self.actions["refunds"] += 1


def build_history(
    context: Context,
    *,
    months: int,
    seed: int = 2026,
    on_day: Callable[[int, int, datetime], None] | None = None,
    on_snapshot: Callable[[int, int, date], None] | None = None,
) -> HistoryReport:
    """Load the demo shop ``months`` before now and live through every day to now (see the
    module's docstring). The database must be empty; the caller runs the command, not a
    transaction: each action commits as it would through the API. The demo is marked
    ``loading`` with the shop and ``loaded`` in the last transaction (see demo/shop.py)."""
    if months < 1:
        raise ValueError("a history is at least a month long")
    # The history's mail (receipts, dunning, trial ends: thousands in a year) goes to the mail
    # folder, never to an SMTP server that may be configured: the customers are made up.
    context = replace(context, settings=context.settings.model_copy(update={"smtp_host": None}))
    worker.load_sweeps()
    end = clock.now()
    start = add_months(end, -months)
    frozen = clock.FrozenClock(start)
    with clock.using(frozen):
        with transaction(context.sessions) as session:
            demo.load_demo(session, complete=False)
        history = History(context, frozen, seed)
        days = history.live(start, end, on_day)
    report = HistoryReport(start=start, end=end, days=days, actions=history.actions, worker=history.worker)
    report.snapshot_days = jobs.fill_history(context.sessions, start.date(), jobs.yesterday(end), on_day=on_snapshot)
    with transaction(context.sessions) as session:
        if not session.scalar(sa.select(sa.func.count()).select_from(UserCohort)):
            cohorts.rebuild(session)
        report.totals = totals(session)
        instance.mark_demo(session, instance.DEMO_LOADED)  # last: the history is complete
    return report


def totals(session: Session) -> dict[str, int]:
    def count(model: Any, *where: Any) -> int:
        return session.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0

    return {
        "customers": count(User, User.user_type != "admin"),
        "subscriptions active": count(Subscription, Subscription.status == "active"),
        "subscriptions trialing": count(Subscription, Subscription.status == "trialing"),
        "subscriptions past due": count(Subscription, Subscription.status == "past_due"),
        "subscriptions cancelled": count(Subscription, Subscription.status == "cancelled"),
        "orders": count(Order),
        "invoices": count(Invoice),
        "payments completed": count(Payment, Payment.status.in_(("completed", "refunded"))),
        "payments failed": count(Payment, Payment.status == "failed"),
        "refunds": count(Refund),
        "memberships": count(UserMembership),
        "analytics snapshot rows": count(AnalyticsSnapshot),
    }


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson-distributed count (Knuth's method; the means here are small)."""
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def bind(action: Callable[..., None], *args: Any) -> Callable[[], None]:
    return lambda: action(*args)


def ascii_of(name: str) -> str:
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
