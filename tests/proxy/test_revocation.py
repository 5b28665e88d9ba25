"""Key changes reaching running gateway processes through Redis pub/sub, not the cache TTL.

Two gateway processes keep keys cached for 5 minutes, so a refusal within a second can only
come from the key-events listener.
"""

import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from apps.accounts.models import ApiKey
from apps.accounts.services import (
    api_key_revoke,
    api_key_rotate,
    team_update,
    virtual_account_update,
)
from tests import factories
from tests.proxy.conftest import GatewayServer, purge_usage_rows, start_gateway, stop_gateway
from tests.proxy.helpers import declare_model

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

GATEWAY_ENV = {"KEY_CACHE_TTL": "300", "LAST_USED_FLUSH_SECONDS": "0.3"}
MODEL = "revocation-chat"


@pytest.fixture(scope="module")
def gateways(django_db_setup, django_db_blocker) -> Iterator[list[GatewayServer]]:
    servers = [start_gateway(GATEWAY_ENV), start_gateway(GATEWAY_ENV)]
    yield servers
    for server in servers:
        stop_gateway(server)
    with django_db_blocker.unblock():
        purge_usage_rows()


def models_status(server: GatewayServer, secret: str) -> int:
    return httpx.get(
        f"{server.url}/v1/models", headers={"Authorization": f"Bearer {secret}"}, timeout=5
    ).status_code


def chat(server: GatewayServer, secret: str, tags: str = "{}") -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {secret}", "X-Gateway-Metadata": tags},
        timeout=10,
    )


def ready(gateways: list[GatewayServer], secret: str) -> None:
    for server in gateways:
        declare_model(MODEL, server.simulator_url, "demo-chat")
        server.wait_for_model(secret, MODEL)


def seconds_until_all(gateways, secret: str, status: int, limit: float = 3.0) -> float:
    started = time.monotonic()
    pending = set(range(len(gateways)))
    while pending and time.monotonic() - started < limit:
        pending = {i for i in pending if models_status(gateways[i], secret) != status}
        if pending:
            time.sleep(0.02)
    assert not pending, f"gateways {pending} still do not answer {status}"
    return time.monotonic() - started


def prove_cached(gateways, key: ApiKey, secret: str) -> None:
    """Revoke behind the services' back: warm gateways keep accepting, so they serve from cache."""
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    assert [models_status(server, secret) for server in gateways] == [200, 200]
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=None)


def test_revocation_reaches_every_gateway_within_a_second(gateways, user):
    key, secret = factories.make_key(user=user)
    ready(gateways, secret)
    prove_cached(gateways, key, secret)
    api_key_revoke(key=key, actor=user)
    assert seconds_until_all(gateways, secret, 401) < 1.0
    for server in gateways:
        for _ in range(5):
            response = chat(server, secret)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "api_key_revoked"


def test_rotation_grace_on_running_gateways(gateways, user):
    key, old_secret = factories.make_key(user=user)
    ready(gateways, old_secret)
    prove_cached(gateways, key, old_secret)
    _, new_secret = api_key_rotate(key=key, actor=user, grace_hours=2.5 / 3600)
    # Mid-grace a client may use either key, on any worker.
    for server in gateways:
        assert chat(server, old_secret).status_code == 200
        assert chat(server, new_secret).status_code == 200
    expires_at = ApiKey.objects.get(pk=key.pk).expires_at
    time.sleep(max(0.0, (expires_at - timezone.now()).total_seconds()) + 0.1)
    for server in gateways:
        response = chat(server, old_secret)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "api_key_expired"
        assert chat(server, new_secret).status_code == 200


def test_required_tags_and_virtual_account_changes_reach_the_gateways(
    gateways, team, virtual_account
):
    _, secret = factories.make_key(virtual_account=virtual_account)
    ready(gateways, secret)
    assert [chat(server, secret).status_code for server in gateways] == [200, 200]
    team_update(team=team, actor=None, required_tag_keys=["project"])
    time.sleep(0.5)
    for server in gateways:
        response = chat(server, secret)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "missing_required_tag" and "'project'" in error["message"]
        assert chat(server, secret, '{"project": "apollo"}').status_code == 200
    virtual_account_update(virtual_account=virtual_account, actor=None, is_active=False)
    assert seconds_until_all(gateways, secret, 401) < 1.0


def test_last_used_is_flushed_by_the_gateway(gateways, user):
    key, secret = factories.make_key(user=user)
    ready(gateways, secret)
    for server in gateways:
        assert chat(server, secret).status_code == 200
    deadline = time.monotonic() + 5
    while ApiKey.objects.get(pk=key.pk).last_used_at is None:
        assert time.monotonic() < deadline, "last-used time never written"
        time.sleep(0.1)
    assert timezone.now() - ApiKey.objects.get(pk=key.pk).last_used_at < timedelta(seconds=10)


def test_revocation_reaches_both_workers_of_one_gateway(user):
    """`uvicorn --workers 2`: each worker process runs its own listener from the lifespan."""
    key, secret = factories.make_key(user=user)
    server = start_gateway(GATEWAY_ENV, workers=2)
    try:
        declare_model(MODEL, server.simulator_url, "demo-chat")
        server.wait_for_model(secret, MODEL)
        # Fresh connections spread over both workers; enough of them warm both caches.
        assert {models_status(server, secret) for _ in range(30)} == {200}
        ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
        assert {models_status(server, secret) for _ in range(30)} == {200}  # served from cache
        ApiKey.objects.filter(pk=key.pk).update(revoked_at=None)
        api_key_revoke(key=key, actor=None)
        time.sleep(1.0)
        assert {models_status(server, secret) for _ in range(30)} == {401}
    finally:
        stop_gateway(server)
