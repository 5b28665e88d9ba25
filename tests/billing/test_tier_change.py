"""Tiers and subscriptions: a mid-month change, prorated statements, quota rules, pages."""

import datetime as dt
from decimal import Decimal

import pytest

from apps.billing.constants import SubjectType
from apps.billing.exceptions import SubscriptionError
from apps.billing.models import Statement, Subscription, Tier
from apps.billing.quota_rules import tier_quota_rules, tier_quota_state
from apps.billing.services import subscription_change, tiers_seed_demo
from apps.billing.subjects import BillingSubject
from apps.usage.rollups import usage_rollup_month
from tests.billing.helpers import add_usage, usage_row

pytestmark = pytest.mark.django_db

OCT = dt.date(2026, 10, 1)
MID = dt.datetime(2026, 10, 16, 12, 0, tzinfo=dt.UTC)  # exactly half of October's seconds


@pytest.fixture
def tiers():
    tiers_seed_demo()
    return Tier.objects.get(name="Standard"), Tier.objects.get(name="Professional")


def test_seeded_tiers(tiers):
    standard, pro = tiers
    assert (standard.monthly_token_allowance, standard.hard_cap) == (200_000, True)
    assert (pro.monthly_token_allowance, pro.hard_cap) == (1_000_000, False)
    assert tiers_seed_demo() == 0


def test_mid_month_upgrade_prorates_and_keeps_history(tiers, team, user):
    standard, pro = tiers
    subject = BillingSubject(type=SubjectType.TEAM, team=team)
    subscription_change(
        subject=subject, tier=standard, actor=user, at=dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    )
    # 300k tokens in the first half: over Standard's 200k, under Professional's 1M.
    add_usage(
        [
            usage_row(
                team_id=team.pk,
                input_tokens=150_000,
                output_tokens=0,
                created_at=MID - dt.timedelta(days=d + 1),
            )
            for d in range(2)
        ]
    )
    subscription_change(subject=subject, tier=pro, actor=user, at=MID)
    history = list(Subscription.objects.filter(subject_key=subject.key).order_by("starts_at"))
    assert [(s.tier.name, s.ends_at) for s in history] == [
        ("Standard", MID),
        ("Professional", None),
    ]
    # Re-applying the same tier is a no-op; a change before the current start is refused.
    assert (
        subscription_change(subject=subject, tier=pro, at=MID + dt.timedelta(hours=1)) == history[1]
    )
    with pytest.raises(SubscriptionError):
        subscription_change(subject=subject, tier=standard, at=MID - dt.timedelta(days=1))

    usage_rollup_month(month=OCT)
    statement = Statement.objects.get(subject_key=subject.key, month=OCT)
    # The new allowance covers the month so far: no overage at 300k on Professional.
    assert (statement.tier, statement.allowance_tokens, statement.used_tokens) == (
        pro,
        1_000_000,
        300_000,
    )
    assert statement.overage_tokens == 0
    # Half a month of each base price: 24.50 + 99.50.
    assert statement.base_amount == Decimal("124.00") == statement.amount
    assert [line["tier"] for line in statement.lines] == ["Standard", "Professional"]

    # More usage pushes the month past 1M: overage at Professional's 0.25 per 1k.
    add_usage(
        [
            usage_row(
                team_id=team.pk,
                input_tokens=800_000,
                output_tokens=0,
                created_at=MID + dt.timedelta(days=1),
            )
        ]
    )
    usage_rollup_month(month=OCT)
    statement.refresh_from_db()
    assert statement.overage_tokens == 100_000
    assert statement.overage_amount == Decimal("25.00")
    assert statement.amount == Decimal("149.00")


def test_quota_rules_for_hard_capped_subscriptions(tiers, team, virtual_account):
    standard, pro = tiers
    team_subject = BillingSubject(type=SubjectType.TEAM, team=team)
    stamp0, rules = tier_quota_state()
    assert rules == []
    subscription_change(subject=team_subject, tier=standard)
    subscription_change(
        subject=BillingSubject(type=SubjectType.CUSTOMER, customer_id="acme"), tier=standard
    )
    subscription_change(
        subject=BillingSubject(type=SubjectType.VIRTUAL_ACCOUNT, virtual_account=virtual_account),
        tier=pro,
    )
    stamp1, rules = tier_quota_state()
    by_id = {rule.id: rule for rule in rules}
    assert set(by_id) == {"tier-team-frontend", "tier-customer-acme"}  # Professional: no cap
    assert by_id["tier-team-frontend"].subjects == ("team:frontend",)
    assert by_id["tier-team-frontend"].limit == 200_000
    assert by_id["tier-team-frontend"].source == "tier:Standard"
    assert by_id["tier-customer-acme"].metadata == (("customer_id", "acme"),)
    assert by_id["tier-customer-acme"].matches(frozenset(), "any", {"customer_id": "acme"})
    assert stamp1 != stamp0

    # Editing the tier's allowance changes the rule and the stamp; the rule id stays.
    standard.monthly_token_allowance = 300_000
    standard.save()
    stamp2, rules = tier_quota_state()
    assert stamp2 != stamp1
    assert {r.id: r.limit for r in rules}["tier-team-frontend"] == 300_000
    # Moving to an uncapped tier drops the rule.
    subscription_change(subject=team_subject, tier=pro)
    assert [r.id for r in tier_quota_rules()] == ["tier-customer-acme"]


def test_portal_pages_role_checked(client, tiers, team, user, admin_user, finance_user):
    standard, _ = tiers
    client.force_login(user)
    for url in (
        "/billing/",
        "/billing/tiers/",
        "/billing/subscriptions/",
        "/billing/statements.csv",
    ):
        assert client.get(url).status_code == 403, url
    client.force_login(finance_user)
    assert client.get("/billing/?month=2026-10").status_code == 200
    assert client.get("/billing/tiers/").status_code == 403
    response = client.get("/billing/statements.csv?month=2026-10")
    assert b"".join(response.streaming_content).startswith(b"month,subject_type")

    client.force_login(admin_user)
    assert client.get("/billing/tiers/").status_code == 200
    response = client.post(
        "/billing/tiers/",
        {
            "name": "Enterprise",
            "monthly_token_allowance": 5_000_000,
            "monthly_price": "999",
            "overage_price_per_1k_tokens": "0.1",
            "included_models": "gpt-4o, claude",
            "is_active": "on",
        },
    )
    assert response.status_code == 302
    assert Tier.objects.get(name="Enterprise").included_models == ["gpt-4o", "claude"]
    form = {"subject_type": "team", "team": team.pk, "tier": standard.pk}
    preview = client.post("/billing/subscriptions/", {**form, "action": "preview"})
    assert preview.status_code == 200 and b"Confirm change" in preview.content
    assert not Subscription.objects.exists()
    assert client.post("/billing/subscriptions/", {**form, "action": "confirm"}).status_code == 302
    assert Subscription.objects.get().tier == standard
    history = client.get("/billing/subscriptions/history/", {"subject": f"team:{team.pk}"})
    assert b"Standard" in history.content
