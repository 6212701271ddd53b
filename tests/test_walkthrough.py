"""docs/orders.md's walkthrough, step by step, on a fresh demo database on each database server:
an API key from the CLI, an order for a demo customer, checkout with the sandbox's test token, a
partial refund and then the rest."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from billfold.kit.db import create_engine
from tests import databases
from tests.cli import run
from tests.server import serving


def test_a_newcomer_buys_and_refunds_on_the_demo(backend: str, tmp_path: Path) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    url = databases.fresh_database(backend, f"billfold_walk_{worker}", tmp_path)
    address = url.render_as_string(hide_password=False)
    for step in (("db", "upgrade"), ("demo",)):
        assert run(*step, database_url=address, process=True).code == 0
    made = run("apikey", "create", "--name", "docs", database_url=address, process=True)
    assert made.code == 0, made.stderr
    key = made.stdout.strip()
    engine = create_engine(url)
    try:
        with serving(engine, tmp_path / "data") as base, httpx.Client(base_url=base, timeout=30) as anyone:
            h = {"Authorization": f"Bearer {key}"}
            users = anyone.get("/v1/users", params={"limit": 100}, headers=h).json()["data"]
            james = next(u for u in users if u["email"].startswith("james"))
            services = anyone.get("/v1/products", params={"product_type": "service"}).json()["data"]
            session = next(p for p in services if p["name"] == "Onboarding session")

            order = anyone.post("/v1/orders", headers=h, json={"user_id": james["id"], "items": [{"product_id": session["id"], "quantity": 1}]})
            assert order.status_code == 201, order.text
            order = order.json()
            assert (order["total_cents"], order["currency"], order["status"]) == (25000, "USD", "pending")

            paid = anyone.post(
                f"/v1/orders/{order['id']}/checkout", headers={**h, "Idempotency-Key": "6a1f0c1e-docs-1"}, json={"token": "tok_sandbox_visa"}
            )
            assert paid.status_code == 200, paid.text
            payment = paid.json()["payment"]
            assert paid.json()["order"]["status"] == "paid"

            part = anyone.post(f"/v1/payments/{payment['id']}/refunds", headers=h, json={"amount_cents": 5000, "reason": "shorter session"})
            assert part.status_code == 201, part.text
            rest = anyone.post(f"/v1/payments/{payment['id']}/refunds", headers=h, json={})
            assert rest.status_code == 201 and rest.json()["amount_cents"] == 20000
            final = anyone.get(f"/v1/orders/{order['id']}", headers=h).json()
            assert (final["status"], final["refunded_cents"]) == ("refunded", 25000)
    finally:
        engine.dispose()
        databases.drop_database(backend, url)
