"""The one scheduled rollup run: every table built from raw usage rows, for the same days.

Billing's daily and monthly rollups (statements, chargebacks, insights) and the dashboards'
cube and histograms used to be refreshed by three beat tasks reading the same raw rows on
their own clocks. One run now refreshes them together, so after it every reader sees the
same days rolled up. Each step is idempotent (it replaces its days), so overlapping runs
and re-runs after an outage are safe and pick up rows that arrived late (spool replays).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from django.utils import timezone

from .grouping import utc_today
from .retention import raw_cutoff

logger = logging.getLogger(__name__)

# Spooled rows replayed after an outage land a few days late at most; re-roll the previous
# month during this many first days of a month so its statements pick them up.
PREVIOUS_MONTH_DAYS = 3


@dataclass(frozen=True)
class RollupRun:
    months: list[str]
    dashboard_days: tuple[str, str]
    requests: int


def usage_rollups_refresh(*, recent_days: int, today: dt.date | None = None) -> RollupRun:
    """Refresh every rollup over the current month, the last `recent_days` complete days and
    every day marked late (`UsageLateDay`), then clear those marks.

    Today's dashboards rows stay raw (an unfinished day is never served from a rollup);
    billing rolls up today too, since statements and quota seeding read month-to-date.
    """
    from apps.billing.services.rollups import month_start, usage_rollup_month
    from apps.dashboards.services import dashboard_rollup_days

    from .models import UsageLateDay

    started = timezone.now()
    today = today or utc_today()
    months = [month_start(today)]
    if today.day <= PREVIOUS_MONTH_DAYS:
        months.insert(0, month_start(today - dt.timedelta(days=PREVIOUS_MONTH_DAYS)))
    # Days that got rows after they ended are re-rolled too, in whichever month they lie.
    late = sorted(UsageLateDay.objects.filter(day__lt=today).values_list("day", flat=True))
    # Except days past the raw retention: their raw rows may be gone, and a re-roll would
    # replace their rollups with the few late rows left (`apps.usage.retention`).
    expired = raw_cutoff(today)
    if expired is not None and late and late[0] < expired:
        stale = [day for day in late if day < expired]
        logger.warning("usage rollups: late rows for %d day(s) past retention ignored", len(stale))
        UsageLateDay.objects.filter(day__in=stale).delete()
        late = late[len(stale) :]
    for day in late:
        if month_start(day) not in months:
            months.insert(0, month_start(day))
    requests = 0
    for month in sorted(months):
        requests += usage_rollup_month(month=month).requests
    start = today - dt.timedelta(days=recent_days)
    dashboard_rollup_days(start=start, end=today)
    for day in late:
        if day < start:
            dashboard_rollup_days(start=day, end=day + dt.timedelta(days=1))
    # Only marks older than this run: rows marked meanwhile may have missed its reads.
    UsageLateDay.objects.filter(day__in=late, marked_at__lt=started).delete()
    return RollupRun(
        months=[f"{month:%Y-%m}" for month in months],
        dashboard_days=(start.isoformat(), today.isoformat()),
        requests=requests,
    )
