"""Which usage rows a read sees: the caller's scope, the filters (as the query layer's
`apps.usage.query.UsageFilter`), and the rollup coverage.

Shared by every dashboard selector so charts, tables and CSV exports filter identically.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping

from django.db.models import Model, QuerySet
from django.utils import timezone

from apps.usage.coverage import covered_days, covered_hours, uncovered
from apps.usage.grouping import day_bounds, utc_today
from apps.usage.grouping import day_runs as grouping_day_runs
from apps.usage.models import UsageRecord
from apps.usage.query import UsageFilter, narrowed, raw_rows
from apps.usage.scope import UsageScope

from ..filters import DashboardFilters


def usage_filter(filters: DashboardFilters) -> UsageFilter:
    """The dashboard filters as the query layer's row filter."""
    low, high = filters.bounds
    return UsageFilter(
        start=low,
        end=high,
        team_ids=() if filters.team_id is None else (filters.team_id,),
        models=(filters.model,) if filters.model else (),
        tags=filters.tags,
    )


def filtered(
    qs: QuerySet, *, scope: UsageScope, filters: DashboardFilters, tags_field: str | None
) -> QuerySet:
    """`qs` narrowed to the scope and the team, model and tag filters.

    `tags_field` names the JSON column holding tag values ("tags" on raw rows); None for a
    rollup table, which must not be asked for tag filters.
    """
    return narrowed(qs, scope=scope, where=usage_filter(filters), tags_field=tags_field)


def raw_usage(
    *,
    scope: UsageScope,
    filters: DashboardFilters,
    ranges: Iterable[tuple[dt.datetime, dt.datetime]] | None = None,
) -> QuerySet[UsageRecord]:
    """Usage rows inside the scope and filters; `ranges` replaces the filters' date range."""
    return raw_rows(scope=scope, where=usage_filter(filters), ranges=ranges)


def day_runs(days: Iterable[dt.date]) -> list[tuple[dt.datetime, dt.datetime]]:
    """Contiguous runs of days as half-open UTC datetime ranges."""
    return [day_bounds(start, end) for start, end in grouping_day_runs(days)]


def last_rollup_day(filters: DashboardFilters) -> dt.date:
    """End (exclusive) of the days a rollup may serve: never today, which is still written."""
    return min(filters.bounds[1].date(), timezone.now().astimezone(dt.UTC).date())


def rolled_up_days(rollup: type[Model], start: dt.date, end: dt.date) -> set[dt.date]:
    """Days in [start, end) that `rollup` answers for, by the one coverage rule."""
    return covered_days(rollup, start, end)


def todays_hours(filters: DashboardFilters) -> dict[dt.datetime, dt.datetime]:
    """The spans of today the hourly rollups answer for ({hour start: until}); none when the
    filters do not reach today."""
    today = utc_today()
    if not filters.start <= today < filters.start + dt.timedelta(days=filters.days):
        return {}
    return covered_hours(today)


def uncovered_ranges(
    filters: DashboardFilters,
    covered: set[dt.date],
    hours: Mapping[dt.datetime, dt.datetime] | None = None,
) -> list[tuple[dt.datetime, dt.datetime]]:
    """The filters' range less the days a rollup holds and today's spans the hourly rollups
    hold (`todays_hours`), as datetime ranges for the raw rows."""
    low, high = filters.bounds
    held = [*day_runs(covered), *(hours or {}).items()]
    return uncovered(low, high, held)
