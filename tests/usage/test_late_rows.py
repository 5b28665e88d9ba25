"""Rows that land after their day was rolled up are never missing from a bill.

A backlog written after an outage, a spool replay or a replayed dead letter can bring rows
for a day whose rollup already ran. The writer marks the day; until the next rollup run
re-rolls it, every reader takes that day's raw rows instead of the stale rollup.
"""

import datetime as dt
from decimal import Decimal

import pytest
import time_machine

from apps.dashboards import selectors
from apps.dashboards.filters import DashboardFilters
from apps.usage.buffer import MemoryBuffer
from apps.usage.coverage import covered_days
from apps.usage.models import UsageCubeDaily, UsageLateDay
from apps.usage.month_to_date import UsageSubject, month_to_date
from apps.usage.rollups import usage_rollup_month, usage_rollups_refresh
from apps.usage.scope import UsageScope
from apps.usage.writer import drain_all_sync
from tests.usage.helpers import make_event

pytestmark = [pytest.mark.embedded, pytest.mark.django_db(transaction=True)]

OCT = dt.date(2026, 10, 1)
DAY = dt.date(2026, 10, 10)
NOW = dt.datetime(2026, 10, 20, 12, 0, tzinfo=dt.UTC)


def _write(tmp_path, *events) -> None:
    buffer = MemoryBuffer(spool_dir=tmp_path)
    for event in events:
        buffer.put_nowait(event)
    drain_all_sync(buffer)


def _tokens(team_id: int) -> int:
    return month_to_date(subject=UsageSubject(team_id=team_id), month=OCT).tokens


def _dashboard_tokens() -> int:
    """The same month's tokens as the dashboards read them (day buckets, rollup-aware)."""
    filters = DashboardFilters(start=OCT, end=dt.date(2026, 10, 31))
    points = selectors.usage_points(scope=UsageScope(everything=True), filters=filters)
    return sum(point.tokens for point in points)


def test_a_late_row_counts_at_once_and_the_next_run_rolls_it_up(tmp_path, team):
    on_the_day = dt.datetime.combine(DAY, dt.time(12), tzinfo=dt.UTC)
    with time_machine.travel(NOW, tick=False):
        _write(tmp_path, make_event(team_id=team.pk, created_at=on_the_day, input_tokens=100))
        # Another rolled-up day in the month (150 tokens), which stays covered throughout.
        earlier = dt.datetime.combine(DAY - dt.timedelta(days=5), dt.time(12), tzinfo=dt.UTC)
        _write(tmp_path, make_event(team_id=team.pk, created_at=earlier))
        UsageLateDay.objects.all().delete()  # as if written on the days themselves
        usage_rollup_month(month=OCT)
        assert DAY in covered_days(UsageCubeDaily, OCT, NOW.date())
        # The rollup really is what answers: a tampered rollup row shows through.
        UsageCubeDaily.objects.filter(day=DAY).update(input_tokens=10_100)
        assert _tokens(team.pk) == 10_100 + 30 + 150
        assert _dashboard_tokens() == 10_100 + 30 + 150

        late = make_event(team_id=team.pk, created_at=on_the_day, input_tokens=7, output_tokens=0)
        _write(tmp_path, late)

        assert list(UsageLateDay.objects.values_list("day", flat=True)) == [DAY]
        assert DAY not in covered_days(UsageCubeDaily, OCT, NOW.date())
        # Read raw until re-rolled: the late row counts, the stale rollup does not; on the
        # dashboards too, which used to add the stale rollup rows to the raw ones.
        assert _tokens(team.pk) == 100 + 30 + 7 + 150
        assert _dashboard_tokens() == 100 + 30 + 7 + 150

        with time_machine.travel(NOW + dt.timedelta(minutes=5), tick=False):
            usage_rollups_refresh(recent_days=2)

        assert not UsageLateDay.objects.exists()
        assert DAY in covered_days(UsageCubeDaily, OCT, NOW.date())
        assert _tokens(team.pk) == 100 + 30 + 7 + 150
        assert _dashboard_tokens() == 100 + 30 + 7 + 150
        cube = UsageCubeDaily.objects.filter(day=DAY)
        assert sum(cube.values_list("requests", flat=True)) == 2
        assert sum(cube.values_list("cost_usd", flat=True)) == 2 * Decimal("0.0000360000")


def test_todays_rows_mark_nothing(tmp_path, team):
    with time_machine.travel(NOW, tick=False):
        _write(tmp_path, make_event(team_id=team.pk, created_at=NOW - dt.timedelta(hours=1)))
    assert not UsageLateDay.objects.exists()
