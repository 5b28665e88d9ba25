"""Daily and monthly usage rollups: idempotent, re-runnable for any period.

A run replaces every rollup row of its period inside one transaction (delete, then insert),
computed from the raw usage rows with one GROUP BY (`apps.usage.grouping`), so late rows
(spooled usage replayed after an outage) are picked up by simply running the period again. Monthly rows are summed
in Python from the daily groups of the same query, so day and month totals always agree.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from apps.billing.models import UsageRollupDaily, UsageRollupMonthly
from apps.usage.grouping import (
    GroupKey,
    UsageGroup,
    day_bounds,
    grouped_usage,
    month_start,
    next_month,
    rollup_tag_keys,
)
from apps.usage.models import UsageRecord

# Re-exported: billing and dashboards modules import the period helpers from here.
__all__ = [
    "RollupResult",
    "day_bounds",
    "month_start",
    "next_month",
    "rollup_tag_keys",
    "usage_rollup_day",
    "usage_rollup_month",
]

INSERT_BATCH = 2000


def _rollup_fields(key: GroupKey, group: UsageGroup, keys: list[str], now: dt.datetime) -> dict:
    values = json.loads(key[5])
    return {
        "team_id": key[1],
        "user_id": key[2],
        "virtual_account_id": key[3],
        "model": key[4],
        "dims": dict(zip(keys, values, strict=True)),
        "dims_key": key[5],
        "requests": group.requests,
        "errors": group.errors,
        "input_tokens": group.input_tokens,
        "output_tokens": group.output_tokens,
        "cached_tokens": group.cached_tokens,
        "cost_usd": group.cost_usd,
        "computed_at": now,
    }


@dataclass(frozen=True)
class RollupResult:
    start: dt.date
    end: dt.date
    daily_rows: int
    monthly_rows: int
    requests: int
    cost_usd: Decimal


def _rollup_days(*, start: dt.date, end: dt.date, monthly: bool) -> RollupResult:
    """Replace daily rollups for [start, end) and, when `monthly`, the month's rows."""
    keys = rollup_tag_keys()
    now = timezone.now()
    daily: list[UsageRollupDaily] = []
    months: dict[tuple, UsageGroup] = {}
    requests = 0
    cost = Decimal(0)
    low, high = day_bounds(start, end)
    with transaction.atomic():
        # Repeatable read would be nicer; instead every number comes from the one query.
        rows = UsageRecord.objects.filter(created_at__gte=low, created_at__lt=high)
        for key, group in grouped_usage(rows, keys):
            daily.append(UsageRollupDaily(day=key[0], **_rollup_fields(key, group, keys, now)))
            requests += group.requests
            cost += group.cost_usd
            if monthly:
                month_key = (month_start(key[0]), *key[1:])
                months.setdefault(month_key, UsageGroup()).add(group)
        UsageRollupDaily.objects.filter(day__gte=start, day__lt=end).delete()
        UsageRollupDaily.objects.bulk_create(daily, batch_size=INSERT_BATCH)
        if monthly:
            UsageRollupMonthly.objects.filter(month=month_start(start)).delete()
            UsageRollupMonthly.objects.bulk_create(
                (
                    UsageRollupMonthly(month=key[0], **_rollup_fields(key, group, keys, now))
                    for key, group in months.items()
                ),
                batch_size=INSERT_BATCH,
            )
    return RollupResult(start, end, len(daily), len(months), requests, cost)


def usage_rollup_day(*, day: dt.date) -> RollupResult:
    """Recompute one UTC day's rollup rows (idempotent)."""
    return _rollup_days(start=day, end=day + dt.timedelta(days=1), monthly=False)


def usage_rollup_month(*, month: dt.date) -> RollupResult:
    """Recompute every day of a UTC month, the month's rows and its statements (idempotent)."""
    from apps.billing.services.statements import statements_compute

    first = month_start(month)
    result = _rollup_days(start=first, end=next_month(first), monthly=True)
    statements_compute(month=first)
    return result
