"""Beat tasks: re-run recent rollups so late usage rows are always picked up."""

import datetime as dt

from celery import shared_task
from django.db import OperationalError
from django.utils import timezone

from apps.billing.services import usage_rollup_day, usage_rollup_month
from apps.billing.services.rollups import month_start

# Spooled rows replayed after an outage land a few days late at most; re-run the previous
# month during this many first days of a month so its statements pick them up.
PREVIOUS_MONTH_DAYS = 3


def _today() -> dt.date:
    return timezone.now().astimezone(dt.UTC).date()


@shared_task(
    name="billing.usage_rollup_daily",
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=3,
)
def usage_rollup_daily(day: str | None = None) -> list[str]:
    """Roll up `day` (ISO), or yesterday and today."""
    days = [dt.date.fromisoformat(day)] if day else [_today() - dt.timedelta(days=1), _today()]
    for item in days:
        usage_rollup_day(day=item)
    return [item.isoformat() for item in days]


@shared_task(
    name="billing.usage_rollup_monthly",
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=3,
)
def usage_rollup_monthly(month: str | None = None) -> list[str]:
    """Roll up `month` (YYYY-MM), or the current month (and the previous one early on)."""
    if month:
        months = [dt.date.fromisoformat(f"{month}-01")]
    else:
        today = _today()
        months = [month_start(today)]
        if today.day <= PREVIOUS_MONTH_DAYS:
            months.insert(0, month_start(today - dt.timedelta(days=PREVIOUS_MONTH_DAYS)))
    for item in months:
        usage_rollup_month(month=item)
    return [f"{item:%Y-%m}" for item in months]
