"""The connect-time guard for aiohttp clients (the upstream client of apps/proxy/upstream.py).

Two hooks of aiohttp's TCPConnector, both judging with apps.outbound.guard:
- the resolver refuses a name not on the list and drops the addresses it may not reach; it
  runs only on a miss of the connector's DNS cache, so a warm request pays nothing;
- the socket factory judges every address a socket is opened to. aiohttp does not resolve
  an address literal (`http://10.0.0.5/`), so this is where a literal already stored in the
  database is caught when the list no longer allows it. It runs once per new connection.

Redirects are the caller's to refuse: pass `allow_redirects=False` on every request.
"""

import socket
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from .guard import Allowlist, OutboundRefused


class GuardedResolver(AbstractResolver):
    """Resolves through aiohttp's default resolver, then applies the allowlist."""

    def __init__(self, allowlist: Allowlist, resolver: AbstractResolver | None = None) -> None:
        self._allowlist = allowlist
        self._resolver = resolver or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        # Before the lookup, so a refused name is not even sent to DNS.
        if not self._allowlist.allows_name(host):
            raise OutboundRefused("the host is not on the outbound allowlist")
        results = await self._resolver.resolve(host, port, family=family)
        kept = set(self._allowlist.connect_addresses(host, [r["host"] for r in results]))
        return [r for r in results if r["host"] in kept]

    async def close(self) -> None:
        await self._resolver.close()


def _socket_factory(allowlist: Allowlist):
    def make_socket(addr_info: tuple[Any, ...]) -> socket.socket:
        family, type_, proto, _, address = addr_info
        if not allowlist.allows_address(address[0]):
            raise OutboundRefused("the address is not allowed by the outbound allowlist")
        return socket.socket(family=family, type=type_, proto=proto)

    return make_socket


def guarded_connector(allowlist: Allowlist, **kwargs: Any) -> aiohttp.TCPConnector:
    """A TCPConnector (pool and cache options in `kwargs`) that connects only where allowed."""
    return aiohttp.TCPConnector(
        resolver=GuardedResolver(allowlist),
        socket_factory=_socket_factory(allowlist),
        **kwargs,
    )


def is_refusal(exc: BaseException) -> bool:
    """Was this aiohttp error the allowlist refusing the connection?"""
    return isinstance(exc, OutboundRefused) or isinstance(
        getattr(exc, "os_error", None), OutboundRefused
    )
