"""Quota rules enforced by a real gateway process: 429 naming the rule, headers, settle."""

import time

import openai
import pytest
from openai import OpenAI

from apps.quotas.services import quota_config_apply
from tests import factories
from tests.proxy.helpers import declare_model, wait_for_usage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.embedded]

MESSAGES = [{"role": "user", "content": "hello"}]


def wait_for_quota_refresh() -> None:
    time.sleep(0.8)  # the test gateway reloads quota configs every 0.2 s


def test_broken_rule_is_named_in_a_429(gateway, team, user):
    suffix = str(time.monotonic_ns())
    _, secret = factories.make_key(user=user)
    declare_model("quota-chat", gateway.simulator_url, "demo-chat")
    gateway.wait_for_model(secret, "quota-chat")
    quota_config_apply(
        yaml_text=f"""
name: test
type: gateway-rate-limiting-config
rules:
  - id: frontend-burst-{suffix}
    when: {{subjects: ["team:{team.slug}"], models: ["quota-chat"]}}
    limit_to: 2
    unit: requests_per_minute
  - id: everyone-daily-{suffix}
    limit_to: 1000
    unit: requests_per_day
"""
    )
    wait_for_quota_refresh()
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key=secret, max_retries=0)
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="quota-chat", messages=MESSAGES
        )
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="quota-chat", messages=MESSAGES)
    response = caught.value.response
    error = response.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert f"frontend-burst-{suffix}" in error["message"]
    assert f"everyone-daily-{suffix}" not in error["message"]
    broken = error["broken_rules"]
    assert [rule["rule"] for rule in broken] == [f"frontend-burst-{suffix}"]
    assert broken[0]["limit"] == 2 and broken[0]["used"] == 2
    assert int(response.headers["retry-after"]) >= 0
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    row = wait_for_usage(response.headers["x-request-id"])
    assert row.status_code == 429 and row.error_type == "quota_exceeded"
    assert [r["rule"] for r in row.response_body["broken_rules"]] == [f"frontend-burst-{suffix}"]


def test_token_budget_reserves_and_settles(gateway, team, user):
    suffix = str(time.monotonic_ns())
    _, secret = factories.make_key(user=user)
    declare_model("budget-chat", gateway.simulator_url, "demo-chat")
    gateway.wait_for_model(secret, "budget-chat")
    quota_config_apply(
        yaml_text=f"""
name: test
type: gateway-rate-limiting-config
rules:
  - id: tokens-{suffix}
    when: {{subjects: ["team:{team.slug}"], models: ["budget-chat"]}}
    limit_to: 300
    unit: tokens_per_day
"""
    )
    wait_for_quota_refresh()
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key=secret, max_retries=0)
    # A request whose worst case (input + max_tokens) exceeds the budget is refused up front.
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="budget-chat", messages=MESSAGES, max_tokens=500)
    # Small requests fit; after settling, only their actual tokens count.
    used = 0
    for _ in range(2):
        answer = client.chat.completions.create(
            model="budget-chat", messages=MESSAGES, max_tokens=40
        )
        used += answer.usage.total_tokens
    raw = client.chat.completions.with_raw_response.create(
        model="budget-chat", messages=MESSAGES, max_tokens=10
    )
    remaining = int(raw.headers["x-ratelimit-remaining-tokens"])
    assert remaining <= 300 - used


def test_hard_capped_tier_is_enforced_as_a_rule_named_after_it(gateway, user, other_team):
    from apps.accounts.services import membership_set
    from apps.billing.constants import SubjectType
    from apps.billing.services.subscriptions import subscription_change, tier_save
    from apps.billing.subjects import BillingSubject

    membership_set(user=user, team=other_team, role="developer")
    _, secret = factories.make_key(user=user, team=other_team)
    declare_model("tier-chat", gateway.simulator_url, "demo-chat")
    gateway.wait_for_model(secret, "tier-chat")
    tier = tier_save(
        name=f"Tiny {time.monotonic_ns()}",
        monthly_token_allowance=150,
        monthly_price="1.00",
        hard_cap=True,
    )
    subscription_change(subject=BillingSubject(type=SubjectType.TEAM, team=other_team), tier=tier)
    wait_for_quota_refresh()
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key=secret, max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="tier-chat", messages=MESSAGES, max_tokens=500)
    assert f"tier-team-{other_team.slug}" in caught.value.response.json()["error"]["message"]
    answer = client.chat.completions.create(model="tier-chat", messages=MESSAGES, max_tokens=20)
    assert answer.usage.total_tokens > 0
