from datetime import UTC, datetime
from decimal import Decimal

import pytest

from apps.quotas.rules import (
    ANY_SUBJECT,
    MISSING_PER_VALUE,
    QuotaConfigError,
    QuotaRule,
    merge_rules,
    parse_config,
    tier_rule,
    window_bounds,
)

pytestmark = pytest.mark.embedded

ISSUE_EXAMPLE = """\
name: ratelimiting-config
type: gateway-rate-limiting-config
rules:
  - id: frontend-daily
    when:
      subjects: ["team:frontend"]
      models: ["gpt-4o"]
      metadata: {environment: production}
    limit_to: 5000
    unit: requests_per_day
  - id: per-customer-monthly
    when: {subjects: ["team:saas"]}
    per: metadata.customer_id
    limit_to: 200000
    unit: tokens_per_month
"""


def config_with(rules_yaml: str, head: str = "") -> str:
    return f"name: t\ntype: gateway-rate-limiting-config\n{head}rules:\n{rules_yaml}"


def issues_of(text: str) -> list[tuple[str | None, int | None, str]]:
    with pytest.raises(QuotaConfigError) as info:
        parse_config(text)
    return [(issue.rule_id, issue.line, issue.message) for issue in info.value.issues]


def test_issue_example_parses():
    config = parse_config(ISSUE_EXAMPLE)
    assert config.name == "ratelimiting-config"
    assert config.on_store_failure == "open"
    daily, monthly = config.rules
    assert daily.id == "frontend-daily"
    assert daily.subjects == ("team:frontend",)
    assert daily.models == frozenset({"gpt-4o"})
    assert daily.metadata == (("environment", "production"),)
    assert (daily.metric, daily.period, daily.limit) == ("requests", "day", 5000)
    assert daily.source == "yaml"
    assert daily.line == 4
    assert monthly.per == "customer_id"
    assert (monthly.metric, monthly.period) == ("tokens", "month")


def test_every_unit_is_accepted():
    units = [
        f"{metric}_per_{period}"
        for metric in ("requests", "tokens", "input_tokens", "output_tokens")
        for period in ("minute", "hour", "day", "month")
    ] + ["cost_usd_per_day", "cost_usd_per_month"]
    rules = "".join(
        f"  - id: r{i}\n    limit_to: 10\n    unit: {unit}\n" for i, unit in enumerate(units)
    )
    config = parse_config(config_with(rules))
    assert [rule.unit for rule in config.rules] == units


def test_cost_limit_is_counted_in_micro_dollars():
    config = parse_config(
        config_with("  - id: budget\n    limit_to: 12.5\n    unit: cost_usd_per_month\n")
    )
    rule = config.rules[0]
    assert rule.limit_to == Decimal("12.5")
    assert rule.limit == 12_500_000


def test_on_store_failure_and_empty_rules():
    config = parse_config(config_with("", head="on_store_failure: closed\n"))
    assert config.on_store_failure == "closed"
    assert config.rules == ()


@pytest.mark.parametrize(
    ("rule_yaml", "expected"),
    [
        (
            "  - id: a\n    limit_to: 0\n    unit: requests_per_day\n",
            [("a", 5, "limit_to must be positive")],
        ),
        (
            "  - id: a\n    limit_to: -3\n    unit: requests_per_day\n",
            [("a", 5, "limit_to must be positive")],
        ),
        (
            "  - id: a\n    limit_to: 10\n    unit: requests_per_week\n",
            [("a", 6, "unknown unit 'requests_per_week'")],
        ),
        (
            "  - id: a\n    limit_to: 10\n    unit: cost_usd_per_minute\n",
            [("a", 6, "unknown unit 'cost_usd_per_minute'")],
        ),
        (
            "  - id: a\n    limit_to: 10\n    unit: requests_per_day\n    colour: red\n",
            [("a", 7, "unknown key 'colour'")],
        ),
        (
            '  - id: a\n    when:\n      subjects: ["team:x", "org:y"]\n'
            "    limit_to: 10\n    unit: requests_per_day\n",
            [("a", 6, "unknown subject 'org:y'")],
        ),
        (
            '  - id: a\n    when: {subjects: ["team:x"], tags: {a: b}}\n'
            "    limit_to: 10\n    unit: requests_per_day\n",
            [("a", 5, "when: unknown key 'tags'")],
        ),
        (
            "  - id: a\n    per: customer_id\n    limit_to: 10\n    unit: requests_per_day\n",
            [("a", 5, "per must be 'metadata.<tag key>'")],
        ),
        (
            "  - id: a\n    limit_to: lots\n    unit: requests_per_day\n",
            [("a", 5, "limit_to must be a number")],
        ),
        (
            "  - id: a\n    limit_to: 2.5\n    unit: tokens_per_day\n",
            [("a", 5, "limit_to must be a whole number")],
        ),
        (
            "  - limit_to: 10\n    unit: requests_per_day\n",
            [(None, 4, "a rule needs an 'id'")],
        ),
        (
            "  - id: a\n    unit: requests_per_day\n",
            [("a", 4, "missing key 'limit_to'")],
        ),
        (
            "  - id: a\n    limit_to: 1\n    limit_to: 2\n    unit: requests_per_day\n",
            [("a", 6, "a rule: duplicate key 'limit_to'")],
        ),
    ],
)
def test_invalid_rule_is_named_with_its_line(rule_yaml, expected):
    found = issues_of(config_with(rule_yaml))
    assert len(found) == len(expected), found
    for (rule_id, line, message), (want_id, want_line, want_text) in zip(
        found, expected, strict=True
    ):
        assert (rule_id, line) == (want_id, want_line), found
        assert want_text in message


def test_duplicate_ids_name_both_lines():
    text = config_with(
        "  - id: same\n    limit_to: 1\n    unit: requests_per_day\n"
        "  - id: other\n    limit_to: 1\n    unit: requests_per_day\n"
        "  - id: same\n    limit_to: 2\n    unit: requests_per_day\n"
    )
    [(rule_id, line, message)] = issues_of(text)
    assert (rule_id, line) == ("same", 10)
    assert "first defined on line 4" in message


def test_every_problem_is_reported_in_line_order():
    text = config_with(
        "  - id: a\n    limit_to: 0\n    unit: requests_per_day\n"
        "  - id: b\n    limit_to: 1\n    unit: nope\n"
    )
    with pytest.raises(QuotaConfigError) as info:
        parse_config(text)
    assert [issue.rule_id for issue in info.value.issues] == ["a", "b"]
    assert "rule 'a', line 5" in str(info.value)
    assert "rule 'b', line 9" in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("name: t\nrules: []\n", "missing key 'type'"),
        ("name: t\ntype: other\nrules: []\n", "type must be 'gateway-rate-limiting-config'"),
        (
            "name: t\ntype: gateway-rate-limiting-config\nrules: []\nextra: 1\n",
            "unknown key 'extra'",
        ),
        (
            "name: t\ntype: gateway-rate-limiting-config\non_store_failure: maybe\nrules: []\n",
            "on_store_failure must be 'open' or 'closed'",
        ),
        ("name: t\ntype: gateway-rate-limiting-config\nrules: [\n", "not valid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
def test_invalid_config_level(text, fragment):
    with pytest.raises(QuotaConfigError, match=fragment.replace("'", ".").replace("[", ".")):
        parse_config(text)


def test_yaml_error_carries_its_line():
    with pytest.raises(QuotaConfigError) as info:
        parse_config("name: t\ntype: gateway-rate-limiting-config\nrules:\n  - id: [a\n")
    assert info.value.issues[0].line is not None


# --- matching and counter identity --------------------------------------------------------


def rule(**kwargs) -> QuotaRule:
    kwargs.setdefault("id", "r")
    kwargs.setdefault("unit", "requests_per_day")
    kwargs.setdefault("limit_to", 10)
    return QuotaRule(**kwargs)


def test_rule_without_when_matches_everything():
    r = rule()
    assert r.matches(set(), "any-model", {})
    assert r.matched_subjects({"team:x"}) == [ANY_SUBJECT]


def test_matching_subjects_models_and_metadata():
    r = rule(
        subjects=("team:frontend", "user:bob"),
        models=frozenset({"gpt-4o"}),
        metadata=(("environment", "production"),),
    )
    tags = {"environment": "production", "feature": "x"}
    assert r.matches({"team:frontend", "user:alice"}, "gpt-4o", tags)
    assert not r.matches({"team:backend"}, "gpt-4o", tags)
    assert not r.matches({"team:frontend"}, "gpt-4o-mini", tags)
    assert not r.matches({"team:frontend"}, "gpt-4o", {"environment": "staging"})
    assert not r.matches({"team:frontend"}, "gpt-4o", {})
    assert r.matched_subjects({"team:frontend", "user:bob"}) == ["team:frontend", "user:bob"]


def test_counter_key_is_per_subject_per_value_and_window():
    r = rule(per="customer_id")
    base = r.counter_key("team:a", r.per_value({"customer_id": "c1"}), 1000)
    assert base != r.counter_key("team:b", "c1", 1000)
    assert base != r.counter_key("team:a", "c2", 1000)
    assert base != r.counter_key("team:a", "c1", 2000)
    assert rule(id="other").counter_key("team:a", "c1", 1000) != base
    # Separators inside values cannot forge another identity.
    assert r.counter_key("team:a|c1", None, 1) != r.counter_key("team:a", "c1", 1)
    assert r.per_value({}) == MISSING_PER_VALUE
    assert rule().per_value({"customer_id": "c1"}) is None


def test_user_emails_match_case_insensitively():
    config = parse_config(
        config_with(
            '  - id: a\n    when: {subjects: ["user:Alice@Example.com"]}\n'
            "    limit_to: 1\n    unit: requests_per_day\n"
        )
    )
    assert config.rules[0].subjects == ("user:alice@example.com",)


# --- windows ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "now", "start", "reset"),
    [
        (
            "requests_per_minute",
            datetime(2025, 3, 4, 10, 20, 30, 500, tzinfo=UTC),
            datetime(2025, 3, 4, 10, 20, tzinfo=UTC),
            datetime(2025, 3, 4, 10, 21, tzinfo=UTC),
        ),
        (
            "tokens_per_hour",
            datetime(2025, 3, 4, 10, 59, 59, tzinfo=UTC),
            datetime(2025, 3, 4, 10, tzinfo=UTC),
            datetime(2025, 3, 4, 11, tzinfo=UTC),
        ),
        (
            "requests_per_day",
            datetime(2025, 12, 31, 23, 59, tzinfo=UTC),
            datetime(2025, 12, 31, tzinfo=UTC),
            datetime(2026, 1, 1, tzinfo=UTC),
        ),
        (
            "cost_usd_per_month",
            datetime(2024, 2, 29, 12, tzinfo=UTC),
            datetime(2024, 2, 1, tzinfo=UTC),
            datetime(2024, 3, 1, tzinfo=UTC),
        ),
        (
            "tokens_per_month",
            datetime(2025, 12, 15, tzinfo=UTC),
            datetime(2025, 12, 1, tzinfo=UTC),
            datetime(2026, 1, 1, tzinfo=UTC),
        ),
        (
            "tokens_per_month",
            datetime(2025, 4, 1, tzinfo=UTC),
            datetime(2025, 4, 1, tzinfo=UTC),
            datetime(2025, 5, 1, tzinfo=UTC),
        ),
    ],
)
def test_window_bounds(unit, now, start, reset):
    assert window_bounds(unit, now) == (start, reset)


def test_windows_are_utc_calendar_windows_whatever_the_input_zone():
    from zoneinfo import ZoneInfo

    # 00:30 on the 1st in Berlin is still the previous month in UTC.
    now = datetime(2025, 5, 1, 0, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    assert window_bounds("requests_per_month", now) == (
        datetime(2025, 4, 1, tzinfo=UTC),
        datetime(2025, 5, 1, tzinfo=UTC),
    )


def test_window_bounds_refuse_naive_times():
    with pytest.raises(ValueError, match="aware"):
        window_bounds("requests_per_day", datetime(2025, 1, 1))  # noqa: DTZ001


# --- tier rules -----------------------------------------------------------------------------


def test_tier_rules_merge_with_yaml_rules():
    config = parse_config(ISSUE_EXAMPLE)
    generated = tier_rule(
        tier_name="Standard", monthly_tokens=1_000_000, subjects=["team:a", "team:b"]
    )
    assert generated.id == "tier-standard"
    assert generated.source == "tier:Standard"
    assert generated.unit == "tokens_per_month"
    merged = merge_rules(config, [generated])
    assert [r.id for r in merged.rules] == [
        "frontend-daily",
        "per-customer-monthly",
        "tier-standard",
    ]
    assert merged.name == config.name


def test_merge_refuses_an_id_clash():
    config = parse_config(
        config_with("  - id: tier-gold\n    limit_to: 1\n    unit: requests_per_day\n")
    )
    with pytest.raises(QuotaConfigError) as info:
        merge_rules(config, [tier_rule(tier_name="gold", monthly_tokens=5, subjects=["team:a"])])
    [issue] = info.value.issues
    assert issue.rule_id == "tier-gold"
    assert issue.line == 4
    assert "yaml" in issue.message and "tier:gold" in issue.message
