"""Mail through a real SMTP server (aiosmtpd on a local port): the app sends a registration email
over SMTP with a login; STARTTLS verifies the server's certificate; and a mail server that is down
does not turn a committed request into an error."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import logging
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy.engine import Engine

from billfold.mailer import Email, SmtpMailer
from tests.accounts import PASSWORD
from tests.server import free_port, serving

USER, SECRET = "billfold", "smtp-password-1"
# The plain server takes a login without TLS on purpose (loopback); aiosmtpd warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


@dataclass
class Inbox:
    """What the SMTP server received, and with which login."""

    messages: list[email.message.EmailMessage] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001, N802 (aiosmtpd's hook)
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:  # noqa: ANN001
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (USER.encode(), SECRET.encode())
        if ok:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=ok)


def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, as the test's own CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "smtp.crt", tmp_path / "smtp.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    """A plain SMTP server that takes a login (without TLS: loopback only)."""
    inbox, port = Inbox(), free_port()
    controller = Controller(
        inbox, hostname="127.0.0.1", port=port, authenticator=inbox.authenticate, auth_required=True, auth_require_tls=False
    )
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def test_the_app_sends_its_email_through_smtp_with_a_login(
    engine: Engine, tmp_path: Path, smtp_server: tuple[Inbox, int], address: str
) -> None:
    inbox, port = smtp_server
    settings = {
        "smtp_host": "127.0.0.1", "smtp_port": port, "smtp_username": USER, "smtp_password": SECRET,
        "smtp_starttls": False, "mail_from": "Shop <shop@example.com>",
    }
    with serving(engine, tmp_path, **settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        registered = client.post(
            "/v1/auth/register", json={"email": address, "password": PASSWORD, "name": "Ada", "last_name": "Lovelace"}
        )
        assert registered.status_code == 202, registered.text
        [message] = [m for m in inbox.messages if m["To"] == address]
        assert inbox.logins == [USER]
        assert message["From"] == "Shop <shop@example.com>" and message["Subject"] == "Confirm your email address"
        token = re.search(r"^([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)\r?$", message.get_content(), re.M).group(1)
        assert client.post("/v1/auth/verify-email", json={"token": token}).status_code == 200
    assert not (tmp_path / "mail").exists(), "nothing went to the folder"


def test_starttls_verifies_the_servers_certificate(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    inbox, port = Inbox(), free_port()
    controller = Controller(
        inbox, hostname="127.0.0.1", port=port, tls_context=server_tls, require_starttls=True,
        authenticator=inbox.authenticate, auth_required=True,
    )
    controller.start()
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        mail = Email("ada@example.com", "Over TLS", "Hello")
        SmtpMailer("127.0.0.1", port, "shop@example.com", USER, SECRET, True, tls_context=trusting).send(mail)
        assert [m["Subject"] for m in inbox.messages] == ["Over TLS"] and inbox.logins == [USER]
        with pytest.raises(ssl.SSLCertVerificationError):  # the system's CAs do not know this server
            SmtpMailer("127.0.0.1", port, "shop@example.com", USER, SECRET, True).send(mail)
        assert len(inbox.messages) == 1 and inbox.logins == [USER], "no password went to an unverified server"
    finally:
        controller.stop()


def test_a_mail_server_that_is_down_does_not_fail_a_committed_request(
    engine: Engine, tmp_path: Path, address: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = {"smtp_host": "127.0.0.1", "smtp_port": free_port(), "smtp_starttls": False}
    with caplog.at_level(logging.ERROR, logger="billfold.mail"):
        with serving(engine, tmp_path, **settings) as url, httpx.Client(base_url=url, timeout=30) as client:
            registered = client.post(
                "/v1/auth/register", json={"email": address, "password": PASSWORD, "name": "Ada", "last_name": "Lovelace"}
            )
            assert registered.status_code == 202, registered.text
            signed_in = client.post("/v1/auth/sign-in", json={"email": address, "password": PASSWORD})
            assert signed_in.status_code == 200, "the account exists: the commit stood"
    [record] = [r for r in caplog.records if r.name == "billfold.mail"]
    assert "could not send 'Confirm your email address'" in record.getMessage()
