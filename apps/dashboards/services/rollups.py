"""Dashboard rollups (`UsageCubeDaily`, `LatencyHistogramDaily` and their per-tag-key
counterparts `TagUsageDaily`, `TagLatencyHistogramDaily`): idempotent per day.

A run replaces every row of its days in one transaction, computed from the raw usage rows
with GROUP BY queries, so late rows (spooled usage replayed after an outage) are picked up
by running the days again. The beat task re-runs the last complete days; `manage.py
dashboards_rollup --days 90` backfills.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.db.models.functions import TruncDay
from django.utils import timezone

from apps.billing.services.rollups import day_bounds, rollup_tag_keys
from apps.dashboards.aggregates import RAW_SUMS, group_text, summed_cost
from apps.dashboards.histograms import Histogram, merge_into, sql_bucket
from apps.dashboards.models import (
    LatencyHistogramDaily,
    TagLatencyHistogramDaily,
    TagUsageDaily,
    UsageCubeDaily,
)
from apps.usage.models import UsageRecord
from apps.usage.tags import TagText

INSERT_BATCH = 2000
CUBE_FIELDS = (
    "team_id",
    "user_id",
    "virtual_account_id",
    "model",
    "provider",
    "error_type",
    "is_stream",
)
SUCCESS = Q(status_code__lt=400)
# Stands for "every team" in histogram keys (None is a real, if rare, team_id).
ALL_TEAMS = object()


@dataclass(frozen=True)
class DashboardRollupResult:
    start: dt.date
    end: dt.date
    cube_rows: int
    histogram_rows: int
    requests: int


def _rows(low: dt.datetime, high: dt.datetime) -> QuerySet[UsageRecord]:
    return (
        UsageRecord.objects.filter(created_at__gte=low, created_at__lt=high)
        .order_by()
        .annotate(_day=TruncDay("created_at", tzinfo=dt.UTC))
    )


def _cube(low: dt.datetime, high: dt.datetime, now: dt.datetime) -> list[UsageCubeDaily]:
    groups = _rows(low, high).values("_day", *CUBE_FIELDS).annotate(**RAW_SUMS)
    return [
        UsageCubeDaily(
            day=row["_day"].date(),
            **{name: row[name] for name in CUBE_FIELDS},
            requests=row["n"],
            errors=row["n_err"],
            input_tokens=row["s_in"] or 0,
            output_tokens=row["s_out"] or 0,
            cost_usd=summed_cost(row["s_cost"]),
            computed_at=now,
        )
        for row in groups.iterator(chunk_size=5000)
    ]


def _bucket_counts(qs: QuerySet, field: str, fields: tuple[str, ...]) -> dict[tuple, Histogram]:
    """{(day, *fields): {bucket: count}} of `field` over `qs`."""
    counts = (
        qs.annotate(_bucket=sql_bucket(field))
        .values("_day", *fields, "_bucket")
        .annotate(n=Count("pk"))
    )
    found: dict[tuple, Histogram] = {}
    for row in counts.iterator(chunk_size=5000):
        key = (
            row["_day"].date(),
            *(group_text(row[name]) if name == "_tag" else row[name] for name in fields),
        )
        histogram = found.setdefault(key, {})
        bucket = int(row["_bucket"])
        histogram[bucket] = histogram.get(bucket, 0) + row["n"]
    return found


def _with_all_teams(found: dict[tuple, Histogram]) -> dict[tuple, Histogram]:
    """`found` (keys: day, team, ...) plus the sums over teams under team `ALL_TEAMS`."""
    summed: dict[tuple, Histogram] = {}
    for (day, _team, *rest), histogram in found.items():
        merge_into(summed.setdefault((day, ALL_TEAMS, *rest), {}), histogram)
    return {**found, **summed}


def _latency_and_ttft(qs: QuerySet, fields: tuple[str, ...]) -> Iterator[tuple]:
    """(key, latency histogram, TTFT histogram) per (day, team or ALL_TEAMS, *fields)."""
    succeeded = qs.filter(SUCCESS)
    streams = succeeded.filter(is_stream=True, ttft_ms__isnull=False)
    latency = _with_all_teams(_bucket_counts(succeeded, "latency_ms", ("team_id", *fields)))
    ttft = _with_all_teams(_bucket_counts(streams, "ttft_ms", ("team_id", *fields)))
    for key in latency.keys() | ttft.keys():
        yield key, latency.get(key, {}), ttft.get(key, {})


def _histogram_fields(key: tuple, latency: Histogram, ttft: Histogram, now) -> dict:
    return {
        "day": key[0],
        "all_teams": key[1] is ALL_TEAMS,
        "team_id": None if key[1] is ALL_TEAMS else key[1],
        "requests": sum(latency.values()),
        "streams": sum(ttft.values()),
        "latency": {str(b): n for b, n in sorted(latency.items())},
        "ttft": {str(b): n for b, n in sorted(ttft.items())},
        "computed_at": now,
    }


def _histograms(
    low: dt.datetime, high: dt.datetime, now: dt.datetime
) -> list[LatencyHistogramDaily]:
    return [
        LatencyHistogramDaily(
            model=key[2], provider=key[3], **_histogram_fields(key, latency, ttft, now)
        )
        for key, latency, ttft in _latency_and_ttft(_rows(low, high), ("model", "provider"))
    ]


def _tag_usage(
    low: dt.datetime, high: dt.datetime, now: dt.datetime, keys: list[str]
) -> list[TagUsageDaily]:
    rows = []
    for key in keys:
        groups = (
            _rows(low, high)
            .annotate(_tag=TagText(key))
            .values("_day", "team_id", "user_id", "virtual_account_id", "_tag")
            .annotate(**RAW_SUMS)
        )
        sums: dict[tuple, list] = {}
        for row in groups.iterator(chunk_size=5000):
            # Values differing only in JSON type ("1" and 1) fold into one text value.
            group = (row["_day"].date(), row["team_id"], row["user_id"], row["virtual_account_id"])
            acc = sums.setdefault((*group, group_text(row["_tag"])), [0, 0, 0, 0, Decimal(0)])
            acc[0] += row["n"]
            acc[1] += row["n_err"]
            acc[2] += row["s_in"] or 0
            acc[3] += row["s_out"] or 0
            acc[4] += summed_cost(row["s_cost"])
        rows.extend(
            TagUsageDaily(
                day=day,
                team_id=team,
                user_id=user,
                virtual_account_id=va,
                tag_key=key,
                tag_value=value[:256],
                requests=n,
                errors=n_err,
                input_tokens=s_in,
                output_tokens=s_out,
                cost_usd=cost,
                computed_at=now,
            )
            for (day, team, user, va, value), (n, n_err, s_in, s_out, cost) in sums.items()
        )
    return rows


def _tag_histograms(
    low: dt.datetime, high: dt.datetime, now: dt.datetime, keys: list[str]
) -> list[TagLatencyHistogramDaily]:
    rows = []
    for key in keys:
        tagged = _rows(low, high).annotate(_tag=TagText(key))
        rows.extend(
            TagLatencyHistogramDaily(
                tag_key=key, tag_value=hkey[2][:256], **_histogram_fields(hkey, latency, ttft, now)
            )
            for hkey, latency, ttft in _latency_and_ttft(tagged, ("_tag",))
        )
    return rows


@transaction.atomic
def dashboard_rollup_days(*, start: dt.date, end: dt.date) -> DashboardRollupResult:
    """Recompute the dashboard rollups of the UTC days [start, end)."""
    now = timezone.now()
    low, high = day_bounds(start, end)
    keys = rollup_tag_keys()
    tables = {
        UsageCubeDaily: _cube(low, high, now),
        LatencyHistogramDaily: _histograms(low, high, now),
        TagUsageDaily: _tag_usage(low, high, now, keys),
        TagLatencyHistogramDaily: _tag_histograms(low, high, now, keys),
    }
    for model, rows in tables.items():
        model.objects.filter(day__gte=start, day__lt=end).delete()
        model.objects.bulk_create(rows, batch_size=INSERT_BATCH)
    cube = tables[UsageCubeDaily]
    return DashboardRollupResult(
        start,
        end,
        len(cube),
        len(tables[LatencyHistogramDaily]),
        sum(row.requests for row in cube),
    )


def dashboard_rollup_day(*, day: dt.date) -> DashboardRollupResult:
    """Recompute one UTC day's dashboard rollups (idempotent)."""
    return dashboard_rollup_days(start=day, end=day + dt.timedelta(days=1))
