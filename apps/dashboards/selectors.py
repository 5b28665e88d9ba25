"""Reads behind the dashboards: counts, tokens and cost per time bucket and dimension, and
latency percentiles. Every read takes the caller's `DashboardScope` explicitly.

Counts and cost of whole past days come from billing's `UsageRollupDaily` when the grouping
allows it (team, user, virtual account, model and the rollup tag keys); the days the rollup
does not hold yet (today, days not rolled up) come from the raw rows, and both are summed.
Provider, error type, hourly buckets and percentiles always need the raw rows.
Percentiles are `percentile_cont` in PostgreSQL; SQLite (embedded mode) computes the same
interpolated value in Python.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Aggregate, Count, F, FloatField, Q, QuerySet, Sum, TextField
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, TruncDay, TruncHour
from django.utils import timezone

from apps.accounts.models import TagDefinition, Team, VirtualAccount
from apps.billing.models import UsageRollupDaily
from apps.billing.services.rollups import rollup_tag_keys
from apps.proxy.models import UsageRecord

from .filters import DashboardFilters, DashboardScope, dimension_tag_key

OTHER = "other"
NONE_LABEL = "(none)"
PERCENTILES = (0.5, 0.9, 0.99)
# How many recent rows are scanned for tag keys in use (the picker's choices).
TAG_SCAN_ROWS = 2000
_TRUNC = {"hour": TruncHour, "day": TruncDay}
_RAW_COLUMNS = {
    "team": "team_id",
    "user": "user_id",
    "virtual_account": "virtual_account_id",
    "model": "model",
    "provider": "provider",
    "error_type": "error_type",
}
_ROLLUP_COLUMNS = {
    k: v for k, v in _RAW_COLUMNS.items() if k in {"team", "user", "virtual_account", "model"}
}


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


# --- Row types (also the CSV columns) -------------------------------------------------


@dataclass(frozen=True)
class UsagePoint:
    """Usage of one group (a dimension value, or "" for no grouping) in one time bucket."""

    bucket: dt.datetime | None
    group: str
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def cost_per_request(self) -> Decimal:
        return self.cost_usd / self.requests if self.requests else Decimal(0)


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


# --- Filtering ------------------------------------------------------------------------


def _scope_q(scope: DashboardScope) -> Q | None:
    """The scope as a filter; None when the scope holds nothing."""
    if scope.everything:
        return Q()
    parts = []
    if scope.team_ids:
        parts.append(Q(team_id__in=sorted(scope.team_ids)))
    if scope.user_id is not None:
        parts.append(Q(user_id=scope.user_id))
    if not parts:
        return None
    q = parts[0]
    for part in parts[1:]:
        q |= part
    return q


def _filtered(
    qs: QuerySet, *, scope: DashboardScope, filters: DashboardFilters, tags_field: str
) -> QuerySet:
    scope_q = _scope_q(scope)
    if scope_q is None:
        return qs.none()
    qs = qs.filter(scope_q)
    if filters.team_id is not None:
        qs = qs.filter(team_id=filters.team_id)
    if filters.model:
        qs = qs.filter(model=filters.model)
    for i, (key, value) in enumerate(filters.tags):
        if tags_field == "tags" and connection.vendor == "postgresql":
            # Containment uses the GIN index on usage tags.
            qs = qs.filter(tags__contains={key: value})
        else:
            # Cast: SQLite would otherwise compare the value as JSON and reject plain text.
            alias = f"_ftag{i}"
            text = Cast(KeyTextTransform(key, tags_field), TextField())
            qs = qs.alias(**{alias: text}).filter(**{alias: value})
    return qs


def raw_usage(
    *,
    scope: DashboardScope,
    filters: DashboardFilters,
    ranges: Iterable[tuple[dt.datetime, dt.datetime]] | None = None,
) -> QuerySet[UsageRecord]:
    """Usage rows inside the scope and filters; `ranges` replaces the filters' date range."""
    if ranges is None:
        ranges = [filters.bounds]
    time_q = Q(pk__in=[])
    for low, high in ranges:
        time_q |= Q(created_at__gte=low, created_at__lt=high)
    qs = UsageRecord.objects.order_by().filter(time_q)
    return _filtered(qs, scope=scope, filters=filters, tags_field="tags")


def _dimension_expr(dimension: str, *, rollup: bool):
    key = dimension_tag_key(dimension)
    if key is not None:
        return KeyTextTransform(key, "dims" if rollup else "tags")
    return F((_ROLLUP_COLUMNS if rollup else _RAW_COLUMNS)[dimension])


def _rollup_serves(dimension: str | None, filters: DashboardFilters, bucket: str | None) -> bool:
    if bucket not in (None, "day"):
        return False
    keys = set(rollup_tag_keys())
    if any(key not in keys for key, _ in filters.tags):
        return False
    if dimension is None or dimension in _ROLLUP_COLUMNS:
        return True
    return dimension_tag_key(dimension) in keys


def _day_runs(days: Iterable[dt.date]) -> list[tuple[dt.datetime, dt.datetime]]:
    """Contiguous runs of days as half-open UTC datetime ranges."""
    runs: list[tuple[dt.date, dt.date]] = []
    for day in sorted(days):
        if runs and runs[-1][1] == day:
            runs[-1] = (runs[-1][0], day + dt.timedelta(days=1))
        else:
            runs.append((day, day + dt.timedelta(days=1)))
    return [
        (
            dt.datetime.combine(a, dt.time.min, tzinfo=dt.UTC),
            dt.datetime.combine(b, dt.time.min, tzinfo=dt.UTC),
        )
        for a, b in runs
    ]


def _raw_groups(*, scope, filters, dimension, bucket, ranges) -> Iterable[tuple]:
    qs = raw_usage(scope=scope, filters=filters, ranges=ranges)
    names = []
    if bucket:
        qs = qs.annotate(_bucket=_TRUNC[bucket]("created_at", tzinfo=dt.UTC))
        names.append("_bucket")
    if dimension:
        qs = qs.annotate(_group=_dimension_expr(dimension, rollup=False))
        names.append("_group")
    aggregates = {
        "n": Count("pk"),
        "n_err": Count("pk", filter=Q(status_code__gte=400)),
        "s_in": Sum("input_tokens"),
        "s_out": Sum("output_tokens"),
        "s_cost": Sum("cost_usd"),
    }
    for row in _grouped(qs, names, aggregates):
        yield (
            row.get("_bucket"),
            row.get("_group"),
            row["n"],
            row["n_err"],
            row["s_in"],
            row["s_out"],
            row["s_cost"],
        )


def _grouped(qs: QuerySet, names: list[str], aggregates: dict) -> list[dict]:
    """GROUP BY `names`; with no names one total row (`.values()` alone would select all)."""
    if names:
        return list(qs.values(*names).annotate(**aggregates))
    return [qs.aggregate(**aggregates)]


def _rollup_groups(
    *, scope, filters, dimension, bucket, days: tuple[dt.date, dt.date]
) -> Iterable[tuple]:
    qs = UsageRollupDaily.objects.order_by().filter(day__gte=days[0], day__lt=days[1])
    qs = _filtered(qs, scope=scope, filters=filters, tags_field="dims")
    names = []
    if bucket:
        names.append("day")
    if dimension:
        qs = qs.annotate(_group=_dimension_expr(dimension, rollup=True))
        names.append("_group")
    aggregates = {
        "n": Sum("requests"),
        "n_err": Sum("errors"),
        "s_in": Sum("input_tokens"),
        "s_out": Sum("output_tokens"),
        "s_cost": Sum("cost_usd"),
    }
    for row in _grouped(qs, names, aggregates):
        day = row.get("day")
        moment = dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC) if day else None
        yield (
            moment,
            row.get("_group"),
            row["n"],
            row["n_err"],
            row["s_in"],
            row["s_out"],
            row["s_cost"],
        )


def _rolled_up_days(start: dt.date, end: dt.date) -> set[dt.date]:
    """Days in [start, end) that billing has rolled up (any rollup row exists)."""
    if start >= end:
        return set()
    days = (
        UsageRollupDaily.objects.filter(day__gte=start, day__lt=end)
        .order_by()
        .values_list("day", flat=True)
        .distinct()
    )
    return set(days)


def usage_points(
    *,
    scope: DashboardScope,
    filters: DashboardFilters,
    dimension: str | None = None,
    bucket: str | None = None,
    use_rollups: bool = True,
) -> list[UsagePoint]:
    """Requests, errors, tokens and cost per (bucket, group), ordered by bucket then group.

    `bucket` is "hour", "day" or None (one total); `dimension` a column name or `tag:<key>`.
    Group values are raw ids for team/user/virtual account (see `group_labels`).
    """
    start, end = filters.bounds
    raw_ranges = [(start, end)]
    parts: list[Iterable[tuple]] = []
    if use_rollups and _rollup_serves(dimension, filters, bucket):
        # Today is still being written: never trust a rollup row for it.
        last = min(end.date(), timezone.now().astimezone(dt.UTC).date())
        covered = _rolled_up_days(start.date(), last)
        if covered:
            every_day = {start.date() + dt.timedelta(days=i) for i in range(filters.days)}
            raw_ranges = _day_runs(every_day - covered)
            parts.append(
                _rollup_groups(
                    scope=scope,
                    filters=filters,
                    dimension=dimension,
                    bucket=bucket,
                    days=(start.date(), last),
                )
            )
    if raw_ranges:
        parts.append(
            _raw_groups(
                scope=scope, filters=filters, dimension=dimension, bucket=bucket, ranges=raw_ranges
            )
        )
    return _merge(parts)


def _merge(parts: Iterable[Iterable[tuple]]) -> list[UsagePoint]:
    sums: dict[tuple, list] = {}
    for part in parts:
        for moment, group, n, n_err, s_in, s_out, s_cost in part:
            # A missing tag is NULL in raw rows and "" in rollups: the same "no value".
            key = (moment, "" if group is None else str(group))
            acc = sums.setdefault(key, [0, 0, 0, 0, Decimal(0)])
            acc[0] += n or 0
            acc[1] += n_err or 0
            acc[2] += s_in or 0
            acc[3] += s_out or 0
            # SQLite sums decimals as floats; round back to the column's precision.
            acc[4] += Decimal(str(s_cost)).quantize(Decimal("1e-10")) if s_cost else Decimal(0)
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
    return [
        UsagePoint(moment, group, *acc)
        for (moment, group), acc in sorted(
            sums.items(), key=lambda kv: (kv[0][0] or epoch, kv[0][1])
        )
    ]


# --- Percentiles ----------------------------------------------------------------------


def _interpolated(values: list[float], fraction: float) -> float | None:
    """percentile_cont: linear interpolation between the two nearest ranks of sorted values."""
    if not values:
        return None
    position = fraction * (len(values) - 1)
    low = math.floor(position)
    high = math.ceil(position)
    return values[low] + (values[high] - values[low]) * (position - low)


def percentile_points(
    *,
    scope: DashboardScope,
    filters: DashboardFilters,
    dimension: str | None = None,
    bucket: str | None = None,
) -> list[PercentilePoint]:
    """P50/P90/P99 latency of successful requests and TTFT of successful streams."""
    qs = raw_usage(scope=scope, filters=filters).filter(status_code__lt=400)
    names = []
    if bucket:
        qs = qs.annotate(_bucket=_TRUNC[bucket]("created_at", tzinfo=dt.UTC))
        names.append("_bucket")
    if dimension:
        qs = qs.annotate(_group=_dimension_expr(dimension, rollup=False))
        names.append("_group")
    if connection.vendor == "postgresql":
        stream_q = Q(is_stream=True, ttft_ms__isnull=False)
        aggregates = {
            "n": Count("pk"),
            "lat": PercentilesCont("latency_ms", PERCENTILES),
            "n_ttft": Count("pk", filter=stream_q),
            "ttft": PercentilesCont("ttft_ms", PERCENTILES, filter=stream_q),
        }
        rows = [r for r in _grouped(qs, names, aggregates) if r["n"]]
        found = [
            (r.get("_bucket"), r.get("_group"), r["n"], r["lat"], r["n_ttft"], r["ttft"])
            for r in rows
        ]
    else:
        found = _python_percentiles(qs, names)
    points = []
    for moment, group, n, lat, n_ttft, ttft in found:
        lat = lat or (None, None, None)
        ttft = ttft or (None, None, None)
        points.append(
            PercentilePoint(moment, "" if group is None else str(group), n, *lat, n_ttft, *ttft)
        )
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
    points.sort(key=lambda p: (p.bucket or epoch, p.group))
    return points


def _python_percentiles(qs: QuerySet, names: list[str]) -> list[tuple]:
    latencies: dict[tuple, list[float]] = defaultdict(list)
    ttfts: dict[tuple, list[float]] = defaultdict(list)
    for row in qs.values(*names, "latency_ms", "is_stream", "ttft_ms").iterator(chunk_size=5000):
        key = (row.get("_bucket"), row.get("_group"))
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
                [_interpolated(values, f) for f in PERCENTILES],
                len(streams),
                [_interpolated(streams, f) for f in PERCENTILES] if streams else None,
            )
        )
    return found


# --- Shaping: top N, labels, tag keys -------------------------------------------------


def top_groups(points: Iterable[UsagePoint], *, n: int, metric: str = "cost_usd") -> list[str]:
    """The `n` groups with the largest total `metric`, largest first."""
    totals: dict[str, float] = defaultdict(float)
    for point in points:
        totals[point.group] += float(getattr(point, metric))
    return [g for g, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def fold_other(points: list[UsagePoint], *, keep: Sequence[str]) -> list[UsagePoint]:
    """Groups outside `keep` summed into one "other" group per bucket."""
    kept = set(keep)
    out: list[UsagePoint] = []
    other: dict[dt.datetime | None, list] = {}
    for p in points:
        if p.group in kept:
            out.append(p)
            continue
        acc = other.setdefault(p.bucket, [0, 0, 0, 0, Decimal(0)])
        for i, value in enumerate(
            (p.requests, p.errors, p.input_tokens, p.output_tokens, p.cost_usd)
        ):
            acc[i] += value
    out.extend(UsagePoint(bucket, OTHER, *acc) for bucket, acc in other.items())
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
    return sorted(out, key=lambda p: (p.bucket or epoch, p.group))


def totals_by_group(points: Iterable[UsagePoint]) -> list[UsagePoint]:
    """Points summed over buckets, one per group, by descending cost."""
    sums: dict[str, list] = {}
    for p in points:
        acc = sums.setdefault(p.group, [0, 0, 0, 0, Decimal(0)])
        for i, value in enumerate(
            (p.requests, p.errors, p.input_tokens, p.output_tokens, p.cost_usd)
        ):
            acc[i] += value
    rows = [UsagePoint(None, group, *acc) for group, acc in sums.items()]
    return sorted(rows, key=lambda p: (-p.cost_usd, -p.requests, p.group))


def group_labels(dimension: str | None, groups: Iterable[str]) -> dict[str, str]:
    """Display names for ids (teams, users, virtual accounts); other values as they are.

    Only ids already present in the caller's rows are looked up, so no name outside the
    scope is revealed.
    """
    groups = list(groups)
    labels = {g: (g if g else NONE_LABEL) for g in groups}
    models = {
        "team": (Team, "name"),
        "virtual_account": (VirtualAccount, "name"),
        "user": (get_user_model(), "username"),
    }
    if dimension in models:
        model, field = models[dimension]
        ids = [int(g) for g in groups if g.isdigit()]
        for pk, name in model.objects.filter(pk__in=ids).values_list("pk", field):
            labels[str(pk)] = str(name)
    return labels


def relabel(points: list, labels: dict[str, str]) -> list:
    from dataclasses import replace

    return [replace(p, group=labels.get(p.group, p.group)) for p in points]


def tag_keys_in_use(*, scope: DashboardScope) -> list[str]:
    """Keys for the tag pickers: rollup keys, glossary keys and keys in recent usage."""
    keys = set(rollup_tag_keys()) | set(TagDefinition.objects.values_list("key", flat=True))
    scope_q = _scope_q(scope)
    if scope_q is not None:
        recent = (
            UsageRecord.objects.filter(scope_q)
            .order_by("-created_at")
            .values_list("tags", flat=True)
        )
        for tags in recent[:TAG_SCAN_ROWS]:
            if isinstance(tags, dict):
                keys.update(str(k) for k in tags)
    return sorted(keys)


def model_names(*, scope: DashboardScope, filters: DashboardFilters) -> list[str]:
    """Models with usage in range and scope, for the model filter."""
    unfiltered = DashboardFilters(start=filters.start, end=filters.end)
    names = raw_usage(scope=scope, filters=unfiltered).values_list("model", flat=True).distinct()
    return sorted(set(names))


def teams_for_filter(*, scope: DashboardScope) -> list[tuple[int, str]]:
    teams = Team.objects.order_by("name")
    if not scope.everything:
        teams = teams.filter(pk__in=scope.team_ids) if scope.team_ids else teams.none()
    return list(teams.values_list("pk", "name"))
