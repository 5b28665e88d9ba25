"""Key changes made in another process reach a running gateway within a second, without Redis.

Embedded mode (SQLite, no REDIS_URL, what `make run` serves) has no pub/sub: the CLI, the
admin and the portal append to the key change log (`accounts.KeyChange`) and every gateway
worker polls it every KEY_CHANGE_POLL_SECONDS. The gateway here keeps keys cached for five
minutes, so a refusal within a second can only come from the poller (or, in the services
pass, where these tests run again with PostgreSQL and Redis, from the pub/sub listener; the
change log is then not written at all, so nothing is applied twice).
"""

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.db import connection, connections
from django.db.models.signals import post_save
from django.utils import timezone

from apps.accounts.models import ApiKey, KeyChange, Team, VirtualAccount
from apps.proxy.auth import KeyCache, key_info_from_row
from apps.proxy.key_events import KeyChangePoller, poll_changes_forever, publish_invalidation
from tests import factories
from tests.proxy.conftest import (
    ROOT,
    GatewayServer,
    purge_usage_rows,
    start_gateway,
    stop_gateway,
)
from tests.proxy.conftest import test_database_url as gateway_database_url
from tests.proxy.helpers import declare_model

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.embedded]

MODEL = "embedded-revocation-chat"
WITH_REDIS = bool(os.environ.get("REDIS_URL"))


@pytest.fixture(scope="module")
def cached_gateway(django_db_setup, django_db_blocker) -> Iterator[GatewayServer]:
    server = start_gateway({"KEY_CACHE_TTL": "300"})
    yield server
    stop_gateway(server)
    with django_db_blocker.unblock():
        purge_usage_rows()


@pytest.fixture
def superuser(db):
    return factories.make_user("root", superuser=True)


def v1_get(server: GatewayServer, secret: str) -> httpx.Response:
    return httpx.get(
        f"{server.url}/v1/models", headers={"Authorization": f"Bearer {secret}"}, timeout=5
    )


def chat(server: GatewayServer, secret: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )


def warm_and_prove_cached(server: GatewayServer, key: ApiKey, secret: str) -> None:
    """Revoke with a bare `update()`, which publishes nothing: the gateway still accepts, so
    it serves the key from its cache and only an invalidation can refuse it."""
    assert v1_get(server, secret).status_code == 200
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    time.sleep(0.7)  # more than a poll interval: a poller reading the row itself would refuse
    assert v1_get(server, secret).status_code == 200
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=None)


def first_refusal(
    server: GatewayServer, secret: str, timeout: float, process: subprocess.Popen | None = None
) -> tuple[float, httpx.Response]:
    """Poll until the gateway answers 401: the wall-clock time of that answer, and it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = v1_get(server, secret)
        if response.status_code == 401:
            return time.time(), response
        assert response.status_code == 200, response.text
        if process is not None and process.poll() not in (None, 0):
            pytest.fail(f"command failed: {process.stderr.read()}")
        time.sleep(0.02)
    pytest.fail(f"the gateway never refused the key; log tail: {server.log()[-2000:]}")


@contextlib.contextmanager
def saved_at(model) -> Iterator[list[float]]:
    """Wall-clock times at which rows of `model` are saved: before their transaction
    commits, so a delay measured from them includes the commit and the publish."""
    stamps: list[float] = []

    def stamp(sender, **kwargs) -> None:
        stamps.append(time.time())

    post_save.connect(stamp, sender=model, weak=False)
    try:
        yield stamps
    finally:
        post_save.disconnect(stamp, sender=model)


def logged_changes(key_hash: str) -> int:
    return sum(key_hash in row.key_hashes for row in KeyChange.objects.all())


def assert_published_for_the_mode(key_hash: str) -> None:
    if WITH_REDIS:
        assert logged_changes(key_hash) == 0  # pub/sub only: no second path to apply
    else:
        assert logged_changes(key_hash) >= 1


def test_cli_revocation_reaches_the_running_gateway_within_a_second(cached_gateway, user):
    key, secret = factories.make_key(user=user)
    warm_and_prove_cached(cached_gateway, key, secret)
    env = {**os.environ, "DEBUG": "true", "DATABASE_URL": gateway_database_url()}
    process = subprocess.Popen(
        [sys.executable, "manage.py", "keys", "revoke", key.prefix],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The command needs a few seconds to start Django; the gateway is polled meanwhile.
        refused_at, response = first_refusal(cached_gateway, secret, 60, process)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert f"Revoked {key.prefix}" in stdout
    assert response.json()["error"]["code"] == "api_key_revoked"
    revoked_at = ApiKey.objects.get(pk=key.pk).revoked_at
    delay = refused_at - revoked_at.timestamp()
    print(f"CLI revocation refused {delay:.3f} s after revoked_at")
    assert 0 <= delay < 1.0
    assert_published_for_the_mode(key.key_hash)


def test_admin_revoke_action_reaches_the_gateway_within_a_second(
    cached_gateway, client, superuser, user
):
    key, secret = factories.make_key(user=user)
    warm_and_prove_cached(cached_gateway, key, secret)
    client.force_login(superuser)
    response = client.post(
        "/admin/accounts/apikey/", {"action": "revoke_keys", "_selected_action": [key.pk]}
    )
    assert response.status_code == 302
    refused_at, refusal = first_refusal(cached_gateway, secret, 5)
    assert refusal.json()["error"]["code"] == "api_key_revoked"
    delay = refused_at - ApiKey.objects.get(pk=key.pk).revoked_at.timestamp()
    print(f"admin revoke action refused {delay:.3f} s after revoked_at")
    assert 0 <= delay < 1.0


def test_admin_deactivating_a_virtual_account_reaches_the_gateway_within_a_second(
    cached_gateway, client, superuser, virtual_account
):
    """The admin change form saves the row directly, past the services (its save_model
    publishes)."""
    key, secret = factories.make_key(virtual_account=virtual_account)
    warm_and_prove_cached(cached_gateway, key, secret)
    client.force_login(superuser)
    with saved_at(VirtualAccount) as stamps:
        response = client.post(
            f"/admin/accounts/virtualaccount/{virtual_account.pk}/change/",
            {
                "team": virtual_account.team_id,
                "name": virtual_account.name,
                "description": "",
                "default_tags": '{"feature": "bot"}',
                # `is_active` left out: the checkbox is cleared.
            },
        )
    assert response.status_code == 302, response.content.decode()[-2000:]
    virtual_account.refresh_from_db()
    assert virtual_account.is_active is False
    refused_at, refusal = first_refusal(cached_gateway, secret, 5)
    assert refusal.json()["error"]["code"] == "api_key_disabled"
    delay = refused_at - stamps[0]
    print(f"admin virtual account deactivation refused {delay:.3f} s after the save")
    assert delay < 1.0
    assert_published_for_the_mode(key.key_hash)


def test_admin_deactivating_the_owner_reaches_the_gateway_within_a_second(
    cached_gateway, client, superuser, user
):
    key, secret = factories.make_key(user=user)
    warm_and_prove_cached(cached_gateway, key, secret)
    client.force_login(superuser)
    joined = timezone.localtime(user.date_joined)
    with saved_at(get_user_model()) as stamps:
        response = client.post(
            f"/admin/auth/user/{user.pk}/change/",
            {
                "username": user.username,
                "first_name": "",
                "last_name": "",
                "email": user.email,
                "date_joined_0": joined.strftime("%Y-%m-%d"),
                "date_joined_1": joined.strftime("%H:%M:%S"),
                # `is_active` left out: the checkbox is cleared.
            },
        )
    assert response.status_code == 302, response.content.decode()[-2000:]
    user.refresh_from_db()
    assert user.is_active is False
    refused_at, refusal = first_refusal(cached_gateway, secret, 5)
    assert refusal.json()["error"]["code"] == "api_key_disabled"
    delay = refused_at - stamps[0]
    print(f"admin user deactivation refused {delay:.3f} s after the save")
    assert delay < 1.0


def test_admin_team_settings_reach_the_gateway_within_a_second(
    cached_gateway, client, superuser, team, user
):
    """Required tags are copied into every cached key of the team."""
    _, secret = factories.make_key(user=user)
    declare_model(MODEL, cached_gateway.simulator_url, "demo-chat")
    cached_gateway.wait_for_model(secret, MODEL)
    assert chat(cached_gateway, secret).status_code == 200
    membership = team.memberships.get(user=user)
    client.force_login(superuser)
    with saved_at(Team) as stamps:
        response = client.post(
            f"/admin/accounts/team/{team.pk}/change/",
            {
                "name": team.name,
                "slug": team.slug,
                "default_tags": '{"cost_center": "cc-200"}',
                "allow_request_logging": "on",
                "required_tag_keys": '["project"]',
                # The membership inline, unchanged.
                "memberships-TOTAL_FORMS": "1",
                "memberships-INITIAL_FORMS": "1",
                "memberships-MIN_NUM_FORMS": "0",
                "memberships-MAX_NUM_FORMS": "1000",
                "memberships-0-id": membership.pk,
                "memberships-0-team": team.pk,
                "memberships-0-user": user.pk,
                "memberships-0-role": membership.role,
            },
        )
    assert response.status_code == 302, response.content.decode()[-2000:]
    team.refresh_from_db()
    assert team.required_tag_keys == ["project"]
    while (response := chat(cached_gateway, secret)).status_code == 200:
        assert time.time() - stamps[0] < 5, "the team change never arrived"
        time.sleep(0.02)
    delay = time.time() - stamps[0]
    print(f"admin team required tags applied {delay:.3f} s after the save")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "missing_required_tag"
    assert delay < 1.0


# --- The change log and its poller, in this process ------------------------------------


@pytest.fixture
def embedded_publish(settings):
    """`publish_invalidation` as in embedded mode, whatever pass the suite runs in."""
    settings.REDIS_URL = ""


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def close_thread_connections() -> Iterator[None]:
    yield
    # The async ORM's worker thread holds a connection; the test database must be flushed.
    run(sync_to_async(connections.close_all)())


def test_poller_applies_each_change_once(
    embedded_publish, close_thread_connections, user, virtual_account
):
    first, _ = factories.make_key(user=user)
    second, _ = factories.make_key(user=user)
    bot, _ = factories.make_key(virtual_account=virtual_account)
    cache = KeyCache()
    poller = KeyChangePoller(cache)
    publish_invalidation(key_hashes=[first.key_hash])  # before the start: not replayed
    assert run(poller.poll()) == 0
    assert poller.last_seen == KeyChange.objects.latest("id").pk
    for key in (first, second, bot):
        cache.put(key.key_hash, key_info_from_row(key))

    publish_invalidation(key_hashes=[first.key_hash])
    assert run(poller.poll()) == 1
    assert not cache.get(first.key_hash)[0]
    assert cache.get(second.key_hash)[0] and cache.get(bot.key_hash)[0]
    generation = cache.generation
    assert run(poller.poll()) == 0
    assert cache.generation == generation  # nothing re-applied

    publish_invalidation(team_id=first.team_id)
    assert run(poller.poll()) == 1
    assert not cache.get(second.key_hash)[0] and not cache.get(bot.key_hash)[0]


def test_poller_picks_up_an_id_that_commits_after_a_higher_one(
    embedded_publish, close_thread_connections, user
):
    """PostgreSQL hands out ids at insert and shows rows at commit, so a poll can see id n+1
    before n. Simulated with two rows where the lower one is absent at the first poll."""
    early, _ = factories.make_key(user=user)
    late, _ = factories.make_key(user=user)
    cache = KeyCache()
    poller = KeyChangePoller(cache)
    run(poller.poll())
    cache.put(early.key_hash, key_info_from_row(early))
    cache.put(late.key_hash, key_info_from_row(late))
    lower = KeyChange.objects.create(key_hashes=[early.key_hash])
    higher = KeyChange.objects.create(key_hashes=[late.key_hash])
    KeyChange.objects.filter(pk=lower.pk).delete()
    assert run(poller.poll()) == 1
    assert poller.last_seen == higher.pk
    assert cache.get(early.key_hash)[0] and not cache.get(late.key_hash)[0]
    KeyChange.objects.create(id=lower.pk, key_hashes=[early.key_hash])  # now "committed"
    assert run(poller.poll()) == 1
    assert not cache.get(early.key_hash)[0]
    assert run(poller.poll()) == 0


def test_the_writer_prunes_rows_older_than_an_hour(embedded_publish):
    old = KeyChange.objects.create(key_hashes=["a" * 64])
    recent = KeyChange.objects.create(key_hashes=["b" * 64])
    KeyChange.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=2))
    publish_invalidation(key_hashes=["c" * 64])
    assert [row.key_hashes for row in KeyChange.objects.order_by("id")] == [
        ["b" * 64],
        ["c" * 64],
    ]
    assert KeyChange.objects.filter(pk=recent.pk).exists()


def test_poller_outage_is_logged_once_and_caught_up(
    embedded_publish, close_thread_connections, caplog, user
):
    """The log table unreadable for a while (renamed away): one line when the polls start
    failing, one when they succeed again, and the change made meanwhile is still applied."""
    key, _ = factories.make_key(user=user)
    cache = KeyCache()
    table = KeyChange._meta.db_table
    quoted, away = connection.ops.quote_name(table), connection.ops.quote_name(f"{table}_away")

    async def until(predicate, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.02)

    async def scenario() -> None:
        generation = cache.generation
        poller = asyncio.create_task(poll_changes_forever(interval=0.02, cache=cache))
        await until(lambda: cache.generation > generation)  # started: cleared once
        cache.put(key.key_hash, key_info_from_row(key))
        await asyncio.to_thread(rename, quoted, away)
        await asyncio.sleep(0.3)  # a dozen failed polls
        await asyncio.to_thread(publish_into_renamed, away, key.key_hash)
        assert cache.get(key.key_hash)[0]
        await asyncio.to_thread(rename, away, quoted)
        await until(lambda: not cache.get(key.key_hash)[0])
        poller.cancel()

    def rename(source: str, target: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {source} RENAME TO {target}")
        connection.close()  # the rename runs in a worker thread: leave no connection behind

    def publish_into_renamed(table_name: str, key_hash: str) -> None:
        json_value = "%s::jsonb" if connection.vendor == "postgresql" else "%s"
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table_name} (key_hashes, team_id, created_at) "  # noqa: S608
                f"VALUES ({json_value}, NULL, %s)",
                [f'["{key_hash}"]', timezone.now()],
            )
        connection.close()

    with caplog.at_level(logging.INFO, logger="apps.proxy.key_events"):
        try:
            run(scenario())
        finally:
            if table not in connection.introspection.table_names():
                rename(away, quoted)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("key change log")]
    assert len(lines) == 2, lines
    assert lines[0].startswith("key change log unavailable")
    assert lines[1].startswith("key change log recovered")
