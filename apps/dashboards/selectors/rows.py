"""Which usage rows a read sees: the caller's scope, the filters, and the rollup coverage.

Shared by every dashboard selector so charts, tables and CSV exports filter identically.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping

from django.db.models import Model, Q, QuerySet
from django.utils import timezone

from apps.usage.coverage import covered_days, covered_hours, uncovered
from apps.usage.grouping import day_bounds, utc_today
from apps.usage.grouping import day_runs as grouping_day_runs
from apps.usage.models import UsageRecord
from apps.usage.scope import UsageScope
from apps.usage.tags import tag_equals

from ..filters import DashboardFilters


def filtered(
    qs: QuerySet, *, scope: UsageScope, filters: DashboardFilters, tags_field: str | None
) -> QuerySet:
    """`qs` narrowed to the scope and the team, model and tag filters.

    `tags_field` names the JSON column holding tag values ("tags" on raw rows); None for a
    rollup table, which must not be asked for tag filters.
    """
    qs = scope.filter(qs)
    if filters.team_id is not None:
        qs = qs.filter(team_id=filters.team_id)
    if filters.model:
        qs = qs.filter(model=filters.model)
    if filters.tags and tags_field is None:
        raise ValueError("tag filters need a table with tags")
    for key, value in filters.tags:
        qs = qs.filter(tag_equals(key, value, tags_field))
    return qs


def raw_usage(
    *,
    scope: UsageScope,
    filters: DashboardFilters,
    ranges: Iterable[tuple[dt.datetime, dt.datetime]] | None = None,
) -> QuerySet[UsageRecord]:
    """Usage rows inside the scope and filters; `ranges` replaces the filters' date range."""
    if ranges is None:
        ranges = [filters.bounds]
    time_q = Q(pk__in=[])
    for low, high in ranges:
        time_q |= Q(created_at__gte=low, created_at__lt=high)
    qs = UsageRecord.objects.order_by().filter(time_q)
    return filtered(qs, scope=scope, filters=filters, tags_field="tags")


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
