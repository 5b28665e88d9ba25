"""Dashboard rollups: the cube and the latency histograms answer as the raw rows would.

Each test computes the answer from raw rows first, rolls up, then deletes the rolled-up raw
rows, so whatever still answers for those days can only come from the rollups.
"""

import datetime as dt
from dataclasses import replace
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.utils import timezone

from apps.accounts.selectors import portal_identity
from apps.dashboards import selectors
from apps.dashboards.filters import DashboardFilters
from apps.dashboards.services import usage_generate
from apps.usage import histograms
from apps.usage.models import LatencyHistogramDaily, TagUsageDaily, UsageCubeDaily, UsageRecord
from apps.usage.rollup_tables import rollup_days
from apps.usage.rollups import usage_rollup_day
from apps.usage.scope import UsageScope, usage_scope_for
from tests import factories

from .conftest import DAY1, DAY2, at, usage

pytestmark = [pytest.mark.embedded, pytest.mark.django_db]

EVERYTHING = UsageScope(everything=True)
DAYS = 6
BREAKDOWNS = [None, "team", "user", "virtual_account", "model", "provider", "error_type"]


def _today() -> dt.date:
    return timezone.now().astimezone(dt.UTC).date()


@pytest.fixture
def history(team, user, virtual_account, other_team):
    factories.make_key(user=user)
    bob = factories.make_user("bob", team=other_team)
    factories.make_key(user=bob)
    usage_generate(rows=3000, days=DAYS, seed=5)
    today = _today()
    return DashboardFilters(start=today - dt.timedelta(days=DAYS), end=today)


def _drop_rolled_up_raw_rows() -> None:
    start_of_today = dt.datetime.combine(_today(), dt.time.min, tzinfo=dt.UTC)
    deleted, _ = UsageRecord.objects.filter(created_at__lt=start_of_today).delete()
    assert deleted > 0


def _usage_rows(points):
    return [
        (p.bucket, p.group, p.requests, p.errors, p.input_tokens, p.output_tokens) for p in points
    ]


def test_the_cube_answers_every_column_breakdown_like_raw_rows(history):
    expected = {
        dimension: selectors.usage_points(
            scope=EVERYTHING, filters=history, dimension=dimension, bucket="day", use_rollups=False
        )
        for dimension in BREAKDOWNS
    }
    result = rollup_days(start=history.start, end=_today())
    assert result.cube_rows == UsageCubeDaily.objects.count() > 0
    _drop_rolled_up_raw_rows()
    for dimension in BREAKDOWNS:
        got = selectors.usage_points(
            scope=EVERYTHING, filters=history, dimension=dimension, bucket="day"
        )
        assert _usage_rows(got) == _usage_rows(expected[dimension]), dimension
        for a, b in zip(got, expected[dimension], strict=True):
            assert abs(a.cost_usd - b.cost_usd) <= Decimal("1e-8")
    assert selectors.model_names(scope=EVERYTHING, filters=history) == sorted(
        {p.group for p in expected["model"]}
    )


def test_the_tag_rollup_answers_tag_breakdowns_and_one_tag_filter(history):
    search = replace(history, tags=(("feature", "search"),))
    reads = [
        {"filters": history, "dimension": "tag:feature", "bucket": "day"},
        {"filters": history, "dimension": "tag:customer_id"},
        {"filters": search, "bucket": "day"},
        {"filters": search, "dimension": "user"},
        {"filters": replace(search, team_id=history_team_id()), "dimension": "virtual_account"},
    ]
    expected = [selectors.usage_points(scope=EVERYTHING, use_rollups=False, **r) for r in reads]
    rollup_days(start=history.start, end=_today())
    assert TagUsageDaily.objects.filter(tag_key="feature").exists()
    _drop_rolled_up_raw_rows()
    for read, want in zip(reads, expected, strict=True):
        got = selectors.usage_points(scope=EVERYTHING, **read)
        assert _usage_rows(got) == _usage_rows(want), read
        for a, b in zip(got, want, strict=True):
            assert abs(a.cost_usd - b.cost_usd) <= Decimal("1e-8")


def history_team_id() -> int:
    return UsageRecord.objects.values_list("team_id", flat=True).first()


@pytest.mark.parametrize(
    ("dimension", "bucket", "tag"),
    [
        (None, None, None),
        ("model", "day", None),
        ("provider", None, None),
        ("team", "day", None),
        (None, "day", ("feature", "search")),
        ("team", None, ("environment", "prod")),
    ],
)
def test_histogram_percentiles_are_within_the_relative_error(history, dimension, bucket, tag):
    filters = replace(history, tags=(tag,)) if tag else history
    exact = selectors.percentile_points(
        scope=EVERYTHING, filters=filters, dimension=dimension, bucket=bucket
    )
    assert exact
    rollup_days(start=history.start, end=_today())
    _drop_rolled_up_raw_rows()
    estimated = selectors.percentile_points(
        scope=EVERYTHING, filters=filters, dimension=dimension, bucket=bucket
    )
    assert [(p.bucket, p.group, p.requests, p.streams) for p in estimated] == [
        (p.bucket, p.group, p.requests, p.streams) for p in exact
    ]
    tolerance = histograms.RELATIVE_ERROR
    for e, x in zip(estimated, exact, strict=True):
        for name in ("p50_ms", "p90_ms", "p99_ms", "ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms"):
            want, got = getattr(x, name), getattr(e, name)
            assert (want is None) == (got is None), name
            if want is not None:
                assert abs(got - want) <= tolerance * want, (name, got, want)


@pytest.mark.parametrize(
    ("username", "successes"),
    [
        ("alice", 4),  # developer: own rows only
        ("tina", 6),  # team admin: Frontend (5) plus her own row in Backend
        ("bob", 1),  # developer in Backend: not tina's Backend row
        ("fiona", 7),  # finance: everything
    ],
)
def test_histogram_percentiles_keep_each_roles_scope(world, username, successes):
    # tina's own request billed to Backend, a team she does not administer.
    usage(
        created_at=at(DAY1, 14),
        team_id=world["backend"].pk,
        user_id=world["tina"].pk,
        latency_ms=700,
    )
    three_days = DashboardFilters(start=DAY1, end=DAY2 + dt.timedelta(days=1))
    scope = usage_scope_for(portal_identity(user=world[username]))
    [exact] = selectors.percentile_points(scope=scope, filters=three_days)
    rollup_days(start=DAY1, end=DAY2 + dt.timedelta(days=1))
    assert LatencyHistogramDaily.objects.exists()
    # Raw rows stay: a developer's percentiles come from them (histograms are per team), and a
    # team admin's are their teams' histograms plus their own raw rows elsewhere, once each.
    [estimated] = selectors.percentile_points(scope=scope, filters=three_days)
    assert exact.requests == estimated.requests == successes
    assert estimated.p50_ms == pytest.approx(exact.p50_ms, rel=histograms.RELATIVE_ERROR)
    assert estimated.p99_ms == pytest.approx(exact.p99_ms, rel=histograms.RELATIVE_ERROR)


def test_reruns_replace_a_day_and_pick_up_late_rows(world):
    first = usage_rollup_day(day=DAY1)
    again = usage_rollup_day(day=DAY1)
    assert (
        (first.cube_rows, first.histogram_rows, first.requests)
        == (
            again.cube_rows,
            again.histogram_rows,
            again.requests,
        )
        == (UsageCubeDaily.objects.count(), LatencyHistogramDaily.objects.count(), 5)
    )
    usage(created_at=at(DAY1, 23, 59), team_id=world["frontend"].pk, latency_ms=250)
    assert usage_rollup_day(day=DAY1).requests == 6
    assert sum(UsageCubeDaily.objects.values_list("requests", flat=True)) == 6
    per_team = LatencyHistogramDaily.objects.filter(all_teams=False)
    assert sum(per_team.values_list("requests", flat=True)) == 5
    org_wide = LatencyHistogramDaily.objects.filter(all_teams=True, team_id__isnull=True)
    assert sum(org_wide.values_list("requests", flat=True)) == 5


def test_hourly_charts_stay_exact_over_rolled_up_days(world):
    rollup_days(start=DAY1, end=DAY2 + dt.timedelta(days=1))
    two_days = DashboardFilters(start=DAY1, end=DAY2)
    hours = selectors.percentile_points(scope=EVERYTHING, filters=two_days, bucket="hour")
    assert [(p.bucket, p.p50_ms) for p in hours if p.bucket.date() == DAY2] == [
        (at(DAY2, 8), 1000),
        (at(DAY2, 9), 50),
    ]


def test_command_rolls_up_past_days(world, capsys):
    call_command("rollup", day=DAY1.isoformat())
    assert "5 requests" in capsys.readouterr().out
    assert set(UsageCubeDaily.objects.values_list("day", flat=True)) == {DAY1}
