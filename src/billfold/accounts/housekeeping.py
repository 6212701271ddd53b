"""Deleting sign-in state that has ended, so the tables stay small: challenges (WebAuthn
ceremonies, second sign-in steps) once used or expired, sessions a while after they expired or
were revoked, sign-in throttle windows that closed, and invitations a month after they ended.

Nothing here deletes what a rule still needs: a challenge or session that can still be used, a
throttle window still counting, an account's consecutive failures (``user:`` keys, which lock it),
or an audit row. ``billfold purge`` runs it; the worker runs it hourly (the sweep ``accounts.purge``).
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.accounts import invitations
from billfold.accounts.sessions import THROTTLE_WINDOW
from billfold.kit import clock
from billfold.kit.db import transaction
from billfold.kit.sweeps import Context, sweep
from billfold.models import AuthChallenge, AuthSession, SignInThrottle

SESSION_KEPT = timedelta(days=30)  # ended sessions stay listed in the account's history this long


def purge(session: Session) -> dict[str, int]:
    """Delete ended sign-in state; how many rows went from each table."""
    now = clock.now()
    challenges = session.execute(
        sa.delete(AuthChallenge).where(sa.or_(AuthChallenge.expires_at <= now, AuthChallenge.used_at.is_not(None)))
    )
    sessions = session.execute(
        sa.delete(AuthSession).where(
            sa.or_(AuthSession.expires_at <= now - SESSION_KEPT, AuthSession.revoked_at <= now - SESSION_KEPT)
        )
    )
    throttles = session.execute(
        sa.delete(SignInThrottle).where(
            SignInThrottle.key.not_like("user:%"), SignInThrottle.window_started_at <= now - THROTTLE_WINDOW
        )
    )
    return {
        "auth_challenges": challenges.rowcount or 0,
        "auth_sessions": sessions.rowcount or 0,
        "sign_in_throttles": throttles.rowcount or 0,
        "organization_invitations": invitations.purge(session),
    }


@sweep("accounts.purge", every=timedelta(hours=1))
def purge_sweep(context: Context) -> int:
    """``purge`` in a transaction of its own; how many rows went in all."""
    with transaction(context.sessions) as session:
        return sum(purge(session).values())
