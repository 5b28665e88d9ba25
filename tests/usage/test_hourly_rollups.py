"""Today from hourly rollups: the scheduled run rolls each finished hour of today once and
the current hour up to the settle margin before it, the dashboards and month-to-date read
those spans from the hourly tables and only the rest (the last minutes, a late hour) from
raw rows, and a late row re-rolls its hour alone."""

import datetime as dt
from decimal import Decimal

import pytest
import time_machine

from apps.dashboards import selectors
from apps.dashboards.filters import DashboardFilters
from apps.usage.buffer import MemoryBuffer
from apps.usage.coverage import covered_hours, hour_runs
from apps.usage.models import (
    LatencyHistogramHourly,
    TagUsageHourly,
    UsageCubeHourly,
    UsageLateHour,
)
from apps.usage.month_to_date import UsageSubject, month_to_date, month_to_date_rows
from apps.usage.rollups import usage_rollups_refresh
from apps.usage.scope import UsageScope
from apps.usage.writer import drain_all_sync
from tests.dashboards.conftest import usage
from tests.usage.helpers import make_event

pytestmark = [pytest.mark.embedded, pytest.mark.django_db(transaction=True)]

TODAY = dt.date(2026, 10, 14)
NOW = dt.datetime(2026, 10, 14, 15, 30, tzinfo=dt.UTC)
EVERYTHING = UsageScope(everything=True)
# A 30-day range ending today: day buckets, so the rollups answer.
RANGE = DashboardFilters(start=TODAY - dt.timedelta(days=29), end=TODAY)


def at(hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(TODAY, dt.time(hour, minute), tzinfo=dt.UTC)


@pytest.fixture
def today_rows(team):
    # At 15:30, with the 120 s settle margin, a run rolls 09:xx and 14:xx whole and 15:xx up
    # to 15:28; the 15:29 row is in the last minutes, read raw.
    for when, tokens, latency in ((at(9, 10), 100, 120.0), (at(14, 50), 20, 80.0),
                                  (at(15, 5), 3, 40.0), (at(15, 29), 4, 30.0)):  # fmt: skip
        usage(
            created_at=when,
            team_id=team.pk,
            input_tokens=tokens,
            cost_usd=Decimal("0.01"),
            latency_ms=latency,
            tags={"customer_id": "acme"},
        )


def _dashboard_tokens() -> int:
    [point] = selectors.usage_points(scope=EVERYTHING, filters=RANGE)
    return point.input_tokens


def test_the_run_rolls_each_settled_hour_once(today_rows):
    with time_machine.travel(NOW, tick=False):
        run = usage_rollups_refresh(recent_days=2)
        assert run.hours == [f"{hour:02d}:00" for hour in range(16)]
        assert set(UsageCubeHourly.objects.values_list("hour", flat=True)) == {
            at(9),
            at(14),
            at(15),
        }
        # Every rolled hour counts as covered, those without usage too; 15:xx up to 15:28.
        assert covered_hours(TODAY) == {
            **{at(hour): at(hour) + dt.timedelta(hours=1) for hour in range(15)},
            at(15): at(15, 28),
        }
        assert sum(TagUsageHourly.objects.filter(tag_key="customer_id", tag_value="acme")
                   .values_list("input_tokens", flat=True)) == 123  # fmt: skip
        assert LatencyHistogramHourly.objects.filter(all_teams=True).count() == 3

        # Incremental: at the same moment there is nothing further to roll.
        assert usage_rollups_refresh(recent_days=2).hours == []
    with time_machine.travel(NOW + dt.timedelta(minutes=5), tick=False):
        # Five minutes on, only the current hour is rolled again, now up to 15:33.
        assert usage_rollups_refresh(recent_days=2).hours == ["15:00"]
        assert covered_hours(TODAY)[at(15)] == at(15, 33)


def test_readers_take_settled_hours_from_the_hourly_rows(today_rows, team):
    with time_machine.travel(NOW, tick=False):
        usage_rollups_refresh(recent_days=2)
        assert _dashboard_tokens() == 127
        # The hourly rows really are what answers: a tampered one shows through, while the
        # last minutes (the 15:29 row, 4 tokens) still come from their raw row.
        UsageCubeHourly.objects.filter(hour=at(9)).update(input_tokens=1_000)
        TagUsageHourly.objects.filter(hour=at(9)).update(input_tokens=1_000)
        expected = 1_000 + 20 + 3 + 4
        assert _dashboard_tokens() == expected
        subject = UsageSubject(team_id=team.pk)
        assert month_to_date(subject=subject).input_tokens == expected
        customer = UsageSubject(tags=(("customer_id", "acme"),))
        assert month_to_date(subject=customer).input_tokens == expected
        by_customer = month_to_date_rows(by_day=False, tag_key="customer_id")
        assert sum(row.input_tokens for row in by_customer) == expected
        [pct] = selectors.percentile_points(scope=EVERYTHING, filters=RANGE)
        assert pct.requests == 4


def test_a_late_row_re_rolls_its_hour_alone(tmp_path, today_rows, team):
    with time_machine.travel(NOW, tick=False):
        usage_rollups_refresh(recent_days=2)
        computed = dict(UsageCubeHourly.objects.values_list("hour", "computed_at"))

        # A long stream that began at 09:40 is written now, after 09:00 was rolled.
        late = make_event(team_id=team.pk, created_at=at(9, 40), input_tokens=7, output_tokens=0)
        buffer = MemoryBuffer(spool_dir=tmp_path)
        buffer.put_nowait(late)
        drain_all_sync(buffer)
        assert list(UsageLateHour.objects.values_list("hour", flat=True)) == [at(9)]
        # Read raw until re-rolled: the late row counts at once.
        assert at(9) not in covered_hours(TODAY)
        assert _dashboard_tokens() == 134

    with time_machine.travel(NOW + dt.timedelta(minutes=5), tick=False):
        run = usage_rollups_refresh(recent_days=2)
        # The late hour alone, and the current hour, which every run carries forward.
        assert run.hours == ["09:00", "15:00"]
        assert not UsageLateHour.objects.exists()
        assert _dashboard_tokens() == 134
        again = dict(UsageCubeHourly.objects.values_list("hour", "computed_at"))
        assert again[at(14)] == computed[at(14)] and again[at(9)] > computed[at(9)]


def test_the_next_day_drops_yesterdays_hourly_rows(today_rows):
    with time_machine.travel(NOW, tick=False):
        usage_rollups_refresh(recent_days=2)
    with time_machine.travel(NOW + dt.timedelta(days=1), tick=False):
        usage_rollups_refresh(recent_days=2)
        assert not UsageCubeHourly.objects.filter(day=TODAY).exists()
        # Yesterday is now read from its daily rows (or raw), whole.
        range_ = DashboardFilters(start=TODAY - dt.timedelta(days=1), end=TODAY)
        [point] = selectors.usage_points(scope=EVERYTHING, filters=range_)
        assert point.input_tokens == 127


def test_hour_runs_are_the_day_outside_the_held_spans():
    held = {at(9): at(10), at(10): at(11), at(14): at(14, 30)}
    assert hour_runs(TODAY, held) == [
        (at(0), at(9)),
        (at(11), at(14)),
        (at(14, 30), at(0) + dt.timedelta(days=1)),
    ]
    assert hour_runs(TODAY, {}) == [(at(0), at(0) + dt.timedelta(days=1))]
