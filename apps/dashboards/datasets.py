"""One dataset per chart: the selector calls behind it, shaped (top N, labels) for display.

Pages turn a dataset into a figure (`charts.py`); the CSV endpoint writes the same dataset,
so a downloaded CSV always holds exactly the numbers of the chart it came from.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal

from apps.usage.scope import UsageScope

from . import selectors
from .filters import DashboardFilters
from .selectors import PercentilePoint, UsagePoint

RANK_METRICS = ("cost_usd", "tokens", "requests", "cost_per_request")
PERCENTILE_CHOICES = ("p50", "p90", "p99")
DEFAULT_TOP = 8


@dataclass(frozen=True)
class PageOptions:
    """Per-page choices beyond the filters: breakdown, top N, percentile, tag explorer."""

    group: str = "team"
    top: int = DEFAULT_TOP
    pct: str = "p90"
    tag_key: str = ""
    tag_value: str = ""
    rank: str = "cost_usd"


def _labelled(dimension: str | None, points: list) -> list:
    labels = selectors.group_labels(dimension, {p.group for p in points})
    return selectors.relabel(points, labels)


def trend(scope: UsageScope, filters: DashboardFilters, options: PageOptions) -> list[UsagePoint]:
    return selectors.usage_points(scope=scope, filters=filters, bucket=filters.granularity)


def latency_trend(
    scope: UsageScope, filters: DashboardFilters, options: PageOptions
) -> list[PercentilePoint]:
    return selectors.percentile_points(scope=scope, filters=filters, bucket=filters.granularity)


def cost_breakdown(
    scope: UsageScope, filters: DashboardFilters, options: PageOptions
) -> list[UsagePoint]:
    points = selectors.usage_points(
        scope=scope, filters=filters, dimension=options.group, bucket=filters.granularity
    )
    keep = selectors.top_groups(points, n=options.top, metric="cost_usd")
    points = selectors.fold_other(points, keep=keep)
    return _labelled(options.group, points)


def _top_percentiles(dimension: str, scope, filters, options) -> list[PercentilePoint]:
    points = selectors.percentile_points(
        scope=scope, filters=filters, dimension=dimension, bucket=filters.granularity
    )
    # Percentiles cannot be summed into an "other" line, so only the busiest groups are drawn.
    volume: dict[str, int] = {}
    for p in points:
        volume[p.group] = volume.get(p.group, 0) + p.requests
    keep = {g for g, _ in sorted(volume.items(), key=lambda kv: (-kv[1], kv[0]))[: options.top]}
    return _labelled(dimension, [p for p in points if p.group in keep])


def latency_by_model(scope, filters, options) -> list[PercentilePoint]:
    return _top_percentiles("model", scope, filters, options)


def latency_by_provider(scope, filters, options) -> list[PercentilePoint]:
    return _top_percentiles("provider", scope, filters, options)


def latency_table_model(scope, filters, options) -> list[PercentilePoint]:
    points = selectors.percentile_points(scope=scope, filters=filters, dimension="model")
    return sorted(_labelled("model", points), key=lambda p: -p.requests)


def latency_table_provider(scope, filters, options) -> list[PercentilePoint]:
    points = selectors.percentile_points(scope=scope, filters=filters, dimension="provider")
    return sorted(_labelled("provider", points), key=lambda p: -p.requests)


def _errors_by(dimension: str, scope, filters, options) -> list[UsagePoint]:
    points = selectors.usage_points(
        scope=scope, filters=filters, dimension=dimension, bucket=filters.granularity
    )
    keep = selectors.top_groups(points, n=options.top, metric="requests")
    return _labelled(dimension, selectors.fold_other(points, keep=keep))


def errors_by_model(scope, filters, options) -> list[UsagePoint]:
    return _errors_by("model", scope, filters, options)


def errors_by_provider(scope, filters, options) -> list[UsagePoint]:
    return _errors_by("provider", scope, filters, options)


def error_types(scope, filters, options) -> list[UsagePoint]:
    points = selectors.usage_points(
        scope=scope, filters=filters, dimension="error_type", bucket=filters.granularity
    )
    points = [p for p in points if p.errors]
    keep = selectors.top_groups(points, n=options.top, metric="errors")
    return _labelled("error_type", selectors.fold_other(points, keep=keep))


def tag_ranking(scope, filters, options) -> list[UsagePoint]:
    if not options.tag_key:
        return []
    dimension = f"tag:{options.tag_key}"
    points = selectors.usage_points(scope=scope, filters=filters, dimension=dimension)
    return sorted(points, key=lambda p: (-float(getattr(p, options.rank)), p.group))


def tag_drill(scope, filters, options) -> list[UsagePoint]:
    if not (options.tag_key and options.tag_value):
        return []
    narrowed = filters.with_tag(options.tag_key, options.tag_value)
    return selectors.usage_points(scope=scope, filters=narrowed, bucket=narrowed.granularity)


def tag_drill_models(scope, filters, options) -> list[UsagePoint]:
    if not (options.tag_key and options.tag_value):
        return []
    narrowed = filters.with_tag(options.tag_key, options.tag_value)
    points = selectors.usage_points(scope=scope, filters=narrowed, dimension="model")
    return selectors.totals_by_group(points)


Dataset = Callable[[UsageScope, DashboardFilters, PageOptions], list]
DATASETS: dict[str, Dataset] = {
    "trend": trend,
    "latency_trend": latency_trend,
    "cost": cost_breakdown,
    "latency_model": latency_by_model,
    "latency_provider": latency_by_provider,
    "latency_table_model": latency_table_model,
    "latency_table_provider": latency_table_provider,
    "errors_model": errors_by_model,
    "errors_provider": errors_by_provider,
    "error_types": error_types,
    "tag_ranking": tag_ranking,
    "tag_drill": tag_drill,
    "tag_drill_models": tag_drill_models,
}


@dataclass(frozen=True)
class Kpis:
    today: UsagePoint
    month: UsagePoint
    period: UsagePoint
    percentiles: PercentilePoint


def _total(points: list[UsagePoint]) -> UsagePoint:
    totals = selectors.totals_by_group(points)
    return totals[0] if totals else UsagePoint(None, "", 0, 0, 0, 0, Decimal(0))


def overview_kpis(
    scope: UsageScope, filters: DashboardFilters, *, today: dt.date, period: list[UsagePoint]
) -> Kpis:
    """Today and month to date (the other filters still apply), and the selected period."""

    def on(start: dt.date) -> DashboardFilters:
        return replace(filters, start=start, end=today)

    today_points = selectors.usage_points(scope=scope, filters=on(today))
    month_points = selectors.usage_points(scope=scope, filters=on(today.replace(day=1)))
    pcts = selectors.percentile_points(scope=scope, filters=filters)
    empty = PercentilePoint(None, "", 0, None, None, None, 0, None, None, None)
    return Kpis(
        today=_total(today_points),
        month=_total(month_points),
        period=_total(
            [
                selectors.UsagePoint(
                    None, "", p.requests, p.errors, p.input_tokens, p.output_tokens, p.cost_usd
                )
                for p in period
            ]
        ),
        percentiles=pcts[0] if pcts else empty,
    )


def tag_dimension_choices(tag_keys: list[str]) -> list[tuple[str, str]]:
    base = [
        ("team", "Team"),
        ("virtual_account", "Virtual account"),
        ("user", "User"),
        ("model", "Model"),
    ]
    return base + [(f"tag:{key}", f"Tag: {key}") for key in tag_keys]
