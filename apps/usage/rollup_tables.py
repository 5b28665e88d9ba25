"""The rollup tables every reader uses, built from the raw usage rows at two grains:

- per UTC day: `UsageCubeDaily`, `LatencyHistogramDaily` and their per-tag-key counterparts
  `TagUsageDaily`, `TagLatencyHistogramDaily`;
- per UTC hour of today: the same four shapes (`UsageCubeHourly`, ...), so a busy day is
  read from its finished hours plus the last minutes of raw rows, not from a million rows.

A run replaces every row of its periods in one transaction, computed with GROUP BY queries,
so late rows (spooled usage replayed after an outage) are picked up by running the periods
again. The beat task (`apps.usage.rollups`) rolls the periods that are not final yet;
`manage.py rollup --days 90` backfills.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Count, Q, QuerySet
from django.db.models.functions import TruncDay, TruncHour
from django.utils import timezone

from .aggregates import RAW_SUMS, group_text, summed_cost
from .grouping import day_bounds, rollup_tag_keys
from .histograms import Histogram, merge_into, sql_bucket
from .models import (
    LatencyHistogramDaily,
    LatencyHistogramHourly,
    TagLatencyHistogramDaily,
    TagLatencyHistogramHourly,
    TagUsageDaily,
    TagUsageHourly,
    UsageCubeDaily,
    UsageCubeHourly,
    UsageRecord,
)
from .regions import ledger_transaction
from .tags import MAX_TAG_VALUE_CHARS, TagText

INSERT_BATCH = 2000
HOUR = dt.timedelta(hours=1)
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
class Grain:
    """A rollup period and its four tables; `hourly` tables also keep the hour's start."""

    trunc: type
    cube: type[UsageCubeDaily] | type[UsageCubeHourly]
    latency: type[LatencyHistogramDaily] | type[LatencyHistogramHourly]
    tags: type[TagUsageDaily] | type[TagUsageHourly]
    tag_latency: type[TagLatencyHistogramDaily] | type[TagLatencyHistogramHourly]
    hourly: bool

    def period(self, moment: dt.datetime) -> dict:
        """The period columns of a row whose period starts at `moment`."""
        if self.hourly:
            return {"day": moment.date(), "hour": moment}
        return {"day": moment.date()}

    def tables(self) -> tuple[type, ...]:
        return (self.cube, self.latency, self.tags, self.tag_latency)


DAILY = Grain(
    TruncDay, UsageCubeDaily, LatencyHistogramDaily, TagUsageDaily, TagLatencyHistogramDaily, False
)
HOURLY = Grain(
    TruncHour,
    UsageCubeHourly,
    LatencyHistogramHourly,
    TagUsageHourly,
    TagLatencyHistogramHourly,
    True,
)


@dataclass(frozen=True)
class RollupResult:
    start: dt.datetime
    end: dt.datetime
    cube_rows: int
    histogram_rows: int
    requests: int
    cost_usd: Decimal


def _rows(low: dt.datetime, high: dt.datetime, grain: Grain) -> QuerySet[UsageRecord]:
    """The raw rows of [low, high), each annotated with its period's start (`_period`)."""
    return (
        UsageRecord.objects.filter(created_at__gte=low, created_at__lt=high)
        .order_by()
        .annotate(_period=grain.trunc("created_at", tzinfo=dt.UTC))
    )


def _cube(low: dt.datetime, high: dt.datetime, now: dt.datetime, grain: Grain) -> list:
    groups = _rows(low, high, grain).values("_period", *CUBE_FIELDS).annotate(**RAW_SUMS)
    return [
        grain.cube(
            **grain.period(row["_period"]),
            **{name: row[name] for name in CUBE_FIELDS},
            requests=row["n"],
            errors=row["n_err"],
            input_tokens=row["s_in"] or 0,
            output_tokens=row["s_out"] or 0,
            cached_tokens=row["s_cached"] or 0,
            cache_write_tokens=row["s_cache_write"] or 0,
            cost_usd=summed_cost(row["s_cost"]),
            computed_at=now,
        )
        for row in groups.iterator(chunk_size=5000)
    ]


def _bucket_counts(qs: QuerySet, field: str, fields: tuple[str, ...]) -> dict[tuple, Histogram]:
    """{(period start, *fields): {bucket: count}} of `field` over `qs`."""
    counts = (
        qs.annotate(_bucket=sql_bucket(field))
        .values("_period", *fields, "_bucket")
        .annotate(n=Count("pk"))
    )
    found: dict[tuple, Histogram] = {}
    for row in counts.iterator(chunk_size=5000):
        key = (
            row["_period"],
            *(group_text(row[name]) if name == "_tag" else row[name] for name in fields),
        )
        histogram = found.setdefault(key, {})
        bucket = int(row["_bucket"])
        histogram[bucket] = histogram.get(bucket, 0) + row["n"]
    return found


def _with_all_teams(found: dict[tuple, Histogram]) -> dict[tuple, Histogram]:
    """`found` (keys: period, team, ...) plus the sums over teams under team `ALL_TEAMS`."""
    summed: dict[tuple, Histogram] = {}
    for (period, _team, *rest), histogram in found.items():
        merge_into(summed.setdefault((period, ALL_TEAMS, *rest), {}), histogram)
    return {**found, **summed}


def _latency_and_ttft(qs: QuerySet, fields: tuple[str, ...]) -> Iterator[tuple]:
    """(key, latency histogram, TTFT histogram) per (period, team or ALL_TEAMS, *fields)."""
    succeeded = qs.filter(SUCCESS)
    streams = succeeded.filter(is_stream=True, ttft_ms__isnull=False)
    latency = _with_all_teams(_bucket_counts(succeeded, "latency_ms", ("team_id", *fields)))
    ttft = _with_all_teams(_bucket_counts(streams, "ttft_ms", ("team_id", *fields)))
    for key in latency.keys() | ttft.keys():
        yield key, latency.get(key, {}), ttft.get(key, {})


def _histogram_fields(key: tuple, latency: Histogram, ttft: Histogram, now, grain: Grain) -> dict:
    return {
        **grain.period(key[0]),
        "all_teams": key[1] is ALL_TEAMS,
        "team_id": None if key[1] is ALL_TEAMS else key[1],
        "requests": sum(latency.values()),
        "streams": sum(ttft.values()),
        "latency": {str(b): n for b, n in sorted(latency.items())},
        "ttft": {str(b): n for b, n in sorted(ttft.items())},
        "computed_at": now,
    }


def _histograms(low: dt.datetime, high: dt.datetime, now: dt.datetime, grain: Grain) -> list:
    rows = _rows(low, high, grain)
    return [
        grain.latency(
            model=key[2], provider=key[3], **_histogram_fields(key, latency, ttft, now, grain)
        )
        for key, latency, ttft in _latency_and_ttft(rows, ("model", "provider"))
    ]


def _tag_usage(
    low: dt.datetime, high: dt.datetime, now: dt.datetime, keys: list[str], grain: Grain
) -> list:
    rows = []
    for key in keys:
        groups = (
            _rows(low, high, grain)
            .annotate(_tag=TagText(key))
            .values("_period", "team_id", "user_id", "virtual_account_id", "model", "_tag")
            .annotate(**RAW_SUMS)
        )
        sums: dict[tuple, list] = {}
        for row in groups.iterator(chunk_size=5000):
            # Values differing only in JSON type ("1" and 1) fold into one text value.
            group = (
                row["_period"],
                row["team_id"],
                row["user_id"],
                row["virtual_account_id"],
                row["model"],
                group_text(row["_tag"])[:MAX_TAG_VALUE_CHARS],
            )
            acc = sums.setdefault(group, [0, 0, 0, 0, 0, 0, Decimal(0)])
            acc[0] += row["n"]
            acc[1] += row["n_err"]
            acc[2] += row["s_in"] or 0
            acc[3] += row["s_out"] or 0
            acc[4] += row["s_cached"] or 0
            acc[5] += row["s_cache_write"] or 0
            acc[6] += summed_cost(row["s_cost"])
        for (period, team, user, va, model, value), acc in sums.items():
            n, n_err, s_in, s_out, cached, written, cost = acc
            rows.append(
                grain.tags(
                    **grain.period(period),
                    team_id=team,
                    user_id=user,
                    virtual_account_id=va,
                    model=model,
                    tag_key=key,
                    tag_value=value,
                    requests=n,
                    errors=n_err,
                    input_tokens=s_in,
                    output_tokens=s_out,
                    cached_tokens=cached,
                    cache_write_tokens=written,
                    cost_usd=cost,
                    computed_at=now,
                )
            )
    return rows


def _tag_histograms(
    low: dt.datetime, high: dt.datetime, now: dt.datetime, keys: list[str], grain: Grain
) -> list:
    rows = []
    for key in keys:
        tagged = _rows(low, high, grain).annotate(_tag=TagText(key))
        rows.extend(
            grain.tag_latency(
                tag_key=key,
                tag_value=hkey[2][:MAX_TAG_VALUE_CHARS],
                **_histogram_fields(hkey, latency, ttft, now, grain),
            )
            for hkey, latency, ttft in _latency_and_ttft(tagged, ("_tag",))
        )
    return rows


@ledger_transaction
def _rollup(grain: Grain, low: dt.datetime, high: dt.datetime, old: Q) -> RollupResult:
    """Replace the rows `old` of `grain`'s tables with [low, high) recomputed."""
    now = timezone.now()
    keys = rollup_tag_keys()
    tables = {
        grain.cube: _cube(low, high, now, grain),
        grain.latency: _histograms(low, high, now, grain),
        grain.tags: _tag_usage(low, high, now, keys, grain),
        grain.tag_latency: _tag_histograms(low, high, now, keys, grain),
    }
    for model, rows in tables.items():
        model.objects.filter(old).delete()
        model.objects.bulk_create(rows, batch_size=INSERT_BATCH)
    cube = tables[grain.cube]
    return RollupResult(
        low,
        high,
        len(cube),
        len(tables[grain.latency]),
        sum(row.requests for row in cube),
        sum((row.cost_usd for row in cube), Decimal(0)),
    )


def rollup_days(*, start: dt.date, end: dt.date) -> RollupResult:
    """Recompute every daily rollup table for the UTC days [start, end)."""
    low, high = day_bounds(start, end)
    return _rollup(DAILY, low, high, Q(day__gte=start, day__lt=end))


@ledger_transaction
def rollup_hours(*, start: dt.datetime, end: dt.datetime, until: dt.datetime) -> RollupResult:
    """Recompute every hourly rollup table for the UTC hours in [start, end) from the rows
    created before `until`, and record each hour as rolled up to there (`UsageRolledHour`),
    empty ones too."""
    from .models import UsageRolledHour

    result = _rollup(HOURLY, start, min(end, until), Q(hour__gte=start, hour__lt=end))
    now = timezone.now()
    hours = [start + dt.timedelta(hours=n) for n in range(int((end - start) / HOUR))]
    UsageRolledHour.objects.bulk_create(
        [
            UsageRolledHour(hour=hour, until=min(hour + HOUR, until), computed_at=now)
            for hour in hours
        ],
        update_conflicts=True,
        unique_fields=["hour"],
        update_fields=["until", "computed_at"],
    )
    return result


def hourly_prune(*, before: dt.date) -> None:
    """Drop hourly rows and late-hour marks of days before `before`: readers use the hourly
    tables for today only; once a day ends its daily rows (or raw rows) answer."""
    from .models import UsageLateHour, UsageRolledHour

    for model in HOURLY.tables():
        model.objects.filter(day__lt=before).delete()
    midnight = day_bounds(before, before)[0]
    UsageLateHour.objects.filter(hour__lt=midnight).delete()
    UsageRolledHour.objects.filter(hour__lt=midnight).delete()
