"""Requests, errors, tokens and cost per time bucket and dimension, for the dashboards: the
query layer's `apps.usage.query.usage_totals` (rollups where they cover, raw rows for the
rest), one dimension at a time, with groups as text.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from apps.usage.aggregates import group_text
from apps.usage.query import usage_totals
from apps.usage.scope import UsageScope

from ..filters import DashboardFilters
from .rows import usage_filter


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
    found = usage_totals(
        scope=scope,
        where=usage_filter(filters),
        group_by=(dimension,) if dimension else (),
        bucket=bucket,
        use_rollups=use_rollups,
    )
    points = [
        UsagePoint(
            t.bucket,
            group_text(t.group[0]) if dimension else "",
            t.requests,
            t.errors,
            t.input_tokens,
            t.output_tokens,
            t.cost_usd,
        )
        for t in found
    ]
    if not points and not dimension and not bucket:
        # A total always exists, if only of nothing: tiles show zeros.
        return [UsagePoint(None, "", 0, 0, 0, 0, Decimal(0))]
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
    return sorted(points, key=lambda p: (p.bucket or epoch, p.group))
