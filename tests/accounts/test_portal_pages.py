"""Portal page flows: keys (secret shown once, rotate, revoke, expiry, edit), teams,
members, virtual accounts, users, the tag glossary and the audit log with its CSV."""

import csv
import io
import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.accounts.audit import audit_record
from apps.accounts.constants import Role
from apps.accounts.models import ApiKey, AuditLog, Membership, TagDefinition, VirtualAccount
from apps.accounts.secrets import hash_secret
from apps.proxy.models import GatewayModel
from tests import factories

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

SECRET_RE = re.compile(r'data-testid="secret">([^<]+)<')


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


@pytest.fixture
def catalog(db):
    for name in ("gpt-small", "gpt-large"):
        GatewayModel.objects.create(name=name)
    return ["gpt-large", "gpt-small"]


def secret_in(response) -> str:
    match = SECRET_RE.search(response.content.decode())
    assert match, "no secret on the page"
    return match.group(1).strip()


# --- Keys -------------------------------------------------------------------------------


def test_create_key_shows_the_secret_once(client, people, team, catalog):
    client.force_login(people["developer"])
    form_page = client.get(reverse("key_create"))
    assert form_page.status_code == 200
    assert b"gpt-small" in form_page.content  # allowed models come from the catalog
    response = client.post(
        reverse("key_create"),
        {
            "name": "notebook",
            "owner": "self",
            "team": str(team.pk),
            "allowed_models": ["gpt-small"],
            "default_tags": '{"feature": "notebook"}',
            "expires_in_days": "30",
        },
    )
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    secret = secret_in(response)
    key = ApiKey.objects.get(name="notebook")
    assert key.key_hash == hash_secret(secret)
    assert key.user == people["developer"] and key.team == team
    assert key.allowed_models == ["gpt-small"]
    assert key.default_tags == {"feature": "notebook"}
    assert key.expires_at is not None
    html = response.content.decode()
    assert 'data-copy-target="secret"' in html and "js/copy.js" in html
    assert 'base_url="http://testserver/v1"' in html  # the SDK snippet
    # Never again: not on the detail page, the list or the home page.
    for url in (reverse("key_detail", args=[key.pk]), reverse("keys"), reverse("home")):
        assert secret not in client.get(url).content.decode()
    assert AuditLog.objects.filter(action="key.created", object_id=str(key.pk)).exists()


def test_create_key_for_a_virtual_account_of_my_team(client, people, team, virtual_account):
    client.force_login(people["team_admin"])
    page = client.get(reverse("key_create")).content.decode()
    assert f'value="va:{virtual_account.pk}"' in page
    response = client.post(
        reverse("key_create"), {"name": "bot", "owner": f"va:{virtual_account.pk}"}
    )
    assert response.status_code == 200
    key = ApiKey.objects.get(name="bot")
    assert key.virtual_account == virtual_account and key.user is None


def test_developer_cannot_pick_a_virtual_account(client, people, virtual_account):
    client.force_login(people["developer"])
    assert f"va:{virtual_account.pk}" not in client.get(reverse("key_create")).content.decode()
    response = client.post(
        reverse("key_create"), {"name": "bot", "owner": f"va:{virtual_account.pk}"}
    )
    assert response.status_code == 200 and b"Select a valid choice" in response.content
    assert not ApiKey.objects.filter(name="bot").exists()


def test_create_key_form_errors_are_inline(client, people, team, catalog):
    client.force_login(people["developer"])
    response = client.post(
        reverse("key_create"),
        {
            "name": "",
            "owner": "self",
            "team": str(team.pk),
            "allowed_models": ["no-such-model"],
            "default_tags": "[1, 2]",
            "expires_in_days": "0",
        },
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert "This field is required." in html
    assert "Select a valid choice. no-such-model" in html
    assert "Enter a JSON object" in html
    assert "greater than or equal to 1" in html
    assert 'class="field has-error"' in html
    assert not ApiKey.objects.exists()


def test_rotate_asks_then_shows_the_new_secret_once(client, people, api_key):
    old, _ = api_key
    client.force_login(people["admin"])
    confirm = client.get(reverse("key_rotate", args=[old.pk]))
    assert confirm.status_code == 200 and b"Rotate key" in confirm.content
    old.refresh_from_db()
    assert old.expires_at is None  # a GET changes nothing
    response = client.post(reverse("key_rotate", args=[old.pk]), {"grace_hours": "2"})
    assert response.status_code == 200
    secret = secret_in(response)
    new = ApiKey.objects.get(key_hash=hash_secret(secret))
    old.refresh_from_db()
    assert new.lineage_id == old.lineage_id and new.rotated_from_id == old.pk
    assert timedelta(hours=1.9) < old.expires_at - timezone.now() < timedelta(hours=2.1)
    assert b"grace period" in response.content


def test_rotate_page_says_when_the_old_keys_grace_ends(client, people, api_key):
    old, _ = api_key
    client.force_login(people["admin"])
    response = client.post(reverse("key_rotate", args=[old.pk]), {"grace_hours": "24"})
    old.refresh_from_db()
    html = response.content.decode()
    assert f"keeps working until {old.expires_at:%Y-%m-%d %H:%M} UTC" in html


def test_rotate_with_a_bad_grace_shows_an_error(client, people, api_key):
    key, _ = api_key
    client.force_login(people["admin"])
    response = client.post(reverse("key_rotate", args=[key.pk]), {"grace_hours": "-1"})
    assert response.status_code == 200
    assert b"greater than or equal to 0" in response.content
    assert ApiKey.objects.count() == 1


def test_revoke_asks_for_confirmation(client, people, api_key):
    key, _ = api_key
    client.force_login(people["developer"] if key.user == people["developer"] else key.user)
    confirm = client.get(reverse("key_revoke", args=[key.pk]))
    assert confirm.status_code == 200 and b"Revoke key" in confirm.content
    key.refresh_from_db()
    assert key.revoked_at is None
    response = client.post(reverse("key_revoke", args=[key.pk]))
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None
    detail = client.get(reverse("key_detail", args=[key.pk])).content.decode()
    assert "revoked" in detail and reverse("key_revoke", args=[key.pk]) not in detail


def test_edit_key_models_tags_and_expiry(client, people, api_key, catalog):
    key, _ = api_key
    client.force_login(people["admin"])
    response = client.post(
        reverse("key_edit", args=[key.pk]),
        {
            "name": "renamed",
            "allowed_models": ["gpt-large"],
            "default_tags": '{"environment": "prod"}',
            "enforced_tag_keys": "environment",
        },
    )
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.name == "renamed" and key.allowed_models == ["gpt-large"]
    assert key.default_tags == {"environment": "prod"}
    assert key.enforced_tag_keys == ["environment"]
    response = client.post(reverse("key_expiry", args=[key.pk]), {"expires_at": "2031-02-03T04:05"})
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.expires_at.isoformat() == "2031-02-03T04:05:00+00:00"
    client.post(reverse("key_expiry", args=[key.pk]), {"expires_at": ""})
    key.refresh_from_db()
    assert key.expires_at is None


def test_edit_key_errors_inline(client, people, api_key):
    key, _ = api_key
    client.force_login(people["admin"])
    response = client.post(
        reverse("key_edit", args=[key.pk]),
        {"name": "x", "default_tags": '{"a": "b"}', "enforced_tag_keys": "missing"},
    )
    assert response.status_code == 400
    assert b"Not among the default tags: missing" in response.content
    response = client.post(reverse("key_expiry", args=[key.pk]), {"expires_at": "tomorrow"})
    assert response.status_code == 400 and b"Enter a valid date/time" in response.content


def test_developer_may_not_set_enforced_tags(client, people, team):
    key, _ = factories.make_key(user=people["developer"])
    client.force_login(people["developer"])
    assert b"enforced_tag_keys" not in client.get(reverse("key_detail", args=[key.pk])).content
    client.post(
        reverse("key_edit", args=[key.pk]),
        {"name": "k", "default_tags": '{"a": "b"}', "enforced_tag_keys": "a"},
    )
    key.refresh_from_db()
    assert key.enforced_tag_keys == []


def test_key_list_query_count_is_fixed(client, people, django_assert_max_num_queries):
    for index in range(3):
        factories.make_key(user=people["developer"], name=f"k{index}")
    client.force_login(people["admin"])
    with django_assert_max_num_queries(8) as first:
        client.get(reverse("keys"))
    for index in range(10):
        factories.make_key(user=people["developer"], name=f"more{index}")
    with django_assert_max_num_queries(len(first.captured_queries)):
        client.get(reverse("keys"))


# --- Teams, members, virtual accounts, users ----------------------------------------------


def test_team_admin_manages_members(client, people, team):
    newcomer = factories.make_user("newbie")
    client.force_login(people["team_admin"])
    page = client.get(reverse("team_detail", args=[team.pk]))
    assert page.status_code == 200 and b"coder" in page.content
    response = client.post(
        reverse("member_add", args=[team.pk]), {"username": "newbie", "role": Role.DEVELOPER}
    )
    assert response.status_code == 302
    client.post(reverse("member_role", args=[team.pk, newcomer.pk]), {"role": Role.TEAM_ADMIN})
    assert Membership.objects.get(user=newcomer, team=team).role == Role.TEAM_ADMIN
    confirm = client.get(reverse("member_remove", args=[team.pk, newcomer.pk]))
    assert confirm.status_code == 200 and b"Remove member" in confirm.content
    assert Membership.objects.filter(user=newcomer).exists()
    client.post(reverse("member_remove", args=[team.pk, newcomer.pk]))
    assert not Membership.objects.filter(user=newcomer).exists()


def test_member_add_unknown_user_error_inline(client, people, team):
    client.force_login(people["team_admin"])
    response = client.post(
        reverse("member_add", args=[team.pk]), {"username": "ghost", "role": Role.DEVELOPER}
    )
    assert response.status_code == 400
    assert b"No active user with this username." in response.content


def test_team_settings_and_required_tags(client, people, team):
    client.force_login(people["team_admin"])
    response = client.post(
        reverse("team_edit", args=[team.pk]),
        {
            "name": "Frontend",
            "default_tags": '{"cost_center": "cc-201"}',
            "required_tag_keys": "feature, environment",
        },
    )
    assert response.status_code == 302
    team.refresh_from_db()
    assert team.required_tag_keys == ["feature", "environment"]
    assert team.allow_request_logging is False
    assert team.default_tags == {"cost_center": "cc-201"}
    bad = client.post(
        reverse("team_edit", args=[team.pk]),
        {"name": "Frontend", "default_tags": "{nope", "required_tag_keys": "bad\tkey"},
    )
    assert bad.status_code == 400
    assert b"Not valid JSON" in bad.content and b"control character U+0009" in bad.content


def test_admin_creates_a_team(client, people):
    client.force_login(people["admin"])
    response = client.post(reverse("team_create"), {"name": "Data Science", "default_tags": ""})
    assert response.status_code == 302
    dup = client.post(reverse("team_create"), {"name": "Data Science"})
    assert dup.status_code == 400 and b"already exists" in dup.content


def test_virtual_account_create_edit_deactivate(client, people, team):
    client.force_login(people["team_admin"])
    response = client.post(
        reverse("virtual_account_create", args=[team.pk]),
        {"name": "search-bot", "description": "search", "default_tags": '{"feature": "s"}'},
    )
    assert response.status_code == 302
    va = VirtualAccount.objects.get(name="search-bot")
    dup = client.post(reverse("virtual_account_create", args=[team.pk]), {"name": "search-bot"})
    assert dup.status_code == 400 and b"already exists" in dup.content
    client.post(
        reverse("virtual_account_edit", args=[va.pk]),
        {"description": "new words", "default_tags": "{}"},
    )
    va.refresh_from_db()
    assert va.description == "new words"
    confirm = client.get(reverse("virtual_account_active", args=[va.pk]))
    assert b"Deactivate virtual account" in confirm.content
    va.refresh_from_db()
    assert va.is_active
    client.post(reverse("virtual_account_active", args=[va.pk]))
    va.refresh_from_db()
    assert not va.is_active


def test_admin_sets_roles_on_users_page(client, people, team, other_team):
    client.force_login(people["admin"])
    listing = client.get(reverse("users"))
    assert listing.status_code == 200 and b"coder" in listing.content
    response = client.post(
        reverse("user_detail", args=[people["developer"].pk]),
        {"team": str(other_team.pk), "role": Role.TEAM_ADMIN},
    )
    assert response.status_code == 302
    assert Membership.objects.get(user=people["developer"], team=other_team).role == (
        Role.TEAM_ADMIN
    )


# --- Tag glossary -------------------------------------------------------------------------


def test_tag_glossary_lists_defined_and_seen_keys(client, people, team):
    from apps.usage.models import UsageRecord

    UsageRecord.objects.create(
        request_id="r1",
        created_at=timezone.now(),
        team_id=team.pk,
        model="m",
        request_type="chat",
        status_code=200,
        tags={"feature": "x", "undocumented_key": "y"},
    )
    client.force_login(people["team_admin"])
    response = client.post(
        reverse("tags"),
        {"key": "feature", "description": "Product feature", "owner_team": str(team.pk)},
    )
    assert response.status_code == 302
    assert TagDefinition.objects.get(key="feature").owner_team == team
    page = client.get(reverse("tags")).content.decode()
    assert "Product feature" in page and "undocumented_key" in page
    bad = client.post(reverse("tags"), {"key": "bad\x01key", "description": ""})
    assert bad.status_code == 400 and "control character U+0001" in bad.content.decode()


def test_developer_reads_glossary_but_cannot_edit(client, people):
    client.force_login(people["developer"])
    page = client.get(reverse("tags"))
    assert page.status_code == 200 and b"Define a tag" not in page.content
    client.post(reverse("tags"), {"key": "feature", "description": "mine"})
    assert not TagDefinition.objects.exists()


# --- Audit log ------------------------------------------------------------------------------


def test_audit_page_filters(client, people, api_key):
    client.force_login(people["admin"])
    page = client.get(reverse("audit"), {"action": "key.created"})
    assert page.status_code == 200 and b"key.created" in page.content
    page = client.get(reverse("audit"), {"actor": "nobody-at-all"})
    assert b"No entries match." in page.content
    bad = client.get(reverse("audit"), {"date_from": "2030-01-02", "date_to": "2030-01-01"})
    assert b"Must not be before the start date." in bad.content
    assert b"Delete" not in page.content and b"Edit" not in page.content


def test_audit_csv_is_streamed_and_escapes_formulas(
    client, people, team, django_assert_max_num_queries
):
    for label in ("=HYPERLINK(1)", "+1", "-1", "@SUM(A1)", "\tx", "plain"):
        team_obj = factories.make_team(label if label != "\tx" else "tab-team")
        audit_record(
            actor=people["admin"],
            action="team.updated",
            obj=team_obj,
            before={"name": label},
            after=None,
        )
    AuditLog.objects.filter(object_repr="tab-team").update(object_repr="\tx")
    client.force_login(people["admin"])
    with django_assert_max_num_queries(6):
        response = client.get(reverse("audit_export"), {"action": "team.updated"})
        body = b"".join(response.streaming_content).decode()
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(body)))
    assert rows[0][:3] == ["created_at", "actor", "action"]
    objects = {row[5] for row in rows[1:]}
    assert {"'=HYPERLINK(1)", "'+1", "'-1", "'@SUM(A1)", "'\tx", "plain"} <= objects
    assert all(row[2] == "team.updated" for row in rows[1:])
