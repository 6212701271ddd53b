"""Which URLs webhooks out may call: http(s), no credentials in the URL, and a host whose every
address is public. A host that resolves to a loopback, private or link-local address (the cloud's
metadata service at 169.254.169.254) is refused unless the ``webhook_targets_allow`` setting names
that kind; multicast, reserved and unspecified addresses always are. The check runs when an endpoint
is registered or changed and again, after resolving the name, before every delivery, which then
connects to the address checked (so a name re-pointed after registration, DNS rebinding, is caught).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from billfold.kit.errors import InvalidInput

MAX_URL = 2000
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(InvalidInput):
    code = "webhook_target_refused"
    title = "Webhooks cannot be sent to this URL"


@dataclass(frozen=True)
class Target:
    """A URL checked: its scheme, host (as written), port, and the addresses it resolved to."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[IpAddress, ...]


def _refuse(detail: str) -> TargetRefused:
    return TargetRefused(detail, errors=[{"field": "url", "message": detail}])


def kind_of(address: IpAddress) -> str | None:
    """Why ``address`` is not public (``loopback``, ``link_local``, ``private``, or a kind that is
    never allowed: ``multicast``, ``unspecified``, ``reserved``, ``not_global``); None if it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link_local"
    if address.is_multicast:
        return "multicast"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "not_global"
    return None


def parse(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an acceptable URL's form; TargetRefused naming what is wrong."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise _refuse(f"the URL must be 1 to {MAX_URL} characters")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise _refuse("the URL must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise _refuse(f"not a URL: {error}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise _refuse("the URL must start with https:// (or http://)")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise _refuse("the URL must not carry a user name or password; authenticate by the webhook signature")
    if not parts.hostname:
        raise _refuse("the URL has no host")
    if parts.fragment:
        raise _refuse("the URL must not have a #fragment")
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80)


def resolve(host: str, port: int) -> tuple[IpAddress, ...]:
    """The addresses ``host`` stands for (itself when it is one)."""
    try:
        return (ipaddress.ip_address(host),)
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        raise _refuse(f"the host {host} does not resolve ({error})") from None
    addresses = []
    for *_, sockaddr in found:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise _refuse(f"the host {host} does not resolve")
    return tuple(addresses)


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check(url: str, allow: Iterable[str]) -> Target:
    """The URL, resolved, with every address allowed; TargetRefused saying which address is not."""
    scheme, host, port = parse(url)
    allowed = set(allow)
    addresses = resolve(host, port)
    for address in addresses:
        kind = kind_of(address)
        if kind is not None and kind not in allowed:
            named = "" if _literal(host) else f" resolves to {address}, which"
            label = kind.replace("_", "-")
            article = "an" if label[0] in "aeiou" else "a"
            setting = (
                f" (the setting BILLFOLD_WEBHOOK_TARGETS_ALLOW may allow {kind} addresses)"
                if kind in ("loopback", "private", "link_local") else ""
            )
            raise _refuse(f"the host {host}{named} is {article} {label} address: webhooks go to public addresses only{setting}")
    return Target(url, scheme, host, port, addresses)
