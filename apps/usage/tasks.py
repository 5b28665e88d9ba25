"""Beat tasks of the usage ledger: the one scheduled rollup, partitions and retention.

Each runs over every data region's ledger in turn (apps/usage/regions.py); a region whose
database is unreachable fails the task (retried), after the regions before it are done.
"""

from celery import shared_task
from django.conf import settings
from django.db import OperationalError

from .partitions import usage_partitions_ensure
from .regions import in_region, region_names
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
    totals: dict = {"months": [], "days": [], "hours": [], "requests": 0}
    for region in region_names():
        with in_region(region):
            run = usage_rollups_refresh(recent_days=days or settings.USAGE_ROLLUP_RECENT_DAYS)
        totals["months"] += run.months
        totals["days"] += run.days
        totals["hours"] += run.hours
        totals["requests"] += run.requests
    return totals


# A lock timeout (the table busy) is an OperationalError too: retried later, nothing half done.
@shared_task(
    name="usage.partitions_maintain",
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=3,
)
def partitions_maintain() -> dict:
    """Create the coming months' partitions (PostgreSQL; see `apps.usage.partitions`)."""
    created = []
    for region in region_names():
        with in_region(region):
            created += usage_partitions_ensure(
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
    result: dict = {"dropped": [], "rows": 0, "refused": {}, "bodies_nulled": 0}
    for region in region_names():
        with in_region(region):
            raw = usage_raw_prune()
            bodies = usage_bodies_prune()
        result["dropped"] += list(raw.dropped)
        result["rows"] += raw.rows
        result["refused"].update(
            {name: [day.isoformat() for day in days] for name, days in raw.refused.items()}
        )
        result["bodies_nulled"] += bodies
    return result
