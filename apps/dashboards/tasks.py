"""Beat task: keep the dashboard rollups of the last complete days current."""

import datetime as dt

from celery import shared_task
from django.conf import settings
from django.db import OperationalError
from django.utils import timezone

from apps.dashboards.services import dashboard_rollup_days


@shared_task(
    name="dashboards.rollup_recent_days",
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=3,
)
def rollup_recent_days(days: int | None = None) -> list[str]:
    """Roll up the last `days` complete UTC days (default `DASHBOARDS_ROLLUP_RECENT_DAYS`).

    Today is left to the raw rows: the dashboards never read a rollup of an unfinished day.
    Re-running recent days picks up rows that arrived late (spool replays).
    """
    days = days or settings.DASHBOARDS_ROLLUP_RECENT_DAYS
    today = timezone.now().astimezone(dt.UTC).date()
    result = dashboard_rollup_days(start=today - dt.timedelta(days=days), end=today)
    return [result.start.isoformat(), result.end.isoformat()]
