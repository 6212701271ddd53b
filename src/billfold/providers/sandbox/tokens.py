"""The sandbox's test tokens: each names a fake card and the outcome charging it gives.

A method saved from a token keeps the token's behaviour, so a saved ``insufficient_funds`` card
declines every later renewal, which is what dunning tests need. Attaching never fails: the
behaviour shows when the method is charged.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from billfold.providers.errors import DeclineCode


class Behaviour(StrEnum):
    SUCCEED = "succeed"
    DECLINE = "decline"
    ACTION_THEN_SUCCEED = "action_then_succeed"
    ACTION_THEN_FAIL = "action_then_fail"
    UNAVAILABLE = "unavailable"
    TIMEOUT_AFTER_SUCCESS = "timeout_after_success"


@dataclass(frozen=True, slots=True)
class TestCard:
    token: str
    brand: str
    last4: str
    behaviour: Behaviour
    decline_code: DeclineCode | None = None
    expired: bool = False  # its expiry date is in the past
    description: str = ""

    __test__ = False  # not a pytest test class


_CARDS = [
    TestCard("tok_sandbox_visa", "visa", "4242", Behaviour.SUCCEED, description="succeeds"),
    TestCard("tok_sandbox_mastercard", "mastercard", "4444", Behaviour.SUCCEED, description="succeeds"),
    TestCard("tok_sandbox_amex", "amex", "8431", Behaviour.SUCCEED, description="succeeds"),
    TestCard("tok_sandbox_decline", "visa", "0002", Behaviour.DECLINE, DeclineCode.GENERIC_DECLINE,
             description="declined: generic_decline (soft)"),
    TestCard("tok_sandbox_insufficient_funds", "visa", "9995", Behaviour.DECLINE, DeclineCode.INSUFFICIENT_FUNDS,
             description="declined: insufficient_funds (soft)"),
    TestCard("tok_sandbox_expired_card", "visa", "0069", Behaviour.DECLINE, DeclineCode.EXPIRED_CARD, expired=True,
             description="declined: expired_card (hard)"),
    TestCard("tok_sandbox_lost_card", "visa", "9987", Behaviour.DECLINE, DeclineCode.LOST_CARD,
             description="declined: lost_card (hard)"),
    TestCard("tok_sandbox_3ds_success", "visa", "3155", Behaviour.ACTION_THEN_SUCCEED,
             description="requires_action; confirm succeeds. Off-session: declined authentication_required"),
    TestCard("tok_sandbox_3ds_fail", "visa", "3220", Behaviour.ACTION_THEN_FAIL,
             description="requires_action; confirm declines authentication_failed. Off-session: "
                         "declined authentication_required"),
    TestCard("tok_sandbox_unavailable", "visa", "0119", Behaviour.UNAVAILABLE,
             description="raises ProviderUnavailable; nothing is recorded"),
    TestCard("tok_sandbox_timeout_after_success", "visa", "0341", Behaviour.TIMEOUT_AFTER_SUCCESS,
             description="the charge is recorded, then ProviderUnavailable is raised; a retry with the "
                         "same key returns the recorded charge"),
]

TEST_CARDS: dict[str, TestCard] = {card.token: card for card in _CARDS}


def card_for(token: str) -> TestCard | None:
    return TEST_CARDS.get(token)
