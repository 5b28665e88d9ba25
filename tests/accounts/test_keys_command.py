"""`manage.py keys list|rotate|revoke`: the runbook path through the same services."""

import io

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from apps.accounts.models import ApiKey, AuditLog
from apps.accounts.secrets import hash_secret
from tests import factories

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def run(*args) -> str:
    out = io.StringIO()
    call_command("keys", *args, stdout=out)
    return out.getvalue()


def test_list_shows_prefix_status_and_filters_by_team(user, other_team):
    key, secret = factories.make_key(user=user, name="frontend key")
    outsider = factories.make_user(team=other_team)
    other, _ = factories.make_key(user=outsider, name="backend key")
    revoked, _ = factories.make_key(user=outsider, name="gone")
    call_command("keys", "revoke", revoked.prefix, stdout=io.StringIO())
    everything = run("list")
    assert key.prefix in everything and other.prefix in everything
    assert secret not in everything and key.key_hash not in everything
    line = next(row for row in everything.splitlines() if row.startswith(revoked.prefix))
    assert "revoked" in line
    frontend = run("list", "--team", "frontend")
    assert key.prefix in frontend and other.prefix not in frontend
    with pytest.raises(CommandError):
        run("list", "--team", "nope")


def test_rotate_prints_the_new_secret_last_and_keeps_the_old_key_for_the_grace(user):
    key, _ = factories.make_key(user=user)
    output = run("rotate", key.prefix, "--grace-hours", "2")
    secret = output.strip().splitlines()[-1]
    new_key = ApiKey.objects.get(key_hash=hash_secret(secret))
    assert new_key.rotated_from_id == key.pk
    old = ApiKey.objects.get(pk=key.pk)
    remaining = (old.expires_at - timezone.now()).total_seconds()
    assert 7000 < remaining <= 7200
    assert "grace" in run("list")
    [entry] = AuditLog.objects.filter(action="key.rotated")
    assert entry.actor is None and entry.actor_label == "system"
    with pytest.raises(CommandError, match="already rotated"):
        run("rotate", key.prefix)


def test_revoke_and_errors(user):
    key, _ = factories.make_key(user=user)
    assert "Revoked" in run("revoke", f"{key.prefix}…")
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None
    assert AuditLog.objects.filter(action="key.revoked", object_id=str(key.pk)).count() == 1
    with pytest.raises(CommandError, match="no key"):
        run("revoke", "tg_live_nothing")
    with pytest.raises(CommandError, match="revoked"):
        run("rotate", key.prefix)
    with pytest.raises(CommandError):
        run("rotate", factories.make_key(user=user)[0].prefix, "--grace-hours", "-1")
