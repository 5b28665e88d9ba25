"""Host header checks for the paths served in front of Django, and the portal's CSP header.

`/v1`, `/metrics` and `/simulator` are dispatched by `gateway_portal.asgi` before Django, so
Django's ALLOWED_HOSTS check (in `HttpRequest.get_host`) never sees them. `host_allowed`
applies the same rule there: the host Django would read (X-Forwarded-Host when
USE_X_FORWARDED_HOST is on, else Host, else the address the server listens on, as Django
falls back to SERVER_NAME), port stripped, matched by Django's own `validate_host`. Without
it a DNS-rebinding page (evil.com resolving to 127.0.0.1) could call the API and read
`/metrics` from a browser on the gateway's host.

Every portal response gets a Content-Security-Policy (`content_security_policy`; the policy
is settings.CONTENT_SECURITY_POLICY, explained in the README's "Page security policy").
"""

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.http.request import split_domain_port, validate_host
from django.utils.decorators import sync_and_async_middleware

from apps.proxy.errors import BadRequest

# Decisions per raw host value, so a request pays a dict lookup. Bounded: random Host values
# from a scanner must not grow it; past the bound the oldest decision is dropped.
HOST_DECISIONS_MAX = 256
_decisions: dict[bytes, bool] = {}
# Reading a Django setting costs more than the whole cached check (LazySettings goes through a
# Python __getattribute__), so the request path reads none: decisions and this flag are
# computed once, and forgotten when a test overrides one of the settings they depend on.
_HOST_SETTINGS = frozenset({"ALLOWED_HOSTS", "DEBUG", "USE_X_FORWARDED_HOST"})
_use_forwarded_host: bool | None = None


@receiver(setting_changed)
def _forget_host_decisions(*, setting: str, **kwargs) -> None:
    global _use_forwarded_host
    if setting in _HOST_SETTINGS:
        _decisions.clear()
        _use_forwarded_host = None


def raw_host(scope: dict) -> bytes:
    """The host the request names, as Django's `HttpRequest._get_raw_host` picks it."""
    global _use_forwarded_host
    if _use_forwarded_host is None:
        _use_forwarded_host = settings.USE_X_FORWARDED_HOST
    headers = scope["headers"]
    if _use_forwarded_host:
        for name, value in headers:
            if name == b"x-forwarded-host":
                return value
    for name, value in headers:
        if name == b"host":
            return value
    # No Host header (HTTP/1.0): Django falls back to SERVER_NAME, the listening address.
    server = scope.get("server")
    return str(server[0]).encode() if server else b"unknown"


def _decide(host: bytes) -> bool:
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:
        # Django's own default for a DEBUG run with an empty list.
        allowed_hosts = [".localhost", "127.0.0.1", "[::1]"]
    domain, _port = split_domain_port(host.decode("latin-1"))
    return bool(domain) and validate_host(domain, allowed_hosts)


def host_allowed(scope: dict) -> bool:
    """Whether the request's host passes ALLOWED_HOSTS (decided once per host value)."""
    host = raw_host(scope)
    decision = _decisions.get(host)
    if decision is None:
        decision = _decide(host)
        if len(_decisions) >= HOST_DECISIONS_MAX:
            del _decisions[next(iter(_decisions))]
        _decisions[host] = decision
    return decision


async def send_invalid_host(scope: dict, send) -> None:
    """400 with an OpenAI-shaped error body (the shape /v1 clients parse; plain JSON elsewhere)."""
    host = raw_host(scope).decode("latin-1")[:100]
    body = BadRequest(
        f"Invalid Host header {host!r}: this gateway does not serve that host (ALLOWED_HOSTS).",
        code="invalid_host",
    ).body()
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def _add_policy(response: HttpResponse) -> HttpResponse:
    policy = settings.CONTENT_SECURITY_POLICY
    # A view that sets its own policy keeps it; an empty setting turns the header off.
    if policy and "Content-Security-Policy" not in response:
        response["Content-Security-Policy"] = policy
    return response


@sync_and_async_middleware
def content_security_policy(get_response):
    """Adds settings.CONTENT_SECURITY_POLICY to every portal response (async-capable)."""
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponse:
            return _add_policy(await get_response(request))

    else:

        def middleware(request: HttpRequest) -> HttpResponse:
            return _add_policy(get_response(request))

    return middleware
