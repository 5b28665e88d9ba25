"""Daily and monthly usage rollups: idempotent, re-runnable for any period.

A run replaces every rollup row of its period inside one transaction (delete, then insert),
computed from the raw usage rows with one GROUP BY, so late rows (spooled usage replayed
after an outage) are picked up by simply running the period again. Monthly rows are summed
in Python from the daily groups of the same query, so day and month totals always agree.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Q, Sum
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import TruncDay
from django.utils import timezone

from apps.billing.models import UsageRollupDaily, UsageRollupMonthly
from apps.usage.models import UsageRecord

INSERT_BATCH = 2000
_SUBJECT_FIELDS = ("team_id", "user_id", "virtual_account_id", "model")
_SUM_FIELDS = ("input_tokens", "output_tokens", "cached_tokens")


def rollup_tag_keys() -> list[str]:
    """Tag keys kept as rollup dimensions; the customer tag is always one of them."""
    keys = [*settings.BILLING_ROLLUP_TAG_KEYS, settings.BILLING_CUSTOMER_TAG_KEY]
    return list(dict.fromkeys(str(key) for key in keys if key))


def month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def next_month(month: dt.date) -> dt.date:
    return (month.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def day_bounds(start: dt.date, end: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start 00:00 UTC, end 00:00 UTC) for a half-open range of days."""
    return (
        dt.datetime.combine(start, dt.time.min, tzinfo=dt.UTC),
        dt.datetime.combine(end, dt.time.min, tzinfo=dt.UTC),
    )


@dataclass
class _Group:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: Decimal = Decimal(0)

    def add(self, other: _Group) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cached_tokens += other.cached_tokens
        self.cost_usd += other.cost_usd


# (day, team_id, user_id, virtual_account_id, model, dims_key)
GroupKey = tuple[dt.date, int | None, int | None, int | None, str, str]


def _dims_key(values: Iterable[object]) -> str:
    # Canonical text (key order fixed by rollup_tag_keys) so equal dims group together.
    return json.dumps(["" if v is None else str(v) for v in values], separators=(",", ":"))


def _grouped_sql(start: dt.datetime, end: dt.datetime, keys: list[str]) -> Iterator[tuple]:
    """One GROUP BY in the database; tag values through `tags->>'key'` (PostgreSQL)."""
    tags = {f"tag_{i}": KeyTextTransform(key, "tags") for i, key in enumerate(keys)}
    rows = (
        UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end)
        .order_by()
        .annotate(period=TruncDay("created_at", tzinfo=dt.UTC), **tags)
        .values("period", *_SUBJECT_FIELDS, *tags)
        .annotate(
            n=Count("pk"),
            n_errors=Count("pk", filter=Q(status_code__gte=400)),
            s_input=Sum("input_tokens"),
            s_output=Sum("output_tokens"),
            s_cached=Sum("cached_tokens"),
            s_cost=Sum("cost_usd"),
        )
    )
    for row in rows.iterator(chunk_size=5000):
        key = (
            row["period"].date(),
            row["team_id"],
            row["user_id"],
            row["virtual_account_id"],
            row["model"],
            _dims_key(row[name] for name in tags),
        )
        yield (
            key,
            _Group(
                row["n"],
                row["n_errors"],
                row["s_input"] or 0,
                row["s_output"] or 0,
                row["s_cached"] or 0,
                row["s_cost"] or Decimal(0),
            ),
        )


def _grouped_python(start: dt.datetime, end: dt.datetime, keys: list[str]) -> Iterator[tuple]:
    """SQLite fallback: SQLite sums decimals as floats, so sum exact Decimals in Python."""
    groups: dict[GroupKey, _Group] = {}
    rows = (
        UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end)
        .order_by()
        .values_list(
            "created_at", *_SUBJECT_FIELDS, "tags", "status_code", *_SUM_FIELDS, "cost_usd"
        )
    )
    for created, team, user, va, model, tags, status, inp, out, cached, cost in rows.iterator(
        chunk_size=5000
    ):
        tags = tags if isinstance(tags, dict) else {}
        key = (
            created.astimezone(dt.UTC).date(),
            team,
            user,
            va,
            model,
            _dims_key(tags.get(k) for k in keys),
        )
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group()
        group.add(_Group(1, int(status >= 400), inp, out, cached, cost))
    yield from groups.items()


def _grouped(start: dt.datetime, end: dt.datetime, keys: list[str]) -> Iterator[tuple]:
    if connection.vendor == "postgresql":
        return _grouped_sql(start, end, keys)
    return _grouped_python(start, end, keys)


def _rollup_fields(key: GroupKey, group: _Group, keys: list[str], now: dt.datetime) -> dict:
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
    months: dict[tuple, _Group] = {}
    requests = 0
    cost = Decimal(0)
    low, high = day_bounds(start, end)
    with transaction.atomic():
        # Repeatable read would be nicer; instead every number comes from the one query.
        for key, group in _grouped(low, high, keys):
            daily.append(UsageRollupDaily(day=key[0], **_rollup_fields(key, group, keys, now)))
            requests += group.requests
            cost += group.cost_usd
            if monthly:
                month_key = (month_start(key[0]), *key[1:])
                months.setdefault(month_key, _Group()).add(group)
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
