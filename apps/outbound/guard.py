"""The rules for every URL the product calls out to: upstreams now, webhooks, SSO discovery
and export destinations later. README "Outbound URLs".

An allowlist entry is one of:
- a host name (`api.openai.com`) or a wildcard (`*.openai.azure.com`, subdomains at any
  depth, not the bare domain): the name may be used, and its addresses must be public;
- an IP network in CIDR (`10.0.0.0/8`) or a bare address (`127.0.0.1`): a URL may name an
  address in it, and a name on the list may resolve into it even when it is private;
- `*`: any host name or literal address, public addresses only.
An empty list allows nothing.

Two checks use the same rules. `check_url` judges a URL when it is configured (names are not
resolved then: DNS answers change). At connect time the HTTP client (aiohttp_connector,
httpx_transport) judges the addresses a name resolved to, so a listed name that resolves to
loopback, a private network or the cloud metadata address is refused.
"""

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# IPv6 forms that carry an IPv4 address the packets end up at: 6to4 (2002::/16, handled by
# `sixtofour`) and the NAT64 well-known prefix, whose last 32 bits are the IPv4 address.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class OutboundRefused(OSError):
    """A connection the allowlist refuses. An OSError, so HTTP clients report a failed connect.

    Messages never carry the resolved address: the caller names the target by its configured
    name.
    """


def ip_of(host: str) -> IPAddress | None:
    """The address a host literal denotes, including legacy forms like `2130706433`."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    # Some HTTP clients hand `0x7f.1` or `017700000001` to inet_aton and reach 127.0.0.1, so
    # such names are judged as the addresses they are, not as host names.
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _unwrap(ip: IPAddress) -> IPAddress:
    """`::ffff:10.0.0.1` connects to 10.0.0.1: judge it as that."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_public(ip: IPAddress) -> bool:
    """Globally routable unicast, and not a wrapper around an address that is not."""
    ip = _unwrap(ip)
    if not ip.is_global or ip.is_multicast:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.sixtofour is not None and not is_public(ip.sixtofour):
            return False
        if ip in _NAT64 and not is_public(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)):
            return False
    return True


def _normalise_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


@dataclass(frozen=True, slots=True)
class Allowlist:
    """A parsed allowlist (see the module docstring for what entries mean)."""

    names: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()
    any_public: bool = False

    @classmethod
    def parse(cls, entries: Iterable[str]) -> "Allowlist":
        names: list[str] = []
        networks: list[IPNetwork] = []
        any_public = False
        for raw in entries:
            entry = _normalise_host(raw)
            if not entry:
                continue
            if entry == "*":
                any_public = True
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.append(entry)
        return cls(names=tuple(names), networks=tuple(networks), any_public=any_public)

    def allows_name(self, host: str) -> bool:
        """May a URL name this host (not an address literal)? Its addresses are judged apart."""
        if self.any_public:
            return True
        host = _normalise_host(host)
        for pattern in self.names:
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                    return True
            elif host == pattern:
                return True
        return False

    def in_networks(self, ip: IPAddress) -> bool:
        ip = _unwrap(ip)
        return any(ip in net for net in self.networks if ip.version == net.version)

    def allows_literal(self, ip: IPAddress) -> bool:
        """May a URL name this address directly?"""
        return self.in_networks(ip) or (self.any_public and is_public(ip))

    def allows_address(self, address: str) -> bool:
        """May a connection go to this address? Public ones, and those in a listed network.

        A public address reached through an unlisted name never gets here: the name is refused
        first (`connect_addresses`, and `check_url` at configuration).
        """
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return self.in_networks(ip) or is_public(ip)

    def connect_addresses(self, host: str, addresses: Iterable[str]) -> list[str]:
        """Of the addresses `host` resolved to, those a connection may go to.

        OutboundRefused when the name is not on the list or none of its addresses may be used.
        The refused ones are dropped rather than failing the whole name, so a name with one
        public and one private answer still connects, to the public one.
        """
        if ip_of(host) is None and not self.allows_name(host):
            raise OutboundRefused("the host is not on the outbound allowlist")
        kept = [address for address in addresses if self.allows_address(address)]
        if not kept:
            raise OutboundRefused("the host resolves only to addresses the allowlist refuses")
        return kept


def check_url(url: str, allowed: Iterable[str]) -> None:
    """Raise ValidationError unless `url` may be configured as an outbound URL.

    Always: the scheme is http or https, a host is present, and the URL has no user name or
    password (secrets belong in the credentials field, not in a URL shown in lists). Then the
    host must be allowed by `allowed` (module docstring): a literal address must be in a
    listed network (or public, with `*`), a name must match a listed name (or `*`).
    """
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise ValidationError(
            "Enter a valid URL: %(error)s", code="invalid", params={"error": exc}
        ) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValidationError("The URL must use http or https.", code="scheme")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValidationError(
            "The URL must not contain credentials; use the API key field.", code="credentials"
        )
    host = _normalise_host(parts.hostname or "")
    if not host:
        raise ValidationError("The URL must name a host.", code="host")

    allowlist = Allowlist.parse(allowed)
    ip = ip_of(host)
    if ip is not None:
        if not allowlist.allows_literal(ip):
            raise ValidationError(
                "The address %(host)s is not in an allowed outbound network.",
                code="host_not_allowed",
                params={"host": host},
            )
        return
    if not allowlist.allows_name(host):
        raise ValidationError(
            "The host %(host)s is not an allowed outbound host.",
            code="host_not_allowed",
            params={"host": host},
        )
