"""The daily rollups reconcile with the raw usage rows to the cent (the cube and each tag
key's rows alike), and re-runs pick up late rows."""

import datetime as dt
import io
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db.models import Count, Q, Sum
from django.db.models.fields.json import KeyTextTransform

from apps.usage.grouping import rollup_tag_keys
from apps.usage.models import TagUsageDaily, UsageCubeDaily, UsageRecord
from apps.usage.rollups import usage_rollup_day, usage_rollup_month
from tests.billing.helpers import copy_usage

pytestmark = pytest.mark.django_db

OCT = dt.date(2026, 10, 1)
OCT_START = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
NOV_START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
TEAMS = [1, 2, 3, 4, 5]


def _totals(queryset):
    return queryset.aggregate(
        requests=Count("pk"),
        input=Sum("input_tokens"),
        output=Sum("output_tokens"),
        cost=Sum("cost_usd"),
        errors=Count("pk", filter=Q(status_code__gte=400)),
    )


def _rollup_totals(model, **filters):
    return model.objects.filter(day__gte=OCT, day__lt=dt.date(2026, 11, 1), **filters).aggregate(
        requests=Sum("requests"),
        input=Sum("input_tokens"),
        output=Sum("output_tokens"),
        cost=Sum("cost_usd"),
        errors=Sum("errors"),
    )


def _october_raw():
    return UsageRecord.objects.filter(created_at__gte=OCT_START, created_at__lt=NOV_START)


@pytest.fixture
def october_usage():
    # 100,000 rows inside October, plus rows either side that must stay out of it.
    copy_usage(
        count=100_000,
        start=OCT_START,
        span=NOV_START - OCT_START,
        team_ids=TEAMS,
        seed=6,
        prefix="req_oct_",
    )
    copy_usage(
        count=500,
        start=OCT_START - dt.timedelta(hours=2),
        span=dt.timedelta(hours=2),
        team_ids=TEAMS,
        seed=7,
        prefix="req_sep_",
    )
    copy_usage(
        count=500,
        start=NOV_START,
        span=dt.timedelta(hours=2),
        team_ids=TEAMS,
        seed=8,
        prefix="req_nov_",
    )


def test_rollups_reconcile_and_reruns_pick_up_late_rows(october_usage):
    result = usage_rollup_month(month=OCT)
    raw = _totals(_october_raw())
    assert raw["requests"] == 100_000 == result.requests
    cube = _rollup_totals(UsageCubeDaily)
    # Each tag key's rows hold the month's usage once, whatever the values.
    per_key = [_rollup_totals(TagUsageDaily, tag_key=key) for key in rollup_tag_keys()]
    for rolled in (cube, *per_key):
        assert rolled["requests"] == raw["requests"]
        assert rolled["input"] == raw["input"]
        assert rolled["output"] == raw["output"]
        assert rolled["errors"] == raw["errors"]
        # Exact, so also equal to the cent.
        assert rolled["cost"] == raw["cost"]
        assert rolled["cost"].quantize(Decimal("0.01")) == raw["cost"].quantize(Decimal("0.01"))
    assert result.cost_usd == raw["cost"]

    # Per team and per customer tag (a dimension of the rollup) too.
    for team in TEAMS:
        team_raw = _totals(_october_raw().filter(team_id=team))
        team_rolled = _rollup_totals(UsageCubeDaily, team_id=team)
        assert (team_rolled["requests"], team_rolled["cost"]) == (
            team_raw["requests"],
            team_raw["cost"],
        )
    by_customer = dict(
        _october_raw()
        .annotate(customer=KeyTextTransform("customer_id", "tags"))
        .values("customer")
        .annotate(cost=Sum("cost_usd"))
        .values_list("customer", "cost")
    )
    for customer, cost in by_customer.items():
        rolled = _rollup_totals(TagUsageDaily, tag_key="customer_id", tag_value=customer or "")[
            "cost"
        ]
        assert rolled == cost, customer

    # One day alone matches its raw rows.
    day_raw = _totals(
        UsageRecord.objects.filter(
            created_at__gte=dt.datetime(2026, 10, 14, tzinfo=dt.UTC),
            created_at__lt=dt.datetime(2026, 10, 15, tzinfo=dt.UTC),
        )
    )
    day = _rollup_totals(UsageCubeDaily, day=dt.date(2026, 10, 14))
    assert (day["requests"], day["cost"]) == (day_raw["requests"], day_raw["cost"])

    # Spooled rows replayed after an outage: created on Oct 5, written now.
    copy_usage(
        count=2_000,
        start=dt.datetime(2026, 10, 5, tzinfo=dt.UTC),
        span=dt.timedelta(days=1),
        team_ids=TEAMS,
        seed=9,
        prefix="req_late_",
    )
    raw = _totals(_october_raw())
    assert _rollup_totals(UsageCubeDaily)["requests"] == raw["requests"] - 2_000

    # A day re-run fixes the day; the month command fixes the month.
    usage_rollup_day(day=dt.date(2026, 10, 5))
    day_raw = _totals(
        _october_raw()
        .filter(created_at__lt=dt.datetime(2026, 10, 6, tzinfo=dt.UTC))
        .filter(created_at__gte=dt.datetime(2026, 10, 5, tzinfo=dt.UTC))
    )
    day = _rollup_totals(UsageCubeDaily, day=dt.date(2026, 10, 5))
    assert (day["requests"], day["cost"]) == (day_raw["requests"], day_raw["cost"])

    # Re-running the month is idempotent: nothing doubles, the late rows count once.
    rows_before = UsageCubeDaily.objects.count()
    call_command("rollup", month="2026-10", stdout=io.StringIO())
    cube = _rollup_totals(UsageCubeDaily)
    customers = _rollup_totals(TagUsageDaily, tag_key="customer_id")
    for rolled in (cube, customers):
        assert rolled["requests"] == raw["requests"]
        assert rolled["input"] + rolled["output"] == raw["input"] + raw["output"]
        assert rolled["cost"] == raw["cost"]
    assert UsageCubeDaily.objects.count() >= rows_before
