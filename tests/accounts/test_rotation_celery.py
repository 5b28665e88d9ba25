"""Scheduled rotation end to end: beat's task run by a real Celery worker, then the grace
window checked at controlled instants (time-machine) and on a running gateway.

The worker and the gateway run on the real clock; the controlled clock is applied in this
process to the hot path's own `authenticate`, just before and just after the grace ends.
"""

import asyncio
import re
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import time_machine
from asgiref.sync import sync_to_async
from django.db import connections
from django.utils import timezone

from apps.accounts.models import ApiKey, AuditLog
from apps.accounts.secrets import hash_secret
from apps.accounts.services import api_keys_retire_expired, rotation_policy_set
from apps.accounts.tasks import rotate_due_keys
from apps.proxy.auth import authenticate, key_cache
from apps.proxy.errors import Unauthorized
from tests import factories
from tests.conftest import task_result
from tests.proxy.conftest import start_gateway, stop_gateway
from tests.proxy.helpers import declare_model

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

ROOT = Path(__file__).resolve().parents[2]
SECRET_RE = re.compile(r"\b(tg_live_[0-9A-Za-z]{43})\b")


def hot_path_verdict_at(moment, headers) -> str | None:
    """The hot path's verdict on a key at a controlled instant (None: accepted)."""

    async def verdict() -> str | None:
        key_cache.invalidate()
        try:
            await authenticate(headers)
        except Unauthorized as refused:
            return refused.code
        finally:
            await sync_to_async(connections.close_all)()
        return None

    with time_machine.travel(moment, tick=False):
        return asyncio.run(verdict())


def test_scheduled_rotation_through_a_worker_and_the_grace_window(
    celery_worker_process, team, user
):
    old_key, old_secret = factories.make_key(user=user, name="nightly batch")
    rotation_policy_set(team=team, every_days=30, grace_hours=3, actor=None)
    ApiKey.objects.filter(pk=old_key.pk).update(created_at=timezone.now() - timedelta(days=31))

    result = rotate_due_keys.delay()
    new_ids = task_result(result, celery_worker_process)
    [new_id] = new_ids
    new_key = ApiKey.objects.get(pk=new_id)
    old_key.refresh_from_db()
    assert new_key.rotated_from_id == old_key.pk and new_key.lineage_id == old_key.lineage_id
    grace_end = old_key.expires_at
    assert abs(grace_end - timezone.now() - timedelta(hours=3)) < timedelta(minutes=2)
    assert AuditLog.objects.filter(action="key.rotated", object_id=str(old_key.pk)).exists()

    # The secret exists only in the email the worker sent (console backend: its log).
    deadline = time.monotonic() + 10
    while True:
        mailed = set(SECRET_RE.findall(celery_worker_process.read_text(errors="replace")))
        if mailed or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    [new_secret] = mailed
    assert hash_secret(new_secret) == new_key.key_hash

    old_headers = {b"authorization": f"Bearer {old_secret}".encode()}
    new_headers = {b"authorization": f"Bearer {new_secret}".encode()}
    assert hot_path_verdict_at(grace_end - timedelta(seconds=1), old_headers) is None
    assert hot_path_verdict_at(grace_end + timedelta(seconds=1), old_headers) == "api_key_expired"
    assert hot_path_verdict_at(grace_end + timedelta(seconds=1), new_headers) is None

    # Mid-grace on a real gateway, a client switching keys sees no error.
    gateway = start_gateway()
    try:
        declare_model("rotation-chat", gateway.simulator_url, "demo-chat")
        gateway.wait_for_model(new_secret, "rotation-chat")
        for secret in (old_secret, new_secret, old_secret):
            response = httpx.post(
                f"{gateway.url}/v1/chat/completions",
                json={"model": "rotation-chat", "messages": [{"role": "user", "content": "x"}]},
                headers={"Authorization": f"Bearer {secret}"},
                timeout=10,
            )
            assert response.status_code == 200, response.text
    finally:
        stop_gateway(gateway)

    # After the grace, beat's retire task records the old key's expiry, once.
    with time_machine.travel(grace_end + timedelta(seconds=1), tick=False):
        assert api_keys_retire_expired() == 1
        assert api_keys_retire_expired() == 0
    assert AuditLog.objects.filter(action="key.expired", object_id=str(old_key.pk)).count() == 1
