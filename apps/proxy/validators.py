"""Validation of upstream base URLs, the guard against pointing the gateway anywhere."""

import ipaddress
import socket
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _ip_of(host: str) -> IPAddress | None:
    """The address a host literal denotes, including legacy forms like `2130706433`."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    # HTTP clients hand `0x7f.1` or `017700000001` to inet_aton and reach 127.0.0.1, so such
    # names must be judged as the addresses they are, not as host names.
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _split_allowed(allowed: list[str]) -> tuple[list[IPNetwork], list[str]]:
    networks: list[IPNetwork] = []
    patterns: list[str] = []
    for entry in allowed:
        entry = entry.strip().lower()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            patterns.append(entry.rstrip("."))
    return networks, patterns


def _host_matches(host: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        # `*.example.com` covers subdomains at any depth, not `example.com` itself.
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def _ip_allowed(ip: IPAddress, networks: list[IPNetwork]) -> bool:
    candidates = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)
    return any(
        addr in net for addr in candidates for net in networks if addr.version == net.version
    )


def validate_upstream_base_url(url: str, allowed: list[str]) -> None:
    """Raise ValidationError unless `url` may be used as an upstream base URL.

    Always: the scheme is http or https, a host is present, and the URL has no user name or
    password (secrets belong in the deployment's key, not in a URL shown in lists).

    `allowed` restricts hosts: each entry is a host name (`api.openai.com`), a wildcard
    (`*.openai.azure.com`, any depth of subdomain) or an IP network in CIDR
    (`10.0.0.0/8`; a bare address means that address). A host written as an IP address must
    fall in an allowed network, a host name must match an allowed name; names are not
    resolved. An empty `allowed` list means no restriction beyond the checks above.
    """
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise ValidationError(
            "Enter a valid URL: %(error)s", code="invalid", params={"error": exc}
        ) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValidationError("The upstream URL must use http or https.", code="scheme")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValidationError(
            "The upstream URL must not contain credentials; use the deployment's API key.",
            code="credentials",
        )
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise ValidationError("The upstream URL must name a host.", code="host")
    if not allowed:
        return

    networks, patterns = _split_allowed(allowed)
    ip = _ip_of(host)
    if ip is not None:
        if not _ip_allowed(ip, networks):
            raise ValidationError(
                "The address %(host)s is not in an allowed upstream network.",
                code="host_not_allowed",
                params={"host": host},
            )
        return
    if not any(_host_matches(host, pattern) for pattern in patterns):
        raise ValidationError(
            "The host %(host)s is not an allowed upstream host.",
            code="host_not_allowed",
            params={"host": host},
        )
