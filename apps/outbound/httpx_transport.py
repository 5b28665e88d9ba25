"""The connect-time guard for httpx clients (webhooks, SSO discovery, export destinations).

httpx resolves names inside httpcore's network backend, so the guard is a backend: it
resolves the name itself, keeps the addresses apps.outbound.guard allows and connects to one
of those. TLS still verifies the certificate against the URL's host name, which httpcore
passes to the TLS layer apart from the connect address.

Use `httpx_client` / `httpx_async_client`: redirects off, no proxies from the environment
(a proxy would make the connect address the proxy's, out of the guard's sight), an explicit
timeout.
"""

import socket
from collections.abc import Iterable

import anyio
import httpcore
import httpx

from .guard import Allowlist, OutboundRefused


def _addresses(infos: Iterable[tuple]) -> list[str]:
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen


class _GuardedBackend(httpcore.NetworkBackend):
    def __init__(self, allowlist: Allowlist) -> None:
        self._allowlist = allowlist
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable | None = None,
    ) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses = self._allowlist.connect_addresses(host, _addresses(infos))
        except OutboundRefused as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve the host: {exc}") from exc
        error: Exception | None = None
        for address in addresses:
            try:
                return self._backend.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                error = exc
        raise error or httpcore.ConnectError("no address to connect to")

    def connect_unix_socket(self, *args, **kwargs) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not outbound URLs")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _GuardedAsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, allowlist: Allowlist) -> None:
        self._allowlist = allowlist
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
        local_address: str | None = None,
        socket_options: Iterable | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses = self._allowlist.connect_addresses(host, _addresses(infos))
        except OutboundRefused as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout("timed out resolving the host") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve the host: {exc}") from exc
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._backend.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                error = exc
        raise error or httpcore.ConnectError("no address to connect to")

    async def connect_unix_socket(self, *args, **kwargs) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not outbound URLs")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class GuardedHTTPTransport(httpx.HTTPTransport):
    """httpx's transport with the guarded backend under its connection pool.

    httpx takes no network backend argument, so this builds the pool its __init__ would
    (no proxy, environment ignored) with the backend; request handling is httpx's own.
    """

    def __init__(
        self,
        allowlist: Allowlist,
        *,
        verify: bool = True,
        limits: httpx.Limits = httpx.Limits(),  # noqa: B008 - immutable
    ) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(allowlist),
        )


class GuardedAsyncHTTPTransport(httpx.AsyncHTTPTransport):
    """The async twin of GuardedHTTPTransport."""

    def __init__(
        self,
        allowlist: Allowlist,
        *,
        verify: bool = True,
        limits: httpx.Limits = httpx.Limits(),  # noqa: B008 - immutable
    ) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedAsyncBackend(allowlist),
        )


def httpx_client(allowed: Iterable[str], *, timeout: httpx.Timeout | float) -> httpx.Client:
    """A client for configured URLs: guarded connects, redirects off, no env proxies."""
    return httpx.Client(
        transport=GuardedHTTPTransport(Allowlist.parse(allowed)),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    )


def httpx_async_client(
    allowed: Iterable[str], *, timeout: httpx.Timeout | float
) -> httpx.AsyncClient:
    """The async twin of `httpx_client`."""
    return httpx.AsyncClient(
        transport=GuardedAsyncHTTPTransport(Allowlist.parse(allowed)),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    )
