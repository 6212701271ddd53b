"""Two-factor authentication (TOTP and recovery codes) and passkeys (WebAuthn)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1")
