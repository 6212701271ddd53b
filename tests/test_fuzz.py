"""Schemathesis, driven by /openapi.json, throws generated requests at every endpoint of the real
server: no answer may be a 5xx, and every answer must match what the document promises (status,
content type, headers, body schema). As the shop's admin (an API key) and as a signed-in customer.

The work is cut so that it spreads over the test workers and stays bounded:
- the operations are split into two groups (``GROUPS``), each its own test;
- the **coverage** phase (boundary values and invalid input for every parameter, deterministic)
  answers before the database is reached for nearly every case, so it runs once per role and
  group, on the database the test's name picks;
- the **examples and fuzzing** phases (schema-valid data that reaches the database) run on every
  database, ``BILLFOLD_FUZZ_EXAMPLES`` (default 3) per operation, with a seed of their own per
  database, so the three databases see different data rather than the same data three times.

A fixed seed keeps CI repeatable; for a longer hunt run, e.g.,
``BILLFOLD_FUZZ_EXAMPLES=200 BILLFOLD_FUZZ_SEED=random pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.accounts.api_keys import create_api_key
from billfold.api import create_app
from billfold.config import Settings
from billfold.kit.db import session_factory
from billfold.kit.ids import new_id
from billfold.models import RoutingRule
from tests import databases
from tests.accounts import Api

pytestmark = pytest.mark.slow

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES = os.environ.get("BILLFOLD_FUZZ_EXAMPLES", "3")
SEED = os.environ.get("BILLFOLD_FUZZ_SEED", "20261127")

# Every path falls in exactly one group (checked below), so the work spreads over the workers.
GROUPS = {
    "me": r"^/v1/me(/|$)",
    "organizations": r"^/v1/organizations(/|$)",
    "people": r"^/v1/(users|auth|invitations|api-keys|admin|analytics)(/|$)|^/(?!v1/)",
    "commerce": r"^/v1/(products|categories|membership-types|memberships|orders|checkouts|payments|payment-providers"
                r"|payment-methods|invoices|credit-notes|subscriptions|webhooks|webhook-endpoints|webhook-deliveries"
                r"|routing-rules)(/|$)",
}
ROLES = ("admin", "customer")

# Ending the fuzzer's own session or account would leave it testing nothing but 401s.
SELF_DESTRUCTIVE = ["--exclude-path", "/v1/auth/sign-out", "--exclude-path", "/v1/me", "--exclude-method", "DELETE"]


def fuzz(base_url: str, token: str, tmp_path: Path, *extra: str, seed: str = SEED) -> None:
    command = [
        SCHEMATHESIS, "--config-file", str(CONFIG), "--no-color", "run", f"{base_url}/openapi.json",
        "--header", f"Authorization: Bearer {token}",
        "--max-examples", EXAMPLES,
        "--workers", "1", "--request-timeout", "30", "--generation-database", "none",
        "--report", "junit", "--report-dir", str(tmp_path / "fuzz-report"),
        *extra,
    ]
    if seed != "random":
        command += ["--seed", seed]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-12000:] + done.stderr[-3000:]


def _run(api: Api, engine: Engine, tmp_path: Path, role: str, group: str, *phase: str, seed: str = SEED) -> None:
    """Fuzz the worker's shared server for ``engine``'s database (its sign-in throttle is high)."""
    only = ["--include-path-regex", GROUPS[group]]
    if role == "admin":
        with session_factory(engine).begin() as session:
            _, token = create_api_key(session, name="fuzzer", scopes=["read", "write"], created_by=None)
        try:
            fuzz(api.url, token, tmp_path, *only, *phase, seed=seed)
        finally:  # the routing rules it made would route the other tests' payments (the database is shared)
            with session_factory(engine).begin() as session:
                session.execute(sa.delete(RoutingRule))
    else:
        address = f"fuzzed.{group}.{phase[-1].split(',')[0]}.{new_id('fz').lower()}@example.com"
        api.sign_up(address)
        fuzz(api.url, api.sign_in(address), tmp_path, *only, *phase, *SELF_DESTRUCTIVE, seed=seed)


def test_the_groups_hold_every_path_once(tmp_path: Path) -> None:
    document = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}", data_dir=tmp_path)).openapi()
    for path in document["paths"]:
        assert sum(bool(re.search(pattern, path)) for pattern in GROUPS.values()) == 1, path


# The coverage phase checks each parameter's validation, which is the same whoever asks: the admin's
# API key meets every operation's validation but those of /v1/me, which refuse an API key, so the
# admin's coverage runs on the other groups and a customer's on "me" alone (a customer's on
# "commerce" and "organizations" repeated the admin's for about 60 s each; the admin's on "me" met
# nothing but the refusal of a key, which tests/test_permissions.py checks). The random phases
# reach the database: the admin's on every database, a customer's (a narrower set of operations)
# on the one its name picks.
BOUNDARIES = [(role, group) for role in ROLES for group in GROUPS if (role == "admin") != (group == "me")]


@pytest.mark.parametrize(("role", "group"), BOUNDARIES)
def test_boundaries_and_invalid_input(api: Api, engine: Engine, tmp_path: Path, role: str, group: str) -> None:
    _run(api, engine, tmp_path, role, group, "--phases", "coverage")


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("role", [pytest.param("admin", marks=pytest.mark.every_database), "customer"])
def test_random_valid_requests(api: Api, engine: Engine, tmp_path: Path, backend: str, role: str, group: str) -> None:
    seed = SEED if SEED == "random" else str(int(SEED) + databases.ALL.index(backend))
    _run(api, engine, tmp_path, role, group, "--phases", "examples,fuzzing", seed=seed)
