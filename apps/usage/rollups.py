"""The one scheduled rollup run over the one set of rollup tables (`apps.usage.rollup_tables`).

Statements, insights, quota seeding and the dashboards read those tables under one coverage
rule (`apps.usage.coverage`), so after a run every reader sees the same periods rolled up.
A run is incremental:
- days: only the complete days of this month and of the last `recent_days` whose rollup is
  missing or was computed before the day settled, and the days marked late;
- today's hours: each hour up to the settle margin before the run, so a finished hour is
  rolled once after it settles (again only if a late row marks it), and the current hour
  is carried forward by each run;
then it refreshes the statements of the months it touched and drops the hourly rows of past
days. Rolling a period replaces its rows, so overlapping runs and re-runs after an outage
are safe and pick up rows that arrived late (spool replays). Only the last minutes are read
raw.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from .coverage import covered_days, covered_hours
from .grouping import consecutive_runs, day_runs, month_start, next_month, utc_midnight, utc_today
from .models import UsageCubeDaily, UsageLateDay, UsageLateHour
from .retention import raw_cutoff
from .rollup_tables import HOUR, RollupResult, hourly_prune, rollup_days, rollup_hours

logger = logging.getLogger(__name__)

# Spooled rows replayed after an outage land a few days late at most; re-roll the previous
# month during this many first days of a month so its statements pick them up.
PREVIOUS_MONTH_DAYS = 3


@dataclass(frozen=True)
class RollupRun:
    months: list[str]
    days: list[str]
    hours: list[str]
    requests: int


def _late_days(today: dt.date) -> list[dt.date]:
    """Past days marked late, less those past the raw retention: their raw rows may be gone,
    and a re-roll would replace their rollups with the few late rows left."""
    late = sorted(UsageLateDay.objects.filter(day__lt=today).values_list("day", flat=True))
    expired = raw_cutoff(today)
    stale = [day for day in late if expired is not None and day < expired]
    if stale:
        logger.warning("usage rollups: late rows for %d day(s) past retention ignored", len(stale))
        UsageLateDay.objects.filter(day__in=stale).delete()
    return late[len(stale) :]


def _hours_to_roll(now: dt.datetime, today: dt.date) -> tuple[list[dt.datetime], dt.datetime]:
    """Today's hours whose rollup does not reach as far as it can yet (the whole hour once
    it has settled, else the settle margin before now), and that cutoff."""
    settle = dt.timedelta(seconds=settings.BILLING_EXPORT_SETTLE_SECONDS)
    cutoff = (now - settle).replace(second=0, microsecond=0)
    held = covered_hours(today)
    midnight = utc_midnight(today)
    hours = [midnight + dt.timedelta(hours=n) for n in range(24)]
    todo = [h for h in hours if h < cutoff and held.get(h, h) < min(h + HOUR, cutoff)]
    return todo, cutoff


def usage_rollups_refresh(*, recent_days: int, today: dt.date | None = None) -> RollupRun:
    """Roll up every day and hour of today that is not final yet (see the module docstring),
    clear the late marks this run covered and refresh the statements of every month it
    touched."""
    from apps.billing.services.statements import statements_compute

    started = timezone.now()
    today = today or utc_today()
    first = min(month_start(today), today - dt.timedelta(days=recent_days))
    if today.day <= PREVIOUS_MONTH_DAYS:
        first = min(first, month_start(today - dt.timedelta(days=PREVIOUS_MONTH_DAYS)))
    final = covered_days(UsageCubeDaily, first, today)
    late = _late_days(today)
    window = [first + dt.timedelta(days=n) for n in range((today - first).days)]
    days = sorted({day for day in window if day not in final} | set(late))
    requests = 0
    for start, end in day_runs(days):
        requests += rollup_days(start=start, end=end).requests
    hours, cutoff = _hours_to_roll(started, today)
    for start, end in consecutive_runs(hours, HOUR):
        requests += rollup_hours(start=start, end=end, until=cutoff).requests
    hourly_prune(before=today)
    months = sorted({month_start(today)} | {month_start(day) for day in days})
    for month in months:
        statements_compute(month=month)
    # Only marks older than this run: rows marked meanwhile may have missed its reads.
    UsageLateDay.objects.filter(day__in=late, marked_at__lt=started).delete()
    UsageLateHour.objects.filter(hour__in=hours, marked_at__lt=started).delete()
    return RollupRun(
        months=[f"{month:%Y-%m}" for month in months],
        days=[day.isoformat() for day in days],
        hours=[f"{hour:%H:%M}" for hour in hours],
        requests=requests,
    )


def usage_rollup_day(*, day: dt.date) -> RollupResult:
    """Recompute one UTC day (idempotent)."""
    return rollup_days(start=day, end=day + dt.timedelta(days=1))


def usage_rollup_month(*, month: dt.date) -> RollupResult:
    """Recompute every day of a UTC month and its statements (idempotent)."""
    from apps.billing.services.statements import statements_compute

    first = month_start(month)
    result = rollup_days(start=first, end=next_month(first))
    statements_compute(month=first)
    return result
