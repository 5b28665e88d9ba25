"""Dashboard rollups (`UsageCubeDaily`, `LatencyHistogramDaily`): idempotent per day.

A run replaces every row of its days in one transaction, computed from the raw usage rows
with GROUP BY queries, so late rows (spooled usage replayed after an outage) are picked up
by running the days again. The beat task re-runs the last complete days; `manage.py
dashboards_rollup --days 90` backfills.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncDay
from django.utils import timezone

from apps.billing.services.rollups import day_bounds
from apps.dashboards.histograms import Histogram, merge_into, sql_bucket
from apps.dashboards.models import LatencyHistogramDaily, UsageCubeDaily
from apps.proxy.models import UsageRecord

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
HISTOGRAM_FIELDS = ("team_id", "model", "provider")
SUCCESS = Q(status_code__lt=400)
# Stands for "every team" in histogram keys (None is a real, if rare, team_id).
ALL_TEAMS = object()
CENT_FRACTION = Decimal("1e-10")


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


def _decimal(value) -> Decimal:
    # SQLite sums decimals as floats: back to the column's precision.
    return Decimal(str(value or 0)).quantize(CENT_FRACTION)


def _cube(low: dt.datetime, high: dt.datetime, now: dt.datetime) -> list[UsageCubeDaily]:
    groups = (
        _rows(low, high)
        .values("_day", *CUBE_FIELDS)
        .annotate(
            n=Count("pk"),
            n_err=Count("pk", filter=Q(status_code__gte=400)),
            s_in=Sum("input_tokens"),
            s_out=Sum("output_tokens"),
            s_cost=Sum("cost_usd"),
        )
    )
    return [
        UsageCubeDaily(
            day=row["_day"].date(),
            **{name: row[name] for name in CUBE_FIELDS},
            requests=row["n"],
            errors=row["n_err"],
            input_tokens=row["s_in"] or 0,
            output_tokens=row["s_out"] or 0,
            cost_usd=_decimal(row["s_cost"]),
            computed_at=now,
        )
        for row in groups.iterator(chunk_size=5000)
    ]


def _bucket_counts(qs: QuerySet, field: str) -> dict[tuple, Histogram]:
    """{(day, team_id, model, provider): {bucket: count}} of `field` over `qs`."""
    counts = (
        qs.annotate(_bucket=sql_bucket(field))
        .values("_day", *HISTOGRAM_FIELDS, "_bucket")
        .annotate(n=Count("pk"))
    )
    found: dict[tuple, Histogram] = {}
    for row in counts.iterator(chunk_size=5000):
        key = (row["_day"].date(), *(row[name] for name in HISTOGRAM_FIELDS))
        found.setdefault(key, {})[int(row["_bucket"])] = row["n"]
    return found


def _with_all_teams(found: dict[tuple, Histogram]) -> dict[tuple, Histogram]:
    """`found` plus, per (day, model, provider), the sum over teams under team `ALL_TEAMS`."""
    summed: dict[tuple, Histogram] = {}
    for (day, _team, model, provider), histogram in found.items():
        merge_into(summed.setdefault((day, ALL_TEAMS, model, provider), {}), histogram)
    return {**found, **summed}


def _histograms(
    low: dt.datetime, high: dt.datetime, now: dt.datetime
) -> list[LatencyHistogramDaily]:
    succeeded = _rows(low, high).filter(SUCCESS)
    latency = _with_all_teams(_bucket_counts(succeeded, "latency_ms"))
    ttft = _with_all_teams(
        _bucket_counts(succeeded.filter(is_stream=True, ttft_ms__isnull=False), "ttft_ms")
    )
    rows = []
    for key in sorted(latency.keys() | ttft.keys(), key=repr):
        lat = latency.get(key, {})
        first = ttft.get(key, {})
        rows.append(
            LatencyHistogramDaily(
                day=key[0],
                all_teams=key[1] is ALL_TEAMS,
                team_id=None if key[1] is ALL_TEAMS else key[1],
                model=key[2],
                provider=key[3],
                requests=sum(lat.values()),
                streams=sum(first.values()),
                latency={str(b): n for b, n in sorted(lat.items())},
                ttft={str(b): n for b, n in sorted(first.items())},
                computed_at=now,
            )
        )
    return rows


@transaction.atomic
def dashboard_rollup_days(*, start: dt.date, end: dt.date) -> DashboardRollupResult:
    """Recompute the dashboard rollups of the UTC days [start, end)."""
    now = timezone.now()
    low, high = day_bounds(start, end)
    cube = _cube(low, high, now)
    histograms = _histograms(low, high, now)
    UsageCubeDaily.objects.filter(day__gte=start, day__lt=end).delete()
    LatencyHistogramDaily.objects.filter(day__gte=start, day__lt=end).delete()
    UsageCubeDaily.objects.bulk_create(cube, batch_size=INSERT_BATCH)
    LatencyHistogramDaily.objects.bulk_create(histograms, batch_size=INSERT_BATCH)
    return DashboardRollupResult(
        start, end, len(cube), len(histograms), sum(row.requests for row in cube)
    )


def dashboard_rollup_day(*, day: dt.date) -> DashboardRollupResult:
    """Recompute one UTC day's dashboard rollups (idempotent)."""
    return dashboard_rollup_days(start=day, end=day + dt.timedelta(days=1))
