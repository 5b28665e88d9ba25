"""The one usage query layer: requests, errors, tokens and cost (and, asked for, latency
percentiles) per time bucket and group, for any filter the portal or the usage API offers.

The usage API, the chargeback CSV, the dashboards and month-to-date (statements, previews,
insights, quota seeding) read through `usage_totals`, under one coverage rule
(`apps.usage.coverage`). A read is answered from:
- the daily rollups for whole past days they cover (`UsageCubeDaily` for column groupings;
  `TagUsageDaily` when one rollup tag key is grouped by or filtered on), except in hourly
  buckets;
- today's hourly rollups (the same two shapes) for the spans they cover;
- the raw rows for everything else: the last minutes, days not rolled up yet or with late
  rows, partial days at the range's edges, and every read a rollup cannot answer (status
  filters or groupings, API keys, several tags, tags that are not rollup keys).
All parts are summed, so a figure never depends on whether a rollup has run. Exact latency
percentiles, when asked for, are read from the raw rows beside these sums.

A tag with no value and a tag with the empty value are one group, `None` (rollups store both
as ""); team, user and virtual account groups are ids.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from decimal import Decimal

from django.db.models import (
    Aggregate,
    Count,
    F,
    FloatField,
    Model,
    OrderBy,
    Q,
    QuerySet,
    TextField,
    Value,
)
from django.db.models.functions import Collate, NullIf, TruncDay, TruncHour, TruncMonth

from gateway_portal.db_snapshot import read_snapshot

from .aggregates import RAW_SUMS, ROLLUP_SUMS, summed_cost
from .coverage import covered_days, covered_hours, held_ranges, uncovered
from .grouping import rollup_tag_keys, utc_midnight, utc_today
from .histograms import Histogram, merge_into, percentiles, sql_bucket
from .models import TagUsageDaily, TagUsageHourly, UsageCubeDaily, UsageCubeHourly, UsageRecord
from .region_reads import read_each_region
from .regions import (
    current_alias,
    current_region,
    in_region,
    ledger_connection,
)
from .scope import UsageScope
from .tags import TagText, tag_equals

# Column dimensions: name -> UsageRecord column.
COLUMNS = {
    "team": "team_id",
    "user": "user_id",
    "virtual_account": "virtual_account_id",
    "model": "model",
    "provider": "provider",
    "error_type": "error_type",
    "status": "status_code",
    "request_type": "request_type",
}
BUCKETS = ("hour", "day", "month")
# Grouping by region splits each group by the data region whose ledger holds its rows.
REGION = "region"
PERCENTILES = (("latency_p50_ms", 0.5), ("latency_p90_ms", 0.9), ("latency_p99_ms", 0.99))
_TRUNC = {"hour": TruncHour, "day": TruncDay, "month": TruncMonth}
_CUBE_DIMENSIONS = frozenset({"team", "user", "virtual_account", "model", "provider", "error_type"})
_TAG_ROLLUP_DIMENSIONS = frozenset({"team", "user", "virtual_account", "model"})


def tag_dimension(key: str) -> str:
    """The group_by name of tag `key`."""
    return f"tag:{key}"


def dimension_tag_key(dimension: str) -> str | None:
    """The tag key of a `tag:<key>` dimension, None for a column dimension."""
    return dimension[4:] if dimension.startswith("tag:") else None


@dataclass(frozen=True)
class UsageFilter:
    """Which usage rows a read sums: created in [start, end), narrowed by each non-empty field."""

    start: dt.datetime
    end: dt.datetime
    team_ids: tuple[int, ...] = ()
    user_ids: tuple[int, ...] = ()
    virtual_account_ids: tuple[int, ...] = ()
    models: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    status_codes: tuple[int, ...] = ()
    status_range: tuple[int, int] | None = None
    # No rollup keeps keys apart: a filter on them reads raw rows.
    api_key_ids: tuple[int, ...] = ()
    key_lineage_ids: tuple[uuid.UUID, ...] = ()
    # The data regions whose ledgers are read; empty is all of them.
    regions: tuple[str, ...] = ()

    @property
    def by_status(self) -> bool:
        return bool(self.status_codes or self.status_range)

    @property
    def by_key(self) -> bool:
        return bool(self.api_key_ids or self.key_lineage_ids)


@dataclass(frozen=True)
class UsageTotals:
    """The sums of one group (a value per group_by dimension) in one time bucket."""

    bucket: dt.datetime | None
    group: tuple[object, ...]
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    cost_usd: Decimal
    # Latency percentiles by name (PERCENTILES), when asked for; None for a group whose
    # rows have none.
    latency: dict[str, float | None] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def error_rate(self) -> float:
        return round(self.errors / self.requests, 6) if self.requests else 0.0


# --- Rows ----------------------------------------------------------------------------------


def narrowed(
    qs: QuerySet, *, scope: UsageScope, where: UsageFilter, tags_field: str | None = "tags"
) -> QuerySet:
    """`qs` (raw rows or a rollup table) narrowed to the scope and the filter's columns and
    tags; `tags_field` names the JSON column of tags, None for a rollup table (which has none:
    its one tag is its row selection)."""
    if where.tags and tags_field is None:
        raise ValueError("tag filters need a table with tags")
    qs = scope.filter(qs)
    for column, values in (
        ("team_id", where.team_ids),
        ("user_id", where.user_ids),
        ("virtual_account_id", where.virtual_account_ids),
        ("model", where.models),
        ("api_key_id", where.api_key_ids),
        ("key_lineage_id", where.key_lineage_ids),
    ):
        if values:
            qs = qs.filter(**{f"{column}__in": values})
    for key, value in where.tags:
        qs = qs.filter(tag_equals(key, value, tags_field))
    status = Q()
    if where.status_codes:
        status |= Q(status_code__in=where.status_codes)
    if where.status_range:
        low, high = where.status_range
        status |= Q(status_code__gte=low, status_code__lt=high)
    return qs.filter(status) if status else qs


def raw_rows(
    *,
    scope: UsageScope,
    where: UsageFilter,
    ranges: Iterable[tuple[dt.datetime, dt.datetime]] | None = None,
) -> QuerySet[UsageRecord]:
    """Raw usage rows of the filter; `ranges` (half-open) replaces its [start, end)."""
    time_q = Q(pk__in=[])
    for low, high in [(where.start, where.end)] if ranges is None else ranges:
        time_q |= Q(created_at__gte=low, created_at__lt=high)
    return narrowed(UsageRecord.objects.order_by().filter(time_q), scope=scope, where=where)


def grouped_raw(
    qs: QuerySet, group_by: tuple[str, ...], bucket: str | None
) -> tuple[QuerySet, list[str]]:
    """Raw rows annotated with `_bucket` and `_g0`, `_g1`… (one per dimension), and the names
    to GROUP BY."""
    names = []
    if bucket:
        qs = qs.annotate(_bucket=_TRUNC[bucket]("created_at", tzinfo=dt.UTC))
        names.append("_bucket")
    for index, dimension in enumerate(group_by):
        key = dimension_tag_key(dimension)
        # A tag's empty value and its absence are one group (NULL), as in the rollups.
        expression = (
            NullIf(TagText(key), Value("", output_field=TextField()))
            if key
            else F(COLUMNS[dimension])
        )
        qs = qs.annotate(**{f"_g{index}": expression})
        names.append(f"_g{index}")
    return qs, names


def _group_rows(
    qs: QuerySet, names: list[str], aggregates: dict, order: Iterable[OrderBy] = ()
) -> Iterable[dict]:
    """GROUP BY `names` (ordered by `order`); with no names one total row (`.values()` alone
    would select all), none when no row counts (`aggregates` holds `n`)."""
    if names:
        grouped = qs.values(*names).annotate(**aggregates).order_by(*order)
        # A server-side cursor on PostgreSQL: rows reach Python in chunks.
        return grouped.iterator(chunk_size=2000)
    row = qs.aggregate(**aggregates)
    return [row] if row["n"] else []


def _sums(row: dict) -> tuple[int, int, int, int, int, int, Decimal]:
    """Requests, errors, input, output, cache read and cache write tokens, and cost of a
    grouped row (`UsageTotals` order)."""
    return (
        row["n"] or 0,
        row["n_err"] or 0,
        row["s_in"] or 0,
        row["s_out"] or 0,
        row["s_cached"] or 0,
        row["s_cache_write"] or 0,
        summed_cost(row["s_cost"]),
    )


# --- Which rollup answers a read -----------------------------------------------------------


@dataclass(frozen=True)
class _Rollup:
    """The daily and hourly tables of one rollup shape."""

    daily: type[Model]
    hourly: type[Model]
    # TagUsageDaily/Hourly: the rows of this one tag (key, and value or None for all values).
    tag: tuple[str, str | None] | None = None


def _rollup_for(where: UsageFilter, group_by: tuple[str, ...]) -> _Rollup | None:
    """The rollup shape that holds this read's rows and groups, if one does."""
    if where.by_status or where.by_key:
        return None
    columns = {d for d in group_by if dimension_tag_key(d) is None}
    tag_keys = [key for d in group_by if (key := dimension_tag_key(d)) is not None]
    if not tag_keys and not where.tags:
        return _Rollup(UsageCubeDaily, UsageCubeHourly) if columns <= _CUBE_DIMENSIONS else None
    if not columns <= _TAG_ROLLUP_DIMENSIONS:
        return None
    if len(tag_keys) == 1 and not where.tags:
        tag: tuple[str, str | None] = (tag_keys[0], None)
    elif not tag_keys and len(where.tags) == 1:
        tag = where.tags[0]
    else:
        return None
    if tag[0] not in rollup_tag_keys():
        return None
    return _Rollup(TagUsageDaily, TagUsageHourly, tag)


def rollup_coverage(
    where: UsageFilter, bucket: str | None = None
) -> tuple[set[dt.date], dict[dt.datetime, dt.datetime]]:
    """The whole days inside the filter the daily rollups cover (none for hourly buckets: a
    daily row cannot be split into hours), and today's spans inside it the hourly rollups
    cover ({hour start: until})."""
    today = utc_today()
    first = where.start.astimezone(dt.UTC).date()
    if utc_midnight(first) < where.start:
        first += dt.timedelta(days=1)  # a partial first day is read raw
    last = min(where.end.astimezone(dt.UTC).date(), today)  # exclusive: partial or open
    # One run rolls every daily table of a day in one transaction: the cube's small index
    # on (day, computed_at) answers for the tag rollup too.
    days = covered_days(UsageCubeDaily, first, last) if first < last and bucket != "hour" else set()
    hours: dict[dt.datetime, dt.datetime] = {}
    if where.start < utc_midnight(today + dt.timedelta(days=1)) and where.end > utc_midnight(today):
        hours = {
            hour: until
            for hour, until in covered_hours(today).items()
            if hour >= where.start and until <= where.end
        }
    return days, hours


def _rollup_parts(
    rollup: _Rollup,
    *,
    scope: UsageScope,
    where: UsageFilter,
    group_by: tuple[str, ...],
    bucket: str | None,
    days: set[dt.date],
    hours: dict[dt.datetime, dt.datetime],
) -> Iterator[tuple[dt.datetime | None, tuple, dict]]:
    reads = []
    if days:
        reads.append((rollup.daily.objects.filter(day__in=sorted(days)), False))
    if hours:
        reads.append((rollup.hourly.objects.filter(hour__in=sorted(hours)), True))
    # The tag filter, if any, is the rollup's row selection.
    columns_only = replace(where, tags=())
    for qs, hourly in reads:
        qs = qs.order_by()
        if rollup.tag is not None:
            key, value = rollup.tag
            qs = qs.filter(tag_key=key)
            if value is not None:
                # No tag value is longer than the column (capture refuses them).
                qs = qs.filter(tag_value=value)
        qs = narrowed(qs, scope=scope, where=columns_only, tags_field=None)
        names = []
        if bucket is not None:
            # Hourly rows carry their day too; months are summed in the database.
            qs = qs.annotate(_bucket=_ROLLUP_BUCKET[bucket, hourly]())
            names.append("_bucket")
        for index, dimension in enumerate(group_by):
            source = "tag_value" if dimension_tag_key(dimension) else COLUMNS[dimension]
            qs = qs.annotate(**{f"_g{index}": F(source)})
            names.append(f"_g{index}")
        for row in _group_rows(qs, names, ROLLUP_SUMS):
            yield _moment(row.get("_bucket")), _group_of(row, group_by), row


# (bucket, whether hourly rows) -> the rollup column or expression giving each row's bucket.
_ROLLUP_BUCKET = {
    ("hour", True): lambda: F("hour"),
    ("day", True): lambda: F("day"),
    ("day", False): lambda: F("day"),
    ("month", True): lambda: TruncMonth("day"),
    ("month", False): lambda: TruncMonth("day"),
}


def _moment(value: dt.date | dt.datetime | None) -> dt.datetime | None:
    """A bucket as an aware UTC datetime (rollup days and months are dates)."""
    if value is None or isinstance(value, dt.datetime):
        return value
    return utc_midnight(value)


# --- Reading --------------------------------------------------------------------------------


def _group_of(row: dict, group_by: tuple[str, ...]) -> tuple:
    values = []
    for index, dimension in enumerate(group_by):
        value = row.get(f"_g{index}")
        if dimension_tag_key(dimension) is not None and value == "":
            value = None
        values.append(value)
    return tuple(values)


def _order(totals: UsageTotals) -> tuple:
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
    return (
        totals.bucket or epoch,
        tuple((v is None, v if v is not None else "") for v in totals.group),
    )


def usage_totals(
    *,
    scope: UsageScope,
    where: UsageFilter,
    group_by: tuple[str, ...] = (),
    bucket: str | None = None,
    latency: bool = False,
    use_rollups: bool = True,
) -> Iterator[UsageTotals]:
    """Sums per (bucket, group), ordered by bucket then group values (None last, text in code
    point order); lazy.

    `group_by` holds names of COLUMNS, `tag:<key>` and `region`; `bucket` is one of BUCKETS or
    None (one total per group). With `latency`, each group also carries its exact latency
    percentiles, read from the raw rows (None where none are left, past retention).
    `use_rollups=False` reads raw rows only (what the rollups must agree with).

    A read the rollups take no part in streams from one GROUP BY (a chargeback over many
    groups never sits in memory); one that adds rollup rows to raw rows is summed here.

    Each data region's ledger is read where it lives (`where.regions`, or all of them) and
    the regions' sums are added; latency percentiles of several regions are merged through
    their histograms (within `histograms.RELATIVE_ERROR`), since percentiles do not add.
    """
    names = scope.readable_regions(where.regions)
    inner = tuple(d for d in group_by if d != REGION)
    if len(names) == 1 and REGION not in group_by:
        if names[0] == current_region():
            # Lazy: its queries run as it is read, on the database the router picks now.
            return _region_totals(scope, where, inner, bucket, latency, use_rollups)
        with in_region(names[0]):
            return iter(list(_region_totals(scope, where, inner, bucket, latency, use_rollups)))
    return iter(_across_regions(names, scope, where, group_by, inner, bucket, latency, use_rollups))


def _across_regions(
    names: list[str],
    scope: UsageScope,
    where: UsageFilter,
    group_by: tuple[str, ...],
    inner: tuple[str, ...],
    bucket: str | None,
    latency: bool,
    use_rollups: bool,
) -> list[UsageTotals]:
    sums: dict[tuple, list] = {}
    histograms: dict[tuple, Histogram] = {}
    at = group_by.index(REGION) if REGION in group_by else None

    def read() -> tuple[list[UsageTotals], dict[tuple, Histogram]]:
        totals = list(_region_totals(scope, where, inner, bucket, False, use_rollups))
        return totals, _raw_latency_histograms(scope, where, inner, bucket) if latency else {}

    for name, (totals, found) in zip(names, read_each_region(names, read), strict=True):
        for row in totals:
            group = row.group if at is None else (*row.group[:at], name, *row.group[at:])
            acc = sums.setdefault((row.bucket, group), [0, 0, 0, 0, 0, 0, Decimal(0)])
            for index, value in enumerate(_totals_sums(row)):
                acc[index] += value
            if latency:
                merge_into(
                    histograms.setdefault((row.bucket, group), {}),
                    found.get((row.bucket, row.group), {}),
                )
    merged = [
        UsageTotals(
            moment,
            group,
            *acc,
            latency=dict(
                zip(
                    (n for n, _ in PERCENTILES),
                    percentiles(histograms.get((moment, group), {}), [f for _, f in PERCENTILES]),
                    strict=True,
                )
            )
            if latency
            else {},
        )
        for (moment, group), acc in sums.items()
    ]
    return sorted(merged, key=_order)


def _totals_sums(row: UsageTotals) -> tuple[int, int, int, int, int, int, Decimal]:
    return (
        row.requests,
        row.errors,
        row.input_tokens,
        row.output_tokens,
        row.cached_tokens,
        row.cache_write_tokens,
        row.cost_usd,
    )


def _raw_latency_histograms(scope, where, group_by, bucket) -> dict[tuple, Histogram]:
    """Latency histograms per (bucket, group) of the current region's raw rows."""
    qs, names = grouped_raw(raw_rows(scope=scope, where=where), group_by, bucket)
    qs = qs.exclude(latency_ms__isnull=True).annotate(_lat=sql_bucket("latency_ms"))
    found: dict[tuple, Histogram] = {}
    for row in qs.values(*names, "_lat").annotate(c=Count("id")).order_by():
        key = (_moment(row.get("_bucket")), _group_of(row, group_by))
        histogram = found.setdefault(key, {})
        histogram[int(row["_lat"])] = histogram.get(int(row["_lat"]), 0) + row["c"]
    return found


def _region_totals(
    scope: UsageScope,
    where: UsageFilter,
    group_by: tuple[str, ...],
    bucket: str | None,
    latency: bool,
    use_rollups: bool,
) -> Iterator[UsageTotals]:
    """`usage_totals` of the current region's ledger."""
    rollup = _rollup_for(where, group_by) if use_rollups else None
    # Coverage and the rows it selects from one committed state: a rollup run committing
    # between them would count its new span twice (its rows, and the raw rows after the
    # old `until`).
    with read_snapshot(current_alias()):
        days, hours = rollup_coverage(where, bucket) if rollup is not None else (set(), {})
        if days or hours or (latency and ledger_connection().vendor != "postgresql"):
            return iter(_merged(scope, where, group_by, bucket, latency, rollup, days, hours))
    return _raw_streamed(scope, where, group_by, bucket, latency)


def _merged(scope, where, group_by, bucket, latency, rollup, days, hours) -> list[UsageTotals]:
    parts: list[Iterable[tuple[dt.datetime | None, tuple, dict]]] = []
    ranges = uncovered(where.start, where.end, held_ranges(days, hours))
    if days or hours:
        parts.append(
            _rollup_parts(
                rollup,
                scope=scope,
                where=where,
                group_by=group_by,
                bucket=bucket,
                days=days,
                hours=hours,
            )
        )
    if ranges:
        parts.append(_raw_parts(scope, where, group_by, bucket, ranges))
    sums: dict[tuple, list] = {}
    for part in parts:
        for moment, group, row in part:
            acc = sums.setdefault((moment, group), [0, 0, 0, 0, 0, 0, Decimal(0)])
            for index, value in enumerate(_sums(row)):
                acc[index] += value
    percentiles = _raw_percentiles(scope, where, group_by, bucket) if latency else {}
    found = [
        UsageTotals(
            moment,
            group,
            *acc,
            latency=percentiles.get((moment, group), dict.fromkeys(n for n, _ in PERCENTILES))
            if latency
            else {},
        )
        for (moment, group), acc in sums.items()
    ]
    return sorted(found, key=_order)


_TEXT_COLUMNS = frozenset({"model", "provider", "error_type", "request_type"})


def _db_order(group_by: tuple[str, ...], names: list[str]) -> list[OrderBy]:
    """ORDER BY the group names as `_order` sorts: NULLs last, text by code point (the "C"
    collation on PostgreSQL; SQLite's BINARY already compares UTF-8 bytes)."""
    text = {
        f"_g{index}"
        for index, dimension in enumerate(group_by)
        if dimension_tag_key(dimension) is not None or dimension in _TEXT_COLUMNS
    }
    order = []
    for name in names:
        expression = F(name)
        if name in text and ledger_connection().vendor == "postgresql":
            expression = Collate(expression, "C")
        order.append(OrderBy(expression, nulls_last=True))
    return order


def _raw_streamed(scope, where, group_by, bucket, latency) -> Iterator[UsageTotals]:
    """Raw rows grouped, ordered and (with `latency`) given percentiles in the database."""
    qs, names = grouped_raw(raw_rows(scope=scope, where=where), group_by, bucket)
    aggregates = dict(RAW_SUMS)
    if latency:
        aggregates.update({n: PercentileCont("latency_ms", f) for n, f in PERCENTILES})
    for row in _group_rows(qs, names, aggregates, _db_order(group_by, names)):
        yield UsageTotals(
            _moment(row.get("_bucket")),
            _group_of(row, group_by),
            *_sums(row),
            latency={name: row[name] for name, _ in PERCENTILES} if latency else {},
        )


def _raw_parts(scope, where, group_by, bucket, ranges) -> Iterator[tuple]:
    qs, names = grouped_raw(raw_rows(scope=scope, where=where, ranges=ranges), group_by, bucket)
    for row in _group_rows(qs, names, RAW_SUMS):
        yield _moment(row.get("_bucket")), _group_of(row, group_by), row


# --- Latency percentiles, from raw rows -------------------------------------------------------


class PercentileCont(Aggregate):
    """PostgreSQL `percentile_cont(f) WITHIN GROUP (ORDER BY expr)` (continuous, interpolated)."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression, fraction: float, **extra):
        # A float from our own constants, never from a request: safe to inline in SQL.
        super().__init__(expression, fraction=repr(float(fraction)), **extra)


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks, as PostgreSQL's percentile_cont."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * fraction
    low, high = math.floor(pos), math.ceil(pos)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def _raw_percentiles(scope, where, group_by, bucket) -> dict[tuple, dict[str, float | None]]:
    """Exact latency percentiles per (bucket, group) of the raw rows."""
    qs, names = grouped_raw(raw_rows(scope=scope, where=where), group_by, bucket)
    found: dict[tuple, dict[str, float | None]] = {}
    if ledger_connection().vendor == "postgresql":
        aggregates = {n: PercentileCont("latency_ms", f) for n, f in PERCENTILES}
        for row in _group_rows(qs, names, {"n": RAW_SUMS["n"], **aggregates}):
            key = (_moment(row.get("_bucket")), _group_of(row, group_by))
            found[key] = {name: row[name] for name, _ in PERCENTILES}
        return found
    # SQLite has no percentile_cont: the latencies are sorted here.
    latencies: dict[tuple, list[float]] = {}
    for values in qs.values(*names, "latency_ms").iterator(chunk_size=5000):
        key = (_moment(values.get("_bucket")), _group_of(values, group_by))
        latencies.setdefault(key, []).append(values["latency_ms"])
    for key, values in latencies.items():
        values.sort()
        found[key] = {name: percentile(values, f) for name, f in PERCENTILES}
    return found
