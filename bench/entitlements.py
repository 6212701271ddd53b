"""How fast "may this user use feature X now?" is answered (billfold.memberships.may_use).

Populates a freshly migrated database with N users (default 10,000), each with memberships of
their own (fixed, some of them ended; lifetime; following a subscription, some past due) and an
add-on on some, and organizations of five members each with a membership bought by an order;
then times C checks (default 10,000) of random users and features, half of them for the user's
organization, through one session, and a raw ``SELECT 1`` round trip the same number of times in
the same run. Prints checks per second, p50/p95/p99 latency and the ratio to ``SELECT 1``.

    python bench/entitlements.py                                  # SQLite file in a temp folder
    python bench/entitlements.py --database postgresql://postgres@127.0.0.1/postgres
    python bench/entitlements.py --database mariadb://root@127.0.0.1/ -n 10000 -c 10000
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from billfold.kit import clock  # noqa: E402
from billfold.kit.db import create_engine, session_factory  # noqa: E402
from billfold.kit.ids import new_id  # noqa: E402
from billfold.memberships import may_use  # noqa: E402
from billfold.models import (  # noqa: E402
    MembershipType, Order, Organization, OrganizationUser, PaymentProvider, Product, Subscription, User, UserMembership,
)
from tests import databases  # noqa: E402

FEATURES = ["reports", "exports", "api", "sso", "seats", "archive"]
GRACE = timedelta(days=7)


def populate(engine: sa.Engine, users: int, rng: random.Random) -> tuple[list[str], dict[str, str]]:
    now = clock.now().replace(microsecond=0)
    day = timedelta(days=1)
    with session_factory(engine).begin() as session:
        session.add(PaymentProvider(id="sandbox", display_name="Sandbox"))
        session.add(Product(id="prod_bench", name="Plan", product_type="subscription", price_cents=2900))
        types = {
            "fixed": MembershipType(id=new_id("mtyp"), name="Year", duration_type="fixed", duration_days=365, price_cents=9900, features=["reports", "exports"]),
            "lifetime": MembershipType(id=new_id("mtyp"), name="Forever", duration_type="lifetime", price_cents=49900, features=["archive"]),
            "recurring": MembershipType(id=new_id("mtyp"), name="Pro", duration_type="recurring", duration_days=30, price_cents=2900, features=["reports", "api"]),
            "team": MembershipType(id=new_id("mtyp"), name="Team", duration_type="fixed", duration_days=365, price_cents=99900, features=["seats", "sso"]),
        }
        session.add_all(types.values())
        session.flush()
        user_ids = [new_id("usr") for _ in range(users)]
        stamps = {"created_at": now, "updated_at": now}
        session.execute(sa.insert(User), [
            {"id": u, "name": "Bench", "last_name": str(i), "email": f"bench{i}@example.com", "user_type": "individual", **stamps}
            for i, u in enumerate(user_ids)
        ])
        memberships, subscriptions = [], []
        for u in user_ids:
            kind = rng.choice(("fixed", "fixed", "lifetime", "recurring"))
            row = {"id": new_id("umem"), "user_id": u, "membership_type_id": types[kind].id, "status": "active", **stamps}
            if kind == "fixed":
                start = now - day * rng.randint(0, 500)
                row |= {"start_date": start, "end_date": start + day * 365}
            elif kind == "lifetime":
                row |= {"start_date": now - day * rng.randint(0, 500), "end_date": None}
            else:
                sub = new_id("sub")
                end = now + day * rng.randint(-12, 30)
                subscriptions.append({
                    "id": sub, "user_id": u, "product_id": "prod_bench", "provider_id": "sandbox",
                    "status": "active" if end > now else "past_due", "current_period_start": end - day * 30,
                    "current_period_end": end, "price_cents": 2900, **stamps,
                })
                row |= {"start_date": end - day * 30, "end_date": end, "subscription_id": sub, "auto_renew": True}
            if rng.random() < 0.2:
                row["addons"] = [{"feature": "sso", "expires_at": (now + day * rng.randint(-30, 30)).isoformat(), "source": "bench"}]
            memberships.append(row)
        session.execute(sa.insert(Subscription), subscriptions)
        organization_of: dict[str, str] = {}
        organizations, members, orders = [], [], []
        for start in range(0, users - 4, 5):
            team = user_ids[start : start + 5]
            org = new_id("org")
            organizations.append({"id": org, "name": f"Team {start}", "owner_user_id": team[0], **stamps})
            members += [{"id": new_id("oru"), "organization_id": org, "user_id": u, "role": "owner" if i == 0 else "member", **stamps}
                        for i, u in enumerate(team)]
            order = new_id("ord")
            orders.append({"id": order, "order_number": new_id("bf"), "organization_id": org, "status": "paid",
                           "subtotal_cents": 99900, "total_cents": 99900, "currency": "USD", **stamps})
            memberships.append({"id": new_id("umem"), "user_id": team[0], "membership_type_id": types["team"].id,
                                "order_id": order, "status": "active", "start_date": now - day * 10,
                                "end_date": now + day * 355, **stamps})
            organization_of.update({u: org for u in team})
        session.execute(sa.insert(Organization), organizations)
        session.execute(sa.insert(OrganizationUser), members)
        session.execute(sa.insert(Order), orders)
        session.execute(sa.insert(UserMembership), memberships)
    with engine.connect() as connection:  # fresh statistics for the planner
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("ANALYZE")
        elif engine.dialect.name == "sqlite":
            connection.exec_driver_sql("ANALYZE")
        else:
            for table in ("users", "user_memberships", "organization_users", "orders", "subscriptions", "membership_types"):
                connection.exec_driver_sql(f"ANALYZE TABLE {table}")
        connection.commit()
    return user_ids, organization_of


def timed(n: int, run: Callable[[int], object]) -> list[float]:
    latencies = []
    for i in range(n):
        began = time.perf_counter()
        run(i)
        latencies.append(time.perf_counter() - began)
    return latencies


def report(name: str, latencies: list[float], baseline: float | None = None) -> float:
    ordered = sorted(latencies)
    p = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    rate = len(latencies) / sum(latencies)
    ratio = f", {statistics.median(latencies) / baseline:.1f}x SELECT 1 (p50)" if baseline else ""
    print(f"  {name:<26} {rate:>8,.0f}/s  p50 {p(0.50):.3f} ms  p95 {p(0.95):.3f} ms  p99 {p(0.99):.3f} ms{ratio}")
    return statistics.median(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", help="server URL (postgresql://… or mariadb://…); default: SQLite in a temp folder")
    parser.add_argument("-n", "--users", type=int, default=10_000)
    parser.add_argument("-c", "--checks", type=int, default=10_000)
    args = parser.parse_args()
    backend = "sqlite"
    if args.database:
        backend = "postgresql" if args.database.startswith("postgres") else "mariadb"
        databases.SERVER_URLS[backend] = args.database
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as folder:
        engine = create_engine(databases.fresh_database(backend, "billfold_bench_entitlements", Path(folder)))
        databases.migrate(engine)
        began = time.perf_counter()
        user_ids, organization_of = populate(engine, args.users, rng)
        print(f"{backend}: {args.users:,} users, {len(set(organization_of.values())):,} organizations, populated in "
              f"{time.perf_counter() - began:.1f} s; {args.checks:,} checks")
        asks = [(rng.choice(user_ids), rng.choice(FEATURES), rng.random() < 0.5) for _ in range(args.checks)]
        with session_factory(engine)() as session:
            for _ in range(200):  # warm the pool, the statement cache and the database's pages
                session.execute(sa.text("SELECT 1")).scalar()
                user, feature, _ = rng.choice(asks)
                may_use(session, user_id=user, feature=feature, grace=GRACE)
            baseline = report("SELECT 1", timed(args.checks, lambda i: session.execute(sa.text("SELECT 1")).scalar()))
            granted = 0

            def check(i: int) -> None:
                nonlocal granted
                user, feature, for_organization = asks[i]
                granted += may_use(session, user_id=user, feature=feature, grace=GRACE,
                                   organization_id=organization_of.get(user) if for_organization else None)

            report("may_use", timed(args.checks, check), baseline)
            own = [a for a in asks if not a[2]]
            report("may_use, own only", timed(len(own), lambda i: may_use(session, user_id=own[i][0], feature=own[i][1], grace=GRACE)), baseline)
            print(f"  ({granted:,} of {args.checks:,} checks allowed)")
        engine.dispose()
        if backend != "sqlite":
            databases.drop_database(backend, engine.url)


if __name__ == "__main__":
    main()
