"""Schemathesis, driven by /openapi.json, throws generated requests at every endpoint of the real
server: no answer may be a 5xx, and every answer must match what the document promises (status,
content type, headers, body schema). Run once as the shop's admin (an API key) and once as a
signed-in customer, on each database.

A fixed seed keeps CI repeatable; for a longer hunt run, e.g.,
``BILLFOLD_FUZZ_EXAMPLES=200 BILLFOLD_FUZZ_SEED=random pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from billfold.accounts.api_keys import create_api_key
from billfold.kit.db import session_factory
from tests.accounts import Api
from tests.server import serving

pytestmark = [pytest.mark.every_database, pytest.mark.slow]

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES = os.environ.get("BILLFOLD_FUZZ_EXAMPLES", "25")
SEED = os.environ.get("BILLFOLD_FUZZ_SEED", "20261127")

# Ending the fuzzer's own session or account would leave it testing nothing but 401s.
SELF_DESTRUCTIVE = ["--exclude-path", "/v1/auth/sign-out", "--exclude-path", "/v1/me", "--exclude-method", "DELETE"]


def fuzz(base_url: str, token: str, tmp_path: Path, *extra: str) -> None:
    command = [
        SCHEMATHESIS, "--config-file", str(CONFIG), "--no-color", "run", f"{base_url}/openapi.json",
        "--header", f"Authorization: Bearer {token}",
        "--max-examples", EXAMPLES, "--phases", "examples,coverage,fuzzing",
        "--workers", "1", "--request-timeout", "30", "--generation-database", "none",
        "--report", "junit", "--report-dir", str(tmp_path / "fuzz-report"),
        *extra,
    ]
    if SEED != "random":
        command += ["--seed", SEED]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-12000:] + done.stderr[-3000:]


def test_the_api_as_the_shops_admin(engine: Engine, tmp_path: Path) -> None:
    with session_factory(engine).begin() as session:
        _, secret = create_api_key(session, name="fuzzer", scopes=["read", "write"], created_by=None)
    with serving(engine, tmp_path, sign_in_attempts_per_address=100000, sign_in_attempts_per_account=100000) as url:
        fuzz(url, secret, tmp_path)


def test_the_api_as_a_customer(engine: Engine, tmp_path: Path, backend: str) -> None:
    with serving(engine, tmp_path, sign_in_attempts_per_address=100000, sign_in_attempts_per_account=100000) as url:
        api = Api(url, tmp_path)
        address = f"fuzzed.customer.{backend}@example.com"
        api.sign_up(address)
        fuzz(url, api.sign_in(address), tmp_path, *SELF_DESTRUCTIVE)
