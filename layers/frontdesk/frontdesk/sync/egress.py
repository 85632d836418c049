"""Where a provider (or a clinic's webhook receiver) may be called: public addresses only
(the SSRF guard).

A provider's base URL, like an outbound webhook's URL, is typed by a clinic admin, so it
could point the workers at the instance metadata service (169.254.169.254), the database, or
anything else inside the VPC. Refused: every address that is not globally routable
(`ipaddress`'s `is_global`: loopback, private, link-local and so the metadata service,
carrier-grade NAT, unspecified, reserved, documentation ranges) and multicast, an IPv4
address inside IPv6 included.

The URL is checked when the account is saved (scheme, no credentials in it, no address
literal or name of that kind); DNS is not asked then, as the answer may change. Each call
resolves the host once, checks every address it got and connects to an allowed one itself,
so a name cannot pass the check with one address and be connected to another (DNS
rebinding). Redirects are not followed and proxies from the environment are not used: both
would connect somewhere that was not checked.

`allowed` names hosts (exact names) and addresses or networks (CIDR) that may be called
although not public: the local fake provider on 127.0.0.1 (PROVIDER_ALLOWED_HOSTS), loopback
webhook receivers in tests and `make dev` (WEBHOOK_ALLOWED_HOSTS).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from frontdesk.errors import InvalidInput

if TYPE_CHECKING:
    from frontdesk.config import Settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# NAT64's well-known prefix carries an IPv4 address in its last 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Names that mean "this machine" or "inside" whatever DNS says.
_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain")
_INTERNAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class EgressRefused(Exception):
    """The host's address is not one a worker may call (the provider adapter makes it a
    ProviderRejected, the webhook sender a failed attempt: calling again cannot help)."""


def public(address: Address) -> bool:
    """Whether `address` is globally routable (an IPv4 address inside IPv6 judged as IPv4)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return public(address.ipv4_mapped)
        if address.sixtofour is not None:
            return public(address.sixtofour)
        if address in _NAT64:
            return public(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return address.is_global and not address.is_multicast


def _literal(host: str) -> Address | None:
    """The address `host` spells, also in the legacy IPv4 forms resolvers accept (127.1,
    0x7f000001, 2130706433)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


@dataclass(frozen=True)
class Egress:
    """The rule for a clinic's provider (or webhook) URLs, and an opener that keeps it on
    every call. `read_timeout`: once connected, each read may take this long (None: the
    connect timeout, as urllib's single timeout does)."""

    allow_http: bool = False
    allowed_hosts: frozenset[str] = frozenset()
    allowed_networks: tuple[Network, ...] = ()
    read_timeout: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Egress:
        return cls.of(settings.provider_allow_http, settings.provider_allow_list())

    @classmethod
    def for_webhooks(cls, settings: Settings) -> Egress:
        """The rule for outbound webhook receivers (WEBHOOK_ALLOW_HTTP, WEBHOOK_ALLOWED_HOSTS)."""
        rule = cls.of(settings.webhook_allow_http, settings.webhook_allow_list())
        return replace(rule, read_timeout=settings.webhook_read_timeout_seconds)

    @classmethod
    def of(cls, allow_http: bool, allowed: Iterable[str]) -> Egress:
        """From settings: `allowed` holds host names and addresses or networks."""
        hosts, networks = set(), []
        for entry in allowed:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(allow_http, frozenset(hosts), tuple(networks))

    def allows(self, host: str, address: Address) -> bool:
        return (
            public(address)
            or host.lower().rstrip(".") in self.allowed_hosts
            or any(address in network for network in self.allowed_networks)
        )

    def check_url(self, url: str, field: str = "apiBaseUrl") -> None:
        """A URL as it is saved; InvalidInput saying what is wrong with `field`."""
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port  # port raises for a non-numeric one
        except ValueError:
            host, port = None, None
        schemes = ("https", "http") if self.allow_http else ("https",)
        if (
            host is None
            or parts.scheme not in schemes
            or parts.username
            or parts.password
            or not url.isascii()
            or (port is not None and not 0 < port < 65536)
        ):
            raise InvalidInput(
                f"{field} must be an https:// URL without credentials"
                + (" (or http:// locally)" if self.allow_http else "")
            )
        name = host.lower().rstrip(".")
        if name in self.allowed_hosts:
            return
        address = _literal(name)
        if address is not None:
            if not self.allows(name, address):
                raise InvalidInput(f"{field} must name a public address")
        elif name in _INTERNAL_NAMES or name.endswith(_INTERNAL_SUFFIXES) or "." not in name:
            raise InvalidInput(f"{field} must name a public host")

    def connect(self, host: str, port: int, timeout: float | None) -> socket.socket:
        """A socket to `host` connected to one of its addresses that the rule allows."""
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise OSError(f"cannot resolve the host ({type(exc).__name__})") from None
        candidates = [
            (family, kind, proto, sockaddr)
            for family, kind, proto, _, sockaddr in found
            if self.allows(host, ipaddress.ip_address(str(sockaddr[0]).split("%")[0]))
        ]
        if not candidates:
            raise EgressRefused(
                "the host resolves to no public address (private, loopback,"
                " link-local or metadata addresses are refused)"
            )
        error: OSError | None = None
        for family, kind, proto, sockaddr in candidates:
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(timeout)
                sock.connect(sockaddr)
                if self.read_timeout is not None:
                    sock.settimeout(self.read_timeout)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
        assert error is not None
        raise error

    def opener(self) -> urllib.request.OpenerDirector:
        """A urllib opener that connects only where this rule allows, without redirects or
        proxies."""
        return urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            _NoRedirects(),
            _CheckedHTTPHandler(self),
            _CheckedHTTPSHandler(self),
        )


class _CheckedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, egress: Egress, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._egress = egress

    def connect(self) -> None:
        self.sock = self._egress.connect(self.host, self.port, self.timeout)


class _CheckedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, egress: Egress, tls: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(*args, context=tls, **kwargs)
        self._egress = egress
        self._tls = tls

    def connect(self) -> None:
        sock = self._egress.connect(self.host, self.port, self.timeout)
        # The certificate is checked against the host name, not the address connected to.
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


class _CheckedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, egress: Egress) -> None:
        super().__init__()
        self._egress = egress

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(partial(_CheckedHTTPConnection, egress=self._egress), req)


class _CheckedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, egress: Egress) -> None:
        super().__init__()
        self._egress = egress
        self._tls = ssl.create_default_context()

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        connection = partial(_CheckedHTTPSConnection, egress=self._egress, tls=self._tls)
        return self.do_open(connection, req)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is the provider's answer (an error), not a place to go: the target was not
    checked."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
