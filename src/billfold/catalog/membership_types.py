"""Membership types: what a membership costs, how long it lasts and what it includes.

``recurring`` renews every ``duration_days``, ``fixed`` ends ``duration_days`` after it starts,
``lifetime`` never ends and has no ``duration_days``. A type that memberships name cannot be
deleted (the spec's ON DELETE RESTRICT): deactivate it, and it is no longer offered.

Services take a session and never commit; every change writes an audit row.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.audit import audit
from billfold.kit.db.dialects import for_update
from billfold.kit.errors import Conflict, InvalidInput, NotFound
from billfold.kit.ids import has_prefix
from billfold.models import MembershipType, UserMembership

FIELDS = ("name", "description", "duration_type", "duration_days", "price_cents", "currency", "features", "is_active")


class MembershipTypeInUse(Conflict):
    code = "membership_type_in_use"
    title = "Memberships are of this type"


def get_membership_type(
    session: Session, membership_type_id: str, *, visible_to_all: bool = False, lock: bool = False
) -> MembershipType:
    found = None
    if has_prefix(membership_type_id, "mtyp"):
        statement = sa.select(MembershipType).where(MembershipType.id == membership_type_id)
        if lock:
            statement = for_update(statement, session).execution_options(populate_existing=True)
        found = session.scalars(statement).one_or_none()
    if found is None or (visible_to_all and not found.is_active):
        raise NotFound(f"no membership type {membership_type_id}")
    return found


def membership_types(*, include_inactive: bool) -> sa.Select[tuple[MembershipType]]:
    statement = sa.select(MembershipType)
    return statement if include_inactive else statement.where(MembershipType.is_active.is_(True))


def create_membership_type(session: Session, fields: dict[str, Any]) -> MembershipType:
    membership_type = MembershipType(**{f: v for f, v in fields.items() if f in FIELDS})
    _check_duration(membership_type)
    session.add(membership_type)
    session.flush()
    audit(
        session, "membership_type", membership_type.id, "created", duration_type=membership_type.duration_type,
        price_cents=membership_type.price_cents, currency=membership_type.currency,
    )
    return membership_type


def update_membership_type(session: Session, membership_type_id: str, changes: dict[str, Any]) -> MembershipType:
    membership_type = get_membership_type(session, membership_type_id, lock=True)
    changed = sorted(f for f, v in changes.items() if f in FIELDS and getattr(membership_type, f) != v)
    for name in changed:
        setattr(membership_type, name, changes[name])
    _check_duration(membership_type)
    if changed:
        session.flush()
        audit(session, "membership_type", membership_type.id, "updated", fields=changed)
    return membership_type


def delete_membership_type(session: Session, membership_type_id: str) -> None:
    membership_type = get_membership_type(session, membership_type_id, lock=True)
    used = session.scalar(
        sa.select(sa.func.count()).select_from(UserMembership).where(UserMembership.membership_type_id == membership_type.id)
    )
    if used:
        raise MembershipTypeInUse(
            f"{used} membership(s) are of type {membership_type.id}; deactivate it instead (is_active: false)"
        )
    session.delete(membership_type)
    try:
        with session.begin_nested():
            session.flush()
    except sa.exc.IntegrityError as error:  # a membership was sold in the meantime
        raise MembershipTypeInUse(f"{membership_type.id} is in use; deactivate it instead (is_active: false)") from error
    audit(session, "membership_type", membership_type_id, "deleted", name=membership_type.name)


def _check_duration(membership_type: MembershipType) -> None:
    if membership_type.duration_type == "lifetime" and membership_type.duration_days is not None:
        message = "a lifetime membership has no duration_days"
    elif membership_type.duration_type != "lifetime" and membership_type.duration_days is None:
        message = f"a {membership_type.duration_type} membership needs duration_days"
    else:
        return
    raise InvalidInput(f"duration_days: {message}", errors=[{"field": "duration_days", "message": message}])
