"""Portal quota pages per role: usage list, editor with located errors, versions, dry run."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import async_to_sync

from apps.accounts.constants import Role
from apps.quotas.engine import QuotaEngine, get_quota_engine
from apps.quotas.models import QuotaConfigVersion
from apps.quotas.rules import parse_config
from apps.quotas.services import quota_config_apply
from apps.usage.models import UsageRecord
from tests import factories

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

HEADER = "name: portal-test\ntype: gateway-rate-limiting-config\nrules:\n"


@pytest.fixture
def suffix() -> str:
    return uuid.uuid4().hex[:10]


ROLES = {
    "admin": ("boss", Role.ADMIN),
    "finance": ("fin", Role.FINANCE),
    "team_admin": ("lead", Role.TEAM_ADMIN),
    "developer": ("dev", Role.DEVELOPER),
}


class _People(dict):
    """Users by role, made on first use (each costs a password hash)."""

    def __init__(self, team) -> None:
        super().__init__()
        self.team = team

    def __missing__(self, role: str):
        username, portal_role = ROLES[role]
        user = self[role] = factories.make_user(username, team=self.team, role=portal_role)
        return user


@pytest.fixture
def people(team, other_team):
    return _People(team)


def config_text(suffix: str) -> str:
    return HEADER + (
        f"  - id: frontend-daily-{suffix}\n"
        "    when: {subjects: ['team:frontend', 'team:backend']}\n"
        "    limit_to: 5000\n    unit: requests_per_day\n"
        f"  - id: backend-only-{suffix}\n    when: {{subjects: ['team:backend']}}\n"
        "    limit_to: 10\n    unit: requests_per_minute\n"
        f"  - id: per-customer-{suffix}\n    when: {{subjects: ['team:frontend']}}\n"
        "    per: metadata.customer\n    limit_to: 200000\n    unit: tokens_per_month\n"
    )


def count_requests(text: str, subject_ids: set[str], times: int, tags: dict | None = None):
    engine = QuotaEngine(parse_config(text), store=get_quota_engine().store)

    async def go():
        for _ in range(times):
            admission = await engine.check(
                subject_ids=subject_ids,
                model="gpt-4o",
                tags=tags or {},
                request_tokens_estimate=100,
                max_output_tokens=50,
            )
            await engine.settle(admission, input_tokens=100, output_tokens=21)

    async_to_sync(go)()


def usage_row(n: str, team, *, minutes_ago: int = 5, **fields) -> UsageRecord:
    defaults = {"model": "gpt-4o", "request_type": "chat", "status_code": 200}
    return UsageRecord.objects.create(
        request_id=f"req-portal-{n}",
        created_at=datetime.now(UTC) - timedelta(minutes=minutes_ago),
        team_id=team.id,
        **{**defaults, **fields},
    )


def test_admin_sees_every_rule_with_usage_and_the_editor_link(client, people, team, suffix):
    text = config_text(suffix)
    quota_config_apply(yaml_text=text, author=people["admin"])
    count_requests(text, {"team:frontend"}, 3, tags={"customer": "acme"})
    usage_row(f"{suffix}-1", team, tags={"customer": "acme"}, input_tokens=100)
    client.force_login(people["admin"])
    page = client.get("/quotas/").content.decode()
    assert f"frontend-daily-{suffix}" in page and f"backend-only-{suffix}" in page
    assert "frontend: 3 / 5,000 requests today" in page
    assert "backend: 0 / 5,000 requests today" in page
    assert "frontend · customer=acme: 363 / 200,000 tokens this month" in page
    assert 'href="/quotas/edit/"' in page
    assert 'href="/quotas/"' in page  # the nav entry
    editor = client.get("/quotas/edit/")
    assert editor.status_code == 200
    assert f"frontend-daily-{suffix}" in editor.content.decode()  # the active YAML


def test_finance_reads_but_cannot_edit(client, people, suffix):
    quota_config_apply(yaml_text=config_text(suffix))
    client.force_login(people["finance"])
    response = client.get("/quotas/")
    assert response.status_code == 200
    assert 'href="/quotas/edit/"' not in response.content.decode()
    assert client.get("/quotas/edit/").status_code == 403
    assert client.post("/quotas/edit/", {"yaml_text": config_text(suffix)}).status_code == 403
    assert client.post("/quotas/versions/1/rollback/").status_code == 403
    assert QuotaConfigVersion.objects.count() == 1


def test_team_admin_sees_only_their_teams_subjects(client, people, suffix):
    quota_config_apply(yaml_text=config_text(suffix))
    client.force_login(people["team_admin"])
    page = client.get("/quotas/").content.decode()
    assert "frontend: 0 / 5,000 requests today" in page
    assert "backend:" not in page
    assert f"backend-only-{suffix}" not in page
    assert client.get("/quotas/edit/").status_code == 403


def test_developer_sees_only_rules_covering_themselves(client, people, suffix):
    text = config_text(suffix) + (
        f"  - id: dev-own-{suffix}\n    when: {{subjects: ['user:dev']}}\n"
        "    limit_to: 100\n    unit: requests_per_day\n"
    )
    quota_config_apply(yaml_text=text)
    client.force_login(people["developer"])
    response = client.get("/quotas/")
    assert response.status_code == 200
    page = response.content.decode()
    assert f"dev-own-{suffix}" in page and "dev: 0 / 100 requests today" in page
    # Team rules show the team's counter: not the developer's to see.
    assert f"frontend-daily-{suffix}" not in page and "frontend:" not in page
    assert 'href="/quotas/edit/"' not in page
    assert client.get("/quotas/edit/").status_code == 403


def test_developer_sees_an_everyone_rule_without_the_organisations_counter(client, people, suffix):
    text = config_text(suffix) + (
        f"  - id: everyone-{suffix}\n    when: {{models: ['gpt-4o']}}\n"
        "    limit_to: 100000\n    unit: requests_per_day\n"
    )
    quota_config_apply(yaml_text=text)
    count_requests(text, {"team:backend"}, 3)
    client.force_login(people["developer"])
    page = client.get("/quotas/").content.decode()
    section = page.split(f'id="rule-everyone-{suffix}"')[1].split("</section>")[0]
    assert "Shared by everyone" in section and "/ 100,000" not in section
    client.force_login(people["team_admin"])
    page = client.get("/quotas/").content.decode()
    section = page.split(f'id="rule-everyone-{suffix}"')[1].split("</section>")[0]
    assert "3 / 100,000 requests today" in section


def test_a_user_without_a_role_gets_403(client):
    client.force_login(factories.make_user("nobody"))
    assert client.get("/quotas/").status_code == 403


def test_anonymous_is_sent_to_login(client):
    response = client.get("/quotas/")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_recent_refusals_are_listed_per_rule(client, people, team, other_team, suffix):
    quota_config_apply(yaml_text=config_text(suffix))
    for n in range(2):  # backend refusals: two rules match, so attributed by matching
        usage_row(f"{suffix}-b{n}", other_team, status_code=429, error_type="quota_exceeded")
    # A row that names its broken rule is counted exactly.
    usage_row(
        f"{suffix}-f",
        team,
        status_code=429,
        error_type="quota_exceeded",
        response_body={"broken_rules": [{"rule": f"frontend-daily-{suffix}"}]},
    )
    usage_row(f"{suffix}-old", team, status_code=429, error_type="quota_exceeded",
              minutes_ago=25 * 60)  # fmt: skip
    client.force_login(people["admin"])
    page = client.get("/quotas/").content.decode()
    assert "3 refused" in page  # frontend-daily: two matched backend rows + one exact
    assert "2 refused" in page  # backend-only
    assert "attributed by matching" in page
    client.force_login(people["team_admin"])
    page = client.get("/quotas/").content.decode()
    assert "1 refused" in page and "2 refused" not in page


def test_rules_page_query_count_does_not_grow_with_rows(
    client, people, team, django_assert_max_num_queries, suffix
):
    quota_config_apply(yaml_text=config_text(suffix))
    client.force_login(people["admin"])
    with django_assert_max_num_queries(20) as first:
        client.get("/quotas/")
    for n in range(30):
        usage_row(f"{suffix}-q{n}", team, tags={"customer": f"c{n % 7}"})
        usage_row(f"{suffix}-r{n}", team, status_code=429, error_type="quota_exceeded")
    with django_assert_max_num_queries(len(first.captured_queries) + 3):
        # +3: the refusal lookup loads team, user and account names once rows exist
        client.get("/quotas/")


def test_editor_shows_validation_errors_at_their_line(client, people, suffix):
    quota_config_apply(yaml_text=config_text(suffix))
    client.force_login(people["admin"])
    broken = config_text(suffix).replace("limit_to: 10\n", "limit_to: 0\n")
    response = client.post("/quotas/edit/", {"yaml_text": broken, "action": "save", "days": 7})
    assert response.status_code == 200
    page = response.content.decode()
    assert f"Line 10 · rule <code>backend-only-{suffix}</code>: limit_to must be positive" in page
    assert 'id="line-10"' in page and "nothing was saved" in page
    assert QuotaConfigVersion.objects.count() == 1


def test_save_and_rollback_create_versions(client, people, suffix):
    client.force_login(people["admin"])
    first = config_text(suffix)
    second = first.replace("limit_to: 5000", "limit_to: 6000")
    response = client.post("/quotas/edit/", {"yaml_text": first, "action": "save", "note": "v1"})
    assert response.status_code == 302
    client.post("/quotas/edit/", {"yaml_text": second, "action": "save"})
    rows = list(QuotaConfigVersion.objects.order_by("version"))
    assert [(r.version, r.author, r.note) for r in rows] == [
        (1, people["admin"], "v1"),
        (2, people["admin"], "portal edit"),
    ]
    page = client.get("/quotas/edit/").content.decode()
    assert "limit_to: 6000" in page and "Roll back to v1" in page and "data-confirm=" in page
    assert client.get("/quotas/versions/1/rollback/").status_code == 405
    response = client.post("/quotas/versions/1/rollback/", follow=True)
    assert "now version 3" in response.content.decode()
    active = QuotaConfigVersion.objects.get(is_active=True)
    assert (active.version, active.yaml_text, active.note) == (3, first, "rollback to v1")
    response = client.post("/quotas/versions/99/rollback/", follow=True)
    assert "There is no version 99" in response.content.decode()


def test_dry_run_button_shows_the_report_without_saving(client, people, team, suffix):
    for n in range(3):
        usage_row(f"{suffix}-d{n}", team, minutes_ago=30 - n, user_id=people["developer"].id)
    client.force_login(people["admin"])
    candidate = HEADER + (
        f"  - id: dev-cap-{suffix}\n    when: {{subjects: ['user:dev']}}\n"
        "    limit_to: 1\n    unit: requests_per_hour\n"
    )
    response = client.post(
        "/quotas/edit/", {"yaml_text": candidate, "action": "dry_run", "days": 1}
    )
    page = response.content.decode()
    assert response.status_code == 200
    assert "Replayed 3 recorded requests" in page
    assert "user:dev (" in page
    assert QuotaConfigVersion.objects.count() == 0
