"""Billing and shipping addresses of a user or an organization.

A ``both`` address is a billing address and a shipping address. Defaults are kept so that, for
each kind (billing, shipping), exactly one address is *the* default whenever the owner has an
address of that kind:
- at most one address of each ``address_type`` has ``is_default``;
- the default billing address is the default ``billing`` address, else the default ``both``
  address (likewise for shipping): a default of the specific kind wins;
- the first address of a kind becomes its default by itself; making an address the default takes
  the default from the one before (making a ``both`` address the default makes it the default for
  billing and shipping); deleting a default, or changing its type, promotes the oldest remaining
  address of that kind, preferring one of the specific type.

A user's addresses are those with their ``user_id`` and no ``organization_id``; an
organization's are those with its ``organization_id``. Changes to one owner's addresses run one at
a time (the owner's row is locked), so two requests cannot both make a default. Services never
commit; every change writes an audit row.
"""

from __future__ import annotations

from typing import Any

import pycountry
import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.accounts.access import Owner, lock_owner
from billfold.accounts.service import normalize_email
from billfold.audit import audit
from billfold.kit.db.dialects import for_update
from billfold.kit.errors import Conflict, InvalidInput, NotFound
from billfold.kit.ids import has_prefix
from billfold.models import Address, Invoice, Order
from billfold.models.accounts import ADDRESS_TYPES

COUNTRY_CODES = tuple(sorted(country.alpha_2 for country in pycountry.countries))
KINDS = ("billing", "shipping")
COVERS = {"billing": ("billing",), "shipping": ("shipping",), "both": ("billing", "shipping")}
REQUIRED = ("address_type", "name", "line1", "city", "postal_code", "country")
OPTIONAL = ("line2", "state", "phone", "email")


class AddressInUse(Conflict):
    code = "address_in_use"
    title = "The address is on orders or invoices"


class DefaultRequired(Conflict):
    code = "default_required"
    title = "An address of this kind must be the default"


def country_code(raw: str) -> str:
    """The ISO 3166-1 alpha-2 code, upper-case; InvalidInput for anything else."""
    code = raw.strip().upper()
    if code not in COUNTRY_CODES:
        detail = f"{raw!r} is not an ISO 3166-1 alpha-2 country code (such as GB, US or DE)"
        raise InvalidInput(detail, errors=[{"field": "country", "message": detail}])
    return code


def _clean(fields: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    unknown = sorted(set(fields) - set(REQUIRED) - set(OPTIONAL) - {"is_default"})
    missing = [
        f
        for f in REQUIRED
        if (creating and f not in fields) or (f in fields and not str(fields[f] or "").strip())
    ]
    if unknown or missing:
        errors = [{"field": f, "message": "not an address field"} for f in unknown]
        errors += [{"field": f, "message": "required, and must not be blank"} for f in missing]
        raise InvalidInput("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors)
    cleaned = dict(fields)
    if "address_type" in cleaned and cleaned["address_type"] not in ADDRESS_TYPES:
        detail = f"address_type must be one of {', '.join(ADDRESS_TYPES)}"
        raise InvalidInput(detail, errors=[{"field": "address_type", "message": detail}])
    if "country" in cleaned:
        cleaned["country"] = country_code(cleaned["country"])
    if cleaned.get("email"):
        cleaned["email"] = normalize_email(cleaned["email"], "email")
    for field in ("name", "line1", "city", "postal_code"):
        if field in cleaned:
            cleaned[field] = cleaned[field].strip()
    return cleaned


def addresses_of(owner: Owner) -> sa.Select[tuple[Address]]:
    return sa.select(Address).where(owner.owns(Address))


def get_address(session: Session, owner: Owner, address_id: str, *, lock: bool = False) -> Address:
    """One of the owner's addresses; NotFound for any other id, whoever it belongs to."""
    address = None
    if has_prefix(address_id, "adr"):
        statement = addresses_of(owner).where(Address.id == address_id)
        address = session.scalars(_latest(session, statement) if lock else statement).one_or_none()
    if address is None:
        raise NotFound(f"no address {address_id}")
    return address


def _latest(session: Session, statement: sa.Select[tuple[Address]]) -> sa.Select[tuple[Address]]:
    # A locking read sees the latest committed rows even under MariaDB's REPEATABLE READ, where a
    # plain read after waiting for the owner's lock would still see the snapshot from before it.
    return for_update(statement, session).execution_options(populate_existing=True)


def _defaults(session: Session, owner: Owner) -> list[Address]:
    """The owner's default addresses (a few), not all of them: an owner with thousands of
    addresses would otherwise read and lock every one on each address written."""
    return list(session.scalars(_latest(session, addresses_of(owner).where(Address.is_default.is_(True)).order_by(Address.id))))


def _addresses(session: Session, owner: Owner) -> list[Address]:
    """All the owner's addresses, read and locked by the owner's index alone. (A locking read that
    also names the type, or takes the first by id, may walk another index on MariaDB and lock other
    owners' rows: a burst of first addresses then waited on each other.)"""
    return list(session.scalars(_latest(session, addresses_of(owner).order_by(Address.id))))


def defaults_of(session: Session, owner: Owner) -> dict[str, str]:
    """The id of the default address of each kind the owner has, such as
    ``{"billing": "adr_…", "shipping": "adr_…"}``."""
    return {kind: address.id for kind, address in default_addresses(session, owner).items()}


def default_addresses(session: Session, owner: Owner) -> dict[str, Address]:
    """``defaults_of``'s addresses themselves, read in one statement."""
    rows = session.scalars(
        sa.select(Address).where(owner.owns(Address), Address.is_default.is_(True)).order_by(Address.id)
    ).all()
    by_type: dict[str, Address] = {}
    for address in rows:
        by_type.setdefault(address.address_type, address)
    return {
        kind: by_type.get(kind) or by_type["both"] for kind in KINDS if kind in by_type or "both" in by_type
    }


def create_address(session: Session, owner: Owner, fields: dict[str, Any]) -> Address:
    cleaned = _clean(fields, creating=True)
    make_default = bool(cleaned.pop("is_default", False))
    lock_owner(session, owner)
    address = Address(
        user_id=owner.user_id, organization_id=owner.organization_id, is_default=False, **cleaned
    )
    session.add(address)
    session.flush()
    if make_default:
        _make_default(session, owner, address)
    else:
        _settle_defaults(session, owner, chosen=None)
    audit(
        session,
        "address",
        address.id,
        "created",
        address_type=address.address_type,
        is_default=address.is_default,
        **owner.data(),
    )
    return address


def update_address(session: Session, owner: Owner, address_id: str, changes: dict[str, Any]) -> Address:
    cleaned = _clean(changes, creating=False)
    default = cleaned.pop("is_default", None)
    lock_owner(session, owner)
    address = get_address(session, owner, address_id, lock=True)
    if default is False and address.is_default:
        raise DefaultRequired(
            f"{address.id} is a default address; to change the default, make another address the default",
            errors=[{"field": "is_default", "message": "make another address the default instead"}],
        )
    was_default = address.is_default
    changed = sorted(f for f, v in cleaned.items() if getattr(address, f) != v)
    for field in changed:
        setattr(address, field, cleaned[field])
    if "address_type" in changed:
        address.is_default = False  # it joins its new kind as a new address would, unless made the default
    session.flush()
    if default is True:
        _make_default(session, owner, address)
    elif "address_type" in changed:
        _settle_defaults(session, owner, chosen=None)
    if address.is_default != was_default:
        changed.append("is_default")
    if changed:
        audit(
            session,
            "address",
            address.id,
            "updated",
            fields=changed,
            is_default=address.is_default,
            **owner.data(),
        )
    return address


def delete_address(session: Session, owner: Owner, address_id: str) -> None:
    """Delete an address no order or invoice uses; a default passes to another address."""
    lock_owner(session, owner)
    address = get_address(session, owner, address_id, lock=True)
    used = (
        session.scalar(
            sa.select(sa.func.count())
            .select_from(Order)
            .where(sa.or_(Order.billing_address_id == address.id, Order.shipping_address_id == address.id))
        )
        or 0
    )
    used += (
        session.scalar(
            sa.select(sa.func.count()).select_from(Invoice).where(Invoice.billing_address_id == address.id)
        )
        or 0
    )
    if used:
        raise AddressInUse(
            f"{address.id} is on {used} order(s) or invoice(s), which keep the address they were issued to; "
            "it cannot be deleted, but you can make another address the default"
        )
    session.delete(address)
    session.flush()
    _settle_defaults(session, owner, chosen=None)
    audit(session, "address", address_id, "deleted", **owner.data())


def _make_default(session: Session, owner: Owner, address: Address) -> None:
    """Make ``address`` the default of every kind it covers, taking it from the addresses that
    were (a billing address leaves a ``both`` default in place: it stays the shipping default)."""
    taken_from = set(COVERS[address.address_type]) | {address.address_type}
    for other in _defaults(session, owner):
        if other.id != address.id and other.address_type in taken_from:
            other.is_default = False
    address.is_default = True
    session.flush()
    _settle_defaults(session, owner, chosen=address)


def _settle_defaults(session: Session, owner: Owner, chosen: Address | None) -> None:
    """Restore the rules in the module's docstring after a change: one default per type (the
    chosen address keeps its own), a default for every kind that has addresses, and no ``both``
    default that is the default of neither kind."""
    rows = _defaults(session, owner)
    for address_type in ADDRESS_TYPES:
        defaults = [a for a in rows if a.address_type == address_type and a.is_default]
        keep = chosen if chosen in defaults else (defaults[0] if defaults else None)
        for address in defaults:
            if address is not keep:
                address.is_default = False

    def default_type(kind: str) -> Address | None:
        return next((a for a in rows if a.is_default and a.address_type == kind), None)

    def default_both() -> Address | None:
        return next((a for a in rows if a.is_default and a.address_type == "both"), None)

    everything: list[Address] | None = None  # read only when a kind has no default (rare)
    for kind in KINDS:
        if default_type(kind) is None and default_both() is None:
            everything = _addresses(session, owner) if everything is None else everything
            candidates = [a for a in everything if a.address_type == kind] or [a for a in everything if a.address_type == "both"]
            if candidates:
                candidates[0].is_default = True
                if candidates[0] not in rows:
                    rows.append(candidates[0])
    both = default_both()
    if both is not None and all(default_type(kind) is not None for kind in KINDS):
        both.is_default = False
    session.flush()


