"""Retention of raw usage rows and of their logged bodies; the rollups are kept for good.

Two settings, because the two are needed for very different times:
- `USAGE_RAW_RETENTION_DAYS` (default 400: finance needs a year plus): raw rows go a whole
  UTC month at a time, once the month's last day is that old. On PostgreSQL the month's
  partition is detached and dropped: metadata work, never a large DELETE. On SQLite
  (embedded mode: one small table) the month's rows are deleted a day at a time in bounded
  batches.
- `USAGE_BODY_RETENTION_DAYS` (default 30): logged request and response bodies older than
  this are set to NULL in bounded batches (a partial index finds them), so no long lock is
  held and the rest of the row stays.
0 keeps them forever.

Raw rows of a day go only when that day's rollup holds every one of them: the daily cube
(which every statement, dashboard and month-to-date total reads) covers the day by the one
coverage rule (`apps.usage.coverage`) and sums to the day's raw row count. Otherwise the
partition (or the day, on SQLite) is refused and logged; run the rollups (`manage.py rollup
--month`) and the next run drops it.

A day past the cutoff is never rolled up again (`apps.usage.rollups` skips such late days):
a re-roll would replace its rollups with whatever raw rows are left. Reads only raw
rows can answer (the usage API's `mode=rows`, exact latency percentiles, status filters,
filters on tag keys that are not rollup dimensions) answer within the raw retention; the
sums of statements, dashboards, the grouped usage API and the chargeback beyond it.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Count, Min, Sum
from django.db.models.functions import TruncDay

from .coverage import covered_days
from .grouping import day_bounds, month_start, next_month, utc_midnight, utc_today
from .models import LOGGED_BODY, UsageRecord
from .partitions import (
    TABLE,
    PartitionBusyError,
    UsagePartition,
    partition_frozen,
    usage_partitions,
)
from .regions import ledger_db

logger = logging.getLogger(__name__)

BATCH_SIZE = 5000
# The scheduled rollup re-rolls this month and, early in a month, the previous one
# (`apps.usage.rollups`): raw rows must outlive both, or a re-roll would empty a rollup.
MIN_RAW_RETENTION_DAYS = 62


def raw_cutoff(today: dt.date | None = None) -> dt.date | None:
    """Raw rows before this UTC day, the first of a month, may go: a month goes whole, once
    its last day is `USAGE_RAW_RETENTION_DAYS` old. None when raw rows are kept forever.

    Whole months on SQLite too, so the rollup run's month re-roll (a late day of the month
    holding the cutoff) always finds the month's raw rows complete.
    """
    days = settings.USAGE_RAW_RETENTION_DAYS
    return month_start((today or utc_today()) - dt.timedelta(days=days)) if days else None


def _checked_raw_cutoff(today: dt.date | None) -> dt.date | None:
    days = settings.USAGE_RAW_RETENTION_DAYS
    if days and days < MIN_RAW_RETENTION_DAYS:
        raise ImproperlyConfigured(
            f"USAGE_RAW_RETENTION_DAYS is {days}; it must be 0 (keep) or at least "
            f"{MIN_RAW_RETENTION_DAYS}, so that the rollup run never re-rolls pruned days"
        )
    return raw_cutoff(today)


def body_cutoff(today: dt.date | None = None) -> dt.date | None:
    """Logged bodies before this UTC day are nulled; None when they are kept."""
    days = settings.USAGE_BODY_RETENTION_DAYS
    return (today or utc_today()) - dt.timedelta(days=days) if days else None


def _raw_day_counts(start: dt.date, end: dt.date) -> dict[dt.date, int]:
    low, high = day_bounds(start, end)
    counts = (
        UsageRecord.objects.filter(created_at__gte=low, created_at__lt=high)
        .order_by()
        .annotate(day=TruncDay("created_at", tzinfo=dt.UTC))
        .values("day")
        .annotate(n=Count("pk"))
        .values_list("day", "n")
    )
    return {day.date(): n for day, n in counts}


def _rolled_up_counts(rollup, start: dt.date, end: dt.date) -> dict[dt.date, int]:
    """Requests per day that `rollup` answers for, covered days only."""
    covered = covered_days(rollup, start, end)
    sums = (
        rollup.objects.filter(day__in=covered)
        .order_by()
        .values("day")
        .annotate(n=Sum("requests"))
        .values_list("day", "n")
    )
    return {day: int(n or 0) for day, n in sums}


def unrolled_days(
    start: dt.date, end: dt.date, raw: dict[dt.date, int] | None = None
) -> list[dt.date]:
    """Days in [start, end) with raw rows that the daily rollup does not hold in full; `raw`,
    when the caller has them, are the range's row counts per day."""
    from apps.usage.models import UsageCubeDaily

    raw = _raw_day_counts(start, end) if raw is None else raw
    if not raw:
        return []
    rolled = _rolled_up_counts(UsageCubeDaily, start, end)
    return sorted(day for day, n in raw.items() if rolled.get(day) != n)


@dataclass
class RawPruneResult:
    """What a raw prune did (or, dry, would do): partitions or days, rows gone, refusals."""

    dropped: list[str] = field(default_factory=list)
    rows: int = 0
    refused: dict[str, list[dt.date]] = field(default_factory=dict)
    dry_run: bool = False


def usage_raw_prune(
    *, today: dt.date | None = None, dry_run: bool = False, batch_size: int = BATCH_SIZE
) -> RawPruneResult:
    """Drop raw rows past `USAGE_RAW_RETENTION_DAYS` whose days are rolled up in full."""
    cutoff = _checked_raw_cutoff(today)
    result = RawPruneResult(dry_run=dry_run)
    if cutoff is None:
        return result
    if ledger_db.vendor == "postgresql":
        partitions = usage_partitions()
        if not partitions:
            # Never a large DELETE on PostgreSQL: without partitions nothing is pruned.
            logger.error("usage retention: %s is not partitioned; run migrate", TABLE)
            return result
        for partition in partitions:
            if not partition.is_default and partition.end <= cutoff:
                _prune_partition(partition, result)
    else:
        _prune_days(cutoff, result, batch_size)
    return result


def _prune_partition(partition: UsagePartition, result: RawPruneResult) -> None:
    if result.dry_run:
        missing = unrolled_days(partition.start, partition.end)
        if missing:
            result.refused[partition.name] = missing
        else:
            result.dropped.append(partition.name)
            result.rows += partition.rows or 0
        return
    try:
        # Checked with the partition frozen, so no late row can land between check and drop.
        with partition_frozen(partition) as drop:
            missing = unrolled_days(partition.start, partition.end)
            if not missing:
                drop()
    except PartitionBusyError:
        logger.info("usage retention: %s busy, left for the next run", partition.name)
        return
    if missing:
        result.refused[partition.name] = missing
        logger.error(
            "usage retention: %s kept, its rollups miss %d day(s) (%s...); "
            "run `manage.py rollup --month` for them",
            partition.name,
            len(missing),
            missing[0],
        )
        return
    result.dropped.append(partition.name)
    result.rows += partition.rows or 0


def _prune_days(cutoff: dt.date, result: RawPruneResult, batch_size: int) -> None:
    """SQLite: one day at a time, in DELETEs of at most `batch_size` rows."""
    oldest = UsageRecord.objects.aggregate(first=Min("created_at"))["first"]
    if oldest is None or oldest.astimezone(dt.UTC).date() >= cutoff:
        return
    start = oldest.astimezone(dt.UTC).date()
    raw = _raw_day_counts(start, cutoff)
    missing = set(unrolled_days(start, cutoff, raw))
    if missing:
        result.refused[TABLE] = sorted(missing)
        logger.error(
            "usage retention: %d day(s) kept, their rollups are missing (%s...)",
            len(missing),
            min(missing),
        )
    for day, count in sorted(raw.items()):
        if day in missing:
            continue
        result.dropped.append(day.isoformat())
        if result.dry_run:
            result.rows += count
            continue
        low, high = day_bounds(day, day + dt.timedelta(days=1))
        rows = UsageRecord.objects.filter(created_at__gte=low, created_at__lt=high)
        while ids := list(rows.order_by().values_list("pk", flat=True)[:batch_size]):
            result.rows += UsageRecord.objects.filter(pk__in=ids).delete()[0]


def usage_bodies_prune(
    *, today: dt.date | None = None, dry_run: bool = False, batch_size: int = BATCH_SIZE
) -> int:
    """Null the logged bodies older than `USAGE_BODY_RETENTION_DAYS`; bodies nulled.

    A month at a time (one partition on PostgreSQL), `batch_size` rows per UPDATE, each its
    own transaction: no lock is held for long, and the writer never touches old rows.
    """
    cutoff = body_cutoff(today)
    if cutoff is None:
        return 0
    logged = UsageRecord.objects.filter(LOGGED_BODY, created_at__lt=utc_midnight(cutoff)).order_by()
    if dry_run:
        return logged.count()
    oldest = logged.aggregate(first=Min("created_at"))["first"]
    if oldest is None:
        return 0
    nulled = 0
    month = month_start(oldest.astimezone(dt.UTC).date())
    while month < cutoff:
        low, high = day_bounds(month, min(next_month(month), cutoff))
        rows = logged.filter(created_at__gte=low, created_at__lt=high)
        while ids := list(rows.values_list("pk", flat=True)[:batch_size]):
            # The range again, so PostgreSQL looks in this month's partition only.
            nulled += UsageRecord.objects.filter(
                pk__in=ids, created_at__gte=low, created_at__lt=high
            ).update(request_body=None, response_body=None)
        month = next_month(month)
    if nulled:
        logger.info("usage retention: bodies of %d rows before %s nulled", nulled, cutoff)
    return nulled
