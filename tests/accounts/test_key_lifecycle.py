"""The key lifecycle through the services: rotate with grace, revoke, edit, expire, policies.

The proxy's view of a key is checked with the same `KeyInfo.refusal` the hot path uses,
at controlled timestamps.
"""

import asyncio
import os
from datetime import timedelta

import httpx
import pytest
import time_machine
from asgiref.sync import sync_to_async
from django.db import connections
from django.utils import timezone

from apps.accounts.constants import Role
from apps.accounts.exceptions import KeyStateError, PolicyError, TagsError
from apps.accounts.models import ApiKey, RotationPolicy
from apps.accounts.secrets import hash_secret
from apps.accounts.services import (
    UNCHANGED,
    api_key_revoke,
    api_key_rotate,
    api_key_update,
    api_keys_retire_expired,
    api_keys_rotate_due,
    api_keys_warn_expiring,
    rotation_policy_set,
    team_update,
    virtual_account_update,
)
from apps.proxy import upstream
from apps.proxy.app import app as proxy_app
from apps.proxy.auth import authenticate, key_cache, key_info_from_row, last_used
from apps.proxy.catalog import catalog
from apps.proxy.key_events import flush_last_used
from tests import factories
from tests.proxy.helpers import declare_model

pytestmark = pytest.mark.embedded


def info(key: ApiKey):
    row = ApiKey.objects.select_related("team", "user", "virtual_account").get(pk=key.pk)
    return key_info_from_row(row)


def warm(key: ApiKey) -> None:
    """Put the key in this process's proxy cache, as a request would."""
    key_cache.put(key.key_hash, info(key))
    assert key_cache.get(key.key_hash)[0]


@pytest.mark.django_db
def test_rotation_copies_everything_and_gives_the_old_key_a_grace_period(
    user, django_capture_on_commit_callbacks
):
    key, _ = factories.make_key(
        user=user, default_tags={"env": "prod"}, allowed_models=["gpt-x"], scopes=["chat"]
    )
    api_key_update(key=key, actor=None, enforced_tag_keys=["env"])
    warm(key)
    with django_capture_on_commit_callbacks(execute=True):
        new_key, plaintext = api_key_rotate(key=key, actor=user, grace_hours=2)
    old = ApiKey.objects.get(pk=key.pk)
    assert new_key.key_hash == hash_secret(plaintext) and new_key.key_hash != old.key_hash
    assert new_key.rotated_from_id == old.pk and new_key.lineage_id == old.lineage_id
    assert (new_key.user_id, new_key.team_id, new_key.virtual_account_id) == (
        old.user_id,
        old.team_id,
        None,
    )
    assert new_key.default_tags == {"env": "prod"} and new_key.enforced_tag_keys == ["env"]
    assert new_key.allowed_models == ["gpt-x"] and new_key.scopes == ["chat"]
    assert new_key.expires_at is None
    assert abs((old.expires_at - timezone.now()) - timedelta(hours=2)) < timedelta(seconds=30)
    # The worker holding the old key drops it and re-reads the new expiry.
    assert key_cache.get(old.key_hash) == (False, None)

    grace_end = old.expires_at.timestamp()
    old_info, new_info = info(old), info(new_key)
    assert old_info.refusal(grace_end - 1) is None
    assert old_info.refusal(grace_end + 1) == "expired"
    assert new_info.refusal(grace_end + 1) is None

    with pytest.raises(KeyStateError, match="already rotated"):
        api_key_rotate(key=old, actor=user)


@pytest.mark.django_db
def test_grace_never_extends_an_earlier_expiry(user):
    key, _ = factories.make_key(user=user, expires_in_days=1)
    expiry = key.expires_at
    api_key_rotate(key=key, actor=None, grace_hours=48)
    assert ApiKey.objects.get(pk=key.pk).expires_at == expiry


@pytest.mark.django_db
def test_revoked_or_expired_keys_cannot_be_rotated(user):
    key, _ = factories.make_key(user=user)
    api_key_revoke(key=key, actor=None)
    with pytest.raises(KeyStateError, match="revoked"):
        api_key_rotate(key=key, actor=None)
    expired, _ = factories.make_key(user=user, expires_in_days=1)
    with time_machine.travel(timezone.now() + timedelta(days=2)), pytest.raises(KeyStateError):
        api_key_rotate(key=expired, actor=None)
    with pytest.raises(KeyStateError):
        api_key_rotate(key=factories.make_key(user=user)[0], actor=None, grace_hours=-1)


@pytest.mark.django_db
def test_revoke_is_immediate_here_and_idempotent(user, django_capture_on_commit_callbacks):
    key, _ = factories.make_key(user=user)
    warm(key)
    with django_capture_on_commit_callbacks(execute=True):
        revoked = api_key_revoke(key=key, actor=user)
    assert revoked.revoked_at is not None
    assert key_cache.get(key.key_hash) == (False, None)
    assert info(key).refusal(timezone.now().timestamp()) == "revoked"
    first = revoked.revoked_at
    assert api_key_revoke(key=key, actor=user).revoked_at == first


@pytest.mark.django_db
def test_update_expiry_sentinel_and_validation(user, django_capture_on_commit_callbacks):
    key, _ = factories.make_key(user=user, expires_in_days=3)
    later = timezone.now() + timedelta(days=30)
    warm(key)
    with django_capture_on_commit_callbacks(execute=True):
        key = api_key_update(key=key, actor=user, name="renamed", allowed_models=["a", "a", "b"])
    assert key_cache.get(key.key_hash) == (False, None)
    assert key.name == "renamed" and key.allowed_models == ["a", "b"] and key.expires_at
    key = api_key_update(key=key, actor=user, expires_at=UNCHANGED)
    assert key.expires_at is not None
    key = api_key_update(key=key, actor=user, expires_at=later)
    assert key.expires_at == later
    key = api_key_update(key=key, actor=user, expires_at=None)
    assert ApiKey.objects.get(pk=key.pk).expires_at is None
    with pytest.raises(TagsError):
        api_key_update(key=key, actor=user, default_tags={"a": 1})
    with pytest.raises(KeyStateError):
        api_key_update(key=key, actor=user, expires_at=later.replace(tzinfo=None))


@pytest.mark.django_db
def test_deactivating_a_virtual_account_refuses_its_keys(
    virtual_account, django_capture_on_commit_callbacks
):
    key, _ = factories.make_key(virtual_account=virtual_account)
    warm(key)
    with django_capture_on_commit_callbacks(execute=True):
        virtual_account_update(virtual_account=virtual_account, actor=None, is_active=False)
    assert key_cache.get(key.key_hash) == (False, None)
    assert info(key).refusal(timezone.now().timestamp()) == "disabled"


@pytest.mark.django_db
def test_team_update_drops_the_teams_cached_keys(team, user, django_capture_on_commit_callbacks):
    key, _ = factories.make_key(user=user)
    other_key, _ = factories.make_key(user=factories.make_user(team=factories.make_team()))
    warm(key)
    warm(other_key)
    with django_capture_on_commit_callbacks(execute=True):
        team_update(team=team, actor=None, required_tag_keys=["project", " project", "owner"])
    team.refresh_from_db()
    assert team.required_tag_keys == ["project", "owner"]
    assert key_cache.get(key.key_hash) == (False, None)
    assert key_cache.get(other_key.key_hash)[0]
    assert info(key).required_tag_keys == ("project", "owner")
    with pytest.raises(TagsError):
        team_update(team=team, actor=None, required_tag_keys="project")


@pytest.mark.django_db(transaction=True)
def test_proxy_refuses_a_request_missing_a_required_tag(team, user):
    team_update(team=team, actor=None, required_tag_keys=["project"])
    _, secret = factories.make_key(user=user)
    # Never reached: the request is refused before any upstream call.
    declare_model("tagged-chat", "http://127.0.0.1:9/v1", "demo-chat")

    async def scenario() -> list[httpx.Response]:
        key_cache.invalidate()
        await catalog.refresh(force=True)
        transport = httpx.ASGITransport(app=proxy_app)
        responses = []
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            for header in ("{}", '{"project": ""}'):
                responses.append(
                    await client.post(
                        "/v1/chat/completions",
                        json={
                            "model": "tagged-chat",
                            "messages": [{"role": "user", "content": "x"}],
                        },
                        headers={"Authorization": f"Bearer {secret}", "X-Gateway-Metadata": header},
                    )
                )
        await upstream.close()
        await sync_to_async(connections.close_all)()
        return responses

    for response in asyncio.run(scenario()):
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "missing_required_tag"
        assert "'project'" in error["message"]


@pytest.mark.django_db(transaction=True)
def test_last_used_is_written_in_a_batch_not_per_request(user):
    key, secret = factories.make_key(user=user)
    headers = {b"authorization": f"Bearer {secret}".encode()}

    async def scenario() -> int:
        key_cache.invalidate()
        last_used.drain()
        for _ in range(5):
            await authenticate(headers)
        before = await ApiKey.objects.aget(pk=key.pk)
        assert before.last_used_at is None  # nothing written on the request path
        written = await flush_last_used()
        assert await flush_last_used() == 0  # drained
        await sync_to_async(connections.close_all)()
        return written

    assert asyncio.run(scenario()) == 1
    used = ApiKey.objects.get(pk=key.pk).last_used_at
    assert used is not None and abs(timezone.now() - used) < timedelta(seconds=30)


@pytest.mark.django_db
def test_retire_expired_records_each_expiry_once(user):
    key, _ = factories.make_key(user=user, expires_in_days=1)
    live, _ = factories.make_key(user=user, expires_in_days=10)
    later = timezone.now() + timedelta(days=2)
    assert api_keys_retire_expired(now=later) == 1
    assert api_keys_retire_expired(now=later) == 0
    assert ApiKey.objects.get(pk=key.pk).retired_at == later
    assert ApiKey.objects.get(pk=live.pk).retired_at is None


@pytest.mark.django_db
def test_owners_are_warned_once_before_expiry(user, virtual_account, mailoutbox):
    soon, _ = factories.make_key(user=user, expires_in_days=3)
    factories.make_key(user=user, expires_in_days=30)
    team_admin = factories.make_user("boss", team=virtual_account.team, role=Role.TEAM_ADMIN)
    factories.make_key(virtual_account=virtual_account, expires_in_days=2)
    in_grace, _ = factories.make_key(user=user)
    api_key_rotate(key=in_grace, actor=None)
    mailoutbox.clear()
    assert api_keys_warn_expiring(days=7) == 2
    assert api_keys_warn_expiring(days=7) == 0
    recipients = sorted(tuple(m.to) for m in mailoutbox)
    assert recipients == sorted([(team_admin.email,), (user.email,)])
    assert soon.prefix in next(m.body for m in mailoutbox if m.to == [user.email])
    assert ApiKey.objects.get(pk=soon.pk).expiry_warned_at is not None


@pytest.mark.django_db
def test_scheduled_rotation_emails_the_new_secret_and_runs_once(team, user, mailoutbox):
    due, _ = factories.make_key(user=user, name="ci key")
    fresh, _ = factories.make_key(user=user)
    own_policy, _ = factories.make_key(user=user)
    rotation_policy_set(team=team, every_days=90, grace_hours=6, actor=None)
    rotation_policy_set(key=own_policy, every_days=365, actor=None)
    ApiKey.objects.filter(pk__in=[due.pk, own_policy.pk]).update(
        created_at=timezone.now() - timedelta(days=100)
    )
    new_ids = api_keys_rotate_due()
    assert len(new_ids) == 1
    new_key = ApiKey.objects.get(pk=new_ids[0])
    assert new_key.rotated_from_id == due.pk
    assert ApiKey.objects.get(pk=fresh.pk).successors.count() == 0
    assert ApiKey.objects.get(pk=own_policy.pk).successors.count() == 0
    [mail] = mailoutbox
    assert mail.to == [user.email]
    secret = next(line.strip() for line in mail.body.splitlines() if line.startswith("tg_"))
    assert hash_secret(secret) == new_key.key_hash
    old = ApiKey.objects.get(pk=due.pk)
    assert abs((old.expires_at - timezone.now()) - timedelta(hours=6)) < timedelta(seconds=30)
    assert api_keys_rotate_due() == []
    assert RotationPolicy.objects.get(team=team).last_run_at is not None
    # A key's own policy follows its lineage.
    ApiKey.objects.filter(pk=own_policy.pk).update(created_at=timezone.now() - timedelta(days=400))
    [moved] = api_keys_rotate_due()
    assert RotationPolicy.objects.get(key__isnull=False).key_id == moved


@pytest.mark.django_db
def test_rotation_policy_validation(team, user):
    key, _ = factories.make_key(user=user)
    for kwargs in (
        {"key": key, "team": team, "every_days": 30},
        {"every_days": 30},
        {"team": team, "every_days": 0},
        {"team": team, "every_days": 1, "grace_hours": 48},
    ):
        with pytest.raises(PolicyError):
            rotation_policy_set(actor=None, **kwargs)
    policy = rotation_policy_set(team=team, every_days=30, actor=None)
    assert rotation_policy_set(team=team, every_days=60, actor=None).pk == policy.pk


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs Redis")
@pytest.mark.django_db
def test_key_events_listener_drops_entries_and_clears_after_reconnect(user):
    import redis

    from apps.proxy.auth import KeyCache
    from apps.proxy.key_events import listen_forever, publish_invalidation

    key, _ = factories.make_key(user=user)
    entry = info(key)
    cache = KeyCache()
    sync = redis.Redis.from_url(os.environ["REDIS_URL"])

    async def until(predicate, timeout=5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            assert asyncio.get_running_loop().time() < deadline, "timed out"
            await asyncio.sleep(0.02)

    async def scenario() -> None:
        listener = asyncio.create_task(listen_forever(cache=cache))
        generation = cache.generation
        await until(lambda: cache.generation > generation)  # subscribed and cleared
        cache.put("a", entry)
        cache.put(key.key_hash, entry)
        await asyncio.to_thread(publish_invalidation, key_hashes=[key.key_hash])
        await until(lambda: not cache.get(key.key_hash)[0])
        assert cache.get("a")[0]
        # Drop the subscription: whatever was missed, nothing read before may be trusted.
        generation = cache.generation
        await asyncio.to_thread(sync.execute_command, "CLIENT", "KILL", "TYPE", "pubsub")
        await until(lambda: not cache.get("a")[0])
        # Cleared once on the error and once more when subscribed again.
        await until(lambda: cache.generation >= generation + 2)
        cache.put("b", entry)
        await asyncio.to_thread(publish_invalidation, team_id=key.team_id)
        await until(lambda: not cache.get("b")[0])
        listener.cancel()

    asyncio.run(scenario())
