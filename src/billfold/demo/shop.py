"""Demo data: a small, realistic SaaS and merchandise shop to look at and try things on.

``load_demo`` fills an empty database with a sandbox payment provider, a category tree, a
catalog (plans in USD, EUR and JPY, add-ons, a T-shirt with variants, an e-book, a course), three
membership types, customers in several countries, three organizations with their members, and
billing and shipping addresses. The data is the same every time apart from ids and timestamps.
It flushes and never commits: the caller's transaction does.

Loading is all or nothing. The shop alone is one transaction. A history commits day by day, so
the transaction that loads the shop also writes the mark ``demo = loading`` (``instance_marks``),
and the history's last transaction turns it into ``loaded``. A database left ``loading`` by a load
that was interrupted holds half a history: ``unfinished_load`` finds it and ``start_over`` empties
the database, so the next load equals a clean one.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold import instance
from billfold.kit.errors import Conflict
from billfold.memberships.service import PRODUCT_KEY
from billfold.models import (
    Address,
    Base,
    BillingClock,
    InstanceMark,
    MembershipType,
    Organization,
    OrganizationUser,
    PaymentProvider,
    Product,
    ProductCategory,
    User,
)
from billfold.wiring import wire

IMAGES = "https://example.com/demo/images"

# Every table whose rows mean "someone already set this database up".
_SETUP_MODELS = (User, Organization, Product, ProductCategory, MembershipType, PaymentProvider)

# (name, description, sort_order, [(child name, description), ...])
CATEGORIES = [
    ("Software", "Billfold Cloud plans and what goes with them.", 1,
     [("Plans", "Monthly and yearly subscriptions."), ("Add-ons", "Extras for any plan.")]),
    ("Merchandise", "Things to wear and use.", 2,
     [("Apparel", "T-shirts and hoodies."), ("Accessories", "Mugs, stickers and the like.")]),
    ("Learning", "Learn to run billing well.", 3,
     [("Courses", "Workshops and video courses."), ("Books", "E-books and guides."),
      ("Memberships", "Passes and communities that open features for a while, or for good.")]),
]

# (category, name, description, product_type, price in minor units, currency, billing_interval,
#  trial_days, is_active, slug). A JPY price is whole yen: ¥1,200 is 1200.
PRODUCTS = [
    ("Plans", "Team plan (monthly)", "Up to 10 seats, unlimited invoices, email support.",
     "subscription", 2900, "USD", "monthly", 14, True, "team-plan"),
    ("Plans", "Team plan (yearly)", "Up to 10 seats, unlimited invoices; two months free.",
     "subscription", 29000, "USD", "yearly", 14, True, "team-plan"),
    ("Plans", "Business plan (monthly)", "Unlimited seats, multiple providers, priority support.",
     "subscription", 7900, "EUR", "monthly", 0, True, "business-plan"),
    ("Plans", "Business plan (yearly)", "Unlimited seats, multiple providers; billed once a year.",
     "subscription", 79000, "EUR", "yearly", 0, True, "business-plan"),
    ("Plans", "Starter plan Japan (monthly)", "One seat, invoices in Japanese yen.",
     "subscription", 1200, "JPY", "monthly", 7, True, "starter-plan-jp"),
    ("Plans", "Solo plan (monthly, retired)", "The original one-seat plan; no longer sold.",
     "subscription", 900, "USD", "monthly", 0, False, "solo-plan"),
    ("Add-ons", "Priority support", "Four-hour first response on business days.",
     "subscription", 4900, "USD", "monthly", 0, True, "priority-support"),
    ("Add-ons", "Onboarding session", "Two hours with an engineer to set up your providers and webhooks.",
     "service", 25000, "USD", None, None, True, "onboarding"),
    ("Accessories", "Enamel mug", "350 ml white enamel mug with the Billfold logo.",
     "physical", 1400, "USD", None, None, True, "enamel-mug"),
    ("Accessories", "Sticker pack", "Six vinyl stickers, weatherproof.",
     "physical", 500, "USD", None, None, True, "sticker-pack"),
    ("Courses", "Billing for SaaS: live workshop", "A half-day online workshop on pricing, dunning and tax.",
     "service", 19900, "USD", None, None, True, "billing-workshop"),
    ("Books", "The Subscription Field Guide (e-book)", "PDF and EPUB, 180 pages, free updates.",
     "digital", 2400, "EUR", None, None, True, "field-guide"),
    ("Memberships", "Learning pass (one year)", "A year of every course and workshop.",
     "digital", 14900, "USD", None, None, True, "learning-pass"),
    ("Memberships", "Community pro (monthly)", "The private community and monthly office hours.",
     "subscription", 1200, "EUR", "monthly", 0, True, "community-pro"),
    ("Memberships", "Founding membership", "Everything, for good: for those who back us early.",
     "digital", 49900, "USD", None, None, True, "founding-member"),
]

# Products that sell a membership type (their metadata names it; memberships/service.py).
MEMBERSHIP_PRODUCTS = {
    "learning-pass": "Learning pass", "community-pro": "Community pro", "founding-member": "Founding member",
}

TSHIRT = {
    "category": "Apparel",
    "name": "Billfold logo T-shirt",
    "description": "Organic cotton, unisex fit, screen-printed logo.",
    "price_cents": 2500,
    "currency": "USD",
    "slug": "logo-tee",
    "sizes": ["S", "M", "L", "XL"],
    "colours": ["Navy", "Heather grey"],
    "surcharge": {"XL": 200},  # XL uses more fabric and costs more
}

# (name, description, duration_type, duration_days, price, currency, features)
MEMBERSHIP_TYPES = [
    ("Founding member", "Everything, for good: for those who backed us early.", "lifetime", None,
     49900, "USD",
     ["All courses", "All e-books", "Private community", "Founders' wall"]),
    ("Learning pass", "A year of every course and workshop.", "fixed", 365, 14900, "USD",
     ["All courses", "Live workshops", "Certificate of completion"]),
    ("Community pro", "The community, renewed every month.", "recurring", 30, 1200, "EUR",
     ["Private community", "Monthly office hours", "Member discounts"]),
]

# key: (name, last_name, email, user_type, phone, is_verified)
USERS = {
    "admin": ("Maya", "Lindqvist", "maya.lindqvist@example.com", "admin", "+46701234567", True),
    "emma": ("Emma", "Schneider", "emma.schneider@example.org", "individual", "+4915123456789", True),
    "james": ("James", "Whitfield", "james.whitfield@example.com", "individual", "+15035550142", True),
    "sofia": ("Sofía", "García", "sofia.garcia@example.org", "individual", "+34612345678", True),
    "haruto": ("Haruto", "Sato", "haruto.sato@example.com", "individual", "+819012345678", True),
    "chloe": ("Chloé", "Martin", "chloe.martin@example.org", "individual", "+33612345678", False),
    "oliver": ("Oliver", "Bennett", "oliver.bennett@example.com", "individual", "+447700900123", True),
    "jonas": ("Jonas", "Weber", "jonas.weber@example.com", "business", "+4940123456789", True),
    "lena": ("Lena", "Hoffmann", "lena.hoffmann@example.com", "business", "+4915212345678", True),
    "tom": ("Tom", "Fischer", "tom.fischer@example.com", "business", "+4917612345678", False),
    "priya": ("Priya", "Raman", "priya.raman@example.org", "business", "+14155550199", True),
    "marcus": ("Marcus", "Chen", "marcus.chen@example.org", "business", "+14155550123", True),
    "camille": ("Camille", "Dubois", "camille.dubois@example.com", "business", "+33145678901", True),
}

# key: (name, owner, business_email, business_phone, tax_id, {member: role})
ORGANIZATIONS = {
    "nordlicht": ("Nordlicht Software GmbH", "jonas", "billing@nordlicht.example.com", "+4940600070",
                  "DE287654321", {"lena": "billing", "tom": "member", "emma": "admin"}),
    "harbor": ("Harbor & Pine Analytics, Inc.", "priya", "accounts@harborpine.example.org", "+14155550100",
               "94-3182746", {"marcus": "admin", "james": "member"}),
    "atelier": ("Atelier Bleu SARL", "camille", "compta@atelierbleu.example.com", "+33145678900",
                "FR40853914567", {"chloe": "billing"}),
}

# (owner key, address_type, is_default, line1, line2, city, state, postal_code, ISO 3166-1 country);
# the address's name is its owner's.
ADDRESSES = [
    ("admin", "billing", True, "Drottninggatan 53", None, "Stockholm", None, "111 21", "SE"),
    ("emma", "billing", True, "Torstraße 109", None, "Berlin", None, "10119", "DE"),
    ("emma", "shipping", True, "Torstraße 109", "3. OG", "Berlin", None, "10119", "DE"),
    ("james", "billing", True, "1120 SW 5th Ave", "Suite 300", "Portland", "OR", "97204", "US"),
    ("james", "shipping", True, "2834 NE Alberta St", None, "Portland", "OR", "97211", "US"),
    ("james", "shipping", False, "88 Lakeview Rd", None, "Bend", "OR", "97701", "US"),
    ("sofia", "billing", True, "Calle de Alcalá 42", "4º B", "Madrid", "Madrid", "28014", "ES"),
    ("sofia", "shipping", True, "Calle de Alcalá 42", "4º B", "Madrid", "Madrid", "28014", "ES"),
    ("haruto", "billing", True, "2-21-1 Shibuya", "Hikarie 11F", "Shibuya-ku", "Tokyo", "150-8510", "JP"),
    ("haruto", "shipping", True, "1-9-1 Marunouchi", None, "Chiyoda-ku", "Tokyo", "100-0005", "JP"),
    ("chloe", "billing", True, "14 Rue de la République", None, "Lyon", None, "69002", "FR"),
    ("oliver", "billing", True, "27 Old Gloucester St", None, "London", None, "WC1N 3AX", "GB"),
    ("oliver", "shipping", True, "27 Old Gloucester St", None, "London", None, "WC1N 3AX", "GB"),
    ("priya", "shipping", True, "455 Valencia St", "Apt 6", "San Francisco", "CA", "94103", "US"),
    ("nordlicht", "billing", True, "Große Elbstraße 145", None, "Hamburg", None, "22767", "DE"),
    ("nordlicht", "shipping", True, "Große Elbstraße 145", "2. Etage", "Hamburg", None, "22767", "DE"),
    ("nordlicht", "shipping", False, "Leopoldstraße 28", None, "München", None, "80802", "DE"),
    ("harbor", "billing", True, "548 Market St", "PMB 72301", "San Francisco", "CA", "94104", "US"),
    ("harbor", "shipping", True, "600 California St", "Floor 11", "San Francisco", "CA", "94108", "US"),
    ("atelier", "billing", True, "12 Rue des Petites Écuries", None, "Paris", None, "75010", "FR"),
    ("atelier", "shipping", True, "12 Rue des Petites Écuries", "Bâtiment B", "Paris", None, "75010", "FR"),
]


def is_empty(session: Session) -> bool:
    """True when no users, organizations, products, categories, membership types or payment
    providers exist: nobody has set this database up yet."""
    return all(session.execute(sa.select(model.id).limit(1)).first() is None for model in _SETUP_MODELS)


def load_demo(session: Session, *, complete: bool = True) -> dict[str, int]:
    """Load the demo shop into an empty database; returns how many of each thing were made.
    ``complete=False``: a history follows, and marks the demo ``loaded`` when it is done."""
    wire()  # the history pays orders: they get their invoices and memberships (billfold.wiring)
    if not is_empty(session):
        raise Conflict("the database already has data; demo data is only loaded into an empty database")
    instance.mark_demo(session, instance.DEMO_LOADED if complete else loading_mark())

    session.add(PaymentProvider(
        id="sandbox", display_name="Sandbox", picture=f"{IMAGES}/providers/sandbox.svg", is_active=True,
        supports_subscriptions=True, supports_saved_methods=True, config={"kind": "sandbox"},
    ))

    categories: dict[str, ProductCategory] = {}
    for name, description, order, _ in CATEGORIES:
        categories[name] = ProductCategory(
            name=name, description=description, sort_order=order,
            image=f"{IMAGES}/categories/{_slug(name)}.jpg",
        )
    session.add_all(categories.values())
    session.flush()
    for parent, _, _, children in CATEGORIES:
        for order, (name, description) in enumerate(children, start=1):
            categories[name] = ProductCategory(
                name=name, description=description, parent_id=categories[parent].id, sort_order=order,
                image=f"{IMAGES}/categories/{_slug(name)}.jpg",
            )
        session.add_all(categories[name] for name, _ in children)
    session.flush()  # the categories get their ids, which the products name

    membership_types = {
        name: MembershipType(name=name, description=description, duration_type=duration, duration_days=days,
                             price_cents=price, currency=currency, features=features)
        for name, description, duration, days, price, currency, features in MEMBERSHIP_TYPES
    }
    session.add_all(membership_types.values())
    session.flush()  # the membership types get their ids, which the products selling them name

    products = [
        Product(
            name=name, description=description, product_type=kind, is_recurring=kind == "subscription",
            price_cents=price, currency=currency, billing_interval=interval, trial_days=trial or 0,
            is_active=active, category_id=categories[category].id, image=f"{IMAGES}/products/{slug}.jpg",
            gallery=[f"{IMAGES}/products/{slug}-{n}.jpg" for n in (1, 2)],
            metadata_=_product_metadata(slug, kind, membership_types),
        )
        for category, name, description, kind, price, currency, interval, trial, active, slug in PRODUCTS
    ]
    tee = TSHIRT
    shirt = Product(
        name=tee["name"], description=tee["description"], product_type="physical",
        price_cents=tee["price_cents"], currency=tee["currency"], category_id=categories[tee["category"]].id,
        image=f"{IMAGES}/products/{tee['slug']}.jpg",
        gallery=[f"{IMAGES}/products/{tee['slug']}-{_slug(c)}.jpg" for c in tee["colours"]],
        variations=[{"name": "size", "options": tee["sizes"]}, {"name": "colour", "options": tee["colours"]}],
        metadata_={"sku": _sku(tee["slug"])},
    )
    products.append(shirt)
    session.add_all(products)
    session.flush()  # the T-shirt gets its id, which its variants name

    variants = [
        Product(
            name=f"{tee['name']}, {colour}, {size}", description=tee["description"], product_type="physical",
            price_cents=tee["price_cents"] + tee["surcharge"].get(size, 0), currency=tee["currency"],
            image=f"{IMAGES}/products/{tee['slug']}-{_slug(colour)}.jpg", category_id=shirt.category_id,
            parent_product_id=shirt.id,
            metadata_={"size": size, "colour": colour, "sku": _sku(tee["slug"], colour, size)},
        )
        for colour in tee["colours"]
        for size in tee["sizes"]
    ]
    session.add_all(variants)


    users = {
        key: User(name=name, last_name=last, email=email, user_type=kind, phone=phone, is_verified=verified,
                  user_name=email.split("@")[0], picture=f"{IMAGES}/avatars/{key}.png", first_time=False)
        for key, (name, last, email, kind, phone, verified) in USERS.items()
    }
    session.add_all(users.values())
    session.flush()

    organizations = {
        key: Organization(name=name, owner_user_id=users[owner].id, business_email=email,
                          business_phone=phone, tax_id=tax_id, address=_one_line(key))
        for key, (name, owner, email, phone, tax_id, _) in ORGANIZATIONS.items()
    }
    session.add_all(organizations.values())
    session.flush()

    members = [
        OrganizationUser(organization_id=organizations[key].id, user_id=users[user].id, role=role)
        for key, (_, owner, _, _, _, roles) in ORGANIZATIONS.items()
        for user, role in {owner: "owner", **roles}.items()
    ]
    session.add_all(members)

    addresses = []
    for owner, kind, default, line1, line2, city, state, postal_code, country in ADDRESSES:
        if owner in users:
            user, organization = users[owner], None
            name, phone, email = f"{user.name} {user.last_name}", user.phone, user.email
        else:
            user, organization = None, organizations[owner]
            name, phone, email = organization.name, organization.business_phone, organization.business_email
        addresses.append(Address(
            user_id=user and user.id, organization_id=organization and organization.id, address_type=kind,
            is_default=default, name=name, line1=line1, line2=line2, city=city, state=state,
            postal_code=postal_code, country=country, phone=phone, email=email,
        ))
    session.add_all(addresses)
    session.flush()

    return {
        "products": len(products) + len(variants),
        "product categories": len(categories),
        "membership types": len(MEMBERSHIP_TYPES),
        "customers": sum(1 for user in users.values() if user.user_type != "admin"),
        "admin users": sum(1 for user in users.values() if user.user_type == "admin"),
        "organizations": len(organizations),
        "organization members": len(members),
        "addresses": len(addresses),
        "payment providers": 1,
    }


# An interrupted load

STALE_AFTER = timedelta(minutes=2)
"""A load on another machine whose mark has not moved for this long is taken as interrupted."""


def loading_mark() -> str:
    """The demo mark while a history is being made here: which process makes it."""
    return f"{instance.DEMO_LOADING} {socket.gethostname()} {os.getpid()}"


@dataclass(frozen=True)
class Unfinished:
    """A demo load that began and did not finish; ``running``: its process still runs."""

    running: bool
    by: str


def unfinished_load(session: Session) -> Unfinished | None:
    """The demo load this database holds half of, or None (none began, or it finished)."""
    row = instance.read(session, "demo")
    if row is None or not (row.value or "").startswith(instance.DEMO_LOADING):
        return None
    _, host, pid = ((row.value or "") + "  ").split(" ", 2)
    pid = pid.strip()
    if host == socket.gethostname() and pid.isdigit():
        return Unfinished(running=_alive(int(pid)), by=f"process {pid}")
    return Unfinished(running=instance.real_now() - row.at < STALE_AFTER, by=f"process {pid} on {host}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_over(session: Session) -> None:
    """Empty every table of an unfinished demo load (children first), keeping the billing clock
    and the worker's heartbeat, so the next load starts from an empty database."""
    keep = {BillingClock.__tablename__, InstanceMark.__tablename__}
    mariadb = session.get_bind().dialect.name in ("mysql", "mariadb")
    if mariadb:  # InnoDB checks foreign keys row by row, even within one DELETE
        session.execute(sa.text("SET FOREIGN_KEY_CHECKS = 0"))
    try:
        for table in reversed(Base.metadata.sorted_tables):
            if table.name not in keep:
                session.execute(table.delete())
        session.execute(sa.delete(InstanceMark).where(InstanceMark.name == "demo"))
    finally:
        if mariadb:
            session.execute(sa.text("SET FOREIGN_KEY_CHECKS = 1"))


def _product_metadata(slug: str, kind: str, membership_types: dict[str, MembershipType]) -> dict[str, Any] | None:
    if kind == "physical":
        return {"sku": _sku(slug)}
    if slug in MEMBERSHIP_PRODUCTS:
        return {PRODUCT_KEY: membership_types[MEMBERSHIP_PRODUCTS[slug]].id}
    return None


def _slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def _sku(*parts: str) -> str:
    return "-".join(_slug(part).upper() for part in parts)


def _one_line(organization: str) -> str:
    """The organization's default billing address as one line, for ``organizations.address``."""
    row: Any = next(a for a in ADDRESSES if a[0] == organization and a[1] == "billing" and a[2])
    _, _, _, line1, line2, city, state, postal_code, country = row
    town = f"{city}, {state} {postal_code}" if country == "US" else f"{postal_code} {city}"
    return ", ".join(part for part in (line1, line2, town, country) if part)
