"""Host headers and page policy.

ALLOWED_HOSTS applies on the paths the ASGI dispatcher serves before Django (/v1, /metrics,
/simulator) exactly as Django applies it to its own pages; a configured METRICS_TOKEN is
needed from loopback too; every portal page carries the Content-Security-Policy. Checked
against a real gateway process (uvicorn, the project's ASGI app); the host rule is also
compared with Django's own `HttpRequest.get_host` on the same host values.
"""

import socket
from collections.abc import Iterator

import httpx
import pytest
from django.core.exceptions import DisallowedHost
from django.http import HttpResponse
from django.test import RequestFactory
from prometheus_client.parser import text_string_to_metric_families

from apps.accounts.constants import Role
from gateway_portal import security
from tests import factories
from tests.proxy.conftest import GatewayServer, purge_usage_rows, start_gateway, stop_gateway
from tests.proxy.helpers import declare_model

TOKEN = "metrics-token-for-tests"
# What the test gateway serves: loopback (how the tests reach it) and one public name.
GATEWAY_HOSTS = "127.0.0.1,localhost,.gateway.example"
MESSAGES = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def guarded(django_db_setup, django_db_blocker) -> Iterator[GatewayServer]:
    server = start_gateway({"METRICS_TOKEN": TOKEN, "ALLOWED_HOSTS": GATEWAY_HOSTS})
    yield server
    stop_gateway(server)
    with django_db_blocker.unblock():
        purge_usage_rows()


def raw_request(server: GatewayServer, request: bytes) -> tuple[int, bytes]:
    """One request over a bare socket (httpx always sends a Host header)."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def assert_invalid_host(response: httpx.Response, host: str) -> None:
    assert response.status_code == 400, (response.request.url, response.text)
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert {k: error[k] for k in ("type", "param", "code")} == {
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_host",
    }
    assert repr(host) in error["message"]


@pytest.mark.django_db(transaction=True)
def test_a_foreign_host_is_refused_on_every_path_django_does_not_see(guarded, user):
    secret = factories.make_key(user=user)[1]
    declare_model("host-chat", guarded.simulator_url, "demo-chat")
    guarded.wait_for_model(secret, "host-chat")
    key = {"Authorization": f"Bearer {secret}"}
    chat = {"model": "host-chat", "messages": MESSAGES}
    with httpx.Client(base_url=guarded.url, timeout=30) as client:
        for host in ("evil.com", "evil.com:80", "127.0.0.1.evil.com", "gateway.example.evil"):
            foreign = {"Host": host}
            assert_invalid_host(client.get("/v1/models", headers={**key, **foreign}), host)
            response = client.post("/v1/chat/completions", json=chat, headers={**key, **foreign})
            assert_invalid_host(response, host)
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            assert_invalid_host(client.get("/metrics", headers={**bearer, **foreign}), host)
            assert_invalid_host(client.get("/simulator/v1/models", headers=foreign), host)
            # Django's own check on the portal, for comparison.
            assert client.get("/healthz", headers=foreign).status_code == 400

        # Allowed names: loopback with its port (httpx's default Host), a subdomain pattern.
        for host in (None, "localhost", "api.gateway.example", "gateway.example.:8000"):
            named = {"Host": host} if host else {}
            models = client.get("/v1/models", headers={**key, **named})
            assert models.status_code == 200, (host, models.text)
            assert "host-chat" in {m["id"] for m in models.json()["data"]}
            response = client.post("/v1/chat/completions", json=chat, headers={**key, **named})
            assert response.status_code == 200, (host, response.text)
            assert response.json()["choices"][0]["message"]["content"]
            assert client.get("/simulator/v1/models", headers=named).status_code == 200
    # The gateway's upstream hop to its own /simulator names 127.0.0.1: that passes too.
    assert response.json()["model"]


@pytest.mark.django_db(transaction=True)
def test_without_a_host_header_the_listening_address_is_checked_as_django_does(guarded):
    # HTTP/1.0 may omit Host; Django then checks SERVER_NAME (here 127.0.0.1, allowed).
    status, body = raw_request(guarded, b"GET /v1/models HTTP/1.0\r\n\r\n")
    assert status == 401 and b"missing_api_key" in body
    status, _ = raw_request(guarded, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert status == 200
    status, body = raw_request(guarded, b"GET /v1/models HTTP/1.0\r\nHost: evil.com\r\n\r\n")
    assert status == 400 and b"invalid_host" in body


@pytest.mark.django_db(transaction=True)
def test_a_configured_metrics_token_is_needed_from_loopback_too(guarded):
    with httpx.Client(base_url=guarded.url, timeout=30) as client:
        assert client.get("/metrics").status_code == 403
        wrong = client.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 403
        response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {"tollgate_requests", "tollgate_usage_buffer_depth"} <= names


@pytest.mark.django_db(transaction=True)
def test_the_served_portal_pages_carry_the_policy(guarded, settings):
    with httpx.Client(base_url=guarded.url, timeout=30) as client:
        for path in ("/login/", "/admin/login/", "/healthz"):
            response = client.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-security-policy"] == settings.CONTENT_SECURITY_POLICY
        # The API on /v1 is JSON for programs, not a page: no policy there.
        assert "content-security-policy" not in client.get("/v1/models").headers


@pytest.mark.django_db
@pytest.mark.embedded
def test_logged_in_pages_carry_the_policy(client, team, settings):
    policy = settings.CONTENT_SECURITY_POLICY
    assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy
    client.force_login(factories.make_user("root", team=team, role=Role.ADMIN, superuser=True))
    for path in ("/", "/dashboards/", "/dashboards/cost/", "/admin/", "/admin/accounts/team/"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response["Content-Security-Policy"] == policy, path


@pytest.mark.embedded
def test_the_middleware_keeps_a_views_own_policy_and_can_be_turned_off(rf, settings):
    settings.CONTENT_SECURITY_POLICY = "default-src 'self'"
    own = security.content_security_policy(
        lambda request: HttpResponse(headers={"Content-Security-Policy": "default-src 'none'"})
    )
    assert own(rf.get("/"))["Content-Security-Policy"] == "default-src 'none'"
    plain = security.content_security_policy(lambda request: HttpResponse())
    assert plain(rf.get("/"))["Content-Security-Policy"] == "default-src 'self'"
    settings.CONTENT_SECURITY_POLICY = ""
    assert "Content-Security-Policy" not in plain(rf.get("/"))


HOSTS = [
    "127.0.0.1:8000", "LOCALHOST", "localhost.", "[::1]:443", "gateway.example.com",
    "api.gateway.example.com:8443", "evil.com", "gateway.example.com.evil.com",
    "xgateway.example.com", "bad host", "", "a" * 300, "127.0.0.1:80:80", "[::1",
]  # fmt: skip


def scope_for(host: str | None, forwarded: str | None = None) -> dict:
    headers = [(b"accept", b"*/*")]
    if host is not None:
        headers.append((b"host", host.encode()))
    if forwarded is not None:
        headers.append((b"x-forwarded-host", forwarded.encode()))
    return {"type": "http", "headers": headers, "server": ("127.0.0.1", 8000), "method": "GET"}


def django_allows(**meta) -> bool:
    try:
        RequestFactory().get("/", **meta).get_host()
    except DisallowedHost:
        return False
    return True


@pytest.mark.embedded
@pytest.mark.parametrize(
    ("debug", "allowed_hosts"),
    [
        (False, ["127.0.0.1", "localhost", "[::1]", ".gateway.example.com"]),
        (True, []),
        (False, ["*"]),
        (False, []),
    ],
)
def test_the_dispatcher_decides_every_host_as_django_does(settings, debug, allowed_hosts):
    settings.DEBUG, settings.ALLOWED_HOSTS = debug, allowed_hosts
    for host in HOSTS:
        expected = django_allows(HTTP_HOST=host)
        assert security.host_allowed(scope_for(host)) is expected, (host, allowed_hosts)
        # Cached decisions are the same decisions.
        assert security.host_allowed(scope_for(host)) is expected
    # No Host header: both fall back to the listening address.
    assert security.host_allowed(scope_for(None)) is django_allows(
        SERVER_NAME="127.0.0.1", SERVER_PORT="8000"
    )
    # X-Forwarded-Host counts only when USE_X_FORWARDED_HOST is on, as in Django.
    settings.USE_X_FORWARDED_HOST = True
    both = {"HTTP_HOST": "127.0.0.1", "HTTP_X_FORWARDED_HOST": "evil.com"}
    assert security.host_allowed(scope_for("127.0.0.1", "evil.com")) is django_allows(**both)


@pytest.mark.embedded
def test_host_decisions_are_cached_within_a_bound_and_follow_the_setting(settings):
    settings.ALLOWED_HOSTS = ["gateway.example.com"]
    for n in range(security.HOST_DECISIONS_MAX * 3):
        assert not security.host_allowed(scope_for(f"scan-{n}.example.net"))
    assert len(security._decisions) == security.HOST_DECISIONS_MAX
    assert security.host_allowed(scope_for("gateway.example.com"))
    # A new ALLOWED_HOSTS (an override in tests, a reload) voids earlier decisions.
    settings.ALLOWED_HOSTS = ["scan-1.example.net"]
    assert security.host_allowed(scope_for("scan-1.example.net"))
    assert not security.host_allowed(scope_for("gateway.example.com"))
