"""Requests, errors, tokens and cost per time bucket and dimension.

Whole past days come from a rollup when one can answer the read:
- the dashboards' `UsageCubeDaily` for any column breakdown (team, user, virtual account,
  model, provider, error type) with no tag filter;
- the dashboards' `TagUsageDaily` for a breakdown by one rollup tag key, or one filter on a
  rollup tag key with a team, user or virtual account breakdown (no model filter);
- otherwise (several tag filters, a tag with a model filter), and for today and days not rolled up yet, the raw rows. Both parts are summed.
Hourly buckets always need the raw rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from decimal import Decimal

from django.db.models import F, Model, QuerySet
from django.db.models.functions import TruncDay, TruncHour

from apps.usage.aggregates import RAW_SUMS, ROLLUP_SUMS, group_text, summed_cost
from apps.usage.grouping import rollup_tag_keys
from apps.usage.models import TagUsageDaily, TagUsageHourly, UsageCubeDaily, UsageCubeHourly
from apps.usage.scope import UsageScope
from apps.usage.tags import TagText

from ..filters import DashboardFilters, dimension_tag_key
from .rows import (
    filtered,
    last_rollup_day,
    raw_usage,
    rolled_up_days,
    todays_hours,
    uncovered_ranges,
)

TRUNC = {"hour": TruncHour, "day": TruncDay}
RAW_COLUMNS = {
    "team": "team_id",
    "user": "user_id",
    "virtual_account": "virtual_account_id",
    "model": "model",
    "provider": "provider",
    "error_type": "error_type",
}


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
class _Rollup:
    """A daily rollup table and how a read maps onto it."""

    model: type[Model]
    # The same sums per hour of today (`apps.usage.models`), read for its finished hours.
    hourly: type[Model]
    columns: dict[str, str]
    tags_field: str | None
    # TagUsageDaily: rows of this one (key, value or None for all values).
    tag: tuple[str, str | None] | None = None


CUBE = _Rollup(UsageCubeDaily, UsageCubeHourly, RAW_COLUMNS, None)
_TAG_COLUMNS = {
    k: v for k, v in RAW_COLUMNS.items() if k in {"team", "user", "virtual_account", "model"}
}


def dimension_expr(dimension: str, *, columns: dict[str, str], tags_field: str | None):
    key = dimension_tag_key(dimension)
    if key is not None:
        return TagText(key, tags_field)
    return F(columns[dimension])


def _tag_rollup(dimension: str | None, filters: DashboardFilters, keys: set[str]):
    """The `TagUsageDaily` read that answers this, if one does."""
    tag_key = dimension_tag_key(dimension) if dimension else None
    if tag_key is not None:
        if tag_key in keys and not filters.tags:
            return _Rollup(TagUsageDaily, TagUsageHourly, {}, None, tag=(tag_key, None))
        return None
    if len(filters.tags) == 1 and filters.tags[0][0] in keys:
        if dimension is None or dimension in _TAG_COLUMNS:
            return _Rollup(TagUsageDaily, TagUsageHourly, _TAG_COLUMNS, None, tag=filters.tags[0])
    return None


def _rollup_for(dimension: str | None, filters: DashboardFilters, bucket: str | None):
    if bucket not in (None, "day"):
        return None
    tag_dimension = dimension is not None and dimension_tag_key(dimension) is not None
    if not filters.tags and not tag_dimension:
        return CUBE
    return _tag_rollup(dimension, filters, set(rollup_tag_keys()))


def _grouped(qs: QuerySet, names: list[str], aggregates: dict) -> list[dict]:
    """GROUP BY `names`; with no names one total row (`.values()` alone would select all)."""
    if names:
        return list(qs.values(*names).annotate(**aggregates))
    return [qs.aggregate(**aggregates)]


def raw_grouping(
    qs: QuerySet, dimension: str | None, bucket: str | None
) -> tuple[QuerySet, list[str]]:
    """Raw rows annotated with `_bucket` (time bucket) and `_group` (dimension value) as
    asked, and the names to GROUP BY."""
    names = []
    if bucket:
        qs = qs.annotate(_bucket=TRUNC[bucket]("created_at", tzinfo=dt.UTC))
        names.append("_bucket")
    if dimension:
        qs = qs.annotate(_group=dimension_expr(dimension, columns=RAW_COLUMNS, tags_field="tags"))
        names.append("_group")
    return qs, names


def _raw_groups(*, scope, filters, dimension, bucket, ranges) -> Iterable[tuple]:
    qs, names = raw_grouping(
        raw_usage(scope=scope, filters=filters, ranges=ranges), dimension, bucket
    )
    for row in _grouped(qs, names, RAW_SUMS):
        yield _sums_tuple(row.get("_bucket"), row)


def _sums_tuple(moment: dt.datetime | None, row: dict) -> tuple:
    return (
        moment,
        row.get("_group"),
        row["n"],
        row["n_err"],
        row["s_in"],
        row["s_out"],
        row["s_cost"],
    )


def _rollup_groups(
    rollup: _Rollup,
    *,
    scope,
    filters,
    dimension,
    bucket,
    days: set[dt.date] = frozenset(),
    hours: Collection[dt.datetime] = (),
) -> Iterable[tuple]:
    """Sums from `rollup`'s daily rows of the covered `days`, or its hourly rows of the
    covered `hours` (they carry their day, so they group into day buckets alike). Only the
    covered ones: a day rolled up while open, or with late rows since, is read raw."""
    if days:
        qs = rollup.model.objects.order_by().filter(day__in=sorted(days))
    else:
        qs = rollup.hourly.objects.order_by().filter(hour__in=sorted(hours))
    if rollup.tag is not None:
        tag_key, tag_value = rollup.tag
        qs = qs.filter(tag_key=tag_key)
        if tag_value is not None:
            qs = qs.filter(tag_value=tag_value)
        # The tag filter is the row selection itself; the table has no other tags.
        filters = replace(filters, tags=())
    qs = filtered(qs, scope=scope, filters=filters, tags_field=rollup.tags_field)
    names = []
    if bucket:
        names.append("day")
    if rollup.tag is not None and rollup.tag[1] is None:
        qs = qs.annotate(_group=F("tag_value"))
        names.append("_group")
    elif dimension:
        qs = qs.annotate(
            _group=dimension_expr(dimension, columns=rollup.columns, tags_field=rollup.tags_field)
        )
        names.append("_group")
    for row in _grouped(qs, names, ROLLUP_SUMS):
        day = row.get("day")
        yield _sums_tuple(
            dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC) if day else None, row
        )


def usage_points(
    *,
    scope: UsageScope,
    filters: DashboardFilters,
    dimension: str | None = None,
    bucket: str | None = None,
    use_rollups: bool = True,
) -> list[UsagePoint]:
    """Requests, errors, tokens and cost per (bucket, group), ordered by bucket then group.

    `bucket` is "hour", "day" or None (one total); `dimension` a column name or `tag:<key>`.
    Group values are raw ids for team/user/virtual account (see `group_labels`).
    """
    raw_ranges = [filters.bounds]
    parts: list[Iterable[tuple]] = []
    rollup = _rollup_for(dimension, filters, bucket) if use_rollups else None
    if rollup is not None:
        last = last_rollup_day(filters)
        covered = rolled_up_days(rollup.model, filters.start, last)
        hours = todays_hours(filters)
        raw_ranges = uncovered_ranges(filters, covered, hours)
        read = {"scope": scope, "filters": filters, "dimension": dimension, "bucket": bucket}
        if covered:
            parts.append(_rollup_groups(rollup, days=covered, **read))
        if hours:
            parts.append(_rollup_groups(rollup, hours=hours, **read))
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
            key = (moment, group_text(group))
            acc = sums.setdefault(key, [0, 0, 0, 0, Decimal(0)])
            acc[0] += n or 0
            acc[1] += n_err or 0
            acc[2] += s_in or 0
            acc[3] += s_out or 0
            acc[4] += summed_cost(s_cost)
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
    return [
        UsagePoint(moment, group, *acc)
        for (moment, group), acc in sorted(
            sums.items(), key=lambda kv: (kv[0][0] or epoch, kv[0][1])
        )
    ]
