"""Many callers at once on one sandbox state file: one charge per idempotency key, never more."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest

from billfold.kit.money import Money
from billfold.providers import InvalidProviderRequest
from billfold.providers.sandbox import SandboxProvider
from tests.sandbox_workers import charge_once

CALLERS = 50


@pytest.fixture
def state_path(tmp_path: Path) -> str:
    return str(tmp_path / "sandbox.sqlite3")


@pytest.mark.parametrize("token", ["tok_sandbox_visa", "tok_sandbox_timeout_after_success"])
def test_fifty_threads_with_one_key_make_one_charge(state_path: str, token: str) -> None:
    with ThreadPoolExecutor(CALLERS) as pool:
        ids = list(pool.map(lambda _: charge_once(state_path, "pay-ord_1-1", token), range(CALLERS)))
    sandbox = SandboxProvider("sandbox", {"state_path": state_path})
    assert len(set(ids)) == 1
    assert [c.id for c in sandbox.list_charges()] == ids[:1]


def test_fifty_threads_with_fifty_keys_make_fifty_charges(state_path: str) -> None:
    with ThreadPoolExecutor(CALLERS) as pool:
        ids = list(pool.map(lambda n: charge_once(state_path, f"pay-ord_{n}-1"), range(CALLERS)))
    sandbox = SandboxProvider("sandbox", {"state_path": state_path})
    assert len(set(ids)) == CALLERS
    assert sorted(c.id for c in sandbox.list_charges()) == sorted(ids)


def test_threads_sharing_one_adapter_in_memory_make_one_charge_per_key() -> None:
    sandbox = SandboxProvider("sandbox", {})

    def pay(n: int) -> str:
        return sandbox.charge(amount=Money(1000, "USD"), token="tok_sandbox_visa", idempotency_key=f"k{n % 5}").id

    with ThreadPoolExecutor(CALLERS) as pool:
        ids = list(pool.map(pay, range(CALLERS)))
    assert len(set(ids)) == 5 and len(sandbox.list_charges()) == 5


def test_concurrent_refunds_never_exceed_the_captured_amount(state_path: str) -> None:
    sandbox = SandboxProvider("sandbox", {"state_path": state_path})
    charge = sandbox.charge(amount=Money(1000, "USD"), token="tok_sandbox_visa", idempotency_key="c")

    def refund(n: int) -> int:
        other = SandboxProvider("sandbox", {"state_path": state_path})
        try:
            return other.refund(charge_id=charge.id, amount=Money(70, "USD"), idempotency_key=f"r{n}").amount.amount
        except InvalidProviderRequest:
            return 0

    with ThreadPoolExecutor(CALLERS) as pool:
        refunded = sum(pool.map(refund, range(CALLERS)))
    assert refunded == 980  # 14 refunds of 70 fit in 1000; the 15th would not
    assert sandbox.get_charge(charge.id).amount_refunded == Money(980, "USD")


def test_processes_with_one_key_make_one_charge(state_path: str) -> None:
    SandboxProvider("sandbox", {"state_path": state_path}).close()  # create the file before the race
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(8, mp_context=spawn) as pool:
        same = list(pool.map(charge_once, [state_path] * 24, ["same-key"] * 24))
        different = list(pool.map(charge_once, [state_path] * 24, [f"key-{n}" for n in range(24)]))
    sandbox = SandboxProvider("sandbox", {"state_path": state_path})
    assert len(set(same)) == 1 and len(set(different)) == 24
    assert len(sandbox.list_charges()) == 25
