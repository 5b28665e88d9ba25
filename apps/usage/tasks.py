"""Beat tasks of the usage ledger: the one scheduled rollup, partitions, retention and the
sweep of region moves.

Each runs over every data region's ledger (apps/usage/regions.py). A region whose database
is unreachable does not hold back the others: they are all done first, then its error fails
the task, which is retried (every task here is idempotent).
"""

import logging
from collections.abc import Callable
from typing import TypeVar

from celery import shared_task
from django.conf import settings
from django.db import OperationalError

from .partitions import usage_partitions_ensure
from .region_move import usage_region_moves_sweep
from .regions import in_region, region_names
from .retention import raw_cutoff, usage_bodies_prune, usage_raw_prune
from .rollups import usage_rollups_refresh

logger = logging.getLogger(__name__)
T = TypeVar("T")


def each_region(work: Callable[[], T]) -> list[T]:
    """`work()` inside every region; the first failure is raised after the rest ran."""
    results: list[T] = []
    failure: OperationalError | None = None
    for region in region_names():
        try:
            with in_region(region):
                results.append(work())
        except OperationalError as error:
            logger.warning("usage task: region %s failed, the others go on: %s", region, error)
            failure = failure or error
    if failure is not None:
        raise failure
    return results


@shared_task(
    name="usage.rollups_refresh",
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=3,
)
def rollups_refresh(days: int | None = None) -> dict:
    """Refresh every rollup table (see `apps.usage.rollups`); idempotent."""
    recent = days or settings.USAGE_ROLLUP_RECENT_DAYS
    totals: dict = {"months": [], "days": [], "hours": [], "requests": 0}
    for run in each_region(lambda: usage_rollups_refresh(recent_days=recent)):
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

    def ensure() -> list[str]:
        return usage_partitions_ensure(
            months_ahead=settings.USAGE_PARTITIONS_AHEAD_MONTHS, keep_from=raw_cutoff()
        )

    return {"created": [name for created in each_region(ensure) for name in created]}


@shared_task(
    name="usage.retention_prune",
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=3,
)
def retention_prune() -> dict:
    """Drop raw rows and null logged bodies past their retention (`apps.usage.retention`)."""
    result: dict = {"dropped": [], "rows": 0, "refused": {}, "bodies_nulled": 0}
    for raw, bodies in each_region(lambda: (usage_raw_prune(), usage_bodies_prune())):
        result["dropped"] += list(raw.dropped)
        result["rows"] += raw.rows
        result["refused"].update(
            {name: [day.isoformat() for day in days] for name, days in raw.refused.items()}
        )
        result["bodies_nulled"] += bodies
    return result


@shared_task(
    name="usage.region_moves_sweep",
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=3,
)
def region_moves_sweep() -> dict:
    """Finish interrupted region moves and move stragglers (`apps.usage.region_move`)."""
    swept = usage_region_moves_sweep()
    return {"finished": swept.finished, "stragglers": swept.stragglers}
