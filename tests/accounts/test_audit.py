"""Every governance action leaves one audit entry with actor, object and before/after."""

from datetime import timedelta

import pytest
from django.contrib import admin
from django.test import RequestFactory
from django.utils import timezone

from apps.accounts.audit import audit_record
from apps.accounts.constants import Role
from apps.accounts.models import AuditLog
from apps.accounts.services import (
    api_key_revoke,
    api_key_rotate,
    api_key_update,
    api_keys_retire_expired,
    membership_remove,
    membership_set,
    rotation_policy_set,
    tag_definition_upsert,
    team_update,
    virtual_account_update,
)
from tests import factories

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def entries(action: str) -> list[AuditLog]:
    return list(AuditLog.objects.filter(action=action).order_by("id"))


def test_each_action_is_recorded_with_actor_object_and_change():
    boss = factories.make_user("boss", superuser=True)
    team = factories.make_team("Platform", slug="platform")
    [created] = entries("team.created")
    assert created.actor_label == "system" and created.team_id == team.pk
    assert created.after["slug"] == "platform" and created.before is None

    team_update(team=team, actor=boss, default_tags={"cc": "1"}, required_tag_keys=["project"])
    [updated] = entries("team.updated")
    assert updated.actor == boss and updated.actor_label == "boss"
    assert updated.before == {"default_tags": {}, "required_tag_keys": []}
    assert updated.after == {"default_tags": {"cc": "1"}, "required_tag_keys": ["project"]}

    dev = factories.make_user("dev", team=team)
    membership_set(user=dev, team=team, role=Role.TEAM_ADMIN, actor=boss)
    first, promoted = entries("membership.set")
    assert first.before is None and first.after["role"] == "developer"
    assert promoted.before["role"] == "developer" and promoted.after["role"] == "team_admin"
    membership_set(user=dev, team=team, role=Role.TEAM_ADMIN, actor=boss)
    assert len(entries("membership.set")) == 2  # no change, no entry

    va = factories.make_virtual_account(team, name="bot")
    virtual_account_update(virtual_account=va, actor=boss, is_active=False)
    assert entries("virtualaccount.created")[0].object_repr == "bot"
    assert entries("virtualaccount.updated")[0].after == {"is_active": False}

    key, secret = factories.make_key(user=dev, team=team)
    api_key_update(key=key, actor=boss, allowed_models=["m"])
    new_key, new_secret = api_key_rotate(key=key, actor=boss, grace_hours=1)
    api_key_revoke(key=new_key, actor=dev)
    created_keys = entries("key.created")
    assert [e.object_id for e in created_keys] == [str(key.pk), str(new_key.pk)]
    assert entries("key.updated")[0].after == {"allowed_models": ["m"]}
    [rotated] = entries("key.rotated")
    assert rotated.after["successor"] == new_key.prefix and rotated.after["grace_hours"] == 1
    assert rotated.before["expires_at"] is None and rotated.after["expires_at"]
    [revoked] = entries("key.revoked")
    assert revoked.actor == dev and revoked.object_type == "accounts.apikey"
    assert revoked.team_id == team.pk

    tag_definition_upsert(key="project", description="Project code", owner_team=team, actor=boss)
    tag_definition_upsert(key="project", description="Project code (Jira)", actor=boss)
    assert entries("tag.defined")[0].after["owner_team"] == "platform"
    assert entries("tag.updated")[0].after == {
        "description": "Project code (Jira)",
        "owner_team": None,
    }

    rotation_policy_set(team=team, every_days=90, actor=boss)
    assert entries("rotation_policy.set")[0].after["every_days"] == 90

    membership_remove(user=dev, team=team, actor=boss)
    assert entries("membership.removed")[0].before["user"] == "dev"
    # Leaving the team revoked dev's key that was still in its rotation grace period.
    revoked_by_removal = entries("key.revoked")[1]
    assert revoked_by_removal.object_id == str(key.pk) and revoked_by_removal.actor == boss

    key_expiring, _ = factories.make_key(user=factories.make_user(team=team), expires_in_days=1)
    api_keys_retire_expired(now=timezone.now() + timedelta(days=2))
    assert [e.object_id for e in entries("key.expired")] == [str(key_expiring.pk)]

    # Nothing secret reaches the log.
    dump = repr(list(AuditLog.objects.values()))
    for value in (secret, new_secret, key.key_hash, new_key.key_hash):
        assert value not in dump


def test_other_apps_can_record_their_actions():
    team = factories.make_team()
    entry = audit_record(
        actor=None, action="quota_config.applied", obj=team, before={"v": 1}, after={"v": 2}
    )
    assert entry.team_id == team.pk and entry.object_type == "accounts.team"


def test_the_admin_cannot_change_or_delete_entries():
    boss = factories.make_user("boss", superuser=True)
    factories.make_team()
    request = RequestFactory().get("/")
    request.user = boss
    model_admin = admin.site._registry[AuditLog]
    entry = AuditLog.objects.first()
    assert model_admin.has_view_permission(request, entry)
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request, entry)
    assert not model_admin.has_delete_permission(request, entry)
