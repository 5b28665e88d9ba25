"""Which usage rows a read sees: the caller's scope and the filters, as the query layer's
`apps.usage.query.UsageFilter` (whose `rollup_coverage` says what the rollups hold).

Shared by every dashboard selector so charts, tables and CSV exports filter identically.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from django.db.models import QuerySet

from apps.usage.models import UsageRecord
from apps.usage.query import UsageFilter, raw_rows
from apps.usage.scope import UsageScope

from ..filters import DashboardFilters


def usage_filter(filters: DashboardFilters) -> UsageFilter:
    """The dashboard filters as the query layer's row filter."""
    low, high = filters.bounds
    return UsageFilter(
        start=low,
        end=high,
        team_ids=() if filters.team_id is None else (filters.team_id,),
        models=(filters.model,) if filters.model else (),
        tags=filters.tags,
        regions=(filters.region,) if filters.region else (),
    )


def raw_usage(
    *,
    scope: UsageScope,
    filters: DashboardFilters,
    ranges: Iterable[tuple[dt.datetime, dt.datetime]] | None = None,
) -> QuerySet[UsageRecord]:
    """Usage rows inside the scope and filters; `ranges` replaces the filters' date range."""
    return raw_rows(scope=scope, where=usage_filter(filters), ranges=ranges)
