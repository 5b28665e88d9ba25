"""Beat task: the one scheduled rollup of the usage ledger."""

from celery import shared_task
from django.conf import settings
from django.db import OperationalError

from .rollups import usage_rollups_refresh


@shared_task(
    name="usage.rollups_refresh",
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=3,
)
def rollups_refresh(days: int | None = None) -> dict:
    """Refresh every rollup table (see `apps.usage.rollups`); idempotent."""
    run = usage_rollups_refresh(recent_days=days or settings.USAGE_ROLLUP_RECENT_DAYS)
    return {
        "months": run.months,
        "dashboard_days": list(run.dashboard_days),
        "requests": run.requests,
    }
