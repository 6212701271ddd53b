"""localstripe (a stateful fake Stripe server, from PyPI) for the Stripe adapter's tests: started
on a free local port, plus what a browser or Stripe's dashboard would do there (make a card's
PaymentMethod, pass 3-D Secure), a proxy that loses an answer, and a server that never answers."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.server import free_port

SECRET_KEY = "sk_test_billfold_localstripe"


@dataclass
class LocalStripe:
    url: str
    process: subprocess.Popen[bytes]
    http: httpx.Client = field(repr=False)

    def post(self, path: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        answer = self.http.post(path, data=data or {})
        answer.raise_for_status()
        return answer.json()

    def get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        answer = self.http.get(path, params=params or {})
        answer.raise_for_status()
        return answer.json()

    def card(self, number: str = "4242424242424242") -> str:
        """A PaymentMethod for a test card, as Stripe.js makes one in the customer's browser."""
        return self.post("/v1/payment_methods", {
            "type": "card", "card[number]": number, "card[exp_month]": "12", "card[exp_year]": "2030",
            "card[cvc]": "123",
        })["id"]

    def authenticate(self, payment_intent_id: str, success: bool = True) -> dict[str, Any]:
        """The customer passing (or failing) 3-D Secure."""
        secret = self.get(f"/v1/payment_intents/{payment_intent_id}")["client_secret"]
        return self.post(f"/v1/payment_intents/{payment_intent_id}/_authenticate",
                         {"client_secret": secret, "success": "true" if success else "false"})

    def charges_of(self, payment_intent_id: str) -> list[dict[str, Any]]:
        """Every Charge localstripe holds for a PaymentIntent (money moved once per charge)."""
        found, after = [], None
        while True:
            page = self.get("/v1/charges", {"limit": 100, **({"starting_after": after} if after else {})})
            found += [c for c in page["data"] if c.get("payment_intent") == payment_intent_id]
            if not page["has_more"]:
                return found
            after = page["data"][-1]["id"]

    def payment_intents_with(self, key: str, value: str) -> list[dict[str, Any]]:
        found, after = [], None
        while True:
            page = self.get("/v1/payment_intents", {"limit": 100, **({"starting_after": after} if after else {})})
            found += [p for p in page["data"] if (p.get("metadata") or {}).get(key) == value]
            if not page["has_more"]:
                return found
            after = page["data"][-1]["id"]

    def send_webhooks(self, endpoint_id: str, url: str, secret: str, events: list[str]) -> None:
        """Have localstripe sign and deliver these event types to ``url`` (an endpoint of its config)."""
        data: dict[str, Any] = {"url": url, "secret": secret}
        data.update({f"events[{i}]": e for i, e in enumerate(events)})
        self.http.post(f"/_config/webhooks/{endpoint_id}", data=data).raise_for_status()


@contextmanager
def running_localstripe(log: Path) -> Iterator[LocalStripe]:
    executable = Path(sys.executable).parent / "localstripe"
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen([str(executable), "--port", str(port), "--from-scratch"], stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=url, auth=(SECRET_KEY, ""), timeout=10)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if http.get("/v1/customers").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"localstripe did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield LocalStripe(url, process, http)
    finally:
        http.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def losing_answers(target: str) -> Iterator[LosingProxy]:
    """A proxy to ``target`` that can forward a request and then drop the connection instead of
    answering: the provider acted, the caller never heard (a timeout, a crash)."""
    proxy = LosingProxy(target)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), proxy.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        proxy.http.close()


class LosingProxy:
    def __init__(self, target: str) -> None:
        self.url = ""
        self.http = httpx.Client(base_url=target, timeout=10)
        self.lose: str | None = None  # a path ending: the next such request is forwarded, its answer lost
        self.lose_method: str | None = None  # and only a request of this method (None: any)
        self.lost: list[str] = []
        # (path ending, status, body): the next request to such a path is answered so, not forwarded
        self.answers: list[tuple[str, int, dict[str, Any]]] = []

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                answer = next((a for a in proxy.answers if path.endswith(a[0])), None)
                if answer is not None:  # Stripe's error answers, as it sends them
                    proxy.answers.remove(answer)
                    _, status, payload = answer
                    content = json.dumps(payload).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(content)))
                    self.end_headers()
                    self.wfile.write(content)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
                answer = proxy.http.request(self.command, self.path, content=body, headers=headers)
                if (proxy.lose and self.path.split("?")[0].endswith(proxy.lose)
                        and proxy.lose_method in (None, self.command)):
                    proxy.lost.append(self.path)
                    proxy.lose = None
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)  # acted on, never answered
                    return
                self.send_response(answer.status_code)
                for name in ("Content-Type", "Request-Id"):
                    if name in answer.headers:
                        self.send_header(name, answer.headers[name])
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_DELETE = _forward

        return Handler


@contextmanager
def never_answering() -> Iterator[str]:
    """A server that accepts connections and never answers: a provider that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in held:
            connection.close()
        listener.close()


def closed_port() -> str:
    """An address where nothing listens: connecting is refused."""
    return f"http://127.0.0.1:{free_port()}"
