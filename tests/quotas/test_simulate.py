"""The dry run against hand-computed numbers: windows, all-or-none, per values, cost."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from apps.quotas.rules import parse_config
from apps.quotas.simulate import SubjectDirectory, simulate, simulate_recent
from apps.usage.models import UsageRecord

pytestmark = pytest.mark.embedded

T0 = datetime(2025, 3, 10, 10, 0, 0, tzinfo=UTC)
DIRECTORY = SubjectDirectory(
    teams={1: "frontend", 2: "backend"},
    users={10: ("alice", "alice@example.com"), 11: ("bob", "Bob@Example.com")},
    accounts={20: "countdown-bot"},
)


def config(rules: str):
    return parse_config(f"name: t\ntype: gateway-rate-limiting-config\nrules:\n{rules}")


def row(seconds: float, *, team=1, user=10, va=None, model="gpt-4o", tags=None, tokens=(0, 0),
        cost="0"):  # fmt: skip
    return {
        "created_at": T0 + timedelta(seconds=seconds),
        "team_id": team,
        "user_id": user,
        "virtual_account_id": va,
        "model": model,
        "tags": tags or {},
        "input_tokens": tokens[0],
        "output_tokens": tokens[1],
        "cost_usd": Decimal(cost),
    }


def run(cfg, rows):
    return simulate(cfg, rows, DIRECTORY, since=T0, until=T0 + timedelta(days=1))


def by_id(report):
    return {rule.rule_id: rule for rule in report.rules}


def test_requests_per_minute_refuses_over_the_limit_and_resets_with_the_window():
    cfg = config(
        "  - id: burst\n    when: {subjects: ['team:frontend']}\n"
        "    limit_to: 3\n    unit: requests_per_minute\n"
    )
    rows = [row(s) for s in range(5)]  # 10:00:00 .. 10:00:04: the 4th and 5th are over
    rows += [row(30, team=2, user=11)]  # another team: not covered
    rows += [row(70), row(71)]  # 10:01: a new window
    report = run(cfg, rows)
    burst = by_id(report)["burst"]
    assert report.rows_replayed == 8
    assert report.requests_refused == 2
    assert burst.would_refuse == 2
    assert burst.first_refusal_at == T0 + timedelta(seconds=3)
    assert burst.last_refusal_at == T0 + timedelta(seconds=4)
    assert dict(burst.subjects) == {"team:frontend": 2}
    assert burst.peak_used == 3


def test_a_refused_row_changes_no_counter():
    cfg = config(
        "  - id: req\n    when: {subjects: ['team:frontend']}\n"
        "    limit_to: 3\n    unit: requests_per_minute\n"
        "  - id: tok\n    when: {subjects: ['user:alice']}\n"
        "    limit_to: 100\n    unit: tokens_per_day\n"
    )
    rows = [
        row(0, tokens=(50, 10)),  # admitted: req 1, tok 60
        row(1, tokens=(40, 10)),  # 110 > 100: refused by tok; req stays 1 (all or none)
        row(2, tokens=(20, 10)),  # admitted: req 2, tok 90
        row(3, tokens=(0, 0)),  # asks for 1 token: 91 fits; req 3, tok stays 90
        row(4, tokens=(5, 0)),  # req 4 > 3: refused by req only
    ]
    report = run(cfg, rows)
    rules = by_id(report)
    assert report.requests_refused == 2
    assert rules["tok"].would_refuse == 1
    assert rules["tok"].first_refusal_at == T0 + timedelta(seconds=1)
    assert rules["req"].would_refuse == 1
    assert rules["req"].first_refusal_at == T0 + timedelta(seconds=4)
    assert (rules["req"].peak_used, rules["tok"].peak_used) == (3, 90)
    assert dict(rules["tok"].subjects) == {"user:alice": 1}


def test_per_values_models_cost_and_email_subjects():
    cfg = config(
        "  - id: per-customer\n    when: {models: ['gpt-4o']}\n    per: metadata.customer\n"
        "    limit_to: 2\n    unit: requests_per_hour\n"
        "  - id: budget\n    when: {subjects: ['team:backend']}\n"
        "    limit_to: 0.10\n    unit: cost_usd_per_day\n"
        "  - id: bob-daily\n    when: {subjects: ['user:BOB@example.com']}\n"
        "    limit_to: 1\n    unit: requests_per_day\n"
    )
    rows = [row(s, tags={"customer": "a"}) for s in range(3)]  # third refused
    rows += [row(3, tags={"customer": "b"})]
    rows += [row(4 + s) for s in range(3)]  # no tag: share the "-" counter; third refused
    rows += [row(10 + s, model="other", tags={"customer": "a"}) for s in range(2)]  # not covered
    # Backend's budget: 0.04 + 0.04 fit, a third 0.04 would make 0.12, the 0.02 makes 0.10;
    # once spent, even a request that cost nothing is refused (it asks for 1 micro-dollar).
    rows += [
        row(20 + s, team=2, user=12, model="other", cost=c)
        for s, c in enumerate(["0.04", "0.04", "0.04", "0.02"])
    ]
    rows += [row(30 + s, user=11, model="other") for s in range(2)]  # bob: the 2nd is refused
    report = run(cfg, rows)
    rules = by_id(report)
    assert rules["per-customer"].would_refuse == 2
    assert dict(rules["per-customer"].per_values) == {"a": 1, "-": 1}
    assert dict(rules["per-customer"].subjects) == {"everyone": 2}
    assert rules["per-customer"].first_refusal_at == T0 + timedelta(seconds=2)
    assert rules["budget"].would_refuse == 1
    assert rules["budget"].first_refusal_at == T0 + timedelta(seconds=22)
    assert rules["budget"].peak_used == pytest.approx(0.10)
    assert rules["budget"].limit == pytest.approx(0.10)
    assert rules["bob-daily"].would_refuse == 1
    assert dict(rules["bob-daily"].subjects) == {"user:bob@example.com": 1}
    assert report.requests_refused == 4


def test_report_serializes_for_the_api():
    cfg = config("  - id: all\n    limit_to: 1\n    unit: requests_per_day\n")
    data = run(cfg, [row(0), row(1, va=20, user=None)]).as_dict()
    assert data["requests_refused"] == 1
    assert data["rules"][0]["subjects"] == [{"subject": "everyone", "refused": 1}]
    assert data["rules"][0]["first_refusal_at"] == T0 + timedelta(seconds=1)


@pytest.mark.django_db
def test_simulate_recent_reads_rows_of_the_period_in_time_order(team, user, virtual_account):
    now = datetime.now(UTC)
    cfg = config(
        f"  - id: va-daily\n    when: {{subjects: ['virtualaccount:{virtual_account.name}']}}\n"
        "    limit_to: 2\n    unit: requests_per_month\n"
        f"  - id: alice-daily\n    when: {{subjects: ['user:{user.email}']}}\n"
        "    limit_to: 1\n    unit: requests_per_month\n"
    )

    def record(n: int, ago: timedelta, **owner) -> None:
        UsageRecord.objects.create(
            request_id=f"req-sim-{n}",
            created_at=now - ago,
            team_id=team.id,
            model="gpt-4o",
            request_type="chat",
            status_code=200,
            **owner,
        )

    # Created out of order on purpose; the 10-day-old row is outside a 7-day replay.
    record(1, timedelta(hours=1), virtual_account_id=virtual_account.id)
    record(2, timedelta(hours=3), virtual_account_id=virtual_account.id)
    record(3, timedelta(days=10), virtual_account_id=virtual_account.id)
    record(4, timedelta(hours=2), virtual_account_id=virtual_account.id)
    record(5, timedelta(hours=5), user_id=user.id)
    record(6, timedelta(hours=4), user_id=user.id)
    report = simulate_recent(cfg, days=7, now=now)
    rules = by_id(report)
    assert report.rows_replayed == 5
    # Month windows: rows on both sides of a month start would split; keep the test exact.
    if (now - timedelta(hours=5)).month == now.month:
        assert rules["va-daily"].would_refuse == 1
        assert rules["va-daily"].first_refusal_at == now - timedelta(hours=1)
        assert rules["alice-daily"].would_refuse == 1
        assert rules["alice-daily"].first_refusal_at == now - timedelta(hours=4)
