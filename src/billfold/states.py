"""One state machine per entity (DESIGN.md rule 4): a table of allowed moves and one function that
applies a move, writes its ``payment_events`` row in the same transaction (through
``billfold.audit``), and refuses an illegal one with a clear error. Moving an entity to where it
already is does nothing and returns False, so a handler that runs twice changes nothing the
second time (rule 5)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from billfold.audit import audit
from billfold.kit.errors import Conflict


class IllegalTransition(Conflict):
    code = "illegal_transition"
    title = "Not allowed in the current state"


@dataclass(frozen=True)
class StateMachine:
    """``moves[state]`` is the set of states an entity may go to from ``state``; ``moves[None]``
    the states it may start in."""

    entity: str  # payment_events.entity_type: "order", "payment", ...
    moves: Mapping[str | None, frozenset[str]]

    def can(self, current: str | None, to: str) -> bool:
        return to in self.moves.get(current, frozenset())

    def current(self, row: Any) -> str | None:
        """The state ``row`` is in: its ``status``. A machine whose table has a state the column
        cannot hold derives it from the row here, and stores it in ``put``."""
        return row.status

    def put(self, row: Any, state: str) -> None:
        row.status = state

    def start(self, session: Session, row: Any, to: str, *, by: str | None, **data: Any) -> None:
        """Give a new row (already flushed, so it has its id) its first state."""
        if not self.can(None, to):
            raise IllegalTransition(f"a {self.entity} cannot start as {to}")
        self.put(row, to)
        self._record(session, row, None, to, by, data)

    def move(self, session: Session, row: Any, to: str, *, by: str | None, **data: Any) -> bool:
        """Move ``row`` to ``to``; False (and nothing written) when it is there already."""
        current = self.current(row)
        if current == to:
            return False
        if not self.can(current, to):
            raise IllegalTransition(
                f"{self.entity} {row.id} is {current} and cannot become {to}",
                entity=self.entity,
                current=current,  # not "status": that member of a problem document is the HTTP status
                wanted=to,
            )
        self.put(row, to)
        self._record(session, row, current, to, by, data)
        return True

    def _record(self, session: Session, row: Any, before: str | None, after: str, by: str | None, data: dict[str, Any]) -> None:
        moved = {"from": before, "to": after, "by": by, **{k: v for k, v in data.items() if v is not None}}
        audit(session, self.entity, row.id, f"{self.entity}.{after}", subject=row, **moved)


def machine(entity: str, moves: Mapping[str | None, set[str] | frozenset[str]]) -> StateMachine:
    return StateMachine(entity, {state: frozenset(targets) for state, targets in moves.items()})
