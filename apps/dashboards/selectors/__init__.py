"""Reads behind the dashboards. Every read takes the caller's `UsageScope` explicitly
(`apps.usage.scope`: the same rule as /api/usage and the exports).

- `usage`: requests, errors, tokens and cost per bucket and dimension (rollups + raw rows);
- `percentiles`: latency and TTFT percentiles (exact, or from daily histograms);
- `shaping`: top N plus "other", totals, display labels;
- `choices`: what the filter bar offers;
- `rows`: the scope, filters and rollup coverage every read shares.
"""

from .choices import model_names, tag_keys_in_use, teams_for_filter
from .percentiles import PERCENTILES, PercentilePoint, percentile_points
from .shaping import (
    NONE_LABEL,
    OTHER,
    fold_other,
    group_labels,
    relabel,
    top_groups,
    totals_by_group,
)
from .usage import UsagePoint, usage_points

__all__ = [
    "NONE_LABEL",
    "OTHER",
    "PERCENTILES",
    "PercentilePoint",
    "UsagePoint",
    "fold_other",
    "group_labels",
    "model_names",
    "percentile_points",
    "relabel",
    "tag_keys_in_use",
    "teams_for_filter",
    "top_groups",
    "totals_by_group",
    "usage_points",
]
