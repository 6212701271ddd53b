"""docs/providers.md's "Getting started" guide, run as written, once per provider: the `bash` blocks
marked ``<!-- guide: common -->`` and ``<!-- guide: <provider> -->`` are the script (the reader's
second terminal), those marked ``serve`` are started as the reader's other terminals (Billfold
itself with ``billfold up``, and the provider's fake), on a fresh database and free ports. Each
``# → …`` line in the guide is output the reader is told they will see: the script must print
those lines, in that order. Then the outcome is checked through the API and at the fake: one
order paid and refunded, a subscription renewed by the moved clock, a webhook stored once, and no
secret shown."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import databases
from tests.server import free_port

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "providers.md"
BLOCK = re.compile(r"<!-- guide: (?P<part>\w+)(?P<serve> serve)? -->\n```bash\n(?P<code>.*?)```", re.S)
EXPECTED = re.compile(r"^# → (.*)$", re.M)
PORTS = ("8000", "8420", "8421", "8422")  # Billfold, localstripe, the PayPal fake, the Authorize.net fake
PROVIDERS = ("stripe", "paypal", "authorizenet")
SECRETS = ("sk_test_guide", "whsec_guide_0123456789abcdef", "guide-client-secret-0123456789",
           "guide-transaction-key", "0123456789ABCDEF" * 8)
# Every curl in the script fails the script on an HTTP error, with the answer's body on stderr.
PRELUDE = """set -euo pipefail
curl() {
  local out
  if ! out=$(command curl --fail-with-body --max-time 60 "$@"); then echo "failed: curl ${*: -3}: $out" >&2; return 22; fi
  printf '%s\\n' "$out"
}
"""


def blocks(part: str, *, serve: bool) -> list[str]:
    found = [m["code"] for m in BLOCK.finditer(GUIDE.read_text()) if m["part"] == part and bool(m["serve"]) == serve]
    assert found, f"the guide has no {'serve ' if serve else ''}block for {part}"
    return found


def localised(code: str, ports: dict[str, int]) -> str:
    """The guide's commands on this run's free ports and this interpreter's command folder."""
    code = re.sub(r"\b(" + "|".join(PORTS) + r")\b", lambda m: str(ports[m[1]]), code)
    return code.replace(".venv/bin/", str(Path(sys.executable).parent) + "/")


@contextmanager
def terminal(command: str, env: dict[str, str], log: Path, ready: str) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` run as in a terminal of its own until the block ends; waits until ``ready`` (a
    URL) answers."""
    with log.open("wb") as out:
        process = subprocess.Popen(["bash", "-c", command.strip()], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(ready, timeout=2)
                break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command!r} did not start: {log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C, as the reader stops it
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def in_order(expected: list[str], printed: list[str]) -> list[str]:
    """The expected lines not printed in that order (empty: all were)."""
    missing, at = [], 0
    for line in expected:
        try:
            at = printed.index(line, at) + 1
        except ValueError:
            missing.append(line)
    return missing


@pytest.mark.slow
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_newcomer_follows_the_guide_to_buy_refund_and_renew(provider: str, backend: str, tmp_path: Path) -> None:
    missing = [tool for tool in ("curl", "jq") if shutil.which(tool) is None]
    assert not missing, f"the guide needs {missing} (scripts/test installs them when run as root)"
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    url = databases.fresh_database(backend, f"billfold_guide_{worker}", tmp_path)
    ports = {port: free_port() for port in PORTS}
    base = f"http://127.0.0.1:{ports['8000']}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}
    env.update(BILLFOLD_DATABASE_URL=url.render_as_string(hide_password=False), BILLFOLD_DATA_DIR=str(tmp_path / "data"),
               BILLFOLD_PORT=str(ports["8000"]))
    script = "\n".join([PRELUDE, *blocks("common", serve=False), *blocks(provider, serve=False),
                        'echo "KEY=$KEY"; echo "ORDER=$ORDER"; echo "PAY=$PAY"; echo "SUB=$SUB"'])
    expected = EXPECTED.findall(script)
    fake = {"stripe": "/v1/customers", "paypal": "/_fake/captured", "authorizenet": "/_fake/transactions"}[provider]
    fake_port = {"stripe": "8420", "paypal": "8421", "authorizenet": "8422"}[provider]
    try:
        with ExitStack() as terminals:
            [billfold] = blocks("common", serve=True)
            terminals.enter_context(terminal(localised(billfold, ports), env, tmp_path / "billfold.log", f"{base}/healthz"))
            [started] = blocks(provider, serve=True)
            terminals.enter_context(terminal(localised(started, ports), env, tmp_path / "fake.log",
                                             f"http://127.0.0.1:{ports[fake_port]}{fake}"))
            ran = subprocess.run(["bash", "-c", localised(script, ports)], cwd=ROOT, env=env, capture_output=True,
                                 text=True, timeout=180)
            (tmp_path / "terminal.txt").write_text(ran.stdout)
            assert ran.returncode == 0, f"{ran.stdout[-4000:]}\n{ran.stderr[-4000:]}"
            printed = ran.stdout.splitlines()
            assert expected and not in_order(expected, printed), (in_order(expected, printed), ran.stdout)
            ids = dict(line.split("=", 1) for line in printed if re.match(r"^(KEY|ORDER|PAY|SUB)=", line))
            h = {"Authorization": f"Bearer {ids['KEY']}"}
            with httpx.Client(base_url=base, headers=h, timeout=30) as admin:
                shown = admin.get(f"/v1/payment-providers/{provider}")
                assert shown.status_code == 200 and not any(s in shown.text for s in SECRETS), shown.text
                order = admin.get(f"/v1/orders/{ids['ORDER']}").json()
                assert (order["status"], order["refunded_cents"], order["total_cents"]) == ("refunded", 25000, 25000)
                [payment] = order["payments"]
                assert (payment["id"], payment["provider_id"], payment["status"]) == (ids["PAY"], provider, "refunded")
                subscription = admin.get(f"/v1/subscriptions/{ids['SUB']}").json()
                assert subscription["status"] == "active", subscription
                renewals = admin.get("/v1/payments", params={"subscription_id": ids["SUB"]}).json()["data"]
                assert [(p["status"], p["provider_id"]) for p in renewals] == [("completed", provider)] * 2
                events = admin.get("/v1/webhooks/events", params={"provider_id": provider, "limit": 100}).json()["data"]
                assert events, "the guide's webhook reached Billfold"
                assert len({e["id"] for e in events}) == len(events)
            assert_at_the_fake(provider, f"http://127.0.0.1:{ports[fake_port]}", payment["provider_payment_id"])
            if provider != "stripe":  # the fake printed the config the guide gives Billfold
                printed = next(json.loads(line) for line in (tmp_path / "fake.log").read_text().splitlines()
                               if line.startswith("{"))
                documented = documented_provider(provider, ports)
                assert (documented["id"], documented["kind"]) == (provider, printed.pop("kind"))
                assert documented["config"] == printed
            log = (tmp_path / "billfold.log").read_text()
            assert not any(s in log for s in SECRETS)
    finally:
        databases.drop_database(backend, url)


def documented_provider(provider: str, ports: dict[str, int]) -> dict[str, Any]:
    """The body the guide POSTs to /v1/payment-providers for ``provider``."""
    code = localised("".join(blocks(provider, serve=False)), ports)
    [body] = re.findall(r"/v1/payment-providers -d '(\{.*?\}\})'", code, re.S)
    return dict(json.loads(body))


def assert_at_the_fake(provider: str, fake: str, charge_id: str) -> None:
    """The money moved at the provider too: the order's charge captured once and refunded in full."""
    if provider == "stripe":
        with httpx.Client(base_url=fake, auth=("sk_test_guide", ""), timeout=10) as stripe:
            intent = stripe.get(f"/v1/payment_intents/{charge_id}").json()
            charges = [c for c in stripe.get("/v1/charges", params={"limit": 100}).json()["data"]
                       if c.get("payment_intent") == charge_id]
        assert intent["status"] == "succeeded" and len(charges) == 1
        assert charges[0]["amount_refunded"] == 25000, charges
    elif provider == "paypal":
        captured = [c for c in httpx.get(f"{fake}/_fake/captured").json() if c["order_id"] == charge_id]
        assert len(captured) == 1 and captured[0]["amount"] == {"currency_code": "USD", "value": "250.00"}, captured
    else:
        listed = json.loads(httpx.get(f"{fake}/_fake/transactions").content)["transactions"]
        refunds = [t for t in listed if t.get("refTransId") == charge_id]
        assert [(t["transactionType"], t["settleAmount"]) for t in refunds] == [
            ("refundTransaction", 50.0), ("refundTransaction", 200.0)], refunds


def test_the_guide_gives_each_provider_every_step() -> None:
    """Quick tier: the guide's blocks are where the slow test finds them, and each provider's part
    configures that kind, buys, refunds, renews and shows a webhook, with what the reader sees."""
    ports = {port: int(port) for port in PORTS}
    assert len(blocks("common", serve=True)) == 1 and "apikey create" in "".join(blocks("common", serve=False))
    for provider in PROVIDERS:
        [_] = blocks(provider, serve=True)
        code = "".join(blocks(provider, serve=False))
        assert documented_provider(provider, ports)["kind"] == provider
        for step in ("/checkout", "/refunds", "/payment-methods", "/v1/subscriptions", "/v1/admin/clock/advance"):
            assert step in code, (provider, step)
        seen = EXPECTED.findall(code)
        assert '{"status":"refunded","refunded_cents":25000}' in seen, provider
        renewed = [{"status": "completed", "amount_cents": 4900, "provider_id": provider}] * 2
        assert json.dumps(renewed, separators=(",", ":")) in seen, provider
