"""Beat tasks of the usage ledger: the one scheduled rollup, partitions and retention."""

from celery import shared_task
from django.conf import settings
from django.db import OperationalError

from .partitions import usage_partitions_ensure
from .retention import raw_cutoff, usage_bodies_prune, usage_raw_prune
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
        "days": run.days,
        "hours": run.hours,
        "requests": run.requests,
    }


# A lock timeout (the table busy) is an OperationalError too: retried later, nothing half done.
@shared_task(
    name="usage.partitions_maintain",
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=3,
)
def partitions_maintain() -> dict:
    """Create the coming months' partitions (PostgreSQL; see `apps.usage.partitions`)."""
    created = usage_partitions_ensure(
        months_ahead=settings.USAGE_PARTITIONS_AHEAD_MONTHS, keep_from=raw_cutoff()
    )
    return {"created": created}


@shared_task(
    name="usage.retention_prune",
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=3,
)
def retention_prune() -> dict:
    """Drop raw rows and null logged bodies past their retention (`apps.usage.retention`)."""
    raw = usage_raw_prune()
    bodies = usage_bodies_prune()
    return {
        "dropped": raw.dropped,
        "rows": raw.rows,
        "refused": {name: [day.isoformat() for day in days] for name, days in raw.refused.items()},
        "bodies_nulled": bodies,
    }
