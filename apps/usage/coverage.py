"""When a rollup may stand in for raw rows: the one coverage rule every reader applies.

A UTC day's rollup rows answer for that day only when they were computed at least
`BILLING_EXPORT_SETTLE_SECONDS` after the day ended (a run replaces a day's rows in one
transaction from one GROUP BY, so it holds every usage row committed by then, and the margin
lets the writer's last rows of the day land first), and no row of the day has landed since
(`UsageLateDay`, marked by the writer, cleared by the next rollup run). A day rolled up while
still open, not at all, or with late rows waiting is read from the raw rows. Every reader of
sums goes through `apps.usage.query` (the usage API, the chargeback, the dashboards,
statements, insights and quota seeding through `month_to_date`), and dashboard percentiles
use the same rule, so no two surfaces can disagree about which days a rollup covers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping

from django.conf import settings
from django.db.models import Min, Model

from .grouping import day_bounds, day_runs


def day_is_final(day: dt.date, computed_at: dt.datetime) -> bool:
    """Whether a rollup of `day` computed at `computed_at` holds all of that day's rows (a
    day with late rows waiting is left out by the caller)."""
    settle = dt.timedelta(seconds=settings.BILLING_EXPORT_SETTLE_SECONDS)
    _, end = day_bounds(day, day + dt.timedelta(days=1))
    return computed_at >= end + settle


def covered_days(rollup: type[Model], start: dt.date, end: dt.date) -> set[dt.date]:
    """Days in [start, end) that `rollup` (a table with `day` and `computed_at`) answers for."""
    from .models import UsageLateDay

    if start >= end:
        return set()
    # Late days left out in the same query: every read asks this, one round trip.
    late = UsageLateDay.objects.filter(day__gte=start, day__lt=end).values("day")
    runs = (
        rollup.objects.filter(day__gte=start, day__lt=end)
        .exclude(day__in=late)
        .order_by()
        .values("day")
        .annotate(computed=Min("computed_at"))
        .values_list("day", "computed")
    )
    return {day for day, computed in runs if day_is_final(day, computed)}


def covered_hours(day: dt.date) -> dict[dt.datetime, dt.datetime]:
    """Hours of `day` the hourly rollup tables answer for, as {hour start: until}: the rows
    of [hour, until) (`UsageRolledHour`), unless the hour was marked late since
    (`UsageLateHour`). A rollup reads rows created before its run less the settle margin,
    so a row landing later for that span is late and marks its hour (the writer)."""
    from .models import UsageLateHour, UsageRolledHour

    low, high = day_bounds(day, day + dt.timedelta(days=1))
    late = UsageLateHour.objects.filter(hour__gte=low, hour__lt=high).values("hour")
    rolled = (
        UsageRolledHour.objects.filter(hour__gte=low, hour__lt=high)
        .exclude(hour__in=late)
        .values_list("hour", "until")
    )
    return {hour: until for hour, until in rolled if until > hour}


def uncovered(
    low: dt.datetime, high: dt.datetime, held: Iterable[tuple[dt.datetime, dt.datetime]]
) -> list[tuple[dt.datetime, dt.datetime]]:
    """The parts of [low, high) outside the `held` spans, as sorted half-open ranges: raw
    rows are then read by index ranges, never by a scan that excludes the rest."""
    ranges: list[tuple[dt.datetime, dt.datetime]] = []
    start = low
    for span_start, span_end in sorted(held):
        if span_start > start:
            ranges.append((start, min(span_start, high)))
        start = max(start, span_end)
    if start < high:
        ranges.append((start, high))
    return [(a, b) for a, b in ranges if a < b]


def held_ranges(
    days: Iterable[dt.date], hours: Mapping[dt.datetime, dt.datetime] | None = None
) -> list[tuple[dt.datetime, dt.datetime]]:
    """Covered days (as runs of whole UTC days) and covered hourly spans ({hour: until}) as
    half-open datetime ranges: what `uncovered` leaves out."""
    return [*(day_bounds(a, b) for a, b in day_runs(days)), *(hours or {}).items()]


def hour_runs(
    day: dt.date, held: Mapping[dt.datetime, dt.datetime]
) -> list[tuple[dt.datetime, dt.datetime]]:
    """The parts of `day` outside the held spans ({hour start: until}), as half-open
    datetime ranges."""
    low, high = day_bounds(day, day + dt.timedelta(days=1))
    return uncovered(low, high, held.items())
