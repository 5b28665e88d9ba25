"""/api/quotas: status for the caller's key, the dry run, reading and replacing the config."""

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

HEADER = "name: api-test\ntype: gateway-rate-limiting-config\nrules:\n"


def rules_yaml(suffix: str, team_slug: str) -> str:
    return HEADER + (
        f"  - id: daily-{suffix}\n    when: {{subjects: ['team:{team_slug}']}}\n"
        "    limit_to: 5\n    unit: requests_per_day\n"
        f"  - id: gpt-tokens-{suffix}\n    when: {{subjects: ['user:alice'], models: [gpt-4o]}}\n"
        "    limit_to: 1000\n    unit: tokens_per_hour\n"
        f"  - id: other-team-{suffix}\n    when: {{subjects: ['team:somebody-else']}}\n"
        "    limit_to: 9\n    unit: requests_per_day\n"
    )


def admit(yaml_text: str, subject_ids: set[str], times: int, model: str = "gpt-4o") -> None:
    """Count requests through the same counter store the API reads."""
    engine = QuotaEngine(parse_config(yaml_text), store=get_quota_engine().store)

    async def go():
        for _ in range(times):
            admission = await engine.check(
                subject_ids=subject_ids,
                model=model,
                tags={},
                request_tokens_estimate=10,
                max_output_tokens=5,
            )
            assert admission.allowed
            await engine.settle(admission, input_tokens=10, output_tokens=2)

    async_to_sync(go)()


@pytest.fixture
def suffix() -> str:
    # Counters live in Redis across tests in the services run: ids unique to the test.
    return uuid.uuid4().hex[:10]


def bearer(secret: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def test_status_reports_every_rule_covering_the_key(client, team, user, api_key, suffix):
    text = rules_yaml(suffix, team.slug)
    quota_config_apply(yaml_text=text)
    admit(text, {f"team:{team.slug}", "user:alice"}, 3)
    response = client.get("/api/quotas/status", **bearer(api_key[1]))
    assert response.status_code == 200, response.content
    rules = {item["rule"]: item for item in response.json()["rules"]}
    assert set(rules) == {f"daily-{suffix}", f"gpt-tokens-{suffix}"}
    daily = rules[f"daily-{suffix}"]
    assert (daily["used"], daily["limit"], daily["remaining"]) == (3, 5, 2)
    assert daily["subject"] == f"team:{team.slug}"
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date()
    assert daily["reset"].startswith(tomorrow.isoformat())
    tokens = rules[f"gpt-tokens-{suffix}"]
    assert tokens["used"] == 36  # three settled calls of 10 + 2 tokens
    assert tokens["models"] == ["gpt-4o"]
    # Asking about another model drops the rule that only covers gpt-4o.
    response = client.get("/api/quotas/status?model=claude", **bearer(api_key[1]))
    assert [item["rule"] for item in response.json()["rules"]] == [f"daily-{suffix}"]


def test_status_needs_a_valid_key(client, team, user, api_key):
    assert client.get("/api/quotas/status").status_code == 401
    response = client.get("/api/quotas/status", **bearer("tg-not-a-key"))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    # A portal session is not enough: status is about a key.
    client.force_login(user)
    assert client.get("/api/quotas/status").status_code == 401


def test_status_rejects_a_malformed_tag(client, api_key):
    response = client.get("/api/quotas/status?tag=novalue", **bearer(api_key[1]))
    assert response.status_code == 400
    assert "key=value" in response.json()["error"]["message"]


def test_simulate_for_an_admin_session(client, team, suffix):
    admin = factories.make_user("root-admin", team=team, role=Role.ADMIN)
    developer = factories.make_user("dev", team=team)
    now = datetime.now(UTC)
    for n in range(4):
        UsageRecord.objects.create(
            request_id=f"req-api-sim-{suffix}-{n}",
            created_at=now - timedelta(minutes=10 - n),
            team_id=team.id,
            user_id=developer.id,
            model="gpt-4o",
            request_type="chat",
            status_code=200,
        )
    candidate = HEADER + (
        f"  - id: tight-{suffix}\n    when: {{subjects: ['user:dev']}}\n"
        "    limit_to: 1\n    unit: requests_per_day\n"
    )
    client.force_login(admin)
    response = client.post(
        "/api/quotas/simulate", {"yaml": candidate, "days": 1}, content_type="application/json"
    )
    assert response.status_code == 200, response.content
    report = response.json()
    assert report["rows_replayed"] == 4
    rule = report["rules"][0]
    if (now - timedelta(minutes=10)).date() == now.date():  # one calendar day
        assert rule["would_refuse"] == 3
        assert rule["subjects"] == [{"subject": "user:dev", "refused": 3}]


def test_simulate_roles_and_bad_input(client, team, suffix):
    admin = factories.make_user("root-admin", team=team, role=Role.ADMIN)
    developer = factories.make_user("dev", team=team)
    url = "/api/quotas/simulate"
    body = {"yaml": rules_yaml(suffix, team.slug)}
    assert client.post(url, body, content_type="application/json").status_code == 401
    _, dev_secret = factories.make_key(user=developer)
    response = client.post(url, body, content_type="application/json", **bearer(dev_secret))
    assert response.status_code == 403
    _, admin_secret = factories.make_key(user=admin)
    response = client.post(url, body, content_type="application/json", **bearer(admin_secret))
    assert response.status_code == 200
    bad = {"yaml": rules_yaml(suffix, team.slug).replace("limit_to: 5", "limit_to: -1")}
    response = client.post(url, bad, content_type="application/json", **bearer(admin_secret))
    assert response.status_code == 400
    issue = response.json()["error"]["issues"][0]
    assert (issue["rule"], issue["line"]) == (f"daily-{suffix}", 6)
    for broken in ({"yaml": "rules: [", "days": 1}, {"yaml": "x", "days": 0}, {"days": 3}):
        response = client.post(url, broken, content_type="application/json", **bearer(admin_secret))
        assert response.status_code == 400, broken
    response = client.post(url, "not json", content_type="application/json", **bearer(admin_secret))
    assert response.status_code == 400


def test_config_get_and_put_by_role(client, team, other_team, suffix):
    admin = factories.make_user("root-admin", team=team, role=Role.ADMIN)
    finance = factories.make_user("fin", team=team, role=Role.FINANCE)
    team_admin = factories.make_user("lead", team=team, role=Role.TEAM_ADMIN)
    url = "/api/quotas/config"
    assert client.get(url).status_code == 401
    client.force_login(team_admin)
    assert client.get(url).status_code == 403
    client.force_login(finance)
    empty = client.get(url).json()
    assert empty["version"] is None and empty["yaml"] == ""
    text = rules_yaml(suffix, team.slug)
    response = client.put(url, {"yaml": text}, content_type="application/json")
    assert response.status_code == 403
    client.force_login(admin)
    response = client.put(url, {"yaml": text, "note": "first"}, content_type="application/json")
    assert response.status_code == 200, response.content
    assert response.json()["version"] == 1 and response.json()["author"] == "root-admin"
    broken = text.replace("unit: tokens_per_hour", "unit: tokens_per_fortnight")
    response = client.put(url, {"yaml": broken}, content_type="application/json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_quota_config"
    assert error["issues"][0]["line"] == 11 and "tokens_per_fortnight" in error["message"]
    assert QuotaConfigVersion.objects.count() == 1
    client.force_login(finance)
    current = client.get(url).json()
    assert current["version"] == 1 and current["yaml"] == text and current["note"] == "first"
