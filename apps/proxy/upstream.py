"""The one upstream HTTP client of a worker process.

aiohttp's ClientSession on the hot path: measured faster than httpx (and httpx's aiohttp
transport) under concurrency on this kind of machine; see README "Upstream client".
Timeouts are explicit per deployment; the connection pool is shared and bounded.
Connections go only where settings.UPSTREAM_ALLOWED_HOSTS allows, judged on the resolved
address (apps.outbound), and redirects are never followed: README "Outbound URLs".
"""

import aiohttp
from django.conf import settings

from apps.outbound.aiohttp_connector import guarded_connector, is_refusal
from apps.outbound.guard import Allowlist

from .providers.base import UpstreamRequest


class UpstreamTimeout(Exception):
    pass


class UpstreamConnectionError(Exception):
    pass


class UpstreamRedirect(UpstreamConnectionError):
    """The upstream answered 3xx. Never followed: the body (and the deployment's key) would
    go to a host nobody allow-listed; the deployment's base URL is wrong."""


class UpstreamNotAllowed(UpstreamConnectionError):
    """The outbound allowlist refused the connection (apps.outbound)."""


_session: aiohttp.ClientSession | None = None


def session() -> aiohttp.ClientSession:
    global _session
    if _session is None or _session.closed:
        connector = guarded_connector(
            Allowlist.parse(settings.UPSTREAM_ALLOWED_HOSTS),
            limit=settings.UPSTREAM_POOL_LIMIT,
            limit_per_host=settings.UPSTREAM_POOL_LIMIT_PER_HOST,
            ttl_dns_cache=300,
            keepalive_timeout=30,
        )
        _session = aiohttp.ClientSession(
            connector=connector,
            # Bodies are sent pre-serialised with orjson; aiohttp's annotation does not admit
            # None, which it never calls when no `json=` is passed.
            json_serialize=None,  # type: ignore[arg-type]
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )
    return _session


async def close() -> None:
    global _session
    if _session is not None and not _session.closed:
        await _session.close()
    _session = None


def _timeout(seconds: float, *, stream: bool) -> aiohttp.ClientTimeout:
    connect = min(settings.UPSTREAM_CONNECT_TIMEOUT, seconds)
    if stream:
        # A stream may run long; what matters is the gap between chunks.
        return aiohttp.ClientTimeout(total=None, connect=connect, sock_read=seconds)
    return aiohttp.ClientTimeout(total=seconds, connect=connect)


async def open_response(
    request: UpstreamRequest, body: bytes, *, timeout_seconds: float, stream: bool
) -> aiohttp.ClientResponse:
    """Send a request and return the response with its body unread; caller releases it."""
    headers = {"content-type": "application/json", **request.headers}
    try:
        response = await session().request(
            request.method,
            request.url,
            data=body,
            headers=headers,
            timeout=_timeout(timeout_seconds, stream=stream),
            allow_redirects=False,
        )
    except TimeoutError as exc:
        raise UpstreamTimeout(str(exc) or "timed out") from exc
    except aiohttp.ClientError as exc:
        if is_refusal(exc):
            # From None: the cause's text holds the host and port; this names neither.
            raise UpstreamNotAllowed("connection refused by the outbound allowlist") from None
        raise UpstreamConnectionError(f"{exc.__class__.__name__}: {exc}") from exc
    if 300 <= response.status < 400:
        # Released unread: closing the connection is cheaper than reading a body we drop.
        response.release()
        raise UpstreamRedirect(f"answered {response.status} (a redirect, not followed)")
    return response


async def read_body(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await response.read()
    except TimeoutError as exc:
        raise UpstreamTimeout("timed out reading the answer") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamConnectionError(f"{exc.__class__.__name__}: {exc}") from exc
    finally:
        response.release()
