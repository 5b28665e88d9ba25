"""Insights: spend projection, tier fit, cap forecast and cheaper models on hand-computed data.

The data set is rollup rows written directly (no raw usage), as the rollup run writes them
(a cube row and one row per rollup tag key; a whole month on its first day), so every number
below can be checked by hand. "Now" is 2026-10-11 00:00 UTC, when the last rollup ran (so every rolled-up
day counts as complete), so 10 of October's 31 days have elapsed and the projection factor
is 3.1. Month-to-date figures are live, so elapsed time runs to now, not to the last run.
"""

import datetime as dt
from decimal import Decimal

import pytest
import time_machine

from apps.billing.constants import SubjectType
from apps.billing.models import ModelPrice, Tier
from apps.billing.selectors.insights import billing_insights
from apps.billing.selectors.insights.cheaper_models import model_savings
from apps.billing.services import subscription_change
from apps.billing.subjects import BillingSubject
from apps.usage.grouping import rollup_tag_keys
from apps.usage.models import TagUsageDaily, UsageCubeDaily
from tests import factories

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

AS_OF = dt.datetime(2026, 10, 11, 0, 0, tzinfo=dt.UTC)
NOW = AS_OF
SINCE = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def _rollup(*, period, team=None, va=None, name, dims=None, inp, out, cached=0, cost=0):
    fields = {
        "day": period,
        "team_id": team.pk if team else None,
        "virtual_account_id": va.pk if va else None,
        "model": name,
        "requests": 1,
        "input_tokens": inp,
        "output_tokens": out,
        "cached_tokens": cached,
        "cost_usd": Decimal(cost),
        "computed_at": AS_OF,
    }
    for key in rollup_tag_keys():
        TagUsageDaily.objects.create(tag_key=key, tag_value=(dims or {}).get(key, ""), **fields)
    return UsageCubeDaily.objects.create(**fields)


@pytest.fixture
def plan(team, other_team, virtual_account):
    tiers = {
        "Starter": Tier.objects.create(
            name="Starter",
            monthly_token_allowance=50_000,
            monthly_price=Decimal("10.00"),
            overage_price_per_1k_tokens=Decimal("1.00"),
        ),
        "Standard": Tier.objects.create(
            name="Standard",
            monthly_token_allowance=200_000,
            monthly_price=Decimal("49.00"),
            hard_cap=True,
        ),
        "Professional": Tier.objects.create(
            name="Professional",
            monthly_token_allowance=1_000_000,
            monthly_price=Decimal("199.00"),
            overage_price_per_1k_tokens=Decimal("0.25"),
        ),
        # Inactive: never recommended, however cheap.
        "Legacy": Tier.objects.create(
            name="Legacy",
            monthly_token_allowance=10_000_000,
            monthly_price=Decimal("1.00"),
            overage_price_per_1k_tokens=Decimal("0.01"),
            is_active=False,
        ),
    }
    for subject, tier in [
        (BillingSubject(type=SubjectType.TEAM, team=team), "Professional"),
        (BillingSubject(type=SubjectType.TEAM, team=other_team), "Standard"),
        (BillingSubject(type=SubjectType.CUSTOMER, customer_id="acme"), "Standard"),
    ]:
        subscription_change(subject=subject, tier=tiers[tier], at=SINCE)

    # June is outside the three-month window (July to September).
    _rollup(period=dt.date(2026, 6, 1), team=team, name="gpt-4o", inp=5_000_000, out=0)
    _rollup(period=dt.date(2026, 7, 1), team=team, name="gpt-4o", inp=100_000, out=50_000)
    _rollup(period=dt.date(2026, 8, 1), team=team, name="gpt-4o", inp=150_000, out=30_000)
    _rollup(period=dt.date(2026, 9, 1), team=team, name="gpt-4o", inp=100_000, out=20_000)
    acme = {"customer_id": "acme"}
    for month, inp, out in [(7, 200_000, 50_000), (8, 80_000, 20_000)]:
        _rollup(period=dt.date(2026, month, 1), name="gpt-4o-mini", dims=acme, inp=inp, out=out)

    chat = {"customer_id": "acme", "feature": "chat"}
    _rollup(
        period=dt.date(2026, 10, 2),
        team=team,
        name="gpt-4o-mini",
        dims=chat,
        inp=50_000,
        out=10_000,
        cost="0.60",
    )
    _rollup(
        period=dt.date(2026, 10, 5),
        team=team,
        va=virtual_account,
        name="gpt-4o-mini",
        dims=chat,
        inp=30_000,
        out=10_000,
        cost="0.40",
    )
    search = {"feature": "search"}
    _rollup(
        period=dt.date(2026, 10, 3),
        team=other_team,
        name="gpt-4o",
        dims=search,
        inp=100_000,
        out=50_000,
        cached=50_000,
        cost="1.25",
    )
    _rollup(
        period=dt.date(2026, 10, 4),
        team=other_team,
        name="gpt-4o",
        dims=search,
        inp=80_000,
        out=20_000,
        cost="0.75",
    )

    def price(name, mode, inp, out, cached=None, since="2024-01-01"):
        ModelPrice.objects.create(
            model_name=name,
            mode=mode,
            input_cost_per_token=Decimal(inp),
            output_cost_per_token=Decimal(out),
            cached_input_cost_per_token=None if cached is None else Decimal(cached),
            effective_from=dt.date.fromisoformat(since),
        )

    price("gpt-4o", "chat", "0.0000025", "0.00001")
    price("gpt-4o", "chat", "0.0000000001", "0", since="2026-11-01")  # not in force yet
    price("gpt-4o-mini", "chat", "0.00000015", "0.0000006")
    price("cheap-chat", "chat", "0.00001", "0.00001", since="2025-01-01")
    price("cheap-chat", "chat", "0.0000001", "0.0000004", cached="0.00000005", since="2026-06-01")
    price("free-chat", "chat", "0", "0")  # unpriced placeholder: never "cheapest"
    price("embed-small", "embedding", "0.00000001", "0")
    return tiers


def test_month_to_date_spend_and_projection(plan, team, other_team, virtual_account):
    insights = billing_insights(now=NOW)
    assert insights.month == dt.date(2026, 10, 1)
    assert insights.as_of == AS_OF
    assert (insights.elapsed_days, insights.days_in_month) == (Decimal(10), 31)
    spend = {s.subject_key: s for s in insights.spend}
    assert {
        key: (s.tokens, s.spend_usd, s.projected_tokens, s.projected_usd, s.tier)
        for key, s in spend.items()
    } == {
        f"team:{other_team.pk}": (250_000, Decimal("2.00"), 775_000, Decimal("6.20"), "Standard"),
        f"team:{team.pk}": (100_000, Decimal("1.00"), 310_000, Decimal("3.10"), "Professional"),
        "customer:acme": (100_000, Decimal("1.00"), 310_000, Decimal("3.10"), "Standard"),
        f"virtual_account:{virtual_account.pk}": (
            40_000,
            Decimal("0.40"),
            124_000,
            Decimal("1.24"),
            None,
        ),
    }
    assert spend[f"virtual_account:{virtual_account.pk}"].label == "virtual account countdown-bot"
    assert insights.spend[0].subject_key == f"team:{other_team.pk}"  # largest projection first
    assert (insights.spend_total_usd, insights.projected_total_usd) == (
        Decimal("3.00"),
        Decimal("9.30"),
    )


def test_projection_waits_for_a_full_day():
    # Two hours into the month with no rollup yet: elapsed counts as one day, not 2/24.
    insights = billing_insights(now=dt.datetime(2026, 10, 1, 2, 0, tzinfo=dt.UTC))
    assert insights.elapsed_days == Decimal(1)
    assert insights.spend == [] and insights.tier_fit == [] and insights.model_savings == []


def test_tier_fit(plan, team, other_team):
    insights = billing_insights(now=NOW)
    assert insights.tier_fit_months == [
        dt.date(2026, 7, 1),
        dt.date(2026, 8, 1),
        dt.date(2026, 9, 1),
    ]
    fits = {f.subject_key: f for f in insights.tier_fit}
    costs = {
        key: {c.tier: (c.amount_usd, c.overage_tokens, c.refused_tokens) for c in f.costs}
        for key, f in fits.items()
    }

    frontend = fits[f"team:{team.pk}"]
    assert frontend.tokens_by_month == [150_000, 180_000, 120_000]
    # Starter: 3 x 10 + (100k + 130k + 70k) overage x 1.00/1k; Standard 3 x 49, nothing
    # refused; Professional 3 x 199. Legacy is inactive and not priced.
    assert costs[frontend.subject_key] == {
        "Starter": (Decimal("330.00"), 300_000, 0),
        "Standard": (Decimal("147.00"), 0, 0),
        "Professional": (Decimal("597.00"), 0, 0),
    }
    assert (frontend.current_tier, frontend.recommended_tier) == ("Professional", "Standard")
    assert frontend.saving_usd == Decimal("450.00") and frontend.pays_less_elsewhere
    assert frontend.cap is None

    acme = fits["customer:acme"]
    assert acme.tokens_by_month == [250_000, 100_000, 0]
    # Standard would have refused July's 50k over its cap: the cheapest tier refusing
    # nothing is Starter, 30 + (200k + 50k) x 1.00/1k = 280, dearer than today's 147.
    assert costs["customer:acme"]["Standard"] == (Decimal("147.00"), 0, 50_000)
    assert costs["customer:acme"]["Starter"] == (Decimal("280.00"), 250_000, 0)
    assert (acme.recommended_tier, acme.recommended_amount_usd) == ("Starter", Decimal("280.00"))
    assert acme.saving_usd == Decimal("-133.00") and not acme.pays_less_elsewhere
    # 100k of 200k in 10 days: 10k a day reaches the cap 10 days after the last rollup.
    assert (acme.cap.used_tokens, acme.cap.tokens_per_day) == (100_000, 10_000)
    assert (acme.cap.reached, acme.cap.hits_on) == (False, dt.date(2026, 10, 21))

    backend = fits[f"team:{other_team.pk}"]
    assert backend.tokens_by_month == [0, 0, 0]
    assert (backend.recommended_tier, backend.saving_usd) == ("Starter", Decimal("117.00"))
    # 150k on the 3rd, 100k on the 4th: the cap was reached on the 4th.
    assert (backend.cap.used_tokens, backend.cap.reached, backend.cap.hits_on) == (
        250_000,
        True,
        dt.date(2026, 10, 4),
    )
    assert [f.subject_key for f in insights.tier_fit] == [
        frontend.subject_key,
        backend.subject_key,
        "customer:acme",
    ]


def test_cap_not_hit_this_month(plan):
    # The rollup ran again on the 28th with no new usage: 100k in 27 days is ~3.7k a day,
    # so acme's remaining 100k lasts into November.
    late = dt.datetime(2026, 10, 28, tzinfo=dt.UTC)
    UsageCubeDaily.objects.update(computed_at=late)
    insights = billing_insights(now=late + dt.timedelta(hours=1))
    assert insights.as_of == late + dt.timedelta(hours=1)
    acme = next(f for f in insights.tier_fit if f.subject_key == "customer:acme")
    assert acme.cap.hits_on is None and not acme.cap.reached


def test_cheaper_model_by_feature(plan):
    savings = [
        (
            s.feature,
            s.model,
            s.mode,
            s.cost_usd,
            s.cheapest_model,
            s.cheapest_cost_usd,
            s.saving_usd,
        )
        for s in billing_insights(now=NOW).model_savings
    ]
    assert savings == [
        # 130k input x 1e-7 + 50k cached x 5e-8 + 70k output x 4e-7 = 0.0435
        (
            "search",
            "gpt-4o",
            "chat",
            Decimal("2.000000"),
            "cheap-chat",
            Decimal("0.043500"),
            Decimal("1.956500"),
        ),
        # 80k x 1e-7 + 20k x 4e-7 = 0.016 (gpt-4o-mini itself would be 0.024)
        (
            "chat",
            "gpt-4o-mini",
            "chat",
            Decimal("1.000000"),
            "cheap-chat",
            Decimal("0.016000"),
            Decimal("0.984000"),
        ),
    ]


def test_page_and_api_roles(client, plan, team, user, finance_user, admin_user, team_admin):
    with time_machine.travel(NOW, tick=False):
        for who in (user, team_admin):
            client.force_login(who)
            assert client.get("/billing/insights/").status_code == 403
            assert client.get("/api/usage/insights").status_code == 403
        for who in (finance_user, admin_user):
            client.force_login(who)
            page = client.get("/billing/insights/")
            assert page.status_code == 200
            assert b"hits on 2026-10-21" in page.content and b"450.00" in page.content
            assert b"linear run rate" in page.content
            assert client.get("/api/usage/insights").status_code == 200
        assert b"/billing/insights/" in client.get("/billing/").content


def test_api_json_shape(client, plan, finance_user):
    client.force_login(finance_user)
    with time_machine.travel(NOW, tick=False):
        body = client.get("/api/usage/insights").json()
    assert set(body) == {
        "month",
        "as_of",
        "elapsed_days",
        "days_in_month",
        "tier_fit_months",
        "spend_total_usd",
        "projected_total_usd",
        "spend",
        "tier_fit",
        "model_savings",
    }
    assert body["month"] == "2026-10-01" and body["tier_fit_months"][0] == "2026-07-01"
    assert body["projected_total_usd"] == "9.30"
    acme = next(s for s in body["spend"] if s["subject_key"] == "customer:acme")
    assert acme == {
        "subject_key": "customer:acme",
        "subject_type": "customer",
        "label": "customer acme",
        "tier": "Standard",
        "tokens": 100000,
        "spend_usd": "1.00",
        "projected_tokens": 310000,
        "projected_usd": "3.10",
    }
    fit = next(f for f in body["tier_fit"] if f["subject_key"] == "customer:acme")
    assert fit["cap"] == {
        "tier": "Standard",
        "allowance_tokens": 200000,
        "used_tokens": 100000,
        "tokens_per_day": 10000,
        "reached": False,
        "hits_on": "2026-10-21",
    }
    assert fit["pays_less_elsewhere"] is False and fit["recommended_tier"] == "Starter"
    assert {c["tier"] for c in fit["costs"]} == {"Starter", "Standard", "Professional"}
    assert body["model_savings"][0]["cheapest_model"] == "cheap-chat"
    assert body["model_savings"][0]["saving_usd"] == "1.956500"


def test_api_refuses_api_keys(client, user):
    # Insights span every team and customer: a team's usage:read key may not read them.
    _, secret = factories.make_key(user=user, scopes=["usage:read"])
    response = client.get("/api/usage/insights", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 403


def test_cheaper_model_prices_cache_reads_and_writes_at_their_rates():
    ModelPrice.objects.create(
        model_name="cached-chat",
        mode="chat",
        input_cost_per_token=Decimal("0.000003"),
        output_cost_per_token=Decimal("0.000015"),
        cached_input_cost_per_token=Decimal("0.0000003"),
        cache_write_cost_per_token=Decimal("0.00000375"),
        effective_from=dt.date(2024, 1, 1),
    )
    # 10k input (6k read, 2k written, 2k fresh) and 1k output, on the only chat model:
    # 2k x 3e-6 + 6k x 3e-7 + 2k x 3.75e-6 + 1k x 1.5e-5 = 0.0303.
    features = {("agent", "cached-chat"): [10_000, 1_000, 6_000, 2_000, Decimal("0.05")]}
    (saving,) = model_savings(features, dt.date(2026, 10, 1))
    assert (saving.cheapest_model, saving.cheapest_cost_usd) == ("cached-chat", Decimal("0.030300"))
    assert saving.saving_usd == Decimal("0.019700")
