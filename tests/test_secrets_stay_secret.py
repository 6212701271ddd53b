"""Secrets are shown once and never again: not in later API answers, not in the server's log.

The real `billfold serve` runs with its default logging (access log on); every flow that makes a
secret runs against it; then neither its output nor any later answer may contain one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyotp

from tests.accounts import PASSWORD, Api
from tests.cli import run
from tests.server import free_port

BILLFOLD = str(Path(sys.executable).with_name("billfold"))


def test_no_secret_reaches_the_log_or_a_later_answer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    assert run("db", "upgrade", database_url=url).code == 0
    admin_key = run("apikey", "create", "--name", "secrets test", database_url=url).stdout.strip()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}
    env.update(BILLFOLD_DATABASE_URL=url, BILLFOLD_DATA_DIR=str(tmp_path / "data"), BILLFOLD_PUBLIC_URL=f"http://127.0.0.1:{port}")
    log = tmp_path / "server.log"
    with log.open("w") as output:
        server = subprocess.Popen([BILLFOLD, "serve", "--port", str(port)], stdout=output, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    secrets: list[str] = [PASSWORD, admin_key]
    later: list[str] = []
    try:
        api = Api(f"http://127.0.0.1:{port}", tmp_path / "data")
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{api.url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)

        address = "secretive@example.com"
        api.sign_up(address, verify=False)
        secrets.append(api.token_mailed_to(address))
        api.sign_up(address.replace("@", "+x@"), verify=False)
        with api.client() as client:
            client.post("/v1/auth/verify-email", json={"token": secrets[-1]})
            signed_in = client.post("/v1/auth/sign-in", json={"email": address, "password": PASSWORD}).json()
            secrets.append(signed_in["token"])
            client.post("/v1/auth/password-reset", json={"email": address})
            secrets.append(api.token_mailed_to(address))
        with api.client(admin_key) as admin:
            made = admin.post("/v1/api-keys", json={"name": "backend", "scopes": ["read"]}).json()
            secrets.append(made["secret"])
            later += [admin.get("/v1/api-keys").text, admin.get("/v1/users").text]
        with api.client(signed_in["token"]) as me:
            enrolled = me.post("/v1/me/two-factor/totp", json={"password": PASSWORD})
            assert enrolled.status_code == 201, enrolled.text
            secret = enrolled.json()["secret"]
            secrets.append(secret)
            confirmed = me.post("/v1/me/two-factor/totp/confirm", json={"code": pyotp.TOTP(secret).now()})
            assert confirmed.status_code == 200, confirmed.text
            assert len(confirmed.json()["recovery_codes"]) == 10
            secrets += confirmed.json()["recovery_codes"]
            later += [me.get("/v1/me").text, me.get("/v1/me/sessions").text, me.get("/v1/me/two-factor").text]
            organization = me.post("/v1/organizations", json={"name": "Secretive Ltd"}).json()["id"]
            invited = me.post(f"/v1/organizations/{organization}/invitations", json={"email": "guest@example.com"})
            assert invited.status_code == 201, invited.text
            secrets.append(re.search(r"^(bfi_\S+)$", api.mails_to("guest@example.com")[-1].get_content(), re.M).group(1))
            later += [invited.text, me.get(f"/v1/organizations/{organization}/invitations").text]
    finally:
        server.terminate()
        server.wait(timeout=15)

    logged = log.read_text()
    assert "POST /v1/auth/sign-in" in logged, "the access log is on, so the test looks at something"
    for secret in secrets:
        assert secret not in logged, f"a secret ({secret[:6]}…) is in the server's log"
        for answer in later:
            assert secret not in answer, f"a secret ({secret[:6]}…) came back in a later answer"
