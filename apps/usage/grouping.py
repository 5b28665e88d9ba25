"""Raw usage grouped per UTC day x subject x model x rollup tag values, and UTC periods.

The one GROUP BY behind billing's rollups and the month-to-date reader, so a day summed from
raw rows and the same day read from its rollup rows always agree. It lives with the ledger
(and imports nothing from billing services) so either side can be imported first.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import connection
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncDay
from django.utils import timezone

from apps.usage.models import UsageRecord
from apps.usage.tags import TagText

_SUBJECT_FIELDS = ("team_id", "user_id", "virtual_account_id", "model")
_SUM_FIELDS = ("input_tokens", "output_tokens", "cached_tokens")

# (day, team_id, user_id, virtual_account_id, model, dims_key)
GroupKey = tuple[dt.date, int | None, int | None, int | None, str, str]


def rollup_tag_keys() -> list[str]:
    """Tag keys kept as rollup dimensions; the customer tag is always one of them."""
    keys = [*settings.BILLING_ROLLUP_TAG_KEYS, settings.BILLING_CUSTOMER_TAG_KEY]
    return list(dict.fromkeys(str(key) for key in keys if key))


def month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def next_month(month: dt.date) -> dt.date:
    return (month.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def utc_today() -> dt.date:
    return timezone.now().astimezone(dt.UTC).date()


def utc_midnight(day: dt.date) -> dt.datetime:
    """`day` 00:00 UTC, an aware datetime."""
    return dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)


def day_bounds(start: dt.date, end: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start 00:00 UTC, end 00:00 UTC) for a half-open range of days."""
    return utc_midnight(start), utc_midnight(end)


def consecutive_runs(starts: Iterable, step: dt.timedelta) -> list[tuple]:
    """Period starts (days or hours, `step` apart) as sorted half-open runs of consecutive
    periods, [first, last + step)."""
    runs: list[tuple] = []
    for start in sorted(starts):
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], start + step)
        else:
            runs.append((start, start + step))
    return runs


def day_runs(days: Iterable[dt.date]) -> list[tuple[dt.date, dt.date]]:
    """Days as sorted half-open runs of consecutive days, [first, last + 1)."""
    return consecutive_runs(days, dt.timedelta(days=1))


@dataclass
class UsageGroup:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: Decimal = Decimal(0)

    def add(self, other: UsageGroup) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cached_tokens += other.cached_tokens
        self.cost_usd += other.cost_usd


def dims_key(values: Iterable[object]) -> str:
    # Canonical text (key order fixed by rollup_tag_keys) so equal dims group together.
    return json.dumps(["" if v is None else str(v) for v in values], separators=(",", ":"))


def _grouped_sql(rows: QuerySet[UsageRecord], keys: list[str]) -> Iterator[tuple]:
    """One GROUP BY in the database; tag values through `tags->>'key'` (PostgreSQL)."""
    tags = {f"tag_{i}": TagText(key) for i, key in enumerate(keys)}
    grouped = (
        rows.order_by()
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
    for row in grouped.iterator(chunk_size=5000):
        key = (
            row["period"].date(),
            row["team_id"],
            row["user_id"],
            row["virtual_account_id"],
            row["model"],
            dims_key(row[name] for name in tags),
        )
        yield (
            key,
            UsageGroup(
                row["n"],
                row["n_errors"],
                row["s_input"] or 0,
                row["s_output"] or 0,
                row["s_cached"] or 0,
                row["s_cost"] or Decimal(0),
            ),
        )


def _grouped_python(rows: QuerySet[UsageRecord], keys: list[str]) -> Iterator[tuple]:
    """SQLite fallback: SQLite sums decimals as floats, so sum exact Decimals in Python."""
    groups: dict[GroupKey, UsageGroup] = {}
    values = rows.order_by().values_list(
        "created_at", *_SUBJECT_FIELDS, "tags", "status_code", *_SUM_FIELDS, "cost_usd"
    )
    for created, team, user, va, model, tags, status, inp, out, cached, cost in values.iterator(
        chunk_size=5000
    ):
        tags = tags if isinstance(tags, dict) else {}
        key = (
            created.astimezone(dt.UTC).date(),
            team,
            user,
            va,
            model,
            dims_key(tags.get(k) for k in keys),
        )
        group = groups.get(key)
        if group is None:
            group = groups[key] = UsageGroup()
        group.add(UsageGroup(1, int(status >= 400), inp, out, cached, cost))
    yield from groups.items()


def grouped_usage(
    rows: QuerySet[UsageRecord], keys: list[str]
) -> Iterator[tuple[GroupKey, UsageGroup]]:
    """`rows` summed per (day, team, user, virtual account, model, values of `keys`)."""
    if connection.vendor == "postgresql":
        return _grouped_sql(rows, keys)
    return _grouped_python(rows, keys)
