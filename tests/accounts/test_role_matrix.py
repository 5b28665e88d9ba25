"""The role matrix: each role against team B's objects, by id, in pages, the management API
and the audit CSV export. Nothing outside a caller's scope is shown or changed (no IDOR)."""

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from apps.accounts.constants import Role
from apps.accounts.models import ApiKey, Membership, Team, VirtualAccount
from apps.accounts.services import team_update
from tests import factories

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

ROLES = ["admin", "finance", "team_admin", "developer"]


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    # PBKDF2 at full strength costs seconds per fixture set on the shared CI cores.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def world(team, other_team):
    """Team A (`team`) with one person per role; team B (`other_team`) with its own rows."""
    people = {
        "admin": factories.make_user("boss", team=team, role=Role.ADMIN),
        "finance": factories.make_user("money", team=team, role=Role.FINANCE),
        "team_admin": factories.make_user("lead", team=team, role=Role.TEAM_ADMIN),
        "developer": factories.make_user("coder", team=team, role=Role.DEVELOPER),
    }
    b_user = factories.make_user("bob-b", team=other_team, role=Role.DEVELOPER)
    b_va = factories.make_virtual_account(other_team, name="b-secret-bot")
    b_key, _ = factories.make_key(user=b_user, name="b-user-key")
    b_va_key, _ = factories.make_key(virtual_account=b_va, name="b-bot-key")
    team_update(team=other_team, actor=b_user, default_tags={"cost_center": "b-cc-999"})
    return {
        "people": people,
        "b_team": other_team,
        "b_user": b_user,
        "b_membership": Membership.objects.get(user=b_user, team=other_team),
        "b_va": b_va,
        "b_key": b_key,
        "b_va_key": b_va_key,
    }


def b_markers(world) -> list[str]:
    """Strings that only appear in a response that leaked team B's objects."""
    return [world["b_key"].prefix, world["b_va_key"].prefix, "b-secret-bot", "b-cc-999"]


def assert_no_leak(response, world) -> None:
    body = b"".join(response.streaming_content) if response.streaming else response.content
    text = body.decode()
    for marker in b_markers(world):
        assert marker not in text, f"{marker} leaked in {response.status_code} response"


def page_urls(world) -> list[tuple[str, str]]:
    key, team, va, user = world["b_key"], world["b_team"], world["b_va"], world["b_user"]
    return [
        ("GET", reverse("key_detail", args=[key.pk])),
        ("GET", reverse("key_detail", args=[world["b_va_key"].pk])),
        ("GET", reverse("key_rotate", args=[key.pk])),
        ("GET", reverse("key_revoke", args=[key.pk])),
        ("POST", reverse("key_revoke", args=[key.pk])),
        ("POST", reverse("key_rotate", args=[key.pk])),
        ("POST", reverse("key_edit", args=[key.pk])),
        ("POST", reverse("key_expiry", args=[key.pk])),
        ("GET", reverse("team_detail", args=[team.pk])),
        ("POST", reverse("team_edit", args=[team.pk])),
        ("POST", reverse("member_add", args=[team.pk])),
        ("POST", reverse("member_role", args=[team.pk, user.pk])),
        ("GET", reverse("member_remove", args=[team.pk, user.pk])),
        ("POST", reverse("member_remove", args=[team.pk, user.pk])),
        ("POST", reverse("virtual_account_create", args=[team.pk])),
        ("GET", reverse("virtual_account_edit", args=[va.pk])),
        ("POST", reverse("virtual_account_edit", args=[va.pk])),
        ("GET", reverse("virtual_account_active", args=[va.pk])),
        ("POST", reverse("virtual_account_active", args=[va.pk])),
        ("GET", reverse("user_detail", args=[user.pk])),
        ("POST", reverse("user_detail", args=[user.pk])),
        ("GET", reverse("audit")),
        ("GET", reverse("audit_export")),
    ]


POST_DATA = {
    "name": "hijacked",
    "grace_hours": "0",
    "expires_at": "2030-01-01T00:00",
    "role": Role.DEVELOPER,
    "username": "coder",
    "description": "hijacked",
    "team": "",
    "default_tags": "{}",
}


def snapshot(world) -> dict:
    return {
        "b_key": ApiKey.objects.filter(pk=world["b_key"].pk).values().get(),
        "b_va_key": ApiKey.objects.filter(pk=world["b_va_key"].pk).values().get(),
        "b_team": Team.objects.filter(pk=world["b_team"].pk).values().get(),
        "b_va": VirtualAccount.objects.filter(pk=world["b_va"].pk).values().get(),
        "b_members": sorted(
            Membership.objects.filter(team=world["b_team"]).values_list("user_id", "role")
        ),
        "keys": ApiKey.objects.count(),
        "vas": VirtualAccount.objects.count(),
    }


@pytest.mark.parametrize("who", ["finance", "team_admin", "developer"])
def test_pages_refuse_team_b_objects_by_id(client, world, who):
    client.force_login(world["people"][who])
    before = snapshot(world)
    for method, url in page_urls(world):
        response = client.get(url) if method == "GET" else client.post(url, POST_DATA)
        assert response.status_code in (403, 404), (method, url, response.status_code)
        assert_no_leak(response, world)
    assert snapshot(world) == before


def test_admin_reaches_team_b_objects(client, world):
    client.force_login(world["people"]["admin"])
    for name, arg in [
        ("key_detail", world["b_key"].pk),
        ("team_detail", world["b_team"].pk),
        ("virtual_account_edit", world["b_va"].pk),
        ("user_detail", world["b_user"].pk),
    ]:
        response = client.get(reverse(name, args=[arg]))
        assert response.status_code == 200, name


@pytest.mark.parametrize("who", ROLES)
def test_lists_show_only_what_the_role_may_see(client, world, who):
    client.force_login(world["people"][who])
    for name in ("keys", "teams", "virtual_accounts", "tags", "home"):
        response = client.get(reverse(name))
        if who == "admin":
            continue
        assert response.status_code in (200, 403)
        assert_no_leak(response, world)


def test_finance_never_sees_keys(client, world):
    client.force_login(world["people"]["finance"])
    assert client.get(reverse("keys")).status_code == 403
    assert client.get(reverse("key_create")).status_code == 403
    own, _ = factories.make_key(user=world["people"]["developer"], name="a-key")
    assert client.get(reverse("key_detail", args=[own.pk])).status_code == 403


def test_team_admin_cannot_grant_org_wide_roles(client, world, team):
    client.force_login(world["people"]["team_admin"])
    response = client.post(
        reverse("member_add", args=[team.pk]), {"username": "coder", "role": Role.ADMIN}
    )
    assert response.status_code == 400
    assert Membership.objects.get(user=world["people"]["developer"], team=team).role == (
        Role.DEVELOPER
    )
    # Nor demote the admin of their own team.
    admin = world["people"]["admin"]
    response = client.post(
        reverse("member_role", args=[team.pk, admin.pk]), {"role": Role.DEVELOPER}
    )
    assert response.status_code == 403
    assert Membership.objects.get(user=admin, team=team).role == Role.ADMIN


# --- The management API -----------------------------------------------------------------


def api_urls(world) -> list[tuple[str, str, dict]]:
    key, team, va = world["b_key"], world["b_team"], world["b_va"]
    membership = world["b_membership"]
    return [
        ("get", f"/api/admin/keys/{key.pk}/", {}),
        ("get", f"/api/admin/keys/{world['b_va_key'].pk}/", {}),
        ("patch", f"/api/admin/keys/{key.pk}/", {"name": "hijacked"}),
        ("post", f"/api/admin/keys/{key.pk}/rotate/", {"grace_hours": 0}),
        ("post", f"/api/admin/keys/{key.pk}/revoke/", {}),
        ("get", f"/api/admin/teams/{team.pk}/", {}),
        ("patch", f"/api/admin/teams/{team.pk}/", {"name": "hijacked"}),
        ("get", f"/api/admin/memberships/{membership.pk}/", {}),
        ("patch", f"/api/admin/memberships/{membership.pk}/", {"role": Role.DEVELOPER}),
        ("delete", f"/api/admin/memberships/{membership.pk}/", {}),
        ("get", f"/api/admin/virtual-accounts/{va.pk}/", {}),
        ("patch", f"/api/admin/virtual-accounts/{va.pk}/", {"is_active": False}),
    ]


@pytest.mark.parametrize("who", ["finance", "team_admin", "developer"])
def test_api_refuses_team_b_objects_by_id(world, who):
    api = APIClient()
    api.force_authenticate(world["people"][who])
    before = snapshot(world)
    for method, url, data in api_urls(world):
        response = getattr(api, method)(url, data, format="json")
        assert response.status_code in (403, 404), (method, url, response.status_code)
        assert_no_leak(response, world)
    assert snapshot(world) == before


@pytest.mark.parametrize("who", ["finance", "team_admin", "developer"])
def test_api_lists_and_creates_stay_in_scope(world, who):
    api = APIClient()
    api.force_authenticate(world["people"][who])
    team_b, va_b = world["b_team"], world["b_va"]
    before = snapshot(world)
    for url in (
        "/api/admin/keys/",
        f"/api/admin/keys/?team={team_b.pk}",
        f"/api/admin/keys/?user={world['b_user'].pk}",
        "/api/admin/teams/",
        "/api/admin/memberships/",
        f"/api/admin/memberships/?team={team_b.pk}",
        "/api/admin/virtual-accounts/",
    ):
        response = api.get(url)
        assert response.status_code in (200, 403), url
        assert_no_leak(response, world)
        if response.status_code == 200:
            assert all(row.get("team") != team_b.pk for row in response.json()["results"]), url
    # Creating into team B, or a key for B's virtual account, is refused.
    for url, data in (
        ("/api/admin/keys/", {"name": "x", "virtual_account": va_b.pk}),
        ("/api/admin/keys/", {"name": "x", "user": world["b_user"].pk, "team": team_b.pk}),
        ("/api/admin/virtual-accounts/", {"team": team_b.pk, "name": "b-intruder"}),
        (
            "/api/admin/memberships/",
            {"team": team_b.pk, "user": world["people"][who].pk, "role": Role.DEVELOPER},
        ),
        ("/api/admin/teams/", {"name": "Sneaky"}),
    ):
        response = api.post(url, data, format="json")
        assert response.status_code in (400, 403), (url, response.status_code)
        assert "secret" not in response.json()
    assert snapshot(world) == before


def test_api_team_admin_cannot_escalate(world, team):
    api = APIClient()
    api.force_authenticate(world["people"]["team_admin"])
    response = api.post(
        "/api/admin/memberships/",
        {"team": team.pk, "user": world["people"]["developer"].pk, "role": Role.ADMIN},
        format="json",
    )
    assert response.status_code == 400
    admin_membership = Membership.objects.get(user=world["people"]["admin"], team=team)
    response = api.patch(
        f"/api/admin/memberships/{admin_membership.pk}/", {"role": Role.DEVELOPER}, format="json"
    )
    assert response.status_code == 403
    admin_membership.refresh_from_db()
    assert admin_membership.role == Role.ADMIN


def test_api_anonymous_is_refused(world):
    response = APIClient().get("/api/admin/keys/")
    assert response.status_code in (401, 403)
    assert_no_leak(response, world)


# --- The audit CSV export ---------------------------------------------------------------


@pytest.mark.parametrize("who", ["finance", "team_admin", "developer"])
def test_audit_export_is_admin_only(client, world, who):
    client.force_login(world["people"][who])
    response = client.get(reverse("audit_export"))
    assert response.status_code == 403
    assert_no_leak(response, world)
    assert b"key.created" not in response.content


def test_admin_export_contains_team_b_rows(client, world):
    client.force_login(world["people"]["admin"])
    response = client.get(reverse("audit_export"))
    body = b"".join(response.streaming_content).decode()
    assert response.status_code == 200
    assert world["b_key"].prefix in body
