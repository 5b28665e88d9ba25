"""The DRF management API at /api/admin/: CRUD through the services, the secret once,
rotate and revoke actions, pagination, filters, token auth and the OpenAPI schema."""

import pytest
import yaml
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from apps.accounts.constants import Role
from apps.accounts.models import ApiKey, AuditLog, Membership, Team, VirtualAccount
from apps.accounts.secrets import hash_secret
from tests import factories

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def people(team):
    return {
        "admin": factories.make_user("boss", team=team, role=Role.ADMIN),
        "team_admin": factories.make_user("lead", team=team, role=Role.TEAM_ADMIN),
        "developer": factories.make_user("coder", team=team, role=Role.DEVELOPER),
    }


def api_as(user) -> APIClient:
    api = APIClient()
    api.force_authenticate(user)
    return api


def test_admin_crud_teams_memberships_virtual_accounts(people):
    api = api_as(people["admin"])
    created = api.post(
        "/api/admin/teams/",
        {"name": "Research", "default_tags": {"cc": "r-1"}, "required_tag_keys": ["feature"]},
        format="json",
    )
    assert created.status_code == 201, created.json()
    team_id = created.json()["id"]
    assert created.json()["slug"] == "research"
    assert created.json()["required_tag_keys"] == ["feature"]
    patched = api.patch(
        f"/api/admin/teams/{team_id}/", {"allow_request_logging": False}, format="json"
    )
    assert patched.status_code == 200 and patched.json()["allow_request_logging"] is False

    member = api.post(
        "/api/admin/memberships/",
        {"user": people["developer"].pk, "team": team_id, "role": Role.TEAM_ADMIN},
        format="json",
    )
    assert member.status_code == 201, member.json()
    membership_id = member.json()["id"]
    assert (
        api.patch(
            f"/api/admin/memberships/{membership_id}/", {"role": Role.DEVELOPER}, format="json"
        ).json()["role"]
        == Role.DEVELOPER
    )
    assert api.delete(f"/api/admin/memberships/{membership_id}/").status_code == 204
    assert not Membership.objects.filter(pk=membership_id).exists()

    va = api.post(
        "/api/admin/virtual-accounts/",
        {"team": team_id, "name": "research-bot", "default_tags": {"feature": "rb"}},
        format="json",
    )
    assert va.status_code == 201, va.json()
    off = api.patch(
        f"/api/admin/virtual-accounts/{va.json()['id']}/", {"is_active": False}, format="json"
    )
    assert off.status_code == 200 and off.json()["is_active"] is False
    assert api.get("/api/admin/virtual-accounts/?active=false").json()["count"] == 1
    actions = set(AuditLog.objects.values_list("action", flat=True))
    assert {
        "team.created",
        "team.updated",
        "membership.set",
        "membership.removed",
        "virtualaccount.created",
        "virtualaccount.updated",
    } <= actions


def test_bad_input_is_a_400_with_the_reason(people, team):
    api = api_as(people["admin"])
    response = api.post("/api/admin/teams/", {"name": "X", "default_tags": ["no"]}, format="json")
    assert response.status_code == 400 and "default_tags" in response.json()
    dup = api.post("/api/admin/teams/", {"name": team.name}, format="json")
    assert dup.status_code == 400
    key, _ = factories.make_key(user=people["developer"])
    bad = api.post(f"/api/admin/keys/{key.pk}/rotate/", {"grace_hours": -1}, format="json")
    assert bad.status_code == 400


def test_key_lifecycle_secret_once(people, team, virtual_account):
    api = api_as(people["developer"])
    created = api.post(
        "/api/admin/keys/",
        {
            "name": "ci",
            "default_tags": {"environment": "ci"},
            "allowed_models": ["m1"],
            "expires_in_days": 10,
        },
        format="json",
    )
    assert created.status_code == 201, created.json()
    body = created.json()
    assert created["Cache-Control"] == "no-store"
    key = ApiKey.objects.get(pk=body["id"])
    assert hash_secret(body["secret"]) == key.key_hash
    assert key.user == people["developer"] and key.team == team
    assert "key_hash" not in body
    fetched = api.get(f"/api/admin/keys/{key.pk}/").json()
    assert "secret" not in fetched and body["secret"] not in str(fetched)
    assert body["secret"] not in str(api.get("/api/admin/keys/").json())

    patched = api.patch(
        f"/api/admin/keys/{key.pk}/", {"expires_at": None, "name": "ci2"}, format="json"
    )
    assert patched.status_code == 200 and patched.json()["expires_at"] is None
    # Enforced tags are for the team's admins.
    denied = api.patch(
        f"/api/admin/keys/{key.pk}/", {"enforced_tag_keys": ["environment"]}, format="json"
    )
    assert denied.status_code == 403

    rotated = api.post(f"/api/admin/keys/{key.pk}/rotate/", {"grace_hours": 1}, format="json")
    assert rotated.status_code == 201
    new = ApiKey.objects.get(pk=rotated.json()["id"])
    assert new.key_hash == hash_secret(rotated.json()["secret"])
    assert new.lineage_id == key.lineage_id
    again = api.post(f"/api/admin/keys/{key.pk}/rotate/", {}, format="json")
    assert again.status_code == 400 and "already rotated" in again.json()["detail"]

    revoked = api.post(f"/api/admin/keys/{new.pk}/revoke/", format="json")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert api.put(f"/api/admin/keys/{new.pk}/", {}, format="json").status_code == 405
    assert api.delete(f"/api/admin/keys/{new.pk}/").status_code == 405

    # A team admin issues a key to a virtual account of their team.
    lead = api_as(people["team_admin"])
    va_key = lead.post(
        "/api/admin/keys/", {"name": "bot", "virtual_account": virtual_account.pk}, format="json"
    )
    assert va_key.status_code == 201 and va_key.json()["virtual_account"] == virtual_account.pk
    # A developer cannot issue one to a virtual account, nor to another user.
    assert (
        api.post(
            "/api/admin/keys/", {"name": "x", "virtual_account": virtual_account.pk}, format="json"
        ).status_code
        == 400
    )
    assert (
        api.post(
            "/api/admin/keys/",
            {"name": "x", "user": people["team_admin"].pk, "team": team.pk},
            format="json",
        ).status_code
        == 400
    )


def test_developer_cannot_use_team_endpoints(people):
    api = api_as(people["developer"])
    for url in ("/api/admin/teams/", "/api/admin/memberships/", "/api/admin/virtual-accounts/"):
        assert api.get(url).status_code == 403


def test_pagination_and_filters(people, team, other_team):
    outsider = factories.make_user("outsider", team=other_team)
    for index in range(3):
        factories.make_key(user=people["developer"], name=f"d{index}")
    factories.make_key(user=outsider, name="o1")
    revoked, _ = factories.make_key(user=people["developer"], name="gone")
    api = api_as(people["admin"])
    api.post(f"/api/admin/keys/{revoked.pk}/revoke/")
    first = api.get("/api/admin/keys/?page_size=2").json()
    assert first["count"] == 5 and len(first["results"]) == 2 and first["next"]
    assert api.get(first["next"]).json()["previous"]
    assert api.get(f"/api/admin/keys/?team={other_team.pk}").json()["count"] == 1
    assert api.get(f"/api/admin/keys/?user={people['developer'].pk}").json()["count"] == 4
    assert api.get("/api/admin/keys/?active=true").json()["count"] == 4
    assert api.get("/api/admin/keys/?active=false").json()["count"] == 1
    assert api.get("/api/admin/keys/?team=abc").status_code == 400
    members = api.get(f"/api/admin/memberships/?team={other_team.pk}").json()
    assert [m["username"] for m in members["results"]] == ["outsider"]
    # A team admin's list is scoped to their team.
    lead = api_as(people["team_admin"]).get("/api/admin/keys/").json()
    assert lead["count"] == 4


def test_token_auth_for_automation(people):
    token = Token.objects.create(user=people["admin"])
    api = APIClient()
    assert api.get("/api/admin/teams/").status_code == 401
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    response = api.get("/api/admin/teams/")
    assert response.status_code == 200 and response.json()["count"] >= 1
    created = api.post("/api/admin/keys/", {"name": "script"}, format="json")
    assert created.status_code == 201 and created.json()["secret"]
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    assert bad.get("/api/admin/teams/").status_code == 401


def test_session_auth_needs_csrf_for_writes(client, people):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(people["admin"])
    assert strict.get("/api/admin/keys/").status_code == 200
    assert strict.post("/api/admin/keys/", {"name": "x"}).status_code == 403


def test_openapi_schema(people):
    api = api_as(people["developer"])
    response = api.get("/api/admin/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    paths = schema["paths"]
    for path in (
        "/api/admin/teams/",
        "/api/admin/memberships/{id}/",
        "/api/admin/virtual-accounts/",
        "/api/admin/keys/{id}/rotate/",
        "/api/admin/keys/{id}/revoke/",
    ):
        assert path in paths, sorted(paths)
    assert not any(p.startswith("/api/quotas") or p.startswith("/v1") for p in paths)
    assert APIClient().get("/api/admin/schema/").status_code in (401, 403)


def test_virtual_account_name_conflict(people, team, virtual_account):
    api = api_as(people["team_admin"])
    dup = api.post(
        "/api/admin/virtual-accounts/",
        {"team": team.pk, "name": virtual_account.name},
        format="json",
    )
    assert dup.status_code == 400
    assert VirtualAccount.objects.count() == 1


def test_a_refused_team_setting_creates_no_team(people):
    api = api_as(people["admin"])
    response = api.post(
        "/api/admin/teams/", {"name": "Half", "required_tag_keys": ["x" * 65]}, format="json"
    )
    assert response.status_code == 400
    assert not Team.objects.filter(name="Half").exists()
