"""The API's door for providers' deliveries: ``POST /v1/webhooks/{provider_id}``, answered in the
event loop before FastAPI, many events a commit.

A provider sends events in bursts (a batch of renewals, a dispute wave, a replay of a day), and a
delivery does little: check a signature over the raw body, store the event once, answer 2xx. Through
FastAPI each one cost about 2.3 ms of CPU (routing, dependencies, two thread hops, the ORM, a
commit of its own), so a 2-core machine stored about 400 a second. Here:

- the app hands the request over before its middleware, routing and dependencies
  (``billfold.api.BillfoldApp``), matched by one regular expression;
- the adapter verifying the provider's signature is the one ``adapter_for_delivery`` built in the
  last second (no database read); a signature checked by a digest (the sandbox, Stripe,
  Authorize.net: ``Capabilities.webhooks_checked_offline``) is checked in the event loop, one that
  asks the provider (PayPal) on a thread, as is every one in sandbox mode (its billing clock may
  read the database);
- the event is stored through ``GroupCommit``: the events arriving together are inserted in one
  statement and one commit, and each delivery is answered after the commit that holds its row.

Everything else is the endpoint's behaviour, unchanged: the same checks (a body with NUL, an
unknown provider, a signature or timestamp that does not verify), the same problem documents, the
same answer (``{"id", "duplicate"}``). A request this door does not take (a query string, another
method, a body without a Content-Length or over the limit) goes on through the middleware to FastAPI, whose endpoint (``billfold.webhooks.api``) answers it the same way and
documents the route in the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import anyio.to_thread
from starlette.datastructures import Headers

from billfold.kit import clock
from billfold.kit.db import DATABASE_FAILURES
from billfold.kit.db.group_commit import GroupCommit
from billfold.kit.errors import BillfoldError
from billfold.kit.headers import API_HEADERS
from billfold.kit.http import IN_LOOP_BODY_BYTES, body_holds_nul, database_busy, json_bytes, nul_refused, read_body, send_json, send_problem
from billfold.payments import provider_config
from billfold.providers.base import ProviderAdapter
from billfold.webhooks import inbound

_DELIVERY = re.compile(r"/v1/webhooks/[A-Za-z0-9_.-]{1,50}")


class WebhookDoor:
    """Answers providers' deliveries (see the module's docstring) in front of the whole app: the
    app (``billfold.api.BillfoldApp``) hands it the requests it ``takes`` before any middleware.
    It takes only a plain ``POST /v1/webhooks/{provider_id}`` whose Content-Length is within
    ``max_bytes``; anything else (a chunked or oversized body, a query string) goes the usual way,
    through the size limit and the guards to the endpoint. Its answers carry the headers every API
    answer does (``kit.headers.API_HEADERS``). The card-data guard leaves deliveries alone anyway,
    and admission control limits requests waiting for threads, which these do not take."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._writer: GroupCommit[dict[str, Any], inbound.Received] | None = None
        self._loading: dict[str, asyncio.Future[ProviderAdapter]] = {}

    def takes(self, scope: dict[str, Any]) -> bool:
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("query_string"):
            return False
        if _DELIVERY.fullmatch(scope["path"]) is None:
            return False
        declared = [value for name, value in scope["headers"] if name == b"content-length"]
        return len(declared) == 1 and declared[0].isdigit() and int(declared[0]) <= self.max_bytes

    async def answer(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        provider_id = scope["path"].rsplit("/", 1)[1]
        try:
            received = await self._receive(scope, receive, provider_id)
        except BillfoldError as error:
            await send_problem(send, error, API_HEADERS)
            return
        except DATABASE_FAILURES as error:
            await send_problem(send, database_busy("POST", scope["path"], error), API_HEADERS)
            return
        await send_json(send, 200, json_bytes({"id": received.webhook_id, "duplicate": received.duplicate}), API_HEADERS)

    async def _receive(self, scope: dict[str, Any], receive: Any, provider_id: str) -> inbound.Received:
        body, _ = await read_body(scope, receive)
        if body_holds_nul(body):
            raise nul_refused()
        state = scope["app"].state
        adapter = provider_config.recent_delivery_adapter(state.security, provider_id) or await self._load(state, provider_id)
        headers = Headers(scope=scope)
        # In the event loop only what asks nobody: a digest (not PayPal's call to PayPal), over a
        # body of ordinary size, on a clock that reads no database (the sandbox's billing clock
        # re-reads its offset now and then: the signature's window and the row's id ask it).
        if adapter.capabilities.webhooks_checked_offline and len(body) < IN_LOOP_BODY_BYTES \
                and not isinstance(clock.get_clock(), clock.DatabaseClock):
            row = _event_row(adapter, provider_id, body, headers)
        else:
            row = await anyio.to_thread.run_sync(_event_row, adapter, provider_id, body, headers)
        if self._writer is None:
            self._writer = GroupCommit(state.sessions, inbound.store_rows)
        return await self._writer.submit(row)

    async def _load(self, state: Any, provider_id: str) -> ProviderAdapter:
        """The provider's adapter read afresh, once for all the deliveries waiting for it (every
        second, the deliveries arriving as the last one ages would otherwise each read it)."""
        loading = self._loading.get(provider_id)
        if loading is None:
            loading = asyncio.ensure_future(anyio.to_thread.run_sync(_delivery_adapter, state, provider_id))
            self._loading[provider_id] = loading
            loading.add_done_callback(lambda _: self._loading.pop(provider_id, None))
        return await asyncio.shield(loading)


def _event_row(adapter: ProviderAdapter, provider_id: str, body: bytes, headers: Headers) -> dict[str, Any]:
    return inbound.event_row(provider_id, adapter.verify_webhook(body, headers))


def _delivery_adapter(state: Any, provider_id: str) -> ProviderAdapter:
    with state.sessions() as session:
        return provider_config.adapter_for_delivery(session, state.security, provider_id)
