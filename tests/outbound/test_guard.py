"""The outbound URL guard: its rules, and the aiohttp and httpx clients built on them, against
real HTTP servers on loopback (`localhost` resolves to 127.0.0.1 here)."""

import socket

import aiohttp
import httpx
import pytest
from django.core.exceptions import ValidationError

from apps.outbound.aiohttp_connector import GuardedResolver, guarded_connector, is_refusal
from apps.outbound.guard import Allowlist, OutboundRefused, check_url, is_public
from apps.outbound.httpx_transport import httpx_async_client, httpx_client
from tests.outbound.servers import recording_server

pytestmark = pytest.mark.embedded


def test_localhost_resolves_to_loopback_here():
    # The connect-time tests below rely on it.
    addresses = {info[4][0] for info in socket.getaddrinfo("localhost", 80, socket.AF_INET)}
    assert addresses == {"127.0.0.1"}


# --- check_url (configuration time) -------------------------------------------------------

ALLOWED = ["api.openai.com", "*.openai.azure.com", "127.0.0.0/8", "10.0.0.0/8", "fd00::/8"]


@pytest.mark.parametrize(
    "url",
    [
        "https://api.openai.com/v1",
        "https://API.OpenAI.com./v1",
        "https://contoso.openai.azure.com",
        "https://a.b.openai.azure.com/openai",
        "http://127.0.0.1:8001/v1",
        "http://10.20.30.40/v1",
        "http://[fd00::1]:8000/v1",
        "http://[::ffff:10.0.0.1]/v1",
        "http://127.1:9000/v1",
    ],
)
def test_allowed_urls(url):
    check_url(url, ALLOWED)


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("file:///etc/passwd", "scheme"),
        ("ftp://api.openai.com/v1", "scheme"),
        ("gopher://10.0.0.1", "scheme"),
        ("api.openai.com/v1", "scheme"),
        ("https://user:pw@api.openai.com/v1", "credentials"),
        ("https://token@api.openai.com/v1", "credentials"),
        ("https:///v1", "host"),
        ("https://api.openai.com:99999/v1", "invalid"),
        ("https://evil.example.com/v1", "host_not_allowed"),
        ("https://api.openai.com.evil.com/v1", "host_not_allowed"),
        ("https://openai.azure.com/v1", "host_not_allowed"),
        ("https://evilopenai.azure.com/v1", "host_not_allowed"),
        ("http://169.254.169.254/latest", "host_not_allowed"),
        ("http://192.168.1.1/v1", "host_not_allowed"),
        ("http://[::1]/v1", "host_not_allowed"),
        ("http://2852039166/latest", "host_not_allowed"),
        ("http://0xa9.0xfe.0xa9.0xfe/latest", "host_not_allowed"),
        # A name is judged as a name: `localhost` is not made acceptable by 127.0.0.0/8.
        ("http://localhost:8000/v1", "host_not_allowed"),
    ],
)
def test_rejected_urls(url, code):
    with pytest.raises(ValidationError) as excinfo:
        check_url(url, ALLOWED)
    assert excinfo.value.code == code


def test_empty_list_allows_nothing():
    for url in ("https://api.openai.com/v1", "http://8.8.8.8/v1", "http://127.0.0.1/v1"):
        with pytest.raises(ValidationError) as excinfo:
            check_url(url, [])
        assert excinfo.value.code == "host_not_allowed"


def test_star_allows_any_name_and_public_literals_only():
    check_url("https://anything.example/v1", ["*"])
    check_url("http://8.8.8.8/v1", ["*"])
    for url in (
        "http://127.0.0.1/v1",
        "http://10.1.2.3/v1",
        "http://169.254.169.254/",
        "http://[::1]/",
    ):
        with pytest.raises(ValidationError):
            check_url(url, ["*"])
    # A private address needs its network listed, `*` or not.
    check_url("http://10.1.2.3/v1", ["*", "10.0.0.0/8"])


def test_ip_literal_needs_a_network_not_a_hostname_pattern():
    with pytest.raises(ValidationError):
        check_url("http://10.0.0.1/v1", ["*.example.com"])
    check_url("http://10.0.0.1/v1", ["10.0.0.1"])


# --- Addresses (connect time) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.9.9.9", "0.0.0.0", "10.0.0.1", "172.16.0.1", "192.168.0.1",  # noqa: S104
        "169.254.169.254", "100.64.0.1", "224.0.0.1", "255.255.255.255", "::1", "::",
        "fe80::1", "fd00::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
        "2002:7f00:1::", "64:ff9b::a9fe:a9fe",
    ],
)  # fmt: skip
def test_non_public_addresses(address):
    import ipaddress

    assert not is_public(ipaddress.ip_address(address))
    assert not Allowlist.parse(["api.openai.com", "*"]).allows_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses(address):
    assert Allowlist.parse(["api.openai.com"]).allows_address(address)


def test_listed_network_allows_its_private_addresses_only():
    allowlist = Allowlist.parse(["vllm.internal", "10.0.0.0/8"])
    assert allowlist.allows_address("10.1.2.3")
    assert allowlist.allows_address("::ffff:10.1.2.3")
    assert not allowlist.allows_address("192.168.0.1")
    assert not allowlist.allows_address("127.0.0.1")


def test_connect_addresses_drops_refused_answers_and_refuses_when_none_is_left():
    allowlist = Allowlist.parse(["api.example.com"])
    assert allowlist.connect_addresses("api.example.com", ["127.0.0.1", "8.8.8.8"]) == ["8.8.8.8"]
    with pytest.raises(OutboundRefused) as excinfo:
        allowlist.connect_addresses("api.example.com", ["127.0.0.1", "10.0.0.1"])
    assert "127.0.0.1" not in str(excinfo.value)
    with pytest.raises(OutboundRefused):
        allowlist.connect_addresses("other.example.com", ["8.8.8.8"])


class _FixedResolver(aiohttp.abc.AbstractResolver):
    """Stands in for DNS (the outside world): answers every name with fixed addresses."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.asked: list[str] = []

    async def resolve(self, host, port=0, family=socket.AF_INET):
        self.asked.append(host)
        return [
            {"hostname": host, "host": a, "port": port, "family": family, "proto": 0, "flags": 0}
            for a in self.addresses
        ]

    async def close(self):
        pass


async def test_resolver_keeps_only_allowed_addresses():
    dns = _FixedResolver(["10.0.0.5", "8.8.8.8"])
    resolver = GuardedResolver(Allowlist.parse(["api.example.com"]), dns)
    assert [r["host"] for r in await resolver.resolve("api.example.com", 443)] == ["8.8.8.8"]
    with pytest.raises(OutboundRefused):
        await resolver.resolve("elsewhere.example.com", 443)
    assert dns.asked == ["api.example.com"], "a refused name is not even looked up"


# --- aiohttp against a real server ------------------------------------------------------------


async def _aiohttp_get(allowed: list[str], url: str) -> int:
    connector = guarded_connector(Allowlist.parse(allowed), ttl_dns_cache=300)
    async with aiohttp.ClientSession(connector=connector) as client:
        async with client.get(url, allow_redirects=False) as response:
            return response.status


async def test_aiohttp_name_resolving_to_loopback_is_refused_at_connect():
    with recording_server("127.0.0.1") as server:
        port = server.url.rsplit(":", 1)[1]
        with pytest.raises(aiohttp.ClientError) as excinfo:
            await _aiohttp_get(["localhost"], f"http://localhost:{port}/v1/models")
        assert is_refusal(excinfo.value)
        assert server.requests == []
        # Listing the address itself is the explicit allowance.
        assert await _aiohttp_get(["localhost", "127.0.0.1"], f"http://localhost:{port}/") == 200
        assert len(server.requests) == 1


async def test_aiohttp_literal_address_is_judged_when_the_socket_opens():
    # aiohttp does not resolve literals; a stored http://127.0.0.1 URL is caught all the same.
    with recording_server("127.0.0.1") as server:
        with pytest.raises(aiohttp.ClientError) as excinfo:
            await _aiohttp_get(["*", "10.0.0.0/8"], f"{server.url}/v1/models")
        assert is_refusal(excinfo.value)
        assert server.requests == []
        assert await _aiohttp_get(["127.0.0.1"], f"{server.url}/v1/models") == 200


# --- httpx against a real server ---------------------------------------------------------------


def test_httpx_client_refuses_a_name_resolving_to_loopback():
    with recording_server("127.0.0.1") as server:
        port = server.url.rsplit(":", 1)[1]
        with httpx_client(["localhost"], timeout=5) as client, pytest.raises(httpx.ConnectError):
            client.get(f"http://localhost:{port}/")
        assert server.requests == []
        with httpx_client(["localhost", "127.0.0.1"], timeout=5) as client:
            assert client.get(f"http://localhost:{port}/").status_code == 200
        assert len(server.requests) == 1


def test_httpx_client_does_not_follow_redirects():
    with recording_server("127.0.0.1") as target:
        with recording_server("127.0.0.1", redirect_to=target.url) as redirector:
            with httpx_client(["127.0.0.1"], timeout=5) as client:
                response = client.post(f"{redirector.url}/r307/hook", content=b"secret body")
    assert response.status_code == 307
    assert target.requests == []


async def test_httpx_async_client_refuses_and_allows_like_the_sync_one():
    with recording_server("127.0.0.1") as server:
        port = server.url.rsplit(":", 1)[1]
        async with httpx_async_client(["localhost"], timeout=5) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://localhost:{port}/")
            with pytest.raises(httpx.ConnectError):
                await client.get(f"{server.url}/")  # a literal not on the list
        assert server.requests == []
        async with httpx_async_client(["localhost", "127.0.0.1"], timeout=5) as client:
            assert (await client.get(f"http://localhost:{port}/")).status_code == 200
