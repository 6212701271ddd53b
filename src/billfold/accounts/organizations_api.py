"""Organizations, their members and roles, and addresses of users and organizations."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1")
