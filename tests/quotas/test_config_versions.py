"""Versioned quota configs: apply, invalid keeps the previous, rollback, import/export."""

import io

import pytest
from asgiref.sync import sync_to_async
from django.core.management import CommandError, call_command
from django.db import connections

from apps.quotas.engine import QuotaEngine
from apps.quotas.exceptions import QuotaConfigVersionNotFound
from apps.quotas.models import QuotaConfigVersion
from apps.quotas.rules import QuotaConfigError
from apps.quotas.selectors import active_quota_config, quota_config_versions
from apps.quotas.services import quota_config_apply, quota_config_rollback

pytestmark = pytest.mark.embedded

V1 = """\
name: first
type: gateway-rate-limiting-config
rules:
  - id: daily
    limit_to: 100
    unit: requests_per_day
"""
V2 = V1.replace("name: first", "name: second").replace("limit_to: 100", "limit_to: 200")
BROKEN = V1.replace("limit_to: 100", "limit_to: 0")


@pytest.mark.django_db
def test_apply_creates_versions_and_keeps_old_ones(user):
    assert active_quota_config().rules == ()
    first = quota_config_apply(yaml_text=V1, author=user)
    second = quota_config_apply(yaml_text=V2)
    assert (first.version, second.version) == (1, 2)
    first.refresh_from_db()
    assert not first.is_active
    assert second.is_active
    assert first.author == user
    assert active_quota_config().rules[0].limit == 200
    assert [row.version for row in quota_config_versions()] == [2, 1]


@pytest.mark.django_db
def test_invalid_config_keeps_the_previous_version_active():
    quota_config_apply(yaml_text=V1)
    with pytest.raises(QuotaConfigError) as info:
        quota_config_apply(yaml_text=BROKEN)
    assert info.value.issues[0].rule_id == "daily"
    assert info.value.issues[0].line == 5
    assert QuotaConfigVersion.objects.count() == 1
    assert active_quota_config().name == "first"


@pytest.mark.django_db
def test_rollback_reactivates_old_rules_as_a_new_version(user):
    quota_config_apply(yaml_text=V1)
    quota_config_apply(yaml_text=V2)
    row = quota_config_rollback(version=1, author=user)
    assert row.version == 3
    assert row.note == "rollback to v1"
    assert row.author == user
    assert active_quota_config().name == "first"
    assert QuotaConfigVersion.objects.filter(is_active=True).count() == 1
    with pytest.raises(QuotaConfigVersionNotFound):
        quota_config_rollback(version=99)


@pytest.mark.django_db(transaction=True)
async def test_engine_refresh_follows_the_active_version():
    engine = QuotaEngine()
    assert not await engine.refresh()  # nothing applied: still no rules
    await sync_to_async(quota_config_apply)(yaml_text=V1)
    assert await engine.refresh()
    assert engine.config.name == "first"
    assert not await engine.refresh()  # unchanged version: no reparse
    await sync_to_async(quota_config_apply)(yaml_text=V2)
    assert await engine.refresh()
    assert engine.config.rules[0].limit == 200
    # The async ORM's worker thread holds a connection; the test database must drop.
    await sync_to_async(connections.close_all)()


def run(*args) -> str:
    out = io.StringIO()
    call_command("quotas", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_import_and_export_commands(tmp_path, user):
    path = tmp_path / "rules.yaml"
    path.write_text(V1)
    assert "v1 is active" in run("import", str(path), "--author", user.username)
    assert run("export") == V1
    path.write_text(V2)
    run("import", str(path))
    assert run("export", "--version", "1") == V1
    assert "v2" in run("history")
    assert "v3 is active" in run("rollback", "1")
    assert run("export") == V1


@pytest.mark.django_db
def test_import_of_an_invalid_file_names_rule_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BROKEN)
    with pytest.raises(CommandError, match=r"rule 'daily', line 5: limit_to must be positive"):
        run("import", str(path))
    with pytest.raises(CommandError, match="no quota config"):
        run("export")
