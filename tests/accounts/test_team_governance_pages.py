"""Rotation policies set from key and team pages, the team's pricing tier on its page, and
what removing a member does to their keys billed to the team."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.accounts.constants import Role
from apps.accounts.exceptions import PolicyError
from apps.accounts.models import ApiKey, AuditLog, Membership, RotationPolicy
from apps.accounts.services import (
    api_key_revoke,
    api_key_rotate,
    membership_remove,
    membership_set,
    rotation_policy_set,
)
from apps.billing.models import Tier
from apps.billing.services.subscriptions import subscription_change
from apps.billing.subjects import BillingSubject
from tests import factories

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def people(team, other_team):
    return {
        "admin": factories.make_user("boss", team=team, role=Role.ADMIN),
        "team_admin": factories.make_user("lead", team=team, role=Role.TEAM_ADMIN),
        "developer": factories.make_user("coder", team=team, role=Role.DEVELOPER),
        "stranger": factories.make_user("elsewhere", team=other_team, role=Role.TEAM_ADMIN),
    }


# --- Rotation policies ---------------------------------------------------------------------


def test_admin_sets_changes_and_removes_a_key_policy(client, people):
    key, _ = factories.make_key(user=people["developer"])
    client.force_login(people["admin"])
    url = reverse("key_rotation_policy", args=[key.pk])
    response = client.post(url, {"every_days": 30, "grace_hours": 6})
    assert response.status_code == 302
    policy = RotationPolicy.objects.get(key=key)
    assert (policy.every_days, policy.grace_hours) == (30, 6)

    page = client.get(reverse("key_detail", args=[key.pk])).content.decode()
    due = key.created_at + timedelta(days=30)
    assert f"{due:%Y-%m-%d %H:%M} UTC" in page
    assert reverse("key_rotation_policy_remove", args=[key.pk]) in page

    client.post(url, {"every_days": 90, "grace_hours": 24})
    assert RotationPolicy.objects.get(key=key).every_days == 90
    assert AuditLog.objects.filter(action="rotation_policy.set").count() == 2

    remove_url = reverse("key_rotation_policy_remove", args=[key.pk])
    confirm = client.get(remove_url)
    assert confirm.status_code == 200 and b"Remove policy" in confirm.content
    assert RotationPolicy.objects.filter(key=key).exists()  # a GET changes nothing
    assert client.post(remove_url).status_code == 302
    assert not RotationPolicy.objects.filter(key=key).exists()
    assert AuditLog.objects.filter(action="rotation_policy.removed").count() == 1
    assert client.post(remove_url).status_code == 404


def test_policy_form_errors_are_shown_inline(client, people, team):
    key, _ = factories.make_key(user=people["developer"])
    client.force_login(people["team_admin"])
    bad = client.post(
        reverse("key_rotation_policy", args=[key.pk]), {"every_days": 1, "grace_hours": 48}
    )
    assert bad.status_code == 400 and b"Must be shorter than the rotation interval." in bad.content
    bad = client.post(reverse("team_rotation_policy", args=[team.pk]), {"every_days": 0})
    assert bad.status_code == 400
    assert not RotationPolicy.objects.exists()


def test_team_admin_sets_a_team_policy_that_keys_inherit(client, people, team):
    key, _ = factories.make_key(user=people["developer"])
    ApiKey.objects.filter(pk=key.pk).update(created_at=timezone.now() - timedelta(days=10))
    key.refresh_from_db()
    client.force_login(people["team_admin"])
    response = client.post(
        reverse("team_rotation_policy", args=[team.pk]), {"every_days": 90, "grace_hours": 12}
    )
    assert response.status_code == 302
    assert RotationPolicy.objects.get(team=team).every_days == 90

    due = f"{key.created_at + timedelta(days=90):%Y-%m-%d %H:%M} UTC"
    team_page = client.get(reverse("team_detail", args=[team.pk])).content.decode()
    assert due in team_page and key.prefix in team_page
    key_page = client.get(reverse("key_detail", args=[key.pk])).content.decode()
    assert due in key_page and "(the team's policy)" in key_page

    remove_url = reverse("team_rotation_policy_remove", args=[team.pk])
    assert client.post(remove_url).status_code == 302
    assert not RotationPolicy.objects.filter(team=team).exists()


def test_only_admins_and_their_team_admins_manage_policies(client, people, team):
    key, _ = factories.make_key(user=people["developer"])
    client.force_login(people["developer"])  # sees the key, may not change its policy
    assert (
        client.post(reverse("key_rotation_policy", args=[key.pk]), {"every_days": 30}).status_code
        == 403
    )
    page = client.get(reverse("key_detail", args=[key.pk]))
    assert reverse("key_rotation_policy", args=[key.pk]).encode() not in page.content
    assert client.post(reverse("team_rotation_policy", args=[team.pk])).status_code == 403

    rotation_policy_set(key=key, every_days=30, actor=None)
    rotation_policy_set(team=team, every_days=60, actor=None)
    client.force_login(people["stranger"])  # a team admin of another team
    for url in (
        reverse("key_rotation_policy", args=[key.pk]),
        reverse("key_rotation_policy_remove", args=[key.pk]),
        reverse("team_rotation_policy", args=[team.pk]),
        reverse("team_rotation_policy_remove", args=[team.pk]),
    ):
        assert client.post(url, {"every_days": 5, "grace_hours": 1}).status_code == 404, url
    assert RotationPolicy.objects.get(key=key).every_days == 30
    assert RotationPolicy.objects.get(team=team).every_days == 60


def test_no_policy_on_a_revoked_or_superseded_key(client, people):
    key, _ = factories.make_key(user=people["developer"])
    new_key, _ = api_key_rotate(key=key, actor=None)
    with pytest.raises(PolicyError):
        rotation_policy_set(key=key, every_days=30, actor=None)
    client.force_login(people["admin"])
    page = client.get(reverse("key_detail", args=[key.pk]))
    assert reverse("key_rotation_policy", args=[key.pk]).encode() not in page.content
    bad = client.post(
        reverse("key_rotation_policy", args=[key.pk]), {"every_days": 30, "grace_hours": 1}
    )
    assert bad.status_code == 400 and b"newest key" in bad.content
    api_key_revoke(key=new_key, actor=None)
    with pytest.raises(PolicyError):
        rotation_policy_set(key=new_key, every_days=30, actor=None)
    assert not RotationPolicy.objects.exists()


# --- Tier on the team page -----------------------------------------------------------------


def test_team_page_shows_the_current_tier(client, people, team, other_team):
    gold = Tier.objects.create(
        name="Gold",
        monthly_token_allowance=5_000_000,
        monthly_price=Decimal("400.00"),
        overage_price_per_1k_tokens=Decimal("0.01"),
    )
    silver = Tier.objects.create(
        name="Silver", monthly_token_allowance=1_000_000, monthly_price=Decimal("90"), hard_cap=True
    )
    earlier = timezone.now() - timedelta(days=40)
    subscription_change(subject=BillingSubject(type="team", team=team), tier=silver, at=earlier)
    subscription_change(subject=BillingSubject(type="team", team=team), tier=gold)
    subscription_change(subject=BillingSubject(type="team", team=other_team), tier=silver)

    link = reverse("billing:subscriptions") + f"?subject=team%3A{team.pk}"
    client.force_login(people["admin"])
    page = client.get(reverse("team_detail", args=[team.pk])).content.decode()
    assert "<strong>Gold</strong>" in page and "Silver" not in page
    assert link in page

    client.force_login(people["team_admin"])  # sees the tier; billing pages are admin-only
    page = client.get(reverse("team_detail", args=[team.pk])).content.decode()
    assert "<strong>Gold</strong>" in page and "/billing/" not in page

    bare = factories.make_team("Bare", slug="bare")
    client.force_login(people["admin"])
    page = client.get(reverse("team_detail", args=[bare.pk])).content.decode()
    assert "No tier" in page and f"?subject=team%3A{bare.pk}" in page


# --- Removing a member ---------------------------------------------------------------------


def test_removing_a_member_revokes_their_keys_billed_to_the_team(
    team, other_team, virtual_account, django_capture_on_commit_callbacks
):
    boss = factories.make_user("boss", team=team, role=Role.ADMIN)
    dev = factories.make_user("dev", team=team)
    membership_set(user=dev, team=other_team, role=Role.DEVELOPER)
    plain, _ = factories.make_key(user=dev, team=team, name="plain")
    old, _ = factories.make_key(user=dev, team=team, name="rotated")
    in_grace_successor, _ = api_key_rotate(key=old, actor=None)  # `old` is in its grace
    already, _ = factories.make_key(user=dev, team=team, name="already revoked")
    api_key_revoke(key=already, actor=None)
    expired, _ = factories.make_key(user=dev, team=team, name="expired")
    ApiKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(hours=1))
    elsewhere, _ = factories.make_key(user=dev, team=other_team, name="billed elsewhere")
    team_key, _ = factories.make_key(virtual_account=virtual_account, name="the team's own")
    AuditLog.objects.all().delete()

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        revoked = membership_remove(user=dev, team=team, actor=boss)
    assert {k.pk for k in revoked} == {plain.pk, old.pk, in_grace_successor.pk}
    assert not Membership.objects.filter(user=dev, team=team).exists()
    states = dict(ApiKey.objects.values_list("pk", "revoked_at"))
    for key in (plain, old, in_grace_successor):
        assert states[key.pk] is not None
    for key in (expired, elsewhere, team_key):
        assert states[key.pk] is None
    audited = AuditLog.objects.filter(action="key.revoked")
    assert sorted(int(e.object_id) for e in audited) == sorted(k.pk for k in revoked)
    assert {e.actor_id for e in audited} == {boss.pk}
    assert AuditLog.objects.filter(action="membership.removed").count() == 1
    assert len(callbacks) == 3  # one cache invalidation per revoked key


def test_member_removal_is_all_or_nothing(team, monkeypatch):
    from apps.accounts.services import tenancy

    dev = factories.make_user("dev", team=team)
    first, _ = factories.make_key(user=dev, team=team)
    factories.make_key(user=dev, team=team)
    real_revoke = tenancy.api_key_revoke
    calls = []

    def flaky_revoke(**kwargs):
        calls.append(kwargs["key"].pk)
        if len(calls) == 2:
            raise RuntimeError("database went away")
        return real_revoke(**kwargs)

    monkeypatch.setattr(tenancy, "api_key_revoke", flaky_revoke)
    with pytest.raises(RuntimeError):
        membership_remove(user=dev, team=team, actor=None)
    assert Membership.objects.filter(user=dev, team=team).exists()
    assert not ApiKey.objects.filter(revoked_at__isnull=False).exists()
    assert calls[0] == first.pk


def test_member_remove_page_lists_the_keys_it_revokes(client, people, team):
    dev = people["developer"]
    key, _ = factories.make_key(user=dev, team=team, name="laptop")
    client.force_login(people["team_admin"])
    url = reverse("member_remove", args=[team.pk, dev.pk])
    confirm = client.get(url).content.decode()
    assert "laptop" in confirm and key.prefix in confirm and "revoked at once" in confirm
    response = client.post(url, follow=True)
    assert "1 of their keys revoked." in response.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is not None
