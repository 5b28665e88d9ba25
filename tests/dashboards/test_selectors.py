"""Selector numbers against values computed by hand from the fixed data set (conftest)."""

import datetime as dt
from decimal import Decimal

import pytest

from apps.accounts.selectors import portal_identity
from apps.dashboards import selectors
from apps.dashboards.filters import DashboardFilters
from apps.usage.coverage import held_ranges
from apps.usage.models import UsageRecord
from apps.usage.rollups import usage_rollup_day
from apps.usage.scope import UsageScope, usage_scope_for

from .conftest import DAY1, DAY2, EVIL, at

pytestmark = [pytest.mark.embedded, pytest.mark.django_db]

EVERYTHING = UsageScope(everything=True)
RANGE = DashboardFilters(start=DAY1, end=DAY2)


def total(points):
    return selectors.totals_by_group(points)[0]


def test_totals_and_daily_buckets(world):
    overall = total(selectors.usage_points(scope=EVERYTHING, filters=RANGE))
    assert (overall.requests, overall.errors) == (8, 2)
    assert (overall.input_tokens, overall.output_tokens, overall.tokens) == (2010, 1010, 3020)
    assert overall.cost_usd == Decimal("0.52")

    days = selectors.usage_points(scope=EVERYTHING, filters=RANGE, bucket="day")
    assert [(p.bucket.date(), p.requests, p.errors, p.tokens, p.cost_usd) for p in days] == [
        (DAY1, 5, 1, 1500, Decimal("0.01")),
        (DAY2, 3, 1, 1520, Decimal("0.51")),
    ]


def test_hourly_buckets_for_a_short_range(world):
    one_day = DashboardFilters(start=DAY2, end=DAY2)
    assert one_day.granularity == "hour"
    hours = selectors.usage_points(scope=EVERYTHING, filters=one_day, bucket="hour")
    assert [(p.bucket, p.requests) for p in hours] == [
        (at(DAY2, 8), 1),
        (at(DAY2, 9), 1),
        (at(DAY2, 10), 1),
    ]


def test_group_by_model_and_tag(world):
    by_model = {
        p.group: p
        for p in selectors.usage_points(scope=EVERYTHING, filters=RANGE, dimension="model")
    }
    assert (by_model["gpt-a"].requests, by_model["gpt-a"].errors) == (6, 1)
    assert by_model["gpt-a"].cost_usd == Decimal("0.51")
    assert (by_model["claude-b"].requests, by_model["claude-b"].errors) == (2, 1)

    by_feature = {
        p.group: (p.requests, p.cost_usd)
        for p in selectors.usage_points(scope=EVERYTHING, filters=RANGE, dimension="tag:feature")
    }
    assert by_feature == {
        "search": (4, Decimal("0.503")),
        EVIL: (1, Decimal("0.003")),
        "chat": (2, Decimal("0.014")),
        "": (1, Decimal("0")),
    }


def test_tag_and_team_filters(world):
    search = DashboardFilters(start=DAY1, end=DAY2, tags=(("feature", "search"),))
    assert total(selectors.usage_points(scope=EVERYTHING, filters=search)).requests == 4
    backend = DashboardFilters(start=DAY1, end=DAY2, team_id=world["backend"].pk)
    assert total(selectors.usage_points(scope=EVERYTHING, filters=backend)).requests == 2
    model = DashboardFilters(start=DAY1, end=DAY2, model="claude-b")
    assert total(selectors.usage_points(scope=EVERYTHING, filters=model)).requests == 2


def test_percentiles_are_interpolated_like_percentile_cont(world):
    # Successful latencies: 50, 100, 200, 300, 400, 1000; stream TTFTs: 20, 40.
    [point] = selectors.percentile_points(scope=EVERYTHING, filters=RANGE)
    assert point.requests == 6
    assert point.p50_ms == pytest.approx(250)
    assert point.p90_ms == pytest.approx(700)
    assert point.p99_ms == pytest.approx(970)
    assert point.streams == 2
    assert (point.ttft_p50_ms, point.ttft_p90_ms, point.ttft_p99_ms) == pytest.approx(
        (30, 38, 39.8)
    )
    by_model = {
        p.group: p
        for p in selectors.percentile_points(scope=EVERYTHING, filters=RANGE, dimension="model")
    }
    # gpt-a: 50, 100, 200, 300, 400 -> P90 at rank 3.6.
    assert by_model["gpt-a"].p90_ms == pytest.approx(360)
    assert by_model["claude-b"].p50_ms == pytest.approx(1000)
    assert by_model["claude-b"].ttft_p50_ms is None


def test_top_n_folds_the_rest_into_other(world):
    points = selectors.usage_points(scope=EVERYTHING, filters=RANGE, dimension="tag:feature")
    keep = selectors.top_groups(points, n=1)
    assert keep == ["search"]
    folded = {p.group: p.requests for p in selectors.fold_other(points, keep=keep)}
    assert folded == {"search": 4, selectors.OTHER: 4}


@pytest.mark.parametrize(
    ("username", "requests", "successes", "cost"),
    [
        ("alice", 5, 4, Decimal("0.010")),  # developer: own rows only
        ("tina", 6, 5, Decimal("0.020")),  # team admin: Frontend
        ("bob", 2, 1, Decimal("0.5")),  # developer in Backend
        ("fiona", 8, 6, Decimal("0.52")),  # finance: everything
    ],
)
def test_scope_by_role(world, username, requests, successes, cost):
    scope = usage_scope_for(portal_identity(user=world[username]))
    point = total(selectors.usage_points(scope=scope, filters=RANGE))
    assert (point.requests, point.cost_usd) == (requests, cost)
    [pct] = selectors.percentile_points(scope=scope, filters=RANGE)
    assert pct.requests == successes


def test_daily_rollups_serve_whole_past_days(world):
    usage_rollup_day(day=DAY1)
    # Drop DAY1's raw rows: whatever still counts for DAY1 must come from the rollups.
    UsageRecord.objects.filter(created_at__lt=at(DAY2, 0)).delete()
    # Column breakdowns: the dashboards' cube.
    days = selectors.usage_points(scope=EVERYTHING, filters=RANGE, bucket="day", dimension="model")
    assert [(p.bucket.date(), p.group, p.requests, p.cost_usd) for p in days] == [
        (DAY1, "gpt-a", 5, Decimal("0.01")),
        (DAY2, "claude-b", 2, Decimal("0.01")),
        (DAY2, "gpt-a", 1, Decimal("0.5")),
    ]
    by_error = {
        p.group: p.errors
        for p in selectors.usage_points(scope=EVERYTHING, filters=RANGE, dimension="error_type")
    }
    assert by_error == {"": 0, "rate_limit_error": 1, "upstream_error": 1}
    by_provider = selectors.usage_points(scope=EVERYTHING, filters=RANGE, dimension="provider")
    assert {p.group: p.requests for p in by_provider} == {"openai": 6, "anthropic": 2}
    # Tag breakdowns: the per-tag-key rollup.
    alice = usage_scope_for(portal_identity(user=world["alice"]))
    by_customer = {
        p.group: p.requests
        for p in selectors.usage_points(scope=alice, filters=RANGE, dimension="tag:customer_id")
    }
    assert by_customer == {"c1": 2, "c2": 1, "": 2}
    # A tag key that is not rolled up: only the raw rows (DAY2) remain.
    unrolled = DashboardFilters(start=DAY1, end=DAY2, tags=(("team_note", "x"),))
    assert selectors.usage_points(scope=EVERYTHING, filters=unrolled) == [
        selectors.UsagePoint(None, "", 0, 0, 0, 0, Decimal(0))
    ]


def test_raw_rows_only_for_days_the_rollup_lacks(world):
    assert held_ranges([DAY1, DAY1 + dt.timedelta(days=1), DAY1 + dt.timedelta(days=3)]) == [
        (at(DAY1, 0), at(DAY1 + dt.timedelta(days=2), 0)),
        (at(DAY1 + dt.timedelta(days=3), 0), at(DAY1 + dt.timedelta(days=4), 0)),
    ]
