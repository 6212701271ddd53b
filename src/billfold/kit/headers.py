"""What every answer carries, whatever the endpoint: security headers, ``Cache-Control: no-store``
on the API, and ``HEAD`` wherever ``GET`` is served.

- Every answer: ``X-Content-Type-Options: nosniff`` (a browser never guesses a type, so a JSON
  answer cannot be run as a script or page).
- Every HTML page (the front page, ``/docs``): a Content-Security-Policy that refuses
  framing (``frame-ancestors 'none'``, and ``X-Frame-Options: DENY`` for old browsers), allows the
  page's own inline scripts and styles by their SHA-256 (computed from the page as sent, so a page
  and its policy never drift) and nothing else inline, and ``Referrer-Policy: no-referrer``. The
  API reference page loads Swagger UI from Billfold itself, never from a CDN.
- Every answer under ``/v1/``: ``Cache-Control: no-store`` unless the endpoint set its own. API
  answers are one caller's data, and some carry a secret shown once (new API keys, session tokens,
  TOTP secrets, recovery codes): no browser or proxy may keep them.
- ``HEAD``: FastAPI answers only the methods a route names, so ``HEAD`` goes in as ``GET`` and the
  body is dropped on the way out; the headers (Content-Length included) are the ``GET``'s.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

_INLINE = re.compile(rb"<(script|style)((?:\s[^>]*)?)>(.*?)</\1\s*>", re.IGNORECASE | re.DOTALL)
_HAS_SRC = re.compile(rb"\ssrc\s*=", re.IGNORECASE)

# The API reference page loads Swagger UI from Billfold itself (``/static/docs``, the
# files of the fastapi-offline package): nothing comes from the internet.
_REFERENCE_PAGES = {
    "/docs": {
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],  # Swagger UI styles elements as it renders
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
    },
}
_PAGE_DEFAULTS = {"img-src": ["'self'", "data:"]}


def content_security_policy(path: str, html: bytes) -> str:
    """The policy for the HTML page ``html`` served at ``path``."""
    sources: dict[str, list[str]] = {name: list(v) for name, v in _REFERENCE_PAGES.get(path, _PAGE_DEFAULTS).items()}
    for match in _INLINE.finditer(html):
        tag, attributes, content = match.group(1).lower(), match.group(2), match.group(3)
        if tag == b"script" and _HAS_SRC.search(attributes):
            continue
        digest = base64.b64encode(hashlib.sha256(content).digest()).decode()
        directive = sources.setdefault("script-src" if tag == b"script" else "style-src", [])
        if "'unsafe-inline'" not in directive:
            directive.append(f"'sha256-{digest}'")
    policy = ["default-src 'none'", *(f"{name} {' '.join(v)}" for name, v in sources.items() if v)]
    policy += ["base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'"]
    return "; ".join(policy)


API_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store"))
"""What an API answer carries when its endpoint set no Cache-Control (``ResponseHeaders``; the
webhook door, which answers in front of it, adds them itself)."""


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((v for k, v in headers if k.lower() == name), None)


class ResponseHeaders:
    """The headers above, on every answer (see the module's docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        held: dict[str, Any] = {}
        body: list[bytes] = []

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])]
                nosniff, no_store = API_HEADERS
                headers.append(nosniff)
                if path.startswith("/v1/") and _header(headers, b"cache-control") is None:
                    headers.append(no_store)
                message = {**message, "headers": headers}
                if (_header(headers, b"content-type") or b"").lower().startswith(b"text/html"):
                    held["start"] = message  # the policy hashes the page: wait for its body
                    return
                await send(message)
            elif message["type"] == "http.response.body" and "start" in held:
                body.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                page = b"".join(body)
                start = held.pop("start")
                start["headers"] += [
                    (b"content-security-policy", content_security_policy(path, page).encode()),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                await send(start)
                await send({"type": "http.response.body", "body": page})
            else:
                await send(message)

        await self.app(scope, receive, send_with_headers)


class HeadAsGet:
    """``HEAD`` wherever ``GET`` is served: the request goes in as ``GET``; the answer's headers go
    out, its body does not."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "HEAD":
            await self.app(scope, receive, send)
            return
        finished = False

        async def headers_only(message: dict[str, Any]) -> None:
            nonlocal finished
            if message["type"] == "http.response.start":
                await send(message)
            elif message["type"] == "http.response.body":
                if not finished and not message.get("more_body"):
                    finished = True
                    await send({"type": "http.response.body", "body": b""})
            else:
                await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)
