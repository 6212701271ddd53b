"""Helpers for tests that sign people up and in over HTTP."""

from __future__ import annotations

import email
import email.message
import email.policy
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PASSWORD = "correct horse battery staple"
# One TLS context for every client: building one costs ~60 ms, and these clients speak plain HTTP.
_SSL = ssl.create_default_context()


@dataclass
class Api:
    """A running Billfold and the folder its emails land in."""

    url: str
    data_dir: Path
    # Parsed emails by file name: a shared server's folder grows all run long.
    _parsed: dict[str, email.message.EmailMessage] = field(default_factory=dict, repr=False, compare=False)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, verify=_SSL)

    def mails_to(self, address: str) -> list[email.message.EmailMessage]:
        return [m for m in self.mails_to_anyone() if m["To"] == address]

    def mails_to_anyone(self) -> list[email.message.EmailMessage]:
        folder = self.data_dir / "mail"
        if not folder.exists():
            return []
        mails = []
        for path in sorted(folder.glob("*.eml")):
            if path.name not in self._parsed:
                self._parsed[path.name] = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            mails.append(self._parsed[path.name])
        return mails

    def token_mailed_to(self, address: str) -> str:
        body = self.mails_to(address)[-1].get_content()
        return re.search(r"^([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)$", body, re.M).group(1)

    def sign_up(self, address: str, password: str = PASSWORD, verify: bool = True, **fields: str) -> None:
        with self.client() as client:
            answer = client.post("/v1/auth/register", json={"email": address, "password": password, "name": "Grace", "last_name": "Hopper", **fields})
            assert answer.status_code == 202, answer.text
            if verify:
                assert client.post("/v1/auth/verify-email", json={"token": self.token_mailed_to(address)}).status_code == 200

    def sign_in(self, address: str, password: str = PASSWORD) -> str:
        with self.client() as client:
            answer = client.post("/v1/auth/sign-in", json={"email": address, "password": password})
        assert answer.status_code == 200, answer.text
        return answer.json()["token"]

    def change_token_mailed_to(self, address: str) -> str:
        """The token of a change of address, mailed to the new address."""
        return re.search(r"^(bfe_[A-Za-z0-9_-]+)$", self.mails_to(address)[-1].get_content(), re.M).group(1)
