"""A software WebAuthn authenticator, and the browser around it, for tests.

It does what a platform authenticator and ``navigator.credentials`` do together: makes an ES256
(EC P-256) key pair per credential, answers registration options with a real ``clientDataJSON``
and a CBOR attestation object in the "none" format (authenticator data with the RP id hash, the
UP, UV and AT flags, the signature counter and the attested credential data with a COSE key),
and answers sign-in options with authenticator data signed together with the client data's hash.
Its output is the JSON form of a ``PublicKeyCredential`` (``toJSON()``), binary as base64url.

CBOR is written by the small encoder below (RFC 8949, just the types WebAuthn needs), so the
server's parser is checked against an encoder it did not come with.
"""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
import struct
from base64 import urlsafe_b64decode, urlsafe_b64encode
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

UP, UV, AT = 0x01, 0x04, 0x40
AAGUID = bytes.fromhex("b1f1d0000000400080000000000000aa")  # any 16 bytes: "none" attestation vouches for nothing


def b64url(data: bytes) -> str:
    return urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return urlsafe_b64decode(text + "=" * (-len(text) % 4))


def cbor(value: Any) -> bytes:
    """Encode ints, byte strings, text, lists and dicts (keys in the order given) as CBOR."""

    def head(major: int, argument: int) -> bytes:
        if argument < 24:
            return bytes([major << 5 | argument])
        for extra, size in ((24, "B"), (25, ">H"), (26, ">I"), (27, ">Q")):
            if argument < 1 << (8 * struct.calcsize(size)):
                return bytes([major << 5 | extra]) + struct.pack(size, argument)
        raise ValueError("integer too large for CBOR")

    if isinstance(value, bool):
        return bytes([0xF5 if value else 0xF4])
    if isinstance(value, int):
        return head(0, value) if value >= 0 else head(1, -1 - value)
    if isinstance(value, bytes):
        return head(2, len(value)) + value
    if isinstance(value, str):
        encoded = value.encode()
        return head(3, len(encoded)) + encoded
    if isinstance(value, list):
        return head(4, len(value)) + b"".join(cbor(item) for item in value)
    if isinstance(value, dict):
        return head(5, len(value)) + b"".join(cbor(k) + cbor(v) for k, v in value.items())
    raise TypeError(f"cannot encode {type(value).__name__} as CBOR")


@dataclass
class Credential:
    id: bytes
    private_key: ec.EllipticCurvePrivateKey
    rp_id: str
    user_handle: bytes
    sign_count: int = 0

    def cose_public_key(self) -> bytes:
        numbers = self.private_key.public_key().public_numbers()
        # kty EC2 (2), alg ES256 (-7), crv P-256 (1), x, y
        return cbor({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")})


@dataclass
class Authenticator:
    """One device holding passkeys, as seen through a browser at ``origin``."""

    origin: str
    credentials: dict[bytes, Credential] = field(default_factory=dict)
    user_verified: bool = True

    def clone(self) -> Authenticator:
        """A copy with the same keys and counters: what an attacker who extracted the keys holds."""
        return Authenticator(self.origin, copy.deepcopy(self.credentials), self.user_verified)

    def _client_data(self, kind: str, challenge: str, origin: str | None) -> bytes:
        return json.dumps(
            {"type": kind, "challenge": challenge, "origin": origin or self.origin, "crossOrigin": False},
            separators=(",", ":"),
        ).encode()

    def _flags(self, extra: int = 0) -> int:
        return UP | (UV if self.user_verified else 0) | extra

    def create(self, options: dict[str, Any], *, origin: str | None = None) -> dict[str, Any]:
        """Answer ``navigator.credentials.create({publicKey: options})``."""
        rp_id = options["rp"]["id"]
        excluded = {unb64url(c["id"]) for c in options.get("excludeCredentials", [])}
        if excluded & set(self.credentials):
            raise ValueError("InvalidStateError: this authenticator already holds an excluded credential")
        credential = Credential(
            id=secrets.token_bytes(32), private_key=ec.generate_private_key(ec.SECP256R1()), rp_id=rp_id,
            user_handle=unb64url(options["user"]["id"]),
        )
        self.credentials[credential.id] = credential
        client_data = self._client_data("webauthn.create", options["challenge"], origin)
        attested = AAGUID + struct.pack(">H", len(credential.id)) + credential.id + credential.cose_public_key()
        auth_data = (
            hashlib.sha256(rp_id.encode()).digest() + bytes([self._flags(AT)]) + struct.pack(">I", credential.sign_count) + attested
        )
        attestation = cbor({"fmt": "none", "attStmt": {}, "authData": auth_data})
        return {
            "id": b64url(credential.id),
            "rawId": b64url(credential.id),
            "type": "public-key",
            "response": {"clientDataJSON": b64url(client_data), "attestationObject": b64url(attestation), "transports": ["internal"]},
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        }

    def get(self, options: dict[str, Any], *, origin: str | None = None, credential_id: bytes | None = None) -> dict[str, Any]:
        """Answer ``navigator.credentials.get({publicKey: options})`` with a passkey for the RP
        (the only one, or ``credential_id``); the counter moves up by one."""
        rp_id = options["rpId"]
        candidates = [c for c in self.credentials.values() if c.rp_id == rp_id and credential_id in (None, c.id)]
        if len(candidates) != 1:
            raise ValueError(f"expected one passkey for {rp_id}, found {len(candidates)}")
        credential = candidates[0]
        credential.sign_count += 1
        client_data = self._client_data("webauthn.get", options["challenge"], origin)
        auth_data = hashlib.sha256(rp_id.encode()).digest() + bytes([self._flags()]) + struct.pack(">I", credential.sign_count)
        signature = credential.private_key.sign(auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256()))
        return {
            "id": b64url(credential.id),
            "rawId": b64url(credential.id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data),
                "authenticatorData": b64url(auth_data),
                "signature": b64url(signature),
                "userHandle": b64url(credential.user_handle),
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        }
