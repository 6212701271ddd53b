"""Keys, signed tokens, encryption at rest and token hashing: the small amount of cryptography
Billfold does itself, all of it from one secret key.

- ``signed_token``/``read_signed_token``: a JSON payload with a purpose and an expiry, signed with
  HMAC-SHA256 (for email verification links and password resets).
- ``encrypt``/``decrypt``: AES-256-GCM for secrets kept in the database (TOTP keys, provider
  credentials), each use bound to its context so a ciphertext cannot be moved elsewhere.
- ``hash_token``: the SHA-256 under which session tokens and API keys are looked up; the token
  itself is never stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from billfold.kit import clock
from billfold.kit.errors import InvalidInput


class Keyring:
    """Keys derived from the installation's secret, one per use (HKDF), so that a token signed for
    one purpose is worthless for another and signing and encryption never share a key."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("the secret key must be at least 32 bytes")
        self._secret = secret

    def key(self, use: str) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"billfold:{use}".encode()).derive(self._secret)


def load_secret(configured: str | None, data_dir: Path) -> bytes:
    """The installation's secret: ``BILLFOLD_SECRET_KEY`` if set, otherwise a random key kept in
    ``data_dir/secret_key`` (made on first use, readable by its owner only)."""
    if configured:
        return hashlib.sha256(configured.encode()).digest() if len(configured.encode()) < 32 else configured.encode()
    path = data_dir / "secret_key"
    if path.exists():
        return base64.urlsafe_b64decode(path.read_text().strip())
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(base64.urlsafe_b64encode(secret).decode())
    return secret


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signed_token(keyring: Keyring, purpose: str, payload: dict[str, Any], lifetime: timedelta) -> str:
    """A URL-safe token carrying ``payload`` for ``purpose`` until ``lifetime`` from now."""
    body = {"p": purpose, "exp": int((clock.now() + lifetime).timestamp()), "d": payload}
    encoded = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
    signature = hmac.new(keyring.key(f"sign:{purpose}"), encoded.encode(), hashlib.sha256).digest()
    return f"{encoded}.{_b64(signature)}"


def read_signed_token(keyring: Keyring, purpose: str, token: str) -> dict[str, Any]:
    """The payload of a token made by ``signed_token`` for the same purpose, or InvalidInput
    (tampered, made for something else, or expired)."""
    try:
        encoded, signature = token.split(".")
        expected = hmac.new(keyring.key(f"sign:{purpose}"), encoded.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64(signature)):
            raise ValueError("bad signature")
        body = json.loads(_unb64(encoded))
    except (ValueError, TypeError, UnicodeDecodeError) as error:
        raise InvalidInput("the token is not valid", field="token") from error
    if body.get("p") != purpose:
        raise InvalidInput("the token is not valid", field="token")
    if datetime.fromtimestamp(body["exp"], clock.UTC) <= clock.now():
        raise InvalidInput("the token has expired; ask for a new one", field="token")
    return dict(body["d"])


def encrypt(keyring: Keyring, plaintext: bytes, context: str) -> str:
    """AES-256-GCM under the key for encryption at rest, bound to ``context`` (e.g. ``totp:usr_…``)."""
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(keyring.key("encrypt")).encrypt(nonce, plaintext, context.encode())
    return "v1." + _b64(nonce + sealed)


def decrypt(keyring: Keyring, ciphertext: str, context: str) -> bytes:
    version, _, data = ciphertext.partition(".")
    if version != "v1":
        raise ValueError(f"unknown ciphertext version {version!r}")
    raw = _unb64(data)
    return AESGCM(keyring.key("encrypt")).decrypt(raw[:12], raw[12:], context.encode())


def random_token(prefix: str, nbytes: int = 32) -> str:
    """A secret token such as ``bfs_…`` (session) or ``bfk_…`` (API key)."""
    return f"{prefix}_{secrets.token_urlsafe(nbytes)}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def keyed_digest(keyring: Keyring, use: str, value: str) -> str:
    """An HMAC of ``value``: for values derived from others (a session's CSRF token)."""
    return _b64(hmac.new(keyring.key(use), value.encode(), hashlib.sha256).digest())
