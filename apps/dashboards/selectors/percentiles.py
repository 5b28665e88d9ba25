"""Latency percentiles (P50/P90/P99) of successful requests, and TTFT of successful streams.

Exact where the rows are few: hourly charts (ranges of up to two days), ranges with no
rolled-up day, and filter mixes no histogram holds (several tag filters, a tag filter with a
model) use `percentile_cont` over the raw rows in PostgreSQL (the same interpolation in
Python on SQLite). Otherwise rolled-up days come from the daily latency histograms (per
model and provider, or per value of one rollup tag key) and the remaining raw rows (today, a
user's own usage outside their teams) are bucketed into the same histogram in SQL;
percentiles then come within
`histograms.RELATIVE_ERROR` of the exact value, which keeps a 90-day page in milliseconds
where sorting a million latencies takes seconds.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.db.models import Aggregate, Count, FloatField, Q, QuerySet
from django.db.models.functions import TruncDay, TruncHour

from apps.usage import histograms
from apps.usage.aggregates import group_text
from apps.usage.coverage import held_ranges, uncovered
from apps.usage.grouping import rollup_tag_keys
from apps.usage.models import (
    LatencyHistogramDaily,
    LatencyHistogramHourly,
    TagLatencyHistogramDaily,
    TagLatencyHistogramHourly,
    UsageCubeDaily,
    UsageCubeHourly,
)
from apps.usage.query import COLUMNS, grouped_raw, percentile, rollup_coverage
from apps.usage.region_reads import read_each_region
from apps.usage.regions import is_multi_region, ledger_db
from apps.usage.scope import UsageScope

from ..filters import DashboardFilters
from .rows import raw_usage, usage_filter

PERCENTILES = (0.5, 0.9, 0.99)
# Breakdowns the histograms hold (their columns); others read raw rows.
HISTOGRAM_DIMENSIONS = ("team", "model", "provider")


@dataclass(frozen=True)
class PercentilePoint:
    """Latency percentiles (ms) of successful requests, and TTFT of successful streams."""

    bucket: dt.datetime | None
    group: str
    requests: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    streams: int
    ttft_p50_ms: float | None
    ttft_p90_ms: float | None
    ttft_p99_ms: float | None


class PercentilesCont(Aggregate):
    """PostgreSQL `percentile_cont(ARRAY[...]) WITHIN GROUP (ORDER BY expr)`.

    One aggregate for all fractions, so the group is sorted once rather than per percentile.
    """

    function = "percentile_cont"
    template = "%(function)s(ARRAY[%(fractions)s]) WITHIN GROUP (ORDER BY %(expressions)s)"

    def __init__(self, expression, fractions: Sequence[float], **extra):
        from django.contrib.postgres.fields import ArrayField

        # Floats from our own constants, never from a request: safe to inline in SQL.
        text = ", ".join(repr(float(f)) for f in fractions)
        super().__init__(expression, fractions=text, output_field=ArrayField(FloatField()), **extra)


def percentile_points(
    *,
    scope: UsageScope,
    filters: DashboardFilters,
    dimension: str | None = None,
    bucket: str | None = None,
) -> list[PercentilePoint]:
    """P50/P90/P99 per (bucket, group), ordered by bucket then group; groups with no
    successful request are left out. `bucket` is "hour", "day" or None.

    With several data regions each region's ledger gives its histograms (rollups where they
    cover, its raw rows bucketed in the database for the rest) and the sums of their counts
    give the percentiles: within `histograms.RELATIVE_ERROR`, since exact percentiles of two
    databases do not combine.
    """
    if is_multi_region():
        names = scope.readable_regions((filters.region,) if filters.region else ())
        if not names:
            return []
        first, *rest = read_each_region(
            names, lambda: _region_histograms(scope, filters, dimension, bucket)
        )
        for part in rest:
            for key, (latency, ttft) in part.items():
                histograms.add_counts(first[key][0], latency)
                histograms.add_counts(first[key][1], ttft)
        return _points(_found(first))
    source = _histogram_source(filters, dimension, bucket)
    if source is not None:
        covered, hours = rollup_coverage(usage_filter(filters))
        if covered or hours:
            found = _from_histograms(source, scope, filters, dimension, bucket, covered, hours)
            return _points(found)
    return _points(_exact(scope, filters, dimension, bucket))


def _region_histograms(scope, filters, dimension, bucket) -> _Merged:
    """The current region's latency and TTFT histograms per (bucket, group)."""
    source = _histogram_source(filters, dimension, bucket)
    if source is not None:
        covered, hours = rollup_coverage(usage_filter(filters))
        if covered or hours:
            return _merged_histograms(source, scope, filters, dimension, bucket, covered, hours)
    merged: _Merged = defaultdict(lambda: ({}, {}))
    column = COLUMNS[dimension] if dimension else None
    _add_raw(merged, raw_usage(scope=scope, filters=filters), column, bucket)
    return merged


def _histogram_source(filters: DashboardFilters, dimension: str | None, bucket: str | None):
    """The daily and hourly histogram rows that answer this read, or None when only raw rows
    can."""
    if bucket not in (None, "day"):
        return None
    if not filters.tags:
        if dimension not in (None, *HISTOGRAM_DIMENSIONS):
            return None
        model_q = Q(model=filters.model) if filters.model else Q()
        return (
            LatencyHistogramDaily.objects.order_by().filter(model_q),
            LatencyHistogramHourly.objects.order_by().filter(model_q),
        )
    # One filter on a rollup tag key, no model filter, no breakdown but team.
    if len(filters.tags) != 1 or filters.model or dimension not in (None, "team"):
        return None
    tag_key, tag_value = filters.tags[0]
    if tag_key not in rollup_tag_keys():
        return None
    tag_q = Q(tag_key=tag_key, tag_value=tag_value)
    return (
        TagLatencyHistogramDaily.objects.order_by().filter(tag_q),
        TagLatencyHistogramHourly.objects.order_by().filter(tag_q),
    )


def _points(found: Iterable[tuple]) -> list[PercentilePoint]:
    points = []
    for moment, group, n, lat, n_ttft, ttft in found:
        lat = lat or (None, None, None)
        ttft = ttft or (None, None, None)
        points.append(PercentilePoint(moment, group_text(group), n, *lat, n_ttft, *ttft))
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
    points.sort(key=lambda p: (p.bucket or epoch, p.group))
    return points


# --- Exact, over raw rows -------------------------------------------------------------


def _exact(scope, filters, dimension, bucket) -> list[tuple]:
    qs = raw_usage(scope=scope, filters=filters).filter(status_code__lt=400)
    qs, names = grouped_raw(qs, (dimension,) if dimension else (), bucket)
    if ledger_db.vendor != "postgresql":
        return _python_percentiles(qs, names)
    stream_q = Q(is_stream=True, ttft_ms__isnull=False)
    aggregates = {
        "n": Count("pk"),
        "lat": PercentilesCont("latency_ms", PERCENTILES),
        "n_ttft": Count("pk", filter=stream_q),
        "ttft": PercentilesCont("ttft_ms", PERCENTILES, filter=stream_q),
    }
    if names:
        rows = list(qs.values(*names).annotate(**aggregates))
    else:
        rows = [qs.aggregate(**aggregates)]
    return [
        (r.get("_bucket"), r.get("_g0"), r["n"], r["lat"], r["n_ttft"], r["ttft"])
        for r in rows
        if r["n"]
    ]


def _python_percentiles(qs: QuerySet, names: list[str]) -> list[tuple]:
    latencies: dict[tuple, list[float]] = defaultdict(list)
    ttfts: dict[tuple, list[float]] = defaultdict(list)
    for row in qs.values(*names, "latency_ms", "is_stream", "ttft_ms").iterator(chunk_size=5000):
        key = (row.get("_bucket"), row.get("_g0"))
        latencies[key].append(row["latency_ms"])
        if row["is_stream"] and row["ttft_ms"] is not None:
            ttfts[key].append(row["ttft_ms"])
    found = []
    for key, values in latencies.items():
        values.sort()
        streams = sorted(ttfts.get(key, []))
        found.append(
            (
                *key,
                len(values),
                [percentile(values, f) for f in PERCENTILES],
                len(streams),
                [percentile(streams, f) for f in PERCENTILES] if streams else None,
            )
        )
    return found


# --- From histograms ------------------------------------------------------------------

# (bucket moment, group) -> (latency histogram, TTFT histogram)
# Histograms keyed by text, as the rollups store them (`histograms.add_counts`).
_Merged = dict[tuple, tuple[dict[str, int], dict[str, int]]]


def _from_histograms(
    source: tuple[QuerySet, QuerySet],
    scope: UsageScope,
    filters: DashboardFilters,
    dimension: str | None,
    bucket: str | None,
    covered: set[dt.date],
    hours: dict[dt.datetime, dt.datetime],
) -> list[tuple]:
    return _found(_merged_histograms(source, scope, filters, dimension, bucket, covered, hours))


def _merged_histograms(
    source: tuple[QuerySet, QuerySet],
    scope: UsageScope,
    filters: DashboardFilters,
    dimension: str | None,
    bucket: str | None,
    covered: set[dt.date],
    hours: dict[dt.datetime, dt.datetime],
) -> _Merged:
    merged: _Merged = defaultdict(lambda: ({}, {}))
    column = COLUMNS[dimension] if dimension else None
    daily, hourly = source
    held_hours = sorted(hours)
    read = (scope, filters, column, bucket)
    # Only covered days: one rolled up while open, or with late rows since, is read raw.
    _add_rollup(merged, daily.filter(day__in=sorted(covered)), *read)
    if held_hours:
        _add_rollup(merged, hourly.filter(hour__in=held_hours), *read)
    # Periods without a histogram (the current hour, days not rolled up): raw rows.
    low, high = filters.bounds
    ranges = uncovered(low, high, held_ranges(covered, hours))
    if ranges:
        rows = raw_usage(scope=scope, filters=filters, ranges=ranges)
        _add_raw(merged, rows, column, bucket)
    # Histograms are per team, so a user's own rows outside the teams in scope come raw.
    if not scope.everything and scope.user_id is not None:
        cubes = [
            (UsageCubeDaily.objects.filter(day__in=sorted(covered)), held_ranges(covered)),
            (UsageCubeHourly.objects.filter(hour__in=held_hours), held_ranges((), hours)),
        ]
        for cube, periods in cubes:
            elsewhere = _own_teams_elsewhere(scope, filters, cube) if periods else None
            if elsewhere is not None:
                own = raw_usage(scope=UsageScope(user_id=scope.user_id), filters=filters)
                _add_raw(merged, own.filter(elsewhere, _in_ranges(periods)), column, bucket)
    return merged


def _found(merged: _Merged) -> list[tuple]:
    found = []
    for (moment, group), (latency, ttft) in merged.items():
        n = histograms.total(latency)
        if not n:
            continue
        n_ttft = histograms.total(ttft)
        found.append(
            (
                moment,
                group,
                n,
                histograms.percentiles(latency, PERCENTILES),
                n_ttft,
                histograms.percentiles(ttft, PERCENTILES) if n_ttft else None,
            )
        )
    return found


def _own_teams_elsewhere(scope: UsageScope, filters: DashboardFilters, cube: QuerySet) -> Q | None:
    """The teams outside the scope's teams where the user has usage in the periods of `cube`
    (the cube rows of the periods histograms answer for), as a filter; None when there are
    none (the usual case), sparing a scan of the user's rows. Read from the cube, which is
    rolled up with the histograms."""
    cube = cube.order_by().filter(user_id=scope.user_id)
    if scope.team_ids:
        cube = cube.exclude(team_id__in=sorted(scope.team_ids))
    if filters.team_id is not None:
        cube = cube.filter(team_id=filters.team_id)
    teams = set(cube.values_list("team_id", flat=True))
    if not teams:
        return None
    q = Q(team_id__in=sorted(t for t in teams if t is not None))
    return q | Q(team_id__isnull=True) if None in teams else q


def _in_ranges(ranges: list[tuple[dt.datetime, dt.datetime]]) -> Q:
    q = Q(pk__in=[])
    for low, high in ranges:
        q |= Q(created_at__gte=low, created_at__lt=high)
    return q


def _add_rollup(merged: _Merged, source: QuerySet, scope, filters, column, bucket) -> None:
    if scope.everything and filters.team_id is None and column != "team_id":
        # Org-wide reads use the rows summed over teams: a fraction of the per-team rows.
        team_q = Q(all_teams=True)
    elif scope.everything:
        team_q = Q(all_teams=False)
        if filters.team_id is not None:
            team_q &= Q(team_id=filters.team_id)
    elif scope.team_ids:
        team_q = Q(all_teams=False, team_id__in=sorted(scope.team_ids))
        if filters.team_id is not None:
            team_q &= Q(team_id=filters.team_id)
    else:
        return
    qs = source.filter(team_q)
    fields = ["day", "latency", "ttft"] + ([column] if column else [])
    for row in qs.values(*fields).iterator(chunk_size=2000):
        day = row["day"]
        moment = dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC) if bucket else None
        group = group_text(row[column]) if column else ""
        latency, ttft = merged[(moment, group)]
        # Keys stay text, as read back from JSON: raw counts are added under text keys too.
        histograms.add_counts(latency, row["latency"])
        histograms.add_counts(ttft, row["ttft"])


def _add_raw(merged: _Merged, rows: QuerySet, column, bucket) -> None:
    """Bucket raw rows in the database and add their counts."""
    succeeded = rows.filter(status_code__lt=400)
    if bucket:
        trunc = TruncHour if bucket == "hour" else TruncDay
        succeeded = succeeded.annotate(_moment=trunc("created_at", tzinfo=dt.UTC))
    names = (["_moment"] if bucket else []) + ([column] if column else [])
    streams = succeeded.filter(is_stream=True, ttft_ms__isnull=False)
    for qs, field, index in ((succeeded, "latency_ms", 0), (streams, "ttft_ms", 1)):
        counts = (
            qs.annotate(_hb=histograms.sql_bucket(field))
            .values(*names, "_hb")
            .annotate(n=Count("pk"))
        )
        for row in counts:
            group = group_text(row[column]) if column else ""
            target = merged[(row.get("_moment"), group)][index]
            bucket_key = str(int(row["_hb"]))
            target[bucket_key] = target.get(bucket_key, 0) + row["n"]
